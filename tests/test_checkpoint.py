"""Packed checkpoints: FORMAT.md layout, round trips, sharding, atomic writes, sizes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _runtime_helpers import build_packed, quantize_randomly, tiny_llama
from safetensors.torch import load_file, save_file

from vptq_rs import checkpoint
from vptq_rs.errors import CheckpointError, InvalidValueError
from vptq_rs.layout import HF_LAYER_KEYS, QuantizedLayer
from vptq_rs.nn import random_quantized_layer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_packed(tmp_path_factory.mktemp("ckpt"), dtype=torch.float16)


def _as_dtype(layer: QuantizedLayer, dtype: torch.dtype) -> QuantizedLayer:
    """The layer with its float tensors rounded to ``dtype`` (what a checkpoint stores)."""
    floats = ("centroids", "res_centroids", "outlier_centroids", "weight_scale", "weight_bias")
    changes = {f: getattr(layer, f).to(dtype) for f in floats if getattr(layer, f) is not None}
    return dataclasses.replace(layer, **changes)


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    return checkpoint.read_tensors(directory)


def test_config_follows_format(packed: dict[str, Any]) -> None:
    cfg = json.loads((packed["packed_dir"] / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "vptq"
    assert qc["shared_layer_config"] == {}
    assert qc["modules_to_not_convert"] == ["lm_head"]
    assert set(qc["config_for_layers"]) == set(packed["layers"])
    for entry in qc["config_for_layers"].values():
        assert set(entry) == set(HF_LAYER_KEYS)  # never enable_proxy_error / norm_dim
        assert entry["enable_norm"] is True and entry["is_indice_packed"] is True
    assert cfg["dtype"] == "float16"
    files = {p.name for p in packed["packed_dir"].iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= files
    assert not [f for f in files if f.startswith(".")], "no temporary names left behind"


def test_tensors_follow_format(packed: dict[str, Any]) -> None:
    tensors = _tensors(packed["packed_dir"])
    for name, layer in packed["layers"].items():
        c = layer.config
        words = -(-c.group_size * (c.index_bits + c.res_bits) // 32)
        t = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
        assert t["indices"].dtype == torch.int32
        assert tuple(t["indices"].shape) == (c.group_num, c.num_vectors, words)
        assert tuple(t["centroids.weight"].shape) == (c.group_num, c.num_centroids * c.vector_len)
        assert t["centroids.weight"].dtype == torch.float16
        assert "res_indices" not in t
        assert ("res_centroids.weight" in t) == bool(c.num_res_centroids)
        assert ("perm" in t) == c.enable_perm
        if c.enable_perm:
            assert t["perm"].dtype == torch.int16
        if c.outlier_size:
            assert t["outlier_indices"].dtype == torch.int16
            assert tuple(t["outlier_indices"].shape) == (1, c.num_outlier_vectors, c.outlier_size)
        assert t["weight_scale"].shape == t["weight_bias"].shape == (c.in_features,)
        assert f"{name}.weight" not in tensors
    assert "lm_head.weight" not in tensors  # tied to the embedding, stored once
    assert tensors["model.embed_tokens.weight"].dtype == torch.float16


def test_rust_validator_accepts_it(packed: dict[str, Any]) -> None:
    core = pytest.importorskip("vptq_rs._core")
    if not hasattr(core, "validate_checkpoint"):
        pytest.skip("vptq_rs._core.validate_checkpoint not built")
    report = core.validate_checkpoint(str(packed["packed_dir"]))
    assert len(report["layers"]) == len(packed["layers"])


def test_load_packed_round_trip(packed: dict[str, Any]) -> None:
    config, layers, others = checkpoint.load_packed(packed["packed_dir"])
    assert config["quantization_config"]["quant_method"] == "vptq"
    assert set(layers) == set(packed["layers"])
    for name, layer in layers.items():
        orig = packed["layers"][name]
        assert torch.equal(layer.main_idx, orig.main_idx)
        assert torch.equal(layer.dequantize(), _as_dtype(orig, torch.float16).dequantize())
    assert "model.norm.weight" in others
    assert not any(k.endswith((".indices", "centroids.weight")) for k in others)


def test_sharded_write_and_read(tmp_path: Path) -> None:
    model = tiny_llama(300, seed=1)
    layers = quantize_randomly(model, seed=1)
    out = checkpoint.save_packed(tmp_path / "p", model, layers, max_shard_bytes=20_000)
    index = json.loads((out / checkpoint.SAFE_INDEX).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    _, loaded, _ = checkpoint.load_packed(out)
    for name, layer in layers.items():
        assert torch.equal(loaded[name].dequantize(), layer.dequantize())


def test_writer_shards_and_indexes(tmp_path: Path) -> None:
    t = {f"t{i}": torch.full((100,), i, dtype=torch.float32) for i in range(5)}
    names = checkpoint.write_tensors(tmp_path, t, max_shard_bytes=900)
    assert len(names) == 3 and (tmp_path / checkpoint.SAFE_INDEX).is_file()
    back = checkpoint.read_tensors(tmp_path)
    assert all(torch.equal(back[k], v) for k, v in t.items())


def test_existing_output_is_refused_then_replaced(tmp_path: Path) -> None:
    model = tiny_llama(300, seed=2)
    layers = quantize_randomly(model, seed=2)
    out = checkpoint.save_packed(tmp_path / "p", model, layers)
    with pytest.raises(InvalidValueError, match="already exists"):
        checkpoint.save_packed(out, model, layers)
    checkpoint.save_packed(out, model, layers, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    model = tiny_llama(300, seed=3)
    layers = quantize_randomly(model, seed=3)
    name = next(iter(layers))
    layers[name].main_idx = layers[name].main_idx[:, :-1]  # wrong shape: validate() raises
    with pytest.raises(InvalidValueError, match="main_idx has shape"):
        checkpoint.save_packed(tmp_path / "p", model, layers)
    assert list(tmp_path.iterdir()) == []


def test_layer_not_in_model_is_refused(tmp_path: Path) -> None:
    model = tiny_llama(300, seed=3)
    layers = quantize_randomly(model, seed=3)
    layers["model.layers.0.nope"] = next(iter(layers.values()))
    with pytest.raises(InvalidValueError, match=r"model\.layers\.0\.nope is not an nn\.Linear"):
        checkpoint.save_packed(tmp_path / "p", model, layers)


def _corrupt(src: Path, dst: Path, edit: Any) -> Path:
    import shutil

    shutil.copytree(src, dst)
    f = dst / checkpoint.SAFE_SINGLE
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})
    return dst


def test_missing_or_misshapen_tensor_names_the_layer(
    packed: dict[str, Any], tmp_path: Path
) -> None:
    name = sorted(packed["layers"])[0]
    bad = _corrupt(packed["packed_dir"], tmp_path / "a", lambda t: t.pop(f"{name}.indices"))
    with pytest.raises(CheckpointError, match=rf"layer {name}: tensor indices is missing"):
        checkpoint.load_packed(bad)

    def shrink(t: dict[str, torch.Tensor]) -> None:
        t[f"{name}.centroids.weight"] = t[f"{name}.centroids.weight"][:, :-1].contiguous()

    bad = _corrupt(packed["packed_dir"], tmp_path / "b", shrink)
    with pytest.raises(CheckpointError, match=rf"layer {name}: centroids has shape"):
        checkpoint.load_packed(bad)


def test_shared_layer_config_is_understood(tmp_path: Path) -> None:
    model = tiny_llama(300, seed=4)
    layers = quantize_randomly(model, seed=4)
    q_names = [n for n in layers if n.endswith("q_proj")]
    shared_cfg = layers[q_names[0]].config
    for i, n in enumerate(q_names):
        layers[n] = random_quantized_layer(shared_cfg, seed=40 + i)
    out = checkpoint.save_packed(tmp_path / "p", model, layers)
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    for n in q_names:
        del qc["config_for_layers"][n]
    qc["shared_layer_config"] = {"q_proj": shared_cfg.to_hf()}
    (out / "config.json").write_text(json.dumps(cfg))
    _, loaded, _ = checkpoint.load_packed(out)
    assert set(loaded) == set(layers)
    for n in q_names:
        assert torch.equal(loaded[n].dequantize(), layers[n].dequantize())


def test_resident_bytes_matches_loaded_model(packed: dict[str, Any]) -> None:
    sizes = checkpoint.resident_bytes(packed["packed_dir"])
    model = checkpoint.from_pretrained(packed["packed_dir"], dtype=torch.float16)
    dense = packed["model"].to(torch.float16)

    # the loaded model holds exactly the stored tensors (+ non-persistent rotary buffers)
    def buffers(m: torch.nn.Module) -> int:
        return sum(b.numel() * b.element_size() for b in m.buffers())

    assert checkpoint.module_bytes(model) == sizes["quantized_bytes"] + buffers(model)
    assert checkpoint.module_bytes(dense) == sizes["dense_bytes"] + buffers(dense)
    assert sizes["ratio"] > 1.0
