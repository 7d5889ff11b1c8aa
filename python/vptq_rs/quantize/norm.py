"""Per-column normalization (``--enable_norm``): ``W = Wn * scale + bias`` per column.

FORMAT.md: ``scale = max - min``, ``bias = min`` over each column of the quantized matrix,
indexed by the original column. A constant column gets scale 0: it dequantizes to its bias
exactly whatever the code, and its normalized values are taken as 0 (never NaN).
"""

from __future__ import annotations

import torch


def column_stats(
    w: torch.Tensor, enabled: bool, store_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale [C], bias [C])`` fp32, rounded to ``store_dtype`` as they will be stored.

    w: float ``[R, C]`` (rows x columns of the quantized matrix). Disabled: ones and zeros.
    """
    cols = w.shape[1]
    if not enabled:
        return torch.ones(cols, device=w.device), torch.zeros(cols, device=w.device)
    mx = w.amax(0)
    mn = w.amin(0)
    bias = mn.to(store_dtype).float()
    # round scale so that bias + scale still reaches the column maximum in the stored dtype
    scale = (mx - bias).to(store_dtype).float().clamp_min(0)
    return scale, bias


def safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """Scale usable as a divisor: 1 where the stored scale is 0 (constant columns)."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)
