"""The parts of benchmarks/multigpu.py that run without GPUs (issue 9's script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import multigpu  # noqa: E402


def _ckpt(d: Path, idx: torch.Tensor) -> Path:
    d.mkdir()
    save_file({"l.q.indices": idx, "l.q.centroids.weight": torch.ones(2, 8).half()},
              str(d / "model.safetensors"))  # fmt: skip
    return d


def test_compare_packed_reports_identical_and_differing(tmp_path):
    idx = torch.arange(64, dtype=torch.int32).reshape(1, 4, 16)
    a = _ckpt(tmp_path / "a", idx)
    b = _ckpt(tmp_path / "b", idx.clone())
    same = multigpu.compare_packed(a, b)
    assert same["identical"] and same["tensors"] == 2
    idx2 = idx.clone()
    idx2[0, 0, :4] += 1
    c = _ckpt(tmp_path / "c", idx2)
    diff = multigpu.compare_packed(a, c)
    assert not diff["identical"]
    assert diff["differing_tensors"] == ["l.q.indices"]
    assert diff["differing_index_word_fraction"]["l.q.indices"] == 4 / 64


def test_refuses_without_enough_gpus(tmp_path):
    if torch.cuda.device_count() >= 64:
        return
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "multigpu.py"), "--gpus", "64",
         "--work", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "needs 64 CUDA devices" in proc.stderr
