"""Peak memory of a quantization run: resident memory (and GPU memory with --num-gpus 1).

The model is a random Llama with SmolLM2-135M's shapes (hidden 576, intermediate 1536,
9/3 heads, vocab 49152, tied embeddings), truncated to ``--layers`` decoder layers (30 =
the full size), saved in fp16 with a character tokenizer; no download is needed. The run
is ``vptq-rs quantize`` in a subprocess; its ``summary.json`` records peak RSS and, on
CUDA, the peak GPU memory per phase (Hessians, layers, packing/eval). A second
subprocess only loads the model, for the baseline RSS of torch + transformers + weights.

    python benchmarks/reliability_memory.py [--layers 2] [--num-gpus 0] [--name memory-cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_models import CALIB_TEXT, char_tokenizer  # noqa: E402

from _meta import write  # noqa: E402


def smollm2_shaped(layers: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--num-gpus", type=int, default=0)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    name = args.name or ("memory-gpu" if args.num_gpus else "memory-cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(smollm2_shaped(args.layers))
        model = model.to(torch.float16)
        model.save_pretrained(tmp / "model")
        char_tokenizer().save_pretrained(tmp / "model")
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
        del model
        (tmp / "calib.txt").write_text(CALIB_TEXT * 4)

        load_only = (
            "import vptq_rs.models as m; from vptq_rs.quantize.run import _peak_rss; "
            f"m.load_model({str(tmp / 'model')!r}); print(_peak_rss())"
        )
        base = subprocess.run(
            [sys.executable, "-c", load_only], capture_output=True, text=True, check=True
        )
        argv = [
            "quantize",
            "--model",
            str(tmp / "model"),
            "--calib",
            str(tmp / "calib.txt"),
            "--output_dir",
            str(tmp / "out"),
            "--nsamples",
            str(args.nsamples),
            "--seq_len",
            str(args.seq_len),
            "--vector_lens",
            "-1",
            "8",
            "--num_centroids",
            "-1",
            "256",
            "--kiter",
            "10",
            "--eval_dataset",
            "none",
            "--num_gpus",
            str(args.num_gpus),
            "--quiet",
        ]
        cmd = [sys.executable, "-c", "from vptq_rs.cli import main; main()", *argv]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            sys.exit(f"quantize failed ({res.returncode}):\n{res.stderr[-6000:]}")
        wall = time.perf_counter() - t0
        (run,) = list((tmp / "out").glob("*/*/*"))
        summary = json.loads((run / "summary.json").read_text())
    write(
        name,
        {
            "what": "peak memory of vptq-rs quantize on a SmolLM2-135M-shaped random model",
            "model": {
                "shape": "SmolLM2-135M (hidden 576, inter 1536, 9/3 heads, vocab 49152)",
                "decoder_layers": args.layers,
                "dtype": "float16",
                "param_bytes": params,
                "one_decoder_layer_bytes": layer_bytes,
            },
            "quantize_argv": argv,
            "wall_s": wall,
            "load_only_peak_rss_bytes": int(base.stdout.strip().splitlines()[-1]),
            "memory": summary.get("memory"),
            "timings": summary.get("timings"),
            "num_linear_layers": summary.get("num_layers"),
        },
    )


if __name__ == "__main__":
    main()
