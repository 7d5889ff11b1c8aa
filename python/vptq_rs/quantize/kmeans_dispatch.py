"""Hessian-weighted k-means on whatever device the layer lives on.

CPU: the Rust ``vptq_rs.kmeans`` (k-means++ init, rayon). CUDA: ``vptq_rs.cuda_ext.kmeans``
when that extension is built and reports itself available, else a chunked PyTorch
implementation (also usable on CPU, e.g. for tests). When there are no more vectors than
centroids every vector becomes its own centroid (and the rest repeat the first).
"""

from __future__ import annotations

import importlib
import logging

import numpy as np
import torch

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _cuda_ext() -> object | None:
    try:
        mod = importlib.import_module("vptq_rs.cuda_ext")
    except ImportError:
        return None
    available = getattr(mod, "available", None)
    ok = available() if callable(available) else bool(available)
    return mod if ok and hasattr(mod, "kmeans") else None


def kmeans(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    iters: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    backend: str = "auto",
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means: ``(centroids fp32 [k, d], labels int64 [N])`` on ``x.device``.

    x: float ``[N, d]``; weights: float ``[N]`` (>= 0) or None. backend: "auto" (Rust on
    CPU, CUDA extension or torch on GPU), "rust" or "torch". precision: distance precision of
    the CUDA extension (``options.KMEANS_PRECISIONS``; the other backends are fp32). Deterministic
    per seed.
    """
    x = x.float()
    n = x.shape[0]
    if n <= k:
        idx = torch.arange(k, device=x.device).clamp_max(n - 1)
        idx[n:] = 0
        return x[idx].clone(), torch.arange(n, device=x.device)
    if backend == "auto":
        if x.is_cuda:
            ext = _cuda_ext()
            if ext is not None:
                c, lab = ext.kmeans(
                    x, k, weights=weights, iters=iters, tol=tol, seed=seed, precision=precision
                )
                return c.float(), lab.long()
            if "cuda" not in _warned:
                _warned.add("cuda")
                log.warning("vptq_rs.cuda_ext not available: k-means falls back to PyTorch")
            backend = "torch"
        else:
            backend = "rust"
    if backend == "rust":
        from vptq_rs import kmeans as rust_kmeans

        w = None if weights is None else np.ascontiguousarray(weights.float().cpu().numpy())
        c, lab = rust_kmeans(
            np.ascontiguousarray(x.cpu().numpy()), k, weights=w, iters=iters, tol=tol, seed=seed
        )
        return torch.from_numpy(np.asarray(c)).float(), torch.from_numpy(
            np.asarray(lab).astype(np.int64)
        )
    return torch_kmeans(x, k, weights, iters, tol, seed)


def torch_kmeans(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    iters: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means++ + Lloyd in PyTorch (chunked distances); same contract as kmeans."""
    from vptq_rs.quantize.codebook import nearest

    n, d = x.shape
    w = torch.ones(n, device=x.device) if weights is None else weights.float().to(x.device)
    w = w.clamp_min(0)
    if not (w > 0).any():
        w = torch.ones_like(w)
    # sampling stays on the device (no host round trip per centroid)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    cents = torch.empty(k, d, device=x.device)
    first = torch.multinomial(w, 1, generator=gen)
    cents[0] = x[first[0]]
    dist = ((x - cents[0]) ** 2).sum(1)
    # k-means++: sample with probability weight x D²; the epsilon keeps it a distribution
    # once every vector coincides with a centroid
    eps = w * 1e-30 + 1e-38
    for i in range(1, k):
        j = torch.multinomial(w * dist + eps, 1, generator=gen)
        cents[i] = x[j[0]]
        dist = torch.minimum(dist, ((x - cents[i]) ** 2).sum(1))
    prev = math_inf = float("inf")
    labels = nearest(x, cents)
    for _ in range(iters):
        sums = torch.zeros_like(cents).index_add_(0, labels, x * w[:, None])
        mass = torch.zeros(k, device=x.device).index_add_(0, labels, w)
        nz = mass > 0
        cents[nz] = sums[nz] / mass[nz, None]
        labels = nearest(x, cents)
        obj = float((w * ((x - cents[labels]) ** 2).sum(1)).sum())
        if prev != math_inf and prev - obj <= tol * max(prev, 1e-30):
            break
        prev = obj
    return cents, labels
