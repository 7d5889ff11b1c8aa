"""GPU benchmark suite of the vptq-rs CUDA kernels (issue 5's "Numbers"), one script.

Writes ``<out>/gpu-<section>[-<tag>].json`` for each section (``--tag h200`` keeps a run on
another card beside the H100 tables): device, driver, torch/CUDA versions,
the command, raw per-repetition timings (µs unless named otherwise), medians, and ratios
against baselines timed in the same run (cuBLAS fp16 ``F.linear``, naive PyTorch
dequant + matmul, a chunked PyTorch cdist + argmin k-means from the same initial
centroids, device-to-device copy bandwidth).

    python benchmarks/gpu_suite.py --out benchmarks/results [--quick] [--sections a,b]

Sections: copy, gemv, lut, gemm, kmeans, e2e, msvptq. Layers are random (random packed
words are valid codes: K is a power of two), which is what speed depends on. The gemv and
lut sections also time the sorted GEMV (``vptq_rs.sorted_layout``) where its layout applies,
and the gemv section the tiled GEMV (``vptq_rs.tiled_layout``) where its layout fits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from vptq_rs import cuda_ext, sorted_layout, tiled_layout
from vptq_rs.layout import LayerConfig
from vptq_rs.ops import PackedTensors, dequantize_t

DEV = torch.device("cuda")
GEMV_CONFIGS = {  # name -> (v, K, Kres): all 2 bits per weight
    "v8_k65536": (8, 65536, 0),
    "v6_k4096": (6, 4096, 0),
    "v12_k4096_r4096": (12, 4096, 4096),
}
GEMV_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]
LUT_SHAPES = [
    (512, 2048),
    (1024, 4096),
    (2048, 8192),
    (4096, 16384),
    (7168, 28672),
    (8192, 32768),
    (12288, 49152),
]
LUT_BITS = {2: (6, 4096, 0), 3: (4, 4096, 0), 4: (2, 256, 0)}


def env_info() -> dict[str, Any]:
    try:
        drv = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        drv = f"unknown ({exc})"
    p = torch.cuda.get_device_properties(DEV)
    return {
        "device": torch.cuda.get_device_name(DEV),
        "sm_count": p.multi_processor_count,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "driver": drv,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "command": " ".join([sys.executable, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class Timer:
    """Per-repetition CUDA-event timings of GPU work, with the L2 cache flushed before each
    repetition. A spin kernel after the flush keeps the GPU busy while the host queues the
    call, so host time (tens of microseconds per call on a busy host) never shows up as GPU
    time; ``gpu_tune.py --sections overhead`` measures host time apart."""

    SPIN_CYCLES = 400_000  # ~200 us at the H100's clocks

    def __init__(self) -> None:
        self.flush = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=DEV)

    def __call__(self, fn, reps: int = 30, warmup: int = 3, flush: bool = True) -> list[float]:
        for _ in range(warmup):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            if flush:
                self.flush.fill_(float(i))
            torch.cuda._sleep(self.SPIN_CYCLES)
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends, strict=False)]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def write(out: Path, name: str, payload: dict[str, Any], tag: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-{name}{'-' + tag if tag else ''}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"env": env_info(), **payload}, indent=1))
    tmp.replace(path)
    print(f"wrote {path}", flush=True)


def random_layer(
    o: int,
    i: int,
    v: int,
    k: int,
    kr: int,
    gen: torch.Generator,
    dtype=torch.float16,
    perm: bool = True,
) -> tuple[LayerConfig, PackedTensors]:
    """A random packed layer with a norm (scale and bias) and, with ``perm``, a random
    column permutation."""
    cfg = LayerConfig(
        in_features=i,
        out_features=o,
        vector_len=v,
        num_centroids=k,
        num_res_centroids=kr,
        enable_perm=perm,
    )
    tb = cfg.index_bits + cfg.res_bits
    words = -(-cfg.group_size * tb // 32)
    idx = torch.randint(
        -(2**31),
        2**31 - 1,
        (1, cfg.num_vectors, words),
        device=DEV,
        dtype=torch.int32,
        generator=gen,
    )
    cb = (torch.randn(1, k * v, device=DEV, generator=gen) * 0.02).to(dtype)
    rcb = (torch.randn(1, kr * v, device=DEV, generator=gen) * 0.005).to(dtype) if kr else None
    order = torch.randperm(i, device=DEV, generator=gen).to(torch.int32).to(torch.int16)
    scale = (torch.rand(i, device=DEV, generator=gen) + 0.5).to(dtype)
    bias = (torch.randn(i, device=DEV, generator=gen) * 0.01).to(dtype)
    t = PackedTensors(
        indices=idx,
        centroids=cb,
        res_centroids=rcb,
        perm=order if perm else None,
        weight_scale=scale,
        weight_bias=bias,
    )
    return cfg, t


def layer_bytes(t: PackedTensors) -> int:
    return sum(x.numel() * x.element_size() for x in t if x is not None)


# ---- sections -------------------------------------------------------------------------------


def copy_bandwidth(timer: Timer) -> dict[str, Any]:
    n = 2**30 // 4
    src = torch.randn(n, device=DEV)
    dst = torch.empty_like(src)
    raw = timer(lambda: dst.copy_(src), reps=20, flush=False)
    gbps = 2 * src.numel() * 4 / (med(raw) * 1e-6) / 1e9
    return {"bytes": 2 * n * 4, "raw_us": raw, "median_us": med(raw), "GBps": gbps}


def gemv_section(timer: Timer, copy_gbps: float, quick: bool) -> dict[str, Any]:
    gen = torch.Generator(device=DEV).manual_seed(0)
    rows = []
    shapes = GEMV_SHAPES[:2] + GEMV_SHAPES[3:4] if quick else GEMV_SHAPES
    for o, i in shapes:
        x = torch.randn(1, i, device=DEV, generator=gen).half()
        w_dense = (torch.randn(o, i, device=DEV, generator=gen) * 0.02).half()
        cublas = timer(lambda w_dense=w_dense, x=x: F.linear(x, w_dense))
        del w_dense
        for name, (v, k, kr) in GEMV_CONFIGS.items():
            cfg, t = random_layer(o, i, v, k, kr, gen)
            ref = F.linear(x.float(), cuda_ext.dequant(cfg, t, torch.float32))
            row: dict[str, Any] = {
                "out": o,
                "in": i,
                "config": name,
                "cublas_fp16_us": med(cublas),
                "cublas_raw_us": cublas,
            }
            moved = layer_bytes(t) + x.numel() * 2 + o * 2
            row["bytes_moved"] = moved
            for mode, label in ((0, "auto"), (1, "smem"), (2, "l2"), (3, "hist")):
                if mode == 3 and not cuda_ext.gemv_hist_applies(cfg, 1):
                    row["ours_hist_us"] = None
                    continue
                y = cuda_ext.gemv(x, cfg, t, mode=mode)
                err = float((y.float() - ref).norm() / ref.norm())
                raw = timer(
                    lambda x=x, cfg=cfg, t=t, mode=mode: cuda_ext.gemv(x, cfg, t, mode=mode)
                )
                row[f"ours_{label}_us"] = med(raw)
                row[f"ours_{label}_raw_us"] = raw
                row[f"ours_{label}_rel_err"] = err
            row.update(sorted_gemv(timer, x, cfg, t, ref, moved, copy_gbps))
            row.update(tiled_gemv(timer, x, cfg, t, ref, moved, copy_gbps))
            modes = ("auto", "smem", "l2", "hist", "sorted", "tiled")
            best = min(row[f"ours_{m}_us"] for m in modes if row[f"ours_{m}_us"] is not None)
            row["speedup_vs_cublas_auto"] = row["cublas_fp16_us"] / row["ours_auto_us"]
            row["speedup_vs_cublas_best_mode"] = row["cublas_fp16_us"] / best
            row["effective_GBps_auto"] = moved / (row["ours_auto_us"] * 1e-6) / 1e9
            row["fraction_of_copy_bw_auto"] = row["effective_GBps_auto"] / copy_gbps
            if not quick or (o, i) == shapes[0]:
                naive = timer(
                    lambda x=x, cfg=cfg, t=t: F.linear(x, dequantize_t(cfg, t).half().t()), reps=5
                )
                row["naive_torch_us"] = med(naive)
                row["naive_torch_raw_us"] = naive
                row["speedup_vs_naive"] = med(naive) / row["ours_auto_us"]
            rows.append(row)
            print(
                f"gemv {o}x{i} {name}: ours {row['ours_auto_us']:.1f}us "
                f"(smem {row['ours_smem_us']:.1f} l2 {row['ours_l2_us']:.1f} "
                f"hist {row['ours_hist_us'] or float('nan'):.1f} "
                f"sorted {row['ours_sorted_us'] or float('nan'):.1f} "
                f"tiled {row['ours_tiled_us'] or float('nan'):.1f}) "
                f"cublas {row['cublas_fp16_us']:.1f}us x{row['speedup_vs_cublas_auto']:.2f} "
                f"bw {row['fraction_of_copy_bw_auto']:.0%} err {row['ours_auto_rel_err']:.1e}",
                flush=True,
            )
            del t
    return {"copy_GBps": copy_gbps, "tokens": 1, "rows": rows}


class VariantLayer(NamedTuple):
    """One layer of a kernel-variant benchmark, with its shape's cuBLAS timings (fp16, or the
    run's ``--dtype``)."""

    out: int
    inp: int
    config: str
    x: torch.Tensor  # [1, inp] fp16 or bf16
    cublas_raw: list[float]  # us
    cfg: Any
    t: PackedTensors
    ref: torch.Tensor  # fp32 x @ W^T from the dequantized layer
    moved: int  # the bytes: packed layer, activations, outputs


