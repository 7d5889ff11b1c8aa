"""The tiled GEMV over its two entry orders, in one run: entries dealt out by the codebook
loads' bank keys (``tiled_layout.build``'s default) and column order within each tile
(``deal_by_bank=False``), at v = 8 the tensor-core form (``mma=True``, dealt), and on
sm_90+ the cluster kernel (``cluster=True``, dealt; at v = 8 also over mma entries), each
against cuBLAS timed in the same run (issue 5), all in fp16 or, with ``--dtype bf16``, in
bf16.

Writes ``<out>/gpu-gemv-tiled-order[-<label>].json``: device and versions, per-repetition
timings (µs), medians and ratios; ``--label`` names a kernel variant built from another
source folder (``VPTQ_RS_CUDA_SRC``).

    python benchmarks/gpu_tiled_order.py --out benchmarks/results [--label L] [--quick] [--no-perm]
        [--dtype fp16|bf16]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_suite
from gpu_suite import DEV, GEMV_SHAPES, Timer, med

from vptq_rs import cuda_ext, tiled_layout

# name -> (deal_by_bank, mma, cluster); "mma" only where tiled_layout.mma_supported,
# "cluster" (the cluster kernel, dealt entries) where tiled_layout.cluster_supported,
# "cluster_mma" (the cluster kernel over mma entries) where both
ORDERS = {
    "dealt": (True, False, False),
    "columns": (False, False, False),
    "mma": (True, True, False),
    "cluster": (True, False, True),
    "cluster_mma": (True, True, True),
}


def one_order(timer: Timer, x, cfg, t, order, form, ref, moved, copy_gbps) -> dict:
    """The tiled GEMV over one entry order or form (``gpu_suite._layout_gemv_row``'s keys,
    plus ``tile_codes_<order>``)."""
    deal, mma, cluster = form
    tile_codes = tiled_layout.device_tile_codes(cfg, DEV, mma=mma, cluster=cluster)

    def build():
        return tiled_layout.build(
            cfg, t.indices, tile_codes, deal_by_bank=deal, mma=mma, cluster=cluster
        )

    lay, build_s = gpu_suite._built(build)

    def call():
        return cuda_ext.gemv_tiled(x, cfg, t, lay)

    row = gpu_suite._layout_gemv_row(
        order, timer, x, cfg, t, ref, moved, copy_gbps, lay, build_s, call
    )
    row[f"tile_codes_{order}"] = tile_codes
    return row


def rows_for(
    timer: Timer,
    configs: list[str],
    shapes,
    copy_gbps: float,
    perm: bool = True,
    dtype: str = "fp16",
) -> list[dict]:
    def tiles(cfg):
        return tiled_layout.device_tile_codes(cfg, DEV)

    rows = []
    keep = lambda c: tiles(c) is not None  # noqa: E731
    layers = gpu_suite.variant_layers(
        timer, configs, shapes, keep, perm, gpu_suite.VARIANT_DTYPES[dtype]
    )
    for lay in layers:
        tile_codes = tiles(lay.cfg)
        cublas = med(lay.cublas_raw)
        row = {"out": lay.out, "in": lay.inp, "config": lay.config, "tile_codes": tile_codes}
        row.update({f"cublas_{dtype}_us": cublas, "cublas_raw_us": lay.cublas_raw})
        for order, form in ORDERS.items():
            if form[1] and not tiled_layout.mma_supported(lay.cfg, DEV):
                continue
            if form[2] and not tiled_layout.cluster_supported(DEV):
                continue
            got = one_order(
                timer, lay.x, lay.cfg, lay.t, order, form, lay.ref, lay.moved, copy_gbps
            )
            row.update(got)
            row[f"speedup_vs_cublas_{order}"] = cublas / row[f"ours_{order}_us"]
        rows.append(row)
        timed = [o for o in ORDERS if f"ours_{o}_us" in row]
        print(
            f"tiled {lay.out}x{lay.inp} {lay.config}: "
            + " ".join(
                f"{o} {row[f'ours_{o}_us']:.1f}us (x{row[f'speedup_vs_cublas_{o}']:.2f}, "
                f"err {row[f'ours_{o}_rel_err']:.1e})"
                for o in timed
            )
            + f" cublas {cublas:.1f}us",
            flush=True,
        )
    return rows


def main() -> None:
    args, configs = gpu_suite.variant_args(gpu_suite.variant_parser(__doc__, "v8_k65536"))
    if cuda_ext.load() is None:
        sys.exit(f"CUDA extension unavailable: {cuda_ext.unavailable_reason()}")
    timer = Timer()
    copy = gpu_suite.copy_bandwidth(timer)
    shapes = GEMV_SHAPES[3:] if args.quick else GEMV_SHAPES
    rows = rows_for(timer, configs, shapes, copy["GBps"], not args.no_perm, args.dtype)
    payload = {
        "copy_GBps": copy["GBps"],
        "tokens": 1,
        "label": args.label,
        "perm": not args.no_perm,
        "dtype": args.dtype,
        "rows": rows,
    }
    gpu_suite.write(Path(args.out), "gemv-tiled-order", payload, args.label)


if __name__ == "__main__":
    main()
