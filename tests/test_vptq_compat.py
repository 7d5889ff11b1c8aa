"""Compatibility both ways with Microsoft's ``vptq`` package (its CPU PyTorch path).

Optional dependency: ``pip install --no-deps vptq==0.0.5.post1`` (its hard dependencies
gradio/plotly/pynvml/sentence-transformers are not needed for the layer classes). The
module-level ``sentence_transformers`` import of ``vptq.utils.pack`` is stubbed when that
package is absent.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from _runtime_helpers import build_packed, tiny_llama, variety
from torch import nn

from vptq_rs import checkpoint
from vptq_rs.layout import LayerConfig
from vptq_rs.nn import VQuantLinear, random_quantized_layer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _import_vptq() -> Any:
    if importlib.util.find_spec("vptq") is None:
        pytest.skip("Microsoft's vptq is not installed (pip install --no-deps vptq)")
    if importlib.util.find_spec("sentence_transformers") is None:
        stub = types.ModuleType("sentence_transformers.SentenceTransformer")
        stub.SentenceTransformer = type("SentenceTransformer", (), {})  # type: ignore[attr-defined]
        sys.modules.setdefault("sentence_transformers", types.ModuleType("sentence_transformers"))
        sys.modules.setdefault("sentence_transformers.SentenceTransformer", stub)
    # vptq.utils.pack calls logging.basicConfig(level=INFO) on import; keep our logging as is
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import vptq.layers.vqlinear
        import vptq.utils.pack
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return vptq


@pytest.fixture(scope="module")
def vptq() -> Any:
    return _import_vptq()


CONFIGS = {
    "plain": dict(in_features=64, out_features=48, vector_len=8, num_centroids=256),
    "groups_residual_perm_bias": dict(
        in_features=64,
        out_features=50,
        vector_len=6,
        num_centroids=64,
        num_res_centroids=16,
        group_num=4,
        enable_perm=True,
        bias=True,
    ),
    "outliers_residual_groups_perm": dict(
        in_features=70,
        out_features=50,
        vector_len=4,
        num_centroids=32,
        num_res_centroids=8,
        group_num=2,
        outlier_size=6,
        outlier_vector_len=3,
        outlier_num_centroids=16,
        enable_perm=True,
    ),
    "outliers_no_perm": dict(
        in_features=70,
        out_features=52,
        vector_len=8,
        num_centroids=4096,
        outlier_size=10,
        outlier_vector_len=4,
        outlier_num_centroids=64,
    ),
    "large_k_residual": dict(
        in_features=48,
        out_features=64,
        vector_len=8,
        num_centroids=65536,
        num_res_centroids=256,
        enable_perm=True,
    ),
}


def _their_layer(vptq: Any, entry: dict[str, Any]) -> nn.Module:
    mod = vptq.layers.vqlinear.VQuantLinear(**entry, enable_proxy_error=False, dtype=torch.float32)
    return mod.eval()


def _their_weight(mod: nn.Module, in_features: int) -> torch.Tensor:
    """Their dense weight, exactly: ``F.linear(I, W) = Wᵀ`` (only products with 0 and 1)."""
    with torch.no_grad():
        out = mod(torch.eye(in_features))
        if getattr(mod, "bias", None) is not None:
            out = out - mod.bias
    return out.t()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_our_layers_load_in_vptq(vptq: Any, name: str) -> None:
    cfg = LayerConfig(**CONFIGS[name])
    layer = random_quantized_layer(cfg, seed=13)
    ours = VQuantLinear.from_quantized(layer)
    theirs = _their_layer(vptq, cfg.to_hf())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    if layer.bias is None:
        assert torch.equal(_their_weight(theirs, cfg.in_features), ours.dequantize())
    x = torch.randn(3, cfg.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)


def _fill_theirs(vptq: Any, mod: Any, seed: int) -> None:
    """Random tensors in vptq's own layout, indices packed with vptq's own packer."""
    g = torch.Generator().manual_seed(seed)
    gn, r, cs = mod.num_codebooks, mod.num_indices, mod.group_size
    with torch.no_grad():
        mod.centroids.weight.copy_(torch.randn(mod.centroids.weight.shape, generator=g) * 0.05)
        main = torch.randint(0, mod.num_centroids, (gn, r, cs), generator=g)
        res = None
        res_bits = 0
        if mod.enable_residual:
            mod.res_centroids.weight.copy_(
                torch.randn(mod.res_centroids.weight.shape, generator=g) * 0.01
            )
            res = torch.randint(0, mod.num_res_centroids, (gn, r, cs), generator=g)
            res_bits = mod.res_index_bits
        packed = vptq.utils.pack.pack_index(
            main.to(torch.int64).to(torch.uint16),
            mod.index_bits,
            None if res is None else res.to(torch.int64).to(torch.uint16),
            res_bits,
            index_dtype=torch.uint16,
        )
        mod.indices.data = packed.reshape(mod.indices.shape)
        if mod.enable_outlier:
            mod.outlier_centroids.weight.copy_(
                torch.randn(mod.outlier_centroids.weight.shape, generator=g) * 0.05
            )
            codes = torch.randint(
                0, mod.num_outlier_centroids, mod.outlier_indices.shape, generator=g
            )
            mod.outlier_indices.data = codes.to(torch.int32).to(torch.int16)
        if mod.enable_perm:
            perm = torch.randperm(mod.in_features, generator=g)
            mod.perm.data = perm.to(torch.int32).to(torch.int16)
        if mod.enable_norm:
            mod.weight_scale.data = torch.rand(mod.in_features, generator=g) + 0.5
            mod.weight_bias.data = torch.randn(mod.in_features, generator=g) * 0.01
        if mod.bias is not None:
            mod.bias.data = torch.randn(mod.out_features, generator=g) * 0.01


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vptq_layers_load_in_ours(vptq: Any, name: str) -> None:
    cfg = LayerConfig(**CONFIGS[name])
    theirs = _their_layer(vptq, cfg.to_hf())
    _fill_theirs(vptq, theirs, seed=17)
    ours = VQuantLinear(cfg, dtype=torch.float32)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    if cfg.bias is False:
        assert torch.equal(ours.dequantize(), _their_weight(theirs, cfg.in_features))
    x = torch.randn(4, cfg.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_vptq_layer_without_norm_loads_in_ours(vptq: Any) -> None:
    """vptq writes no scale/bias when enable_norm is false; ours then uses none either."""
    entry = LayerConfig(**CONFIGS["outliers_residual_groups_perm"]).to_hf()
    entry["enable_norm"] = False
    theirs = _their_layer(vptq, entry)
    _fill_theirs(vptq, theirs, seed=19)
    assert "weight_scale" not in theirs.state_dict()
    ours = VQuantLinear.from_hf(entry, dtype=torch.float32)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(ours.dequantize(), _their_weight(theirs, entry["in_features"]))


def _their_model(vptq: Any, seed: int, norm_off: set[int]) -> tuple[Any, dict[str, Any]]:
    model = tiny_llama(300, seed=seed)
    linears = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"
    ]
    entries = {}
    for i, (name, mod) in enumerate(linears):
        entry = variety(i, mod).to_hf()
        if i in norm_off:
            entry["enable_norm"] = False
        entries[name] = entry
    from vptq.layers.model_base import make_quant_linear

    make_quant_linear(model, entries, {}, target_layer=vptq.layers.vqlinear.VQuantLinear)
    for i, name in enumerate(entries):
        _fill_theirs(vptq, model.get_submodule(name), seed=100 + i)
    return model.eval(), entries


def test_vptq_built_checkpoint_loads_in_ours(vptq: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model, entries = _their_model(vptq, seed=23, norm_off={2, 5})
    out = tmp_path / "theirs"
    out.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = {
        "quant_method": "vptq",
        "config_for_layers": entries,
        "shared_layer_config": {},
    }
    (out / "config.json").write_text(json.dumps(config))
    ours = checkpoint.from_pretrained(out)
    ids = torch.randint(0, 300, (1, 15), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    _, layers, _ = checkpoint.load_packed(out)
    assert set(layers) == set(entries)


def test_our_checkpoint_loads_in_vptq_model(vptq: Any, tmp_path: Path) -> None:
    """Our packed folder, read with vptq's own module swap and a plain state-dict load."""
    from safetensors.torch import load_file
    from vptq.layers.model_base import make_quant_linear

    built = build_packed(tmp_path, seed=29)
    qc = json.loads((built["packed_dir"] / "config.json").read_text())["quantization_config"]
    model = tiny_llama(len(built["tokenizer"]), seed=0)
    make_quant_linear(
        model,
        qc["config_for_layers"],
        qc["shared_layer_config"],
        target_layer=vptq.layers.vqlinear.VQuantLinear,
    )
    state = load_file(str(built["packed_dir"] / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # tied to the embedding
    model.tie_weights()
    ids = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(ids).logits, built["reference"](ids).logits, rtol=1e-4, atol=1e-4
        )
