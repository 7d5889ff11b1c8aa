"""transformers loads packed checkpoints through vptq-rs (CPU, no ``vptq`` package)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from _runtime_helpers import build_packed

from vptq_rs import checkpoint, integration
from vptq_rs.nn import VQuantLinear


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_packed(tmp_path_factory.mktemp("integ"), seed=11)


def _ids() -> torch.Tensor:
    return torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_auto_model_loads_packed_checkpoint(packed: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    integration.register()
    model = AutoModelForCausalLM.from_pretrained(packed["packed_dir"]).eval()
    qlayers = [m for m in model.modules() if isinstance(m, VQuantLinear)]
    assert len(qlayers) == len(packed["layers"])
    with torch.no_grad():
        got = model(_ids()).logits
        want = packed["reference"](_ids()).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_vptq_rs_from_pretrained_and_resave(packed: dict[str, Any], tmp_path: Path) -> None:
    model = checkpoint.from_pretrained(packed["packed_dir"])
    assert isinstance(model.model.layers[0].self_attn.q_proj, VQuantLinear)
    with torch.no_grad():
        before = model(_ids()).logits
    # transformers' own save_pretrained writes a checkpoint vptq-rs reads back identically
    model.save_pretrained(tmp_path / "resaved")
    again = checkpoint.from_pretrained(tmp_path / "resaved")
    with torch.no_grad():
        assert torch.equal(again(_ids()).logits, before)
    _, layers, _ = checkpoint.load_packed(tmp_path / "resaved")
    assert set(layers) == set(packed["layers"])


def test_cache_weights_gives_the_same_logits(packed: dict[str, Any]) -> None:
    plain = checkpoint.from_pretrained(packed["packed_dir"])
    cached = checkpoint.from_pretrained(packed["packed_dir"], cache_weights=True)
    assert all(m.weight_cached for m in cached.modules() if isinstance(m, VQuantLinear))
    assert not any(m.weight_cached for m in plain.modules() if isinstance(m, VQuantLinear))
    with torch.no_grad():
        torch.testing.assert_close(cached(_ids()).logits, plain(_ids()).logits)


def test_load_model_turns_on_the_sorted_gemv_where_it_applies(packed: dict[str, Any]) -> None:
    from vptq_rs import sorted_layout, tiled_layout

    model, _ = checkpoint.load_model(packed["packed_dir"], sorted_gemv=True)
    layers = [m for m in model.modules() if isinstance(m, VQuantLinear)]
    on = [m.sorted_gemv for m in layers]
    assert any(on) and not all(on)  # group_num 2 and residual layers are left out
    pays = [
        sorted_layout.pays(m.config) or tiled_layout.pays(m.config, m.indices.device)
        for m in layers
    ]
    assert on == pays
    plain, _ = checkpoint.load_model(packed["packed_dir"])
    assert not any(m.sorted_gemv for m in plain.modules() if isinstance(m, VQuantLinear))


def test_unregister_restores_transformers_quantizer() -> None:
    from transformers.quantizers import auto

    integration.register()
    ours = auto.AUTO_QUANTIZER_MAPPING["vptq"]
    integration.unregister()
    try:
        assert auto.AUTO_QUANTIZER_MAPPING["vptq"] is not ours
        assert auto.AUTO_QUANTIZER_MAPPING["vptq"].__name__ == "VptqHfQuantizer"
    finally:
        integration.register()
    assert auto.AUTO_QUANTIZER_MAPPING["vptq"] is ours


def test_import_hook_registers_lazily(packed: dict[str, Any]) -> None:
    out = _run(
        f"""
        import sys
        import vptq_rs, vptq_rs.integration as integ
        integ.autoregister()
        heavy = [m for m in ("torch", "transformers") if m in sys.modules]
        assert not heavy, heavy
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(packed["packed_dir"])!r})
        print(type(model.model.layers[0].mlp.down_proj).__name__, integ.is_registered())
        """
    )
    assert out.split() == ["VQuantLinear", "True"]


def test_import_vptq_rs_alone_arms_the_hook() -> None:
    """``import vptq_rs`` is enough (the package __init__ calls integration.autoregister())."""
    out = _run(
        """
        import sys
        import vptq_rs
        from vptq_rs.integration import _RegisterAfterImport
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        print(any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path))
        """
    )
    assert out.strip() == "True", "add `integration.autoregister()` to vptq_rs/__init__.py"


def test_registering_after_transformers_is_imported() -> None:
    import transformers.quantizers.auto as auto

    integration.unregister()
    assert auto.AUTO_QUANTIZER_MAPPING["vptq"].__name__ == "VptqHfQuantizer"
    integration.autoregister()  # transformers is imported: registers at once, no hook
    assert integration.is_registered()
    assert auto.AUTO_QUANTIZER_MAPPING["vptq"].__name__ == "VptqRsHfQuantizer"
