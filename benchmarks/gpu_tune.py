"""Tuning measurements on the GPU: GEMV launch knobs, k-means block size, the quantizer's stages.

    python3 benchmarks/gpu_tune.py [--out DIR] [--sections gemv,placement,quantize,kmeans,overhead]

gemv: 1-token GEMV latency for every ``VPTQ_RS_GEMV_MIN_STEPS`` in 1, 2, 4, 8 (the tile is
capped so each codebook group takes at least that many pipeline steps) on the issue's five
shapes plus SmolLM2-135M's three, and SmolLM2-shaped decode tokens/s, cuBLAS fp16 timed in
the same process. Writes ``gpu-tune-gemv.json``.

placement: 1-token GEMV on the issue's five shapes for each value of the launch knob that
``PLACEMENT`` names per configuration (shared-memory cap of the L2 path; pipeline steps of
the shared-memory path). Writes ``gpu-tune-gemv-placement.json``.

quantize: one Linear of each SmolLM2-135M shape at v8/k65536 (with and without 256 residual
centroids, perm + norm, 100 k-means iterations) through ``quantize_layer`` on the GPU, with
the exact k-means++ seeding (one centroid per launch) and the batched one, and the batched
one with each k-means distance precision (``--kmeans_precision``); per-stage times,
proxy errors, and a cProfile of one layer. Weights and Hessians are random (a Hessian from
correlated Gaussian activations): timings do not depend on the values, and the proxy errors
compare the two seedings on equal terms. Writes ``gpu-tune-quantize.json``.

overhead: where a small layer's 1-token GEMV spends its time, for SmolLM2-135M's three
shapes and 4096x4096 at v6/k4096 and v8/k65536 against cuBLAS fp16 (``F.linear``): host time
per call (200 calls queued without a sync), GPU time with the L2 flushed (CUDA events), GPU
time per call inside a CUDA graph of 50 calls (no host cost, L2 warm), each for the op
through ``cuda_ext.gemv``, for ``VQuantLinear``'s forward (its fused path) and for
``ops.vq_linear`` on the module's packed tensors (its general path); then the kernels of one
forward (torch.profiler, after all timings). Writes ``gpu-tune-overhead.json``.

kmeans: one tiled k-means assignment at K = 65,536 (7.3M points at d = 8, 3.7M at d = 16):
tf32x1 against fp16x1, the latter at d = 8 with 384 and 256 threads a block
(``VPTQ_RS_KMEANS_THREADS``). Writes ``gpu-tune-kmeans.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_suite
from gpu_suite import DEV, GEMV_CONFIGS, GEMV_SHAPES, Timer, med, random_layer, write

from vptq_rs import cuda_ext

SMOL_SHAPES = [(576, 576), (1536, 576), (576, 1536)]
STEPS = (1, 2, 4, 8)


def _knob_sweep(
    shapes: list[tuple[int, int]], knobs: dict[str, tuple[str, tuple[int, ...]]], prefix: str
) -> list[dict[str, Any]]:
    """1-token GEMV per shape and configuration, once per value of that configuration's
    environment knob (``knobs[name] = (variable, values)``; row keys ``<prefix><value>_us``),
    cuBLAS fp16 timed once per shape."""
    timer = Timer()
    gen = torch.Generator(device=DEV).manual_seed(0)
    rows = []
    for o, i in shapes:
        x = torch.randn(1, i, device=DEV, generator=gen).half()
        w = (torch.randn(o, i, device=DEV, generator=gen) * 0.02).half()
        cublas = med(timer(lambda w=w, x=x: F.linear(x, w)))
        del w
        for name, (v, k, kr) in GEMV_CONFIGS.items():
            var, values = knobs[name]
            cfg, t = random_layer(o, i, v, k, kr, gen)
            row: dict[str, Any] = {"out": o, "in": i, "config": name, "knob": var}
            row["cublas_fp16_us"] = cublas
            for val in values:
                os.environ[var] = str(val)
                raw = timer(lambda x=x, cfg=cfg, t=t: cuda_ext.gemv(x, cfg, t, mode=0))
                row[f"{prefix}{val}_us"] = med(raw)
            os.environ.pop(var)
            rows.append(row)
            print(
                f"gemv {o}x{i} {name} {var}: cublas {cublas:.1f} "
                + " ".join(f"{val}: {row[f'{prefix}{val}_us']:.1f}" for val in values),
                flush=True,
            )
    return rows


def gemv_sweep() -> dict[str, Any]:
    knobs = dict.fromkeys(GEMV_CONFIGS, ("VPTQ_RS_GEMV_MIN_STEPS", STEPS))
    rows = _knob_sweep(SMOL_SHAPES + GEMV_SHAPES, knobs, "steps")
    e2e = {}
    for steps in STEPS:
        os.environ["VPTQ_RS_GEMV_MIN_STEPS"] = str(steps)
        e2e[f"steps{steps}"] = gpu_suite.e2e_section(quick=True)
        print(f"e2e steps {steps}: {e2e[f'steps{steps}']['vptq_median']:.1f} tok/s", flush=True)
    os.environ.pop("VPTQ_RS_GEMV_MIN_STEPS")
    return {"tokens": 1, "rows": rows, "e2e": e2e}


# Launch knobs for the placement study: the shared-memory cap of the L2-path pipeline (the
# rest of the SRAM is L1, where the big codebook is cached) and, for the shared-memory path,
# pipeline steps per group (a smaller tile lets two 512-thread blocks share an SM).
PLACEMENT = {
    "v8_k65536": ("VPTQ_RS_GEMV_L2_PIPE_KB", (0, 48, 96)),
    "v6_k4096": ("VPTQ_RS_GEMV_MIN_STEPS", (1, 8, 16)),
    "v12_k4096_r4096": ("VPTQ_RS_GEMV_MIN_STEPS", (1, 8, 16)),
}


def gemv_placement() -> dict[str, Any]:
    """1-token GEMV on the issue's five shapes for each knob value in ``PLACEMENT``."""
    return {"tokens": 1, "rows": _knob_sweep(GEMV_SHAPES, PLACEMENT, "")}


