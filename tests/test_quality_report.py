"""benchmarks/report.py's VPTQ-vs-GPTQ comparison: pairs by true bits, never by name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402


def _row(name: str, method: str, bpw: float, ppl: dict[str, float]) -> dict:
    return {
        "row": name,
        "label": name,
        "method": method,
        "bpw": bpw,
        "ppl": ppl,
        "status": "ok",
        "mean_proxy_final": 0.01,
    }


def test_each_vptq_row_meets_the_cheapest_gptq_row_with_no_fewer_bits() -> None:
    ppl = {"wikitext2": 50.0, "c4": 60.0, "ptb": 70.0}
    rows = [
        _row("gptq2", "gptq", 2.05, {k: 1e6 for k in ppl}),
        _row("gptq3", "gptq", 3.05, {"wikitext2": 40.0, "c4": 90.0, "ptb": 80.0}),
        _row("gptq4", "gptq", 4.05, {k: 30.0 for k in ppl}),
        _row("v6", "vptq", 2.85, ppl),
        _row("big", "vptq", 18.7, ppl),
        _row("broken", "vptq", 2.0, ppl) | {"status": "failed"},
    ]
    text = "\n".join(report._quality_goal(rows))
    lines = [ln for ln in text.splitlines() if ln.startswith("| v6")]
    # 2.85 bpw is matched with the 3.05-bpw GPTQ row, not the 2-bit one it is named after
    assert len(lines) == 1 and "gptq3 (3.05)" in lines[0]
    assert "**higher** (50.00 vs 40.00)" in lines[0]
    assert "lower (60.00 vs 90.00)" in lines[0] and "lower (70.00 vs 80.00)" in lines[0]
    # no GPTQ row has 18.7 bits: listed as not compared; failed rows are left out
    assert "Not compared" in text and "big (18.66)" not in text and "big (18.70)" in text
    assert "broken" not in text


def test_corpora_not_evaluated_show_a_dash() -> None:
    rows = [
        _row("gptq3", "gptq", 3.05, {"wikitext2": 40.0}),
        _row("v6", "vptq", 2.85, {"wikitext2": 30.0}),
    ]
    line = next(ln for ln in report._quality_goal(rows) if ln.startswith("| v6"))
    assert "lower (30.00 vs 40.00) | - | - |" in line


def test_quality_script_bad_input_is_one_line_and_exit_2() -> None:
    import subprocess

    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "quality.py"),
            "--mode",
            "cpu",
            "--rows",
            "nope",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown row(s) nope")


def test_readme_and_results_tables_match_the_committed_json() -> None:
    """Every generated table in README.md and RESULTS.md is what report.py makes of
    benchmarks/results/*.json now: no number edited by hand, none left stale."""
    for path in (REPO / "README.md", REPO / "benchmarks" / "RESULTS.md"):
        text = path.read_text()
        assert report.render(text) == text, f"{path.name}: run python benchmarks/report.py"


def test_gpu_tables_of_another_card_come_from_their_tagged_files() -> None:
    body = report.gpu("h200")
    assert body is not None and body.startswith("NVIDIA H200")
    assert "gpu-*-h200.json" in body


def test_smem_gather_table_reads_the_newest_file_and_marks_untimed_kernels(
    tmp_path, monkeypatch
) -> None:
    """The shared-memory lookup table: one row a pattern, one a config, a dash where the
    kernel was not timed (``--no-kernels``), and the last file by name wins."""

    def pattern(words: int, order: str, per_us: float) -> dict:
        codes = {"v6_k4096": 39.1e6 / per_us, "v8_k65536": 29.4e6 / per_us}
        return {
            "table": f"w{words}",
            "bytes_a_row": 4 * words,
            "rows": 4096,
            "order": order,
            "lookups_per_us": per_us,
            "us_for_codes": codes,
        }

    def kernel(config: str, us: float | None) -> dict:
        return {
            "config": config,
            "codes": 39.1e6,
            "goal_us": 32.7,
            "cublas_over_3_us": 59.1,
            "kernel": "sorted",
            "kernel_us": us,
        }

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    assert report.smem_gather() is None
    old = {"patterns": [pattern(1, "random", 1e6)], "kernels": [kernel("v6_k4096", 1.0)]}
    new = {
        "patterns": [pattern(0, "random", 2e6), pattern(3, "consecutive", 1e6)],
        "kernels": [kernel("v6_k4096", 59.0), kernel("v8_k65536", None)],
    }
    (tmp_path / "gpu-smem-gather-run31a.json").write_text(json.dumps(old))
    (tmp_path / "gpu-smem-gather-run32a.json").write_text(json.dumps(new))
    lines = report.smem_gather().splitlines()
    assert lines[2] == "| none (no load) | 0 | random | 2.00 | 19.6 | 14.7 |"
    assert lines[3] == "| 4096 | 12 | consecutive | 1.00 | 39.1 | 29.4 |"
    assert lines[-2] == "| v6_k4096 | 39.1 | 32.7 | 59.1 | sorted | 59.0 |"
    assert lines[-1] == "| v8_k65536 | 39.1 | 32.7 | 59.1 | sorted | - |"
