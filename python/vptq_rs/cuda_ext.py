"""The CUDA kernels of vptq-rs: build on first use, register as ``torch.ops.vptq_rs``, wrap.

The sources in the package's ``_cuda/`` folder are compiled with
:func:`torch.utils.cpp_extension.load` the first time :func:`load` is called on a machine
with a CUDA device and a CUDA toolchain, and cached under ``~/.cache/vptq_rs/torch_ext``
(``$VPTQ_RS_CACHE_DIR`` overrides; the folder name hashes the sources and the torch/CUDA
versions, so a stale build is never reused). Build ahead of time with
``python -m vptq_rs.cuda_ext``. ``$VPTQ_RS_CUDA_SRC`` points at the sources when the package
is installed without them; ``$VPTQ_RS_NO_CUDA_EXT=1`` disables the extension.

:func:`load` never raises: without CUDA or a toolchain it logs the reason once and returns
None, and callers (``vptq_rs.ops``) use the native PyTorch path. When it succeeds it returns
this module, whose :func:`dequant`, :func:`gemv`, :func:`gemv_sorted`, :func:`gemv_tiled`,
:func:`gemm` and :func:`kmeans` take the packed tensors of one layer as FORMAT.md stores them.

The ops (all CUDA-only, with fake implementations so ``torch.compile`` and CUDA graphs can
trace them):

- ``dequant(indices, centroids, res_centroids?, outlier_indices?, outlier_centroids?, perm?,
  weight_scale?, weight_bias?, rows, cols, vector_len, index_bits, res_bits, group_num,
  outlier_size, outlier_vector_len, out_dtype) -> [rows, cols]``, bit-exact with
  :meth:`vptq_rs.layout.QuantizedLayer.dequantize`.
- ``gemv(x [T, cols], ..., bias?, ..., mode) -> [T, rows]`` for T <= 8 tokens; mode 0 picks
  the kernel, 1 gathers codebook rows from shared memory (when they fit), 2 through L1/L2,
  3 sums each row's activations per code in a shared-memory histogram, then dots it with the
  codebooks (1 token, one group, codebooks of at most 2^13 entries; see ``gemv_hist.cuh``).
- ``gemv_sorted(x [1, cols], entries, chunk_base, chunk_groups, indices, ..., bias?, ...)
  -> [1, rows]``: one token from the code-sorted layout of :mod:`vptq_rs.sorted_layout`
  (see ``gemv_sorted.cuh``); :func:`gemv_sorted` wraps it.
- ``gemv_tiled(x [1, cols], entries, tile_start, tile_codes, indices, ..., bias?, ...,
  form=0) -> [1, rows]``: one token from the code-tiled layout of
  :mod:`vptq_rs.tiled_layout`, for codebooks too large for shared memory; form 0 is the
  scalar layout (``gemv_tiled.cuh``), 1 the tensor-core one (v = 8, ``gemv_tiled_mma.cuh``),
  2 the scalar layout on thread-block clusters (sm_90+, ``gemv_tiled_cluster.cuh``).
  :func:`gemv_tiled` wraps it.
- ``kmeans_assign(x, centroids, mode, design=0) -> (labels int32 [n], sq_dist float32 [n])``;
  mode 0 fp32 CUDA cores, 1 tensor cores (3xTF32: hi/lo split, about fp32 accuracy), 2 one
  TF32 product, 3 one fp16 product (power-of-two scaled operands, tiled design only);
  design 0 "merged", 1 "tiled" (:data:`KMEANS_DESIGNS`; the tiled tensor-core modes narrow
  each point to 16 candidates by their tensor-core score and return the candidate nearest
  in exact fp32 distance).
- ``kmeans_update(x, weights?, labels, k) -> (sums float64 [k, d], weight_sums float64 [k])``.
- ``kmeans_seed(x, weights?, k, seed) -> centroids [k, d]``: weighted k-means++.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vptq_rs.errors import InvalidValueError, VptqError

logger = logging.getLogger(__name__)

SOURCES = (
    "ops.cpp",
    "dequant.cu",
    "gemv_f16.cu",
    "gemv_f16_l2.cu",
    "gemv_bf16.cu",
    "gemv_bf16_l2.cu",
    "gemv_hist_f16.cu",
    "gemv_hist_bf16.cu",
    "gemv_sorted_f16.cu",
    "gemv_sorted_bf16.cu",
    "gemv_tiled_f16.cu",
    "gemv_tiled_bf16.cu",
    "gemv_tiled_cluster_f16.cu",
    "gemv_tiled_cluster_bf16.cu",
    "kmeans.cu",
)
HEADERS = (
    "common.cuh",
    "vptq_kernels.h",
    "gemv.cuh",
    "gemv_hist.cuh",
    "gemv_sorted.cuh",
    "gemv_tiled.cuh",
    "gemv_tiled_mma.cuh",
    "gemv_tiled_cluster.cuh",
    "gemv_launch.cuh",
    "kmeans_common.cuh",
    "kmeans_merged.cuh",
    "kmeans_tiled.cuh",
)
MAX_GEMV_TOKENS = 8
KMEANS_MODES = {"fp32": 0, "tf32": 1, "tf32x1": 2, "fp16x1": 3}
# Assignment kernel designs (kmeans_merged.cuh, kmeans_tiled.cuh) and the default per
# precision. Tensor-core modes use "tiled": on an H200 (benchmarks/results/gpu-kmeans-h200.json)
# its 1xTF32 assignment took 50 ms per iteration against merged's 195 ms at N = 7.3M,
# K = 65,536, d = 8, with the same inertia. fp32 keeps "merged", the design it was timed with:
# their fp32 hot loops are the same length (`make sass`) and tiled fp32 has not been timed.
KMEANS_DESIGNS = {"merged": 0, "tiled": 1}
KMEANS_DESIGN = {"fp32": "merged", "tf32": "tiled", "tf32x1": "tiled", "fp16x1": "tiled"}
# precisions with one design only
KMEANS_TILED_ONLY = frozenset({"fp16x1"})

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "result": module or None, "reason": why not


def source_dir() -> Path | None:
    """The folder holding the kernel sources, or None when none is found."""
    env = os.environ.get("VPTQ_RS_CUDA_SRC")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates.append(here / "_cuda")
    for c in candidates:
        if all((c / f).is_file() for f in SOURCES):
            return c
    return None


def build_name(src: Path) -> str:
    """Extension name: a hash of the sources, torch/CUDA versions and target archs."""
    h = hashlib.sha256()
    for f in (*SOURCES, *HEADERS):
        p = src / f
        h.update(f.encode())
        h.update(p.read_bytes() if p.is_file() else b"")
    h.update(torch.__version__.encode())
    h.update(str(torch.version.cuda).encode())
    h.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    return f"vptq_rs_cuda_{h.hexdigest()[:12]}"


def cache_dir() -> Path:
    base = os.environ.get("VPTQ_RS_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "vptq_rs"
    return root / "torch_ext"


def toolchain_problem() -> str | None:
    """Why the extension cannot be built here (None when it can)."""
    if os.environ.get("VPTQ_RS_NO_CUDA_EXT", "") not in ("", "0"):
        return "disabled by VPTQ_RS_NO_CUDA_EXT"
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME to a folder with bin/nvcc)"
    if not (Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc").exists():
        return f"no nvcc under CUDA_HOME={cpp_extension.CUDA_HOME}"
    if source_dir() is None:
        return "kernel sources not found (set VPTQ_RS_CUDA_SRC to a copy of vptq_rs/_cuda/)"
    return None


def build(verbose: bool = False) -> str:
    """Compile (or reuse the cached build of) the extension and load its ops; returns its path.

    Raises VptqError when the toolchain is missing or the build fails. Works without a GPU
    (the ops then exist with their fake implementations only).
    """
    problem = toolchain_problem()
    if problem:
        raise VptqError(f"cannot build the CUDA extension: {problem}")
    from torch.utils import cpp_extension

    src = source_dir()
    assert src is not None
    name = build_name(src)
    out = cache_dir() / name
    out.mkdir(parents=True, exist_ok=True)
    if not hasattr(torch.ops.vptq_rs, "dequant"):
        try:
            cpp_extension.load(
                name=name,
                sources=[str(src / f) for f in SOURCES],
                extra_include_paths=[str(src)],
                extra_cflags=["-O3"],
                # no fast-math: dequant must round exactly like the PyTorch reference
                extra_cuda_cflags=["-O3", "-lineinfo"],
                build_directory=str(out),
                is_python_module=False,
                verbose=verbose,
            )
        except Exception as exc:  # compiler errors arrive as RuntimeError/CalledProcessError
            raise VptqError(f"building the CUDA extension failed: {exc}") from exc
        _register_fakes()
    return str(out)


def load() -> Any | None:
    """This module with its ops loaded, or None (reason logged once) without CUDA."""
    with _lock:
        if "result" in _state:
            return _state["result"]
        result: Any | None = None
        reason = None
        reason = "no CUDA device" if not torch.cuda.is_available() else toolchain_problem()
        if reason is None:
            try:
                build()
                result = sys.modules[__name__]
            except VptqError as exc:
                reason = str(exc)
        if reason is not None:
            logger.info("vptq_rs CUDA kernels unavailable: %s", reason)
        _state["result"], _state["reason"] = result, reason
        return result


def available() -> bool:
    """True when the CUDA ops are built and a device is present."""
    return load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`load` returned None (None when it did not, or has not run)."""
    return _state.get("reason")


