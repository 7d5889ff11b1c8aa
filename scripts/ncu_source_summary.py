"""Where a kernel's instructions and stalls go, from Nsight Compute's SASS source page.

Reads the CSV that ``ncu --page source --csv --print-source sass`` writes (plain or gzipped)
and prints: the executed warp instructions, those in the step loop (runs of SASS lines with
one execution count that hold a step opcode: by default HMMA or LDSM, the tensor-core
kernel's; ``--step-ops LDS.128`` for the scalar tiled kernel's codebook-row load; a step's
unrolled copy, with the loads issued beside it) against the rest, the largest of those runs,
the sampled stall reasons, and with ``--top-stalls`` the instructions that hold the most
stall samples (a sample is charged to the instruction that could not issue, e.g. the first
use of a load's result).

    python scripts/ncu_source_summary.py profile.csv[.gz] [--top 12] [--step-ops HMMA,LDSM]
        [--top-stalls 0]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from pathlib import Path


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the SASS rows of the CSV (ncu's log lines before the header dropped)."""
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
    rows = list(csv.reader(io.StringIO(text)))
    start = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    return rows[start], [r for r in rows[start + 1 :] if len(r) == len(rows[start])]


def runs(counts: list[int]) -> list[tuple[int, int]]:
    """[first, last) of each run of consecutive lines with one execution count."""
    out, s = [], 0
    for i in range(1, len(counts) + 1):
        if i == len(counts) or counts[i] != counts[s]:
            out.append((s, i))
            s = i
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("--top", type=int, default=12, help="largest runs to list")
    ap.add_argument(
        "--step-ops", default="HMMA,LDSM", help="comma-separated opcodes that mark a step's run"
    )
    ap.add_argument(
        "--top-stalls", type=int, default=0, help="instructions with the most stall samples"
    )
    args = ap.parse_args()
    step_ops = [op for op in args.step_ops.split(",") if op]
    head, rows = read_rows(args.csv)
    src = head.index("Source")
    count = [int(r[head.index("Instructions Executed")] or 0) for r in rows]
    total = sum(count)
    step = other = 0
    listed = []
    for a, b in runs(count):
        n = count[a] * (b - a)
        is_step = any(op in rows[i][src] for i in range(a, b) for op in step_ops)
        if is_step:
            step += n
        else:
            other += n
        listed.append((n, a, b, is_step))
    hmma = sum(c for c, r in zip(count, rows, strict=True) if "HMMA" in r[src])
    print(f"{args.csv.name}: {total:,} warp instructions executed")
    if hmma:
        print(f"  HMMA: {hmma:,}; steps of two products: {hmma // 2:,}")
    print(f"  in the step loop: {step:,} ({100 * step / total:.1f}%)")
    print(f"  elsewhere: {other:,} ({100 * other / total:.1f}%)")
    print("largest runs (lines, executions x length, first instruction):")
    for n, a, b, is_step in sorted(listed, reverse=True)[: args.top]:
        first = rows[a][src].strip()[:48]
        tag = "step" if is_step else "    "
        print(f"  {tag} {a:5d}-{b - 1:<5d} {count[a]:>8,} x {b - a:<3d} = {n:>10,}  {first}")
    stalls = [c for c in head if c.startswith("stall_") and "Not Issued" not in c]
    sums = {c: sum(int(r[head.index(c)] or 0) for r in rows) for c in stalls}
    samples = sum(sums.values())
    print(f"stall samples: {samples:,}")
    for c, v in sorted(sums.items(), key=lambda kv: -kv[1]):
        if v:
            print(f"  {c[6:]:<20} {v:>7,} {100 * v / samples:5.1f}%")
    loop_stalls = sum(
        int(rows[i][head.index(c)] or 0)
        for _, a, b, is_step in listed
        if is_step
        for i in range(a, b)
        for c in stalls
    )
    print(f"  of them in the step loop: {loop_stalls:,} ({100 * loop_stalls / samples:.1f}%)")
    if args.top_stalls > 0:
        print_top_stalls(head, rows, stalls, samples, args.top_stalls)


def print_top_stalls(
    head: list[str], rows: list[list[str]], stalls: list[str], samples: int, top: int
) -> None:
    """The ``top`` instructions with the most stall samples: line, executions, samples (and
    their share of all), the instruction and its two largest reasons."""
    src, ex = head.index("Source"), head.index("Instructions Executed")
    cols = [head.index(c) for c in stalls]
    per_line = [(sum(int(r[i] or 0) for i in cols), n) for n, r in enumerate(rows)]
    print("instructions with the most stall samples (line, executions, samples):")
    for got, n in sorted(per_line, key=lambda t: (-t[0], t[1]))[:top]:
        if got == 0:
            break
        r = rows[n]
        why = sorted(((int(r[i] or 0), c[6:]) for i, c in zip(cols, stalls, strict=True)))
        reasons = ", ".join(f"{name} {v}" for v, name in reversed(why[-2:]) if v)
        text = r[src].strip()[:44]
        share = 100 * got / samples
        print(f"  {n:5d} {int(r[ex] or 0):>8,} {got:>6,} {share:4.1f}%  {text}  ({reasons})")


if __name__ == "__main__":
    main()
