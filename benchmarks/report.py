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


SECTIONS: dict[str, Callable[[], str | None]] = {"bitpack": bitpack, "kmeans": kmeans}


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
