"""Packed VPTQ checkpoints (FORMAT.md): write, read, load as a model, convert to dense.

A packed folder holds ``config.json`` (the model config plus ``quantization_config`` with
``quant_method: "vptq"``), ``model.safetensors`` (or shards + index), the tokenizer files
and ``generation_config.json``. It loads unchanged in Microsoft's ``vptq`` package and,
after ``import vptq_rs``, in ``transformers.AutoModelForCausalLM.from_pretrained``.
Every folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptq_rs import ops
from vptq_rs.errors import CheckpointError, InvalidValueError
from vptq_rs.layout import LayerConfig, QuantizedLayer
from vptq_rs.nn import VQuantLinear, packed_tensors, unpack_layer

logger = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 2**30
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
# files of a model folder that are not tokenizer/generation files
_MODEL_FILES = {"config.json", SAFE_INDEX, "ppl_results.json"}

_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
# per-layer tensor names of a packed checkpoint (besides the Linear's own ``bias``)
PACKED_TENSOR_NAMES = (
    "indices",
    "centroids.weight",
    "res_centroids.weight",
    "outlier_indices",
    "outlier_centroids.weight",
    "perm",
    "weight_scale",
    "weight_bias",
)
DTYPE_NAMES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# -- low-level tensor files -------------------------------------------------------------------


def write_tensors(
    directory: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> list[str]:
    """Write ``tensors`` as ``model.safetensors`` or shards + index into ``directory``.

    Written by the Rust core (safetensors crate), each file atomically. Returns the file names.
    """
    from vptq_rs import _core

    directory = str(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name, t in tensors.items():
        if t.dtype not in _ST_DTYPES:
            raise InvalidValueError(f"tensor {name} has unsupported dtype {t.dtype}")
    items = [
        (name, _ST_DTYPES[t.dtype], list(t.shape), t.view(-1).view(torch.uint8).numpy().tobytes())
        for name, t in sorted(tensors.items())
    ]
    return list(_core.save_tensors(directory, items, int(max_shard_bytes), {"format": "pt"}))


def tensor_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a model folder (from the index when sharded)."""
    d = Path(directory)
    index = d / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index}: malformed index ({exc})") from exc
        files = sorted({d / f for f in weight_map.values()})
    else:
        files = (
            [d / SAFE_SINGLE] if (d / SAFE_SINGLE).is_file() else sorted(d.glob("*.safetensors"))
        )
    if not files:
        raise CheckpointError(f"{d}: no .safetensors files")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{d}: tensor file {f.name} named by the index is missing")
    return files


