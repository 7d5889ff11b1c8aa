"""Launch the hot kernels a few times for Nsight Compute (``benchmarks/gpu_profile.sh``).

    python benchmarks/gpu_profile.py [gemv|sorted|tiled|cluster|kmeans|all]

GEMV: batch 1 on the two largest issue-5 shapes with v6/k4096 (the histogram kernel, then
the shared-memory gather kernel), v8/k65536 (codebook through L2) and v12/k4096+res4096
(histogram); sorted: the sorted GEMV on the two largest shapes, v6/k4096 and
v12/k4096+res4096; tiled: the tiled GEMV on 28672x8192, v8/k65536 then v6/k4096; cluster:
the cluster-tiled GEMV on the two largest shapes, v8/k65536; k-means:
each precision and assignment design on 1M x d8 points against 65,536 centroids, twice.
Layers are random (speed does not depend on the values).
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from gpu_suite import DEV, random_layer

from vptq_rs import cuda_ext


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if cuda_ext.load() is None:
        raise SystemExit(f"CUDA kernels unavailable: {cuda_ext.unavailable_reason()}")
    gen = torch.Generator(device=DEV).manual_seed(0)
    if what in ("gemv", "all"):
        for (o, i), (v, k, kr) in (
            ((28672, 8192), (6, 4096, 0)),
            ((8192, 28672), (8, 65536, 0)),
            ((8192, 28672), (12, 4096, 4096)),
        ):
            cfg, t = random_layer(o, i, v, k, kr, gen)
            x = torch.randn(1, i, device=DEV, generator=gen).half()
            cuda_ext.gemv(x, cfg, t)
            if k == 4096 and not kr:
                cuda_ext.gemv(x, cfg, t, mode=1)
            torch.cuda.synchronize()
    if what in ("sorted", "all"):
        from vptq_rs import sorted_layout

        for (o, i), (v, k, kr) in (
            ((28672, 8192), (6, 4096, 0)),
            ((8192, 28672), (12, 4096, 4096)),
        ):
            cfg, t = random_layer(o, i, v, k, kr, gen)
            x = torch.randn(1, i, device=DEV, generator=gen).half()
            cuda_ext.gemv_sorted(x, cfg, t, sorted_layout.build(cfg, t.indices))
            torch.cuda.synchronize()
    if what in ("tiled", "all"):
        from vptq_rs import tiled_layout

        # v8/k65536 in the scalar and the mma form, then the scalar kernel at v6/k4096
        for v, k, mma in ((8, 65536, False), (8, 65536, True), (6, 4096, False)):
            cfg, t = random_layer(28672, 8192, v, k, 0, gen)
            x = torch.randn(1, 8192, device=DEV, generator=gen).half()
            tc = tiled_layout.device_tile_codes(cfg, DEV, mma=mma)
            lay = tiled_layout.build(cfg, t.indices, tc, mma=mma)
            cuda_ext.gemv_tiled(x, cfg, t, lay)
            torch.cuda.synchronize()
    if what in ("cluster", "all"):
        from vptq_rs import tiled_layout

        # v8/k65536 in the cluster form on the two largest shapes
        for o, i in ((28672, 8192), (8192, 28672)):
            cfg, t = random_layer(o, i, 8, 65536, 0, gen)
            x = torch.randn(1, i, device=DEV, generator=gen).half()
            tc = tiled_layout.device_tile_codes(cfg, DEV, cluster=True)
            lay = tiled_layout.build(cfg, t.indices, tc, cluster=True)
            cuda_ext.gemv_tiled(x, cfg, t, lay)
            torch.cuda.synchronize()
    if what in ("kmeans", "all"):
        x = torch.randn(1 << 20, 8, device=DEV, generator=gen)
        c = torch.randn(65536, 8, device=DEV, generator=gen)
        for design in cuda_ext.KMEANS_DESIGNS.values():
            for mode in cuda_ext.KMEANS_MODES.values():
                for _ in range(2):
                    torch.ops.vptq_rs.kmeans_assign(x, c, mode, design)
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
