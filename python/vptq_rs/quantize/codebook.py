"""Nearest-centroid search and codebook post-processing (storage rounding, int8)."""

from __future__ import annotations

import math

import torch


def nearest(
    x: torch.Tensor,
    cents: torch.Tensor,
    chunk: int = 1 << 16,
    cnorm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) for each row.

    x: float ``[N, d]``; cents: float ``[K, d]`` on the same device; cnorm: ``|c|²`` ``[K]``
    if already known. Returns int64 ``[N]``. Ties go to the lowest index (argmin). On the
    CPU the Rust kernel fuses distances and argmin (no ``[N, K]`` matrix; 8-20x faster on
    the sweep's per-column batches); elsewhere rows go ``chunk * 512 / K`` at a time, which
    bounds the distance matrix at 128 MiB and keeps a sweep column (a few hundred vectors)
    in one matrix product even for 65,536 centroids.
    """
    if x.device.type == "cpu" and x.shape[0] and cents.shape[0]:
        from vptq_rs._core import nearest as rust_nearest

        xs = x.detach().float().contiguous().numpy()
        cs = cents.detach().float().contiguous().numpy()
        return torch.from_numpy(rust_nearest(xs, cs)).long()
    cn = (cents * cents).sum(1) if cnorm is None else cnorm
    step = max(1, chunk * 512 // max(cents.shape[0], 1))
    if x.shape[0] <= step:
        return torch.addmm(cn[None, :], x, cents.t(), alpha=-2).argmin(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], step):
        xs = x[s : s + step]
        # ||x||² is constant per row and does not change the argmin
        out[s : s + step] = torch.addmm(cn[None, :], xs, cents.t(), alpha=-2).argmin(1)
    return out


def nearest_masked(x: torch.Tensor, cents: torch.Tensor, lanes: int) -> torch.Tensor:
    """Like :func:`nearest` but comparing only the first ``lanes`` coordinates."""
    return nearest(x[:, :lanes], cents[:, :lanes])


def round_for_storage(
    cents: torch.Tensor, store_dtype: torch.dtype, bitwidth: int = 16
) -> tuple[torch.Tensor, float | None]:
    """Codebook values as they will be stored, in fp32; plus the int8 scale (or None).

    bitwidth 8: ``c = round(c / s) * s`` with ``s`` a power of two and integers clamped to
    [-127, 127]. A power-of-two scale makes every value exactly representable in fp16/bf16
    (8 significant bits), so the stored model-dtype codebook *is* an int8 codebook.
    """
    if bitwidth == 8:
        amax = cents.abs().max().item()
        if amax == 0:
            return cents.to(store_dtype).float(), 1.0
        scale = 2.0 ** math.ceil(math.log2(amax / 127.0))
        q = torch.clamp(torch.round(cents / scale), -127, 127) * scale
        return q.to(store_dtype).float(), scale
    return cents.to(store_dtype).float(), None
