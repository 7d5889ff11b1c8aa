"""Batched k-means++ seeding (used on the GPU above KPP_EXACT_MAX centroids), run on the CPU."""

from __future__ import annotations

import torch

from vptq_rs.cuda_ext import kpp_batched


def _points(n: int = 600, d: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def test_same_seed_same_centroids_and_seed_matters() -> None:
    x = _points()
    w = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1))
    a = kpp_batched(x, w, 64, seed=3, rounds=8)
    assert a.shape == (64, 4)
    assert torch.equal(a, kpp_batched(x, w, 64, seed=3, rounds=8))
    assert not torch.equal(a, kpp_batched(x, w, 64, seed=4, rounds=8))


def test_centroids_are_distinct_input_points() -> None:
    x = _points()
    c = kpp_batched(x, None, 100, seed=0, rounds=10)
    # every centroid is one of the points, and no point is drawn twice while others remain
    match = (c[:, None, :] == x[None, :, :]).all(-1).nonzero()[:, 1]
    assert match.numel() == 100 and match.unique().numel() == 100


def test_zero_weight_points_are_never_drawn() -> None:
    x = _points()
    w = torch.zeros(x.shape[0])
    w[::3] = 1.0
    c = kpp_batched(x, w, 50, seed=2, rounds=5)
    picked = (c[:, None, :] == x[None, :, :]).all(-1).nonzero()[:, 1]
    assert bool((picked % 3 == 0).all())


def test_more_centroids_than_distinct_points_repeats_points() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    c = kpp_batched(x, None, 6, seed=0, rounds=2)
    assert c.shape == (6, 2)
    assert {tuple(r) for r in c.tolist()} == {(0.0, 0.0), (1.0, 1.0)}


def test_batched_seeding_covers_separated_clusters() -> None:
    # 16 tight, far-apart clusters, one holding most points: D² sampling in rounds of 4
    # still reaches most of them (16 uniform draws would cover about 5)
    g = torch.Generator().manual_seed(5)
    centers = torch.randn(16, 3, generator=g) * 100
    sizes = torch.tensor([400] + [10] * 15)
    x = torch.cat(
        [
            c + torch.randn(int(s), 3, generator=g) * 0.01
            for c, s in zip(centers, sizes, strict=True)
        ]
    )
    c = kpp_batched(x, None, 16, seed=0, rounds=4)
    owner = torch.cdist(c, centers).argmin(1)
    assert owner.unique().numel() >= 9
