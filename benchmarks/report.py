"""Regenerate the result tables of README.md (and benchmarks/RESULTS.md) from results/*.json.

Tables sit between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` markers; this
script only rewrites what is between them, from the JSON the benchmark scripts wrote.
"""

from __future__ import annotations

import json
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


def gpu() -> str | None:
    gemv, km, gemm, e2e = (_load(n) for n in ("gpu-gemv", "gpu-kmeans", "gpu-gemm", "gpu-e2e"))
    if gemv is None:
        return None
    env = gemv["env"]
    lines = [
        f"{env['device']}, driver {env['driver']}, torch {env['torch']}, CUDA {env['cuda']}; "
        f"`benchmarks/gpu_suite.py`. Device-to-device copy: {gemv['copy_GBps']:.0f} GB/s.",
        "",
        "Fused dequant-GEMV, 1 token (speedup < 1 means slower than cuBLAS fp16):",
        "",
        "| out x in | config | cuBLAS fp16 us | vptq-rs us | speedup | % of copy bandwidth |",
        "|---|---|---|---|---|---|",
    ]
    for x in gemv["rows"]:
        lines.append(
            f"| {x['out']}x{x['in']} | {x['config']} | {x['cublas_fp16_us']:.1f} | "
            f"{x['ours_auto_us']:.1f} | {x['speedup_vs_cublas_auto']:.2f}x | "
            f"{100 * x['fraction_of_copy_bw_auto']:.1f}% |"
        )
    if km is not None:
        lines += [
            "",
            f"GPU weighted k-means, N = {km['n']:,}, d = {km['d']}, K = {km['k']:,}, "
            f"{km['iters']} iterations: {km['ours_tf32_s']:.1f} s (3xTF32), "
            f"{km['speedup_tf32_per_iter']:.1f}x a chunked PyTorch cdist+argmin per iteration; "
            f"inertia after 10 iterations from the same start differs by "
            f"{km['inertia_rel_diff_tf32_at_10']:+.1e} (relative).",
        ]
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
            f"{e2e['vptq_median']:.1f} tokens/s vs {e2e['fp16_median']:.1f} fp16.",
        ]
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[], str | None]] = {
    "bitpack": bitpack,
    "kmeans": kmeans,
    "runtime-cpu": runtime_cpu,
    "gpu": gpu,
}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        body = make()
        if body is None:
            continue
        pattern = re.compile(rf"(<!-- results:{name} -->).*?(<!-- /results:{name} -->)", re.DOTALL)
        text = pattern.sub(lambda m, b=body: f"{m.group(1)}\n{b}\n{m.group(2)}", text)
    return text


def main() -> None:
    for path in (ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md"):
        if path.is_file():
            new = render(path.read_text())
            path.write_text(new)
            print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
