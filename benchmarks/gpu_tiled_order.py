"""The tiled GEMV over its two entry orders, in one run: entries dealt out by the codebook
loads' bank keys (``tiled_layout.build``'s default) and column order within each tile
(``deal_by_bank=False``), each against cuBLAS fp16 timed in the same run (issue 5).

Writes ``<out>/gpu-gemv-tiled-order[-<label>].json``: device and versions, per-repetition
timings (µs), medians and ratios; ``--label`` names a kernel variant built from another
source folder (``VPTQ_RS_CUDA_SRC``).

    python benchmarks/gpu_tiled_order.py --out benchmarks/results [--label L] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_suite
from gpu_suite import DEV, GEMV_CONFIGS, GEMV_SHAPES, Timer, med, random_layer

from vptq_rs import cuda_ext, tiled_layout

ORDERS = {"dealt": True, "columns": False}  # name -> deal_by_bank


def one_order(timer: Timer, x, cfg, t, tile_codes, order, deal, ref, moved, copy_gbps) -> dict:
    """The tiled GEMV over one entry order (``gpu_suite._layout_gemv_row``'s keys)."""

    def build():
        return tiled_layout.build(cfg, t.indices, tile_codes, deal_by_bank=deal)

    lay, build_s = gpu_suite._built(build)

    def call():
        return cuda_ext.gemv_tiled(x, cfg, t, lay)

    return gpu_suite._layout_gemv_row(
        order, timer, x, cfg, t, ref, moved, copy_gbps, lay, build_s, call
    )


def rows_for(timer: Timer, configs: list[str], shapes, copy_gbps: float) -> list[dict]:
    gen = torch.Generator(device=DEV).manual_seed(0)
    rows = []
    for o, i in shapes:
        x = torch.randn(1, i, device=DEV, generator=gen).half()
        w_dense = (torch.randn(o, i, device=DEV, generator=gen) * 0.02).half()
        cublas = timer(lambda w_dense=w_dense, x=x: F.linear(x, w_dense))
        del w_dense
        for name in configs:
            v, k, kr = GEMV_CONFIGS[name]
            cfg, t = random_layer(o, i, v, k, kr, gen)
            tile_codes = tiled_layout.device_tile_codes(cfg, DEV)
            if tile_codes is None:
                continue
            ref = F.linear(x.float(), cuda_ext.dequant(cfg, t, torch.float32))
            moved = gpu_suite.layer_bytes(t) + x.numel() * 2 + o * 2
            row = {"out": o, "in": i, "config": name, "tile_codes": tile_codes}
            row.update(cublas_fp16_us=med(cublas), cublas_raw_us=cublas)
            for order, deal in ORDERS.items():
                row.update(
                    one_order(timer, x, cfg, t, tile_codes, order, deal, ref, moved, copy_gbps)
                )
                row[f"speedup_vs_cublas_{order}"] = med(cublas) / row[f"ours_{order}_us"]
            rows.append(row)
            print(
                f"tiled {o}x{i} {name}: dealt {row['ours_dealt_us']:.1f}us "
                f"(x{row['speedup_vs_cublas_dealt']:.2f}) columns {row['ours_columns_us']:.1f}us "
                f"(x{row['speedup_vs_cublas_columns']:.2f}) cublas {med(cublas):.1f}us "
                f"err {row['ours_dealt_rel_err']:.1e}/{row['ours_columns_rel_err']:.1e}",
                flush=True,
            )
            del t
    return rows


def main() -> None:
    args, configs = gpu_suite.variant_args(gpu_suite.variant_parser(__doc__, "v8_k65536"))
    if cuda_ext.load() is None:
        sys.exit(f"CUDA extension unavailable: {cuda_ext.unavailable_reason()}")
    timer = Timer()
    copy = gpu_suite.copy_bandwidth(timer)
    shapes = GEMV_SHAPES[3:] if args.quick else GEMV_SHAPES
    rows = rows_for(timer, configs, shapes, copy["GBps"])
    payload = {"copy_GBps": copy["GBps"], "tokens": 1, "label": args.label, "rows": rows}
    gpu_suite.write(Path(args.out), "gemv-tiled-order", payload, args.label)


if __name__ == "__main__":
    main()
