"""``VQuantLinear``: a Linear layer that keeps VPTQ weights packed in memory.

Parameter names and dtypes are those of a packed checkpoint (FORMAT.md), so a state dict
loads straight from ``model.safetensors`` and the module is a drop-in for Microsoft's
``vptq.layers.vqlinear.VQuantLinear``. On a GPU with the CUDA kernels built, up to 8 tokens
go through the fused dequant-GEMV and no dense weight exists; otherwise the dense weight is
rebuilt on every forward unless the caller asks for a cache with
:meth:`VQuantLinear.cache_weight` (memory is the point of the exercise, so caching is never
implicit).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

import vptq_rs
from vptq_rs import cuda_ext, ops, sorted_layout, tiled_layout
from vptq_rs.errors import InvalidValueError
from vptq_rs.layout import LayerConfig, QuantizedLayer

logger = logging.getLogger(__name__)


class Codebook(nn.Module):
    """Holds one codebook as ``weight`` (float ``[G, K*v]``), like ``nn.Embedding`` in vptq."""

    def __init__(self, rows: int, cols: int, *, dtype: torch.dtype, device: Any = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.empty(rows, cols, dtype=dtype, device=device), requires_grad=False
        )

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, dtype={self.weight.dtype}"


def _index_param(shape: tuple[int, ...], dtype: torch.dtype, device: Any) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape, dtype=dtype, device=device), requires_grad=False)


class VQuantLinear(nn.Module):
    """A VPTQ-quantized ``nn.Linear`` holding packed tensors.

    Parameters (FORMAT.md names): ``centroids.weight`` float ``[G, K*v]``,
    ``res_centroids.weight`` ``[G, Kres*v]``, ``indices`` int32 ``[G, R, words]``,
    ``outlier_centroids.weight`` ``[1, K0*v0]``, ``outlier_indices`` int16 ``[1, R0, osz]``,
    ``perm`` int16 ``[I]``, ``weight_scale``/``weight_bias`` ``[I]``, ``bias`` ``[O]``;
    the optional ones are None when the config does not use them.
    Forward: ``x`` float ``[..., I]`` -> ``[..., O]``.
    """

    def __init__(
        self,
        config: LayerConfig,
        *,
        dtype: torch.dtype = torch.float16,
        device: Any = None,
    ) -> None:
        super().__init__()
        c = config
        if c.enable_perm and c.q_cols > 65536:
            raise InvalidValueError(f"perm is stored as uint16; {c.q_cols} columns do not fit")
        self.config = c
        self.in_features = c.in_features
        self.out_features = c.out_features
        words = -(-c.group_size * (c.index_bits + c.res_bits) // 32)
        self.centroids = Codebook(
            c.group_num, c.num_centroids * c.vector_len, dtype=dtype, device=device
        )
        self.res_centroids = (
            Codebook(c.group_num, c.num_res_centroids * c.vector_len, dtype=dtype, device=device)
            if c.num_res_centroids
            else None
        )
        self.indices = _index_param((c.group_num, c.num_vectors, words), torch.int32, device)
        if c.outlier_size:
            self.outlier_centroids: Codebook | None = Codebook(
                1, c.outlier_num_centroids * c.outlier_vector_len, dtype=dtype, device=device
            )
            self.outlier_indices: nn.Parameter | None = _index_param(
                (1, c.num_outlier_vectors, c.outlier_size), torch.int16, device
            )
        else:
            self.outlier_centroids = None
            self.outlier_indices = None
        self.perm: nn.Parameter | None = (
            _index_param((c.q_cols,), torch.int16, device) if c.enable_perm else None
        )
        # vptq checkpoints with enable_norm=false carry no scale/bias; ours always do
        self.weight_scale: nn.Parameter | None = None
        self.weight_bias: nn.Parameter | None = None
        if c.enable_norm:
            self.weight_scale = nn.Parameter(
                torch.ones(c.q_cols, dtype=dtype, device=device), requires_grad=False
            )
            self.weight_bias = nn.Parameter(
                torch.zeros(c.q_cols, dtype=dtype, device=device), requires_grad=False
            )
        self.bias: nn.Parameter | None = (
            nn.Parameter(
                torch.zeros(c.out_features, dtype=dtype, device=device), requires_grad=False
            )
            if c.bias
            else None
        )
        self._weight_cache: torch.Tensor | None = None
        self._fused: _FusedArgs | None = None
        self._sorted_gemv = False

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_hf(cls, entry: dict[str, Any], **kwargs: Any) -> VQuantLinear:
        """Build an empty layer from a ``config_for_layers`` entry."""
        return cls(LayerConfig.from_hf(entry), **kwargs)

    @classmethod
    def from_quantized(
        cls, layer: QuantizedLayer, dtype: torch.dtype | None = None
    ) -> VQuantLinear:
        """Pack an unpacked :class:`QuantizedLayer` into a module (on the layer's device)."""
        layer.validate()
        dtype = dtype or layer.centroids.dtype
        device = layer.centroids.device
        # the packed form always carries scale/bias (FORMAT.md: enable_norm is always true)
        mod = cls(dataclasses.replace(layer.config, enable_norm=True), dtype=dtype, device="meta")
        tensors = packed_tensors(layer, dtype)
        mod.load_packed(
            tensors, bias=layer.bias.to(dtype) if layer.bias is not None else None, device=device
        )
        return mod

    def load_packed(
        self, t: ops.PackedTensors, bias: torch.Tensor | None = None, device: Any = None
    ) -> None:
        """Replace the parameters by ``t`` (shapes checked, dtypes kept), moved to ``device``."""

        def put(owner: nn.Module | None, name: str, value: torch.Tensor | None, label: str) -> None:
            old = getattr(owner, name) if owner is not None else None
            if (old is None) != (value is None):
                state = "missing" if value is None else "not used by the config"
                raise InvalidValueError(f"{label} is {state}")
            if old is None or value is None or owner is None:
                return
            if tuple(old.shape) != tuple(value.shape):
                raise InvalidValueError(
                    f"{label} has shape {list(value.shape)}, expected {list(old.shape)}"
                )
            new = value.detach().to(device=device or old.device, dtype=old.dtype)
            setattr(owner, name, nn.Parameter(new, requires_grad=False))

        for mod_name, value in (
            ("centroids", t.centroids),
            ("res_centroids", t.res_centroids),
            ("outlier_centroids", t.outlier_centroids),
        ):
            mod = getattr(self, mod_name)
            if (mod is None) != (value is None):
                state = "missing" if value is None else "not used by the config"
                raise InvalidValueError(f"{mod_name}.weight is {state}")
            put(mod, "weight", value, f"{mod_name}.weight")
        for name in ("indices", "outlier_indices", "perm", "weight_scale", "weight_bias"):
            put(self, name, getattr(t, name), name)
        put(self, "bias", bias, "bias")
        self._weight_cache = None
        self._fused = None

    # -- views -----------------------------------------------------------------------------

    def packed(self) -> ops.PackedTensors:
        """The packed tensors of this layer (no copies)."""
        return ops.PackedTensors(
            indices=self.indices,
            centroids=self.centroids.weight,
            res_centroids=self.res_centroids.weight if self.res_centroids is not None else None,
            outlier_indices=self.outlier_indices,
            outlier_centroids=(
                self.outlier_centroids.weight if self.outlier_centroids is not None else None
            ),
            perm=self.perm,
            weight_scale=self.weight_scale,
            weight_bias=self.weight_bias,
        )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense weight ``[O, I]`` (default dtype: the centroids'); equals the reference."""
        return ops.dequantize(self.config, self.packed(), dtype)

    def to_quantized(self) -> QuantizedLayer:
        """Unpack into a :class:`QuantizedLayer` (codes as int64 tensors, on CPU)."""
        return unpack_layer(self.config, self.packed(), self.bias)

    # -- weight cache ----------------------------------------------------------------------

    def cache_weight(self, enable: bool = True) -> None:
        """Keep (or drop) the dense weight between forwards: faster, but O*I floats resident."""
        if enable:
            self._weight_cache = self.dequantize(self.centroids.weight.dtype).detach()
            logger.info(
                "cached dense weight of %s: %.1f MiB",
                type(self).__name__,
                self._weight_cache.numel() * self._weight_cache.element_size() / 2**20,
            )
        else:
            self._weight_cache = None

    @property
    def weight_cached(self) -> bool:
        return self._weight_cache is not None

    # -- sorted GEMV ------------------------------------------------------------------------

    def use_sorted_gemv(self, enable: bool = True) -> bool:
        """Run one-token CUDA forwards through a GEMV over a code-sorted copy of the indices:
        the sorted kernel (:mod:`vptq_rs.sorted_layout`) where the codebook is at most as
        wide as a row, the tiled kernel (:mod:`vptq_rs.tiled_layout`) where it is wider
        (e.g. 65,536 rows).

        The copy is built on first use on the layer's device and kept beside the packed
        words (never saved): about 1.9x their bytes at 12-bit codes on rows of 8192
        columns (sorted), 2x at 16-bit codes (tiled). Returns whether it is on: only where
        one of them pays (``sorted_layout.pays``: no residual codebook, or a large layer;
        ``tiled_layout.pays`` on the layer's device); elsewhere forwards keep the other
        kernels."""
        cfg = self.config
        pays = sorted_layout.pays(cfg) or tiled_layout.pays(cfg, self.indices.device)
        self._sorted_gemv = bool(enable) and pays
        self._fused = None
        return self._sorted_gemv

    @property
    def sorted_gemv(self) -> bool:
        return bool(self.__dict__.get("_sorted_gemv"))

    # -- compute ---------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._weight_cache is not None:
            w = self._weight_cache
            if w.device != x.device or w.dtype != x.dtype:
                w = w.to(device=x.device, dtype=x.dtype)
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            return torch.nn.functional.linear(x, w, bias)
        if x.is_cuda and not torch.compiler.is_compiling():  # dynamo traces the general path
            y = self._fused_gemv(x)
            if y is not None:
                return y
        return ops.vq_linear(x, self.config, self.packed(), self.bias)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._fused = None  # .to() / .half() may swap tensors under the same Parameters
        return super()._apply(fn, recurse)

    def _current(self) -> tuple[torch.Tensor | None, ...]:
        """The packed tensors and bias, read from the parameter dicts (cheaper than attributes)."""
        p, m = self._parameters, self._modules

        def weight(name: str) -> torch.Tensor | None:
            mod = m.get(name)
            return mod._parameters.get("weight") if mod is not None else None

        return (
            p["indices"],
            weight("centroids"),
            weight("res_centroids"),
            p.get("outlier_indices"),
            weight("outlier_centroids"),
            p.get("perm"),
            p.get("weight_scale"),
            p.get("weight_bias"),
            p.get("bias"),
        )

    def _fused_gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x @ Wᵀ + bias`` straight through the fused GEMV op, or None where it does not
        apply. A decode step of a small model spends more time in Python than on the GPU, so
        the checks of the general path (:func:`ops.vq_linear`) run once per set of parameter
        objects and later calls only compare identities."""
        cur = self._current()
        if x.shape[-1] != self.in_features or not cuda_ext.fused_gemv_applies(
            x, self.config, cur[1].dtype
        ):
            return None
        fused = self.__dict__.get("_fused")  # absent on modules built without __init__
        if (
            fused is None
            or fused.config is not self.config
            or any(a is not b for a, b in zip(cur, fused.current, strict=True))
        ):
            fused = self._fused = _FusedArgs.build(self, cur)
        if fused.tensors is None or x.device != fused.device:
            return None
        x2 = x.reshape(-1, self.in_features).contiguous()
        s = fused.sorted
        if isinstance(s, tiled_layout.TiledLayout) and x2.shape[0] == 1:
            y = torch.ops.vptq_rs.gemv_tiled(
                x2,
                s.entries,
                s.tile_start,
                s.tile_codes,
                *fused.tensors,
                cur[8],
                *fused.ints,
                s.form,
            )
        elif s is not None and x2.shape[0] == 1:
            y = torch.ops.vptq_rs.gemv_sorted(
                x2, s.entries, s.chunk_base, s.chunk_groups, *fused.tensors, cur[8], *fused.ints
            )
        else:
            y = torch.ops.vptq_rs.gemv(x2, *fused.tensors, cur[8], *fused.ints, 0)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        c = self.config
        res = f"+res{c.num_res_centroids}" if c.num_res_centroids else ""
        out = f", outliers={c.outlier_size}" if c.outlier_size else ""
        return (
            f"in_features={c.in_features}, out_features={c.out_features}, v={c.vector_len}, "
            f"k={c.num_centroids}{res}, groups={c.group_num}{out}, perm={c.enable_perm}, "
            f"bias={c.bias}"
        )


@dataclasses.dataclass(frozen=True)
class _FusedArgs:
    """A layer's checked arguments for ``torch.ops.vptq_rs.gemv`` (tensors None: the op does
    not apply), valid while the layer holds the same config and parameter objects."""

    config: LayerConfig
    current: tuple[torch.Tensor | None, ...]
    tensors: tuple[torch.Tensor | None, ...] | None = None
    ints: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    # the sorted GEMV's layout, when on
    sorted: sorted_layout.SortedLayout | tiled_layout.TiledLayout | None = None

    @classmethod
    def build(cls, layer: VQuantLinear, cur: tuple[torch.Tensor | None, ...]) -> _FusedArgs:
        cfg, idx, cb, bias = layer.config, cur[0], cur[1], cur[8]
        none = cls(cfg, cur)
        # which inputs qualify is cuda_ext.fused_gemv_applies's call, per forward
        if (
            ops.cuda_extension() is None
            or (bias is not None and bias.dtype != cb.dtype)
            or not idx.is_cuda
        ):
            return none
        if any(t is not None and (t.device != idx.device or not t.is_contiguous()) for t in cur):
            return none
        try:
            tensors, ints = cuda_ext._layer_args(cfg, layer.packed())
        except InvalidValueError:
            return none  # the general path raises the same error with its context
        ops._log_path("cuda", idx.device)
        layout = None
        if layer.sorted_gemv:
            layout = _sorted_layout(layer, idx)
        return cls(cfg, cur, tuple(tensors), tuple(ints), cb.dtype, idx.device, layout)


def _sorted_layout(
    layer: VQuantLinear, idx: torch.Tensor
) -> sorted_layout.SortedLayout | tiled_layout.TiledLayout | None:
    """The layer's sorted or tiled layout on ``idx``'s device, or None (with a warning)
    where its kernel's shared memory does not fit that GPU."""
    cfg = layer.config
    if sorted_layout.pays(cfg):
        layout = sorted_layout.build(cfg, idx)
        if sorted_layout.fits(cfg, layout, idx.device):
            return layout
    else:
        mma, cluster = tiled_layout.load_form(cfg, idx.device)
        tile_codes = tiled_layout.device_tile_codes(cfg, idx.device, mma=mma, cluster=cluster)
        if tile_codes is not None:
            return tiled_layout.build(cfg, idx, tile_codes, mma=mma, cluster=cluster)
    logger.warning(
        "%s: the sorted GEMV's shared memory does not fit on %s; using the other kernels",
        layer.extra_repr(),
        idx.device,
    )
    return None


def use_sorted_gemv(model: nn.Module, enable: bool = True) -> tuple[int, int]:
    """Turn the sorted GEMV (:meth:`VQuantLinear.use_sorted_gemv`) on or off for every
    quantized layer of ``model``. Returns (layers it covers, quantized layers)."""
    layers = [m for m in model.modules() if isinstance(m, VQuantLinear)]
    covered = sum(m.use_sorted_gemv(enable) for m in layers)
    return covered, len(layers)


def packed_tensors(layer: QuantizedLayer, dtype: torch.dtype | None = None) -> ops.PackedTensors:
    """Pack a :class:`QuantizedLayer` into checkpoint tensors (codes bit-packed by the Rust core).

    Floats are cast to ``dtype`` (default: the centroids' dtype); tensors come back on CPU.
    """
    c = layer.config
    dtype = dtype or layer.centroids.dtype
    g, r = c.group_num, c.num_vectors

    def f(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.detach().to("cpu", dtype).contiguous() if t is not None else None

    main = layer.main_idx.detach().cpu().reshape(g * r, c.group_size).numpy()
    res = (
        layer.res_idx.detach().cpu().reshape(g * r, c.group_size).numpy()
        if layer.res_idx is not None
        else None
    )
    words = vptq_rs.pack_indices(main, c.index_bits, res, c.res_bits)
    indices = torch.from_numpy(words).reshape(g, r, -1)

    def u16(t: torch.Tensor | None) -> torch.Tensor | None:
        # uint16 values stored as their int16 bit patterns (FORMAT.md)
        return (
            t.detach().cpu().to(torch.int32).to(torch.int16).contiguous() if t is not None else None
        )

    return ops.PackedTensors(
        indices=indices,
        centroids=f(layer.centroids.reshape(g, -1)),
        res_centroids=f(
            layer.res_centroids.reshape(g, -1) if layer.res_centroids is not None else None
        ),
        outlier_indices=u16(layer.outlier_idx),
        outlier_centroids=f(
            layer.outlier_centroids.reshape(1, -1) if layer.outlier_centroids is not None else None
        ),
        perm=u16(layer.perm),
        weight_scale=f(layer.weight_scale),
        weight_bias=f(layer.weight_bias),
    )


def unpack_layer(
    cfg: LayerConfig, t: ops.PackedTensors, bias: torch.Tensor | None = None
) -> QuantizedLayer:
    """Inverse of :func:`packed_tensors`: an unpacked :class:`QuantizedLayer` on CPU."""
    g, v = cfg.group_num, cfg.vector_len
    main, res = ops.unpack_codes(
        t.indices.detach().cpu(), cfg.index_bits, cfg.group_size, cfg.res_bits
    )

    def cpu(x: torch.Tensor | None) -> torch.Tensor | None:
        return x.detach().cpu() if x is not None else None

    layer = QuantizedLayer(
        config=cfg,
        centroids=t.centroids.detach().cpu().reshape(g, cfg.num_centroids, v),
        main_idx=main.long(),
        res_centroids=(
            t.res_centroids.detach().cpu().reshape(g, cfg.num_res_centroids, v)
            if t.res_centroids is not None
            else None
        ),
        res_idx=res.long() if res is not None else None,
        outlier_centroids=(
            t.outlier_centroids.detach()
            .cpu()
            .reshape(1, cfg.outlier_num_centroids, cfg.outlier_vector_len)
            if t.outlier_centroids is not None
            else None
        ),
        outlier_idx=ops.as_unsigned(t.outlier_indices.cpu())
        if t.outlier_indices is not None
        else None,
        perm=ops.as_unsigned(t.perm.cpu()) if t.perm is not None else None,
        weight_scale=cpu(t.weight_scale)
        if t.weight_scale is not None
        else torch.ones(cfg.q_cols, dtype=t.centroids.dtype),
        weight_bias=cpu(t.weight_bias)
        if t.weight_bias is not None
        else torch.zeros(cfg.q_cols, dtype=t.centroids.dtype),
        bias=cpu(bias),
    )
    layer.validate()
    return layer


def random_quantized_layer(
    cfg: LayerConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> QuantizedLayer:
    """A layer with random codebooks, codes, perm and norm (tests, benchmarks, demos)."""
    gen = torch.Generator().manual_seed(seed)
    g, r, cs, v = cfg.group_num, cfg.num_vectors, cfg.group_size, cfg.vector_len

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    def codes(k: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, k, shape, generator=gen)

    kr, osz = cfg.num_res_centroids, cfg.outlier_size
    return QuantizedLayer(
        config=cfg,
        centroids=randn(g, cfg.num_centroids, v),
        main_idx=codes(cfg.num_centroids, g, r, cs),
        res_centroids=randn(g, kr, v) * 0.1 if kr else None,
        res_idx=codes(kr, g, r, cs) if kr else None,
        outlier_centroids=randn(1, cfg.outlier_num_centroids, cfg.outlier_vector_len)
        if osz
        else None,
        outlier_idx=codes(cfg.outlier_num_centroids, 1, cfg.num_outlier_vectors, osz)
        if osz
        else None,
        perm=torch.randperm(cfg.q_cols, generator=gen) if cfg.enable_perm else None,
        weight_scale=(torch.rand(cfg.q_cols, generator=gen) + 0.5).to(dtype),
        weight_bias=(torch.randn(cfg.q_cols, generator=gen) * 0.1).to(dtype),
        bias=randn(cfg.out_features) if cfg.bias else None,
    )