def variant_layers(
    timer: Timer, configs: list[str], shapes, keep, perm: bool = True, dtype=torch.float16
) -> Iterator[VariantLayer]:
    """Per shape one activation and cuBLAS timed on it, both in ``dtype``; per config a random
    layer with codebooks and norms in ``dtype`` (seed 0, so every variant run sees the same
    layers; a column permutation with ``perm``), yielded where ``keep(cfg)`` is true."""
    gen = torch.Generator(device=DEV).manual_seed(0)
    for o, i in shapes:
        x = torch.randn(1, i, device=DEV, generator=gen).to(dtype)
        w_dense = (torch.randn(o, i, device=DEV, generator=gen) * 0.02).to(dtype)
        cublas = timer(lambda w_dense=w_dense, x=x: F.linear(x, w_dense))
        del w_dense
        for name in configs:
            v, k, kr = GEMV_CONFIGS[name]
            cfg, t = random_layer(o, i, v, k, kr, gen, perm=perm, dtype=dtype)
            if not keep(cfg):
                continue
            ref = F.linear(x.float(), cuda_ext.dequant(cfg, t, torch.float32))
            moved = layer_bytes(t) + x.numel() * 2 + o * 2
            yield VariantLayer(o, i, name, x, cublas, cfg, t, ref, moved)


