"""Loading Hugging Face causal LMs and walking their decoder layers by config and module tree.

The walker never guesses from a model's name: it reads ``config.model_type``, finds the
decoder's ``ModuleList`` (the one whose length is ``config.num_hidden_layers``) and, inside
each decoder layer, groups the ``nn.Linear`` modules that read the same input (one Hessian
per group, FORMAT.md keys ``qkv``, ``o``, ``up``, ``down``). Every Linear of a layer must
land in exactly one group, so an unexpected module shape is an error, not a silent skip.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vptq_rs.errors import InvalidValueError, UnsupportedModelError

log = logging.getLogger(__name__)

# model_type -> Hessian key -> Linear paths inside one decoder layer (shared input per key)
_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": {
        "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "o": ("self_attn.o_proj",),
        "up": ("mlp.gate_proj", "mlp.up_proj"),
        "down": ("mlp.down_proj",),
    },
    "phi3": {
        "qkv": ("self_attn.qkv_proj",),
        "o": ("self_attn.o_proj",),
        "up": ("mlp.gate_up_proj",),
        "down": ("mlp.down_proj",),
    },
}
_GROUPS["mistral"] = _GROUPS["llama"]
_GROUPS["qwen2"] = _GROUPS["llama"]
SUPPORTED_MODEL_TYPES = tuple(sorted(_GROUPS))
HESSIAN_KEYS = ("qkv", "o", "up", "down")


@dataclass(frozen=True)
class LinearGroup:
    """Linears of one decoder layer that read the same input (one Hessian).

    ``layer_index`` is the decoder layer, ``key`` the FORMAT.md Hessian key and ``names``
    the full module names (e.g. ``model.layers.0.self_attn.q_proj``) in a fixed order.
    """

    layer_index: int
    key: str
    names: tuple[str, ...]


def check_supported(config: Any) -> str:
    """``config.model_type`` if vptq-rs can walk it; else UnsupportedModelError."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _GROUPS:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported: "
            + ", ".join(SUPPORTED_MODEL_TYPES)
        )
    return str(model_type)


def resolve_model_path(model: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """Split ``--model`` into (path or hub id, extra ``from_pretrained`` kwargs).

    A ``.gguf`` file becomes (its folder, ``{"gguf_file": name}``); a folder must hold a
    ``config.json``; anything else that does not exist locally is taken as a hub id.
    """
    raw = str(model)
    path = Path(raw).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InvalidValueError(f"--model: GGUF file {path} not found")
        return str(path.parent.resolve()), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return str(path.resolve()), {"gguf_file": ggufs[0].name}
            raise InvalidValueError(f"--model: folder {path} has no config.json")
        return str(path.resolve()), {}
    if path.exists():
        raise InvalidValueError(f"--model: {path} is neither a folder nor a .gguf file")
    if raw.count("/") != 1 or raw.startswith((".", "/", "~")):
        raise InvalidValueError(f"--model: {raw} does not exist locally and is not a hub id")
    return raw, {}


def model_name(model: str | os.PathLike[str]) -> str:
    """A short, filesystem-safe name for run folders (file stem or last path part)."""
    raw = str(model).rstrip("/")
    path = Path(raw)
    name = path.stem if path.suffix.lower() == ".gguf" else path.name
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "model"


def _load_source(model: str | os.PathLike[str]) -> tuple[str, dict[str, Any], Path | None]:
    """``(path, from_pretrained kwargs, GGUF file still to convert or None)``.

    A GGUF file converted before is read from its cached folder (:mod:`vptq_rs.gguf_cache`).
    """
    from vptq_rs import gguf_cache

    path, extra = resolve_model_path(model)
    if "gguf_file" not in extra:
        return path, extra, None
    gguf = Path(path) / extra["gguf_file"]
    cached = gguf_cache.lookup(gguf)
    if cached is not None:
        return str(cached), {}, None
    return path, extra, gguf


def load_config(model: str | os.PathLike[str]) -> Any:
    """The transformers config of ``--model`` without loading weights; checks support."""
    from transformers import AutoConfig

    path, extra, _ = _load_source(model)
    try:
        config = AutoConfig.from_pretrained(path, **extra)
    except OSError as exc:
        raise InvalidValueError(f"--model: cannot read config of {model}: {exc}") from exc
    check_supported(config)
    return config


def load_model(
    model: str | os.PathLike[str], dtype: Any = None, device: str = "cpu"
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local folder, a ``.gguf`` file or a hub id.

    ``dtype`` defaults to the checkpoint's dtype (float32 for GGUF, which transformers
    dequantizes). The tokenizer is None when the folder has none. A GGUF file's first
    float32 load is cached as a Hugging Face folder that later loads read instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vptq_rs import gguf_cache

    path, extra, gguf = _load_source(model)
    load_config(path if gguf is None else model)
    kwargs: dict[str, Any] = dict(extra)
    kwargs["dtype"] = dtype if dtype is not None else ("auto" if not extra else torch.float32)
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise InvalidValueError(f"--model: cannot load {model}: {exc}") from exc
    try:
        tok = AutoTokenizer.from_pretrained(path, **extra)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("no tokenizer for %s (%s)", model, exc)
        tok = None
    if gguf is not None:
        gguf_cache.store(gguf, lm, tok)
    lm.eval().to(device)
    return lm, tok


def decoder_layers(model: Any) -> tuple[str, Any]:
    """``(prefix, ModuleList)`` of the decoder layers, found by length, not by name."""
    import torch

    config = model.config
    check_supported(config)
    n = int(config.num_hidden_layers)
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and name
    ]
    if len(found) != 1:
        raise UnsupportedModelError(
            f"expected one decoder layer list of length {n}, found {[f[0] for f in found]}"
        )
    return found[0]


def linear_groups(model: Any) -> list[LinearGroup]:
    """Every quantizable Linear of every decoder layer, grouped by shared input.

    Order: layer by layer, then ``qkv, o, up, down``. ``lm_head`` and embeddings are never
    listed (they stay unquantized).
    """
    import torch

    table = _GROUPS[check_supported(model.config)]
    prefix, layers = decoder_layers(model)
    out: list[LinearGroup] = []
    for i, layer in enumerate(layers):
        linears = {n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        seen: set[str] = set()
        for key in HESSIAN_KEYS:
            rel = table[key]
            missing = [r for r in rel if r not in linears]
            if missing:
                raise UnsupportedModelError(
                    f"decoder layer {i} of {model.config.model_type} lacks Linear {missing}"
                )
            seen.update(rel)
            out.append(LinearGroup(i, key, tuple(f"{prefix}.{i}.{r}" for r in rel)))
        extra = sorted(linears - seen)
        if extra:
            raise UnsupportedModelError(f"decoder layer {i} has unexpected Linear(s) {extra}")
    return out


def get_module(model: Any, name: str) -> Any:
    """The submodule at a dotted path."""
    return model.get_submodule(name)
