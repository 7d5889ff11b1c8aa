"""Bad input: every impossible option, damaged file and hostile environment fails fast.

Each CLI case must exit 2 with one ``error: ...`` line naming the problem, leave no run
folder behind and leave every file that existed before byte-identical. Python API cases
must raise the package's ValueError subclasses. Also home of the helpers the other
reliability tests import (tiny model, precomputed Hessians, a small packed checkpoint).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import vptq_rs  # noqa: E402
from vptq_rs import _core  # noqa: E402
from vptq_rs.cli import main  # noqa: E402
from vptq_rs.errors import CheckpointError, InvalidValueError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_models import calib_file, make_tiny_model  # noqa: E402

FAST = [
    "--nsamples",
    "2",
    "--seq_len",
    "32",
    "--kiter",
    "8",
    "--quiet",
    "--eval_dataset",
    "none",
    "--vector_lens",
    "-1",
    "4",
    "--num_centroids",
    "-1",
    "16",
    "--seed",
    "3",
]


# ---------------------------------------------------------------- helpers (shared)


def tiny_model(root: Path) -> Path:
    """A one-decoder-layer random Llama (7 Linears) with a character tokenizer."""
    return make_tiny_model(root, "llama", num_hidden_layers=1)


def write_hessians(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """FORMAT.md Hessian files for every Linear group of ``model_dir`` (random, PSD)."""
    from vptq_rs.hessian import hessian_file, save_hessian, sym_to_file_dict
    from vptq_rs.models import linear_groups
    from vptq_rs.quantize.run import _skeleton

    skeleton = _skeleton(transformers.AutoConfig.from_pretrained(model_dir))
    gen = torch.Generator().manual_seed(seed)
    for g in linear_groups(skeleton):
        n = skeleton.get_submodule(g.names[0]).in_features
        x = torch.randn(4 * n, n, generator=gen, dtype=torch.float64)
        mu = x.mean(0)
        cov = (x - mu).t() @ (x - mu) / x.shape[0]
        save_hessian(hessian_file(out, g.layer_index, g.key), sym_to_file_dict(cov, mu, 4 * n))
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (folders included as '')."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
    return out


def run_cli(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# the packed fixture's one layer: O=16, I=32, v=4, K=16, residual 8, 2 groups, perm + norm
VALID_ENTRY: dict[str, Any] = {
    "in_features": 32,
    "out_features": 16,
    "vector_lens": [-1, 4],
    "num_centroids": [-1, 16],
    "num_res_centroids": [-1, 8],
    "group_num": 2,
    "group_size": 16,
    "outlier_size": 0,
    "indices_as_float": False,
    "enable_norm": True,
    "enable_perm": True,
    "is_indice_packed": True,
    "bias": False,
}


def write_packed_fixture(d: Path, shard_bytes: int = 600) -> list[str]:
    """A one-layer packed checkpoint (O=16, I=32, v=4, K=16, 2 groups, residual 8) via the
    Rust writer; sharded when ``shard_bytes`` is small. Returns the safetensors files."""
    d.mkdir(parents=True, exist_ok=True)
    entry = dict(VALID_ENTRY)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "quantization_config": {
            "quant_method": "vptq",
            "config_for_layers": {"l.q": entry},
            "shared_layer_config": {},
        },
    }
    (d / "config.json").write_text(json.dumps(cfg))

    def zeros(dtype: str, *shape: int) -> tuple[str, list[int], bytes]:
        size = {"F16": 2, "I32": 4, "I16": 2, "F32": 4}[dtype]
        return dtype, list(shape), bytes(int(np.prod(shape)) * size)

    tensors = {
        "l.q.centroids.weight": zeros("F16", 2, 64),
        "l.q.res_centroids.weight": zeros("F16", 2, 32),
        "l.q.indices": zeros("I32", 2, 4, 4),  # 16 codes x 7 bits = 4 words per row
        "l.q.perm": zeros("I16", 32),
        "l.q.weight_scale": zeros("F16", 32),
        "l.q.weight_bias": zeros("F16", 32),
        "embed.weight": zeros("F16", 1000),
    }
    return _core.save_tensors(
        str(d), [(k, *v) for k, v in tensors.items()], shard_bytes, {"format": "pt"}
    )


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reliability")
    model = tiny_model(root)
    return {
        "root": root,
        "model": model,
        "calib": calib_file(root),
        "hess": write_hessians(model, root / "hess"),
    }


def _copy_hessians(env: dict[str, Path], dst: Path) -> Path:
    dst.mkdir()
    for f in env["hess"].iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# Each case: (id, extra argv, expected text in the error line, optional setup(tmp, env) that
# may return extra argv, e.g. a damaged Hessian folder).
Setup = Callable[[Path, dict[str, Path]], list[str]]


def _hess_with(mutate: Callable[[Path], None]) -> Setup:
    def setup(tmp: Path, env: dict[str, Path]) -> list[str]:
        d = _copy_hessians(env, tmp / "h")
        mutate(d)
        return ["--hessian_path", str(d)]

    return setup


def _truncate(d: Path) -> None:
    p = d / "0_up.pt"
    p.write_bytes(p.read_bytes()[:200])


def _garbage(d: Path) -> None:
    (d / "0_o.pt").write_bytes(os.urandom(4096))


def _wrong_size(d: Path) -> None:
    from vptq_rs.hessian import save_hessian, sym_to_file_dict

    save_hessian(
        d / "0_qkv.pt", sym_to_file_dict(torch.eye(32, dtype=torch.float64), torch.zeros(32), 1)
    )


def _no_flat(d: Path) -> None:
    torch.save({"H": torch.eye(64)}, d / "0_qkv.pt")


def _nan(d: Path) -> None:
    from vptq_rs.hessian import save_hessian, sym_to_file_dict

    h = torch.eye(128, dtype=torch.float64)
    h[3, 3] = float("nan")
    save_hessian(d / "0_down.pt", sym_to_file_dict(h, torch.zeros(128), 1))


def _no_model_config(tmp: Path, env: dict[str, Path]) -> list[str]:
    (tmp / "empty").mkdir()
    return ["--model", str(tmp / "empty")]


def _gpt2(tmp: Path, env: dict[str, Path]) -> list[str]:
    return ["--model", str(make_tiny_model(tmp, "gpt2"))]


def _inv_wrong(tmp: Path, env: dict[str, Path]) -> list[str]:
    d = tmp / "inv"
    d.mkdir()
    for key, n in (("qkv", 64), ("o", 64), ("up", 64), ("down", 128)):
        torch.save({"invH": torch.eye(n if key != "up" else 48)}, d / f"0_{key}.pt")
    return ["--hessian_path", str(env["hess"]), "--inv_hessian_path", str(d)]


def _resume_no_run_json(tmp: Path, env: dict[str, Path]) -> list[str]:
    (tmp / "r").mkdir()
    return ["--resume", str(tmp / "r")]


def _resume_damaged(tmp: Path, env: dict[str, Path]) -> list[str]:
    (tmp / "r").mkdir()
    (tmp / "r" / "run.json").write_text('{"options": {"quant": {"num_centroids": [-1, 3]}')
    return ["--resume", str(tmp / "r")]


def _resume_conflict(tmp: Path, env: dict[str, Path]) -> list[str]:
    (tmp / "r").mkdir()
    return ["--resume", str(tmp / "r"), "--num_centroids", "-1", "64"]


def _output_is_file(tmp: Path, env: dict[str, Path]) -> list[str]:
    (tmp / "out").write_text("not a folder")
    return []


CASES: list[tuple[str, list[str], str, Setup | None]] = [
    ("centroids-not-pow2", ["--num_centroids", "-1", "1000"], "power of two", None),
    ("index-bits-17", ["--num_centroids", "-1", "131072"], "[2, 65536]", None),
    ("res-not-pow2", ["--num_res_centroids", "-1", "3"], "num_res_centroids", None),
    ("res-on-outliers", ["--num_res_centroids", "4", "16"], "outlier entry", None),
    ("bitwidth-4", ["--bitwidth", "4"], "--bitwidth", None),
    ("wbits-0", ["--method", "rtn", "--wbits", "0"], "--wbits", None),
    ("vector-len-0", ["--vector_lens", "-1", "0"], "vector_lens", None),
    ("vector-len-65", ["--vector_lens", "-1", "65"], "max 64", None),
    ("group-num-3", ["--group_num", "3"], "does not divide", None),
    ("group-num-0", ["--group_num", "0"], "--group_num", None),
    ("npercent-no-perm", ["--npercent", "5"], "needs --enable_perm", None),
    ("npercent-100", ["--npercent", "100", "--enable_perm"], "--npercent", None),
    ("transpose-vs-in", ["--vector_quant_dim", "in", "--enable_transpose"], "contradicts", None),
    ("kiter-0", ["--kiter", "0"], "--kiter", None),
    ("percdamp-neg", ["--percdamp", "-1"], "--percdamp", None),
    ("blocksize-0", ["--blocksize", "0"], "--blocksize", None),
    ("nsamples-0", ["--nsamples", "0"], "--nsamples", None),
    ("seq-len-1", ["--seq_len", "1"], "--seq-len", None),
    ("workers-0", ["--workers", "0"], "--workers", None),
    ("calib-missing", ["--calib", "/nonexistent/calib.txt"], "--calib", None),
    ("hessian-dir-missing", ["--hessian_path", "/nonexistent/h"], "does not exist", None),
    (
        "hessian-file-missing",
        [],
        "0_down.pt not found",
        _hess_with(lambda d: (d / "0_down.pt").unlink()),
    ),
    ("hessian-truncated", [], "0_up.pt is not readable", _hess_with(_truncate)),
    ("hessian-corrupt", [], "0_o.pt is not readable", _hess_with(_garbage)),
    ("hessian-wrong-size", [], "is for 32 inputs, the layer has 64", _hess_with(_wrong_size)),
    ("hessian-no-flatH", [], "no 'flatH'", _hess_with(_no_flat)),
    ("inv-hessian-wrong-size", [], "0_up.pt is [48, 48]", _inv_wrong),
    ("model-missing", ["--model", "/nonexistent/model"], "does not exist", None),
    ("model-no-config", [], "has no config.json", _no_model_config),
    ("arch-unsupported", [], "'gpt2' is not supported", _gpt2),
    ("resume-no-run-json", [], "has no run.json", _resume_no_run_json),
    ("resume-damaged", [], "is damaged", _resume_damaged),
    ("resume-conflicting-flag", [], "drop --num_centroids", _resume_conflict),
    ("output-dir-is-file", [], "is not a folder", _output_is_file),
]


def test_quantize_choice_flags_name_the_value(
    tmp_path: Path, env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A value outside a flag's choices is click's usage error: exit 2, flag and value named."""
    argv = ["quantize", "--model", str(env["model"]), "--output_dir", str(tmp_path / "out")]
    assert run_cli([*argv, *FAST, "--kmeans_precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "--kmeans_precision" in err and "'fp16' is not one of" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "needle", "setup"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_quantize_bad_input_exit_2(
    tmp_path: Path,
    env: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    needle: str,
    setup: Setup | None,
) -> None:
    more = setup(tmp_path, env) if setup else []
    model_args = (
        []
        if any(a in ("--model", "--resume") for a in more + extra)
        else ["--model", str(env["model"])]
    )
    if "--resume" in more:
        argv = ["quantize", *more]
    else:
        argv = [
            "quantize",
            *model_args,
            "--calib",
            str(env["calib"]),
            "--output_dir",
            str(tmp_path / "out"),
            *FAST,
            *more,
            *extra,
        ]
    before = tree_digest(tmp_path)
    capsys.readouterr()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err[0]
    # validated before any work: nothing new, nothing changed
    assert tree_digest(tmp_path) == before


def test_no_model_at_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["quantize", "--quiet"]) == 2
    assert "--model is required" in capsys.readouterr().err


