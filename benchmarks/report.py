"""Regenerate the result tables of README.md (and benchmarks/RESULTS.md) from results/*.json.

Tables sit between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` markers; this
script only rewrites what is between them, from the JSON the benchmark scripts wrote.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(r: dict) -> str:
    m = r["machine"]
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"


def bitpack() -> str | None:
    r = _load("bitpack")
    if r is None:
        return None
    lines = [
        f"Pack/unpack of {r['rows']:,} rows x {r['n']:,} codes; median of the runs; "
        f"{_machine(r)}; `{r['command']}`.",
        "",
        "| bits (main+res) | pack Mcodes/s | vs numpy | unpack Mcodes/s | vs numpy |",
        "|---|---|---|---|---|",
    ]
    for x in r["results"]:
        lines.append(
            f"| {x['index_bits']}+{x['res_bits']} | {x['pack_mcodes_per_s']:.0f} | "
            f"{x['pack_speedup_vs_numpy']:.1f}x | {x['unpack_mcodes_per_s']:.0f} | "
            f"{x['unpack_speedup_vs_numpy']:.1f}x |"
        )
    return "\n".join(lines)


def kmeans() -> str | None:
    r = _load("kmeans")
    if r is None:
        return None
    lines = [
        f"Weighted k-means, N = {r['n']:,}, d = {r['d']}, {r['iters']} iterations, "
        f"{r['threads']} threads; {_machine(r)}; `{r['command']}`.",
        "",
        "| k | vptq-rs s | faiss s | speedup | inertia vs faiss |",
        "|---|---|---|---|---|",
    ]
    for x in r["results"]:
        lines.append(
            f"| {x['k']} | {x['median_ours_s']:.2f} | {x['median_faiss_s']:.2f} | "
            f"{x['speedup_vs_faiss']:.2f}x | {x['inertia_rel_diff']:+.2%} |"
        )
    return "\n".join(lines)


def runtime_cpu() -> str | None:
    r = _load("runtime-cpu")
    if r is None:
        return None
    base = r.get("baseline", "vptq")
    lines = [
        f"CPU, {r['threads']} thread(s), median of {r['repeat']}; baseline: {base}; "
        f"{_machine(r)}; `{r['command']}`.",
        "",
        "| what | vptq-rs s | baseline s | speedup |",
        "|---|---|---|---|",
    ]
    for name, x in r["dequantize_14336x4096_fp16"].items():
        lines.append(
            f"| dequantize 14336x4096 {name} | {x['vptq_rs_median_s']:.3f} | "
            f"{x['vptq_median_s']:.3f} | {x['speedup']:.1f}x |"
        )
    fwd = r["smollm2_forward"]
    for key in ("forward_1_tokens", "forward_32_tokens"):
        x = fwd[key]
        lines.append(
            f"| SmolLM2-shaped forward, {key.split('_')[1]} token(s) | "
            f"{x['median_s']['vptq_rs']:.3f} | {x['median_s']['vptq']:.3f} | "
            f"{x['speedup_vs_vptq']:.1f}x |"
        )
    mem = fwd["memory"]
    lines += [
        "",
        f"Loaded quantized SmolLM2-shaped model: {mem['quantized_bytes'] / 2**20:.1f} MiB vs "
        f"{mem['dense_bytes'] / 2**20:.1f} MiB dense {mem['dense_dtype']} "
        f"({mem['ratio']:.2f}x smaller).",
    ]
    return "\n".join(lines)


def gpu(tag: str = "") -> str | None:
    """The GPU suite's tables from results/gpu-<section>[-<tag>].json (tag: another card)."""
    suffix = f"-{tag}" if tag else ""
    gemv, km, gemm, e2e, lut = (
        _load(f"gpu-{n}{suffix}") for n in ("gemv", "kmeans", "gemm", "e2e", "lut")
    )
    if gemv is None:
        return None
    env = gemv["env"]
    lines = [
        f"{env['device']}, driver {env['driver']}, torch {env['torch']}, CUDA {env['cuda']}; "
        f"`benchmarks/gpu_suite.py` (`results/gpu-*{suffix}.json`). "
        f"Device-to-device copy: {gemv['copy_GBps']:.0f} GB/s.",
        "",
        "Fused dequant-GEMV, 1 token (speedup < 1 means slower than cuBLAS fp16):",
        "",
    ]
    # the sorted GEMV (sorted_layout) where its layout applies: its own columns when it ran
    srt = any("ours_sorted_us" in x for x in gemv["rows"])
    head = "| out x in | config | cuBLAS fp16 us | vptq-rs us | speedup | % of copy bandwidth |"
    if srt:
        head += " sorted us | sorted speedup | sorted % of copy bandwidth (bytes read) |"
    # the tiled GEMV (tiled_layout) likewise
    til = any("ours_tiled_us" in x for x in gemv["rows"])
    if til:
        head += " tiled us | tiled speedup |"
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for x in gemv["rows"]:
        row = (
            f"| {x['out']}x{x['in']} | {x['config']} | {x['cublas_fp16_us']:.1f} | "
            f"{x['ours_auto_us']:.1f} | {x['speedup_vs_cublas_auto']:.2f}x | "
            f"{100 * x['fraction_of_copy_bw_auto']:.1f}% |"
        )
        if srt:
            us = x.get("ours_sorted_us")
            row += (
                f" {us:.1f} | {x['cublas_fp16_us'] / us:.2f}x | "
                f"{100 * x['fraction_of_copy_bw_sorted']:.1f}% "
                f"({100 * x['fraction_of_copy_bw_sorted_bytes_read']:.1f}%) |"
                if us is not None
                else " - | - | - |"
            )
        if til:
            us = x.get("ours_tiled_us")
            row += (
                f" {us:.1f} | {x['cublas_fp16_us'] / us:.2f}x |" if us is not None else " - | - |"
            )
        lines.append(row)
    if km is not None:
        names = {"tf32x1": "1xTF32", "tf32": "3xTF32", "fp32": "fp32", "fp16x1": "1xfp16"}
        if any(k.startswith("ours_tiled_") for k in km):  # the tiled design ran too
            names = {
                **{m: f"merged {n}" for m, n in names.items()},
                **{f"tiled_{m}": f"tiled {n}" for m, n in names.items()},
            }
        modes = [m for m in names if f"ours_{m}_s" in km]
        it = km["torch_baseline_iters"]
        lines += [
            "",
            f"GPU weighted k-means, N = {km['n']:,}, d = {km['d']}, K = {km['k']:,}, "
            f"{km['iters']} iterations from the same k-means++ start, against a chunked "
            f"PyTorch cdist+argmin timed for {it} iterations: "
            + "; ".join(
                f"{names[m]} {km[f'ours_{m}_s']:.1f} s ({km[f'speedup_{m}_per_iter']:.1f}x per "
                f"iteration, inertia after {it} iterations "
                f"{km[f'inertia_rel_diff_{m}_at_{it}']:+.1e} relative)"
                for m in modes
            )
            + ".",
        ]
    if lut is not None:
        cfgs = {b: lut["rows"][0].get(f"ours_{b}bit_config", "?") for b in (2, 3, 4)}
        lsrt = any(f"ours_{b}bit_sorted_us" in x for x in lut["rows"] for b in (2, 3, 4))
        lines += [
            "",
            "GEMV latency, 1 token, LUT-GEMM's shapes (us; speedup vs cuBLAS fp16 in brackets):",
            "",
            "| n x k | cuBLAS fp16 | "
            + " | ".join(f"{b}-bit ({cfgs[b]})" for b in (2, 3, 4))
            + (" | sorted " + " | sorted ".join(f"{b}-bit" for b in (2, 3, 4)) if lsrt else "")
            + " |",
            "|---|---|---|---|---|" + ("---|---|---|" if lsrt else ""),
        ]

        def cell(x, key, speed):
            return f"{x[key]:.1f} ({x[speed]:.2f}x)" if x.get(key) is not None else "-"

        for x in lut["rows"]:
            cells = [cell(x, f"ours_{b}bit_us", f"speedup_{b}bit") for b in (2, 3, 4)]
            if lsrt:
                cells += [
                    cell(x, f"ours_{b}bit_sorted_us", f"speedup_{b}bit_sorted") for b in (2, 3, 4)
                ]
            lines.append(
                f"| {x['n']}x{x['k']} | {x['cublas_fp16_us']:.1f} | " + " | ".join(cells) + " |"
            )
    if gemm is not None:
        worst = max(x["ratio_ours_over_cublas"] for x in gemm["rows"])
        best = min(x["ratio_ours_over_cublas"] for x in gemm["rows"])
        lines += [
            "",
            f"GEMM (dequantize + cuBLAS) at 16/128/2048 tokens: {best:.2f}x to {worst:.2f}x "
            "the time of cuBLAS fp16 (details in `results/gpu-gemm.json`).",
        ]
    if e2e is not None:
        lines += [
            "",
            f"Decode, batch 1, {e2e['model']}, {e2e['quant_config']}: "
            f"{e2e['vptq_median']:.1f} tokens/s vs {e2e['fp16_median']:.1f} fp16 (median of "
            f"{len(e2e['vptq_tokens_per_s'])} `generate` runs of {e2e['new_tokens']} tokens; "
            f"runs: {_runs(e2e['vptq_tokens_per_s'])} vs {_runs(e2e['fp16_tokens_per_s'])}).",
        ]
    return "\n".join(lines)


