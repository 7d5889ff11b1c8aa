"""Which GPTQ weights cost perplexity? Swap RTN and GPTQ weights by Linear kind (issue 6).

    .venv/bin/python benchmarks/gptq_ablate.py [--rtn rtn3-g128] [--gptq gptq3-g128]
        [--windows 4] [--variants all]

Takes the finished quantize runs of two quality-table rows (``runs/quality-cpu/runs/ROW``)
and evaluates WikiText-2 perplexity (first ``--windows`` windows of 2048, the table's
protocol) of mixtures: every Linear from one row except one kind (or one range of decoder
layers) from the other; and whole rows where only the value vector of each window's FIRST
token (every head's attention sink in this model) comes from other weights (fp, RTN or
GPTQ), via a hook on ``v_proj``. Writes ``benchmarks/results/<--out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import _meta  # noqa: E402

SINK = "v_pos0_"  # variant suffix: v_proj's output at position 0 from fp/rtn/gptq weights
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def row_dir(work: Path, row: str) -> Path:
    found = sorted((work / "runs" / row).glob("*/*/*/layers"))
    if len(found) != 1:
        raise SystemExit(f"error: expected one finished run of {row} under {work}, found {found}")
    return found[0]


def load_row(layers: Path) -> dict[str, Any]:
    """``{linear name: fp32 weight}`` of a run: packed checkpoint if any, else dense files."""
    import torch

    from vptq_rs.quantize.run import load_layer_weight

    packed = layers.parent / "packed_model"
    if packed.is_dir():
        from vptq_rs.checkpoint import load_packed

        _, lay, _ = load_packed(packed)
        return {n: q.dequantize(torch.float32) for n, q in lay.items()}
    return {
        f.name.removesuffix(".safetensors"): load_layer_weight(f, torch.float32)
        for f in sorted(layers.glob("*.safetensors"))
    }


def variants(names: list[str], n_layers: int) -> dict[str, set[str]]:
    """Name -> the Linears that take the GPTQ weights (the rest take RTN's)."""
    out: dict[str, set[str]] = {"all_rtn": set(), "all_gptq": set(names)}
    # the first token of a window is every head's attention sink: its value vector is
    # computed with other weights than the rest of the window's (see SINK)
    for base in ("all_rtn", "all_gptq"):
        for src in ("fp", "rtn", "gptq"):
            out[f"{base}+v_pos0_{src}"] = out[base]
    for k in KINDS:
        out[f"gptq_only_{k}"] = {n for n in names if n.endswith(k)}
        out[f"gptq_except_{k}"] = {n for n in names if not n.endswith(k)}
    step = 5
    for a in range(0, n_layers, step):
        sel = {n for n in names if a <= int(n.split(".")[2]) < a + step}
        out[f"gptq_only_layers_{a}-{a + step - 1}"] = sel
    return out


def pos0(weight: Any) -> Any:
    """Forward hook: the output at position 0 recomputed with ``weight`` (no bias here)."""

    def hook(_m: Any, args: tuple[Any, ...], out: Any) -> Any:
        out = out.clone()
        out[:, 0] = args[0][:, 0] @ weight.t().to(out.dtype)
        return out

    return hook


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default=str(REPO / "runs/quality-cpu"))
    ap.add_argument("--rtn", default="rtn3-g128")
    ap.add_argument("--gptq", default="gptq3-g128")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--variants", default="all", help="Comma-separated variant names or 'all'.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="gptq-ablate")
    args = ap.parse_args(argv)

    import torch

    from vptq_rs.evaluate import perplexity
    from vptq_rs.models import load_model

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    model, tok = load_model(work / "base_model")
    model.eval()
    rtn = load_row(row_dir(work, args.rtn))
    gptq = load_row(row_dir(work, args.gptq))
    names = sorted(rtn)
    plan = variants(names, int(model.config.num_hidden_layers))
    if args.variants != "all":
        plan = {k: plan[k] for k in args.variants.split(",")}
    fp = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    results: dict[str, Any] = {}
    for label, chosen in plan.items():
        t = time.perf_counter()
        with torch.no_grad():
            for n in names:
                model.get_submodule(n).weight.copy_(gptq[n] if n in chosen else rtn[n])
        hooks = []
        if SINK in label:
            src = {"fp": fp, "rtn": rtn, "gptq": gptq}[label.split(SINK)[1]]
            for n in names:
                if n.endswith("v_proj"):
                    hooks.append(model.get_submodule(n).register_forward_hook(pos0(src[n])))
        try:
            r = perplexity(model, tok, "wikitext2", seqlen=2048, limit=args.windows, progress=False)
        finally:
            for h in hooks:
                h.remove()
        results[label] = {
            "ppl": r["ppl"],
            "gptq_linears": len(chosen),
            "seconds": time.perf_counter() - t,
        }
        print(f"{label:32s} ppl {r['ppl']:9.3f}  ({len(chosen)} GPTQ linears)", flush=True)
    payload = {
        "model": "SmolLM2-135M-Instruct (Q4_1, dequantized)",
        "rtn_row": args.rtn,
        "gptq_row": args.gptq,
        "eval": f"WikiText-2 test, first {args.windows} windows of 2048",
        "results": results,
        "wall_s": time.perf_counter() - t0,
        "load_avg_at_end": list(os.getloadavg()),
    }
    path = _meta.write(args.out, payload)
    print(f"wrote {path}")
    print(json.dumps({k: round(v["ppl"], 3) for k, v in results.items()}))
    return payload


if __name__ == "__main__":
    main()
