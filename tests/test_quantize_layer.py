"""The layer quantizer on synthetic weights and Hessians: every option combination."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from vptq_rs.errors import InvalidValueError  # noqa: E402
from vptq_rs.hessian import invert_hessian  # noqa: E402
from vptq_rs.layout import LayerConfig  # noqa: E402
from vptq_rs.quantize.bits import layer_bits  # noqa: E402
from vptq_rs.quantize.codebook import round_for_storage  # noqa: E402
from vptq_rs.quantize.gptq import proxy_error  # noqa: E402
from vptq_rs.quantize.options import QuantOptions  # noqa: E402
from vptq_rs.quantize.vptq import quantize_layer  # noqa: E402


def problem(o: int = 72, i: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [O, I] and a correlated, non-centered Hessian [I, I] with one dead input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3000, i, generator=g) @ torch.randn(i, i, generator=g) * 0.3 + 0.2
    x[:, 3] = 0
    x[:, 7] *= 6  # an input with a large Hessian diagonal: act-order puts it first
    h = (x.t() @ x).double() / x.shape[0]
    w = torch.randn(o, i, generator=g)
    return w, h


BASE = dict(vector_lens=(-1, 4), num_centroids=(-1, 32), kiter=20)
COMBOS = {
    "plain": {},
    "perm_norm": dict(enable_perm=True, enable_norm=True),
    "float_outliers": dict(enable_perm=True, npercent=5),
    "vq_outliers_groups": dict(
        enable_perm=True,
        npercent=5,
        vector_lens=(2, 6),
        num_centroids=(16, 32),
        group_num=2,
        enable_norm=True,
    ),
    "residual": dict(num_res_centroids=(-1, 16), enable_norm=True),
    "residual_groups_refine": dict(
        num_res_centroids=(-1, 8), group_num=4, refine_centroids=True, enable_perm=True
    ),
    "in_dim": dict(vector_quant_dim="in", enable_norm=True),
    "in_dim_all": dict(
        vector_quant_dim="in",
        enable_perm=True,
        npercent=3,
        group_num=2,
        num_res_centroids=(-1, 8),
        vector_lens=(-1, 6),
        refine_centroids=True,
    ),
    "int8_codebook": dict(bitwidth=8, enable_norm=True),
}


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_layer_combo(combo: str) -> None:
    w, h = problem()
    opts = QuantOptions(**{**BASE, **COMBOS[combo]})
    bias = torch.randn(w.shape[0]).half()
    res = quantize_layer(w.half(), h, opts, bias=bias, name=combo)
    layer = res.layer
    assert layer is not None
    layer.validate()
    # the stored layer is the truth: w_hat is exactly its dequantization
    assert torch.equal(layer.dequantize(torch.float32), res.w_hat)
    assert layer.centroids.dtype == torch.float16
    st = res.stats
    assert st["proxy_sweep"] < st["proxy_kmeans"]
    assert st["proxy_final"] <= st["proxy_sweep"] * 1.01
    assert st["proxy_final"] == pytest.approx(proxy_error(res.w_hat, w.half().float(), h), rel=1e-9)
    if opts.kres:
        assert st["proxy_residual"] < st["proxy_sweep"]
    if opts.refine_centroids:
        assert min(st["proxy_sweep_refined"], st["proxy_sweep_unrefined"]) <= st["proxy_sweep"]
    if opts.bitwidth == 8:
        for scale in st["int8_codebook_scales"]:
            ints = layer.centroids.float() / scale
            assert torch.equal(ints, ints.round()) and ints.abs().max() <= 127
    assert torch.equal(layer.bias, bias)


def test_float_kept_outliers_are_exact() -> None:
    w, h = problem()
    opts = QuantOptions(**{**BASE, "enable_perm": True, "npercent": 5})
    res = quantize_layer(w.half(), h, opts)
    layer = res.layer
    cfg = layer.config
    assert cfg.outlier_size == 4 and cfg.outlier_vector_len == 4
    cols = layer.perm[: cfg.outlier_size]
    assert cols[0] == 7  # the most sensitive input is kept exactly
    assert 3 not in cols.tolist()  # a dead input is never an outlier
    assert torch.equal(res.w_hat[:, cols].half(), w.half()[:, cols])
    assert cfg.outlier_num_centroids <= 65536
    assert cfg.to_hf()["num_centroids"][0] == cfg.outlier_num_centroids


def test_dead_input_and_constant_column() -> None:
    w, h = problem()
    w[:, 10] = 0.5  # constant column: scale 0 must not produce NaN
    res = quantize_layer(w, h, QuantOptions(**{**BASE, "enable_norm": True}))
    assert torch.isfinite(res.w_hat).all()
    assert torch.equal(res.w_hat[:, 10], torch.full((w.shape[0],), 0.5))
    assert res.layer.weight_scale[10] == 0
    assert (res.w_hat[:, 3] == 0).all()  # dead input: weight irrelevant, stored as zero


def test_same_seed_same_layer_and_kseed_matters() -> None:
    w, h = problem()
    a = quantize_layer(w, h, QuantOptions(**BASE)).layer
    b = quantize_layer(w, h, QuantOptions(**BASE)).layer
    c = quantize_layer(w, h, QuantOptions(**{**BASE, "kseed": 5})).layer
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.main_idx, b.main_idx)
    assert not torch.equal(a.centroids, c.centroids)


def test_kmeans_precision_reaches_every_codebook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outlier, main and residual codebooks all ask k-means for the chosen precision."""
    import vptq_rs.quantize.vptq as vptq_mod

    seen: list[str] = []
    real = vptq_mod.kmeans

    def spy(*args, precision: str = "fp32", **kw):
        seen.append(precision)
        return real(*args, precision=precision, **kw)

    monkeypatch.setattr(vptq_mod, "kmeans", spy)
    w, h = problem()
    opts = QuantOptions(**{**BASE, **COMBOS["vq_outliers_groups"]}, num_res_centroids=(-1, 8))
    quantize_layer(w, h, dataclasses.replace(opts, kmeans_precision="tf32x1"))
    # outliers + 2 groups + 2 residual groups; the CPU runs them in fp32 whatever was asked
    assert seen == ["tf32x1"] * 5