def _register_fakes() -> None:
    """Shape functions of every op, so torch.compile and CUDA graphs can trace them."""
    lib = "vptq_rs::"
    if getattr(_register_fakes, "done", False):
        return

    @torch.library.register_fake(lib + "dequant")
    def _dequant_fake(
        indices,
        centroids,
        res_centroids,
        outlier_indices,
        outlier_centroids,
        perm,
        weight_scale,
        weight_bias,
        rows,
        cols,
        vector_len,
        index_bits,
        res_bits,
        group_num,
        outlier_size,
        outlier_vector_len,
        out_dtype,
    ):
        return indices.new_empty((rows, cols), dtype=out_dtype)

    @torch.library.register_fake(lib + "gemv")
    def _gemv_fake(
        x,
        indices,
        centroids,
        res_centroids,
        outlier_indices,
        outlier_centroids,
        perm,
        weight_scale,
        weight_bias,
        bias,
        rows,
        cols,
        vector_len,
        index_bits,
        res_bits,
        group_num,
        outlier_size,
        outlier_vector_len,
        mode,
    ):
        return x.new_empty((x.shape[0], rows))

    @torch.library.register_fake(lib + "gemv_sorted")
    def _gemv_sorted_fake(
        x,
        entries,
        chunk_base,
        chunk_groups,
        indices,
        centroids,
        res_centroids,
        outlier_indices,
        outlier_centroids,
        perm,
        weight_scale,
        weight_bias,
        bias,
        rows,
        cols,
        vector_len,
        index_bits,
        res_bits,
        group_num,
        outlier_size,
        outlier_vector_len,
    ):
        return x.new_empty((1, rows))

    @torch.library.register_fake(lib + "gemv_tiled")
    def _gemv_tiled_fake(
        x,
        entries,
        tile_start,
        tile_codes,
        indices,
        centroids,
        res_centroids,
        outlier_indices,
        outlier_centroids,
        perm,
        weight_scale,
        weight_bias,
        bias,
        rows,
        cols,
        vector_len,
        index_bits,
        res_bits,
        group_num,
        outlier_size,
        outlier_vector_len,
        form=0,
    ):
        return x.new_empty((1, rows))

    @torch.library.register_fake(lib + "kmeans_assign")
    def _assign_fake(x, centroids, mode, design=0):
        n = x.shape[0]
        return x.new_empty((n,), dtype=torch.int32), x.new_empty((n,))

    @torch.library.register_fake(lib + "kmeans_update")
    def _update_fake(x, weights, labels, k):
        return (
            x.new_empty((k, x.shape[1]), dtype=torch.float64),
            x.new_empty((k,), dtype=torch.float64),
        )

    @torch.library.register_fake(lib + "kmeans_seed")
    def _seed_fake(x, weights, k, seed):
        return x.new_empty((k, x.shape[1]))

    _register_fakes.done = True  # type: ignore[attr-defined]


