"""CPU weighted k-means: vptq_rs.kmeans vs faiss.Kmeans (with weights), same threads.

N = 1,000,000 points, d = 8, k in {4096, 256}, 20 iterations, per-point weights. faiss is
told to use every point (its default subsamples to 256 points per centroid) and the same
thread count. Both inertias are measured the same way: weighted squared distance of every
point to its nearest final centroid. Writes results/kmeans.json.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import vptq_rs
from _meta import median, timeit, write


def weighted_inertia(x: np.ndarray, w: np.ndarray, cent: np.ndarray) -> float:
    """sum_i w_i min_j |x_i - c_j|^2, computed in chunks in float64."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(cent.astype(np.float32))
    dist, _ = index.search(x, 1)
    return float((w.astype(np.float64) * dist[:, 0].astype(np.float64)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--ks", type=int, nargs="+", default=[4096, 256])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import faiss

    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    # weight-like data: a Gaussian mixture, heavy-tailed weights (like Hessian diagonals)
    centers = rng.normal(size=(512, args.d)).astype(np.float32)
    x = centers[rng.integers(0, 512, args.n)] + 0.3 * rng.normal(size=(args.n, args.d))
    x = x.astype(np.float32)
    w = rng.lognormal(sigma=1.0, size=args.n).astype(np.float32)
    rows = []
    for k in args.ks:
        ours = {}

        def run_ours(k=k, out=ours):
            out["c"], _ = vptq_rs.kmeans(x, k, weights=w, iters=args.iters, tol=0.0, seed=0)

        def run_faiss(k=k, out=ours):
            km = faiss.Kmeans(
                args.d,
                k,
                niter=args.iters,
                seed=0,
                max_points_per_centroid=args.n,
                verbose=False,
            )
            km.train(x, weights=w)
            out["f"] = km.centroids

        t_ours = timeit(run_ours, args.repeat, warmup=0)
        t_faiss = timeit(run_faiss, args.repeat, warmup=0)
        inertia_ours = weighted_inertia(x, w, ours["c"])
        inertia_faiss = weighted_inertia(x, w, ours["f"])
        row = {
            "k": k,
            "seconds_ours": t_ours,
            "seconds_faiss": t_faiss,
            "median_ours_s": median(t_ours),
            "median_faiss_s": median(t_faiss),
            "speedup_vs_faiss": median(t_faiss) / median(t_ours),
            "inertia_ours": inertia_ours,
            "inertia_faiss": inertia_faiss,
            "inertia_rel_diff": inertia_ours / inertia_faiss - 1,
        }
        rows.append(row)
        print(
            f"k={k}: ours {row['median_ours_s']:.2f}s, faiss {row['median_faiss_s']:.2f}s "
            f"({row['speedup_vs_faiss']:.2f}x), inertia ours/faiss - 1 = "
            f"{row['inertia_rel_diff']:+.4%}"
        )
    path = write(
        "kmeans",
        {
            "n": args.n,
            "d": args.d,
            "iters": args.iters,
            "threads": threads,
            "weighted": True,
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