VARIANT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def variant_parser(doc: str, configs: str) -> argparse.ArgumentParser:
    """The options of a kernel-variant benchmark (gpu_tiled_order.py, gpu_sorted_grain.py):
    --out, --label, --configs (default ``configs``), --quick, --no-perm and --dtype; see
    :func:`variant_args`."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--label", default="", help="file name suffix: the kernel variant timed")
    ap.add_argument("--configs", default=configs, help="comma-separated GEMV configs")
    ap.add_argument("--quick", action="store_true", help="the two largest shapes only")
    ap.add_argument("--no-perm", action="store_true", help="layers without a column permutation")
    ap.add_argument(
        "--dtype",
        choices=sorted(VARIANT_DTYPES),
        default="fp16",
        help="activations, codebooks, norms and the cuBLAS baseline",
    )
    return ap


def variant_args(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """Parsed options of :func:`variant_parser` and the configs, checked (a bad label or an
    unknown config exits with a one-line error)."""
    args = ap.parse_args()
    if args.label and not re.fullmatch(r"[a-z0-9_]+", args.label):
        ap.error(f"--label must be lower-case letters, digits or _, got {args.label!r}")
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in GEMV_CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; known: {sorted(GEMV_CONFIGS)}")
    return args, configs


def _built(build) -> tuple[Any, float]:
    """A layout from ``build()`` and the seconds it took on the GPU."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    lay = build()
    torch.cuda.synchronize()
    return lay, time.perf_counter() - t0


