"""Make ``transformers`` load ``quant_method: "vptq"`` checkpoints with vptq-rs layers.

``register()`` installs :class:`VptqRsHfQuantizer` for ``"vptq"``: quantized Linears become
:class:`vptq_rs.nn.VQuantLinear`, which runs on CPU and GPU and needs neither Microsoft's
``vptq`` package nor a GPU (transformers' built-in VPTQ quantizer requires both).

Importing this module imports neither torch nor transformers. :func:`autoregister` (called
by ``import vptq_rs``) registers at once when transformers' quantizer table is already
imported, and otherwise arms a one-shot import hook that registers right after it is.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

_TARGET = "transformers.quantizers.auto"
_state: dict[str, Any] = {"registered": False, "previous": None}


def register() -> None:
    """Install the vptq-rs quantizer for ``quant_method: "vptq"`` (idempotent)."""
    if _state["registered"]:
        return
    from transformers.quantizers import auto

    cls = _quantizer_class()
    previous = auto.AUTO_QUANTIZER_MAPPING.get("vptq")
    if previous is cls:
        _state["registered"] = True
        return
    # transformers ships its own "vptq" quantizer (GPU + vptq package only) and its public
    # register_quantizer() refuses an existing name, so the built-in entry is taken out first
    # and ours registered through the public API; unregister() puts the built-in one back.
    if previous is not None:
        del auto.AUTO_QUANTIZER_MAPPING["vptq"]
    try:
        auto.register_quantizer("vptq")(cls)
    except Exception:
        if previous is not None:
            auto.AUTO_QUANTIZER_MAPPING["vptq"] = previous
        raise
    if "vptq" not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        from transformers.utils.quantization_config import VptqConfig

        auto.register_quantization_config("vptq")(VptqConfig)
    _state.update(registered=True, previous=previous)
    logger.debug("registered vptq-rs as the transformers quantizer for quant_method 'vptq'")


def unregister() -> None:
    """Restore transformers' own ``"vptq"`` quantizer."""
    if not _state["registered"]:
        return
    from transformers.quantizers import auto

    if _state["previous"] is not None:
        auto.AUTO_QUANTIZER_MAPPING["vptq"] = _state["previous"]
    else:
        auto.AUTO_QUANTIZER_MAPPING.pop("vptq", None)
    _state.update(registered=False, previous=None)


def is_registered() -> bool:
    return bool(_state["registered"])


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """One-shot finder: lets the normal finders load ``_TARGET``, then calls register()."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            try:
                register()
            except Exception as exc:  # never break importing transformers
                logger.warning("vptq-rs could not register with transformers: %s", exc)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def autoregister() -> None:
    """Register now if transformers' quantizers are imported, else when they get imported."""
    if _TARGET in sys.modules:
        try:
            register()
        except Exception as exc:
            logger.warning("vptq-rs could not register with transformers: %s", exc)
        return
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def _quantizer_class() -> type:
    """Build the HfQuantizer subclass (deferred: it needs transformers and torch)."""
    cached = _state.get("cls")
    if cached is not None:
        return cached
    from transformers.quantizers.base import HfQuantizer

    class VptqRsHfQuantizer(HfQuantizer):
        """Loads pre-quantized VPTQ checkpoints into :class:`vptq_rs.nn.VQuantLinear`."""

        requires_calibration = True

        def validate_environment(self, *args: Any, **kwargs: Any) -> None:
            return None

        def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> None:
            replace_linears(model, self.quantization_config)

        def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
            return model

        @property
        def is_trainable(self) -> bool:
            return False

        def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
            return True

    _state["cls"] = VptqRsHfQuantizer
    return VptqRsHfQuantizer


def replace_linears(model: Any, quantization_config: Any) -> int:
    """Swap every Linear named by the quantization config for an empty VQuantLinear.

    Works on a model built on the meta device (as transformers does before loading).
    Returns the number of modules replaced.
    """
    import torch
    from torch import nn

    from vptq_rs.errors import CheckpointError, InvalidValueError
    from vptq_rs.layout import LayerConfig
    from vptq_rs.nn import VQuantLinear

    def get(key: str) -> Any:
        if isinstance(quantization_config, dict):
            return quantization_config.get(key)
        return getattr(quantization_config, key, None)

    per_layer = get("config_for_layers") or {}
    shared = get("shared_layer_config") or {}
    replaced = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        entry = per_layer.get(name)
        if entry is None:
            entry = shared.get(name.rsplit(".", 1)[-1])
        if entry is None:
            continue
        try:
            cfg = LayerConfig.from_hf(entry)
        except InvalidValueError as exc:
            raise CheckpointError(f"layer {name}: {exc}") from exc
        if (cfg.in_features, cfg.out_features) != (module.in_features, module.out_features):
            raise CheckpointError(
                f"layer {name}: config says {cfg.out_features}x{cfg.in_features}, the model's "
                f"Linear is {module.out_features}x{module.in_features}"
            )
        with torch.device("meta"):
            new = VQuantLinear(cfg, dtype=module.weight.dtype)
        model.set_submodule(name, new)
        replaced += 1
    if per_layer and not replaced:
        logger.warning("quantization_config names no Linear of this model; nothing replaced")
    return replaced