def read_tensors(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (memory-mapped through ``safetensors``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in tensor_files(directory):
        try:
            out.update(load_file(str(f)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{f}: cannot read safetensors file ({exc})") from exc
    return out


# -- atomic folders ---------------------------------------------------------------------------


class _AtomicDir:
    """Context manager yielding a temp folder beside ``target`` that is renamed into place."""

    def __init__(self, target: str | os.PathLike[str], overwrite: bool) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise InvalidValueError(f"{self.target} already exists (pass overwrite to replace it)")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent)
        )
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            self.target.rename(old)
        self.tmp.rename(self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _copy_side_files(src: str | os.PathLike[str] | None, dst: Path) -> None:
    """Copy tokenizer/generation/chat-template files of ``src`` (never weights or config)."""
    if src is None or not Path(src).is_dir():
        return
    for f in Path(src).iterdir():
        if (
            f.is_file()
            and f.name not in _MODEL_FILES
            and not f.name.endswith((".safetensors", ".bin", ".pt", ".gguf", ".pth"))
            and not f.name.startswith(".")
            and not (dst / f.name).exists()
        ):
            shutil.copy2(f, dst / f.name)


def _save_side(model: Any, tokenizer: Any, tmp: Path, source_dir: Any) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(tmp)
        except (
            ValueError,
            TypeError,
        ) as exc:  # an invalid generation config must not lose the model
            logger.warning("generation config not saved: %s", exc)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    _copy_side_files(source_dir, tmp)


# -- saving -------------------------------------------------------------------------------------


def quantization_config(
    layers: Mapping[str, QuantizedLayer], model: nn.Module | None = None
) -> dict[str, Any]:
    """The ``quantization_config`` dict of FORMAT.md for ``layers`` (module name -> layer)."""
    not_converted = []
    if model is not None:
        not_converted = sorted(
            name
            for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name not in layers
        )
    return {
        "quant_method": "vptq",
        "config_for_layers": {name: layers[name].config.to_hf() for name in sorted(layers)},
        "shared_layer_config": {},
        "modules_to_not_convert": not_converted,
    }


def _tied_targets(model: nn.Module) -> set[str]:
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    config = getattr(model, "config", None)
    if tied and config is not None and not getattr(config, "tie_word_embeddings", True):
        return set()
    return set(tied)


def save_packed(
    out_dir: str | os.PathLike[str],
    model: nn.Module,
    layers: Mapping[str, QuantizedLayer],
    tokenizer: Any = None,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    source_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a packed checkpoint folder for ``model`` with ``layers`` quantized.

    model: the float Hugging Face model (its config and every parameter not replaced by a
    quantized layer are saved); layers: full module name -> :class:`QuantizedLayer`;
    dtype: dtype of codebooks/scales and other floats (default: the model's dtype);
    source_dir: a folder whose tokenizer/generation files are copied as well.
    Returns the folder path.
    """
    modules = dict(model.named_modules())
    for name, layer in layers.items():
        mod = modules.get(name)
        if not isinstance(mod, nn.Linear):
            raise InvalidValueError(f"{name} is not an nn.Linear of the model")
        c = layer.config
        if (c.in_features, c.out_features) != (mod.in_features, mod.out_features):
            raise InvalidValueError(
                f"{name}: layer is {c.out_features}x{c.in_features}, the model's Linear is "
                f"{mod.out_features}x{mod.in_features}"
            )
        if c.vector_quant_dim != "out":
            logger.warning(
                "%s uses vector_quant_dim='in', which Microsoft's vptq cannot load", name
            )
    first = next(iter(model.parameters()), None)
    dtype = dtype or (first.dtype if first is not None else torch.float16)

    tensors: dict[str, torch.Tensor] = {}
    skip = _tied_targets(model)
    quantized_keys = {f"{n}.{p}" for n in layers for p in ("weight", "bias")}
    seen_ptrs: dict[int, str] = {}
    for key, t in model.state_dict().items():
        if key in quantized_keys or key in skip:
            continue
        ptr = t.data_ptr() if t.numel() else -1
        if ptr in seen_ptrs and t.numel():  # tied without a declared tie: store once
            logger.info("%s shares storage with %s; stored once", key, seen_ptrs[ptr])
            continue
        seen_ptrs[ptr] = key
        tensors[key] = t.to(dtype) if t.is_floating_point() else t

    for name in sorted(layers):
        layer = layers[name]
        layer.validate()
        pt = packed_tensors(layer, dtype)
        for field, t in pt._asdict().items():
            if t is not None:
                key = f"{field}.weight" if field.endswith("centroids") else field
                tensors[f"{name}.{key}"] = t
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias.detach().cpu().to(dtype)

    config = copy.deepcopy(model.config)  # type: ignore[attr-defined]
    config.quantization_config = quantization_config(layers, model)
    config.dtype = dtype
    with _AtomicDir(out_dir, overwrite) as tmp:
        write_tensors(tmp, tensors, max_shard_bytes)
        config.save_pretrained(tmp)
        _save_side(model, tokenizer, tmp, source_dir)
    logger.info("wrote packed checkpoint %s (%d quantized layers)", out_dir, len(layers))
    return Path(out_dir)


# -- loading ------------------------------------------------------------------------------------


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a model folder as a dict."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def layer_configs(config: Mapping[str, Any], tensor_names: Iterable[str]) -> dict[str, LayerConfig]:
    """Module name -> LayerConfig, from ``config_for_layers`` and ``shared_layer_config``.

    Shared entries apply by the module's last name component to every module that has an
    ``indices`` tensor and no explicit entry.
    """
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") != "vptq":
        raise CheckpointError(f"quant_method is {qc.get('quant_method')!r}, expected 'vptq'")
    out: dict[str, LayerConfig] = {}
    for name, entry in (qc.get("config_for_layers") or {}).items():
        try:
            out[name] = LayerConfig.from_hf(entry)
        except InvalidValueError as exc:
            raise CheckpointError(f"layer {name}: {exc}") from exc
    shared = qc.get("shared_layer_config") or {}
    if shared:
        for key in tensor_names:
            if not key.endswith(".indices"):
                continue
            name = key.removesuffix(".indices")
            tail = name.rsplit(".", 1)[-1]
            if name not in out and tail in shared:
                try:
                    out[name] = LayerConfig.from_hf(shared[tail])
                except InvalidValueError as exc:
                    raise CheckpointError(f"layer {name}: {exc}") from exc
    return out


def _layer_tensors(
    name: str, cfg: LayerConfig, tensors: Mapping[str, torch.Tensor]
) -> tuple[ops.PackedTensors, torch.Tensor | None]:
    def get(key: str, needed: bool) -> torch.Tensor | None:
        t = tensors.get(f"{name}.{key}")
        if needed and t is None:
            raise CheckpointError(f"layer {name}: tensor {key} is missing")
        return t

    pt = ops.PackedTensors(
        indices=get("indices", True),  # type: ignore[arg-type]
        centroids=get("centroids.weight", True),  # type: ignore[arg-type]
        res_centroids=get("res_centroids.weight", cfg.num_res_centroids > 0),
        outlier_indices=get("outlier_indices", cfg.outlier_size > 0),
        outlier_centroids=get("outlier_centroids.weight", cfg.outlier_size > 0),
        perm=get("perm", cfg.enable_perm),
        weight_scale=get("weight_scale", cfg.enable_norm),
        weight_bias=get("weight_bias", cfg.enable_norm),
    )
    if not cfg.num_res_centroids:
        pt = pt._replace(res_centroids=None)
    if not cfg.outlier_size:
        pt = pt._replace(outlier_indices=None, outlier_centroids=None)
    if not cfg.enable_perm:
        pt = pt._replace(perm=None)
    return pt, get("bias", cfg.bias)


def _check_shapes(name: str, cfg: LayerConfig, pt: ops.PackedTensors) -> None:
    words = -(-cfg.group_size * (cfg.index_bits + cfg.res_bits) // 32)
    g, v = cfg.group_num, cfg.vector_len
    want = {
        "indices": ((g, cfg.num_vectors, words), (torch.int32,)),
        "centroids": ((g, cfg.num_centroids * v), None),
        "res_centroids": ((g, cfg.num_res_centroids * v), None),
        "outlier_indices": ((1, cfg.num_outlier_vectors, cfg.outlier_size), (torch.int16,)),
        "outlier_centroids": ((1, cfg.outlier_num_centroids * cfg.outlier_vector_len), None),
        "perm": ((cfg.q_cols,), (torch.int16, torch.int64, torch.int32)),
        "weight_scale": ((cfg.q_cols,), None),
        "weight_bias": ((cfg.q_cols,), None),
    }
    for field, (shape, dtypes) in want.items():
        t = getattr(pt, field)
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"layer {name}: {field} has shape {list(t.shape)}, expected {list(shape)}"
            )
        if dtypes is not None and t.dtype not in dtypes:
            raise CheckpointError(
                f"layer {name}: {field} has dtype {t.dtype}, expected {dtypes[0]}"
            )


def load_packed(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, QuantizedLayer], dict[str, torch.Tensor]]:
    """Read a packed folder: ``(config dict, {module: QuantizedLayer}, other tensors)``.

    Layers are unpacked on CPU (codes int64); "other tensors" are every tensor that does not
    belong to a quantized layer (embeddings, norms, lm_head, ...), unchanged.
    """
    config = read_config(directory)
    tensors = read_tensors(directory)
    cfgs = layer_configs(config, tensors)
    layers: dict[str, QuantizedLayer] = {}
    used: set[str] = set()
    for name, cfg in cfgs.items():
        pt, bias = _layer_tensors(name, cfg, tensors)
        _check_shapes(name, cfg, pt)
        try:
            layers[name] = unpack_layer(cfg, pt, bias)
        except InvalidValueError as exc:
            raise CheckpointError(f"layer {name}: {exc}") from exc
        used.update(f"{name}.{suffix}" for suffix in (*PACKED_TENSOR_NAMES, "bias"))
    others = {k: v for k, v in tensors.items() if k not in used}
    return config, layers, others


def from_pretrained(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    cache_weights: bool = False,
    **kwargs: Any,
) -> Any:
    """Load a packed folder (or any Hugging Face folder) as a ready causal LM.

    Quantized Linears become :class:`vptq_rs.VQuantLinear`; ``dtype`` defaults to the
    checkpoint's; ``device`` moves the model after loading; ``cache_weights`` keeps dense
    weights in memory for speed (explicit, never the default). Extra ``kwargs`` go to
    ``AutoModelForCausalLM.from_pretrained``.
    """
    from transformers import AutoModelForCausalLM

    from vptq_rs.integration import register

    register()
    if not Path(path).is_dir():
        raise InvalidValueError(f"{path} is not a model folder")
    if isinstance(dtype, str) and dtype in DTYPE_NAMES:
        dtype = DTYPE_NAMES[dtype]
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto", **kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    if cache_weights:
        for mod in model.modules():
            if isinstance(mod, VQuantLinear):
                mod.cache_weight(True)
    return model


# -- conversion and sizes -----------------------------------------------------------------------


def unpack_to_dense(
    packed_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: torch.dtype = torch.float16,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write an ordinary dense Hugging Face folder (no quantization_config) from a packed one."""
    from tqdm import tqdm

    config, layers, others = load_packed(packed_dir)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in others.items()}
    for name in tqdm(sorted(layers), desc="dequantize", unit="layer", leave=False):
        layer = layers[name]
        tensors[f"{name}.weight"] = layer.dequantize(dtype)
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias.to(dtype)
    config = dict(config)
    config.pop("quantization_config", None)
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    with _AtomicDir(out_dir, overwrite) as tmp:
        write_tensors(tmp, tensors, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _copy_side_files(packed_dir, tmp)
    return Path(out_dir)


def module_bytes(model: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared storage counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.device.type == "meta" or key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def resident_bytes(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Memory of the packed model once loaded vs the same model dense, from the files alone.

    See :func:`vptq_rs.footprint.footprint`; the checkpoint is validated on the way.
    """
    from vptq_rs.footprint import resident_bytes as _resident

    return _resident(directory)


def is_packed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a ``quant_method: "vptq"`` checkpoint."""
    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    try:
        qc = read_config(p).get("quantization_config") or {}
    except CheckpointError:
        return False
    return isinstance(qc, dict) and qc.get("quant_method") == "vptq"


def load_model(
    spec: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    cache_weights: bool = False,
    sorted_gemv: bool = False,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a float folder, a packed folder or a ``.gguf`` file.

    dtype: torch dtype, "fp16"/"bf16"/"fp32", "auto" (the checkpoint's) or None = fp32 on
    CPU and the checkpoint's dtype elsewhere (CPU half precision is slow and less exact).
    sorted_gemv: one-token CUDA forwards of the layers it covers go through the sorted GEMV
    (:meth:`VQuantLinear.use_sorted_gemv`; a code-sorted copy of their indices is kept).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(dtype, str):
        if dtype == "auto":
            dtype = None
        elif dtype in DTYPE_NAMES:
            dtype = DTYPE_NAMES[dtype]
        else:
            raise InvalidValueError(f"unknown dtype {dtype!r} (fp16, bf16, fp32 or auto)")
    elif dtype is None and dev.type == "cpu":
        dtype = torch.float32
    if path.is_file() and path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidValueError(f"{path} has no config.json: not a Hugging Face model folder")
        if is_packed(path):
            model = from_pretrained(path, dtype=dtype, cache_weights=False)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    else:
        raise InvalidValueError(f"{spec}: not a model folder or a .gguf file")
    model = model.to(dev).eval()
    if cache_weights:
        for mod in model.modules():
            if isinstance(mod, VQuantLinear):
                mod.cache_weight(True)
    if sorted_gemv:
        from vptq_rs.nn import use_sorted_gemv

        covered, total = use_sorted_gemv(model)
        where = "" if dev.type == "cuda" else f" (it only runs on CUDA; this model is on {dev})"
        logger.info("sorted GEMV on %d of %d quantized layers%s", covered, total, where)
    return model, tokenizer


def _layer_result(path: Path) -> QuantizedLayer:
    """One per-layer result file of a quantize run, through the quantizer's own reader."""
    from vptq_rs.quantize.run import load_layer_result  # type: ignore[import-not-found]

    result = load_layer_result(path)
    layer = result if isinstance(result, QuantizedLayer) else getattr(result, "layer", None)
    if not isinstance(layer, QuantizedLayer):
        raise CheckpointError(f"{path}: load_layer_result returned {type(result).__name__}")
    return layer


def _run_store_dtype(meta: Mapping[str, Any], model_dtype: torch.dtype) -> torch.dtype:
    """The run's ``--dtype`` (options.quant.store_dtype) if set, else fp16/bf16 as the model."""
    store = ((meta.get("options") or {}).get("quant") or {}).get("store_dtype", "auto")
    if store != "auto" and isinstance(getattr(torch, str(store), None), torch.dtype):
        return getattr(torch, store)
    return model_dtype if model_dtype in (torch.float16, torch.bfloat16) else torch.float16


def pack_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Pack a quantize run folder (``run.json`` + ``layers/<module>.safetensors``).

    The float model named by run.json (``model``) provides the config, tokenizer and the
    tensors that were not quantized. dtype defaults to the run's ``--dtype``, else the
    model's when it is fp16/bf16, else fp16. Writes ``RUN_DIR/packed_model`` unless
    ``out_dir`` is given.
    """
    run = Path(run_dir)
    meta_path = run / "run.json"
    if not meta_path.is_file():
        raise InvalidValueError(f"{run} has no run.json: not a vptq-rs quantize run folder")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    model_path = meta.get("model") or (meta.get("options") or {}).get("model")
    if not model_path:
        raise CheckpointError(f"{meta_path} names no model")
    files = sorted((run / "layers").glob("*.safetensors"))
    if not files:
        raise InvalidValueError(f"{run / 'layers'} holds no per-layer results")
    layers = {f.name.removesuffix(".safetensors"): _layer_result(f) for f in files}
    from vptq_rs.models import load_model as load_float_model

    model, tokenizer = load_float_model(model_path)
    if dtype is None:
        dtype = _run_store_dtype(meta, model.dtype)
    source = Path(model_path) if Path(model_path).is_dir() else None
    return save_packed(
        Path(out_dir) if out_dir is not None else run / "packed_model",
        model,
        layers,
        tokenizer,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
        source_dir=source,
        overwrite=overwrite,
    )
