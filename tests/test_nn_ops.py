"""VQuantLinear and the native dequantization path against the layout.py reference."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import vptq_rs
from vptq_rs import ops
from vptq_rs.errors import InvalidValueError
from vptq_rs.layout import LayerConfig
from vptq_rs.nn import VQuantLinear, random_quantized_layer

CONFIGS = {
    "plain": dict(in_features=64, out_features=48, vector_len=8, num_centroids=256),
    "pad_groups_res_perm_bias": dict(
        in_features=64,
        out_features=50,
        vector_len=6,
        num_centroids=64,
        num_res_centroids=16,
        group_num=4,
        enable_perm=True,
        bias=True,
    ),
    "outliers_groups_res_perm": dict(
        in_features=70,
        out_features=50,
        vector_len=4,
        num_centroids=32,
        num_res_centroids=8,
        group_num=2,
        outlier_size=6,
        outlier_vector_len=3,
        outlier_num_centroids=16,
        enable_perm=True,
    ),
    "outliers_no_perm": dict(
        in_features=70,
        out_features=50,
        vector_len=4,
        num_centroids=32,
        outlier_size=6,
        outlier_vector_len=3,
        outlier_num_centroids=16,
    ),
    "res_wider_than_main": dict(
        in_features=48,
        out_features=40,
        vector_len=2,
        num_centroids=4,
        num_res_centroids=512,
    ),
    "32_bit_codes": dict(
        in_features=16,
        out_features=24,
        vector_len=12,
        num_centroids=65536,
        num_res_centroids=65536,
    ),
    "vector_quant_dim_in": dict(
        in_features=40,
        out_features=70,
        vector_len=4,
        num_centroids=32,
        num_res_centroids=8,
        enable_perm=True,
        vector_quant_dim="in",
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_dequantize_is_bit_identical_to_reference(name: str, dtype: torch.dtype) -> None:
    cfg = LayerConfig(**CONFIGS[name])
    layer = random_quantized_layer(cfg, seed=3, dtype=dtype)
    mod = VQuantLinear.from_quantized(layer)
    w = mod.dequantize()
    assert w.shape == (cfg.out_features, cfg.in_features)
    assert w.dtype == dtype
    assert torch.equal(w, layer.dequantize())
    # the fp32 weight of an fp16 layer equals the reference computed in fp32 too
    assert torch.equal(mod.dequantize(torch.float32), layer.dequantize(torch.float32))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_through_packed_module(name: str) -> None:
    cfg = LayerConfig(**CONFIGS[name])
    layer = random_quantized_layer(cfg, seed=5)
    back = VQuantLinear.from_quantized(layer).to_quantized()
    assert torch.equal(back.main_idx, layer.main_idx)
    if layer.res_idx is not None:
        assert back.res_idx is not None and torch.equal(back.res_idx, layer.res_idx)
    if layer.perm is not None:
        assert back.perm is not None and torch.equal(back.perm, layer.perm)
    if layer.outlier_idx is not None:
        assert back.outlier_idx is not None and torch.equal(back.outlier_idx, layer.outlier_idx)
    assert torch.equal(back.dequantize(), layer.dequantize())


@pytest.mark.parametrize(
    ("bits", "res_bits", "n"),
    [(1, 0, 33), (3, 0, 64), (7, 5, 31), (12, 8, 100), (16, 16, 9), (13, 0, 1)],
)
def test_torch_unpack_matches_rust(bits: int, res_bits: int, n: int) -> None:
    gen = torch.Generator().manual_seed(bits * 100 + res_bits)
    main = torch.randint(0, 1 << bits, (6, n), generator=gen)
    res = torch.randint(0, 1 << res_bits, (6, n), generator=gen) if res_bits else None
    packed = torch.from_numpy(
        vptq_rs.pack_indices(main.numpy(), bits, None if res is None else res.numpy(), res_bits)
    ).reshape(2, 3, -1)
    for unpack in (ops.unpack_codes, ops.unpack_codes_torch):
        m, r = unpack(packed, bits, n, res_bits)
        assert torch.equal(m.reshape(6, n).long(), main)
        if res is None:
            assert r is None
        else:
            assert r is not None and torch.equal(r.reshape(6, n).long(), res)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_dense_linear(name: str) -> None:
    cfg = LayerConfig(**CONFIGS[name])
    layer = random_quantized_layer(cfg, seed=7)
    mod = VQuantLinear.from_quantized(layer)
    x = torch.randn(2, 3, cfg.in_features, generator=torch.Generator().manual_seed(0))
    want = F.linear(x, layer.dequantize(), layer.bias)
    torch.testing.assert_close(mod(x), want, rtol=1e-5, atol=1e-5)


def test_half_precision_forward_stays_in_input_dtype() -> None:
    cfg = LayerConfig(**CONFIGS["pad_groups_res_perm_bias"])
    mod = VQuantLinear.from_quantized(random_quantized_layer(cfg, seed=1, dtype=torch.bfloat16))
    x = torch.randn(4, cfg.in_features, generator=torch.Generator().manual_seed(0)).bfloat16()
    y = mod(x)
    assert y.dtype == torch.bfloat16
    # same bf16 weight, fp32 accumulation: only the output rounding differs
    want = F.linear(x.float(), mod.dequantize(torch.bfloat16).float(), mod.bias.float())
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=5e-2)


def test_weight_cache_is_explicit_and_not_saved() -> None:
    cfg = LayerConfig(**CONFIGS["outliers_groups_res_perm"])
    mod = VQuantLinear.from_quantized(random_quantized_layer(cfg, seed=2))
    x = torch.randn(5, cfg.in_features)
    assert not mod.weight_cached
    y = mod(x)
    assert not mod.weight_cached, "a forward must never cache the dense weight silently"
    mod.cache_weight(True)
    assert mod.weight_cached
    assert torch.equal(mod(x), y)
    assert set(mod.state_dict()) == {
        "centroids.weight",
        "res_centroids.weight",
        "indices",
        "outlier_centroids.weight",
        "outlier_indices",
        "perm",
        "weight_scale",
        "weight_bias",
    }
    mod.cache_weight(False)
    assert not mod.weight_cached


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_op_reads_the_packed_tensors_in_order(name: str) -> None:
    """The CUDA fast path reads parameters straight from the module's dicts: they must be the
    packed tensors and the bias, in the op's order, None where the config has none."""
    cfg = LayerConfig(**CONFIGS[name])
    mod = VQuantLinear.from_quantized(random_quantized_layer(cfg, seed=3))
    cur = mod._current()
    assert len(cur) == 9
    for got, want in zip(cur, (*mod.packed(), mod.bias), strict=True):
        assert got is want