def kmeans_assign() -> dict[str, Any]:
    """One tiled k-means assignment (ms) at K = 65,536: fp16x1 at d = 8 with 384 and 256
    threads a block (``VPTQ_RS_KMEANS_THREADS``) against tf32x1, and at d = 16 (one
    m16n8k16 product against two m16n8k8)."""
    timer = Timer()
    gen = torch.Generator(device=DEV).manual_seed(3)
    rows = []
    for n, d in ((7_340_032, 8), (3_670_016, 16)):
        x = torch.randn(n, d, device=DEV, generator=gen) * 0.02
        c = x[torch.randperm(n, device=DEV, generator=gen)[:65536]].contiguous()
        row: dict[str, Any] = {"n": n, "d": d, "k": 65536}

        def assign_ms(mode: int, x=x, c=c) -> float:
            return med(timer(lambda: torch.ops.vptq_rs.kmeans_assign(x, c, mode, 1), 5, 1)) / 1e3

        row["tf32x1_ms"] = assign_ms(2)
        for threads in (384, 256) if d <= 8 else (256,):
            os.environ["VPTQ_RS_KMEANS_THREADS"] = str(threads)
            row[f"fp16x1_threads{threads}_ms"] = assign_ms(3)
        os.environ.pop("VPTQ_RS_KMEANS_THREADS")
        rows.append(row)
        print("kmeans assign " + " ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
        del x, c
    return {"rows": rows}


def _host_us(fn, calls: int = 200) -> float:
    """Host microseconds per call, calls queued back to back (the GPU keeps up or lags)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return host


def _graph_us(fn, calls: int = 50, replays: int = 20) -> float:
    """GPU microseconds per call inside one CUDA graph of ``calls`` calls (L2 warm)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (calls * replays)


def _kernels_of(fn, reps: int = 20) -> list[dict[str, Any]]:
    """Name, launches per call and mean GPU microseconds of every kernel one call runs."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if e.count and us:
            rows.append({"kernel": e.key[:120], "per_call": e.count / reps, "us": us / e.count})
    return sorted(rows, key=lambda r: -r["us"] * r["per_call"])


def small_layer_overhead() -> dict[str, Any]:
    """Host, flushed-GPU and graph times per 1-token call, op and module, vs cuBLAS fp16."""
    from vptq_rs import ops
    from vptq_rs.nn import VQuantLinear

    timer = Timer()
    gen = torch.Generator(device=DEV).manual_seed(5)
    rows, forwards = [], []
    for o, i in [*SMOL_SHAPES, (4096, 4096)]:
        x = torch.randn(1, i, device=DEV, generator=gen).half()
        w = (torch.randn(o, i, device=DEV, generator=gen) * 0.02).half()
        base = {
            "cublas_host_us": _host_us(lambda w=w, x=x: F.linear(x, w)),
            "cublas_flushed_us": med(timer(lambda w=w, x=x: F.linear(x, w))),
            "cublas_graph_us": _graph_us(lambda w=w, x=x: F.linear(x, w)),
        }
        for name in ("v6_k4096", "v8_k65536"):
            v, k, kr = GEMV_CONFIGS[name]
            cfg, t = random_layer(o, i, v, k, kr, gen)
            mod = VQuantLinear(cfg, dtype=torch.float16, device=DEV)
            mod.load_packed(t, None, DEV)
            calls = {
                "op": lambda x=x, cfg=cfg, t=t: cuda_ext.gemv(x, cfg, t),
                "module": lambda x=x, mod=mod: mod(x),
                # what the module's forward did before its fused path: checks on every call
                "general": lambda x=x, mod=mod: ops.vq_linear(x, mod.config, mod.packed()),
            }
            row: dict[str, Any] = {"out": o, "in": i, "config": name, **base}
            with torch.no_grad():
                for key, fn in calls.items():
                    row[f"{key}_host_us"] = _host_us(fn)
                    row[f"{key}_flushed_us"] = med(timer(fn))
                    row[f"{key}_graph_us"] = _graph_us(fn)
            rows.append(row)
            forwards.append(calls["module"])
            print(
                f"overhead {o}x{i} {name}: "
                + " ".join(f"{k} {v:.1f}" for k, v in row.items() if k.endswith("_us")),
                flush=True,
            )
    # the profiler last: it may leave launch hooks behind that slow later host timings
    for row, fn in zip(rows, forwards, strict=True):
        with torch.no_grad():
            row["module_kernels"] = _kernels_of(fn)
        print(f"kernels {row['out']}x{row['in']} {row['config']}:")
        for k in row["module_kernels"]:
            print(f"  {k['per_call']:.0f}x {k['us']:.1f} us {k['kernel'][:90]}", flush=True)
    return {"tokens": 1, "rows": rows}


def _hessian(n: int, gen: torch.Generator) -> torch.Tensor:
    """``E[x xᵀ]`` of correlated Gaussian activations ``[4n, n]`` with a nonzero mean."""
    mix = torch.randn(n, n, device=DEV, generator=gen) / n**0.5
    x = torch.randn(4 * n, n, device=DEV, generator=gen) @ mix + 0.1
    x = x * torch.rand(n, device=DEV, generator=gen).add(0.1)
    return (x.t() @ x / x.shape[0]).double()


def quantize_profile() -> dict[str, Any]:
    from vptq_rs.quantize.options import QuantOptions
    from vptq_rs.quantize.vptq import quantize_layer

    gen = torch.Generator(device=DEV).manual_seed(0)
    configs = {
        "v8_k65536": QuantOptions(
            vector_lens=(-1, 8), num_centroids=(-1, 65536), enable_perm=True, enable_norm=True
        ),
        "v8_k65536_r256": QuantOptions(
            vector_lens=(-1, 8),
            num_centroids=(-1, 65536),
            num_res_centroids=(-1, 256),
            enable_perm=True,
            enable_norm=True,
        ),
    }
    keys = ("time_kmeans_s", "time_sweep_s", "time_residual_s", "time_total_s")
    proxies = ("proxy_kmeans", "proxy_sweep", "proxy_residual", "proxy_final")
    rows = []
    default_max = cuda_ext.KPP_EXACT_MAX
    layers = {}
    for o, i in SMOL_SHAPES:
        layers[(o, i)] = (torch.randn(o, i, device=DEV, generator=gen) * 0.05, _hessian(i, gen))
    # warm-up: kernels, cuBLAS handles, the extension
    w, h = layers[SMOL_SHAPES[0]]
    quantize_layer(w, h, QuantOptions(vector_lens=(-1, 8), num_centroids=(-1, 256)), device=DEV)
    for cname, opts in configs.items():
        runs = (
            ("exact", "fp32"),
            ("batched", "fp32"),
            ("batched", "tf32"),
            ("batched", "tf32x1"),
            ("batched", "fp16x1"),
        )
        for seeding, precision in runs:
            cuda_ext.KPP_EXACT_MAX = 1 << 30 if seeding == "exact" else default_max
            popts = dataclasses.replace(opts, kmeans_precision=precision)
            for (o, i), (w, h) in layers.items():
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                res = quantize_layer(w, h, popts, device=DEV, name=f"{o}x{i}")
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
                row = {"config": cname, "seeding": seeding, "precision": precision}
                row.update({"out": o, "in": i, "wall_s": wall})
                row.update({k: res.stats.get(k) for k in keys + proxies})
                rows.append(row)
                print(
                    f"quantize {cname} {seeding} {precision} {o}x{i}: {wall:.2f}s "
                    + " ".join(f"{k[5:-2]} {row[k] or 0:.2f}" for k in keys)
                    + f" proxy {row['proxy_final']:.5f}",
                    flush=True,
                )
    cuda_ext.KPP_EXACT_MAX = default_max
    profiles = {}
    for cname, opts in configs.items():
        w, h = layers[(1536, 576)]
        prof = cProfile.Profile()
        prof.enable()
        quantize_layer(w, h, opts, device=DEV)
        torch.cuda.synchronize()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        profiles[cname] = buf.getvalue()
        print(buf.getvalue()[:3000], flush=True)
    return {"rows": rows, "cprofile_1536x576_tottime": profiles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--sections", default="gemv,quantize")
    args = ap.parse_args()
    out = Path(args.out)
    sections = args.sections.split(",")
    if cuda_ext.load() is None:  # registers the torch.ops the sections call
        raise SystemExit(f"CUDA kernels unavailable: {cuda_ext.unavailable_reason()}")
    if "quantize" in sections:
        write(out, "tune-quantize", quantize_profile())
    if "gemv" in sections:
        write(out, "tune-gemv", gemv_sweep())
    if "placement" in sections:
        write(out, "tune-gemv-placement", gemv_placement())
    if "kmeans" in sections:
        write(out, "tune-kmeans", kmeans_assign())
    if "overhead" in sections:
        write(out, "tune-overhead", small_layer_overhead())


if __name__ == "__main__":
    main()
