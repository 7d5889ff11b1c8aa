"""CPU weighted k-means: correctness, weights, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import vptq_rs
from vptq_rs import InvalidValueError


def blobs(k: int, per: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)).astype(np.float32) * 10
    x = np.repeat(centers, per, axis=0) + rng.normal(scale=0.01, size=(k * per, d))
    return x.astype(np.float32), centers


@pytest.mark.parametrize("d", [1, 2, 5, 8, 12, 16])
def test_recovers_separated_clusters(d):
    x, centers = blobs(6, 50, d)
    cent, labels = vptq_rs.kmeans(x, 6, iters=50, seed=3)
    assert cent.shape == (6, d) and cent.dtype == np.float32
    assert labels.shape == (300,)
    # each true center has a centroid within the noise level
    dist = ((centers[:, None, :] - cent[None]) ** 2).sum(-1)
    assert dist.min(axis=1).max() < 1e-2
    assert len(np.unique(labels)) == 6


def test_labels_are_nearest_centroid():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 8)).astype(np.float32)
    cent, labels = vptq_rs.kmeans(x, 64, iters=10, tol=0)
    dist = ((x[:, None, :] - cent[None]) ** 2).sum(-1)
    own = dist[np.arange(len(x)), labels]
    assert np.all(own <= dist.min(axis=1) + 1e-4)


def test_weighted_mean_and_zero_weights():
    x = np.array([[0.0], [10.0], [1000.0]], dtype=np.float32)
    w = np.array([3.0, 1.0, 0.0], dtype=np.float32)
    cent, _ = vptq_rs.kmeans(x, 1, weights=w)
    assert cent[0, 0] == pytest.approx(2.5)


def test_weights_change_the_solution():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 4)).astype(np.float32)
    w = np.where(x[:, 0] > 1, 100.0, 1.0).astype(np.float32)
    plain, _ = vptq_rs.kmeans(x, 8, seed=0)
    weighted, _ = vptq_rs.kmeans(x, 8, weights=w, seed=0)
    # heavy points (x0 > 1) attract more centroids when weighted
    assert (weighted[:, 0] > 1).sum() > (plain[:, 0] > 1).sum()


def test_same_seed_same_result_other_seed_differs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, 6)).astype(np.float32)
    a = vptq_rs.kmeans(x, 32, iters=5, seed=11)
    b = vptq_rs.kmeans(x, 32, iters=5, seed=11)
    c = vptq_rs.kmeans(x, 32, iters=5, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_inertia_decreases_with_iterations_and_info():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    inertia = [
        vptq_rs.kmeans(x, 16, iters=it, tol=0, return_info=True)[2]["inertia"] for it in (0, 2, 10)
    ]
    assert inertia[0] > inertia[1] > inertia[2]
    info = vptq_rs.kmeans(x, 16, iters=500, tol=1e-3, return_info=True)[2]
    assert info["iterations"] < 500  # converged early on the tolerance


def test_more_centroids_than_points_and_large_k():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    cent, labels = vptq_rs.kmeans(x, 8)
    assert cent.shape == (8, 2)
    np.testing.assert_array_equal(cent[labels], x)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(70000, 2)).astype(np.float32)
    cent, labels = vptq_rs.kmeans(x, 65536, iters=1)
    assert cent.shape == (65536, 2) and labels.max() < 65536


def test_duplicate_points_leave_no_nan():
    x = np.ones((100, 4), dtype=np.float32)
    x[:3] = 2
    cent, labels = vptq_rs.kmeans(x, 10, iters=5)
    assert np.isfinite(cent).all()
    np.testing.assert_allclose(cent[labels], x)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((np.zeros((4, 2), np.float64), 2), {}, "float32"),
        ((np.zeros(4, np.float32), 2), {}, "2-D"),
        ((np.zeros((4, 2), np.float32), 0), {}, "k must be"),
        ((np.zeros((4, 2), np.float32), -3), {}, "k must be"),
        ((np.zeros((0, 2), np.float32), 2), {}, "at least one point"),
        ((np.full((4, 2), np.nan, np.float32), 2), {}, "non-finite"),
        ((np.zeros((4, 2), np.float32), 2), {"weights": np.ones(3, np.float32)}, "weights"),
        ((np.zeros((4, 2), np.float32), 2), {"weights": np.zeros(4, np.float32)}, "all zero"),
        ((np.zeros((4, 2), np.float32), 2), {"weights": -np.ones(4, np.float32)}, ">= 0"),
        ((np.zeros((4, 2), np.float32), 2), {"iters": -1}, "iters"),
        ((np.zeros((4, 2), np.float32), 2), {"tol": -1.0}, "tol"),
    ],
)
def test_rejects_bad_input(args, kwargs, message):
    with pytest.raises(InvalidValueError, match=message):
        vptq_rs.kmeans(*args, **kwargs)
