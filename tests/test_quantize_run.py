"""`vptq-rs quantize` end to end on tiny random Llama / Qwen2 / Phi-3 models (CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vptq_rs.cli import main  # noqa: E402
from vptq_rs.quantize import run as run_mod  # noqa: E402
from vptq_rs.quantize.run import load_layer_result  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_models import calib_file, make_tiny_model  # noqa: E402

SMALL = [
    "--nsamples",
    "4",
    "--seq_len",
    "48",
    "--kiter",
    "15",
    "--quiet",
    "--eval_dataset",
    "none",
    "--vector_lens",
    "-1",
    "4",
    "--num_centroids",
    "-1",
    "32",
]


def quantize(tmp: Path, model: Path, *extra: str, out: str = "out") -> Path:
    main(
        [
            "quantize",
            "--model",
            str(model),
            "--calib",
            str(calib_file(tmp)),
            "--output_dir",
            str(tmp / out),
            *SMALL,
            *extra,
        ]
    )
    (run,) = [p for p in (tmp / out).glob("*/*/*") if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models"), "llama")


def run_in_process(tmp: Path, model: Path, *extra: str, out: str = "out") -> int:
    try:
        quantize(tmp, model, *extra, out=out)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


ARCH_FLAGS = {
    "llama": ["--enable_perm", "--enable_norm", "--npercent", "2", "--group_num", "2"],
    "qwen2": ["--num_res_centroids", "-1", "16", "--enable_norm", "--refine-centroids"],
    "phi3": [
        "--vector_quant_dim",
        "in",
        "--enable_perm",
        "--npercent",
        "3",
        "--vector_lens",
        "2",
        "4",
        "--num_centroids",
        "8",
        "32",
        "--bitwidth",
        "8",
    ],
}


@pytest.mark.parametrize("arch", sorted(ARCH_FLAGS))
def test_quantize_end_to_end(tmp_path: Path, arch: str) -> None:
    from vptq_rs.checkpoint import load_packed

    model = make_tiny_model(tmp_path, arch)
    run = quantize(tmp_path, model, *ARCH_FLAGS[arch])
    assert run.name[:4].isdigit() and not run.name.endswith(".partial")
    assert run.parent.name.startswith("v4_c32")
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "logs" / "worker0.log").is_file()
    assert len(summary["layers"]) == summary["num_layers"] == (8 if arch == "phi3" else 14)
    for st in summary["layers"]:
        assert st["proxy_sweep"] < st["proxy_kmeans"], st["name"]
    bits = summary["bits"]
    assert bits["bpw"] > bits["index_bpw"] > 0
    if arch == "phi3":
        assert bits["bpw_int8_codebooks"] < bits["bpw"]
    # the packed checkpoint dequantizes to exactly what the quantizer produced
    _, packed, _ = load_packed(run / "packed_model")
    assert set(packed) == {st["name"] for st in summary["layers"]}
    for name, layer in packed.items():
        mine = load_layer_result(run / "layers" / f"{name}.safetensors")
        assert torch.equal(layer.dequantize(torch.float32), mine.dequantize(torch.float32)), name


def test_same_seed_byte_identical_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_tiny_model(tmp_path, "llama")
    flags = ["--enable_perm", "--enable_norm", "--num_res_centroids", "-1", "8"]
    first = quantize(tmp_path, model, *flags, out="a")
    second = quantize(tmp_path, model, *flags, out="b")
    files = sorted(p.name for p in (first / "layers").glob("*.safetensors"))
    assert len(files) == 14
    for f in files:
        assert (first / "layers" / f).read_bytes() == (second / "layers" / f).read_bytes(), f
    # worker processes run each layer on one torch thread, like the in-process run
    workers = quantize(tmp_path, model, *flags, "--workers", "2", out="w")
    for f in files:
        assert (first / "layers" / f).read_bytes() == (workers / "layers" / f).read_bytes(), f

    # interrupt a third run after 5 layers, then resume it
    real = run_mod._run_job
    calls = {"n": 0}

    def flaky(job: run_mod._Job) -> dict:
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(job)

    monkeypatch.setattr(run_mod, "_run_job", flaky)
    assert run_in_process(tmp_path, model, *flags, out="c") == 130
    (partial,) = list((tmp_path / "c").glob("*/*/*.partial"))
    assert len(list((partial / "layers").glob("*.safetensors"))) == 5
    monkeypatch.setattr(run_mod, "_run_job", real)
    main(["quantize", "--resume", str(partial), "--quiet"])
    final = partial.with_name(partial.name.removesuffix(".partial"))
    assert final.is_dir() and not partial.exists()
    for f in files:
        assert (first / "layers" / f).read_bytes() == (final / "layers" / f).read_bytes(), f


def test_worker_devices_spread_over_gpus() -> None:
    # --workers 4 --num_gpus 2: two processes per GPU; no GPUs: every worker on the CPU
    assert [run_mod.worker_device(w, 2) for w in (1, 2, 3, 4)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
        "cuda:1",
    ]
    assert [run_mod.worker_device(w, 1) for w in (1, 2, 3)] == ["cuda:0"] * 3
    assert run_mod.worker_device(3, 0) == "cpu"


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_scalar_baseline_runs(tmp_path: Path, method: str, tiny_llama: Path) -> None:
    model = tiny_llama
    run = quantize(tmp_path, model, "--method", method, "--wbits", "4", "--no-save-packed-model")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bits"]["index_bpw"] == pytest.approx(4.0)
    assert summary["mean_proxy_final"] < 0.05


@pytest.mark.parametrize(
    "flags",
    [
        ["--num_centroids", "-1", "1000"],
        ["--bitwidth", "4"],
        ["--npercent", "5"],
        ["--workers", "0"],
        ["--nsamples", "0"],
        ["--group_num", "3"],
        ["--vector_quant_dim", "in", "--enable_transpose"],
        ["--hessian_path", "/nonexistent/dir"],
    ],
)
def test_bad_flags_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], tiny_llama: Path
) -> None:
    model = tiny_llama
    capsys.readouterr()
    assert run_in_process(tmp_path, model, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "out").exists()  # validated before any work


def test_unsupported_model_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_tiny_model(tmp_path, "gpt2")
    assert run_in_process(tmp_path, model) == 2
    assert "supported: llama" in capsys.readouterr().err
