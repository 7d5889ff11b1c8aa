"""How much attention does each layer of the reference model put on a window's first token?

    .venv/bin/python benchmarks/gptq_sink.py [--windows 2]

Float model, eager attention, the first ``--windows`` WikiText-2 test windows of 2048
tokens (the quality table's evaluation windows). For every decoder layer: the attention
probability on key position 0, averaged over heads and over queries 16..2047 (queries near
the start attend to few keys anyway). Supports the GPTQ-vs-RTN note of the quality table
(``gptq_diagnose.py``, ``gptq_ablate.py``). Writes ``benchmarks/results/gptq-sink.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from gptq_diagnose import eval_windows  # noqa: E402

import _meta  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default=str(REPO / "runs/quality-cpu"))
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--skip", type=int, default=16, help="First queries left out.")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vptq_rs.models import decoder_layers

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    base = Path(args.work_dir) / "base_model"
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    tok = AutoTokenizer.from_pretrained(base)
    _, layers = decoder_layers(model)
    mass: dict[int, list[float]] = {i: [] for i in range(len(layers))}

    def hook(i: int) -> Any:
        def run(_m: Any, _a: Any, out: Any) -> None:
            probs = out[1]  # [1, heads, T, T] with eager attention
            mass[i].append(probs[0, :, args.skip :, 0].mean().item())

        return run

    handles = [lay.self_attn.register_forward_hook(hook(i)) for i, lay in enumerate(layers)]
    try:
        with torch.inference_mode():
            for w in eval_windows(tok, "wikitext2", args.windows, args.seqlen):
                model(torch.tensor([w]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    per_layer = {i: statistics.mean(v) for i, v in mass.items()}
    payload = {
        "model": "SmolLM2-135M-Instruct (Q4_1, dequantized)",
        "eval": f"WikiText-2 test, first {args.windows} windows of {args.seqlen}, "
        f"queries {args.skip}..{args.seqlen - 1}, mean over heads",
        "attention_on_first_token": per_layer,
        "median_over_layers": statistics.median(per_layer.values()),
        "wall_s": time.perf_counter() - t0,
        "load_avg_at_end": list(os.getloadavg()),
    }
    path = _meta.write("gptq-sink", payload)
    print({i: round(v, 3) for i, v in per_layer.items()})
    print(f"median over layers {payload['median_over_layers']:.3f}; wrote {path}")
    return payload


if __name__ == "__main__":
    main()
