"""CUDA kernels vs the pure-PyTorch references (needs a CUDA device; skipped otherwise).

``VPTQ_RS_KERNEL_SWEEP=small`` shrinks the sweep (used under compute-sanitizer).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vptq_rs import cuda_ext, sorted_layout, tiled_layout
from vptq_rs.errors import InvalidValueError
from vptq_rs.layout import LayerConfig
from vptq_rs.nn import VQuantLinear, packed_tensors, random_quantized_layer

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if cuda_ext.load() is None:
    pytest.skip(
        f"CUDA extension unavailable: {cuda_ext.unavailable_reason()}", allow_module_level=True
    )

SMALL = os.environ.get("VPTQ_RS_KERNEL_SWEEP") == "small"
DEV = torch.device("cuda")

# (in, out, v, K, Kres, groups, outliers (size, v0, K0), perm)
CONFIGS = [
    (64, 48, 8, 256, 0, 1, (0, 0, 0), False),
    (96, 50, 6, 4096, 4096, 2, (0, 0, 0), True),  # rows not a multiple of v
    (128, 36, 12, 16, 65536, 4, (0, 0, 0), True),  # K != Kres with groups: the upstream bug
    (72, 40, 3, 2, 0, 1, (8, 4, 32), True),  # 1-bit main, outliers with their own v0
    (200, 33, 1, 65536, 65536, 1, (8, 5, 256), False),  # 32-bit codes, v = 1
    (160, 64, 16, 512, 8, 2, (32, 16, 1024), True),
    (1040, 20, 5, 2048, 2, 4, (16, 3, 64), True),  # 2048+ columns per row: several tiles
    (48, 30, 7, 128, 128, 3, (0, 0, 0), False),
    (2304, 24, 4, 8, 2, 1, (0, 0, 0), True),  # group wider than one activation tile
]
# rows long enough for the GEMV's whole-chunk path (256 codes per warp, 128 past v = 8), each
# with a tail: no residual, residual with 4 codes per lane, outliers + residual
LONG_ROWS = [
    (4100, 64, 6, 4096, 0, 1, (0, 0, 0), True),
    (3000, 36, 12, 4096, 4096, 2, (0, 0, 0), False),
    (2576, 32, 8, 65536, 256, 1, (16, 8, 256), True),
]
CONFIGS += LONG_ROWS
if not SMALL:
    CONFIGS += [
        (64, 64, v, 1 << ib, (1 << rb) if rb else 0, 2, (0, 0, 0), True)
        for v, ib, rb in [
            (2, 13, 11),
            (9, 9, 14),
            (10, 11, 13),
            (11, 5, 3),
            (13, 14, 0),
            (14, 3, 16),
            (15, 16, 1),
        ]
    ]


def make(cfg_t, dtype, seed=0):
    i, o, v, k, kr, g, (osz, v0, k0), perm = cfg_t
    cfg = LayerConfig(
        in_features=i,
        out_features=o,
        vector_len=v,
        num_centroids=k,
        num_res_centroids=kr,
        group_num=g,
        outlier_size=osz,
        outlier_vector_len=v0 if osz else -1,
        outlier_num_centroids=k0 if osz else -1,
        enable_perm=perm,
        bias=True,
    )
    layer = random_quantized_layer(cfg, seed=seed, dtype=dtype)
    t = packed_tensors(layer)
    t = type(t)(*[x.to(DEV) if x is not None else None for x in t])
    return cfg, layer, t


@pytest.mark.parametrize("cfg_t", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dequant_bit_exact(cfg_t, dtype):
    cfg, layer, t = make(cfg_t, dtype)
    ref = layer.dequantize()
    got = cuda_ext.dequant(cfg, t)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert torch.equal(got.cpu(), ref), (got.cpu() - ref).abs().max()
    got32 = cuda_ext.dequant(cfg, t, torch.float32)
    assert torch.equal(got32.cpu(), layer.dequantize(torch.float32))


def test_dequant_norm_dtype_and_int64_perm():
    cfg, layer, t = make(CONFIGS[1], torch.float16)
    t2 = t._replace(
        weight_scale=t.weight_scale.float(),
        weight_bias=t.weight_bias.float(),
        perm=layer.perm.to(DEV),
    )
    assert torch.equal(cuda_ext.dequant(cfg, t2).cpu(), layer.dequantize())


def reference_linear(x, layer, bias):
    w = layer.dequantize(torch.float32).double().to(x.device)
    return x.double() @ w.t() + bias.double()


def reference_and_drift(x, layer, bias):
    """The fp64 reference of one fp16 token, and how far a dense fp16 F.linear drifts from
    it (relative): the tolerance the one-token kernels are held to."""
    ref = reference_linear(x, layer, bias)
    dense = F.linear(x, layer.dequantize(torch.float16).to(DEV), bias)
    return ref, ((dense.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("cfg_t", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 3] if SMALL else [1, 2, 3, 5, 8])
def test_gemv_matches_reference(cfg_t, dtype, tokens):
    cfg, layer, t = make(cfg_t, dtype, seed=tokens)
    gen = torch.Generator(device=DEV).manual_seed(tokens)
    x = torch.randn(tokens, cfg.in_features, device=DEV, generator=gen).to(dtype)
    bias = layer.bias.to(DEV)
    ref = reference_linear(x, layer, bias)
    # the tolerance: how far a same-precision dense computation drifts from fp64
    dense = F.linear(x, layer.dequantize(dtype).to(DEV), bias)
    drift = ((dense.double() - ref).norm() / ref.norm()).item()
    for mode in (0, 1, 2):
        y = cuda_ext.gemv(x, cfg, t, bias, mode=mode)
        assert y.shape == (tokens, cfg.out_features) and y.dtype == dtype
        assert torch.isfinite(y).all()
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert err <= max(2 * drift, 1e-3), (mode, err, drift)


@pytest.mark.parametrize("pipe_kb", ["0", "16"])
def test_gemv_l2_pipeline_cap(pipe_kb, monkeypatch):
    """The L2 path's shared-memory cap (tile, stages, carveout) changes speed, not results."""
    cfg, layer, t = make(LONG_ROWS[2], torch.float16, seed=3)
    x = torch.randn(2, cfg.in_features, device=DEV).half()
    bias = layer.bias.to(DEV)
    ref = reference_linear(x, layer, bias)
    want = cuda_ext.gemv(x, cfg, t, bias, mode=2)
    monkeypatch.setenv("VPTQ_RS_GEMV_L2_PIPE_KB", pipe_kb)
    y = cuda_ext.gemv(x, cfg, t, bias, mode=2)
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err <= 1e-3 and ((y.double() - want.double()).norm() / ref.norm()).item() <= 1e-3


# Layers the histogram kernel (mode 3) takes, as (in, out, v, K, Kres, outliers, perm):
# pairs of codes per 32-bit window (12 bits) over several tiles with a tail; one code per
# window with a residual (24 bits); 16-bit codes with a residual and outliers; 26-bit codes
# with 16384 bins (fewer rows per block); more row blocks than SMs (histograms re-zeroed);
# v = 1, and v = 13 (odd-sized entries, four rows per block).
HIST_LAYERS = [
    (4100, 64, 6, 4096, 0, (0, 0, 0), True),
    (3000, 36, 12, 4096, 4096, (0, 0, 0), False),
    (1030, 40, 8, 256, 256, (16, 4, 64), True),
    (700, 35, 16, 8192, 8192, (0, 0, 0), True),
    (600, 4100, 2, 256, 0, (0, 0, 0), False),
    (96, 300, 1, 32, 2, (8, 2, 16), True),
    (2100, 26, 13, 1024, 0, (0, 0, 0), True),
]


