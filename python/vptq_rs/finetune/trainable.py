"""A ``VQuantLinear`` whose codebooks, scale/bias and bias can be trained with indices frozen.

``vptq_rs.nn.VQuantLinear.forward`` dequantizes with detached codebooks and calls
``F.linear``, so autograd would (a) never reach the codebooks and (b) keep every layer's
dense weight alive until the backward pass. :class:`VQLinearFunction` fixes both: forward
dequantizes, multiplies and drops the weight; backward dequantizes the same layer again and
scatters the weight gradient onto codebook entries with ``index_add_``. At most one layer's
dense weight (plus its gradient) exists at any time.

Notation as in FORMAT.md: ``I`` in_features, ``O`` out_features, ``v`` vector length,
``R = ceil(O / v)``, ``G`` groups of ``C`` columns, ``osz`` outlier columns (``v0``, ``R0``).
With ``U`` the un-normalised weight (``main + res`` codebook rows), the layer computes
``W[r, j] = U[r, j] * scale[j] + shift[j]`` and ``y = x Wᵀ + bias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vptq_rs import ops
from vptq_rs.errors import InvalidValueError
from vptq_rs.nn import VQuantLinear

# parameter names of a VQuantLinear that codebook fine-tuning may train (FORMAT.md names)
CODEBOOK_PARAMS = (
    "centroids.weight",
    "res_centroids.weight",
    "outlier_centroids.weight",
    "weight_scale",
    "weight_bias",
)


@dataclass(frozen=True)
class LayerCodes:
    """Unpacked, frozen codes of one layer, laid out for gathers and ``index_add_``.

    main:    int32 ``[G*C, R]`` rows of the flat codebook ``[G*K, v]`` (group offset added),
             one row per non-outlier column in permuted order
    res:     int32 ``[G*C, R]`` rows of the flat residual codebook ``[G*Kres, v]`` or None
    cols:    int64 ``[G*C]`` original column of each of those rows, or None when identity
    outlier: int32 ``[osz, R0]`` rows of the outlier codebook ``[K0, v0]`` or None
    out_cols: int64 ``[osz]`` original columns of the outliers, or None
    """

    main: torch.Tensor
    res: torch.Tensor | None
    cols: torch.Tensor | None
    outlier: torch.Tensor | None
    out_cols: torch.Tensor | None


def layer_codes(mod: VQuantLinear) -> LayerCodes:
    """Unpack ``mod``'s indices once (Rust on CPU, torch elsewhere), on the indices' device."""
    cfg = mod.config
    if cfg.vector_quant_dim != "out":
        raise InvalidValueError("fine-tuning supports vector_quant_dim='out' layers only")
    g, k = cfg.group_num, cfg.num_centroids
    dev = mod.indices.device
    main, res = ops.unpack_codes(mod.indices, cfg.index_bits, cfg.group_size, cfg.res_bits)
    offs = torch.arange(g, device=dev, dtype=torch.int64).view(g, 1, 1)

    def rows(codes: torch.Tensor, kk: int) -> torch.Tensor:
        # [G, R, C] -> [G*C, R] flat-codebook rows (group g uses rows g*kk .. g*kk+kk-1)
        flat = codes.to(dev, torch.int64) + offs * kk
        # int32 halves the resident code memory; gathers and index_add_ accept it
        return flat.permute(0, 2, 1).reshape(g * cfg.group_size, -1).to(torch.int32).contiguous()

    osz = cfg.outlier_size
    perm = ops.as_unsigned(mod.perm).to(dev) if mod.perm is not None else None
    cols = perm[osz:].contiguous() if perm is not None else None
    if cols is None and osz:
        cols = torch.arange(osz, cfg.in_features, device=dev)
    outlier = out_cols = None
    if osz:
        assert mod.outlier_indices is not None
        outlier = ops.as_unsigned(mod.outlier_indices[0]).to(dev, torch.int32).t().contiguous()
        out_cols = perm[:osz] if perm is not None else torch.arange(osz, device=dev)
    return LayerCodes(
        main=rows(main, k),
        res=rows(res, cfg.num_res_centroids) if res is not None else None,
        cols=cols,
        outlier=outlier,
        out_cols=out_cols,
    )


def dense_t(
    mod: VQuantLinear,
    codes: LayerCodes,
    cb: torch.Tensor,
    rcb: torch.Tensor | None,
    ocb: torch.Tensor | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
) -> torch.Tensor:
    """fp32 ``Wᵀ`` ``[I, O]`` (or ``Uᵀ`` when scale/shift are None), same order as the reference.

    cb: float ``[G, K*v]``; rcb ``[G, Kres*v]`` or None; ocb ``[1, K0*v0]`` or None;
    scale/shift: float ``[I]`` or None.
    """
    cfg = mod.config
    o, v = cfg.out_features, cfg.vector_len
    vec = F.embedding(codes.main, cb.detach().float().reshape(-1, v))  # [G*C, R, v]
    if codes.res is not None and rcb is not None:
        vec += F.embedding(codes.res, rcb.detach().float().reshape(-1, v))
    vec = vec.reshape(vec.shape[0], -1)[:, :o]
    if codes.cols is None:
        ut = vec.contiguous()
    else:
        ut = vec.new_empty(cfg.in_features, o)
        ut[codes.cols] = vec
        if codes.outlier is not None and ocb is not None:
            v0 = cfg.outlier_vector_len
            ovec = F.embedding(codes.outlier, ocb.detach().float().reshape(-1, v0))
            ut[codes.out_cols] = ovec.reshape(ovec.shape[0], -1)[:, :o]
    del vec
    if scale is not None:
        ut.mul_(scale.detach().float()[:, None])
    if shift is not None:
        ut.add_(shift.detach().float()[:, None])
    return ut


def _scatter(
    grad_rows: torch.Tensor, ids: torch.Tensor, like: torch.Tensor, v: int
) -> torch.Tensor:
    """Sum ``grad_rows`` ``[n, O]`` (padded to ``R*v``) onto codebook rows ``ids`` ``[n, R]``."""
    pad = ids.shape[1] * v - grad_rows.shape[1]
    g = F.pad(grad_rows, (0, pad)).reshape(-1, v)
    out = torch.zeros(like.numel() // v, v, device=like.device, dtype=torch.float32)
    out.index_add_(0, ids.reshape(-1), g)
    return out.reshape(like.shape).to(like.dtype)


class VQLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + bias`` with W dequantized in forward and again in backward (never saved)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        mod: VQuantLinear,
        codes: LayerCodes,
        cb: torch.Tensor,
        rcb: torch.Tensor | None,
        ocb: torch.Tensor | None,
        scale: torch.Tensor | None,
        shift: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        wt = dense_t(mod, codes, cb, rcb, ocb, scale, shift)
        # autocast (if on) would cast this matmul anyway; without it, compute in x's dtype
        y = x @ wt.to(x.dtype)
        del wt
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.mod, ctx.codes = mod, codes
        ctx.save_for_backward(x, cb, rcb, ocb, scale, shift, bias)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, cb, rcb, ocb, scale, shift, bias = ctx.saved_tensors
        mod, codes = ctx.mod, ctx.codes
        cfg = mod.config
        need = ctx.needs_input_grad
        need_x, need_cb, need_rcb, need_ocb, need_s, need_b, need_bias = (
            need[0],
            need[3],
            need[4],
            need[5],
            need[6],
            need[7],
            need[8],
        )
        gy2 = gy.reshape(-1, cfg.out_features)
        gx = gcb = grcb = gocb = gs = gb = gbias = None
        if need_bias and bias is not None:
            gbias = gy2.float().sum(0).to(bias.dtype)
        need_w = need_cb or need_rcb or need_ocb or need_s or need_b
        if not (need_x or need_w):
            return None, None, None, None, None, None, None, None, gbias
        ut = dense_t(mod, codes, cb, rcb, ocb, None, None)  # [I, O] fp32, un-normalised
        gwt = None
        if need_w:
            x2 = x.reshape(-1, cfg.in_features)
            gwt = (x2.t() @ gy2.to(x2.dtype)).float()  # dL/dWᵀ [I, O]
            if need_s and scale is not None:
                gs = (gwt * ut).sum(1).to(scale.dtype)
            if need_b and shift is not None:
                gb = gwt.sum(1).to(shift.dtype)
        if need_x:
            if scale is not None:
                ut.mul_(scale.detach().float()[:, None])
            if shift is not None:
                ut.add_(shift.detach().float()[:, None])
            gx = (gy2 @ ut.t().to(gy2.dtype)).reshape(*gy.shape[:-1], cfg.in_features)
        del ut
        if gwt is not None and (need_cb or need_rcb or need_ocb):
            if scale is not None:
                gwt.mul_(scale.detach().float()[:, None])  # dL/dUᵀ
            rows = gwt[codes.cols] if codes.cols is not None else gwt
            v = cfg.vector_len
            if need_cb:
                gcb = _scatter(rows, codes.main, cb, v)
            if need_rcb and codes.res is not None and rcb is not None:
                grcb = _scatter(rows, codes.res, rcb, v)
            if need_ocb and codes.outlier is not None and ocb is not None:
                gocb = _scatter(gwt[codes.out_cols], codes.outlier, ocb, cfg.outlier_vector_len)
        return gx, None, None, gcb, grcb, gocb, gs, gb, gbias


class TrainableVQuantLinear(VQuantLinear):
    """``VQuantLinear`` that routes through :class:`VQLinearFunction` whenever autograd is on.

    Same parameters and state-dict names as ``VQuantLinear`` (so a trained layer saves in
    the packed format unchanged); without grad it runs the runtime's inference path.
    """

    _codes: LayerCodes | None = None
    _codes_key: tuple[Any, ...] | None = None

    @classmethod
    def from_module(cls, mod: VQuantLinear) -> TrainableVQuantLinear:
        """A trainable layer sharing ``mod``'s tensors (no copies)."""
        new = cls(mod.config, dtype=mod.centroids.weight.dtype, device="meta")
        new.load_packed(mod.packed(), bias=mod.bias, device=mod.indices.device)
        return new

    def codes(self) -> LayerCodes:
        """The unpacked codes, cached per (device, indices storage): indices never change."""
        key = (self.indices.device, self.indices.data_ptr())
        if self._codes is None or self._codes_key != key:
            self._codes = layer_codes(self)
            self._codes_key = key
        return self._codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = [
            self.centroids.weight,
            self.res_centroids.weight if self.res_centroids is not None else None,
            self.outlier_centroids.weight if self.outlier_centroids is not None else None,
            self.weight_scale,
            self.weight_bias,
            self.bias,
        ]
        if not torch.is_grad_enabled() or not (
            x.requires_grad or any(p is not None and p.requires_grad for p in params)
        ):
            return super().forward(x)
        if x.shape[-1] != self.in_features:
            raise InvalidValueError(
                f"input has {x.shape[-1]} features, the layer expects {self.in_features}"
            )
        return VQLinearFunction.apply(x, self, self.codes(), *params)


def make_trainable(model: nn.Module) -> list[str]:
    """Replace every ``VQuantLinear`` of ``model`` by a :class:`TrainableVQuantLinear`.

    Returns the module names replaced. Parameters keep their storage and requires_grad=False.
    """
    names = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, VQuantLinear) and not isinstance(mod, TrainableVQuantLinear):
            model.set_submodule(name, TrainableVQuantLinear.from_module(mod))
            names.append(name)
        elif isinstance(mod, TrainableVQuantLinear):
            names.append(name)
    return names


def codebook_parameters(mod: VQuantLinear, *, with_bias: bool = True) -> dict[str, nn.Parameter]:
    """The float tensors codebook fine-tuning trains in one layer (local name -> parameter)."""
    out: dict[str, nn.Parameter] = {}
    for name, p in mod.named_parameters():
        if name in CODEBOOK_PARAMS or (with_bias and name == "bias"):
            out[name] = p
    return out
