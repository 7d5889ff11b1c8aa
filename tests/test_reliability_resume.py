"""Crash and resume, Ctrl-C, and determinism of whole quantization runs (CPU, tiny model).

A run is SIGKILLed (no cleanup at all, like a lost machine) at named fault points
(``VPTQ_RS_FAULT``, see ``vptq_rs.quantize.faults``): during Hessian collection, inside a
layer, between layers and after packing; each time it is continued with ``--resume``.
The final packed checkpoint must be byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
from test_models import calib_file
from test_reliability_inputs import FAST, run_cli, tiny_model, tree_digest

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from vptq_rs.cli import main; main()"]
# residual + perm + norm: every tensor kind a packed layer has
FLAGS = ["--enable_perm", "--enable_norm", "--num_res_centroids", "-1", "8"]


def _argv(model: Path, calib: Path, out: Path) -> list[str]:
    return [
        "quantize",
        "--model",
        str(model),
        "--calib",
        str(calib),
        "--output_dir",
        str(out),
        *FAST,
        *FLAGS,
    ]


def _sub(args: list[str], fault: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("VPTQ_RS_FAULT", None)
    if fault:
        env["VPTQ_RS_FAULT"] = fault
    env["PYTHONPATH"] = str(REPO / "python")
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _layers(run: Path) -> dict[str, str]:
    """Digests of the finished layer files (their .json holds timings, which differ)."""
    return {k: v for k, v in tree_digest(run / "layers").items() if k.endswith(".safetensors")}


def _packed(run: Path) -> dict[str, str]:
    digest = tree_digest(run / "packed_model")
    assert digest, f"no packed_model in {run}"
    return digest


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    model = tiny_model(root)
    calib = calib_file(root)
    assert run_cli(_argv(model, calib, root / "ref")) == 0
    (ref,) = list((root / "ref").glob("*/*/*"))
    return {"root": root, "model": model, "calib": calib, "ref": ref}


def test_same_command_twice_byte_identical(setup: dict[str, Path]) -> None:
    root = setup["root"]
    assert run_cli(_argv(setup["model"], setup["calib"], root / "again")) == 0
    (again,) = list((root / "again").glob("*/*/*"))
    assert _packed(again) == _packed(setup["ref"])
    assert _layers(again) == _layers(setup["ref"])


def _crash_and_resume(setup: dict[str, Path], out: Path, kills: list[tuple[str, int]]) -> None:
    """Run, SIGKILL at each ``(fault, finished layers after it)`` in turn (the first kill
    on the fresh run, the others on ``--resume``), resume once more, compare with the
    reference run."""
    partial = None
    for i, (fault, layers_done) in enumerate(kills):
        argv = (
            _argv(setup["model"], setup["calib"], out)
            if i == 0
            else ["quantize", "--resume", str(partial), "--quiet"]
        )
        res = _sub(argv, fault)
        assert res.returncode == -signal.SIGKILL, (fault, res.stderr[-2000:])
        (partial,) = list(out.glob("*/*/*"))
        assert partial.name.endswith(".partial")
        assert len(list((partial / "layers").glob("*.safetensors"))) == layers_done, fault
    final = _sub(["quantize", "--resume", str(partial), "--quiet"], None)
    assert final.returncode == 0, final.stderr[-2000:]
    run = partial.with_name(partial.name.removesuffix(".partial"))
    assert run.is_dir() and not partial.exists()
    assert _packed(run) == _packed(setup["ref"])
    assert _layers(run) == _layers(setup["ref"])
    # a killed process leaves temp files behind; resume removes them
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]
    assert leftovers == []


def test_sigkill_inside_and_between_layers_then_resume(setup: dict[str, Path]) -> None:
    # inside the 3rd layer (between its k-means and its sweep), then right after the 2nd
    # layer the resumed process finishes (layers 3 and 4 done)
    _crash_and_resume(setup, setup["root"] / "crash", [("layer_kmeans:3", 2), ("layer_done:2", 4)])


@pytest.mark.slow
def test_sigkill_at_every_stage_then_resume(setup: dict[str, Path]) -> None:
    # during Hessian collection (2 of 4 files written); between a layer's .json and its
    # .safetensors; before packing; after packing and summary, before the final rename
    _crash_and_resume(
        setup,
        setup["root"] / "crash-all",
        [
            ("hessian_written:2", 0),
            ("layer_stats_written:3", 2),
            ("layer_done:1", 3),
            ("pack_start:1", 7),
            ("before_rename:1", 7),
        ],
    )


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a real SIGINT, delivered to this process at the start of the 3rd layer
    out = setup["root"] / "sigint"
    monkeypatch.setenv("VPTQ_RS_FAULT", "layer_start:3:sigint")
    capsys.readouterr()
    assert run_cli(_argv(setup["model"], setup["calib"], out)) == 130
    err = capsys.readouterr().err
    (partial,) = list(out.glob("*/*/*"))
    assert "Traceback" not in err
    assert f"vptq-rs quantize --resume {partial}" in err
    # click turns KeyboardInterrupt into Abort; either way one final error line, exit 130
    assert err.strip().splitlines()[-1] in ("error: interrupted", "error: aborted")
    assert len(list((partial / "layers").glob("*.safetensors"))) == 2
    monkeypatch.delenv("VPTQ_RS_FAULT")
    assert run_cli(["quantize", "--resume", str(partial), "--quiet"]) == 0
    run = partial.with_name(partial.name.removesuffix(".partial"))
    assert _packed(run) == _packed(setup["ref"])
