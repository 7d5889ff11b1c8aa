"""Outlier columns: how many, and the exact codebook for float-kept outliers.

Outliers are the first ``outlier_size`` permuted columns (with act-order: the inputs with the
largest Hessian diagonal). They get their own codebook; with ``num_centroids[0] = -1`` they
are kept exactly by making every distinct outlier vector its own centroid (K0 <= 65536, the
outlier indices are uint16), which the packed format stores without any change.
"""

from __future__ import annotations

import math

import torch

from vptq_rs.errors import InvalidValueError


def outlier_columns(npercent: float, cols: int, group_num: int) -> int:
    """Outlier column count: ``ceil(npercent% of cols)``, raised until groups divide the rest."""
    if npercent <= 0:
        return 0
    osz = min(math.ceil(npercent / 100.0 * cols), cols)
    while osz < cols and (cols - osz) % group_num:
        osz += 1
    return osz


def exact_codebook(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct vectors as centroids: ``(centroids [K0, v0], labels [N] int64)``.

    vectors: float ``[N, v0]``, already rounded to the storage dtype so that every vector
    is reproduced bit for bit. Sorted (torch.unique), hence deterministic.
    """
    cents, labels = torch.unique(vectors, dim=0, return_inverse=True)
    if cents.shape[0] > 65536:
        raise InvalidValueError(
            f"{cents.shape[0]} distinct float-kept outlier vectors exceed 65536 (uint16 indices)"
        )
    if cents.shape[0] < 2:  # a one-entry codebook is legal but duplicate it for index_bits >= 1
        cents = torch.cat([cents, cents])
    return cents, labels
