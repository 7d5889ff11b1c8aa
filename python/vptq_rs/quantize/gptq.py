"""The GPTQ column sweep (blocked, lazy batch updates) and the scalar RTN/GPTQ baselines.

The sweep walks the columns of ``W [O, n]`` in the order of the Hessian factor ``U`` (upper
Cholesky factor of the damped, permuted inverse Hessian). At column ``c`` a quantizer
callback fixes ``Q`` for any span starting at ``c`` from the current (already compensated)
values; then the column's error divided by ``U[c, c]`` is pushed onto the columns not yet
quantized through row ``c`` of ``U``. Inside a block of ``blocksize`` columns updates are
applied eagerly; the rest of the matrix receives one matrix product per block (GPTQ's lazy
batch). Rows are independent, so spans may cover several columns (vectors along the input
dimension) as long as no span crosses a block boundary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vptq_rs.errors import InvalidValueError

# quantize_at(c, wb, i, q): at global column c (= block offset + i), write Q for every span
# starting at c into q (global columns) using the block's current values wb (local columns)
QuantizeAt = Callable[[int, torch.Tensor, int, torch.Tensor], None]


def sweep(
    w: torch.Tensor, u: torch.Tensor, blocksize: int, quantize_at: QuantizeAt
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the column sweep; return ``(Q, targets)``, both fp32 ``[O, n]``.

    w: float ``[O, n]`` in sweep order (not modified); u: float ``[n, n]`` upper triangular.
    ``targets[:, c]`` is column ``c`` as it was when reached (original + compensation), the
    value its quantizer saw; centroid refinement fits codebooks to these.
    """
    w = w.float().clone()
    u = u.to(w.device, torch.float32)
    n = w.shape[1]
    q = torch.zeros_like(w)
    diag = torch.diagonal(u)
    if not (diag > 0).all():
        raise InvalidValueError("inverse Hessian factor has a non-positive diagonal")
    for b0 in range(0, n, blocksize):
        b1 = min(b0 + blocksize, n)
        wb = w[:, b0:b1].clone()
        errs = torch.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            c = b0 + i
            quantize_at(c, wb, i, q)
            err = (wb[:, i] - q[:, c]) / ub[i, i]
            wb[:, i + 1 :] -= err[:, None] * ub[i, i + 1 :][None, :]
            errs[:, i] = err
        # wb now holds each column's value at the time it was reached (the targets)
        w[:, b0:b1] = wb
        if b1 < n:
            w[:, b1:] -= errs @ u[b0:b1, b1:]
    return q, w


def proxy_error(w_hat: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> float:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` in fp64. w_hat, w: ``[O, I]``; h: ``[I, I]``."""
    h = h.to(w.device, torch.float64)
    w64 = w.double()
    d = w_hat.double() - w64
    num = ((d @ h) * d).sum().item()
    den = ((w64 @ h) * w64).sum().item()
    return num / den if den > 0 else 0.0


# ---------------------------------------------------------------- scalar baselines


def _grid(
    x: torch.Tensor, maxq: int, store_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min-max grid per row: ``(scale [O], zero [O])``; value = (k - zero)*scale.

    Scale and ``-zero*scale`` are rounded to ``store_dtype`` as the per-row affine the
    packed (``vector_quant_dim="in"``) format stores.
    """
    mn = x.amin(1).clamp_max(0)
    mx = x.amax(1).clamp_min(0)
    scale = ((mx - mn) / maxq).to(store_dtype).float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-mn / scale)
    return scale, zero


def quantize_scalar(
    w: torch.Tensor,
    u: torch.Tensor | None,
    perm: torch.Tensor | None,
    wbits: int,
    groupsize: int,
    blocksize: int,
    store_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Scalar asymmetric quantization per row (group), RTN when ``u`` is None else GPTQ.

    w: float ``[O, I]`` original column order; u: ``[I, I]`` factor in ``perm`` order.
    Returns ``(W_hat [O, I], codes int64 [O, I] or None, scale [O] or None, offset [O] or
    None)``; codes/scale/offset (``W_hat = codes * scale + offset``, offset rounded to
    ``store_dtype``) are given only for ``groupsize == -1``, where the result is exactly
    representable as a v=1 codebook layer.
    """
    maxq = 2**wbits - 1
    o, n = w.shape
    perm = torch.arange(n, device=w.device) if perm is None else perm.to(w.device)
    wp = w.float()[:, perm]
    gs = n if groupsize == -1 else groupsize
    params: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if groupsize == -1:
        scale, zero = _grid(wp, maxq, store_dtype)
        offset = (-zero * scale).to(store_dtype).float()
        params[0] = (scale, zero)
    codes = torch.zeros(o, n, dtype=torch.long, device=w.device)

    def qcol(c: int, cols: torch.Tensor) -> torch.Tensor:
        """Quantize column c; ``cols`` holds the current values of columns c, c+1, ..."""
        g = c // gs
        if g not in params:
            # groups are formed in sweep order from the values current at their first column
            params[g] = _grid(cols[:, :gs], maxq, store_dtype)
        scale, zero = params[g]
        k = torch.clamp(torch.round(cols[:, 0] / scale) + zero, 0, maxq)
        codes[:, c] = k.long()
        if groupsize == -1:
            return k * scale + offset
        return (k - zero) * scale

    if u is None:
        q = torch.stack([qcol(c, wp[:, c:]) for c in range(n)], 1)
    else:

        def at(c: int, wb: torch.Tensor, i: int, qout: torch.Tensor) -> None:
            qout[:, c] = qcol(c, wb[:, i:])

        # a group's columns must sit in one block so their compensated values are current
        bs = blocksize if groupsize == -1 else max(gs, blocksize // gs * gs)
        q, _ = sweep(wp, u, bs, at)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n, device=w.device)
    w_hat = q[:, inv]
    if groupsize == -1:
        scale = params[0][0]
        return w_hat, codes[:, inv], scale, offset
    return w_hat, None, None, None
