"""benchmarks/quality.py's row machinery on a tiny random Llama and a tiny corpus folder."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(REPO / "benchmarks"))
import quality  # noqa: E402
from test_models import make_tiny_model  # noqa: E402

WORDS = ["vector", "codebook", "weight", "hessian", "column", "sweep", "residual", "centroid"]


def _text(n_words: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(WORDS), (n_words,), generator=g).tolist()
    return " ".join(WORDS[i] for i in idx)


def tiny_corpora(root: Path) -> Path:
    """The three corpora in the shared layout, a few hundred characters each."""
    (root / "wikitext-2-raw").mkdir(parents=True)
    (root / "wikitext-2-raw" / "wiki.test.raw").write_text(
        "\n".join(f" = heading {i} = \n\n {_text(30, i)} \n" for i in range(6))
    )
    (root / "ptb").mkdir()
    (root / "ptb" / "ptb.test.txt").write_text("\n".join(_text(20, 100 + i) for i in range(8)))
    (root / "c4").mkdir()
    docs = [_text(25, 1000 + i) for i in range(2000)]
    pq.write_table(pa.table({"text": docs}), root / "c4" / "c4_validation_2k.parquet")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("quality")
    # tiny matmuls on a shared machine: one thread avoids OpenMP waits (10x faster here)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {
        "root": root,
        "model": make_tiny_model(root, "llama"),
        "data": tiny_corpora(root / "data"),
    }
    torch.set_num_threads(threads)


def _argv(s: dict[str, Path], rows: str, *extra: str) -> list[str]:
    return [
        "--mode", "cpu", "--model", str(s["model"]), "--data-dir", str(s["data"]),
        "--rows", rows, "--out", str(s["root"] / "quality-test.json"),
        "--work-dir", str(s["root"] / "work"), "--nsamples", "2", "--calib-seqlen", "32",
        "--kiter", "3", "--seqlen", "64", "--limit", "2", "--limit-other", "2", "--quiet",
        "--no-report", *extra,
    ]  # fmt: skip


def test_rows_json_schema_and_resume(setup: dict[str, Path]) -> None:
    res = quality.main(_argv(setup, "fp,rtn2-g128,gptq3,vptq-v2k256"))
    out = setup["root"] / "quality-test.json"
    on_disk = json.loads(out.read_text())
    assert on_disk["rows"] == res["rows"]
    assert on_disk["settings"]["eval_limits"] == {"wikitext2": 2, "c4": 2, "ptb": 2}
    assert not on_disk["hessians"]["reused_from_work_dir"]
    rows = {r["row"]: r for r in on_disk["rows"]}
    # cpu execution order: FP, VPTQ and GPTQ by width, then RTN
    assert list(rows) == ["fp", "gptq3", "vptq-v2k256", "rtn2-g128"]
    for r in rows.values():
        assert r["status"] == "ok", r.get("traceback")
        assert r["model"] == quality.MODEL_LABEL
        assert set(r["ppl"]) == {"wikitext2", "c4", "ptb"}
        assert all(v > 1 for v in r["ppl"].values())
        assert all(e["windows"] == 2 for e in r["eval"].values())
        assert r["machine"] and r["peak_rss_mib" if r["method"] != "fp" else "bpw"] > 0
    assert rows["fp"]["bpw"] == 16.0
    # cpu mode evaluates in bfloat16 and checks the FP row against float32 once
    assert on_disk["settings"]["eval_dtype"] == "bfloat16"
    assert set(rows["fp"]["ppl_float32"]) == {"wikitext2", "c4", "ptb"}
    for ds, ref in rows["fp"]["ppl_float32"].items():
        assert rows["fp"]["ppl"][ds] == pytest.approx(ref, rel=0.05)
    assert "ppl_float32" not in rows["gptq3"]
    # packed rows are counted from the checkpoint; the grouped scalar row by formula
    assert rows["gptq3"]["bits"]["source"].startswith("validate_checkpoint")
    assert rows["vptq-v2k256"]["bits"]["source"].startswith("validate_checkpoint")
    assert rows["rtn2-g128"]["bits"]["source"].startswith("computed")
    assert 3 < rows["gptq3"]["bpw"] < 4
    # 2 bits + fp16 scale and zero per row and group: one group of 64 inputs in q/k/v/o/
    # gate/up (2.5 bits), of 128 in down (2.25); weights 28672 and 8192 per decoder layer
    assert rows["rtn2-g128"]["bpw"] == pytest.approx((28672 * 2.5 + 8192 * 2.25) / 36864)
    # quantizing changes the model; the float row is the baseline
    assert rows["gptq3"]["ppl"] != rows["fp"]["ppl"]
    assert 0 < rows["vptq-v2k256"]["mean_proxy_final"] < 1

    # --resume keeps finished rows untouched and adds only the new one
    again = quality.main(_argv(setup, "fp,gptq3,rtn4", "--resume"))
    rows2 = {r["row"]: r for r in again["rows"]}
    assert set(rows2) == {"fp", "rtn2-g128", "gptq3", "vptq-v2k256", "rtn4"}
    assert rows2["gptq3"] == rows["gptq3"]
    assert again["hessians"]["reused_from_work_dir"]
    assert len(again["invocations"]) == 2

    # other settings cannot be mixed into the same file; an existing file needs a flag
    with pytest.raises(SystemExit, match="other settings"):
        quality.main(_argv(setup, "fp", "--resume", "--kiter", "4"))
    with pytest.raises(SystemExit, match="exists"):
        quality.main(_argv(setup, "fp"))
    # a spent time budget starts no row and says which were left
    left = quality.main(_argv(setup, "rtn3,gptq2", "--resume", "--time-budget", "0"))
    assert left["stopped_by_time_budget"] == ["gptq2", "rtn3"]
    assert {r["row"] for r in left["rows"]} == set(rows2)


def test_row_table_and_selection() -> None:
    names = set(quality.ROWS)
    for b in (2, 3, 4):
        assert {f"rtn{b}", f"rtn{b}-g128", f"gptq{b}", f"gptq{b}-g128"} <= names
    vq = [n for n in names if n.startswith("vptq")]
    assert len(vq) == 18 and sum(n.endswith("-refine") for n in vq) == 9
    cpu = [r.name for r in quality.select_rows(None, "cpu")]
    assert "vptq-v12k4096r4096-refine" in cpu and "vptq-v8k65536" not in cpu
    assert len(quality.select_rows(None, "gpu")) == len(quality.ROWS) == 31
    assert cpu[:4] == ["fp", "vptq-v6k4096", "vptq-v4k256", "gptq2"]
    assert cpu[-1] == "vptq-v2k256-refine"
    with pytest.raises(SystemExit, match="unknown row"):
        quality.select_rows("fp,vptq-v9k7", "cpu")


def test_grouped_scalar_bits_by_hand() -> None:
    # 3 x 576 weights at 3 bits: 576*3 = 1728 bits = 54 words per row, no padding;
    # ceil(576/128) = 5 groups x 32 bits per row; act-order perm 576 x 16 bits
    b = quality.grouped_scalar_bits([(3, 576)], 3, 128, perm=True)
    assert b["index_padding_bits"] == 0
    assert b["total_bits"] == 3 * 1728 + 3 * 5 * 32 + 576 * 16
    assert b["bits_per_weight"] == pytest.approx(b["total_bits"] / (3 * 576))
    # 100 codes of 3 bits = 300 bits -> 10 words per row: 20 bits of padding
    assert quality.grouped_scalar_bits([(1, 100)], 3, 128, False)["index_padding_bits"] == 20
