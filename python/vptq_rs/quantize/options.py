"""Every quantizer knob in one validated dataclass (checked before any expensive work)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from vptq_rs.errors import InvalidValueError

METHODS = ("vptq", "rtn", "gptq")
# distance precision of the CUDA k-means (vptq_rs.cuda_ext.kmeans); the CPU path is fp32
KMEANS_PRECISIONS = ("fp32", "tf32", "tf32x1", "fp16x1")
STORE_DTYPES = ("auto", "float16", "bfloat16")


def _pow2(k: int) -> bool:
    return k >= 2 and not k & (k - 1)


@dataclass(frozen=True)
class QuantOptions:
    """Layer quantizer settings (names follow the reference's flags).

    ``vector_lens``/``num_centroids``/``num_res_centroids`` are the reference's pairs:
    element 0 the outlier codebook (-1 = off; ``num_centroids[0] = -1`` with ``npercent > 0``
    keeps outliers in float), element 1 the main codebook.
    """

    method: str = "vptq"
    vector_lens: tuple[int, int] = (-1, 8)
    num_centroids: tuple[int, int] = (-1, 256)
    num_res_centroids: tuple[int, int] = (-1, -1)
    npercent: float = 0.0
    group_num: int = 1
    kiter: int = 100
    ktol: float = 1e-5
    kseed: int = 0
    kmeans_precision: str = "fp32"
    blocksize: int = 128
    percdamp: float = 0.01
    enable_perm: bool = False
    enable_norm: bool = False
    vector_quant_dim: str = "out"
    bitwidth: int = 16
    refine_centroids: bool = False
    store_dtype: str = "auto"
    # scalar baselines (--method rtn|gptq)
    wbits: int = 4
    groupsize: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector_lens", tuple(int(x) for x in self.vector_lens))
        object.__setattr__(self, "num_centroids", tuple(int(x) for x in self.num_centroids))
        object.__setattr__(self, "num_res_centroids", tuple(int(x) for x in self.num_res_centroids))
        self.validate()

    # -- derived
    @property
    def v(self) -> int:
        return self.vector_lens[1]

    @property
    def k(self) -> int:
        return self.num_centroids[1]

    @property
    def kres(self) -> int:
        return max(self.num_res_centroids[1], 0)

    @property
    def outliers_float(self) -> bool:
        """Outlier columns kept exactly (each outlier vector its own centroid)."""
        return self.npercent > 0 and self.num_centroids[0] == -1

    @property
    def outlier_v(self) -> int:
        return self.vector_lens[0] if self.vector_lens[0] > 0 else self.v

    def validate(self) -> None:
        """Raise InvalidValueError naming the first impossible value."""

        def bad(msg: str) -> None:
            raise InvalidValueError(msg)

        if self.method not in METHODS:
            bad(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("vector_lens", "num_centroids", "num_res_centroids"):
            if len(getattr(self, name)) != 2:
                bad(f"--{name} takes two values (outlier, main), got {getattr(self, name)}")
        if self.method != "vptq":
            if not 1 <= self.wbits <= 16:
                bad(f"--wbits must be in [1, 16], got {self.wbits}")
            if self.groupsize != -1 and self.groupsize < 1:
                bad(f"--groupsize must be -1 or positive, got {self.groupsize}")
        if self.v < 1:
            bad(f"--vector_lens main length must be >= 1, got {self.v}")
        if self.v > 64:
            bad(f"--vector_lens main length {self.v} is unreasonably large (max 64)")
        if not _pow2(self.k) or self.k > 65536:
            bad(f"--num_centroids main must be a power of two in [2, 65536], got {self.k}")
        kr = self.num_res_centroids[1]
        if kr not in (-1, 0) and (not _pow2(kr) or kr > 65536):
            bad(f"--num_res_centroids main must be -1 or a power of two <= 65536, got {kr}")
        if self.num_res_centroids[0] not in (-1, 0):
            bad("--num_res_centroids outlier entry must be -1 (outliers have no residual)")
        if int(math.log2(self.k)) + (int(math.log2(self.kres)) if self.kres else 0) > 32:
            bad("main + residual index bits exceed 32")
        if not 0 <= self.npercent < 100:
            bad(f"--npercent must be in [0, 100), got {self.npercent}")
        if self.npercent > 0:
            k0 = self.num_centroids[0]
            if k0 != -1 and (k0 < 2 or k0 > 65536):
                bad(f"--num_centroids outlier must be -1 (keep float) or in [2, 65536], got {k0}")
            if self.vector_lens[0] not in (-1,) and self.vector_lens[0] < 1:
                bad(f"--vector_lens outlier length must be -1 or >= 1, got {self.vector_lens[0]}")
            if not self.enable_perm:
                bad("--npercent needs --enable_perm (outliers are the first permuted columns)")
        if self.group_num < 1:
            bad(f"--group_num must be >= 1, got {self.group_num}")
        if self.kiter < 1:
            bad(f"--kiter must be >= 1, got {self.kiter}")
        if not self.ktol >= 0:
            bad(f"--ktol must be >= 0, got {self.ktol}")
        if self.kseed < 0:
            bad(f"--kseed must be >= 0, got {self.kseed}")
        if self.kmeans_precision not in KMEANS_PRECISIONS:
            bad(
                f"--kmeans_precision must be one of {', '.join(KMEANS_PRECISIONS)}, "
                f"got {self.kmeans_precision!r}"
            )
        if self.blocksize < 1:
            bad(f"--blocksize must be >= 1, got {self.blocksize}")
        if not 0 <= self.percdamp <= 10:
            bad(f"--percdamp must be in [0, 10], got {self.percdamp}")
        if self.vector_quant_dim not in ("in", "out"):
            bad(f"--vector_quant_dim must be 'in' or 'out', got {self.vector_quant_dim!r}")
        if self.bitwidth not in (8, 16):
            bad(f"--bitwidth must be 8 (int8 codebooks) or 16 (off), got {self.bitwidth}")
        if self.store_dtype not in STORE_DTYPES:
            bad(f"--dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")

    def check_layer(self, out_features: int, in_features: int, name: str = "layer") -> None:
        """Check the options fit a Linear ``[O, I]`` (group split, outlier count)."""
        from vptq_rs.quantize.outliers import outlier_columns

        if self.method != "vptq":
            return
        rows, cols = (
            (out_features, in_features)
            if self.vector_quant_dim == "out"
            else (in_features, out_features)
        )
        osz = outlier_columns(self.npercent, cols, self.group_num)
        if osz >= cols:
            raise InvalidValueError(f"{name}: --npercent {self.npercent} leaves no columns")
        if (cols - osz) % self.group_num:
            raise InvalidValueError(
                f"{name}: --group_num {self.group_num} does not divide {cols - osz} columns"
            )
        if self.outliers_float:
            r0 = -(-rows // self.outlier_v)
            if r0 * osz > 65536:
                raise InvalidValueError(
                    f"{name}: {r0 * osz} float-kept outlier vectors exceed 65536 "
                    "(outlier indices are uint16): lower --npercent or raise the outlier length"
                )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("vector_lens", "num_centroids", "num_res_centroids"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QuantOptions:
        names = {f.name for f in fields(cls)}
        return cls(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        )
