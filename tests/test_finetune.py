"""Fine-tuning on a tiny random Llama (CPU): gradients, memory, loss, reload, resume, LoRA."""

from __future__ import annotations

import dataclasses
import json
import weakref
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _runtime_helpers import TEXT, build_packed  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vptq_rs.checkpoint import load_model, read_tensors  # noqa: E402
from vptq_rs.finetune import trainable  # noqa: E402
from vptq_rs.finetune.loop import FinetuneConfig, finetune  # noqa: E402
from vptq_rs.finetune.trainable import TrainableVQuantLinear, make_trainable  # noqa: E402
from vptq_rs.layout import LayerConfig  # noqa: E402
from vptq_rs.nn import VQuantLinear, random_quantized_layer  # noqa: E402

FULL = LayerConfig(
    in_features=40,
    out_features=30,
    vector_len=4,
    num_centroids=16,
    num_res_centroids=8,
    group_num=2,
    enable_perm=True,
    outlier_size=8,
    outlier_vector_len=3,
    outlier_num_centroids=4,
    bias=True,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    # tiny matrices: thread hand-offs cost more than the work, badly so on a busy 2-core box
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ft")
    built = build_packed(root, seed=3)
    text = root / "train.txt"
    text.write_text(TEXT * 3)
    built["text"] = text
    built["root"] = root
    return built


def config(setup: dict[str, Any], out: Path, **over: Any) -> FinetuneConfig:
    base = dict(
        packed_dir=str(setup["packed_dir"]),
        teacher=str(setup["float_dir"]),
        out=str(out),
        data=str(setup["text"]),
        mode="codebooks",
        steps=4,
        lr=3e-3,
        batch_size=2,
        seq_len=32,
        num_windows=2,  # every step sees the same two windows: loss must fall monotonically-ish
        save_every=2,
        progress=False,
    )
    base.update(over)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def test_gradients_match_reference_dequantization() -> None:
    layer = random_quantized_layer(FULL, seed=1, dtype=torch.float64)
    mod = TrainableVQuantLinear.from_module(VQuantLinear.from_quantized(layer, torch.float64))
    for p in mod.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
    x = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 5, 30, dtype=torch.float64)
    (mod(x) * target).sum().backward()

    ref = dataclasses.replace(layer)
    leaves = {}
    for name in ("centroids", "res_centroids", "outlier_centroids", "weight_scale", "weight_bias"):
        leaves[name] = getattr(layer, name).clone().requires_grad_(True)
        setattr(ref, name, leaves[name])
    bias = layer.bias.clone().requires_grad_(True)  # type: ignore[union-attr]
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch.nn.functional.linear(x2, ref.dequantize(torch.float64), bias)
    (y2 * target).sum().backward()

    assert torch.allclose(x.grad, x2.grad, atol=1e-10)
    mine = {
        "centroids": mod.centroids.weight,
        "res_centroids": mod.res_centroids.weight,  # type: ignore[union-attr]
        "outlier_centroids": mod.outlier_centroids.weight,  # type: ignore[union-attr]
        "weight_scale": mod.weight_scale,
        "weight_bias": mod.weight_bias,
    }
    for name, leaf in leaves.items():
        got = mine[name].grad.reshape(leaf.grad.shape)  # type: ignore[union-attr]
        # codebook gradients are accumulated in fp32 by design
        assert torch.allclose(got, leaf.grad, rtol=1e-5, atol=1e-4), name
    assert torch.allclose(mod.bias.grad, bias.grad, atol=1e-5)  # type: ignore[union-attr]