def _layout_gemv_row(
    name: str, timer: Timer, x, cfg, t, ref, moved: int, copy_gbps: float, lay, build_s, call
) -> dict[str, Any]:
    """Time, error, layout size and build time of a GEMV over its own layout (``call()``),
    and bandwidth two ways: the issue's bytes (packed indices etc.) and the bytes the kernel
    reads (the layout in place of the packed indices). Keys carry ``name``."""
    if ref is None:
        ref = F.linear(x.float(), cuda_ext.dequant(cfg, t, torch.float32))
    y = call()
    raw = timer(call)
    packed = t.indices.numel() * 4
    read = moved - packed + lay.nbytes
    us = med(raw)
    return {
        f"ours_{name}_us": us,
        f"ours_{name}_raw_us": raw,
        f"ours_{name}_rel_err": float((y.float() - ref).norm() / ref.norm()),
        f"{name}_layout_bytes": lay.nbytes,
        f"{name}_layout_over_packed": lay.nbytes / packed,
        f"{name}_build_s": build_s,
        f"{name}_bytes_read": read,
        f"fraction_of_copy_bw_{name}": moved / (us * 1e-6) / 1e9 / copy_gbps,
        f"fraction_of_copy_bw_{name}_bytes_read": read / (us * 1e-6) / 1e9 / copy_gbps,
    }


def sorted_gemv(timer: Timer, x, cfg, t, ref, moved: int, copy_gbps: float) -> dict[str, Any]:
    """The sorted GEMV on one layer where its layout applies and fits
    (:func:`_layout_gemv_row`)."""
    if not sorted_layout.applies(cfg):
        return {"ours_sorted_us": None}
    lay, build_s = _built(lambda: sorted_layout.build(cfg, t.indices))
    if not sorted_layout.fits(cfg, lay, DEV):
        return {"ours_sorted_us": None}
    call = lambda: cuda_ext.gemv_sorted(x, cfg, t, lay)  # noqa: E731
    return _layout_gemv_row("sorted", timer, x, cfg, t, ref, moved, copy_gbps, lay, build_s, call)


def tiled_gemv(timer: Timer, x, cfg, t, ref, moved: int, copy_gbps: float) -> dict[str, Any]:
    """The tiled GEMV on one layer where its layout applies and fits, with its tile
    (:func:`_layout_gemv_row`)."""
    mma, cluster = tiled_layout.load_form(cfg, DEV)  # the form nn.py builds
    applies = tiled_layout.applies(cfg)
    tile_codes = (
        tiled_layout.device_tile_codes(cfg, DEV, mma=mma, cluster=cluster) if applies else None
    )
    if tile_codes is None:
        return {"ours_tiled_us": None}
    lay, build_s = _built(
        lambda: tiled_layout.build(cfg, t.indices, tile_codes, mma=mma, cluster=cluster)
    )
    call = lambda: cuda_ext.gemv_tiled(x, cfg, t, lay)  # noqa: E731
    row = _layout_gemv_row("tiled", timer, x, cfg, t, ref, moved, copy_gbps, lay, build_s, call)
    return {**row, "tiled_tile_codes": tile_codes, "tiled_mma": mma, "tiled_cluster": cluster}


def lut_section(timer: Timer, quick: bool) -> dict[str, Any]:
    gen = torch.Generator(device=DEV).manual_seed(1)
    rows = []
    for n, k in LUT_SHAPES[:4] if quick else LUT_SHAPES:
        x = torch.randn(1, k, device=DEV, generator=gen).half()
        w_dense = (torch.randn(n, k, device=DEV, generator=gen) * 0.02).half()
        cublas = med(timer(lambda w_dense=w_dense, x=x: F.linear(x, w_dense)))
        del w_dense
        row: dict[str, Any] = {"n": n, "k": k, "m": 1, "cublas_fp16_us": cublas}
        for bits, (v, kk, kr) in LUT_BITS.items():
            cfg, t = random_layer(n, k, v, kk, kr, gen)
            raw = timer(lambda x=x, cfg=cfg, t=t: cuda_ext.gemv(x, cfg, t))
            row[f"ours_{bits}bit_us"] = med(raw)
            row[f"ours_{bits}bit_raw_us"] = raw
            row[f"ours_{bits}bit_config"] = f"v{v}_k{kk}"
            row[f"speedup_{bits}bit"] = cublas / med(raw)
            srt = sorted_gemv(timer, x, cfg, t, None, 0, 1.0)
            row[f"ours_{bits}bit_sorted_us"] = srt["ours_sorted_us"]
            if srt["ours_sorted_us"] is not None:
                row[f"speedup_{bits}bit_sorted"] = cublas / srt["ours_sorted_us"]

        rows.append(row)
        print(
            f"lut {n}x{k}: cublas {cublas:.1f}us "
            + " ".join(f"{b}b {row[f'ours_{b}bit_us']:.1f}us" for b in LUT_BITS)
            + " sorted "
            + " ".join(
                f"{b}b {row[f'ours_{b}bit_sorted_us'] or float('nan'):.1f}us" for b in LUT_BITS
            ),
            flush=True,
        )
    return {"rows": rows}


