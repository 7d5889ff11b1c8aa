"""The sorted GEMV over several chunk grains (``sorted_layout.build``'s
``chunk_groups_target``), each against cuBLAS timed in the same run (issue 5), all in fp16
or, with ``--dtype bf16``, in bf16.

The kernel cuts a block's groups into one range of whole chunks per warp, so the grain sets
how evenly the warps share the work. ``--label`` names a kernel variant built from another
source folder (``VPTQ_RS_CUDA_SRC``); ``--storage rows`` hands it the layout in the order of
the kernels before run 17a (``[R, lists, L]``; the same bytes when there is one list).

Writes ``<out>/gpu-gemv-sorted-grain[-<label>].json``: device and versions, per-repetition
timings (µs), medians and ratios.

    python benchmarks/gpu_sorted_grain.py --out benchmarks/results [--label L]
        [--grains 2,4,8,16] [--storage lists|rows] [--quick] [--no-perm] [--dtype fp16|bf16]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_suite
from gpu_suite import DEV, GEMV_SHAPES, Timer, med

from vptq_rs import cuda_ext, sorted_layout


def one_grain(timer: Timer, x, cfg, t, grain: int, rows_first: bool, ref, moved, copy_gbps):
    """The sorted GEMV at one chunk grain (``gpu_suite._layout_gemv_row``'s keys), or None
    where its partial sums do not fit in shared memory (``sorted_layout.fits``)."""
    if not sorted_layout.fits(cfg, sorted_layout.build(cfg, t.indices, grain), DEV):
        return None

    def build():
        lay = sorted_layout.build(cfg, t.indices, chunk_groups_target=grain)
        if rows_first:  # the pre-17a storage order
            lay = lay._replace(
                entries=lay.entries.transpose(0, 1).contiguous(),
                chunk_base=lay.chunk_base.transpose(0, 1).contiguous(),
            )
        return lay

    lay, build_s = gpu_suite._built(build)

    def call():
        return cuda_ext.gemv_sorted(x, cfg, t, lay)

    return gpu_suite._layout_gemv_row(
        f"g{grain}", timer, x, cfg, t, ref, moved, copy_gbps, lay, build_s, call
    )


def rows_for(
    timer, configs, shapes, grains, rows_first, copy_gbps, perm=True, dtype="fp16"
) -> list[dict]:
    out = []
    torch_dtype = gpu_suite.VARIANT_DTYPES[dtype]
    layers = gpu_suite.variant_layers(
        timer, configs, shapes, sorted_layout.applies, perm, torch_dtype
    )
    for lay in layers:
        cublas = med(lay.cublas_raw)
        row = {"out": lay.out, "in": lay.inp, "config": lay.config}
        row.update({f"cublas_{dtype}_us": cublas, "cublas_raw_us": lay.cublas_raw})
        line = []
        for grain in grains:
            got = one_grain(
                timer, lay.x, lay.cfg, lay.t, grain, rows_first, lay.ref, lay.moved, copy_gbps
            )
            if got is None:
                row[f"ours_g{grain}_us"] = None
                line.append(f"g{grain} does not fit")
                continue
            row.update(got)
            us = row[f"ours_g{grain}_us"]
            row[f"speedup_vs_cublas_g{grain}"] = cublas / us
            line.append(f"g{grain} {us:.1f}us (x{cublas / us:.2f})")
        out.append(row)
        print(
            f"sorted {lay.out}x{lay.inp} {lay.config}: " + " ".join(line),
            f"cublas {cublas:.1f}us",
            flush=True,
        )
    return out


def main() -> None:
    ap = gpu_suite.variant_parser(__doc__, "v6_k4096,v12_k4096_r4096")
    ap.add_argument("--grains", default="2,4,8,16", help="chunk_groups_target values")
    ap.add_argument("--storage", choices=("lists", "rows"), default="lists")
    args, configs = gpu_suite.variant_args(ap)
    try:
        grains = [int(g) for g in args.grains.split(",")]
    except ValueError:
        ap.error(f"--grains must be comma-separated integers, got {args.grains!r}")
    if min(grains) < 1:
        ap.error("--grains must be >= 1")
    if cuda_ext.load() is None:
        sys.exit(f"CUDA extension unavailable: {cuda_ext.unavailable_reason()}")
    timer = Timer()
    copy = gpu_suite.copy_bandwidth(timer)
    shapes = GEMV_SHAPES[3:] if args.quick else GEMV_SHAPES
    rows = rows_for(
        timer,
        configs,
        shapes,
        grains,
        args.storage == "rows",
        copy["GBps"],
        not args.no_perm,
        args.dtype,
    )
    payload = {
        "copy_GBps": copy["GBps"],
        "tokens": 1,
        "label": args.label,
        "storage": args.storage,
        "perm": not args.no_perm,
        "dtype": args.dtype,
        "grains": grains,
        "rows": rows,
    }
    gpu_suite.write(Path(args.out), "gemv-sorted-grain", payload, args.label)


if __name__ == "__main__":
    main()
