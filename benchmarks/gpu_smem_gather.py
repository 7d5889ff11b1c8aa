"""How fast can any kernel look codes up in shared memory? A measured floor for issue 5's goal.

Written in session 30 and not run yet: no device call after run 30a got a machine (none in
sessions 31 and 32 either). Its CUDA source compiled for sm_90 on the CPU machine
(nvcc from PyPI's nvidia-cuda-nvcc, torch 2.15's headers), but no kernel of it has run.

The GEMV goal (60% of the copy bandwidth over the packed bytes) leaves about 33 us for the
two largest layers. Every kernel here spends most of its time on shared-memory lookups: a
codebook row per code (gather, histogram, tiled kernels) or an activation per column
(sorted kernel). This script times those lookups alone, with nothing else in the loop but a
random number and an XOR, on every SM at once:

- ``w1``: 4-byte words (an fp32 activation; the sorted kernel's random loads),
- ``w3``: 12-byte rows as three 4-byte loads (a v6 fp16 codebook row, 4096 rows, 48 KB),
- ``w4``: 16-byte rows as one 16-byte load (a v8 fp16 codebook row, 8192 rows, 128 KB: the
  cluster kernel's tile),
- ``none``: the same loop with no load (the row number goes into the XOR), so the loop's own
  instructions can be told apart from the lookups,

each at random rows (a hash per lane and step) and at consecutive rows (a warp's 32 lanes
read 32 adjacent rows: no bank conflicts). From each rate it derives how long the lookups of
28672x8192 take by themselves (39.1M codes at v6, 29.4M at v8) and sets that beside the
goal's time, cuBLAS fp16 / 3, and the sorted and tiled kernels, all timed in the same process
(``--no-kernels`` leaves the two kernels out, and with them the extension's build).

    python benchmarks/gpu_smem_gather.py --out benchmarks/results --label run32a [--no-kernels]

Writes ``<out>/gpu-smem-gather-<label>.json``; ``python benchmarks/report.py smem-gather``
turns the last of those files (by name) into the README table between
``<!-- results:smem-gather -->`` markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_suite

from vptq_rs import cuda_ext

CUDA_SRC = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cstdint>

// Each of the block's threads looks up `iters` rows of a table staged in shared memory and
// XORs their words (so no load can be dropped). S: 4-byte words a row (1, 3 or 4; 4 is one
// 16-byte load; 0 loads nothing and XORs the row number: the loop's own cost).
// kRandom: a per-lane LCG picks the row; else a warp reads 32 adjacent rows.
template <int S, bool kRandom>
__global__ void __launch_bounds__(1024, 1)
    smem_gather(const uint32_t* __restrict__ table, int rows, int iters, uint32_t* out,
                uint32_t seed) {
  extern __shared__ __align__(16) uint32_t tab[];
  for (int i = threadIdx.x; i < rows * S; i += blockDim.x) tab[i] = table[i];
  __syncthreads();
  const uint32_t mask = static_cast<uint32_t>(rows - 1);
  const uint32_t lane = threadIdx.x & 31u;
  uint32_t s = seed ^ ((blockIdx.x * blockDim.x + threadIdx.x) * 2654435761u);
  uint32_t seq = (threadIdx.x >> 5) * 977u * 32u + lane;
  uint32_t acc = 0u;
#pragma unroll 8
  for (int it = 0; it < iters; ++it) {
    uint32_t r;
    if (kRandom) {
      s = s * 1664525u + 1013904223u;
      r = (s >> 9) & mask;
    } else {
      r = seq & mask;
      seq += 32u;
    }
    const uint32_t* p = tab + r * S;
    if constexpr (S == 4) {
      const uint4 v = *reinterpret_cast<const uint4*>(p);
      acc ^= v.x ^ v.y ^ v.z ^ v.w;
    } else if constexpr (S == 3) {
      acc ^= p[0] ^ p[1] ^ p[2];
    } else if constexpr (S == 1) {
      acc ^= p[0];
    } else {
      acc ^= r;
    }
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

template <int S, bool R>
static void launch(const torch::Tensor& table, int64_t rows, int64_t iters, torch::Tensor& out,
                   int64_t blocks, int64_t threads) {
  const size_t smem = static_cast<size_t>(rows) * S * 4;
  auto k = smem_gather<S, R>;
  AT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(smem)));
  k<<<blocks, threads, smem, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint32_t*>(table.data_ptr<int32_t>()), static_cast<int>(rows),
      static_cast<int>(iters), reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()), 12345u);
  AT_CUDA_CHECK(cudaGetLastError());
}

torch::Tensor gather(torch::Tensor table, int64_t rows, int64_t words, bool random,
                     int64_t iters, int64_t blocks, int64_t threads) {
  TORCH_CHECK(table.is_cuda() && table.scalar_type() == torch::kInt32, "table: CUDA int32");
  TORCH_CHECK(table.numel() >= rows * words && (rows & (rows - 1)) == 0, "table: rows");
  auto out = torch::empty({blocks * threads}, table.options());
  if (words == 0) random ? launch<0, true>(table, rows, iters, out, blocks, threads)
                         : launch<0, false>(table, rows, iters, out, blocks, threads);
  else if (words == 1) random ? launch<1, true>(table, rows, iters, out, blocks, threads)
                              : launch<1, false>(table, rows, iters, out, blocks, threads);
  else if (words == 3) random ? launch<3, true>(table, rows, iters, out, blocks, threads)
                              : launch<3, false>(table, rows, iters, out, blocks, threads);
  else if (words == 4) random ? launch<4, true>(table, rows, iters, out, blocks, threads)
                              : launch<4, false>(table, rows, iters, out, blocks, threads);
  else TORCH_CHECK(false, "words: 0, 1, 3 or 4");
  return out;
}
"""
CPP_DECL = (
    "torch::Tensor gather(torch::Tensor table, int64_t rows, int64_t words, bool random, "
    "int64_t iters, int64_t blocks, int64_t threads);"
)
# name -> (4-byte words a row, rows in the table); "none" times the loop without a load
TABLES = {"none": (0, 8192), "w1": (1, 8192), "w3": (3, 4096), "w4": (4, 8192)}
SHAPE = (28672, 8192)
CODES = {  # config -> (codes of SHAPE: vector rows x columns, the kernel that takes it)
    "v6_k4096": (-(-SHAPE[0] // 6) * SHAPE[1], "sorted"),
    "v8_k65536": (-(-SHAPE[0] // 8) * SHAPE[1], "tiled"),
}


def kernel_times(timer: gpu_suite.Timer, copy_gbps: float, ours: bool) -> list[dict[str, Any]]:
    """cuBLAS fp16 and, with ``ours``, the fastest kernel of each config on SHAPE, timed as
    gpu_suite does."""
    gen = torch.Generator(device=gpu_suite.DEV).manual_seed(0)
    o, i = SHAPE
    x = torch.randn(1, i, device=gpu_suite.DEV, generator=gen).half()
    w = (torch.randn(o, i, device=gpu_suite.DEV, generator=gen) * 0.02).half()
    cublas = gpu_suite.med(timer(lambda w=w: F.linear(x, w)))
    del w
    rows = []
    for name, (codes, kernel) in CODES.items():
        cfg, t = gpu_suite.random_layer(o, i, *gpu_suite.GEMV_CONFIGS[name], gen)
        moved = gpu_suite.layer_bytes(t) + x.numel() * 2 + o * 2
        got = {}
        if ours:
            ref = F.linear(x.float(), cuda_ext.dequant(cfg, t, torch.float32))
            run = gpu_suite.sorted_gemv if kernel == "sorted" else gpu_suite.tiled_gemv
            got = run(timer, x, cfg, t, ref, moved, copy_gbps)
        rows.append(
            {
                "config": name,
                "codes": codes,
                "issue_bytes": moved,
                "goal_us": moved / (0.6 * copy_gbps * 1e9) * 1e6,
                "cublas_fp16_us": cublas,
                "cublas_over_3_us": cublas / 3,
                "kernel": kernel,
                "kernel_us": got.get(f"ours_{kernel}_us"),
            }
        )
        del t
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--label", default="", help="file name suffix: gpu-smem-gather-<label>.json")
    ap.add_argument("--iters", type=int, default=4096, help="lookups a thread")
    ap.add_argument(
        "--no-kernels",
        action="store_true",
        help="skip the sorted and tiled kernels (and the extension's build); cuBLAS still runs",
    )
    args = ap.parse_args()
    if args.label and not re.fullmatch(r"[a-z0-9_]+", args.label):
        ap.error(f"--label must be lower-case letters, digits or _, got {args.label!r}")
    if args.iters < 64:
        ap.error(f"--iters must be at least 64, got {args.iters}")
    if not args.no_kernels and cuda_ext.load() is None:
        sys.exit(f"CUDA extension unavailable: {cuda_ext.unavailable_reason()}")
    from torch.utils.cpp_extension import load_inline

    mod = load_inline(
        "vptq_rs_smem_gather",
        cpp_sources=[CPP_DECL],
        cuda_sources=[CUDA_SRC],
        functions=["gather"],
        extra_cuda_cflags=["-O3"],
        verbose=False,
    )
    timer = gpu_suite.Timer()
    copy_gbps = gpu_suite.copy_bandwidth(timer)["GBps"]
    sms = torch.cuda.get_device_properties(gpu_suite.DEV).multi_processor_count
    threads = 1024
    table = torch.randint(-(2**31), 2**31 - 1, (8192 * 4,), dtype=torch.int32, device="cuda")
    lookups = sms * threads * args.iters
    patterns = []
    for name, (words, trows) in TABLES.items():
        for random in (True, False):
            raw = timer(
                lambda w=words, r=trows, rnd=random: mod.gather(
                    table, r, w, rnd, args.iters, sms, threads
                ),
                reps=20,
                flush=False,
            )
            us = gpu_suite.med(raw)
            per_us = lookups / us
            row = {
                "table": name,
                "bytes_a_row": 4 * words,
                "rows": trows,
                "order": "random" if random else "consecutive",
                "lookups": lookups,
                "median_us": us,
                "raw_us": raw,
                "lookups_per_us": per_us,
                "us_for_codes": {c: codes / per_us for c, (codes, _) in CODES.items()},
            }
            patterns.append(row)
            print(
                f"{name} {row['order']}: {per_us / 1e3:.2f}G lookups/s; "
                + ", ".join(f"{c} {t:.1f} us" for c, t in row["us_for_codes"].items()),
                flush=True,
            )
    kernels = kernel_times(timer, copy_gbps, not args.no_kernels)
    for k in kernels:
        print(
            f"{k['config']}: goal {k['goal_us']:.1f} us, cuBLAS/3 {k['cublas_over_3_us']:.1f} "
            f"us, {k['kernel']} {k['kernel_us'] or float('nan'):.1f} us",
            flush=True,
        )
    payload = {
        "copy_GBps": copy_gbps,
        "shape": list(SHAPE),
        "threads": threads,
        "blocks": sms,
        "iters": args.iters,
        "patterns": patterns,
        "kernels": kernels,
    }
    gpu_suite.write(Path(args.out), "smem-gather", payload, args.label)  # adds env, atomic


if __name__ == "__main__":
    main()
