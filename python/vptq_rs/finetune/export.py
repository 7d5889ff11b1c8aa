"""Write a fine-tuned quantized model back as a packed checkpoint in its source's exact format.

Indices never change during fine-tuning and a loaded ``VQuantLinear`` keeps the checkpoint's
tensor names, so the new checkpoint is the source one with every tensor re-read from the
model: the same names, shapes and dtypes, and the source's ``config.json`` and tokenizer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptq_rs.checkpoint import SAFE_INDEX, tensor_files, write_tensors
from vptq_rs.errors import CheckpointError, InvalidValueError

_ST_TO_TORCH = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def source_layout(directory: str | os.PathLike[str]) -> dict[str, tuple[torch.dtype, list[int]]]:
    """Tensor name -> (dtype, shape) of a checkpoint folder, from the file headers only."""
    from safetensors import safe_open

    out = {}
    for f in tensor_files(directory):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a Mapping
                sl = fh.get_slice(key)
                dt = _ST_TO_TORCH.get(sl.get_dtype())
                if dt is None:
                    raise CheckpointError(f"{f.name}: tensor {key} has unknown dtype")
                out[key] = (dt, list(sl.get_shape()))
    return out


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the underlying model with peft's wrapping undone (adapters dropped)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {}
    for key, t in base.state_dict().items():
        if ".lora_" in key or key.startswith("lora_"):
            continue
        out[key.replace(".base_layer.", ".")] = t
    return out


def save_finetuned(
    model: nn.Module,
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (loaded from packed ``source_dir``, then trained) to ``out_dir``.

    Every tensor of the source checkpoint is written from the model, cast to the source's
    dtype; config and tokenizer files are copied. The folder appears atomically.
    """
    src = Path(source_dir)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InvalidValueError(f"{out} already exists")
    layout = source_layout(src)
    state = base_state_dict(model)
    tensors: dict[str, torch.Tensor] = {}
    for key, (dtype, shape) in layout.items():
        t = state.get(key)
        if t is None:
            raise CheckpointError(f"the model has no tensor {key} of checkpoint {src}")
        if list(t.shape) != shape:
            raise CheckpointError(f"{key}: model has shape {list(t.shape)}, checkpoint {shape}")
        tensors[key] = t.detach().to("cpu", dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = tensor_files(src)
        biggest = max(f.stat().st_size for f in files)
        write_tensors(tmp, tensors, max_shard_bytes=max(biggest, 1) if len(files) > 1 else 2**62)
        for f in src.iterdir():
            if (
                f.is_file()
                and not f.name.endswith(".safetensors")
                and f.name not in (SAFE_INDEX, "ppl_results.json")
                and not f.name.startswith(".")
            ):
                shutil.copy2(f, tmp / f.name)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def validate(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The Rust core's checkpoint validation (what ``vptq-rs inspect`` runs), if built."""
    from vptq_rs import _core

    fn = getattr(_core, "validate_checkpoint", None)
    return fn(str(directory)) if fn is not None else None
