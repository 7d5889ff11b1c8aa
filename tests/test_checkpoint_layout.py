"""Rust checkpoint layer: sharded safetensors I/O, validator, `vptq-rs inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vptq_rs
from vptq_rs._core import load_tensors, save_tensors, validate_checkpoint
from vptq_rs.cli import cli
from vptq_rs.errors import CheckpointError, InvalidValueError

# one layer: O=24, I=40, v=6, K=16 (4 bits), residual 8 (3 bits), 2 groups of 18 columns,
# 4 outlier columns with v0=4/K0=8, perm + norm, and a bias
O, I, V, K, KRES, G, OSZ, V0, K0 = 24, 40, 6, 16, 8, 2, 4, 4, 8
C = (I - OSZ) // G
R = -(-O // V)


def layer_entry() -> dict:
    return {
        "in_features": I,
        "out_features": O,
        "vector_lens": [V0, V],
        "num_centroids": [K0, K],
        "num_res_centroids": [-1, KRES],
        "group_num": G,
        "group_size": C,
        "outlier_size": OSZ,
        "indices_as_float": False,
        "enable_norm": True,
        "enable_perm": True,
        "is_indice_packed": True,
        "bias": True,
    }


def tensors(rng: np.random.Generator, prefix: str = "model.layers.0.mlp.up_proj"):
    main = rng.integers(0, K, size=(G * R, C))
    res = rng.integers(0, KRES, size=(G * R, C))
    idx = vptq_rs.pack_indices(main, 4, res, 3).reshape(G, R, -1)
    f16 = lambda *s: rng.normal(size=s).astype(np.float16)  # noqa: E731
    arrays = {
        "centroids.weight": f16(G, K * V),
        "res_centroids.weight": f16(G, KRES * V),
        "indices": idx,
        "outlier_centroids.weight": f16(1, K0 * V0),
        "outlier_indices": rng.integers(0, K0, size=(1, O // V0, OSZ)).astype(np.int16),
        "perm": rng.permutation(I).astype(np.int16),
        "weight_scale": f16(I),
        "weight_bias": f16(I),
        "bias": f16(O),
    }
    dt = {np.float16: "F16", np.int32: "I32", np.int16: "I16", np.float32: "F32"}
    out = [
        (f"{prefix}.{k}", dt[a.dtype.type], list(a.shape), a.tobytes()) for k, a in arrays.items()
    ]
    emb = f16(100, 8)
    out.append(("model.embed_tokens.weight", "F16", list(emb.shape), emb.tobytes()))
    return out


def write_checkpoint(
    path: Path,
    shard_bytes: int = 10**9,
    entry: dict | None = None,
    drop: str | None = None,
    seed: int = 0,
) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "quantization_config": {
            "quant_method": "vptq",
            "config_for_layers": {"model.layers.0.mlp.up_proj": entry or layer_entry()},
            "shared_layer_config": {},
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    ts = [t for t in tensors(np.random.default_rng(seed)) if not (drop and t[0].endswith(drop))]
    return save_tensors(str(path), ts, shard_bytes, {"format": "pt"})


def test_round_trip_sharded(tmp_path):
    files = write_checkpoint(tmp_path / "ck", shard_bytes=400)
    assert len(files) > 1 and (tmp_path / "ck" / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    loaded = load_tensors(str(tmp_path / "ck"))
    want = {t[0]: t for t in tensors(np.random.default_rng(0))}
    assert set(loaded) == set(want)
    for name, (dtype, shape, data) in loaded.items():
        assert (dtype, shape, data) == want[name][1:]
    assert not [p for p in (tmp_path / "ck").iterdir() if ".tmp-" in p.name]


def test_interoperates_with_python_safetensors(tmp_path):
    from safetensors.numpy import load_file

    write_checkpoint(tmp_path / "ck")
    arrays = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert arrays["model.layers.0.mlp.up_proj.indices"].shape == (G, R, -(-C * 7 // 32))


def test_validator_counts_true_bits(tmp_path):
    write_checkpoint(tmp_path / "ck", shard_bytes=500)
    rep = validate_checkpoint(str(tmp_path / "ck"))
    (layer,) = rep["layers"]
    b = layer["bits"]
    words = -(-C * 7 // 32)
    assert b["index_bits"] == G * R * words * 32
    assert b["index_padding_bits"] == G * R * (words * 32 - C * 7)
    assert b["codebook_bits"] == 16 * (G * (K + KRES) * V + K0 * V0)
    assert b["outlier_index_bits"] == 16 * (O // V0) * OSZ
    assert b["norm_bits"] == 2 * 16 * I and b["perm_bits"] == 16 * I
    assert b["linear_bias_bits"] == 16 * O
    total = sum(
        b[k]
        for k in ("index_bits", "codebook_bits", "outlier_index_bits", "norm_bits", "perm_bits")
    )
    assert b["total_bits"] == total
    assert b["bits_per_weight"] == pytest.approx(total / (O * I))
    assert rep["unquantized_bytes"] == 100 * 8 * 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_centroids": [K0, 32]}, "centroids.weight has shape"),
        ({"group_num": 5}, "group_num 5 does not divide"),
        ({"group_size": 7}, "group_size 7 disagrees"),
        ({"num_centroids": [K0, 12]}, "not a power of two"),
        ({"bias": False}, "unexpected tensor"),
        ({"is_indice_packed": False}, "unpacked indices"),
        ({"num_res_centroids": [-1, 65536], "num_centroids": [K0, 2**20]}, "exceed 32"),
    ],
)
def test_validator_names_the_layer_and_the_problem(tmp_path, change, message):
    write_checkpoint(tmp_path / "ck", entry={**layer_entry(), **change})
    with pytest.raises(CheckpointError, match=message) as info:
        validate_checkpoint(str(tmp_path / "ck"))
    assert "model.layers.0.mlp.up_proj" in str(info.value)


def test_validator_missing_tensor_shard_and_corruption(tmp_path):
    write_checkpoint(tmp_path / "a", drop="weight_scale")
    with pytest.raises(CheckpointError, match="weight_scale is missing"):
        validate_checkpoint(str(tmp_path / "a"))
    files = write_checkpoint(tmp_path / "b", shard_bytes=400)
    (tmp_path / "b" / files[-1]).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        validate_checkpoint(str(tmp_path / "b"))
    write_checkpoint(tmp_path / "c")
    shard = tmp_path / "c" / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match=r"inconsistent|does not fit"):
        validate_checkpoint(str(tmp_path / "c"))
    shard.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError):
        validate_checkpoint(str(tmp_path / "c"))
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        validate_checkpoint(str(tmp_path / "d"))


def test_save_tensors_rejects_bad_input(tmp_path):
    with pytest.raises(InvalidValueError, match="do not match"):
        save_tensors(str(tmp_path), [("a", "F32", [3], b"\0" * 8)], 100, None)
    with pytest.raises(InvalidValueError, match="unknown dtype"):
        save_tensors(str(tmp_path), [("a", "F33", [2], b"\0" * 8)], 100, None)
    with pytest.raises(InvalidValueError, match="does not exist"):
        save_tensors(str(tmp_path / "nope"), [("a", "F32", [2], b"\0" * 8)], 100, None)
    assert list(tmp_path.iterdir()) == []


def test_inspect_cli_text_and_json(tmp_path):
    write_checkpoint(tmp_path / "ck")
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", str(tmp_path / "ck")])
    assert res.exit_code == 0, res.output
    assert "model.layers.0.mlp.up_proj" in res.output and "bits per weight" in res.output
    res = runner.invoke(cli, ["inspect", str(tmp_path / "ck"), "--json"])
    rep = json.loads(res.output)
    assert rep["total"]["bits_per_weight"] == pytest.approx(
        rep["layers"][0]["bits"]["bits_per_weight"]
    )
    mem = rep["memory"]
    assert mem["quantized_bytes"] == rep["tensor_bytes"]
    # dense: the embedding as stored + the fp16 weights and bias of the quantized layer
    assert mem["dense_bytes"] == 100 * 8 * 2 + (O * I + O) * 2
    assert mem["dense_dtype"] == "float16"


def test_inspect_cli_bad_input_exits_2(tmp_path):
    from vptq_rs.cli import main

    write_checkpoint(tmp_path / "ck", entry={**layer_entry(), "group_size": 7})
    for args in (["inspect", str(tmp_path / "ck")], ["inspect", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
