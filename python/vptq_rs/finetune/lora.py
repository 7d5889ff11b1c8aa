"""LoRA adapters on quantized layers through ``peft``'s custom-module support.

:class:`VQuantLoraLinear` follows peft's LoRA-layer conventions (like its AQLM/GPTQ layers:
no merging, since the base weight is packed) and is registered per config with
``LoraConfig._register_custom_module({VQuantLinear: VQuantLoraLinear})``. Adapters are saved
and loaded the peft way (``adapter_config.json`` + ``adapter_model.safetensors``); the
registration is not serialised by peft, so :func:`lora_config` / :func:`load_adapter` redo it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptq_rs.errors import InvalidValueError
from vptq_rs.nn import VQuantLinear

DEFAULT_RANK = 16


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:  # an optional dependency: say how to get it
        raise InvalidValueError(
            "LoRA needs the 'peft' package: pip install peft (tested with 0.21.2)"
        ) from exc
    return peft


def _layer_class() -> type:
    """Build the peft layer class lazily (peft is optional and imports transformers)."""
    cached = _CACHE.get("cls")
    if cached is not None:
        return cached
    from peft.tuners.lora.layer import LoraLayer

    class VQuantLoraLinear(nn.Module, LoraLayer):
        """LoRA on a :class:`VQuantLinear`: ``y = base(x) + B(A(dropout(x))) * scaling``."""

        def __init__(
            self,
            base_layer: nn.Module,
            adapter_name: str,
            config: Any,
            r: int = 0,
            lora_alpha: int = 1,
            **kwargs: Any,
        ) -> None:
            if config.use_dora:
                raise InvalidValueError("DoRA is not supported on VQuantLinear layers")
            super().__init__()
            LoraLayer.__init__(self, base_layer)
            self._active_adapter = adapter_name
            self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

        def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
            return module.in_features, module.out_features  # type: ignore[return-value]

        def _get_base_layer_device_and_dtype(self, base_layer: nn.Module) -> tuple[Any, Any]:
            w = base_layer.centroids.weight  # type: ignore[union-attr]
            return w.device, w.dtype

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            result = self.base_layer(x)
            if self.disable_adapters:
                return result
            for name in self.active_adapters:
                if name not in self.lora_A:
                    continue
                a, b = self.lora_A[name], self.lora_B[name]
                cast = not torch.is_autocast_enabled(x.device.type)
                xa = x.to(a.weight.dtype) if cast else x
                out = b(a(self.lora_dropout[name](xa)))
                if cast:
                    out = out.to(result.dtype)
                result = result + out * self.scaling[name]
            return result

        def __repr__(self) -> str:
            return "lora." + super().__repr__()

    _CACHE["cls"] = VQuantLoraLinear
    return VQuantLoraLinear


_CACHE: dict[str, Any] = {}


def quantized_module_names(model: nn.Module) -> list[str]:
    """Full names of the VQuantLinear modules of ``model``."""
    return [n for n, m in model.named_modules() if isinstance(m, VQuantLinear)]


def register(config: Any) -> Any:
    """Register :class:`VQuantLoraLinear` for ``VQuantLinear`` on a peft ``LoraConfig``."""
    config._register_custom_module({VQuantLinear: _layer_class()})
    return config


def lora_config(
    model: nn.Module,
    *,
    r: int = DEFAULT_RANK,
    alpha: int | None = None,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> Any:
    """A registered ``LoraConfig`` targeting every quantized Linear (or ``target_modules``)."""
    peft = _peft()
    targets = target_modules or sorted(
        {n.rsplit(".", 1)[-1] for n in quantized_module_names(model)}
    )
    if not targets:
        raise InvalidValueError("the model has no quantized layers to put LoRA adapters on")
    cfg = peft.LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return register(cfg)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    # peft probes the model's old checkpointing attribute name; transformers 5 warns on it
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
        )
        yield


def add_lora(model: nn.Module, config: Any) -> Any:
    """Wrap ``model`` in a ``PeftModel`` with fresh adapters (only they require grad)."""
    peft = _peft()
    with _quiet_peft():
        return peft.get_peft_model(model, config)


def save_adapter(peft_model: Any, out_dir: str | os.PathLike[str], base: str | None = None) -> Path:
    """Save adapters the peft way; ``base`` is recorded as ``base_model_name_or_path``."""
    cfg = peft_model.peft_config[peft_model.active_adapter]
    if base is not None:
        cfg.base_model_name_or_path = str(base)
    peft_model.save_pretrained(str(out_dir))
    return Path(out_dir)


def load_adapter(
    model: nn.Module, adapter_path: str | os.PathLike[str], *, trainable: bool = False
):
    """Attach the adapters saved in ``adapter_path`` to a loaded quantized ``model``."""
    peft = _peft()
    path = Path(adapter_path)
    if not (path / "adapter_config.json").is_file():
        raise InvalidValueError(f"{path} holds no adapter_config.json: not a peft adapter folder")
    cfg = register(peft.LoraConfig.from_pretrained(str(path)))
    with _quiet_peft():
        return peft.PeftModel.from_pretrained(model, str(path), config=cfg, is_trainable=trainable)


def load_with_adapter(
    model_path: str | os.PathLike[str],
    adapter_path: str | os.PathLike[str] | None = None,
    *,
    dtype: Any = None,
    device: Any = None,
    cache_weights: bool = False,
    sorted_gemv: bool = False,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` like :func:`vptq_rs.checkpoint.load_model`, adapters attached.

    Without ``adapter_path`` this is exactly ``load_model``. Dense-weight caching of the base
    layers still works under the adapters (peft calls the base layer's forward).
    """
    from vptq_rs.checkpoint import load_model

    model, tokenizer = load_model(
        model_path,
        dtype=dtype,
        device=device,
        cache_weights=cache_weights,
        sorted_gemv=sorted_gemv,
    )
    if adapter_path is None:
        return model, tokenizer
    net = load_adapter(model, adapter_path)
    return net.eval(), tokenizer
