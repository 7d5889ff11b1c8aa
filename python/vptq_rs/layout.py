"""The quantized layer in memory, unpacked: the contract between quantizer, packer and runtime.

A :class:`QuantizedLayer` holds exactly the information of one layer of a packed VPTQ
checkpoint (``../shared/FORMAT.md``), with indices as plain integer tensors instead of
bit-packed words and codebooks as ``[G, K, v]`` instead of ``[G, K*v]``. The quantizer
produces it, :mod:`vptq_rs.checkpoint` packs and unpacks it, and
:meth:`QuantizedLayer.dequantize` is the reference every kernel must reproduce.

Notation (FORMAT.md): ``O`` out_features, ``I`` in_features, ``v`` vector length, ``K`` main
centroids, ``Kres`` residual centroids (0 = off), ``G`` groups of ``C`` columns,
``R = ceil(O / v)`` vectors per column, ``osz`` outlier columns with ``v0``/``K0``.

``vector_quant_dim = "in"`` (vectors along the input dimension) is stored as the
quantization of ``Wᵀ``: every "column" quantity (perm, scale, bias, groups, outliers) then
runs over the O output rows and R = ceil(I / v). ``q_rows``/``q_cols`` give the shape of
the matrix actually quantized. The reference ``vptq`` package only reads "out" layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vptq_rs.errors import InvalidValueError

# The 13 keys FORMAT.md says to write per layer, in the order written.
HF_LAYER_KEYS = (
    "in_features",
    "out_features",
    "vector_lens",
    "num_centroids",
    "num_res_centroids",
    "group_num",
    "group_size",
    "outlier_size",
    "indices_as_float",
    "enable_norm",
    "enable_perm",
    "is_indice_packed",
    "bias",
)


@dataclass(frozen=True)
class LayerConfig:
    """Shape of one quantized Linear; mirrors a ``config_for_layers`` entry."""

    in_features: int
    out_features: int
    vector_len: int
    num_centroids: int
    num_res_centroids: int = 0
    group_num: int = 1
    outlier_size: int = 0
    outlier_vector_len: int = -1
    outlier_num_centroids: int = -1
    enable_perm: bool = False
    enable_norm: bool = True
    bias: bool = False
    vector_quant_dim: str = "out"

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise InvalidValueError(f"layer config: {msg}")

        if self.in_features <= 0 or self.out_features <= 0:
            bad(f"features must be positive, got in={self.in_features} out={self.out_features}")
        if self.vector_len < 1:
            bad(f"vector length must be >= 1, got {self.vector_len}")
        for name, k in (("num_centroids", self.num_centroids),):
            if k < 2 or k & (k - 1) or k > 65536:
                bad(f"{name} must be a power of two in [2, 65536], got {k}")
        kr = self.num_res_centroids
        if kr != 0 and (kr < 2 or kr & (kr - 1) or kr > 65536):
            bad(f"num_res_centroids must be 0 or a power of two in [2, 65536], got {kr}")
        if self.index_bits + self.res_bits > 32:
            bad(f"index bits {self.index_bits} + residual bits {self.res_bits} exceed 32")
        if not 0 <= self.outlier_size < self.q_cols:
            bad(f"outlier_size {self.outlier_size} must be in [0, {self.q_cols})")
        if self.outlier_size and (self.outlier_vector_len < 1 or self.outlier_num_centroids < 1):
            bad("outlier columns need outlier_vector_len >= 1 and outlier_num_centroids >= 1")
        if self.outlier_num_centroids > 65536:
            bad("outlier_num_centroids must be <= 65536 (outlier indices are uint16)")
        if self.vector_quant_dim not in ("in", "out"):
            bad(f"vector_quant_dim must be 'in' or 'out', got {self.vector_quant_dim!r}")
        if self.group_num < 1 or (self.q_cols - self.outlier_size) % self.group_num:
            bad(
                f"group_num {self.group_num} does not divide the "
                f"{self.q_cols - self.outlier_size} non-outlier columns"
            )

    @property
    def q_rows(self) -> int:
        """Rows of the quantized matrix (O, or I for vector_quant_dim='in')."""
        return self.out_features if self.vector_quant_dim == "out" else self.in_features

    @property
    def q_cols(self) -> int:
        """Columns of the quantized matrix (I, or O for vector_quant_dim='in')."""
        return self.in_features if self.vector_quant_dim == "out" else self.out_features

    @property
    def index_bits(self) -> int:
        return int(math.log2(self.num_centroids))

    @property
    def res_bits(self) -> int:
        return int(math.log2(self.num_res_centroids)) if self.num_res_centroids else 0

    @property
    def group_size(self) -> int:
        return (self.q_cols - self.outlier_size) // self.group_num

    @property
    def num_vectors(self) -> int:
        """R: vectors per column (rows padded up to a multiple of v)."""
        return -(-self.q_rows // self.vector_len)

    @property
    def num_outlier_vectors(self) -> int:
        return -(-self.q_rows // self.outlier_vector_len) if self.outlier_size else 0

    def to_hf(self) -> dict[str, Any]:
        """The ``config_for_layers`` entry: exactly FORMAT.md's 13 keys (+ vector_quant_dim)."""
        entry = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "vector_lens": [self.outlier_vector_len if self.outlier_size else -1, self.vector_len],
            "num_centroids": [
                self.outlier_num_centroids if self.outlier_size else -1,
                self.num_centroids,
            ],
            "num_res_centroids": [-1, self.num_res_centroids or -1],
            "group_num": self.group_num,
            "group_size": self.group_size,
            "outlier_size": self.outlier_size,
            "indices_as_float": False,
            "enable_norm": True,  # always: the reference kernels need scale/bias tensors
            "enable_perm": self.enable_perm,
            "is_indice_packed": True,
            "bias": self.bias,
        }
        if self.vector_quant_dim != "out":
            entry["vector_quant_dim"] = self.vector_quant_dim
        return entry

    @classmethod
    def from_hf(cls, entry: dict[str, Any]) -> LayerConfig:
        """Parse a ``config_for_layers`` entry (ours or the reference's)."""

        def num(value: Any, key: str) -> int:
            # JSON integers only: a float (or inf, or a bool) is a malformed entry
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidValueError(f"layer config: {key} must be an integer, got {value!r}")
            return value

        try:
            v0, v = entry["vector_lens"]
            k0, k = entry["num_centroids"]
            _, kr = entry["num_res_centroids"]
            osz = num(entry.get("outlier_size", 0), "outlier_size")
            cfg = cls(
                in_features=num(entry["in_features"], "in_features"),
                out_features=num(entry["out_features"], "out_features"),
                vector_len=num(v, "vector_lens[1]"),
                num_centroids=num(k, "num_centroids[1]"),
                num_res_centroids=max(num(kr, "num_res_centroids[1]"), 0),
                group_num=num(entry.get("group_num", 1), "group_num"),
                outlier_size=osz,
                outlier_vector_len=num(v0, "vector_lens[0]") if osz else -1,
                outlier_num_centroids=num(k0, "num_centroids[0]") if osz else -1,
                enable_perm=bool(entry.get("enable_perm", False)),
                enable_norm=bool(entry.get("enable_norm", False)),
                bias=bool(entry.get("bias", False)),
                vector_quant_dim=str(entry.get("vector_quant_dim", "out")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidValueError):
                raise
            raise InvalidValueError(f"malformed layer config entry {entry!r}: {exc}") from exc
        group_size = entry.get("group_size", cfg.group_size)
        if not isinstance(group_size, int) or group_size != cfg.group_size:
            raise InvalidValueError(
                f"group_size {group_size!r} != (in_features - outlier_size) / group_num"
                f" = {cfg.group_size}"
            )
        return cfg


@dataclass
class QuantizedLayer:
    """One quantized Linear, unpacked.

    Tensors (``int`` = any integer dtype; floats in the model dtype or fp32):
        centroids:         float ``[G, K, v]``
        main_idx:          int   ``[G, R, C]``, values < K
        res_centroids:     float ``[G, Kres, v]`` or None
        res_idx:           int   ``[G, R, C]`` or None, values < Kres
        outlier_centroids: float ``[1, K0, v0]`` or None
        outlier_idx:       int   ``[1, ceil(O / v0), osz]`` or None
        perm:              int   ``[I]`` or None; ``perm[p]`` = original column at position p
        weight_scale:      float ``[I]`` indexed by original column (ones when norm is off)
        weight_bias:       float ``[I]`` indexed by original column (zeros when norm is off)
    (``O``/``I`` read ``q_rows``/``q_cols`` of the config: swapped for vector_quant_dim "in").
        bias:              float ``[O]`` or None (the Linear's own bias)
    """

    config: LayerConfig
    centroids: torch.Tensor
    main_idx: torch.Tensor
    weight_scale: torch.Tensor
    weight_bias: torch.Tensor
    res_centroids: torch.Tensor | None = None
    res_idx: torch.Tensor | None = None
    outlier_centroids: torch.Tensor | None = None
    outlier_idx: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check every tensor's shape against the config; raise InvalidValueError naming it."""
        c = self.config
        g, r, cs = c.group_num, c.num_vectors, c.group_size
        want: dict[str, tuple[int, ...] | None] = {
            "centroids": (g, c.num_centroids, c.vector_len),
            "main_idx": (g, r, cs),
            "weight_scale": (c.q_cols,),
            "weight_bias": (c.q_cols,),
            "res_centroids": (g, c.num_res_centroids, c.vector_len)
            if c.num_res_centroids
            else None,
            "res_idx": (g, r, cs) if c.num_res_centroids else None,
            "outlier_centroids": (1, c.outlier_num_centroids, c.outlier_vector_len)
            if c.outlier_size
            else None,
            "outlier_idx": (1, c.num_outlier_vectors, c.outlier_size) if c.outlier_size else None,
            "perm": (c.q_cols,) if c.enable_perm else None,
            "bias": (c.out_features,) if c.bias else None,
        }
        for name, shape in want.items():
            t = getattr(self, name)
            if shape is None:
                if t is not None:
                    raise InvalidValueError(f"{name} is set but the config does not use it")
            elif t is None:
                raise InvalidValueError(f"{name} is missing (expected shape {list(shape)})")
            elif tuple(t.shape) != shape:
                raise InvalidValueError(f"{name} has shape {list(t.shape)}, expected {list(shape)}")

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Reference dequantization (FORMAT.md) to a dense weight ``[O, I]``.

        Computed in fp32 and cast to ``dtype`` (default: the centroids' dtype).
        """
        c = self.config
        o = c.q_rows
        dtype = dtype or self.centroids.dtype
        cb = self.centroids.float()
        # gather per group: [G, R, C, v]
        vecs = torch.stack([cb[gi][self.main_idx[gi].long()] for gi in range(c.group_num)])
        if self.res_centroids is not None and self.res_idx is not None:
            rc = self.res_centroids.float()
            vecs = vecs + torch.stack(
                [rc[gi][self.res_idx[gi].long()] for gi in range(c.group_num)]
            )
        # [G, R, C, v] -> [R*v, G*C] (rows r = vector*v + lane), padding rows dropped
        main = vecs.permute(0, 2, 1, 3).reshape(c.group_num * c.group_size, -1).t()[:o]
        cols = [main]
        if c.outlier_size:
            assert self.outlier_centroids is not None and self.outlier_idx is not None
            ovec = self.outlier_centroids.float()[0][self.outlier_idx[0].long()]  # [R0, osz, v0]
            cols.insert(0, ovec.permute(1, 0, 2).reshape(c.outlier_size, -1).t()[:o])
        w = torch.cat(cols, dim=1)  # [O, I] in permuted column order
        if self.perm is not None:
            w = w[:, invert_perm(self.perm)]
        # normalization covers every column, outliers included (as the reference applies it)
        w = w * self.weight_scale.float()[None, :] + self.weight_bias.float()[None, :]
        if c.vector_quant_dim == "in":
            w = w.t()
        return w.to(dtype).contiguous()


def invert_perm(perm: torch.Tensor) -> torch.Tensor:
    """``invperm[perm[p]] = p`` for an int permutation ``[I]``."""
    perm = perm.long()
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv
