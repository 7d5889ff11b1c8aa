"""Why does GPTQ lose to RTN on SmolLM2 (issue 6)? Layer output errors on held-out text.

    .venv/bin/python benchmarks/gptq_diagnose.py [--work-dir runs/quality-cpu] [--windows 4]

Takes the weights the quality table evaluated (the finished quantize runs of its RTN and
GPTQ rows under ``--work-dir``) and measures, for every quantized Linear, the relative
output error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` under several second moments ``H = E[x xᵀ]``
of the layer's input:

* ``calib``: the Hessian files the rows were quantized with (C4 documents 0-999);
* ``c4_heldout``: the first windows of C4 documents 1000-1999 (same source, unseen text);
* ``wikitext2``: the first windows of WikiText-2 test (the table's evaluation text);
* ``wikitext2_pos0``: only the first token of each of those windows, the one every
  attention head of this model uses as its sink.

Held-out moments come from plain full-model forwards with hooks on every Linear (float
weights everywhere: the inputs VPTQ-style independent layers are quantized for). The same
hooks check the layer-by-layer collection: ``collect_hessians`` is re-run on the first
calibration windows and compared with those windows through the hooks.
GPTQ better on ``calib`` but worse on held-out text would mean over-fitting the calibration
Hessian; worse on ``calib`` a broken sweep. Nothing here picks a setting: it measures the
table's rows. Writes ``benchmarks/results/gptq-diagnose.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from gptq_ablate import load_row, row_dir  # noqa: E402

import _meta  # noqa: E402

PAIRS = [(f"rtn{b}{g}", f"gptq{b}{g}") for b in (3, 4) for g in ("", "-g128")]
MOMENTS = ("calib", "c4_heldout", "wikitext2", "wikitext2_pos0")


def _group_of(name: str) -> str:
    """The Linear whose input ``name`` shares (q/k/v and gate/up read the same x)."""
    head, leaf = name.rsplit(".", 1)
    first = {"k_proj": "q_proj", "v_proj": "q_proj", "gate_proj": "up_proj"}.get(leaf, leaf)
    return f"{head}.{first}"


def moments_of(model: Any, windows: list[list[int]], names: list[str]) -> dict[str, Any]:
    """``{"all": {linear: E[x xᵀ]}, "pos0": {linear: E[x₀ x₀ᵀ]}}`` (fp64) by full forwards;
    ``x₀`` is a window's first token."""
    import torch
    from tqdm import tqdm

    owners = sorted({_group_of(n) for n in names})
    sums: dict[str, dict[str, Any]] = {"all": {}, "pos0": {}}
    counts = {"all": 0, "pos0": 0}
    handles = []

    def hook(name: str) -> Any:
        def run(_m: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()[0].float()  # [T, n]
            g = (x.t() @ x).double()  # fp32 Gram of one window, fp64 total
            x0 = x[0].double()
            for key, val in (("all", g), ("pos0", torch.outer(x0, x0))):
                sums[key][name] = sums[key].get(name, 0) + val

        return run

    for n in owners:
        handles.append(model.get_submodule(n).register_forward_pre_hook(hook(n)))
    try:
        with torch.inference_mode():
            for w in tqdm(windows, desc="moments", unit="win"):
                model(torch.tensor([list(w)]), use_cache=False)
                counts["all"] += len(w)
                counts["pos0"] += 1
    finally:
        for h in handles:
            h.remove()
    return {key: {n: sums[key][_group_of(n)] / counts[key] for n in names} for key in sums}


def eval_windows(tok: Any, dataset: str, count: int, seqlen: int) -> list[list[int]]:
    """The first ``count`` evaluation windows of ``dataset`` (the perplexity protocol's)."""
    from vptq_rs.data import eval_text
    from vptq_rs.evaluate import tokenize_corpus

    ids = tokenize_corpus(tok, eval_text(dataset))[0].tolist()
    return [ids[i * seqlen : (i + 1) * seqlen] for i in range(count)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default=str(REPO / "runs/quality-cpu"))
    ap.add_argument("--result", default=str(_meta.RESULTS / "quality-cpu.json"))
    ap.add_argument("--windows", type=int, default=4, help="Held-out windows per corpus.")
    ap.add_argument("--check-windows", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="gptq-diagnose")
    args = ap.parse_args(argv)

    import torch

    from vptq_rs.data import calibration_windows
    from vptq_rs.hessian import collect_hessians, hessian_file, load_hessian
    from vptq_rs.models import linear_groups, load_model
    from vptq_rs.quantize.gptq import proxy_error

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    table = json.loads(Path(args.result).read_text())
    st = table["settings"]
    work = Path(args.work_dir)
    hdir = Path(table["hessians"].get("reused_from") or work / "hessians")
    model, tok = load_model(work / "base_model")
    model.eval()
    groups = linear_groups(model)
    names = [n for g in groups for n in g.names]
    group_of = {n: g for g in groups for n in g.names}

    # 1. layer-by-layer collection == plain full forwards on the same calibration windows
    calib = calibration_windows(tok, "c4", st["nsamples"], st["calib_seqlen"], st["seed"])
    calib = calib[: args.check_windows]
    full = moments_of(model, calib, names)["all"]
    check = {}
    with tempfile.TemporaryDirectory() as tmp:
        collect_hessians(model, calib, tmp, progress=False)
        for g in groups:
            h, _, _ = load_hessian(hessian_file(tmp, g.layer_index, g.key))
            ref = full[g.names[0]]
            check[f"{g.layer_index}_{g.key}"] = ((h - ref).norm() / ref.norm()).item()
    model.to("cpu")
    del full
    print(f"collection check: max relative difference {max(check.values()):.2e}", flush=True)

    # 2. held-out moments
    wiki = moments_of(model, eval_windows(tok, "wikitext2", args.windows, args.seqlen), names)
    c4 = moments_of(model, eval_windows(tok, "c4", args.windows, args.seqlen), names)["all"]
    held = {"c4_heldout": c4, "wikitext2": wiki["all"], "wikitext2_pos0": wiki["pos0"]}

    # 3. the evaluated weights of every RTN/GPTQ row under each moment
    rows = {r: load_row(row_dir(work, r)) for pair in PAIRS for r in pair}
    per_layer: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        g = group_of[name]
        h_cal, _, _ = load_hessian(hessian_file(hdir, g.layer_index, g.key))
        w = model.get_submodule(name).weight.detach().float()
        hs = {"calib": h_cal, **{k: v[name] for k, v in held.items()}}
        per_layer[name] = {
            r: {m: proxy_error(weights[name], w, h) for m, h in hs.items()}
            for r, weights in rows.items()
        }

    def summary(kind: str | None) -> dict[str, Any]:
        sel = [n for n in names if kind is None or n.endswith(kind)]
        out: dict[str, Any] = {}
        for rtn, gptq in PAIRS:
            out[gptq] = {
                "median gptq/rtn": {
                    m: statistics.median(per_layer[n][gptq][m] / per_layer[n][rtn][m] for n in sel)
                    for m in MOMENTS
                },
                "layers where gptq > rtn": {
                    m: sum(per_layer[n][gptq][m] > per_layer[n][rtn][m] for n in sel)
                    for m in MOMENTS
                },
                "mean error rtn": {
                    m: statistics.mean(per_layer[n][rtn][m] for n in sel) for m in MOMENTS
                },
                "mean error gptq": {
                    m: statistics.mean(per_layer[n][gptq][m] for n in sel) for m in MOMENTS
                },
            }
        return out

    kinds = sorted({n.rsplit(".", 1)[-1] for n in names})
    payload = {
        "model": "SmolLM2-135M-Instruct (Q4_1, dequantized)",
        "rows_from": str(work),
        "calibration_hessians": str(hdir),
        "held_out": f"first {args.windows} windows of {args.seqlen} of WikiText-2 test and of"
        " C4 documents 1000-1999",
        "collection_check": {
            "windows": len(calib),
            "max_rel_diff": max(check.values()),
            "per_group": check,
        },
        "summary_all": summary(None),
        "summary_by_kind": {k: summary(k) for k in kinds},
        "per_layer": per_layer,
        "wall_s": time.perf_counter() - t0,
        "load_avg_at_end": list(os.getloadavg()),
    }
    path = _meta.write(args.out, payload)
    for kind in kinds:
        s = payload["summary_by_kind"][kind]["gptq3-g128"]["median gptq/rtn"]
        print(kind, "median gptq3-g128/rtn3-g128:", {m: round(v, 3) for m, v in s.items()})
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