def gemm_section(timer: Timer, quick: bool) -> dict[str, Any]:
    gen = torch.Generator(device=DEV).manual_seed(2)
    rows = []
    shapes = GEMV_SHAPES[:1] + GEMV_SHAPES[3:4] if quick else GEMV_SHAPES
    for o, i in shapes:
        w_dense = (torch.randn(o, i, device=DEV, generator=gen) * 0.02).half()
        for name, (v, k, kr) in GEMV_CONFIGS.items():
            cfg, t = random_layer(o, i, v, k, kr, gen)
            deq = timer(lambda cfg=cfg, t=t: cuda_ext.dequant(cfg, t, torch.float16), reps=10)
            for tokens in (16, 128, 2048):
                x = torch.randn(tokens, i, device=DEV, generator=gen).half()
                cub = timer(lambda x=x, w=w_dense: F.linear(x, w), reps=10)
                ours = timer(lambda x=x, cfg=cfg, t=t: cuda_ext.gemm(x, cfg, t), reps=10)
                rows.append(
                    {
                        "out": o,
                        "in": i,
                        "config": name,
                        "tokens": tokens,
                        "cublas_fp16_us": med(cub),
                        "ours_us": med(ours),
                        "dequant_us": med(deq),
                        "ratio_ours_over_cublas": med(ours) / med(cub),
                        "dequant_share": med(deq) / med(ours),
                        "raw": {"cublas": cub, "ours": ours, "dequant": deq},
                    }
                )
                print(
                    f"gemm {o}x{i} {name} t={tokens}: ours {med(ours):.1f}us "
                    f"(dequant {med(deq):.1f}) cublas {med(cub):.1f}us",
                    flush=True,
                )
        del w_dense
    return {"rows": rows}


