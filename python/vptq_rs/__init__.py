"""vptq-rs: vector post-training quantization of LLMs with a Rust core.

Importing this package is cheap: it loads the compiled core and numpy only. Anything that
needs torch or transformers (``VQuantLinear``, ``from_pretrained``, the quantizer) is
imported lazily on first attribute access, and importing never initialises CUDA.
"""

from __future__ import annotations

import importlib
from typing import Any

from vptq_rs import integration as _integration
from vptq_rs._core import __version__, kmeans, pack_indices, unpack_indices
from vptq_rs.errors import (
    CheckpointError,
    InvalidValueError,
    UnsupportedModelError,
    VptqError,
    VptqIOError,
)

# transformers then loads quant_method "vptq" checkpoints with our layers (on CPU too); this
# only arms an import hook unless transformers is already imported
_integration.autoregister()

# name -> module that defines it; resolved on first access so torch loads only when needed
_LAZY = {
    "VQuantLinear": "vptq_rs.nn",
    "from_pretrained": "vptq_rs.checkpoint",
    "QuantizedLayer": "vptq_rs.layout",
    "LayerConfig": "vptq_rs.layout",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vptq_rs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointError",
    "InvalidValueError",
    "LayerConfig",
    "QuantizedLayer",
    "UnsupportedModelError",
    "VQuantLinear",
    "VptqError",
    "VptqIOError",
    "__version__",
    "from_pretrained",
    "kmeans",
    "pack_indices",
    "unpack_indices",
]
