"""Tiny models, tokenizers and random quantized checkpoints for the runtime tests.

Everything is built from configs with fixed seeds; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptq_rs.layout import LayerConfig, QuantizedLayer
from vptq_rs.nn import random_quantized_layer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEXT = (
    "the quick brown fox jumps over the lazy dog . vector quantization packs weights into "
    "codebooks and indices ; a small model answers questions about foxes and dogs .\n"
) * 4


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, seed: int = 0, tie: bool = True, **overrides: Any) -> Any:
    """A 2-layer Llama with random weights (hidden 64, GQA 4/2 heads), fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def variety(i: int, mod: nn.Linear) -> LayerConfig:
    """A different feature mix per layer index: groups, residual, outliers, perm."""
    return LayerConfig(
        in_features=mod.in_features,
        out_features=mod.out_features,
        vector_len=4 if i % 2 else 6,  # v=6 pads the last vector of 64/96-row layers
        num_centroids=64,
        num_res_centroids=16 if i % 2 else 0,
        group_num=2 if i % 3 == 0 else 1,
        enable_perm=i % 4 != 2,
        outlier_size=8 if i % 4 == 1 else 0,
        outlier_vector_len=4,
        outlier_num_centroids=16,
        bias=mod.bias is not None,
    )


def quantize_randomly(model: Any, seed: int = 0) -> dict[str, QuantizedLayer]:
    """Random layers for every Linear except lm_head, scaled like real weights."""
    layers = {}
    linears = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"
    ]
    for i, (name, mod) in enumerate(linears):
        layer = random_quantized_layer(variety(i, mod), seed=seed + i)
        layer.centroids.mul_(0.05)
        if layer.res_centroids is not None:
            layer.res_centroids.mul_(0.05)
        if layer.outlier_centroids is not None:
            layer.outlier_centroids.mul_(0.05)
        if layer.bias is not None:
            layer.bias.mul_(0.05)
        layers[name] = layer
    return layers


def dense_reference(model: Any, layers: dict[str, QuantizedLayer]) -> Any:
    """A copy of ``model`` whose quantized Linears hold the reference dequantized weights."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in layers.items():
            mod = ref.get_submodule(name)
            mod.weight.copy_(layer.dequantize(torch.float32))
            if layer.bias is not None:
                mod.bias.copy_(layer.bias)
    return ref


def build_packed(root: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A float folder and its packed checkpoint under ``root``, plus in-memory references."""
    from vptq_rs.checkpoint import save_packed

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=seed)
    layers = quantize_randomly(model, seed=seed)
    float_dir = root / "float"
    model.save_pretrained(float_dir)
    tok.save_pretrained(float_dir)
    packed_dir = save_packed(root / "packed", model, layers, tok, dtype=dtype)
    return {
        "tokenizer": tok,
        "model": model,
        "layers": layers,
        "reference": dense_reference(model, layers),
        "float_dir": float_dir,
        "packed_dir": packed_dir,
    }
