"""scripts/ncu_source_summary.py on a small SASS source page written here (no GPU, no ncu)."""

from __future__ import annotations

import csv
import gzip
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ncu_source_summary.py"
HEADER = ["Address", "Source", "Instructions Executed", "stall_long_sb", "stall_barrier"]
# a run of one line outside the loop, a two-line step run, a barrier
ROWS = [
    ["0x10", "  MOV R1, R2", "10", "0", "0"],
    ["0x20", "  LDS.128 R4, [R8]", "100", "5", "0"],
    ["0x30", "  FFMA R1, R2, R3, R1", "100", "1", "0"],
    ["0x40", "  BAR.SYNC.DEFER_BLOCKING 0x0", "10", "0", "7"],
]


def write_page(path: Path) -> None:
    with gzip.open(path, "wt", newline="") as f:
        f.write("==PROF== Connected to process 1\n")  # ncu's log lines come first
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(HEADER)
        w.writerows(ROWS)


def summary(path: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_step_ops_pick_the_loop(tmp_path):
    page = tmp_path / "page.csv.gz"
    write_page(page)
    scalar = summary(page, "--step-ops", "LDS.128")
    assert "220 warp instructions executed" in scalar
    assert "in the step loop: 200 (90.9%)" in scalar
    assert "elsewhere: 20 (9.1%)" in scalar
    assert "stall samples: 13" in scalar
    assert "of them in the step loop: 6 (46.2%)" in scalar
    # the default opcodes (HMMA, LDSM) find no step here
    assert "in the step loop: 0 (0.0%)" in summary(page)


def test_top_stalls_rank_instructions(tmp_path):
    page = tmp_path / "page.csv.gz"
    write_page(page)
    lines = summary(page, "--top-stalls", "2").splitlines()
    at = lines.index("instructions with the most stall samples (line, executions, samples):")
    first, second = lines[at + 1], lines[at + 2]
    assert "BAR.SYNC" in first and "53.8%" in first and "(barrier 7)" in first
    assert "LDS.128" in second and "(long_sb 5)" in second
    assert len(lines) == at + 3  # only the two asked for