# ---- wrappers over the packed tensors of one layer ------------------------------------------


def _check_layer(cfg: Any, t: Any) -> None:
    """Name the offending tensor before the op sees it (device, dtype, shape)."""
    dev = t.indices.device
    if dev.type != "cuda":
        raise InvalidValueError(f"indices must be on CUDA, got {dev}")
    if t.indices.dtype != torch.int32:
        raise InvalidValueError(f"indices must be int32, got {t.indices.dtype}")
    words = -(-cfg.group_size * (cfg.index_bits + cfg.res_bits) // 32)
    want = (cfg.group_num, cfg.num_vectors, words)
    if tuple(t.indices.shape) != want:
        raise InvalidValueError(
            f"indices must have shape {list(want)}, got {list(t.indices.shape)}"
        )
    n = cfg.group_num * cfg.num_centroids * cfg.vector_len
    if t.centroids.numel() != n:
        raise InvalidValueError(
            f"centroids must hold G*K*v = {n} values, got {t.centroids.numel()}"
        )
    if t.centroids.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise InvalidValueError(f"centroids must be fp16, bf16 or fp32, got {t.centroids.dtype}")
    if cfg.res_bits and t.res_centroids is None:
        raise InvalidValueError("res_centroids is required by the config")
    if cfg.outlier_size and (t.outlier_indices is None or t.outlier_centroids is None):
        raise InvalidValueError("outlier_indices and outlier_centroids are required by the config")
    for name in PACKED_FIELDS:
        x = getattr(t, name)
        if x is not None and x.device != dev:
            raise InvalidValueError(f"{name} must be on {dev}, got {x.device}")


PACKED_FIELDS = (
    "centroids",
    "res_centroids",
    "outlier_indices",
    "outlier_centroids",
    "perm",
    "weight_scale",
    "weight_bias",
)


def _layer_args(cfg: Any, t: Any) -> tuple[list[Any], list[int]]:
    """Tensor and int arguments shared by dequant and gemv, from a LayerConfig + packed tensors."""
    _check_layer(cfg, t)
    res = t.res_centroids if cfg.res_bits else None
    osz = cfg.outlier_size

    def c(x: torch.Tensor | None) -> torch.Tensor | None:
        return x.contiguous() if x is not None else None

    tensors = [
        c(t.indices),
        c(t.centroids),
        c(res),
        c(t.outlier_indices) if osz else None,
        c(t.outlier_centroids) if osz else None,
        c(t.perm),
        c(t.weight_scale),
        c(t.weight_bias),
    ]
    ints = [
        cfg.q_rows,
        cfg.q_cols,
        cfg.vector_len,
        cfg.index_bits,
        cfg.res_bits,
        cfg.group_num,
        osz,
        cfg.outlier_vector_len if osz else 1,
    ]
    return tensors, ints


def dequant(cfg: Any, t: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense weight ``[O, I]`` of a packed layer, bit-exact with ``QuantizedLayer.dequantize``.

    cfg: :class:`vptq_rs.layout.LayerConfig`; t: packed tensors (``vptq_rs.ops.PackedTensors``:
    int32 indices ``[G, R, words]``, codebooks ``[G, K*v]`` fp16/bf16/fp32, int16 outlier
    indices ``[1, R0, osz]``, perm ``[I]`` int16/int32/int64, scale/bias ``[I]`` or None),
    all on one CUDA device. For ``vector_quant_dim == "in"`` the result is a transposed view.
    """
    dtype = dtype or t.centroids.dtype
    tensors, ints = _layer_args(cfg, t)
    w = torch.ops.vptq_rs.dequant(*tensors, *ints, dtype)
    return w.t() if cfg.vector_quant_dim == "in" else w


def fused_gemv_applies(x: torch.Tensor, cfg: Any, codebook_dtype: torch.dtype) -> bool:
    """Whether the fused GEMV covers ``x [..., I]`` on this layer: 1 to 8 tokens, vectors along
    the output, x in the codebooks' fp16/bf16 dtype, and no gradient wanted (the op has no
    backward). Everything else goes through :func:`dequant` + ``F.linear``."""
    tokens = x.numel() // max(x.shape[-1], 1)
    return (
        0 < tokens <= MAX_GEMV_TOKENS
        and cfg.vector_quant_dim == "out"
        and x.dtype == codebook_dtype
        and x.dtype != torch.float32
        and not (x.requires_grad and torch.is_grad_enabled())
    )


# the histogram GEMV (mode 3) takes codebooks of at most 2^13 entries (gemv_hist.cuh)
HIST_MAX_CENTROIDS = 1 << 13


def gemv_hist_applies(cfg: Any, tokens: int) -> bool:
    """Whether ``gemv(..., mode=3)`` (the histogram kernel) takes this layer: 1 token, one
    group, main and residual codebooks of at most 8192 entries, and a fused-GEMV layer
    (``vector_quant_dim == "out"``). Mode 0 uses it when, in addition, a row has at least half
    as many columns as the histogram has bins and the layer has at least one vector row per SM
    (``VPTQ_RS_GEMV_HIST=0`` turns that off)."""
    return (
        tokens == 1
        and cfg.vector_quant_dim == "out"
        and cfg.group_num == 1
        and cfg.num_centroids <= HIST_MAX_CENTROIDS
        and cfg.num_res_centroids <= HIST_MAX_CENTROIDS
    )


def gemv(
    x: torch.Tensor, cfg: Any, t: Any, bias: torch.Tensor | None = None, mode: int = 0
) -> torch.Tensor:
    """``x @ Wᵀ + bias`` for at most 8 tokens with the fused kernel.

    x: ``[..., I]`` in the codebooks' dtype (fp16/bf16); bias ``[O]`` or None. Returns
    ``[..., O]``. Layers the kernel does not cover (``vector_quant_dim == "in"``, fp32
    codebooks, a dtype mismatch) and inputs that need a gradient (the op has no backward, and
    LoRA through a frozen layer needs ``grad @ W``) go through :func:`dequant` + ``F.linear``.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if not fused_gemv_applies(x, cfg, t.centroids.dtype):
        w = dequant(cfg, t, x.dtype)
        return F.linear(x, w, bias.to(x.dtype) if bias is not None else None)
    tensors, ints = _layer_args(cfg, t)
    if x.device != t.indices.device:
        raise InvalidValueError(f"x must be on {t.indices.device}, got {x.device}")
    b = bias.to(x.dtype).contiguous() if bias is not None else None
    y = torch.ops.vptq_rs.gemv(x2.contiguous(), *tensors, b, *ints, mode)
    return y.reshape(*lead, cfg.out_features)


def _one_token(
    name: str, why: str | None, x: torch.Tensor, cfg: Any, t: Any, bias: torch.Tensor | None
) -> tuple[list[Any], list[int], torch.Tensor | None]:
    """The checks and arguments the layout-reading GEMVs share: the layer's op tensors and
    ints, and the bias in x's dtype. ``why``: the layout's ``problem(cfg)``."""
    if why is not None:
        raise InvalidValueError(f"the {name} GEMV does not cover this layer: {why}")
    if x.numel() != x.shape[-1]:
        raise InvalidValueError(f"gemv_{name} takes one token, got x of shape {list(x.shape)}")
    if x.dtype != t.centroids.dtype:
        raise InvalidValueError(
            f"x must have the codebooks' dtype {t.centroids.dtype}, got {x.dtype}"
        )
    tensors, ints = _layer_args(cfg, t)
    if x.device != t.indices.device:
        raise InvalidValueError(f"x must be on {t.indices.device}, got {x.device}")
    return tensors, ints, bias.to(x.dtype).contiguous() if bias is not None else None


def gemv_sorted(
    x: torch.Tensor, cfg: Any, t: Any, layout: Any, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ Wᵀ + bias`` for one token from the code-sorted layout
    (:mod:`vptq_rs.sorted_layout`, built from ``t.indices`` by ``sorted_layout.build``).

    x: ``[..., I]`` holding one token, in the codebooks' fp16/bf16 dtype; returns ``[..., O]``.
    Raises where the layout does not cover the layer (``sorted_layout.problem``) or its
    codebook does not fit the kernel's shared memory.
    """
    from vptq_rs import sorted_layout

    tensors, ints, b = _one_token("sorted", sorted_layout.problem(cfg), x, cfg, t, bias)
    lay = (layout.entries, layout.chunk_base, layout.chunk_groups)
    y = torch.ops.vptq_rs.gemv_sorted(x.reshape(1, -1).contiguous(), *lay, *tensors, b, *ints)
    return y.reshape(*x.shape[:-1], cfg.out_features)


def gemv_tiled(
    x: torch.Tensor, cfg: Any, t: Any, layout: Any, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ Wᵀ + bias`` for one token from the code-tiled layout
    (:mod:`vptq_rs.tiled_layout`, built from ``t.indices`` by ``tiled_layout.build``), for
    codebooks wider than a row.

    x: ``[..., I]`` holding one token, in the codebooks' fp16/bf16 dtype; returns ``[..., O]``.
    Raises where the layout does not cover the layer (``tiled_layout.problem``) or the
    kernel's shared memory does not fit.
    """
    from vptq_rs import tiled_layout

    tensors, ints, b = _one_token("tiled", tiled_layout.problem(cfg), x, cfg, t, bias)
    lay = (layout.entries, layout.tile_start, layout.tile_codes)
    y = torch.ops.vptq_rs.gemv_tiled(
        x.reshape(1, -1).contiguous(), *lay, *tensors, b, *ints, layout.form
    )
    return y.reshape(*x.shape[:-1], cfg.out_features)


def gemm(x: torch.Tensor, cfg: Any, t: Any, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ Wᵀ + bias``: the fused GEMV up to 8 tokens, else dequantize + cuBLAS."""
    if x.numel() // max(x.shape[-1], 1) <= MAX_GEMV_TOKENS:
        return gemv(x, cfg, t, bias)
    w = dequant(cfg, t, x.dtype)
    return F.linear(x, w, bias.to(x.dtype) if bias is not None else None)


# ---- k-means --------------------------------------------------------------------------------


def _as_tensor(a: Any, name: str, device: torch.device | None) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise InvalidValueError(f"{name} must be a torch tensor or numpy array")
    return a.to(device=device, dtype=torch.float32).contiguous()


def kmeans(
    x: Any,
    k: int,
    weights: Any = None,
    iters: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    *,
    init: Any = None,
    precision: str = "fp32",
    design: str | None = None,
    return_info: bool = False,
) -> Any:
    """Weighted k-means on the GPU; the CPU core (``vptq_rs.kmeans``) when CUDA is absent.

    x: float ``[n, d]`` (1 <= d <= 16), tensor or numpy; weights: float ``[n]`` or None;
    init: float ``[k, d]`` initial centroids (default: weighted k-means++ on a seeded
    subsample of min(n, 4k) points, computed on the GPU). Same semantics as the core: Lloyd
    iterations until the relative inertia change is <= tol or ``iters`` updates, empty
    clusters re-seeded at the points with the largest weighted error (ties by index).
    precision: "fp32" (CUDA cores), "tf32" (tensor cores, 3xTF32 split products, about fp32),
    "tf32x1" (one TF32 product; scores carry ~1e-3 relative error, so near-ties may go to a
    slightly farther centroid) or "fp16x1" (one fp16 product on operands scaled by powers of
    two: the same 11-bit significand as tf32x1, about 10% faster on an H100; tiled design
    only); all score ``|c|^2 - 2 x.c`` in fp32 (labels may differ from exact distances on
    near-ties). design: the assignment kernel,
    :data:`KMEANS_DESIGNS` (default: :data:`KMEANS_DESIGN` of the precision).
    Returns ``(centroids float32 [k, d], labels int32 [n])`` on the
    compute device, plus ``{"inertia", "iterations"}`` when return_info.
    """
    if precision not in KMEANS_MODES:
        raise InvalidValueError(
            f"precision must be one of {sorted(KMEANS_MODES)}, got {precision!r}"
        )
    design = KMEANS_DESIGN[precision] if design is None else design
    if design not in KMEANS_DESIGNS:
        raise InvalidValueError(f"design must be one of {sorted(KMEANS_DESIGNS)}, got {design!r}")
    if precision in KMEANS_TILED_ONLY and design != "tiled":
        raise InvalidValueError(f"precision {precision!r} needs design 'tiled', got {design!r}")
    if int(k) < 1:
        raise InvalidValueError(f"k must be >= 1, got {k}")
    if iters < 0 or not tol >= 0:
        raise InvalidValueError(f"iters and tol must be >= 0, got {iters}, {tol}")
    ext = load()
    dev: torch.device | None = None
    if ext is not None:
        dev = x.device if isinstance(x, torch.Tensor) and x.is_cuda else torch.device("cuda")
    xt = _as_tensor(x, "x", dev)
    if xt.dim() != 2 or xt.shape[0] < 1 or not 1 <= xt.shape[1] <= 16:
        raise InvalidValueError(
            f"x must have shape [n, d] with n >= 1, 1 <= d <= 16, got {list(xt.shape)}"
        )
    n, d = xt.shape
    wt = _as_tensor(weights, "weights", dev) if weights is not None else None
    if wt is not None:
        if wt.shape != (n,):
            raise InvalidValueError(f"weights must have shape [{n}], got {list(wt.shape)}")
        if not bool(torch.isfinite(wt).all()) or bool((wt < 0).any()):
            raise InvalidValueError("weights must be finite and non-negative")
        if not bool((wt > 0).any()):
            raise InvalidValueError("weights are all zero")
    if not bool(torch.isfinite(xt).all()):
        raise InvalidValueError("x has NaN or infinite values")

    if ext is None:
        logger.info("vptq_rs: k-means on the CPU core (%s)", unavailable_reason())
        c, lab = __import__("vptq_rs").kmeans(
            xt.numpy(),
            int(k),
            weights=wt.numpy() if wt is not None else None,
            iters=iters,
            tol=tol,
            seed=seed,
        )
        out = (
            torch.from_numpy(np.asarray(c, np.float32)),
            torch.from_numpy(np.asarray(lab, np.int32)),
        )
        return (*out, {"inertia": float("nan"), "iterations": -1}) if return_info else out

    ops = torch.ops.vptq_rs
    k = int(k)
    if k >= n and init is None:
        cent = torch.cat([xt, xt[-1:].expand(k - n, d)]) if k > n else xt.clone()
        labels = torch.arange(n, device=dev, dtype=torch.int32)
        info = {"inertia": 0.0, "iterations": 0}
        return (cent, labels, info) if return_info else (cent, labels)
    # centering keeps |c|^2 - 2 x.c well conditioned (matters for the TF32 mode)
    mu = xt.mean(0)
    xc = (xt - mu).contiguous()
    if init is not None:
        cent = _as_tensor(init, "init", dev)
        if cent.shape != (k, d):
            raise InvalidValueError(f"init must have shape [{k}, {d}], got {list(cent.shape)}")
        cent = (cent - mu).contiguous()
    else:
        cent = seed_centroids(xc, wt, k, seed)
    mode = KMEANS_MODES[precision]
    prev = float("inf")
    it = 0
    while True:
        labels, dist = ops.kmeans_assign(xc, cent, mode, KMEANS_DESIGNS[design])
        wd = dist.double() * wt.double() if wt is not None else dist.double()
        inertia = float(wd.sum())
        converged = prev != float("inf") and abs(prev - inertia) <= tol * max(prev, 1e-30)
        if converged or it == iters:
            break
        prev = inertia
        sums, wsum = ops.kmeans_update(xc, wt, labels, k)
        filled = wsum > 0
        cent = torch.where(filled[:, None], (sums / wsum.clamp_min(1e-300)[:, None]).float(), cent)
        empty = (~filled).nonzero().flatten()
        if empty.numel():
            order = torch.sort(wd, descending=True, stable=True).indices
            order = order[wd[order] > 0][: empty.numel()]
            cent[empty[: order.numel()]] = xc[order]
        cent = cent.contiguous()
        it += 1
    cent = (cent + mu).contiguous()
    if return_info:
        return cent, labels, {"inertia": inertia, "iterations": it}
    return cent, labels


# Exact k-means++ draws one centroid per kernel launch; above this many centroids draws come
# in batches (exact seeding was 0.87 s of a 1.3 s layer at k = 65,536 on an H100,
# benchmarks/results/gpu-tune-quantize.json).
KPP_EXACT_MAX = 4096
KPP_ROUNDS = 1024


def seed_centroids(
    x: torch.Tensor,
    weights: torch.Tensor | None,
    k: int,
    seed: int,
    batched: bool | None = None,
) -> torch.Tensor:
    """Weighted k-means++ on the GPU over a seeded uniform subsample of min(n, 4k) points.

    x: float32 ``[n, d]`` on CUDA; weights float32 ``[n]`` or None. Deterministic per seed on
    a given device (the subsample comes from ``torch.randperm`` with a seeded generator, the
    draws from a counter-based hash of (seed, round)); the stream differs from the CPU core's.
    batched (default: ``k > KPP_EXACT_MAX``): draw ``ceil(k / KPP_ROUNDS)`` centroids per
    round instead of one (see :func:`kpp_batched`).
    """
    n = x.shape[0]
    m = min(n, max(k, 4 * k))
    xs, ws = x, weights
    if m < n:
        gen = torch.Generator(device=x.device).manual_seed(int(seed))
        idx = torch.randperm(n, generator=gen, device=x.device)[:m].sort().values
        if weights is None or bool((weights[idx] > 0).any()):
            xs = x[idx].contiguous()
            ws = weights[idx].contiguous() if weights is not None else None
    if batched is None:
        batched = k > KPP_EXACT_MAX
    if batched:
        return kpp_batched(xs, ws, k, seed, _nearest_sqdist)
    return torch.ops.vptq_rs.kmeans_seed(xs, ws, k, int(seed) & 0x7FFFFFFFFFFFFFFF)


def _nearest_sqdist(x: torch.Tensor, cents: torch.Tensor) -> torch.Tensor:
    """Squared distance of each row of ``x [n, d]`` to its nearest row of ``cents``."""
    return torch.ops.vptq_rs.kmeans_assign(x, cents.contiguous(), 0)[1]


def kpp_batched(
    x: torch.Tensor,
    weights: torch.Tensor | None,
    k: int,
    seed: int,
    nearest_sqdist: Any = None,
    rounds: int = KPP_ROUNDS,
) -> torch.Tensor:
    """k-means++ seeding that draws ``b = ceil(k / rounds)`` centroids per round.

    Each round samples b distinct points with probability proportional to ``w * D²`` (D the
    distance to the nearest centroid chosen so far; ``w`` alone in the first round) and then
    refreshes D² once. b = 1 is exact weighted k-means++. Points already chosen have D² = 0,
    so they are drawn again only when every weighted point coincides with a centroid; then
    the remaining slots repeat uniformly drawn points (as the exact kernel does).
    x: float32 ``[m, d]``; weights float32 ``[m]`` or None; nearest_sqdist(x, c) -> ``[m]``
    (default: exact distances in PyTorch, any device). Returns float32 ``[k, d]``.
    """
    if nearest_sqdist is None:
        nearest_sqdist = _torch_nearest_sqdist
    m, d = x.shape
    dev = x.device
    w = torch.ones(m, device=dev) if weights is None else weights.float().clamp_min(0)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    b = max(1, -(-k // max(1, rounds)))
    cent = torch.empty(k, d, device=dev, dtype=torch.float32)
    d2: torch.Tensor | None = None
    filled = 0
    while filled < k:
        take = min(b, k - filled)
        mass = w if d2 is None else w * d2
        live = int((mass > 0).sum())
        if live == 0:  # every weighted point coincides with a centroid: any point will do
            pick = torch.randint(0, m, (k - filled,), generator=gen, device=dev)
            cent[filled:] = x[pick]
            break
        # b draws without replacement, probability proportional to mass: the b smallest
        # exponential race times E/mass (torch.multinomial without replacement took
        # 0.2-0.3 ms per round on the H100, most of the seeding time)
        race = -torch.log(torch.rand(m, generator=gen, device=dev)) / mass
        pick = torch.topk(race, min(take, live), largest=False, sorted=True).indices
        new = x[pick]
        cent[filled : filled + pick.numel()] = new
        filled += pick.numel()
        dn = nearest_sqdist(x, new)
        d2 = dn if d2 is None else torch.minimum(d2, dn)
    return cent


def _torch_nearest_sqdist(x: torch.Tensor, cents: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), cents.double()).pow(2).min(1).values.float()


def _main(argv: list[str]) -> int:
    """Ahead-of-time build: ``python -m vptq_rs.cuda_ext [-v]``; prints the build folder."""
    logging.basicConfig(level=logging.INFO)
    try:
        print(build(verbose="-v" in argv))
    except VptqError as exc:
        # the compiler's own output (with -v) is above; one line says what went wrong
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