# ---------------------------------------------------------------- environment failures


def _quantize_argv(env: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "quantize",
        "--model",
        str(env["model"]),
        "--hessian_path",
        str(env["hess"]),
        "--output_dir",
        str(out),
        *FAST,
        *extra,
    ]


def test_existing_run_folder_not_overwritten(
    tmp_path: Path,
    env: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vptq_rs.quantize import run as run_mod

    monkeypatch.setattr(run_mod.time, "strftime", lambda _fmt: "2000-01-01-00-00-00")
    out = tmp_path / "out"
    existing = out / "llama-tiny" / "v4_c16" / "2000-01-01-00-00-00"
    existing.mkdir(parents=True)
    (existing / "precious.txt").write_text("keep me")
    before = tree_digest(tmp_path)
    capsys.readouterr()
    assert run_cli(_quantize_argv(env, out)) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists (pass --overwrite" in err and len(err.splitlines()) == 1
    assert tree_digest(tmp_path) == before
    # --overwrite does not delete a folder that is not a run folder either
    assert run_cli(_quantize_argv(env, out, "--overwrite")) == 2
    assert "not a vptq-rs run folder" in capsys.readouterr().err
    assert tree_digest(tmp_path) == before
    # a leftover interrupted run of the same name points at --resume
    existing.rename(existing.with_name(existing.name + ".partial"))
    before = tree_digest(tmp_path)
    assert run_cli(_quantize_argv(env, out)) == 2
    assert "continue it with --resume" in capsys.readouterr().err
    assert tree_digest(tmp_path) == before


def test_overwrite_replaces_only_after_success(
    tmp_path: Path, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vptq_rs.quantize import run as run_mod

    monkeypatch.setattr(run_mod.time, "strftime", lambda _fmt: "2000-01-01-00-00-00")
    out = tmp_path / "out"
    assert run_cli(_quantize_argv(env, out, "--no-save-packed-model")) == 0
    (run,) = list(out.glob("*/*/*"))
    (run / "marker").write_text("old run")
    # a second run that fails midway leaves the old one as it was
    monkeypatch.setenv("VPTQ_RS_FAULT", "layer_start:2:interrupt")
    before = tree_digest(run)
    assert run_cli(_quantize_argv(env, out, "--no-save-packed-model", "--overwrite")) == 130
    assert tree_digest(run) == before
    partial = run.with_name(run.name + ".partial")
    assert partial.is_dir()  # one finished layer: kept for --resume
    monkeypatch.delenv("VPTQ_RS_FAULT")
    assert run_cli(_quantize_argv(env, out, "--no-save-packed-model", "--overwrite")) == 0
    assert not (run / "marker").exists() and not partial.exists()
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]


def test_read_only_output_folder(
    tmp_path: Path,
    env: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
    else:  # root ignores permission bits: make creating anything under it fail the same way
        real_mkdir = os.mkdir

        def mkdir(path: os.PathLike[str] | str, *a: object, **k: object) -> None:
            if str(path).startswith(str(out)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            real_mkdir(path, *a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        capsys.readouterr()
        assert run_cli(_quantize_argv(env, out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot create run folder" in err[0], err
        assert "Permission denied" in err[0]
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("fail_at", [1, 4])
def test_full_disk(
    tmp_path: Path,
    env: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int,
) -> None:
    """ENOSPC while writing layer ``fail_at``: exit 2 naming it, no temp files; the folder
    stays only when it holds finished layers, and then it resumes."""
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def save_file(tensors: dict, path: str, metadata: dict | None = None) -> None:
        calls["n"] += 1
        if calls["n"] == fail_at:
            Path(path).write_bytes(b"partial")  # a half-written temp file must not survive
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(_quantize_argv(env, out, "--no-save-packed-model")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "No space left on device" in err[0], err
    runs = list(out.glob("*/*/*"))
    if fail_at == 1:
        assert runs == []
        return
    (partial,) = runs
    assert partial.name.endswith(".partial")
    layer_files = sorted(p.name for p in (partial / "layers").iterdir())
    assert len([f for f in layer_files if f.endswith(".safetensors")]) == fail_at - 1
    assert not [f for f in layer_files if ".tmp" in f]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert run_cli(["quantize", "--resume", str(partial), "--quiet"]) == 0
    assert not partial.exists()


# ---------------------------------------------------------------- packed checkpoints


def _ckpt_missing_shard(d: Path, files: list[str]) -> None:
    (d / files[1]).unlink()


def _ckpt_wrong_shape(d: Path, files: list[str]) -> None:
    tensors = _core.load_tensors(str(d))
    dt, _shape, _data = tensors["l.q.perm"]
    tensors["l.q.perm"] = (dt, [31], bytes(62))
    for f in files:
        (d / f).unlink()
    _core.save_tensors(str(d), [(k, *v) for k, v in tensors.items()], 600, None)


def _ckpt_wrong_dtype(d: Path, files: list[str]) -> None:
    tensors = _core.load_tensors(str(d))
    tensors["l.q.indices"] = ("F32", [2, 4, 4], bytes(128))
    for f in files:
        (d / f).unlink()
    _core.save_tensors(str(d), [(k, *v) for k, v in tensors.items()], 600, None)


def _ckpt_config_disagrees(d: Path, files: list[str]) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["config_for_layers"]["l.q"]["num_centroids"] = [-1, 32]
    (d / "config.json").write_text(json.dumps(cfg))


def _ckpt_no_config(d: Path, files: list[str]) -> None:
    (d / "config.json").unlink()


def _ckpt_corrupt_header(d: Path, files: list[str]) -> None:
    p = d / files[0]
    raw = bytearray(p.read_bytes())
    raw[8:20] = b"\xff" * 12
    p.write_bytes(bytes(raw))


def _ckpt_index_escapes(d: Path, files: list[str]) -> None:
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["l.q.perm"] = "../outside.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


def _ckpt_not_vptq(d: Path, files: list[str]) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["quant_method"] = "gptq"
    (d / "config.json").write_text(json.dumps(cfg))


CKPT_CASES = [
    ("missing-shard", _ckpt_missing_shard, "is missing from"),
    ("wrong-shape", _ckpt_wrong_shape, "l.q.perm has shape [31], expected [32]"),
    ("wrong-dtype", _ckpt_wrong_dtype, "l.q.indices has dtype F32"),
    ("config-disagrees", _ckpt_config_disagrees, "l.q.centroids.weight has shape"),
    ("no-config", _ckpt_no_config, "no config.json"),
    ("corrupt-header", _ckpt_corrupt_header, "safetensors"),
    ("index-escapes-folder", _ckpt_index_escapes, "points outside the folder"),
    ("not-vptq", _ckpt_not_vptq, 'expected "vptq"'),
]


@pytest.mark.parametrize(
    ("damage", "needle"), [c[1:] for c in CKPT_CASES], ids=[c[0] for c in CKPT_CASES]
)
def test_damaged_checkpoint(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path, list[str]], None],
    needle: str,
) -> None:
    d = tmp_path / "ckpt"
    files = write_packed_fixture(d)
    assert len(files) > 1
    vptq_rs._core.validate_checkpoint(str(d))  # the undamaged fixture is valid
    damage(d, files)
    with pytest.raises(CheckpointError, match=None) as info:
        _core.validate_checkpoint(str(d))
    assert needle in str(info.value)
    before = tree_digest(d)
    capsys.readouterr()
    assert run_cli(["inspect", str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert tree_digest(d) == before


# ---------------------------------------------------------------- Python API


def test_python_api_bad_values(tmp_path: Path) -> None:
    from vptq_rs.hessian import load_hessian, load_inverse_hessian
    from vptq_rs.layout import LayerConfig
    from vptq_rs.quantize.options import QuantOptions
    from vptq_rs.quantize.vptq import quantize_layer

    with pytest.raises(InvalidValueError, match="power of two"):
        QuantOptions(num_centroids=(-1, 3))
    with pytest.raises(InvalidValueError, match=r"exceed 32|65536"):
        QuantOptions(num_centroids=(-1, 65536), num_res_centroids=(-1, 131072))
    opts = QuantOptions(vector_lens=(-1, 4), num_centroids=(-1, 16), kiter=2)
    with pytest.raises(InvalidValueError, match="Hessian \\[8, 8\\] does not match in=16"):
        quantize_layer(torch.randn(8, 16), torch.eye(8), opts)
    with pytest.raises(InvalidValueError, match="does not divide"):
        quantize_layer(torch.randn(8, 15), torch.eye(15), QuantOptions(group_num=2, kiter=2))
    with pytest.raises(InvalidValueError):
        vptq_rs.pack_indices(np.zeros((2, 4), np.int32), 17)
    with pytest.raises(InvalidValueError, match="does not fit"):
        vptq_rs.pack_indices(np.full((2, 4), 300, np.int32), 8)
    with pytest.raises(InvalidValueError):
        vptq_rs.unpack_indices(np.zeros((2, 3), np.int32), 8, 100)
    with pytest.raises(InvalidValueError):
        vptq_rs.kmeans(np.zeros((10, 2), np.float32), 0)
    with pytest.raises(InvalidValueError):
        LayerConfig.from_hf({"in_features": 8})
    with pytest.raises(CheckpointError, match="not found"):
        load_hessian(tmp_path / "nope.pt")
    torch.save({"flatH": torch.ones(7)}, tmp_path / "bad.pt")  # 7 is no triangle number
    with pytest.raises(CheckpointError, match="flatH has 7 values"):
        load_hessian(tmp_path / "bad.pt")
    torch.save({"invH": torch.eye(4), "perm": torch.tensor([0, 0, 1, 2])}, tmp_path / "inv.pt")
    with pytest.raises(CheckpointError, match="not a permutation"):
        load_inverse_hessian(tmp_path / "inv.pt")
    _nan(tmp_path)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_hessian(tmp_path / "0_down.pt")
