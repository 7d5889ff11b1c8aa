"""cuda_ext's behaviour without a GPU: build-script logic, None/fallback paths, wrappers."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vptq_rs import cuda_ext
from vptq_rs.errors import InvalidValueError, VptqError
from vptq_rs.layout import LayerConfig
from vptq_rs.nn import packed_tensors, random_quantized_layer


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(cuda_ext, "_state", {})
    yield
    cuda_ext._state.clear()


def test_load_returns_none_without_cuda_and_logs_once(fresh_state, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="vptq_rs.cuda_ext"):
        assert cuda_ext.load() is None
        assert cuda_ext.load() is None
        assert not cuda_ext.available()
    assert cuda_ext.unavailable_reason() == "no CUDA device"
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("VPTQ_RS_NO_CUDA_EXT", "1")
    assert "VPTQ_RS_NO_CUDA_EXT" in cuda_ext.toolchain_problem()
    with pytest.raises(VptqError, match="cannot build"):
        cuda_ext.build()


def _aot_build(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vptq_rs.cuda_ext"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
    )


def test_aot_build_without_toolchain_is_a_one_line_error():
    res = _aot_build(VPTQ_RS_NO_CUDA_EXT="1")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: cannot build the CUDA extension: disabled by VPTQ_RS_NO_CUDA_EXT"
    )
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_source_dir_and_build_name(tmp_path, monkeypatch):
    src = cuda_ext.source_dir()
    assert src is not None and (src / "ops.cpp").is_file()
    copy = tmp_path / "cuda"
    shutil.copytree(src, copy)
    monkeypatch.setenv("VPTQ_RS_CUDA_SRC", str(copy))
    assert cuda_ext.source_dir() == copy
    name = cuda_ext.build_name(copy)
    assert name.startswith("vptq_rs_cuda_") and name == cuda_ext.build_name(copy)
    (copy / "gemv.cuh").write_text((copy / "gemv.cuh").read_text() + "\n// changed\n")
    assert cuda_ext.build_name(copy) != name
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    name80 = cuda_ext.build_name(copy)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert cuda_ext.build_name(copy) != name80
    # an incomplete folder is skipped in favour of the repository's sources
    monkeypatch.setenv("VPTQ_RS_CUDA_SRC", str(tmp_path))
    assert cuda_ext.source_dir() == src


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VPTQ_RS_CACHE_DIR", str(tmp_path))
    assert cuda_ext.cache_dir() == tmp_path / "torch_ext"


def test_kmeans_falls_back_to_cpu_core(fresh_state, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.05, (50, 2)), rng.normal(5, 0.05, (50, 2))]).astype(
        np.float32
    )
    c, lab = cuda_ext.kmeans(x, 2, iters=20, seed=3)
    assert c.shape == (2, 2) and lab.shape == (100,)
    assert len(set(lab[:50].tolist())) == 1 and lab[0] != lab[99]
    c2, lab2 = cuda_ext.kmeans(torch.from_numpy(x), 2, iters=20, seed=3)
    assert torch.equal(c, c2) and torch.equal(lab, lab2)


def test_every_precision_has_a_default_design():
    """kmeans() looks its design up by precision: a mode without one would be a KeyError."""
    assert set(cuda_ext.KMEANS_DESIGN) == set(cuda_ext.KMEANS_MODES)
    assert set(cuda_ext.KMEANS_DESIGN.values()) <= set(cuda_ext.KMEANS_DESIGNS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": np.zeros((4, 17), np.float32), "k": 2}, "1 <= d <= 16"),
        ({"x": np.zeros((4, 2), np.float32), "k": 0}, "k must be"),
        ({"x": np.zeros((4, 2), np.float32), "k": 2, "precision": "fp16"}, "precision"),
        ({"x": np.zeros((4, 2), np.float32), "k": 2, "design": "fast"}, "design"),
        (
            {"x": np.zeros((4, 2), np.float32), "k": 2, "precision": "fp16x1", "design": "merged"},
            "needs design 'tiled'",
        ),
        (
            {"x": np.zeros((4, 2), np.float32), "k": 2, "weights": -np.ones(4, np.float32)},
            "non-negative",
        ),
        (
            {"x": np.zeros((4, 2), np.float32), "k": 2, "weights": np.zeros(4, np.float32)},
            "all zero",
        ),
        ({"x": np.full((4, 2), np.nan, np.float32), "k": 2}, "NaN"),
    ],
)
def test_kmeans_rejects_bad_input(fresh_state, monkeypatch, kwargs, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidValueError, match=match):
        cuda_ext.kmeans(**kwargs)


def _layer(vqd="out"):
    cfg = LayerConfig(
        in_features=32,
        out_features=24,
        vector_len=4,
        num_centroids=16,
        enable_perm=True,
        bias=True,
        vector_quant_dim=vqd,
    )
    layer = random_quantized_layer(cfg, seed=1, dtype=torch.float16)
    return cfg, layer, packed_tensors(layer)


def test_gemm_routes_many_tokens_through_dequant(monkeypatch):
    cfg, layer, t = _layer()
    calls = []

    def fake_dequant(cfg_, t_, dtype=None):
        calls.append(dtype)
        return layer.dequantize(dtype)

    monkeypatch.setattr(cuda_ext, "dequant", fake_dequant)
    x = torch.randn(3, 4, 32).half()
    y = cuda_ext.gemm(x, cfg, t, layer.bias)
    assert calls == [torch.float16] and y.shape == (3, 4, 24)
    assert torch.equal(y, F.linear(x, layer.dequantize(), layer.bias))


@pytest.mark.parametrize("case", ["fp32", "in", "dtype", "grad"])
def test_gemv_falls_back_where_the_kernel_does_not_apply(monkeypatch, case):
    cfg, layer, t = _layer("in" if case == "in" else "out")
    x = torch.randn(2, 32)
    if case != "fp32":
        x = x.to(torch.bfloat16 if case == "dtype" else torch.float16)
    x.requires_grad_(case == "grad")
    monkeypatch.setattr(cuda_ext, "dequant", lambda c, tt, dtype=None: layer.dequantize(dtype))

    def boom(*a, **k):
        raise AssertionError("fused kernel must not run")

    monkeypatch.setattr(torch.ops, "vptq_rs", type("NS", (), {"gemv": boom})(), raising=False)
    y = cuda_ext.gemv(x, cfg, t)
    assert y.shape == (2, 24) and y.dtype == x.dtype


def test_histogram_gemv_eligibility():
    """Which layers ``gemv(..., mode=3)`` takes (the C++ op checks the same rule)."""
    from vptq_rs.layout import LayerConfig

    def cfg(**kw):
        base = dict(in_features=64, out_features=48, vector_len=6, num_centroids=4096)
        return LayerConfig(**{**base, **kw})

    assert cuda_ext.gemv_hist_applies(cfg(), 1)
    assert cuda_ext.gemv_hist_applies(cfg(num_centroids=8192, num_res_centroids=8192), 1)
    assert not cuda_ext.gemv_hist_applies(cfg(), 2)  # one token only
    assert not cuda_ext.gemv_hist_applies(cfg(num_centroids=16384), 1)
    assert not cuda_ext.gemv_hist_applies(cfg(num_res_centroids=65536), 1)
    assert not cuda_ext.gemv_hist_applies(cfg(group_num=2), 1)
    assert not cuda_ext.gemv_hist_applies(cfg(vector_quant_dim="in"), 1)


needs_toolchain = pytest.mark.skipif(
    cuda_ext.toolchain_problem() is not None,
    reason="no CUDA toolchain to build with (make cuda-toolchain provides one)",
)


@pytest.mark.slow
@needs_toolchain
def test_aot_build_compiles_every_kernel_without_a_gpu():
    """`python -m vptq_rs.cuda_ext` compiles and loads the extension, GPU or not."""
    res = _aot_build()
    assert res.returncode == 0, res.stderr[-3000:]
    out = Path(res.stdout.strip().splitlines()[-1])
    assert out.name == cuda_ext.build_name(cuda_ext.source_dir())
    assert list(out.glob(f"{out.name}*.so")), sorted(p.name for p in out.iterdir())


@pytest.mark.slow
@needs_toolchain
def test_fake_kernels_trace_shapes():
    cuda_ext.build()
    ops = torch.ops.vptq_rs
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        idx = torch.empty(2, 6, 3, dtype=torch.int32, device="cuda")
        cb = torch.empty(2, 64, dtype=torch.float16, device="cuda")
        w = ops.dequant(
            idx, cb, None, None, None, None, None, None, 45, 8, 8, 3, 0, 2, 0, 1, torch.bfloat16
        )
        assert w.shape == (45, 8) and w.dtype == torch.bfloat16
        x = torch.empty(3, 8, dtype=torch.float16, device="cuda")
        y = ops.gemv(
            x, idx, cb, None, None, None, None, None, None, None, 45, 8, 8, 3, 0, 2, 0, 1, 0
        )
        assert y.shape == (3, 45)
        ent = torch.empty(6, 1, 128, dtype=torch.int32, device="cuda")
        base = torch.empty(6, 1, 1, dtype=torch.int32, device="cuda")
        ys = ops.gemv_sorted(
            x[:1],
            ent,
            base,
            1,
            idx[:1],
            cb[:1],
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            45,
            8,
            8,
            3,
            0,
            1,
            0,
            1,
        )
        assert ys.shape == (1, 45) and ys.dtype == torch.float16
        tent = torch.empty(6, 1, 8, dtype=torch.int32, device="cuda")
        starts = torch.empty(6, 1, 2, dtype=torch.int32, device="cuda")
        yt = ops.gemv_tiled(
            x[:1], tent, starts, 8, idx[:1], cb[:1], *[None] * 7, 45, 8, 8, 3, 0, 1, 0, 1
        )
        assert yt.shape == (1, 45) and yt.dtype == torch.float16
        pts = torch.empty(100, 5, device="cuda")
        lab, dist = ops.kmeans_assign(pts, torch.empty(7, 5, device="cuda"), 1)
        assert lab.dtype == torch.int32 and dist.shape == (100,)
        lab, dist = ops.kmeans_assign(pts, torch.empty(7, 5, device="cuda"), 2, 1)
        assert lab.shape == (100,) and dist.dtype == torch.float32
        s, ws = ops.kmeans_update(pts, None, lab, 7)
        assert s.shape == (7, 5) and s.dtype == torch.float64 and ws.shape == (7,)
        assert ops.kmeans_seed(pts, None, 7, 0).shape == (7, 5)


@pytest.mark.slow
@needs_toolchain
def test_one_token_gemv_kernels_do_not_spill(tmp_path):
    """ptxas report of the fp16 GEMV kernels (shared-memory and L2 codebooks, histogram,
    sorted, tiled, tiled mma): the 1-token instantiations, the decode hot path, keep every
    value in registers."""
    import re

    from torch.utils import cpp_extension

    src = cuda_ext.source_dir()
    nvcc = str(Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc")
    flags = ["-std=c++17", "-O3", "-arch=sm_90", "-Xptxas", "-v", "-I", str(src)]
    procs = [
        subprocess.Popen(
            [nvcc, *flags, "-c", str(src / tu), "-o", str(tmp_path / f"{tu}.o")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for tu in (
            "gemv_f16.cu",
            "gemv_f16_l2.cu",
            "gemv_hist_f16.cu",
            "gemv_sorted_f16.cu",
            "gemv_tiled_f16.cu",
        )
    ]
    report = "".join(p.communicate(timeout=600)[0] for p in procs)
    assert all(p.returncode == 0 for p in procs), report[-3000:]
    spills = re.findall(
        r"Function properties for \S*main_kernelI6__halfLi(\d+)ELi(\d+)ELb([01])ELb([01])E\S*\s+"
        r"\d+ bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
        report,
    )
    one_token = [s for s in spills if s[1] == "1"]
    # 16 vector lengths x 2 codebook placements x with and without a residual codebook
    assert len(one_token) == 64, report[-3000:]
    spilling = [f"v={v} smem={m} res={r}" for v, _, m, r, st, ld in one_token if int(st) or int(ld)]
    hist = re.findall(
        r"Function properties for \S*hist_kernelI6__halfLi(\d+)ELb([01])E\S*\s+"
        r"\d+ bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
        report,
    )
    assert len(hist) == 32, report[-3000:]  # 16 vector lengths x with and without a residual
    spilling += [f"hist v={v} res={r}" for v, r, st, ld in hist if int(st) or int(ld)]
    srt = re.findall(
        r"Function properties for \S*sorted_kernelI6__halfLi(\d+)ELb([01])E\S*\s+"
        r"\d+ bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
        report,
    )
    assert len(srt) == 32, report[-3000:]  # 16 vector lengths x the fixed and the group reach
    spilling += [f"sorted v={v} group_reach={g}" for v, g, st, ld in srt if int(st) or int(ld)]
    tiled = re.findall(
        r"Function properties for \S*tiled_kernelI6__halfLi(\d+)E\S*\s+"
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
        report,
    )
    assert len(tiled) == 16, report[-3000:]  # 16 vector lengths
    # nor a stack frame: the two tile buffers are addressed by arithmetic, not an array
    spilling += [f"tiled v={v}" for v, fr, st, ld in tiled if int(fr) or int(st) or int(ld)]
    mma = re.findall(
        r"Function properties for \S*tiled_mma_kernelI6__halfE\S*\s+"
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
        report,
    )
    assert len(mma) == 1, report[-3000:]
    spilling += ["tiled mma" for fr, st, ld in mma if int(fr) or int(st) or int(ld)]
    assert not spilling, spilling


@pytest.mark.slow
@needs_toolchain
def test_tiled_kmeans_loop_stays_lean(tmp_path):
    """SASS of the k-means assignment kernels (scripts/sass_loops.py): the tiled 1xTF32 hot
    loop spends a few instructions per mma on finding the minimum, the merged one ~20; the
    fp16 loop at d <= 16 is as lean, with one mma per step where TF32 needs two."""
    import json

    from torch.utils import cpp_extension

    bin_dir = Path(cpp_extension.CUDA_HOME) / "bin"
    if not (bin_dir / "cuobjdump").exists():
        pytest.skip("no cuobjdump (make cuda-toolchain installs it)")
    out = tmp_path / "sass.json"
    res = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "scripts" / "sass_loops.py"),
            str(cuda_ext.source_dir() / "kmeans.cu"),
            "--kernels",
            "assign_mma",
            "--cuda-home",
            cpp_extension.CUDA_HOME,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    k = json.loads(out.read_text())["kernels"]
    tiled, merged = k["tiled::assign_mma<1,1,false,256>"], k["merged::assign_mma<1,1>"]
    assert tiled["work"] == "HMMA" and tiled["instructions_per_work"] <= 6, tiled
    assert merged["instructions_per_work"] > 3 * tiled["instructions_per_work"], (merged, tiled)
    for name in ("<1,1,true,384>", "<1,1,true,256>", "<2,1,true,256>"):
        half = k[f"tiled::assign_mma{name}"]
        assert half["work"] == "HMMA" and half["instructions_per_work"] <= 6, half


def test_sass_loops_rejects_a_missing_source(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "scripts" / "sass_loops.py"),
            str(tmp_path / "nope.cu"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "nope.cu" in res.stderr