def make_hist(layer_t, dtype, seed=0):
    i, o, v, k, kr, outliers, perm = layer_t
    return make((i, o, v, k, kr, 1, outliers, perm), dtype, seed=seed)


@pytest.mark.parametrize("layer_t", HIST_LAYERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_histogram_kernel_matches_reference(layer_t, dtype):
    cfg, layer, t = make_hist(layer_t, dtype, seed=layer_t[0])
    assert cuda_ext.gemv_hist_applies(cfg, 1)
    x = torch.randn(1, cfg.in_features, device=DEV).to(dtype)
    bias = layer.bias.to(DEV)
    ref = reference_linear(x, layer, bias)
    dense = F.linear(x, layer.dequantize(dtype).to(DEV), bias)
    drift = ((dense.double() - ref).norm() / ref.norm()).item()
    y = cuda_ext.gemv(x, cfg, t, bias, mode=3)
    assert y.shape == (1, cfg.out_features) and y.dtype == dtype
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err <= max(2 * drift, 1e-3), (err, drift)
    # fixed-point sums do not depend on the order the atomics land in
    assert torch.equal(cuda_ext.gemv(x, cfg, t, bias, mode=3), y)


def test_gemv_histogram_kernel_edge_inputs():
    """Zero activations give the bias exactly (nothing rounds); a non-finite activation
    gives NaN everywhere, as a dot product with it would; activations spanning 2^26 (one
    large one sets the fixed-point step) stay within fp16 rounding of the reference."""
    cfg, layer, _ = make_hist(HIST_LAYERS[0], torch.float16)
    layer.weight_bias.zero_()  # else zero activations still meet sum_j bias_w[j] * 0 terms
    t = type(packed_tensors(layer))(*[a if a is None else a.to(DEV) for a in packed_tensors(layer)])
    bias = layer.bias.to(DEV)
    zero = torch.zeros(1, cfg.in_features, device=DEV).half()
    assert torch.equal(cuda_ext.gemv(zero, cfg, t, bias, mode=3), bias[None])
    bad = zero.clone()
    bad[0, 5] = float("inf")
    assert torch.isnan(cuda_ext.gemv(bad, cfg, t, bias, mode=3)).all()
    x = torch.full((1, cfg.in_features), 1e-3, device=DEV).half()
    x[0, 7] = 2e3  # the outputs stay finite in fp16
    y = cuda_ext.gemv(x, cfg, t, bias, mode=3)
    ref = reference_linear(x, layer, bias)
    assert torch.allclose(y.double(), ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


def test_gemv_histogram_mode_choice(monkeypatch):
    """Mode 0 takes the histogram kernel on a 1-token call whose rows have at least half as
    many columns as bins, on a layer with a vector row per SM (256 here), and a gather kernel
    otherwise or with VPTQ_RS_GEMV_HIST=0; mode 3 refuses what it does not cover with a
    message."""
    assert torch.cuda.get_device_properties(DEV).multi_processor_count <= 256
    for shape in ((1000, 1536), (2100, 24)):  # too few columns, too few rows
        cfg, _, t = make_hist((*shape, 6, 4096, 0, (0, 0, 0), True), torch.float16)
        x = torch.randn(1, cfg.in_features, device=DEV).half()
        gathers = [cuda_ext.gemv(x, cfg, t, mode=m) for m in (1, 2)]
        assert any(torch.equal(cuda_ext.gemv(x, cfg, t), g) for g in gathers), shape
    wide, _, tw = make_hist((2100, 1536, 6, 4096, 0, (0, 0, 0), True), torch.float16)
    xw = torch.randn(1, wide.in_features, device=DEV).half()
    assert torch.equal(cuda_ext.gemv(xw, wide, tw), cuda_ext.gemv(xw, wide, tw, mode=3))
    monkeypatch.setenv("VPTQ_RS_GEMV_HIST", "0")
    y0 = cuda_ext.gemv(xw, wide, tw)
    assert any(torch.equal(y0, cuda_ext.gemv(xw, wide, tw, mode=m)) for m in (1, 2))
    with pytest.raises(RuntimeError, match="mode 3"):
        cuda_ext.gemv(xw.expand(2, -1), wide, tw, mode=3)
    grouped, _, tg = make(CONFIGS[1], torch.float16)
    with pytest.raises(RuntimeError, match="group_num 1"):
        cuda_ext.gemv(torch.randn(1, grouped.in_features, device=DEV).half(), grouped, tg, mode=3)


# Layers the sorted kernel takes, as (in, out, v, K, Kres, outliers, perm): 12-bit codes over
# several chunks; a residual list (two codebooks staged in turn); small codebooks with
# outliers; more vector rows than SMs (several rows per block); v = 1 (32 rows per block on
# 132 SMs) and v = 13 and 16 (odd-sized entries, 512 threads); a group near the 32767-column
# limit (120 KB of activations in shared memory).
SORTED_LAYERS = [
    (4100, 64, 6, 4096, 0, (0, 0, 0), True),
    (4200, 36, 12, 4096, 4096, (0, 0, 0), False),
    (1030, 40, 8, 256, 256, (16, 4, 64), True),
    (600, 4100, 2, 256, 0, (0, 0, 0), False),
    (300, 4300, 1, 32, 2, (8, 2, 16), True),
    (2100, 26, 13, 1024, 0, (0, 0, 0), True),
    (1100, 35, 16, 1024, 64, (0, 0, 0), True),
    (30000, 24, 6, 4096, 0, (0, 0, 0), False),
]


@pytest.mark.parametrize("layer_t", SORTED_LAYERS[:4] if SMALL else SORTED_LAYERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_sorted_kernel_matches_reference(layer_t, dtype):
    cfg, layer, t = make_hist(layer_t, dtype, seed=layer_t[0])
    lay = sorted_layout.build(cfg, t.indices)
    assert sorted_layout.fits(cfg, lay, DEV)
    x = torch.randn(1, cfg.in_features, device=DEV).to(dtype)
    bias = layer.bias.to(DEV)
    ref = reference_linear(x, layer, bias)
    dense = F.linear(x, layer.dequantize(dtype).to(DEV), bias)
    drift = ((dense.double() - ref).norm() / ref.norm()).item()
    y = cuda_ext.gemv_sorted(x, cfg, t, lay, bias)
    assert y.shape == (1, cfg.out_features) and y.dtype == dtype
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err <= max(2 * drift, 1e-3), (err, drift)
    # every piece's sum has its own slot, added in a fixed order
    assert torch.equal(cuda_ext.gemv_sorted(x, cfg, t, lay, bias), y)


@pytest.mark.parametrize(
    "layer_t",
    [SORTED_LAYERS[0], SORTED_LAYERS[4], (2000, 1100, 1, 256, 256, (0, 0, 0), True)],
)
@pytest.mark.parametrize("grain", [1, 3])
def test_gemv_sorted_kernel_at_any_chunk_grain(layer_t, grain):
    """Finer chunks cut a block's groups into more even warp ranges, which then start inside
    lists and run on across rows (the last layer: 8-9 rows a block, two lists of 9 groups):
    the result still matches the reference and repeats bitwise."""
    cfg, layer, t = make_hist(layer_t, torch.float16, seed=grain)
    lay = sorted_layout.build(cfg, t.indices, chunk_groups_target=grain)
    x = torch.randn(1, cfg.in_features, device=DEV).half()
    bias = layer.bias.to(DEV)
    ref, drift = reference_and_drift(x, layer, bias)
    y = cuda_ext.gemv_sorted(x, cfg, t, lay, bias)
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err <= max(2 * drift, 1e-3), (err, drift)
    assert torch.equal(cuda_ext.gemv_sorted(x, cfg, t, lay, bias), y)


def test_gemv_sorted_kernel_edge_inputs_and_refusals():
    """Zero activations give the bias exactly; a NaN activation reaches every output (each
    list holds every column once); the op refuses two tokens, a layout of the wrong shape and
    a codebook that does not fit beside the activations, each with a message."""
    cfg, layer, _ = make_hist(SORTED_LAYERS[0], torch.float16)
    layer.weight_bias.zero_()
    t = type(packed_tensors(layer))(*[a if a is None else a.to(DEV) for a in packed_tensors(layer)])
    lay = sorted_layout.build(cfg, t.indices)
    bias = layer.bias.to(DEV)
    zero = torch.zeros(1, cfg.in_features, device=DEV).half()
    assert torch.equal(cuda_ext.gemv_sorted(zero, cfg, t, lay, bias), bias[None])
    bad = zero.clone()
    bad[0, 9] = float("nan")
    assert torch.isnan(cuda_ext.gemv_sorted(bad, cfg, t, lay, bias)).all()
    with pytest.raises(InvalidValueError, match="one token"):
        cuda_ext.gemv_sorted(zero.expand(2, -1), cfg, t, lay)
    short = lay._replace(entries=lay.entries[:, :, : 2 * sorted_layout.GROUP_ENTRIES].contiguous())
    with pytest.raises(RuntimeError, match="chunk_base must be"):
        cuda_ext.gemv_sorted(zero, cfg, t, short)
    wide, _, wt = make_hist((20000, 32, 16, 8192, 0, (0, 0, 0), False), torch.float16)
    wlay = sorted_layout.build(wide, wt.indices)
    assert not sorted_layout.fits(wide, wlay, DEV)  # 256 KB codebook
    with pytest.raises(RuntimeError, match="does not fit"):
        cuda_ext.gemv_sorted(torch.zeros(1, 20000, device=DEV).half(), wide, wt, wlay)


@pytest.mark.parametrize("layer_t", [SORTED_LAYERS[0], SORTED_LAYERS[1], SORTED_LAYERS[4]])
def test_gemv_sorted_group_reach_equals_the_fixed_reach(layer_t, monkeypatch):
    """The kernel for GPUs with less than 128 KB of shared memory a block (columns masked to
    the group's reach, VPTQ_RS_SORTED_REACH=group forces it) adds the same terms in the same
    order: bitwise the same result. The third layer's xs and codebook (292 floats and 32
    entries) are smaller than its reach (512 floats), so its shared memory is padded."""
    cfg, layer, t = make_hist(layer_t, torch.float16, seed=layer_t[0])
    lay = sorted_layout.build(cfg, t.indices)
    x = torch.randn(1, cfg.in_features, device=DEV).half()
    bias = layer.bias.to(DEV)
    fixed = cuda_ext.gemv_sorted(x, cfg, t, lay, bias)
    monkeypatch.setenv("VPTQ_RS_SORTED_REACH", "group")
    assert torch.equal(cuda_ext.gemv_sorted(x, cfg, t, lay, bias), fixed)


@pytest.mark.parametrize("reach", ["fixed", "group"])
def test_gemv_sorted_kernel_survives_a_garbage_layout(reach, monkeypatch):
    """Random entries and chunk base codes (codes past the codebook, columns past the group,
    bit 31 set): the kernel clamps the codes, its columns stay within its shared memory
    (sorted_layout.X_REACH_BYTES, or group_reach_bytes), and it returns."""
    monkeypatch.setenv("VPTQ_RS_SORTED_REACH", reach)
    cfg, _, t = make_hist(SORTED_LAYERS[0], torch.float16)
    lay = sorted_layout.build(cfg, t.indices)
    g = torch.Generator(device=DEV).manual_seed(1)
    junk = torch.randint(-(1 << 31), 1 << 31, lay.entries.shape, generator=g, device=DEV)
    base = torch.randint(-(1 << 20), 1 << 20, lay.chunk_base.shape, generator=g, device=DEV)
    bad = lay._replace(entries=junk.to(torch.int32), chunk_base=base.to(torch.int32))
    x = torch.randn(1, cfg.in_features, device=DEV).half()
    y = cuda_ext.gemv_sorted(x, cfg, t, bad)
    torch.cuda.synchronize()
    assert y.shape == (1, cfg.out_features)


def test_sorted_layout_builds_alike_on_gpu_and_cpu():
    cfg, _, t = make_hist(SORTED_LAYERS[1], torch.float16)
    on_gpu = sorted_layout.build(cfg, t.indices)
    on_cpu = sorted_layout.build(cfg, t.indices.cpu())
    assert on_gpu.chunk_groups == on_cpu.chunk_groups
    assert torch.equal(on_gpu.entries.cpu(), on_cpu.entries)
    assert torch.equal(on_gpu.chunk_base.cpu(), on_cpu.chunk_base)


def test_vquantlinear_sorted_gemv_path():
    """use_sorted_gemv: one-token forwards go through the sorted kernel (equal to calling it
    directly), several tokens through the other kernels; off again, mode 0 comes back."""
    _, layer, _ = make_hist(SORTED_LAYERS[0], torch.float16, seed=5)
    mod = VQuantLinear.from_quantized(layer, torch.float16).to(DEV)
    cfg = mod.config
    x = torch.randn(1, 1, cfg.in_features, device=DEV).half()
    base = mod(x)
    assert mod.use_sorted_gemv()
    lay = sorted_layout.build(cfg, mod.indices)
    y = mod(x)
    assert torch.equal(y[0], cuda_ext.gemv_sorted(x[0], cfg, mod.packed(), lay, mod.bias))
    assert ((y.double() - base.double()).norm() / base.double().norm()).item() < 1e-3
    x3 = torch.randn(3, cfg.in_features, device=DEV).half()
    assert torch.equal(mod(x3), cuda_ext.gemv(x3, cfg, mod.packed(), mod.bias))
    mod.use_sorted_gemv(False)
    assert torch.equal(mod(x), base)
    _, nlayer, _ = make_hist((1000, 64, 6, 4096, 0, (0, 0, 0), True), torch.float16)
    assert not VQuantLinear.from_quantized(nlayer).use_sorted_gemv()


# Layers the tiled kernel takes, as (in, out, v, K, Kres, outliers, perm): a 65,536-row
# codebook over 16+ tiles; a smaller residual codebook (its upper tiles are empty); residual,
# outliers and perm together; 16 vector rows a block (v = 2) and 33 (v = 1: two rows for most
# warps); v = 13 and 16 (512 threads, odd-sized rows); a 30000-column group (small tiles).
TILED_LAYERS = [
    (4100, 64, 8, 65536, 0, (0, 0, 0), True),
    (3000, 40, 8, 65536, 256, (0, 0, 0), False),
    (1030, 40, 4, 4096, 4096, (16, 4, 64), True),
    (600, 4100, 2, 1024, 0, (0, 0, 0), False),
    (300, 4300, 1, 512, 0, (8, 2, 16), True),
    (2100, 26, 13, 4096, 0, (0, 0, 0), True),
    (1100, 35, 16, 8192, 64, (0, 0, 0), True),
    (30000, 24, 6, 65536, 0, (0, 0, 0), False),
]


def tiled_forms(cfg) -> list[tuple[bool, bool]]:
    """The tiled layout's forms, as (mma, cluster), that this GPU runs for layers like cfg."""
    mma = [False, True] if tiled_layout.mma_supported(cfg, DEV) else [False]
    cluster = [False, True] if tiled_layout.cluster_supported(DEV) else [False]
    return [(m, c) for c in cluster for m in mma]


needs_clusters = pytest.mark.skipif(
    not (torch.cuda.is_available() and tiled_layout.cluster_supported(DEV)),
    reason="thread-block clusters need an sm_90+ GPU",
)


@pytest.mark.parametrize("layer_t", TILED_LAYERS[:4] if SMALL else TILED_LAYERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_tiled_kernel_matches_reference(layer_t, dtype):
    cfg, layer, t = make_hist(layer_t, dtype, seed=layer_t[0])
    tile_codes = tiled_layout.device_tile_codes(cfg, DEV)
    assert tile_codes is not None
    x = torch.randn(1, cfg.in_features, device=DEV).to(dtype)
    bias = layer.bias.to(DEV)
    ref = reference_linear(x, layer, bias)
    dense = F.linear(x, layer.dequantize(dtype).to(DEV), bias)
    drift = ((dense.double() - ref).norm() / ref.norm()).item()
    # the kernel's tile, and a small one (many tiles, most runs a step or less); entries
    # dealt by bank key (the default) and in column order; every form the GPU runs (scalar;
    # mma at v = 8; cluster on sm_90+, where the small tile gives each block many phases,
    # over either)
    for mma, cluster in tiled_forms(cfg):
        tcm = tiled_layout.device_tile_codes(cfg, DEV, mma=mma, cluster=cluster)
        for tc, deal in ((tcm, True), (64, True), (tcm, False)):
            lay = tiled_layout.build(
                cfg, t.indices, tc, deal_by_bank=deal, mma=mma, cluster=cluster
            )
            y = cuda_ext.gemv_tiled(x, cfg, t, lay, bias)
            assert y.shape == (1, cfg.out_features) and y.dtype == dtype
            err = ((y.double() - ref).norm() / ref.norm()).item()
            # the mma kernel rounds each activation to the codebook's type (bf16: 2^-9)
            assert err <= max(2 * drift, 1e-3), (mma, cluster, tc, err, drift)
            # each item's sums stay with one warp; a row's splits are added in a fixed order
            assert torch.equal(cuda_ext.gemv_tiled(x, cfg, t, lay, bias), y)


def test_gemv_tiled_kernel_edge_inputs_and_refusals():
    """Zero activations give the bias exactly; a NaN activation reaches every output; the op
    refuses two tokens, a layout of the wrong shape, a tile that is not a power of two and
    a layer with more vector rows than the warps of 132 SMs take, each with a message."""
    cfg, layer, _ = make_hist(TILED_LAYERS[0], torch.float16)
    layer.weight_bias.zero_()
    t = type(packed_tensors(layer))(*[a if a is None else a.to(DEV) for a in packed_tensors(layer)])
    lay = tiled_layout.build(cfg, t.indices, tiled_layout.device_tile_codes(cfg, DEV))
    bias = layer.bias.to(DEV)
    zero = torch.zeros(1, cfg.in_features, device=DEV).half()
    assert torch.equal(cuda_ext.gemv_tiled(zero, cfg, t, lay, bias), bias[None])
    bad = zero.clone()
    bad[0, 9] = float("nan")
    assert torch.isnan(cuda_ext.gemv_tiled(bad, cfg, t, lay, bias)).all()
    with pytest.raises(InvalidValueError, match="one token"):
        cuda_ext.gemv_tiled(zero.expand(2, -1), cfg, t, lay)
    short = lay._replace(tile_start=lay.tile_start[:, :, :-1].contiguous())
    with pytest.raises(RuntimeError, match="tile_start must be"):
        cuda_ext.gemv_tiled(zero, cfg, t, short)
    with pytest.raises(RuntimeError, match="power of two"):
        cuda_ext.gemv_tiled(zero, cfg, t, lay._replace(tile_codes=96))
    # the mma form: the same edge cases; it takes v = 8 only
    mlay = tiled_layout.build(
        cfg, t.indices, tiled_layout.device_tile_codes(cfg, DEV, mma=True), mma=True
    )
    assert torch.equal(cuda_ext.gemv_tiled(zero, cfg, t, mlay, bias), bias[None])
    assert torch.isnan(cuda_ext.gemv_tiled(bad, cfg, t, mlay, bias)).all()
    # an activation past fp16's range once scaled by its norm (60000 x 4): the mma kernel
    # scales xs by a power of two first, so it matches the scalar kernel's fp32 sums
    one = zero.clone()
    one[0, 7] = 60000.0
    scale = t.weight_scale.clone()
    scale[7] = 4.0
    ts = t._replace(centroids=t.centroids * 0.01, weight_scale=scale)
    want = cuda_ext.gemv_tiled(one, cfg, ts, lay)
    mlays = [mlay]
    if tiled_layout.cluster_supported(DEV):  # the cluster kernel over mma entries: the same
        tc = tiled_layout.device_tile_codes(cfg, DEV, mma=True, cluster=True)
        mlays.append(tiled_layout.build(cfg, t.indices, tc, mma=True, cluster=True))
    for ml in mlays:
        assert torch.equal(cuda_ext.gemv_tiled(zero, cfg, t, ml, bias), bias[None])
        got = cuda_ext.gemv_tiled(one, cfg, ts, ml)
        assert torch.isfinite(want).all() and torch.isfinite(got).all()
        assert ((got.double() - want.double()).norm() / want.double().norm()).item() < 1e-3
    v4, _, t4 = make_hist(TILED_LAYERS[2], torch.float16)
    lay4 = tiled_layout.build(v4, t4.indices, 64)
    for form in (1, 3, 4):  # the mma forms take v = 8 only; there is no form 4
        with pytest.raises(RuntimeError, match="form must be"):
            torch.ops.vptq_rs.gemv_tiled(
                torch.zeros(1, v4.in_features, device=DEV).half(),
                lay4.entries,
                lay4.tile_start,
                64,
                *cuda_ext._layer_args(v4, t4)[0],
                None,
                *cuda_ext._layer_args(v4, t4)[1],
                form,
            )
    tall, _, tt = make_hist((64, 9000, 1, 16, 0, (0, 0, 0), False), torch.float16)
    assert tiled_layout.device_tile_codes(tall, DEV) is None  # 69 rows a block > 64
    tlay = tiled_layout.build(tall, tt.indices, 16)
    with pytest.raises(RuntimeError, match="does not fit"):
        cuda_ext.gemv_tiled(torch.zeros(1, 64, device=DEV).half(), tall, tt, tlay)


@needs_clusters
@pytest.mark.parametrize("size", ["1", "3", "8", "16"])
def test_gemv_tiled_cluster_kernel_over_cluster_sizes(size, monkeypatch):
    """The cluster kernel at any cluster size (VPTQ_RS_TILED_CLUSTER_SIZE; 3 does not divide
    the 16 phases, so blocks get unequal phase counts; 16 may fall back to 8 where the
    device holds no 16-block cluster), over scalar and (v = 8) mma entries, matches the
    reference and repeats bitwise. Layers of 9000 vector rows, which the tiled kernel
    refuses, give each warp more than 32 rows (its tile starts come in chunks of 32)."""
    monkeypatch.setenv("VPTQ_RS_TILED_CLUSTER_SIZE", size)
    for layer_t, mma in (
        (TILED_LAYERS[1], False),
        (TILED_LAYERS[1], True),
        ((64, 9000, 1, 16, 0, (0, 0, 0), False), False),
        ((64, 72000, 8, 256, 0, (0, 0, 0), False), True),
    ):
        cfg, layer, t = make_hist(layer_t, torch.float16, seed=3)
        tc = tiled_layout.device_tile_codes(cfg, DEV, mma=mma, cluster=True)
        assert tc is not None
        if cfg.num_centroids > 16:
            tc = min(tc, cfg.num_centroids // 16)  # 16 phases
        lay = tiled_layout.build(cfg, t.indices, tc, mma=mma, cluster=True)
        x = torch.randn(1, cfg.in_features, device=DEV).half()
        bias = layer.bias.to(DEV)
        ref, drift = reference_and_drift(x, layer, bias)
        y = cuda_ext.gemv_tiled(x, cfg, t, lay, bias)
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert err <= max(2 * drift, 1e-3), (size, layer_t, mma, err, drift)
        assert torch.equal(cuda_ext.gemv_tiled(x, cfg, t, lay, bias), y)


@pytest.mark.parametrize(
    ("kernel", "layer_t"),
    [
        ("tiled_cluster", TILED_LAYERS[2]),  # outliers, perm, residual (two lists)
        ("sorted", SORTED_LAYERS[2]),  # outliers, perm, residual
        ("sorted", SORTED_LAYERS[4]),  # outliers, perm, 32 rows a block
        ("sorted", (30000, 24, 6, 4096, 0, (0, 0, 0), True)),  # 30 prologue chunks
        ("tiled", TILED_LAYERS[2]),
        ("tiled", TILED_LAYERS[4]),
        ("tiled_mma", TILED_LAYERS[0]),  # perm, v = 8
        ("tiled_cluster_mma", TILED_LAYERS[0]),
    ],
)
def test_one_token_kernels_compute_xs_as_the_prologue_kernel_does(kernel, layer_t, monkeypatch):
    """The sorted and tiled kernels permute and scale the activations themselves
    (VPTQ_RS_GEMV_PROLOGUE=fused) or after the prologue kernel (=kernel). Both match the
    reference, for int16 and int64 perms and 16- and 32-bit norms. Without a weight bias
    they add the same terms in the same order (bitwise the same result); with one, the bias
    sum's terms are grouped differently (per warp against per 1024 columns), which shows
    which path the default took: fused up to 8192 columns, else the kernel."""
    if kernel.startswith("tiled_cluster") and not tiled_layout.cluster_supported(DEV):
        pytest.skip("thread-block clusters need an sm_90+ GPU")
    cfg, layer, t = make_hist(layer_t, torch.float16, seed=layer_t[0])
    if kernel == "sorted":
        lay = sorted_layout.build(cfg, t.indices)
        op = cuda_ext.gemv_sorted
    else:
        mma, cluster = kernel.endswith("mma"), kernel.startswith("tiled_cluster")
        tc = tiled_layout.device_tile_codes(cfg, DEV, mma=mma, cluster=cluster)
        lay = tiled_layout.build(cfg, t.indices, tc, mma=mma, cluster=cluster)
        op = cuda_ext.gemv_tiled
    x = torch.randn(1, cfg.in_features, device=DEV).half()
    bias = layer.bias.to(DEV)
    ref = reference_linear(x, layer, bias)
    dense = F.linear(x, layer.dequantize(torch.float16).to(DEV), bias)
    drift = ((dense.double() - ref).norm() / ref.norm()).item()
    wide = t._replace(
        weight_scale=t.weight_scale.float(),
        weight_bias=t.weight_bias.float(),
        perm=None if t.perm is None else layer.perm.to(DEV).long(),
    )
    no_wbias = t._replace(weight_bias=torch.zeros_like(t.weight_bias))
    for tv in (t, wide, no_wbias):
        monkeypatch.setenv("VPTQ_RS_GEMV_PROLOGUE", "fused")
        fused = op(x, cfg, tv, lay, bias)
        monkeypatch.setenv("VPTQ_RS_GEMV_PROLOGUE", "kernel")
        separate = op(x, cfg, tv, lay, bias)
        monkeypatch.delenv("VPTQ_RS_GEMV_PROLOGUE")
        default = op(x, cfg, tv, lay, bias)
        if tv is no_wbias:
            assert torch.equal(fused, separate) and torch.equal(default, fused)
            continue
        expect = fused if cfg.in_features <= 8192 else separate
        assert torch.equal(default, expect)
        for y in (fused, separate):
            err = ((y.double() - ref).norm() / ref.norm()).item()
            assert err <= max(2 * drift, 1e-3), (err, drift)
        gap = ((fused.double() - separate.double()).norm() / ref.norm()).item()
        assert gap <= 1e-3, gap


@pytest.mark.parametrize("form", ["scalar", "mma", "cluster", "cluster_mma"])
def test_gemv_tiled_kernel_survives_a_garbage_layout(form):
    """Random entries and tile starts (codes outside the tile, columns past the group, runs
    that end before they start or past the row, starts off the mma form's steps): the kernel
    clamps every index and returns."""
    if form.startswith("cluster") and not tiled_layout.cluster_supported(DEV):
        pytest.skip("thread-block clusters need an sm_90+ GPU")
    mma, cluster = form.endswith("mma"), form.startswith("cluster")
    cfg, _, t = make_hist(TILED_LAYERS[1], torch.float16)
    tc = tiled_layout.device_tile_codes(cfg, DEV, mma=mma, cluster=cluster)
    lay = tiled_layout.build(cfg, t.indices, tc, mma=mma, cluster=cluster)
    g = torch.Generator(device=DEV).manual_seed(1)
    junk = torch.randint(-(1 << 31), 1 << 31, lay.entries.shape, generator=g, device=DEV)
    n = lay.entries.shape[2]
    starts = torch.randint(-100, n + 100, lay.tile_start.shape, generator=g, device=DEV)
    bad = lay._replace(entries=junk.to(torch.int32), tile_start=starts.to(torch.int32))
    x = torch.randn(1, cfg.in_features, device=DEV).half()
    y = cuda_ext.gemv_tiled(x, cfg, t, bad)
    torch.cuda.synchronize()
    assert y.shape == (1, cfg.out_features)


def test_tiled_layout_builds_alike_on_gpu_and_cpu():
    cfg, _, t = make_hist(TILED_LAYERS[1], torch.float16)
    for mma in (False, True):
        on_gpu = tiled_layout.build(cfg, t.indices, 1024, mma=mma)
        on_cpu = tiled_layout.build(cfg, t.indices.cpu(), 1024, mma=mma)
        assert torch.equal(on_gpu.entries.cpu(), on_cpu.entries)
        assert torch.equal(on_gpu.tile_start.cpu(), on_cpu.tile_start)


@pytest.mark.parametrize("form", ["scalar", "mma", "cluster", "cluster_mma"])
def test_vquantlinear_sorted_gemv_takes_the_tiled_kernel_for_wide_codebooks(form, monkeypatch):
    """A codebook wider than a row on a layer large enough (tiled_layout.pays):
    use_sorted_gemv turns on the tiled kernel (equal to calling it directly), over mma entries
    with VPTQ_RS_TILED_MMA=1, in the cluster form unless VPTQ_RS_TILED_CLUSTER=0 (on sm_90+);
    several tokens keep the other kernels; a small layer keeps them too."""
    if form.startswith("cluster") and not tiled_layout.cluster_supported(DEV):
        pytest.skip("thread-block clusters need an sm_90+ GPU")
    mma, cluster = form.endswith("mma"), form.startswith("cluster")
    monkeypatch.setenv("VPTQ_RS_TILED_MMA", "1" if mma else "0")
    monkeypatch.setenv("VPTQ_RS_TILED_CLUSTER", "1" if cluster else "0")
    _, layer, _ = make_hist((4096, 8448, 8, 16384, 0, (0, 0, 0), True), torch.float16, seed=5)
    mod = VQuantLinear.from_quantized(layer, torch.float16).to(DEV)
    cfg = mod.config
    x = torch.randn(1, 1, cfg.in_features, device=DEV).half()
    base = mod(x)
    assert mod.use_sorted_gemv()
    assert tiled_layout.uses_mma(cfg, DEV) == mma  # v = 8 on an sm_80+ GPU
    assert tiled_layout.uses_cluster(cfg, DEV) == cluster
    tc = tiled_layout.device_tile_codes(cfg, DEV, mma=mma, cluster=cluster)
    lay = tiled_layout.build(cfg, mod.indices, tc, mma=mma, cluster=cluster)
    y = mod(x)
    assert torch.equal(y[0], cuda_ext.gemv_tiled(x[0], cfg, mod.packed(), lay, mod.bias))
    assert ((y.double() - base.double()).norm() / base.double().norm()).item() < 1e-3
    x3 = torch.randn(3, cfg.in_features, device=DEV).half()
    assert torch.equal(mod(x3), cuda_ext.gemv(x3, cfg, mod.packed(), mod.bias))
    _, small, _ = make_hist(TILED_LAYERS[0], torch.float16)
    assert not VQuantLinear.from_quantized(small).use_sorted_gemv()


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` whose data starts 4 bytes past a 16-byte boundary."""
    pad = 4 // t.element_size()
    buf = torch.empty(t.numel() + pad, dtype=t.dtype, device=t.device)
    out = buf[pad:].view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 16 == 4
    return out


@pytest.mark.parametrize("cfg_t", [CONFIGS[1], CONFIGS[3]])
def test_gemv_shared_codebooks_at_any_alignment(cfg_t):
    """Staging codebooks in shared memory copies 16 bytes at a time only from aligned ones."""
    cfg, layer, t = make(cfg_t, torch.float16, seed=7)
    x = torch.randn(2, cfg.in_features, device=DEV).half()
    bias = layer.bias.to(DEV)
    want = cuda_ext.gemv(x, cfg, t, bias, mode=1)
    moved = t._replace(
        centroids=misaligned(t.centroids),
        res_centroids=None if t.res_centroids is None else misaligned(t.res_centroids),
    )
    assert torch.equal(cuda_ext.gemv(x, cfg, moved, bias, mode=1), want)


def test_gemm_many_tokens_and_batch_shape():
    cfg, layer, t = make(CONFIGS[2], torch.float16)
    x = torch.randn(2, 9, cfg.in_features, device=DEV).half()
    bias = layer.bias.to(DEV)
    y = cuda_ext.gemm(x, cfg, t, bias)
    dense = F.linear(x, layer.dequantize().to(DEV), bias)
    assert y.shape == (2, 9, cfg.out_features)
    assert torch.equal(y, dense)
    y1 = cuda_ext.gemm(x[:1, :4], cfg, t, bias)  # 4 tokens: the fused kernel
    assert torch.allclose(y1.float(), dense[:1, :4].float(), rtol=1e-2, atol=1e-2)


def test_gemv_reads_every_perm_dtype_alike():
    """The checkpoint's int16 perm goes to the kernel as is, its values past 32767 read as
    uint16; int32 and int64 perms give the same output."""
    cfg, layer, t = make((40000, 16, 8, 256, 0, 1, (0, 0, 0), True), torch.float16, seed=2)
    assert t.perm.dtype == torch.int16 and int(t.perm.min()) < 0  # wrapped uint16 values
    x = torch.randn(2, cfg.in_features, device=DEV).half()
    bias = layer.bias.to(DEV)
    want = cuda_ext.gemv(x, cfg, t, bias)
    ref = reference_linear(x, layer, bias)
    assert ((want.double() - ref).norm() / ref.norm()).item() <= 1e-3
    wide = layer.perm.to(DEV)  # int64 values in [0, 40000)
    for perm in (wide.int(), wide):
        assert torch.equal(cuda_ext.gemv(x, cfg, t._replace(perm=perm), bias), want)


def test_gemv_gradient_reaches_x():
    """A frozen quantized layer passes ``grad_y @ W`` back to its input (LoRA on earlier
    layers with at most 8 tokens), through the op wrapper and the module."""
    from vptq_rs.nn import VQuantLinear

    cfg, layer, t = make(CONFIGS[1], torch.float16)
    bias = layer.bias.to(DEV)
    mod = VQuantLinear.from_quantized(layer).to(DEV)
    w = cuda_ext.dequant(cfg, t)
    for fn in (lambda a: cuda_ext.gemv(a, cfg, t, bias), mod):
        x = torch.randn(3, cfg.in_features, device=DEV).half().requires_grad_()
        y = fn(x)
        grad = torch.randn_like(y)
        y.backward(grad)
        assert torch.equal(x.grad, grad @ w)


def test_module_fast_path_equals_the_general_path():
    """VQuantLinear calls the fused op with arguments checked once per set of parameter
    objects; swapping a parameter or the dtype checks again, never reusing stale tensors."""
    from torch import nn

    from vptq_rs import ops
    from vptq_rs.nn import VQuantLinear

    cfg, layer, _ = make(CONFIGS[5], torch.float16)  # residual, outliers, perm, groups
    mod = VQuantLinear.from_quantized(layer).to(DEV)
    gen = torch.Generator(device=DEV).manual_seed(0)

    def check(dtype, tokens):
        x = torch.randn(2, tokens, cfg.in_features, device=DEV, generator=gen).to(dtype)
        with torch.no_grad():
            y = mod(x)
            want = ops.vq_linear(x, mod.config, mod.packed(), mod.bias)
        assert y.shape == (2, tokens, cfg.out_features) and torch.equal(y, want)
        return x, y

    for tokens in (1, 4, 5):  # 2, 8 and 10 rows: the fused op, then dequantize + cuBLAS
        check(torch.float16, tokens)
    fused = mod._fused
    assert fused is not None and fused.tensors is not None
    x, y = check(torch.float16, 1)
    assert mod._fused is fused  # reused
    mod.centroids.weight = nn.Parameter(mod.centroids.weight * 2, requires_grad=False)
    with torch.no_grad():
        y2 = mod(x)
    assert mod._fused is not fused and not torch.equal(y2, y)
    assert torch.equal(y2, ops.vq_linear(x, mod.config, mod.packed(), mod.bias))
    mod.to(torch.bfloat16)
    check(torch.bfloat16, 2)
    assert mod._fused.dtype == torch.bfloat16


def test_input_checks_name_the_argument():
    cfg, _, t = make(CONFIGS[0], torch.float16)
    with pytest.raises(InvalidValueError, match="indices must be int32"):
        cuda_ext.dequant(cfg, t._replace(indices=t.indices.long()))
    with pytest.raises(InvalidValueError, match="centroids must hold"):
        cuda_ext.dequant(cfg, t._replace(centroids=t.centroids[:, :-8]))
    x = torch.randn(1, cfg.in_features, device=DEV, dtype=torch.float16)
    with pytest.raises(InvalidValueError, match="weight_scale must be on"):
        cuda_ext.gemv(x, cfg, t._replace(weight_scale=t.weight_scale.cpu()))


@pytest.mark.skipif(SMALL, reason="subprocess: not part of the sanitizer sweep")
def test_op_level_check_raises_runtime_error():
    """A TORCH_CHECK inside the C++ op must surface as RuntimeError (in a child process, so
    a crash in error propagation fails this test instead of the session)."""
    code = (
        "import torch; from vptq_rs import cuda_ext; cuda_ext.load()\n"
        "idx = torch.zeros(1, 2, 1, dtype=torch.int64, device='cuda')\n"
        "cb = torch.zeros(1, 16, dtype=torch.float16, device='cuda')\n"
        "try:\n"
        "    torch.ops.vptq_rs.dequant(idx, cb, None, None, None, None, None, None,"
        " 2, 2, 2, 3, 0, 1, 0, 1, torch.float16)\n"
        "except RuntimeError as e:\n"
        "    print('raised:', str(e).splitlines()[0])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "raised: indices must be int32" in r.stdout


@pytest.mark.skipif(SMALL, reason="compile/graphs are not part of the sanitizer sweep")
def test_cuda_graph_and_compile():
    cfg, layer, t = make(CONFIGS[5], torch.float16)
    x = torch.randn(2, cfg.in_features, device=DEV).half()
    bias = layer.bias.to(DEV)
    eager = cuda_ext.gemv(x, cfg, t, bias)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = cuda_ext.gemv(x, cfg, t, bias)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
    fn = torch.compile(lambda a: cuda_ext.gemv(a, cfg, t, bias), fullgraph=True)
    assert torch.equal(fn(x), eager)


# ---- k-means ---------------------------------------------------------------------------------


def brute_labels(x, c):
    d = torch.cdist(x.double(), c.double())
    return d.argmin(1), d.min(1).values ** 2


DESIGNS = list(cuda_ext.KMEANS_DESIGNS.values())


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("d", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("k", [1, 7, 300, 5000])
def test_assign_fp32_exact(d, k, design):
    gen = torch.Generator(device=DEV).manual_seed(d * 1000 + k)
    n = 3000 if SMALL else 20000
    x = torch.randn(n, d, device=DEV, generator=gen)
    c = torch.randn(k, d, device=DEV, generator=gen)
    labels, dist = torch.ops.vptq_rs.kmeans_assign(x, c, 0, design)
    _, refd = brute_labels(x, c)
    # the score |c|^2 - 2 x.c is exact up to fp32 rounding of terms of size |x|^2 + |c|^2
    got_d = ((x.double() - c.double()[labels.long()]) ** 2).sum(1)
    assert (got_d <= refd + rounding_slack(x, c)).all()
    assert torch.allclose(dist.double(), got_d, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", [2, 8, 16])
def test_tiled_fp32_labels_equal_merged(d):
    """Both designs compute the same fp32 scores in the same order: identical labels, ties
    (duplicate centroids here) to the lowest index; k spans several shared-memory chunks."""
    gen = torch.Generator(device=DEV).manual_seed(40 + d)
    n, k = (5000, 3000) if SMALL else (30001, 12000)
    x = torch.randn(n, d, device=DEV, generator=gen)
    c = torch.randn(k, d, device=DEV, generator=gen)
    c[k // 2 :: 7] = c[1 : 1 + len(range(k // 2, k, 7))]
    a, da = torch.ops.vptq_rs.kmeans_assign(x, c, 0, 0)
    b, db = torch.ops.vptq_rs.kmeans_assign(x, c, 0, 1)
    assert torch.equal(a, b) and torch.equal(da, db)


def rounding_slack(x, c):
    return 1e-6 * (x.double().pow(2).sum(1) + c.double().pow(2).sum(1).max())


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("d", [2, 8, 12, 16])
def test_assign_tf32_close(d, design):
    gen = torch.Generator(device=DEV).manual_seed(d)
    n, k = (4000, 3000) if SMALL else (20000, 70000 // d)
    x = torch.randn(n, d, device=DEV, generator=gen)
    c = torch.randn(k, d, device=DEV, generator=gen)
    _, refd = brute_labels(x, c)
    labels, dist = torch.ops.vptq_rs.kmeans_assign(x, c, 1, design)
    got_d = ((x.double() - c.double()[labels.long()]) ** 2).sum(1)
    assert (got_d <= refd + 4 * rounding_slack(x, c)).all()
    assert (labels >= 0).all() and (labels < k).all()
    assert torch.allclose(dist.double(), got_d, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("d", [4, 8, 12])
def test_assign_tf32x1_close(d, design):
    gen = torch.Generator(device=DEV).manual_seed(10 + d)
    n, k = (4000, 3000) if SMALL else (20000, 70000 // d)
    x = torch.randn(n, d, device=DEV, generator=gen)
    c = torch.randn(k, d, device=DEV, generator=gen)
    _, refd = brute_labels(x, c)
    labels, dist = torch.ops.vptq_rs.kmeans_assign(x, c, 2, design)
    got_d = ((x.double() - c.double()[labels.long()]) ** 2).sum(1)
    # one TF32 product: scores are off by ~2^-10 of |x|^2 + |c|^2, not more
    assert (got_d <= refd + 1e3 * rounding_slack(x, c)).all()
    assert float(got_d.sum() / refd.sum()) < 1.001
    assert torch.allclose(dist.double(), got_d, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", [3, 8, 12, 16])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 3e4])
def test_assign_fp16x1_close(d, scale):
    """One fp16 product on power-of-two scaled operands: as close as one TF32 product at any
    magnitude, including points and centroids far outside fp16's range (3e4 * randn)."""
    gen = torch.Generator(device=DEV).manual_seed(20 + d)
    n, k = (4000, 3000) if SMALL else (20000, 70000 // d)
    x = torch.randn(n, d, device=DEV, generator=gen) * scale
    c = torch.randn(k, d, device=DEV, generator=gen) * scale
    _, refd = brute_labels(x, c)
    labels, dist = torch.ops.vptq_rs.kmeans_assign(x, c, 3, 1)
    got_d = ((x.double() - c.double()[labels.long()]) ** 2).sum(1)
    assert (got_d <= refd + 1e3 * rounding_slack(x, c)).all()
    assert torch.allclose(dist.double(), got_d, rtol=1e-5, atol=1e-6 * scale**2)
    # as good as tf32x1 overall (same significand width), by the excess over the exact
    # total: 0.5% at d = 3 on an H100 (neighbours are close next to |x|^2 + |c|^2), under
    # 0.1% from d = 4
    _, d2 = torch.ops.vptq_rs.kmeans_assign(x, c, 2, 1)
    ref, ours, tf32 = float(refd.sum()), float(dist.double().sum()), float(d2.double().sum())
    assert ours - ref <= 1.5 * (tf32 - ref) + 1e-4 * ref
    if d >= 4:
        assert ours / ref < 1.001


def test_assign_fp16x1_points_and_centroids_of_different_magnitude():
    """Points get a scale per warp, centroids one per call: tiny points among large
    centroids and one warp of huge points still find their nearest centroid."""
    gen = torch.Generator(device=DEV).manual_seed(29)
    n, k = 4096, 2000
    c = torch.randn(k, 8, device=DEV, generator=gen)
    x = c[torch.randint(0, k, (n,), device=DEV, generator=gen)]
    x[:2048] *= 1e-4  # near the origin: the nearest centroid is the smallest one
    x[2048:2176] = 1e3 * torch.randn(128, 8, device=DEV, generator=gen)
    _, refd = brute_labels(x, c)
    labels, _ = torch.ops.vptq_rs.kmeans_assign(x, c, 3, 1)
    got_d = ((x.double() - c.double()[labels.long()]) ** 2).sum(1)
    assert (got_d <= refd + 1e3 * rounding_slack(x, c)).all()


def test_fp16x1_labels_do_not_depend_on_the_block_size(monkeypatch):
    """VPTQ_RS_KMEANS_THREADS=384 puts 12 warps in a block instead of 8; each warp still
    scores its own 128 points against the same centroid chunks: the same labels."""
    gen = torch.Generator(device=DEV).manual_seed(31)
    x = torch.randn(50000, 8, device=DEV, generator=gen)
    c = torch.randn(3000, 8, device=DEV, generator=gen)
    want = torch.ops.vptq_rs.kmeans_assign(x, c, 3, 1)
    monkeypatch.setenv("VPTQ_RS_KMEANS_THREADS", "384")
    got = torch.ops.vptq_rs.kmeans_assign(x, c, 3, 1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_fp16x1_needs_the_tiled_design():
    x = torch.randn(100, 4, device=DEV)
    with pytest.raises(RuntimeError, match="tiled"):
        torch.ops.vptq_rs.kmeans_assign(x, x[:10].contiguous(), 3, 0)


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_tiled_scores_survive_a_far_outlier(mode):
    """The tiled design offsets scores by the largest |x|^2 of a warp (<= 128 points): a point
    1000x farther out than the rest coarsens its warp-mates' scores only."""
    gen = torch.Generator(device=DEV).manual_seed(60 + mode)
    n, k = (4000, 3000) if SMALL else (20000, 5000)
    x = torch.randn(n, 8, device=DEV, generator=gen)
    x[5] *= 1000
    c = torch.randn(k, 8, device=DEV, generator=gen)
    _, refd = brute_labels(x, c)
    labels, _ = torch.ops.vptq_rs.kmeans_assign(x, c, mode, 1)
    got_d = ((x.double() - c.double()[labels.long()]) ** 2).sum(1)
    slack = (4 if mode == 1 else 1e3) * rounding_slack(x, c)
    assert (got_d[128:] <= refd[128:] + slack[128:]).all()


@pytest.mark.parametrize("mode", [1, 2])
def test_tiled_tensor_core_labels_not_worse_than_merged(mode):
    """The tiled design re-ranks each point's 16 TF32 candidates in exact fp32, which
    contain the merged design's pick unless TF32 rounding differs: over many points its
    total distance is no larger (up to rounding)."""
    gen = torch.Generator(device=DEV).manual_seed(50 + mode)
    n, k = (4000, 3000) if SMALL else (50000, 9000)
    x = torch.randn(n, 8, device=DEV, generator=gen)
    c = torch.randn(k, 8, device=DEV, generator=gen)
    _, dm = torch.ops.vptq_rs.kmeans_assign(x, c, mode, 0)
    _, dt = torch.ops.vptq_rs.kmeans_assign(x, c, mode, 1)
    assert float(dt.double().sum()) <= float(dm.double().sum()) * (1 + 1e-6)


def test_update_sums():
    gen = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(5000, 5, device=DEV, generator=gen)
    w = torch.rand(5000, device=DEV, generator=gen)
    lab = torch.randint(0, 40, (5000,), device=DEV, generator=gen, dtype=torch.int32)
    sums, wsum = torch.ops.vptq_rs.kmeans_update(x, w, lab, 50)
    ref = torch.zeros(50, 5, dtype=torch.float64, device=DEV).index_add_(
        0, lab.long(), x.double() * w.double()[:, None]
    )
    refw = torch.zeros(50, dtype=torch.float64, device=DEV).index_add_(0, lab.long(), w.double())
    assert torch.allclose(sums, ref) and torch.allclose(wsum, refw)
    assert (wsum[40:] == 0).all()


def test_seed_is_deterministic_and_picks_weighted_points():
    gen = torch.Generator(device=DEV).manual_seed(2)
    x = torch.randn(10000, 4, device=DEV, generator=gen)
    w = torch.rand(10000, device=DEV, generator=gen)
    w[::2] = 0
    a = torch.ops.vptq_rs.kmeans_seed(x, w, 64, 5)
    b = torch.ops.vptq_rs.kmeans_seed(x, w, 64, 5)
    c = torch.ops.vptq_rs.kmeans_seed(x, w, 64, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every centroid is a point with positive weight, all distinct
    match = (a[:, None, :] == x[None, :, :]).all(-1).float()
    assert (match.sum(1) >= 1).all()
    assert (w[match.argmax(1)] > 0).all()
    assert torch.unique(a, dim=0).shape[0] == 64


@pytest.mark.parametrize(
    ("precision", "design"),
    [
        (p, d)
        for d in cuda_ext.KMEANS_DESIGNS
        for p in cuda_ext.KMEANS_MODES
        if d == "tiled" or p not in cuda_ext.KMEANS_TILED_ONLY
    ],
)
def test_kmeans_finds_blobs_and_is_deterministic(precision, design):
    gen = torch.Generator(device=DEV).manual_seed(3)
    centers = torch.randn(16, 8, device=DEV, generator=gen) * 10
    x = centers[torch.arange(4000, device=DEV) % 16] + 0.1 * torch.randn(
        4000, 8, device=DEV, generator=gen
    )
    kw = {"iters": 50, "tol": 0, "seed": 1, "precision": precision, "design": design}
    c1, l1, info = cuda_ext.kmeans(x, 16, return_info=True, **kw)
    c2, l2 = cuda_ext.kmeans(x, 16, **kw)
    assert torch.equal(l1, l2) and torch.allclose(c1, c2, atol=1e-6)
    assert info["inertia"] / 4000 < 0.1 * 8 * 1.5
    assert c1.shape == (16, 8) and l1.dtype == torch.int32


def test_kmeans_reseeds_empty_clusters_and_honours_weights():
    gen = torch.Generator(device=DEV).manual_seed(4)
    x = torch.randn(2000, 3, device=DEV, generator=gen)
    init = x[:8].clone()
    init[4:] = 1e3  # far away: empty after the first assignment
    c, lab, _info = cuda_ext.kmeans(x, 8, init=init, iters=5, tol=0, return_info=True)
    assert torch.bincount(lab.long(), minlength=8).min() > 0
    w = torch.zeros(2000, device=DEV)
    w[:10] = 1
    c, _ = cuda_ext.kmeans(x, 10, weights=w, iters=10, tol=0)
    assert torch.allclose(torch.sort(c, 0).values, torch.sort(x[:10], 0).values, atol=1e-5)


@pytest.mark.parametrize(
    ("precision", "design"), [("tf32", "merged"), ("tf32", "tiled"), ("fp16x1", "tiled")]
)
def test_kmeans_large_k(precision, design):
    gen = torch.Generator(device=DEV).manual_seed(5)
    n = 70000 if SMALL else 300000
    x = torch.randn(n, 8, device=DEV, generator=gen)
    c, lab = cuda_ext.kmeans(x, 65536, iters=2, precision=precision, design=design)
    assert c.shape == (65536, 8) and int(lab.max()) < 65536