def test_path_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    ops._logged.clear()
    cfg = LayerConfig(**CONFIGS["plain"])
    mod = VQuantLinear.from_quantized(random_quantized_layer(cfg))
    with caplog.at_level(logging.INFO, logger="vptq_rs.ops"):
        mod(torch.randn(1, cfg.in_features))
        mod(torch.randn(1, cfg.in_features))
    msgs = [r.getMessage() for r in caplog.records if r.name == "vptq_rs.ops"]
    assert msgs == ["vptq_rs: native path on cpu"]


def test_bad_inputs_are_named() -> None:
    cfg = LayerConfig(**CONFIGS["plain"])
    mod = VQuantLinear.from_quantized(random_quantized_layer(cfg))
    with pytest.raises(InvalidValueError, match="input has 63 features"):
        mod(torch.randn(2, 63))
    t = mod.packed()
    with pytest.raises(InvalidValueError, match="indices has shape"):
        mod.load_packed(t._replace(indices=t.indices[:, :-1]))
    with pytest.raises(InvalidValueError, match=r"res_centroids\.weight is not used"):
        mod.load_packed(t._replace(res_centroids=torch.zeros(1, 8)))
    with pytest.raises(InvalidValueError, match="int32 packed words"):
        ops.unpack_codes(t.indices.long(), 8, 48)


def test_meta_construction_allocates_nothing() -> None:
    cfg = LayerConfig(**CONFIGS["outliers_groups_res_perm"])
    with torch.device("meta"):
        mod = VQuantLinear(cfg, dtype=torch.float16)
    assert all(p.is_meta for p in mod.parameters())
    assert mod.indices.dtype == torch.int32 and mod.perm is not None
    assert mod.perm.dtype == torch.int16 and mod.outlier_indices is not None
    assert mod.outlier_indices.dtype == torch.int16
    assert mod.centroids.weight.dtype == torch.float16


@pytest.mark.parametrize("name", list(CONFIGS))
def test_blocked_cpu_path_is_exact(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks (one or a few columns each, uneven tail) give the same bits."""
    monkeypatch.setattr(ops, "_CPU_BLOCK_FLOATS", 150)
    cfg = LayerConfig(**CONFIGS[name])
    for dtype in (torch.float32, torch.float16):
        layer = random_quantized_layer(cfg, seed=9, dtype=dtype)
        assert torch.equal(VQuantLinear.from_quantized(layer).dequantize(), layer.dequantize())
