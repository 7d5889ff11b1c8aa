"""The model walker: tiny random Llama / Qwen2 / Phi-3 / Mistral models built from configs.

Also home of the tiny-model builders the quantizer tests import (no downloads anywhere).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vptq_rs.errors import InvalidValueError, UnsupportedModelError  # noqa: E402
from vptq_rs.models import (  # noqa: E402
    SUPPORTED_MODEL_TYPES,
    linear_groups,
    load_config,
    load_model,
    model_name,
    resolve_model_path,
)

ARCHS = ("llama", "qwen2", "phi3", "mistral")
CALIB_TEXT = (
    "The quick brown fox jumps over the lazy dog. Vector quantization maps short weight "
    "vectors to the nearest entry of a learned codebook; a GPTQ sweep pushes the rounding "
    "error onto columns that are not quantized yet. "
) * 40


def tiny_config(arch: str = "llama", **over: object) -> object:
    """A 2-layer, hidden-64 config of the given family."""
    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    common.update(over)
    cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "phi3": transformers.Phi3Config,
        "mistral": transformers.MistralConfig,
        "gpt2": transformers.GPT2Config,
    }[arch]
    if arch == "gpt2":
        return cls(n_embd=64, n_layer=2, n_head=4, vocab_size=128)
    return cls(**common)


def char_tokenizer() -> object:
    """A 128-symbol character tokenizer built locally (ASCII code = token id)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {chr(i): i for i in range(3, 128)}
    vocab.update({"<pad>": 0, "<s>": 1, "</s>": 2})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="?",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def make_tiny_model(root: Path, arch: str = "llama", seed: int = 0, **over: object) -> Path:
    """Save a random tiny model + tokenizer in ``root/<arch>-tiny``; return the folder."""
    cfg = tiny_config(arch, **over)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    out = root / f"{arch}-tiny"
    model.save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    return out


def calib_file(root: Path) -> Path:
    path = root / "calib.txt"
    path.write_text(CALIB_TEXT)
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_groups_cover_every_linear(arch: str) -> None:
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch))
    groups = linear_groups(model)
    assert [g.key for g in groups[:4]] == ["qkv", "o", "up", "down"]
    assert len(groups) == 8
    names = [n for g in groups for n in g.names]
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(names) == sorted(n for n in linears if n != "lm_head")
    if arch == "phi3":
        assert groups[0].names == ("model.layers.0.self_attn.qkv_proj",)
        assert groups[2].names == ("model.layers.0.mlp.gate_up_proj",)
    if arch == "qwen2":
        assert model.get_submodule(groups[0].names[0]).bias is not None


def test_unsupported_architecture_lists_supported(tmp_path: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_config(tiny_config("gpt2"))
    with pytest.raises(
        UnsupportedModelError, match="supported: " + ", ".join(SUPPORTED_MODEL_TYPES)
    ):
        linear_groups(model)
    model.save_pretrained(tmp_path / "g")
    with pytest.raises(UnsupportedModelError):
        load_config(tmp_path / "g")


def test_load_local_folder_any_name(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path, "qwen2")
    renamed = folder.rename(tmp_path / "whatever name")
    model, tok = load_model(renamed)
    assert model.config.model_type == "qwen2"
    assert tok("ab", add_special_tokens=False)["input_ids"] == [97, 98]
    assert model_name(renamed) == "whatever_name"


def test_resolve_model_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="GGUF"):
        resolve_model_path(tmp_path / "missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidValueError, match=r"config\.json"):
        resolve_model_path(tmp_path / "empty")
    assert resolve_model_path("org/model") == ("org/model", {})
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_path(gguf) == (str(tmp_path.resolve()), {"gguf_file": "m.Q4_1.gguf"})
    assert model_name(gguf) == "m.Q4_1"
