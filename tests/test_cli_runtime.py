"""``vptq-rs pack | unpack | eval | generate | chat`` end to end on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _runtime_helpers import TEXT, build_packed
from click.testing import CliRunner

from vptq_rs.cli import cli, main


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_packed(tmp_path_factory.mktemp("cli"), seed=21)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def invoke(*args: Any, input: str | None = None) -> Any:
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _ids() -> torch.Tensor:
    return torch.randint(0, 300, (1, 19), generator=torch.Generator().manual_seed(1))


def test_unpack_gives_a_stock_transformers_model(packed: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dense"
    invoke("unpack", packed["packed_dir"], "--out", out, "--dtype", "fp32")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (out / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("VQuant" in type(m).__name__ for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(
            model(_ids()).logits, packed["reference"](_ids()).logits, rtol=1e-5, atol=1e-5
        )


def test_unpack_fp16_halves_the_size(packed: dict[str, Any], tmp_path: Path) -> None:
    invoke("unpack", packed["packed_dir"], "--out", tmp_path / "h", "--dtype", "fp16")
    invoke("unpack", packed["packed_dir"], "--out", tmp_path / "f", "--dtype", "fp32")
    h = (tmp_path / "h" / "model.safetensors").stat().st_size
    f = (tmp_path / "f" / "model.safetensors").stat().st_size
    assert h < 0.55 * f


def test_eval_packed_matches_dense_reference(
    packed: dict[str, Any], corpus: Path, tmp_path: Path
) -> None:
    from vptq_rs.evaluate import perplexity

    model_dir = tmp_path / "model"
    shutil.copytree(packed["packed_dir"], model_dir)
    res = invoke("eval", model_dir, "--dataset", corpus, "--seqlen", 32, "--json")
    got = json.loads(res.stdout)
    want = perplexity(packed["reference"], packed["tokenizer"], str(corpus), 32, progress=False)
    assert got["windows"] == want["windows"] > 1
    assert got["ppl"] == pytest.approx(want["ppl"], rel=1e-5)
    # a plain model folder gets its results inside it
    saved = json.loads((model_dir / "ppl_results.json").read_text())
    assert saved["corpus.txt@32"]["ppl"] == got["ppl"]


def test_eval_result_locations(packed: dict[str, Any], corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(packed["packed_dir"], run / "packed_model")
    (run / "run.json").write_text("{}")
    invoke("eval", run / "packed_model", "--dataset", corpus, "--seqlen", 32, "--limit", 1)
    assert json.loads((run / "ppl_results.json").read_text())  # beside packed_model/
    assert not (run / "packed_model" / "ppl_results.json").exists()
    out = tmp_path / "elsewhere.json"
    invoke("eval", packed["float_dir"], "--dataset", corpus, "--seqlen", 32, "--output", out)
    assert "corpus.txt@32" in json.loads(out.read_text())


def test_generate_is_greedy_and_identical_to_dense(packed: dict[str, Any], tmp_path: Path) -> None:
    invoke("unpack", packed["packed_dir"], "--out", tmp_path / "dense", "--dtype", "fp32")
    args = ["--prompt", "the quick brown", "--max-new-tokens", 12]
    q = invoke("generate", packed["packed_dir"], *args).stdout
    d = invoke("generate", tmp_path / "dense", *args).stdout
    assert q.startswith("the quick brown") and len(q) > len("the quick brown")
    assert q == d
    # the sorted GEMV only runs on CUDA: on the CPU the flag changes nothing
    assert invoke("generate", packed["packed_dir"], *args, "--sorted-gemv").stdout == q


def test_generate_chat_template(packed: dict[str, Any]) -> None:
    res = invoke(
        "generate",
        packed["packed_dir"],
        "--prompt",
        "fox?",
        "--chat",
        "--max-new-tokens",
        5,
        "--temperature",
        0.7,
        "--seed",
        3,
    )
    assert res.stdout.strip() != ""


def test_chat_reads_turns_from_stdin(packed: dict[str, Any]) -> None:
    res = invoke(
        "chat",
        packed["packed_dir"],
        "--max-new-tokens",
        4,
        "--system",
        "be brief",
        input="the fox\n\n/reset\nthe dog\n/exit\nnever read\n",
    )
    assert "conversation cleared" in res.stderr
    assert res.stderr.count("> ") == 5  # five lines read; the one after /exit never is
    assert res.stdout.count("\n") == 2  # one streamed reply per user turn


def test_chat_keeps_history(packed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    from transformers import PreTrainedTokenizerBase

    original = PreTrainedTokenizerBase.apply_chat_template

    def spy(self: Any, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(conversation))
        return original(self, conversation, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "apply_chat_template", spy)
    invoke("chat", packed["packed_dir"], "--max-new-tokens", 3, input="a fox\na dog\n")
    assert seen == [1, 3]  # user; user, assistant, user


def test_pack_a_run_folder(packed: dict[str, Any], tmp_path: Path) -> None:
    from vptq_rs.checkpoint import load_packed, read_tensors
    from vptq_rs.quantize.run import save_layer_result

    run = tmp_path / "run"
    for name, layer in packed["layers"].items():
        save_layer_result(run / "layers" / f"{name}.safetensors", layer)
    meta = {"model": str(packed["float_dir"]), "options": {"quant": {"store_dtype": "auto"}}}
    (run / "run.json").write_text(json.dumps(meta))
    invoke("pack", run)
    out = run / "packed_model"
    assert (out / "tokenizer.json").is_file()
    assert read_tensors(out)["model.layers.0.self_attn.q_proj.centroids.weight"].dtype == (
        torch.float16  # the float model is fp32: codebooks default to fp16
    )
    _, layers, _ = load_packed(out)
    assert set(layers) == set(packed["layers"])
    ours = read_tensors(packed["packed_dir"])
    theirs = read_tensors(out)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k.endswith("indices"))


def _main_exit(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0), capsys.readouterr().err


def test_errors_are_one_line_with_exit_2(
    packed: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _main_exit(
        ["unpack", str(packed["float_dir"]), "--out", str(tmp_path / "x")], capsys
    )
    assert code == 2 and err.startswith("error: quant_method is None, expected 'vptq'")
    code, err = _main_exit(["pack", str(tmp_path)], capsys)
    assert code == 2 and "has no run.json" in err
    code, err = _main_exit(["eval", str(packed["packed_dir"]), "--dataset", "nope"], capsys)
    assert code == 2 and "neither wikitext2" in err
    code, err = _main_exit(
        ["unpack", str(packed["packed_dir"]), "--out", str(packed["float_dir"])], capsys
    )
    assert code == 2 and "already exists" in err