def test_backward_materialises_one_layer_at_a_time(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = load_model(setup["packed_dir"], dtype=torch.float32)
    make_trainable(model)
    for m in model.modules():
        if isinstance(m, TrainableVQuantLinear):
            m.centroids.weight.requires_grad_(True)
    live: list[tuple[int, Any]] = []
    worst = {"other_layers": 0, "calls": 0}
    original = trainable.dense_t

    def spy(mod: Any, *args: Any) -> Any:
        out = original(mod, *args)
        others = {lid for lid, ref in live if ref() is not None and lid != id(mod)}
        worst["other_layers"] = max(worst["other_layers"], len(others))
        worst["calls"] += 1
        live.append((id(mod), weakref.ref(out)))
        return out

    monkeypatch.setattr(trainable, "dense_t", spy)
    model.train()
    ids = torch.randint(0, 200, (1, 24))
    model(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).mean().backward()
    n_layers = sum(isinstance(m, TrainableVQuantLinear) for m in model.modules())
    assert worst["calls"] == 2 * n_layers  # once in forward, once in backward per layer
    assert worst["other_layers"] == 0


def test_codebooks_loss_falls_and_checkpoint_reloads_identically(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    result = finetune(config(setup, tmp_path / "cb"))
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0]
    packed = Path(result["packed_model"])
    assert result["bits_per_weight"] > 0  # validated by the Rust core (what inspect runs)

    old, new = read_tensors(setup["packed_dir"]), read_tensors(packed)
    assert set(old) == set(new)
    for key in old:
        assert old[key].dtype == new[key].dtype and old[key].shape == new[key].shape
        if key.endswith(("indices", "perm")):
            assert torch.equal(old[key], new[key]), key  # codes never change
    assert any(not torch.equal(old[k], new[k]) for k in old if k.endswith("centroids.weight"))

    # the last saved state, put into a fresh student, must match the reloaded checkpoint
    student, _ = load_model(setup["packed_dir"], dtype=torch.float32)
    make_trainable(student)
    state = load_file(str(packed.parent / "checkpoints" / "step-000004" / "trainable.safetensors"))
    params = dict(student.named_parameters())
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t)
    reloaded, _ = load_model(packed, dtype=torch.float32)
    ids = torch.randint(0, 200, (1, 20))
    with torch.no_grad():
        a = student(ids).logits
        b = reloaded(ids).logits
    assert torch.equal(a, b)

    from vptq_rs.cli.inspect_cmd import inspect_cmd

    res = CliRunner().invoke(inspect_cmd, [str(packed), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["total"]["bits_per_weight"] == result["bits_per_weight"]


def test_resume_continues_where_it_stopped(setup: dict[str, Any], tmp_path: Path) -> None:
    full = finetune(config(setup, tmp_path / "full", train_extra=("norms",)))
    out = tmp_path / "split"
    part = finetune(config(setup, out, stop_after=2, train_extra=("norms",)))
    assert not part["finished"] and not (out / "packed_model").exists()
    with pytest.raises(ValueError, match="--resume"):
        finetune(config(setup, out, train_extra=("norms",)))
    resumed = finetune(config(setup, out, resume=True, train_extra=("norms",)))
    assert resumed["start_step"] == 2
    assert [h["loss"] for h in resumed["history"]] == pytest.approx(
        [h["loss"] for h in full["history"]], rel=1e-5
    )
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step-000004" / "trainable.safetensors"))
    b = load_file(str(out / "checkpoints" / "step-000004" / "trainable.safetensors"))
    assert a.keys() == b.keys() and any("norm" in k for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    with pytest.raises(ValueError, match="settings differ"):
        finetune(config(setup, out, resume=True, steps=6, seq_len=16, train_extra=("norms",)))


def test_lora_cli_trains_and_adapter_loads(setup: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from vptq_rs.cli.finetune_cmd import finetune_cmd
    from vptq_rs.finetune.lora import load_with_adapter

    out = tmp_path / "lora"
    args = [str(setup["packed_dir"]), "--teacher", str(setup["float_dir"]), "--data"]
    args += [str(setup["text"]), "--mode", "lora", "--steps", "4", "--lr", "1e-2"]
    args += ["--batch-size", "2", "--num-windows", "2", "--seq-len", "32", "--out", str(out)]
    args += ["--lora-r", "4", "--json"]
    res = CliRunner().invoke(finetune_cmd, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "finetune.json").read_text())
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "packed_model").exists()
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)

    base, _ = load_model(setup["packed_dir"], dtype=torch.float32)
    tuned, _ = load_with_adapter(setup["packed_dir"], out / "adapter", dtype="fp32")
    ids = torch.randint(0, 200, (1, 20))
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits)
    wrapped = [m for m in tuned.modules() if type(m).__name__ == "VQuantLoraLinear"]
    assert len(wrapped) == sum(isinstance(m, VQuantLinear) for m in base.modules())

    # eval/generate/chat take the adapter too
    from vptq_rs.cli import cli

    ev = [str(setup["packed_dir"]), "--dataset", str(setup["text"]), "--seqlen", "16"]
    ev += ["--limit", "2", "--no-save", "--json"]
    plain = CliRunner().invoke(cli, ["eval", *ev])
    adapted = CliRunner().invoke(cli, ["eval", *ev, "--adapter", str(out / "adapter")])
    assert plain.exit_code == 0 and adapted.exit_code == 0, plain.output + adapted.output
    assert json.loads(plain.stdout)["ppl"] != json.loads(adapted.stdout)["ppl"]


def test_teacher_cache_and_both_mode(setup: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("peft")
    cache = tmp_path / "cache"
    cfg = config(setup, tmp_path / "both", mode="both", steps=2, teacher_cache=str(cache))
    cfg.cache_topk = 8
    result = finetune(cfg)
    assert sorted(p.name for p in cache.glob("chunk-*")) == ["chunk-00000.safetensors"]
    assert all(h["loss"] >= 0 for h in result["history"])
    assert Path(result["packed_model"]).is_dir() and Path(result["adapter"]).is_dir()
    assert result["adapter_base"] == result["packed_model"]
