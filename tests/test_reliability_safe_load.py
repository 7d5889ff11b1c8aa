"""Safe loading: a Hessian file that would run code when unpickled is refused unrun.

And a scan of the package source: every ``torch.load`` passes ``weights_only=True`` and
nothing imports ``pickle`` to load data (only to name its error type).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vptq_rs.errors import CheckpointError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_reliability_inputs import FAST, run_cli, tiny_model, tree_digest, write_hessians  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "vptq_rs"


class _Payload:
    """Unpickling this calls ``os.system`` (creates the marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _malicious(path: Path, marker: Path) -> None:
    # a real Hessian dict with one poisoned entry, saved the normal torch way
    n = 64
    rows, cols = torch.tril_indices(n, n)
    torch.save(
        {
            "flatH": torch.eye(n)[rows, cols],
            "mu": torch.zeros(n),
            "n": n,
            "ct": 1,
            "x": _Payload(marker),
        },
        path,
    )


def test_payload_really_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    # guards the test itself: the file would run code under a plain torch.load
    marker = tmp_path / "ran"
    _malicious(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_malicious_hessian_refused_by_api(tmp_path: Path) -> None:
    from vptq_rs.hessian import check_hessian_file, load_hessian, load_inverse_hessian

    marker = tmp_path / "ran"
    _malicious(tmp_path / "0_qkv.pt", marker)
    for fn in (load_hessian, load_inverse_hessian, lambda p: check_hessian_file(p, 64)):
        with pytest.raises(CheckpointError, match="safe loader"):
            fn(tmp_path / "0_qkv.pt")
    assert not marker.exists()


def test_malicious_hessian_refused_by_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model(tmp_path)
    hess = write_hessians(model, tmp_path / "hess")
    marker = tmp_path / "ran"
    _malicious(hess / "0_o.pt", marker)
    before = tree_digest(tmp_path)
    capsys.readouterr()
    argv = [
        "quantize",
        "--model",
        str(model),
        "--hessian_path",
        str(hess),
        "--output_dir",
        str(tmp_path / "out"),
        *FAST,
    ]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0_o.pt is not a plain tensor file" in err[0], err
    assert "posix.system" in err[0] or "GLOBAL" in err[0]
    assert not marker.exists()
    assert tree_digest(tmp_path) == before  # no run folder


def _call_args(text: str, start: int) -> str:
    """The argument text of the call whose "(" is at ``start`` (balanced parentheses)."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i]
    return text[start + 1 :]


def test_package_never_unpickles_unsafely() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"\btorch\.load\(", text):
            args = _call_args(text, m.end() - 1)
            if "weights_only=True" not in args:
                offenders.append(f"{path.name}: torch.load({args})")
        for line in text.splitlines():
            if re.search(r"\bpickle\.(loads?|Unpickler)\b|\bimport (dill|cloudpickle)\b", line):
                offenders.append(f"{path.name}: {line.strip()}")
    assert offenders == []