def gpu_goal(share: float = 0.6) -> str | None:
    """Issue 5's bandwidth goal against the bytes each layout kernel reads, on the two largest
    GEMV shapes of results/gpu-gemv.json: the goal's time (the issue's bytes at ``share`` of
    the copy bandwidth) beside the time the bytes of the layout a load picks (sorted where it
    applies, else tiled) take at the full copy rate."""
    gemv = _load("gpu-gemv")
    if gemv is None:
        return None
    copy = gemv["copy_GBps"] * 1e3  # bytes per us
    big = sorted({x["out"] * x["in"] for x in gemv["rows"]})[-1]
    head = (
        "| out x in | config | issue's bytes (MB) | goal: at most (us) | cuBLAS fp16 / 3 (us) "
        "| kernel | its time (us) | bytes it reads (MB) | those bytes at the copy rate (us) |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for x in gemv["rows"]:
        if x["out"] * x["in"] != big:
            continue
        # the layout kernel a load picks: sorted where it applies, else tiled
        name = "sorted" if x.get("ours_sorted_us") is not None else "tiled"
        us = x.get(f"ours_{name}_us")
        if us is None:
            continue
        read = x[f"{name}_bytes_read"]
        lines.append(
            f"| {x['out']}x{x['in']} | {x['config']} | {x['bytes_moved'] / 1e6:.1f} | "
            f"{x['bytes_moved'] / (share * copy):.1f} | {x['cublas_fp16_us'] / 3:.1f} | "
            f"{name} | {us:.1f} | {read / 1e6:.1f} | {read / copy:.1f} |"
        )
    return "\n".join(lines)


def smem_gather() -> str | None:
    """Shared-memory lookups alone (benchmarks/gpu_smem_gather.py, its last file by name): each
    pattern's rate and the time the codes of the largest shape would take at that rate,
    then, per config, the goal's time, cuBLAS fp16 / 3 and the kernel timed beside them."""
    files = sorted(RESULTS.glob("gpu-smem-gather-*.json"))
    if not files:
        return None
    r = json.loads(files[-1].read_text())
    configs = [k["config"] for k in r["kernels"]]
    head = (
        "| rows | bytes a row | order | lookups a us (M) | "
        + " | ".join(f"{c}: its codes (us)" for c in configs)
        + " |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for x in r["patterns"]:
        name = "none (no load)" if x["bytes_a_row"] == 0 else f"{x['rows']}"
        lines.append(
            f"| {name} | {x['bytes_a_row']} | {x['order']} | {x['lookups_per_us'] / 1e6:.2f} | "
            + " | ".join(f"{x['us_for_codes'][c]:.1f}" for c in configs)
            + " |"
        )
    lines.append("")
    head = (
        "| config | codes (M) | goal: at most (us) | cuBLAS fp16 / 3 (us) | kernel "
        "| its time (us) |"
    )
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for k in r["kernels"]:
        us = "-" if k["kernel_us"] is None else f"{k['kernel_us']:.1f}"
        lines.append(
            f"| {k['config']} | {k['codes'] / 1e6:.1f} | {k['goal_us']:.1f} | "
            f"{k['cublas_over_3_us']:.1f} | {k['kernel']} | {us} |"
        )
    return "\n".join(lines)


def _runs(xs: list[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in xs)


def _ppl_cell(r: dict, ds: str) -> str:
    v = (r.get("ppl") or {}).get(ds)
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:.2f}" if v < 1e4 else f"{v:.2e}"


def _quality_rows(r: dict) -> list[dict]:
    """Rows in table order (FP; then by width: RTN, GPTQ, VPTQ as quality.py lists them)."""
    from quality import ROWS

    order = {name: i for i, name in enumerate(ROWS)}
    width = {16: 0, 2: 1, 3: 2, 4: 3}
    return sorted(
        r["rows"],
        key=lambda x: (width.get(x["nominal_bits"], 9), order.get(x["row"], len(order))),
    )


def _windows(r: dict) -> str:
    ok = [x for x in r["rows"] if x.get("status") == "ok"]
    if not ok:
        return "no finished rows"
    ev = ok[0]["eval"]
    names = {"wikitext2": "WikiText-2", "c4": "C4 docs 1000-1999", "ptb": "PTB"}
    done = [f"{names[d]} {e['windows']} of {e['total_windows']} windows" for d, e in ev.items()]
    skipped = [names[d] for d in names if d not in ev]
    return ", ".join(done) + (f" ({' and '.join(skipped)} not evaluated)" if skipped else "")


def _quality_goal(rows: list[dict]) -> list[str]:
    """Issue 6's question, VPTQ vs GPTQ at equal true bits, answered conservatively: each
    VPTQ row against the GPTQ row with the fewest true bits that still has at least as many
    as the VPTQ row (codebooks make VPTQ's true bits land between GPTQ's widths)."""
    ok = [x for x in rows if x.get("status") == "ok"]
    gq = sorted((x for x in ok if x["method"] == "gptq"), key=lambda x: x["bpw"])
    lines, unmatched = [], []
    for v in (x for x in ok if x["method"] == "vptq"):
        g = next((x for x in gq if x["bpw"] >= v["bpw"]), None)
        if g is None:
            unmatched.append(f"{v['label']} ({v['bpw']:.2f})")
            continue
        cells = []
        for ds in ("wikitext2", "c4", "ptb"):
            pv, pg = v["ppl"].get(ds), g["ppl"].get(ds)
            if pv is None or pg is None:  # corpus not evaluated (cpu mode)
                cells.append("-")
                continue
            cells.append(f"{'lower' if pv < pg else '**higher**'} ({pv:.2f} vs {pg:.2f})")
        proxy = f"{v.get('mean_proxy_final', float('nan')):.4f} vs " + (
            f"{g.get('mean_proxy_final', float('nan')):.4f}"
        )
        lines.append(
            f"| {v['label']} ({v['bpw']:.2f}) | {g['label']} ({g['bpw']:.2f}) | "
            + " | ".join(cells)
            + f" | {proxy} |"
        )
    if not lines and not unmatched:
        return []
    out = [
        "",
        "VPTQ vs GPTQ with at least as many true bits (true bits per weight in brackets; "
        "perplexity VPTQ vs GPTQ; mean layer proxy error tr(dW H dW^T)/tr(W H W^T), VPTQ vs "
        "GPTQ). Each VPTQ row meets the GPTQ row with the fewest true bits that is not below "
        "its own, so 'lower' means VPTQ wins while spending no more bits:",
        "",
        "| VPTQ row | GPTQ row | WikiText-2 | C4 | PTB | proxy error |",
        "|---|---|---|---|---|---|",
        *lines,
    ]
    if unmatched:
        out += [
            "",
            "Not compared, since no GPTQ row has as many true bits (codebooks dominate the "
            f"bits of a model this small): {', '.join(unmatched)}.",
        ]
    return out


def _quality_one(name: str) -> list[str] | None:
    r = _load(name)
    if r is None:
        return None
    st = r["settings"]
    rows = _quality_rows(r)
    gpu = r["machine"].get("gpu")
    hs = r.get("hessians") or {}
    lines = []
    if r.get("smoke"):
        lines += [f"**{r['smoke']}**", ""]
    lines += [
        f"**{st['model_label']}**, `{r['benchmark']}`: its weights were Q4_1 before we "
        "quantized them, so **the 4-bit rows say nothing about float models**. "
        f"Calibration: {st['calibration']}; Hessians collected once "
        f"({hs.get('wall_s', float('nan')):.0f} s) and shared by every row; "
        f"k-means {st['kiter']} iterations. Perplexity at seqlen {st['eval_seqlen']} "
        f"({_eval_dtype(r)}): {_windows(r)}. True bits per weight count the quantized Linears "
        "(indices with padding, codebooks, scale/bias, perm; embeddings and lm_head stay "
        "float in every row): from the packed checkpoint (`validate_checkpoint`), for the "
        "group-128 rows (kept dense by the quantizer) as codes packed in 32-bit words + fp16 "
        "scale and fp16 zero per 128 inputs (+ int16 act-order perm for GPTQ). Quantize s: the "
        "quantizer's wall time without the shared Hessians; peak memory: process RSS during "
        f"quantization{' / GPU max_memory_allocated of the largest process' if gpu else ''}"
        f"{_gpu_workers(rows)}. "
        f"Machine: {_machine(r)}{f', {gpu}' if gpu else ''}; `{r['command']}`"
        f"{_invocations(r)}.",
        "",
        "| row | bits | true bpw | WikiText-2 | C4 | PTB | proxy err | quantize s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        if x.get("status") != "ok":
            err = x.get("error", "?").splitlines()[0][:120]
            lines.append(f"| {x['label']} | ~{x['nominal_bits']} | failed: {err} |{' |' * 6}")
            continue
        mem = f"{x['peak_rss_mib']:.0f}" if "peak_rss_mib" in x else "-"
        if "peak_gpu_mib" in x:
            mem += f" / {x['peak_gpu_mib']:.0f}"
        proxy = x.get("mean_proxy_final")
        lines.append(
            f"| {x['label']} | {'FP' if x['method'] == 'fp' else '~' + str(x['nominal_bits'])} "
            f"| {x['bpw']:.3f} | {_ppl_cell(x, 'wikitext2')} | {_ppl_cell(x, 'c4')} | "
            f"{_ppl_cell(x, 'ptb')} | {'-' if proxy is None else f'{proxy:.4f}'} | "
            f"{x['quant_wall_s']:.0f} | {mem} |"
        )
    machines = sorted({x["machine"] for x in rows if x.get("machine")})
    if len(machines) > 1:
        lines += ["", f"Rows ran on several machines (a resumed table): {'; '.join(machines)}."]
    left = r.get("stopped_by_time_budget") or []
    if not r.get("smoke"):
        # the mode's default rows not finished (a ROWS-limited resume records no budget stop)
        from quality import select_rows

        done = {x["row"] for x in rows if x.get("status") == "ok"}
        left = [x.name for x in select_rows(None, st["mode"]) if x.name not in done]
    if left:
        lines += ["", f"Not run yet (time budget reached, or rows added since): {', '.join(left)}."]
    hs_s = hs.get("wall_s")
    row_s = [x["row_wall_s"] for x in rows if x.get("status") == "ok" and "row_wall_s" in x]
    if isinstance(hs_s, (int, float)) and hs_s == hs_s and row_s:
        total = hs_s + sum(row_s)
        lines += [
            "",
            f"Wall time of this table: {total:.0f} s ({total / 3600:.1f} h) = Hessians "
            f"{hs_s:.0f} s + {len(row_s)} rows (quantize + evaluation) {sum(row_s):.0f} s, "
            f"summed over {len(r.get('invocations', [])) or 1} invocation(s).",
        ]
    lines += _quality_goal(rows)
    if name == "quality-cpu":
        lines += _gptq_vs_rtn()
    return lines


def _gptq_vs_rtn() -> list[str]:
    """Why GPTQ loses to RTN on this model, from gptq_diagnose.py / gptq_ablate.py."""
    diag = _load("gptq-diagnose")
    sinks = {b: _load(f"gptq-ablate-sink-w{b}g128") for b in (3, 4)}
    kinds = _load("gptq-ablate-w3g128")
    if diag is None or not any(sinks.values()):
        return []
    s = diag["summary_all"]["gptq3-g128"]
    ratio = s["median gptq/rtn"]
    worse = s["layers where gptq > rtn"]
    n = len(diag["per_layer"])
    v0 = diag["summary_by_kind"]["v_proj"]["gptq3-g128"]
    sink = _load("gptq-sink")
    sink_text = ""
    if sink is not None:
        mass = sink["attention_on_first_token"].values()
        big = [m for m in mass if m > 0.2]
        sink_text = (
            f" ({len(big)} of {len(mass)} layers put over 20% of their attention on it, up to "
            f"{max(mass):.0%}; `gptq_sink.py`)"
        )
    lines = [
        "",
        "**GPTQ below RTN on this model is not a quantizer bug.** The sweep matches an "
        "independent GPTQ written from the paper's equations (identical weights on synthetic "
        "layers, `tests/test_gptq_reference.py`), the layer-by-layer Hessian collection "
        "matches plain full-model forwards "
        f"({diag['collection_check']['max_rel_diff']:.0e} relative), and "
        "on the weights this table evaluated GPTQ w3 g128 has a lower output error than RTN w3 "
        f"g128 on {n - worse['wikitext2']} of {n} Linears on held-out WikiText-2 and on "
        f"{n - worse['c4_heldout']} of {n} on held-out C4 (median GPTQ/RTN error "
        f"{ratio['calib']:.2f} on the calibration Hessian, {ratio['c4_heldout']:.2f} on C4, "
        f"{ratio['wikitext2']:.2f} on WikiText-2; `gptq_diagnose.py`). It loses through ONE "
        f"token per window: the first, the model's attention sink{sink_text}. "
        "GPTQ minimizes the error averaged over tokens, where that token weighs 1/2048, and "
        "pushes error into its input direction: v_proj's output error on it is a median "
        f"{v0['median gptq/rtn']['wikitext2_pos0']:.1f}x RTN's "
        f"(mean relative error {v0['mean error gptq']['wikitext2_pos0']:.2f} vs "
        f"{v0['mean error rtn']['wikitext2_pos0']:.2f}). Swapping only that token's value "
        "vectors (`gptq_ablate.py`, WikiText-2 first windows, perplexity):",
        "",
        "| rows | all RTN | RTN, first-token values from GPTQ | all GPTQ "
        "| GPTQ, first-token values float | GPTQ, first-token values from RTN |",
        "|---|---|---|---|---|---|",
    ]
    for r in sinks.values():
        if r is None:
            continue
        p = {k: v["ppl"] for k, v in r["results"].items()}
        lines.append(
            f"| {r['rtn_row']} / {r['gptq_row']} ({r['eval'].split(', ')[1]}) | "
            f"{p['all_rtn+v_pos0_rtn']:.1f} | {p['all_rtn+v_pos0_gptq']:.1f} | "
            f"{p['all_gptq+v_pos0_gptq']:.1f} | {p['all_gptq+v_pos0_fp']:.1f} | "
            f"{p['all_gptq+v_pos0_rtn']:.1f} |"
        )
    if kinds is not None:
        p = {k: v["ppl"] for k, v in kinds["results"].items()}
        lines += [
            "",
            f"By Linear kind ({kinds['gptq_row']} into {kinds['rtn_row']}, same windows): GPTQ "
            f"v_proj alone {p['gptq_only_v_proj']:.1f}, GPTQ everywhere but v_proj "
            f"{p['gptq_except_v_proj']:.1f} (all RTN {p['all_rtn']:.1f}, all GPTQ "
            f"{p['all_gptq']:.1f}). The table keeps GPTQ as specified (no sink handling).",
        ]
    vq = _load("gptq-ablate-sink-vptq-v4k4096")
    if vq is not None:
        p = {k: v["ppl"] for k, v in vq["results"].items()}
        lines += [
            "",
            f"VPTQ does not show the effect: {vq['gptq_row']} with its own first-token values "
            f"{p['all_gptq+v_pos0_gptq']:.2f}, with float ones {p['all_gptq+v_pos0_fp']:.2f} "
            "(same windows).",
        ]
    return lines


def _invocations(r: dict) -> str:
    n = len(r.get("invocations", []))
    return f" (the last of {n} invocations of one resumed table)" if n > 1 else ""


def _gpu_workers(rows: list[dict]) -> str:
    n = {x["gpu_workers"] for x in rows if "gpu_workers" in x}
    return f" ({', '.join(map(str, sorted(n)))} quantizer processes share the GPU)" if n else ""


def _eval_dtype(r: dict) -> str:
    """Evaluation precision of a quality result, with the FP row's float32 check if any."""
    dt = r["settings"].get("eval_dtype", "float32")
    fp = next((x for x in r["rows"] if x.get("method") == "fp" and "ppl_float32" in x), None)
    if dt == "float32" or fp is None:
        return dt
    diffs = ", ".join(f"{ds} {fp['ppl'][ds]:.3f} vs {v:.3f}" for ds, v in fp["ppl_float32"].items())
    return f"{dt}; the FP row in {dt} vs float32: {diffs}"


def quality() -> str | None:
    parts = [p for n in ("quality-gpu", "quality-cpu", "quality-smoke") if (p := _quality_one(n))]
    if not parts:
        return None
    return "\n\n".join("\n".join(p) for p in parts)


def _secs(t: dict | None, key: str) -> str:
    v = (t or {}).get(key)
    return "-" if v is None else f"{v:.0f}"


def _load_avg(x: dict) -> str:
    a, b = x.get("load_avg_start"), x.get("load_avg_end")
    if a is None or b is None:
        return "-"
    return f"{a[0]:.1f} / {b[0]:.1f}"


def quantize() -> str | None:
    names = ("cpu-smollm2", "gpu-smollm2", "gpu-smollm2-h100-workers1", "gpu-smollm2-h200-workers4")
    runs = [r for r in (_load(f"quantize-{n}") for n in names) if r is not None]
    demo = _load("demo-cpu")
    if not runs and demo is None:
        return None
    lines = [
        "SmolLM2-135M-Instruct (Q4_1, dequantized), act-order + normalization, calibration on "
        "C4 documents 0-999; perplexity on the first WikiText-2 windows (seqlen 2048). Bits "
        "per weight count indices, codebooks, scale/bias, perm and padding (FORMAT.md). Wall "
        "time splits into Hessian collection (`-`: reused from the run above), the layers, "
        "evaluation (before and after), model loading (transformers' GGUF conversion; later "
        "commands read the converted copy from the GGUF cache) and packing; load average "
        "(1 min) at start / end of the run. Workers: `--workers` processes (on a GPU they share "
        "the device and overlap their host-side work):",
        "",
        "| machine | workers | config | true bpw | index bpw | wall s | Hessians s | layers s "
        "| eval s | load s | peak RSS MiB | mean proxy error | ppl before | ppl after | windows "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        where = r["machine"].get("gpu") or f"CPU, {r['machine']['cpus']} cores"
        for x in r["runs"]:
            ppl = x.get("ppl") or {}
            base = (ppl.get("base") or {}).get("ppl")
            after = (ppl.get("quantized") or {}).get("ppl")
            windows = (ppl.get("quantized") or {}).get("windows", "-")
            t = x.get("timings")
            rss = max(x["peak_rss_mib"], x.get("peak_rss_worker_mib") or 0)
            lines.append(
                f"| {where} | {_workers(x)} | {x['config']} | {x['bits']['bpw']:.2f} | "
                f"{x['bits']['index_bpw']:.2f} | {x['wall_s']:.0f} | {_secs(t, 'hessians_s')} | "
                f"{_secs(t, 'quantize_layers_s')} | {_secs(t, 'eval_s')} | "
                f"{_secs(t, 'load_model_s')} | {rss:.0f} | "
                f"{x['mean_proxy_final']:.4f} | "
                f"{'-' if base is None else f'{base:.2f}'} | "
                f"{'-' if after is None else f'{after:.2f}'} | {windows} | {_load_avg(x)} |"
            )
    if demo is not None:
        t = demo.get("timings")
        m = demo.get("machine", {})
        before, after = demo.get("ppl_before"), demo.get("ppl_after")
        lines.append(
            f"| CPU, {m.get('cpus')} cores | {_workers(demo)} | "
            "`make demo`: v4_k256, 16 windows, 20 iters | "
            f"{demo['bpw']:.2f} | {demo.get('index_bpw', float('nan')):.2f} | "
            f"{demo['wall_s']:.0f} | {_secs(t, 'hessians_s')} | "
            f"{_secs(t, 'quantize_layers_s')} | {_secs(t, 'eval_s')} | "
            f"{_secs(t, 'load_model_s')} | - | "
            f"{demo.get('mean_proxy_final') or float('nan'):.4f} | "
            f"{'-' if before is None else f'{before:.2f}'} | "
            f"{'-' if after is None else f'{after:.2f}'} | 4 | {_load_avg(m)} |"
        )
    return "\n".join(lines)


def _workers(run: dict) -> str:
    """``--workers`` of a recorded quantize command (1 when absent)."""
    cmd = run.get("command") or []
    cmd = cmd.split() if isinstance(cmd, str) else cmd
    return cmd[cmd.index("--workers") + 1] if "--workers" in cmd else "1"


FINETUNE_RESULTS = ("finetune_smollm2", "finetune_smollm2_lora")


def finetune() -> str | None:
    """One table over every fine-tuning result file that starts from the same checkpoint."""
    runs = [r for r in map(_load, FINETUNE_RESULTS) if r is not None and r.get("modes")]
    if not runs:
        return None
    r = runs[0]
    st = r["settings"]
    fp, before = r["ppl_fp"], r["ppl_before"]
    corpora = list(fp)
    n_eval = {c: fp[c]["windows"] for c in corpora}
    # a later file joins the table only if it measured the same checkpoint the same way
    same = [
        x
        for x in runs
        if all(
            abs(x["ppl_before"][c]["ppl"] - before[c]["ppl"]) < 1e-6
            and x["ppl_before"][c]["windows"] == before[c]["windows"]
            for c in corpora
        )
    ]
    bpw = next((x.get("bits_per_weight") for x in r["modes"].values()), None)
    lines = [
        f"**{r['model']}** at v6/k4096 ({'' if bpw is None else f'{bpw:.2f} '}true bits per "
        f"weight), batch {st['batch_size']} x {st['seq_len']} tokens per step (training "
        f"text: {r['training_text']}); perplexity at seqlen {st['eval_seqlen']} on "
        + ", ".join(f"{c} ({n_eval[c]} windows)" for c in corpora)
        + f"; {r.get('device_name') or r.get('device', '?')}. Every row starts from the same "
        "packed checkpoint (same perplexity before). Commands: "
        + "; ".join(f"`{x['command']}`" for x in same)
        + ".",
        "",
        "| model | steps | " + " | ".join(f"{c} ppl" for c in corpora) + " | gap to FP closed |",
        "|---|---|" + "---|" * len(corpora) + "---|",
        "| FP teacher | | " + " | ".join(f"{fp[c]['ppl']:.2f}" for c in corpora) + " | |",
        "| packed, before | | " + " | ".join(f"{before[c]['ppl']:.2f}" for c in corpora) + " | |",
    ]
    for x in same:
        for mode, m in x["modes"].items():
            after, gap = m["ppl_after"], m["gap_closed"]
            lines.append(
                f"| after `{mode}` ({m['train_seconds']:.0f} s) | {x['settings']['steps']} | "
                + " | ".join(f"{after[c]['ppl']:.2f}" for c in corpora)
                + " | "
                + ", ".join(f"{c} {gap[c]:.0%}" for c in corpora)
                + " |"
            )
    return "\n".join(lines)


def sass() -> str | None:
    """Hot-loop instruction counts of the two k-means assignment designs (static SASS)."""
    r = _load("sass-kmeans")
    if r is None:
        return None
    k = r["kernels"]
    # (merged template, tiled template, precision, products per 128 scores); older files name
    # the tiled kernels without the fp16 flag and the block size
    modes = [
        ("<1,1>", "<1,1,false,256>", "1xTF32", 1),
        ("<1,3>", "<1,3,false,256>", "3xTF32", 3),
        (None, "<1,1,true,384>", "1xfp16 (tiled only)", 1),
    ]
    lines = [
        f"Instructions in the hot loop of the k-means assignment kernels, d <= 8, per 128 "
        f"point-centroid scores (one m16n8k8 product's worth), from their {r['arch']} SASS "
        f"({r['nvcc']}; `{r['command']}`). Static counts: they show where issue slots go, not "
        "stalls; times need a GPU.",
        "",
        "| precision | merged | tiled | of which the products |",
        "|---|---|---|---|",
    ]
    for merged_t, tiled_t, name, products in modes:
        m = k.get(f"merged::assign_mma{merged_t}") if merged_t else None
        t = k.get(f"tiled::assign_mma{tiled_t}") or k.get(f"tiled::assign_mma{merged_t}")
        if t is None or (merged_t and m is None):
            continue
        merged_cell = f"{m['instructions_per_work'] * products:.1f}" if m else "-"
        lines.append(
            f"| {name} | {merged_cell} | {t['instructions_per_work'] * products:.1f} | {products} |"
        )
    m, t = k.get("merged::assign_simt<8>"), k.get("tiled::assign_simt<8>")
    if m is not None and t is not None:  # 128 scores x 8 FMAs over 32 lanes: 32 FFMA
        lines.append(
            f"| fp32 (CUDA cores) | {m['instructions_per_work'] * 32:.1f} | "
            f"{t['instructions_per_work'] * 32:.1f} | 0 (32 FFMA) |"
        )
    g = _load("sass-gemv")
    if g is not None:
        # the newest earlier count of the same kernels (sass-gemv-<commit>.json; before commit
        # 431c817 one instantiation served layers with and without a residual codebook)
        earlier = [(json.loads(p.read_text()), p) for p in RESULTS.glob("sass-gemv-*.json")]
        before, before_path = max(earlier, key=lambda e: e[0]["time"], default=(None, None))
        old = f"commit {before['source_commit']}" if before else None
        lines += [
            "",
            f"The same count for the fused GEMV at 1 token (fp16), per code (one codebook vector "
            f"of v weights), at commit {g.get('source_commit', '?')}"
            + (f" and at {old} (`{before_path.name}`)" if before else "")
            + f"; `{g['command']}`:",
            "",
            "| v | codebook | residual | instructions per code |" + (f" {old} |" if before else ""),
            "|---|---|---|---|" + ("---|" if before else ""),
        ]
        for name, r in g["kernels"].items():
            m = re.search(r"<__half,(\d+),1,(true|false),(true|false)>", name)
            if m is None:
                continue
            v, smem, res = int(m.group(1)), m.group(2) == "true", m.group(3) == "true"
            codes = r["work_instructions"] / v  # v FFMA per code and token
            row = (
                f"| {v} | {'shared memory' if smem else 'L1/L2'} | {'yes' if res else 'no'} | "
                f"{r['instructions'] / codes:.1f} |"
            )
            if before:
                b = before["kernels"].get(name) or before["kernels"].get(
                    name.rsplit(",", 1)[0] + ">"
                )
                row += f" {b['instructions'] / (b['work_instructions'] / v):.1f} |" if b else " - |"
            lines.append(row)
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[], str | None]] = {
    "bitpack": bitpack,
    "kmeans": kmeans,
    "runtime-cpu": runtime_cpu,
    "gpu": gpu,
    "gpu-h200": lambda: gpu("h200"),
    "gpu-goal": gpu_goal,
    "smem-gather": smem_gather,
    "sass": sass,
    "quantize": quantize,
    "quality": quality,
    "finetune": finetune,
}


def render(text: str, only: list[str] | None = None) -> str:
    for name, make in SECTIONS.items():
        if only is not None and name not in only:
            continue
        body = make()
        if body is None:
            continue
        pattern = re.compile(rf"(<!-- results:{name} -->).*?(<!-- /results:{name} -->)", re.DOTALL)
        text = pattern.sub(lambda m, b=body: f"{m.group(1)}\n{b}\n{m.group(2)}", text)
    return text


def main(only: list[str] | None = None) -> None:
    """Regenerate every section (or only the named ones) of README.md and RESULTS.md."""
    for path in (ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md"):
        if path.is_file():
            new = render(path.read_text(), only)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text(new)
            os.replace(tmp, path)
            print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Regenerate the README/RESULTS result tables.")
    ap.add_argument("sections", nargs="*", help=f"some of {', '.join(SECTIONS)} (default: all)")
    names = ap.parse_args().sections
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}")
    main(names or None)