def test_blocksize_does_not_change_the_math() -> None:
    w, h = problem()
    a = quantize_layer(w, h, QuantOptions(**BASE, blocksize=128))
    b = quantize_layer(w, h, QuantOptions(**BASE, blocksize=8))
    assert a.stats["proxy_sweep"] == pytest.approx(b.stats["proxy_sweep"], rel=1e-3)


def test_percdamp_and_act_order_are_honoured() -> None:
    w, h = problem()
    inv_a = invert_hessian(h, 0.01, act_order=True)
    assert torch.equal(inv_a.perm[:1], torch.argmax(torch.diagonal(h))[None])
    inv_b = invert_hessian(h, 1.0)
    assert not torch.allclose(inv_a.chol, inv_b.chol)
    lo = quantize_layer(w, h, QuantOptions(**BASE, percdamp=0.01)).stats["proxy_sweep"]
    hi = quantize_layer(w, h, QuantOptions(**BASE, percdamp=5.0)).stats["proxy_sweep"]
    assert lo != hi


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_scalar_baselines(method: str) -> None:
    w, h = problem()
    res = quantize_layer(w, h, QuantOptions(method=method, wbits=3, enable_perm=True))
    assert res.layer is not None and res.layer.config.vector_quant_dim == "in"
    assert torch.equal(res.layer.dequantize(torch.float32), res.w_hat)
    grouped = quantize_layer(w, h, QuantOptions(method=method, wbits=3, groupsize=16))
    assert grouped.layer is None
    assert grouped.stats["proxy_final"] < res.stats["proxy_final"]


def test_gptq_beats_rtn() -> None:
    w, h = problem()
    rtn = quantize_layer(w, h, QuantOptions(method="rtn", wbits=3)).stats["proxy_final"]
    gptq = quantize_layer(w, h, QuantOptions(method="gptq", wbits=3)).stats["proxy_final"]
    assert gptq < rtn


def test_bits_count_every_overhead() -> None:
    cfg = LayerConfig(
        in_features=576, out_features=576, vector_len=6, num_centroids=4096, enable_perm=True
    )
    bits = layer_bits(cfg)
    assert bits["index_bits"] == 96 * (-(-576 * 12 // 32)) * 32
    assert bits["codebook_bits"] == 4096 * 6 * 16
    assert bits["total_bits"] == bits["index_bits"] + 4096 * 6 * 16 + 3 * 576 * 16
    assert 3.0 < bits["bpw"] < 3.5  # a 4096x6 codebook costs ~1.2 bpw here
    small = layer_bits(cfg, codebook_bits=8)
    assert small["total_bits"] == bits["total_bits"] - 4096 * 6 * 8 + 16


def test_int8_rounding_is_exact_in_bf16() -> None:
    cents = torch.randn(64, 4) * 3
    q, scale = round_for_storage(cents, torch.bfloat16, 8)
    assert torch.equal(q, q.bfloat16().float())
    assert torch.equal(q / scale, (q / scale).round())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(num_centroids=(-1, 100)), "power of two"),
        (dict(npercent=5), "enable_perm"),
        (dict(bitwidth=4), "bitwidth"),
        (dict(vector_quant_dim="side"), "vector_quant_dim"),
        (dict(method="awq"), "method"),
        (dict(blocksize=0), "blocksize"),
        (dict(num_res_centroids=(-1, 3)), "num_res_centroids"),
        (dict(kmeans_precision="fp16"), "kmeans_precision"),
    ],
)
def test_bad_options(kw: dict, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        QuantOptions(**kw)


def test_layer_shape_checks() -> None:
    opts = QuantOptions(group_num=3)
    with pytest.raises(InvalidValueError, match="group_num"):
        opts.check_layer(64, 64)
    big = QuantOptions(enable_perm=True, npercent=50, vector_lens=(-1, 1))
    with pytest.raises(InvalidValueError, match="65536"):
        big.check_layer(4096, 4096)


def test_rust_nearest_matches_brute_force_argmin() -> None:
    from vptq_rs.quantize.codebook import nearest

    g = torch.Generator().manual_seed(3)
    for n, d, k in ((300, 6, 4096), (5000, 4, 256), (7, 3, 5)):
        x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
        want = torch.cdist(x.double(), c.double()).argmin(1)
        got = nearest(x, c)
        assert got.dtype == torch.long
        # fp32 distances may flip exact near-ties only
        dx = ((x[:, None] - c[None]) ** 2).sum(-1)
        picked, best = dx.gather(1, got[:, None])[:, 0], dx.gather(1, want[:, None])[:, 0]
        assert torch.allclose(picked, best, rtol=1e-5, atol=1e-6)
    assert nearest(torch.zeros(0, 4), torch.randn(8, 4)).shape == (0,)
