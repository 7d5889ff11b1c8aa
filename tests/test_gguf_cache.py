"""The converted-GGUF cache: keys, completeness marker, atomic store, opt-out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _runtime_helpers import tiny_llama, tiny_tokenizer
from transformers import AutoTokenizer, LlamaForCausalLM

from vptq_rs import gguf_cache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VPTQ_RS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VPTQ_RS_GGUF_CACHE", raising=False)
    return tmp_path / "cache" / "gguf"


def _fake_gguf(tmp_path: Path, body: bytes = b"GGUF" + bytes(100)) -> Path:
    p = tmp_path / "m.Q4_1.gguf"
    p.write_bytes(body)
    return p


def _tiny() -> LlamaForCausalLM:
    return tiny_llama(100)


def test_entry_changes_with_content_and_mtime(cache: Path, tmp_path: Path) -> None:
    g = _fake_gguf(tmp_path)
    first = gguf_cache.entry_dir(g)
    assert first.parent == cache and first.name.startswith("m.Q4_1-")
    assert gguf_cache.entry_dir(g) == first
    g.write_bytes(b"GGUF" + bytes(99) + b"x")
    os.utime(g, ns=(1, 1))
    assert gguf_cache.entry_dir(g) != first


def test_store_then_lookup_loads_the_same_weights(cache: Path, tmp_path: Path) -> None:
    g = _fake_gguf(tmp_path)
    assert gguf_cache.lookup(g) is None
    model, tok = _tiny(), tiny_tokenizer()
    folder = gguf_cache.store(g, model, tok)
    assert folder is not None and gguf_cache.lookup(g) == folder
    text = "Vector quantization maps weights to codebook entries."
    assert AutoTokenizer.from_pretrained(folder)(text).input_ids == tok(text).input_ids
    assert not list(cache.glob("*.partial"))
    again = LlamaForCausalLM.from_pretrained(folder).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_incomplete_entry_is_ignored(cache: Path, tmp_path: Path) -> None:
    g = _fake_gguf(tmp_path)
    d = gguf_cache.entry_dir(g)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    assert gguf_cache.lookup(g) is None  # no source.json marker: a cut-off store


def test_failed_store_leaves_nothing(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = _fake_gguf(tmp_path)

    def boom(model: object, folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(gguf_cache, "_save_weights", boom)
    assert gguf_cache.store(g, _tiny(), None) is None
    assert gguf_cache.lookup(g) is None
    assert list(cache.iterdir()) == []


def test_non_float32_models_and_opt_out_are_not_cached(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = _fake_gguf(tmp_path)
    assert gguf_cache.store(g, _tiny().half(), None) is None
    monkeypatch.setenv("VPTQ_RS_GGUF_CACHE", "0")
    assert gguf_cache.store(g, _tiny(), None) is None
    assert gguf_cache.lookup(g) is None
    assert not cache.exists() or list(cache.iterdir()) == []
