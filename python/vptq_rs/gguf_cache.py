"""A converted copy of each GGUF model, so only the first load pays for the conversion.

transformers reads a ``.gguf`` file by parsing its metadata once for the config, once more
for the model and again for the tokenizer, then dequantizing every tensor in Python: 20-75 s
for the 98 MB SmolLM2 file, on every command. After that first load the model (float32,
exactly what transformers produced) and its tokenizer are saved as an ordinary Hugging Face
folder under ``$VPTQ_RS_CACHE_DIR/gguf`` (default ``~/.cache/vptq_rs/gguf``), which later
loads read in about a second.

The folder name hashes the file's resolved path, size, modification time and first MiB, so
an edited or replaced file gets a new entry. A folder counts only once its ``source.json``
marker exists (written last, then the folder is renamed into place). Set
``VPTQ_RS_GGUF_CACHE=0`` to turn it off; it is also skipped when the float32 copy would not
fit in ``MAX_BYTES`` or in half the free disk space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = "source.json"
MAX_BYTES = 8 << 30
FORMAT_VERSION = 1


def enabled() -> bool:
    return os.environ.get("VPTQ_RS_GGUF_CACHE", "1") not in ("0", "", "false", "no")


def cache_root() -> Path:
    base = os.environ.get("VPTQ_RS_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "vptq_rs") / "gguf"


def entry_dir(gguf: Path) -> Path:
    """Where the converted copy of ``gguf`` lives (whether or not it exists yet)."""
    gguf = gguf.resolve()
    st = gguf.stat()
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION}\0{gguf}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    with open(gguf, "rb") as f:
        h.update(f.read(1 << 20))
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in gguf.stem)
    return cache_root() / f"{stem}-{h.hexdigest()[:16]}"


def lookup(gguf: Path) -> Path | None:
    """The complete converted folder for ``gguf``, or None."""
    if not enabled():
        return None
    try:
        d = entry_dir(gguf)
    except OSError:
        return None
    return d if (d / MARKER).is_file() and (d / "config.json").is_file() else None


def _save_weights(model: Any, folder: Path) -> None:
    """config.json + model.safetensors of a GGUF-loaded model.

    ``save_pretrained`` refuses models loaded from GGUF (they carry a GGUF quantizer even
    though the weights are already plain float32), so write the two files directly, without
    the quantizer's entry in the config. Tied weights are stored once.
    """
    import copy

    from safetensors.torch import save_model

    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.save_pretrained(folder)
    # a GGUF file's own config names no dtype; keep it that way so configs (and the packed
    # checkpoints that copy them) come out the same whether or not the cache was used
    path = folder / "config.json"
    data = json.loads(path.read_text())
    for key in ("dtype", "torch_dtype"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def store(gguf: Path, model: Any, tokenizer: Any) -> Path | None:
    """Save ``model`` (float32, as loaded from ``gguf``) and ``tokenizer``; best effort.

    Returns the folder, or None when skipped or when saving failed (logged, nothing left).
    """
    import torch

    if not enabled():
        return None
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return None  # only the exact (float32) conversion is worth keeping
    try:
        final = entry_dir(gguf)
        final.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(final.parent).free
    except OSError as exc:
        log.info("GGUF cache unavailable (%s)", exc)
        return None
    if nbytes > MAX_BYTES or 2 * nbytes > free:
        log.info("GGUF cache skipped: %.1f GB float32 copy", nbytes / 1e9)
        return None
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", suffix=".partial", dir=final.parent))
    try:
        _save_weights(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        st = gguf.resolve().stat()
        (tmp / MARKER).write_text(
            json.dumps(
                {"gguf": str(gguf.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
                indent=1,
            )
        )
        if final.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return final if (final / MARKER).is_file() else None
        os.replace(tmp, final)
    except Exception as exc:  # a cache must never break loading
        log.warning("could not cache the converted GGUF model (%s)", exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    log.info("cached the converted GGUF model in %s", final)
    return final
