"""The GPTQ sweep against an independent GPTQ written from the paper's equations.

Frantar et al. (2022), eq. (2)-(3): with ``H = X Xᵀ`` (+ damping), quantize column ``q``,
update the not-yet-quantized weights by ``δ = -(w_q - quant(w_q)) / [H⁻¹]_qq · H⁻¹_{:,q}``
and remove ``q`` from the inverse by one step of Gaussian elimination,
``H⁻¹ ← H⁻¹ - H⁻¹_{:,q} H⁻¹_{q,:} / [H⁻¹]_qq``. The reference below does exactly that in
fp64, one column at a time, with an explicit inverse: no Cholesky factor, no blocks, no
lazy batch updates, so it shares no code path with :mod:`vptq_rs.quantize.gptq`.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vptq_rs.hessian import invert_hessian  # noqa: E402
from vptq_rs.quantize.gptq import proxy_error, quantize_scalar  # noqa: E402


def minmax_grid(x: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row asymmetric grid over ``x [O, m]`` that always holds 0: (scale, zero)."""
    lo = torch.minimum(x.min(1).values, torch.zeros(x.shape[0], dtype=x.dtype))
    hi = torch.maximum(x.max(1).values, torch.zeros(x.shape[0], dtype=x.dtype))
    scale = (hi - lo) / maxq
    scale[scale == 0] = 1
    return scale, torch.round(-lo / scale)


def reference_gptq(
    w: torch.Tensor, h: torch.Tensor, wbits: int, groupsize: int, percdamp: float = 0.01
) -> torch.Tensor:
    """GPTQ with act-order from the paper's equations; returns W_hat fp64 ``[O, I]``."""
    w = w.double().clone()
    h = h.double()
    o, n = w.shape
    maxq = 2**wbits - 1
    gs = n if groupsize == -1 else groupsize
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True)
    w = w[:, order]
    h = h[order][:, order]
    h = h + percdamp * torch.diagonal(h).mean() * torch.eye(n, dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    q = torch.zeros_like(w)
    scale = zero = torch.zeros(o, dtype=w.dtype)
    for j in range(n):
        if j % gs == 0:  # a group's grid comes from its columns' current values
            scale, zero = minmax_grid(w[:, j : j + gs], maxq)
        k = torch.clamp(torch.round(w[:, j] / scale) + zero, 0, maxq)
        q[:, j] = (k - zero) * scale
        d = hinv[j, j]
        err = (w[:, j] - q[:, j]) / d
        w[:, j:] -= err[:, None] * hinv[j, j:][None, :]
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / d
    out = torch.empty_like(q)
    out[:, order] = q
    return out


def problem(o: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and the second moment of correlated inputs with uneven channel scales."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g) / n**0.5
    scales = torch.exp(torch.randn(n, generator=g))
    x = (torch.randn(4 * n, n, generator=g) @ mix) * scales + 0.1
    w = torch.randn(o, n, generator=g) * 0.05
    return w, (x.t() @ x / x.shape[0]).double()


@pytest.mark.parametrize("blocksize", [8, 32])
@pytest.mark.parametrize("groupsize", [-1, 16])
@pytest.mark.parametrize("wbits", [2, 3, 4])
def test_sweep_matches_paper_equations(wbits: int, groupsize: int, blocksize: int) -> None:
    w, h = problem(24, 64, seed=wbits * 100 + groupsize)
    inv = invert_hessian(h, 0.01, act_order=True)
    # blocks smaller than in_features: the lazy batch update across blocks is exercised
    # (and a block smaller than a group, which the sweep widens to whole groups)
    got, *_ = quantize_scalar(w, inv.chol, inv.perm, wbits, groupsize, blocksize, torch.float32)
    want = reference_gptq(w, h, wbits, groupsize)
    # fp32 vs fp64 may flip a rounding tie; everything else must agree
    same = (got.double() - want).abs() < 1e-5
    assert same.float().mean() > 0.99
    e_got, e_want = proxy_error(got, w, h), proxy_error(want.float(), w, h)
    assert e_got == pytest.approx(e_want, rel=2e-2)


@pytest.mark.parametrize("groupsize", [-1, 16])
def test_gptq_beats_rtn_under_its_hessian(groupsize: int) -> None:
    w, h = problem(32, 64, seed=7)
    inv = invert_hessian(h, 0.01, act_order=True)
    gptq, *_ = quantize_scalar(w, inv.chol, inv.perm, 3, groupsize, 32, torch.float16)
    rtn, *_ = quantize_scalar(w, None, None, 3, groupsize, 32, torch.float16)
    assert proxy_error(gptq, w, h) < 0.7 * proxy_error(rtn, w, h)