def torch_kmeans(x, w, init, iters):
    """Chunked PyTorch baseline: cdist + argmin per chunk, weighted mean update."""
    k, d = init.shape
    c = init.clone()
    times, inertia = [], float("nan")
    chunk = max(1, (2**31) // (4 * k))  # keep each distance block at <= 2 GiB
    for it in range(iters + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        labels = torch.empty(x.shape[0], dtype=torch.long, device=DEV)
        dist = torch.empty(x.shape[0], device=DEV)
        for s in range(0, x.shape[0], chunk):
            dd = torch.cdist(x[s : s + chunk], c)
            m = dd.min(1)
            labels[s : s + chunk] = m.indices
            dist[s : s + chunk] = m.values**2
        inertia = float((dist.double() * w.double()).sum())
        if it == iters:
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            break
        sums = torch.zeros(k, d, dtype=torch.float64, device=DEV).index_add_(
            0, labels, x.double() * w.double()[:, None]
        )
        ws = torch.zeros(k, dtype=torch.float64, device=DEV).index_add_(0, labels, w.double())
        c = torch.where(ws[:, None] > 0, (sums / ws.clamp_min(1e-300)[:, None]).float(), c)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return c, inertia, times


def kmeans_phase_ms(timer, x, w, init, mode: int, design: int) -> tuple[float, float]:
    """CUDA-event medians (ms) of one assignment and one centroid update from ``init``."""
    mu = x.mean(0)
    xc, cc = (x - mu).contiguous(), (init - mu).contiguous()
    k = init.shape[0]
    assign = med(timer(lambda: torch.ops.vptq_rs.kmeans_assign(xc, cc, mode, design), 5, 1))
    labels = torch.ops.vptq_rs.kmeans_assign(xc, cc, mode, design)[0]
    update = med(timer(lambda: torch.ops.vptq_rs.kmeans_update(xc, w, labels, k), 5, 1))
    return assign / 1e3, update / 1e3


def kmeans_section(quick: bool, baseline_iters: int, only: str = "") -> dict[str, Any]:
    n = 1_048_576 if quick else 7_340_032
    k, d = 65536, 8
    iters = 10 if quick else 100
    gen = torch.Generator(device=DEV).manual_seed(3)
    x = torch.randn(n, d, device=DEV, generator=gen) * 0.02
    w = torch.rand(n, device=DEV, generator=gen) + 0.1
    out: dict[str, Any] = {
        "n": n,
        "d": d,
        "k": k,
        "iters": iters,
        "data": "gaussian(0, 0.02) points, uniform(0.1, 1.1) weights",
    }
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    init = cuda_ext.seed_centroids(x, w, k, 0)
    torch.cuda.synchronize()
    out["seed_kmeanspp_s"] = time.perf_counter() - t0
    # keys: ours_{prec}_* for the merged design (the default so far), ours_tiled_{prec}_*
    # for the tiled one; both run from the same start
    variants = [
        (f"{prec}" if design == "merged" else f"tiled_{prec}", prec, design)
        for design in cuda_ext.KMEANS_DESIGNS
        for prec in ("fp16x1", "tf32x1", "tf32", "fp32")
        if design == "tiled" or prec not in cuda_ext.KMEANS_TILED_ONLY
    ]
    if only:  # e.g. "tf32x1,tiled_tf32x1": a shorter device call
        variants = [v for v in variants if v[0] in only.split(",")]
    timer = Timer()
    for key, prec, design in variants:
        mode, des = cuda_ext.KMEANS_MODES[prec], cuda_ext.KMEANS_DESIGNS[design]
        # one assignment and one update of the start: where an iteration's time goes
        assign_ms, update_ms = kmeans_phase_ms(timer, x, w, init, mode, des)
        out[f"ours_{key}_assign_ms"] = assign_ms
        out[f"ours_{key}_update_ms"] = update_ms
        kw = {"weights": w, "tol": 0, "init": init, "precision": prec, "design": design}
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, _, info = cuda_ext.kmeans(x, k, iters=iters, return_info=True, **kw)
        torch.cuda.synchronize()
        out[f"ours_{key}_s"] = time.perf_counter() - t0
        out[f"ours_{key}_inertia"] = info["inertia"]
        _, _, info_b = cuda_ext.kmeans(x, k, iters=baseline_iters, return_info=True, **kw)
        out[f"ours_{key}_inertia_at_{baseline_iters}"] = info_b["inertia"]
        out[f"ours_{key}_s_per_iter"] = out[f"ours_{key}_s"] / iters
        print(
            f"kmeans ours {key}: {out[f'ours_{key}_s']:.2f}s for {iters} iters, "
            f"inertia {info['inertia']:.6g}; assign {out[f'ours_{key}_assign_ms']:.1f} ms, "
            f"update {out[f'ours_{key}_update_ms']:.1f} ms",
            flush=True,
        )
    _, inertia_t, times = torch_kmeans(x, w, init, baseline_iters)
    per_iter = med(times[:-1]) if len(times) > 1 else times[0]
    out.update(
        {
            "torch_baseline_iters": baseline_iters,
            "torch_s_raw": times,
            "torch_s_per_iter": per_iter,
            f"torch_inertia_at_{baseline_iters}": inertia_t,
            "torch_s_extrapolated_to_iters": per_iter * iters,
        }
    )
    for key, _, _ in variants:
        out[f"speedup_{key}_per_iter"] = per_iter / out[f"ours_{key}_s_per_iter"]
        out[f"inertia_rel_diff_{key}_at_{baseline_iters}"] = (
            out[f"ours_{key}_inertia_at_{baseline_iters}"] / inertia_t - 1
        )
    print(
        f"kmeans torch: {per_iter:.3f}s/iter; speedup "
        + " ".join(f"{key} x{out[f'speedup_{key}_per_iter']:.1f}" for key, _, _ in variants),
        flush=True,
    )
    return out


def e2e_section(quick: bool) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from vptq_rs.nn import VQuantLinear

    cfg = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).half().to(DEV).eval()
    new = 32 if quick else 128
    ids = torch.randint(0, cfg.vocab_size, (1, 16), device=DEV)

    def decode_tps() -> list[float]:
        # a warm-up generate first: the first one pays cuBLAS and allocator set-up
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        out = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            torch.cuda.synchronize()
            out.append(new / (time.perf_counter() - t0))
        return out

    with torch.no_grad():
        fp16 = decode_tps()
        gen = torch.Generator(device=DEV).manual_seed(4)
        v, k, kr = GEMV_CONFIGS["v6_k4096"]
        swapped = 0
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, lin in list(parent.named_children()):
                    if not isinstance(lin, torch.nn.Linear):
                        continue
                    lcfg, t = random_layer(lin.out_features, lin.in_features, v, k, kr, gen)
                    q = VQuantLinear(lcfg, dtype=torch.float16, device=DEV)
                    q.load_packed(t, None, DEV)
                    setattr(parent, name, q)
                    swapped += 1
        quant = decode_tps()
    return {
        "model": "SmolLM2-135M architecture (random weights; speed does not depend on values)",
        "quant_config": "v6_k4096 (2 bits) on every decoder Linear",
        "layers_quantized": swapped,
        "new_tokens": new,
        "batch": 1,
        "fp16_tokens_per_s": fp16,
        "vptq_tokens_per_s": quant,
        "fp16_median": med(fp16),
        "vptq_median": med(quant),
        "ratio_vptq_over_fp16": med(quant) / med(fp16),
    }


def msvptq_section() -> dict[str, Any]:
    import contextlib
    import io

    site = os.environ.get("MS_VPTQ_SITE")  # where gpu_run.sh unpacked Microsoft's wheel
    if site and site not in sys.path:
        sys.path.append(site)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            import vptq  # type: ignore[import-not-found]
            from vptq.layers.vqlinear import VQuantLinear  # type: ignore[import-not-found]  # noqa: F401
    except Exception as exc:  # record whatever stops it: missing wheel, ABI mismatch, ...
        return {
            "loaded": False,
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "output": buf.getvalue()[-2000:],
        }
    text = buf.getvalue()
    kernels = "not found" not in text
    return {
        "loaded": True,
        "version": getattr(vptq, "__version__", "?"),
        "cuda_kernels_loaded": kernels,
        "import_output": text[-2000:],
        "note": "its CUDA kernels did not load beside this PyTorch, so there is nothing to time"
        if not kernels
        else "kernels loaded; timing not implemented",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a first check")
    ap.add_argument("--sections", default="copy,gemv,lut,gemm,kmeans,e2e,msvptq")
    ap.add_argument("--kmeans-baseline-iters", type=int, default=10)
    ap.add_argument(
        "--kmeans-variants",
        default="",
        help="comma-separated keys to time (tf32x1, tf32, fp32, tiled_tf32x1, ...); default all",
    )
    ap.add_argument(
        "--tag", default="", help="file name suffix, e.g. h200: writes gpu-<section>-<tag>.json"
    )
    args = ap.parse_args()
    if args.tag and not re.fullmatch(r"[a-z0-9_]+", args.tag):
        ap.error(f"--tag must be lower-case letters, digits or _, got {args.tag!r}")
    if cuda_ext.load() is None:
        sys.exit(f"CUDA extension unavailable: {cuda_ext.unavailable_reason()}")
    out = Path(args.out)
    secs = set(args.sections.split(","))
    timer = Timer()
    copy = copy_bandwidth(timer)
    print(f"copy bandwidth {copy['GBps']:.0f} GB/s", flush=True)
    if "copy" in secs:
        write(out, "copy", copy, args.tag)
    jobs = [
        ("gemv", lambda: gemv_section(timer, copy["GBps"], args.quick)),
        ("lut", lambda: lut_section(timer, args.quick)),
        ("gemm", lambda: gemm_section(timer, args.quick)),
        (
            "kmeans",
            lambda: kmeans_section(args.quick, args.kmeans_baseline_iters, args.kmeans_variants),
        ),
        ("e2e", lambda: e2e_section(args.quick)),
        ("msvptq", msvptq_section),
    ]
    for name, fn in jobs:
        if name not in secs:
            continue
        try:
            payload = fn()
        except Exception as exc:  # one failing section must not lose the others
            payload = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
            print(f"section {name} failed: {payload['error']}", flush=True)
        payload["quick"] = args.quick
        write(out, name, payload, args.tag)
        torch.cuda.empty_cache()
    print("done", flush=True)


if __name__ == "__main__":
    main()
