"""Memory of a packed checkpoint once loaded, against the same model dense (torch-free).

Built on the Rust validator's report, so ``vptq-rs inspect`` and
:func:`vptq_rs.checkpoint.resident_bytes` give the same numbers.
"""

from __future__ import annotations

import os
from typing import Any

# bytes per element of the float dtypes a checkpoint may use
_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def footprint(report: dict[str, Any]) -> dict[str, Any]:
    """Sizes from a ``validate_checkpoint`` report.

    quantized = every stored tensor (VQuantLinear keeps them packed); dense = the tensors of
    no quantized layer, plus each quantized layer's O*I weights and bias in its codebook's
    float dtype.
    """
    dense = report["unquantized_bytes"]
    dtypes = set()
    for layer in report["layers"]:
        size = _ITEMSIZE[layer["codebook_dtype"]]
        dtypes.add(layer["codebook_dtype"])
        dense += layer["bits"]["num_weights"] * size + layer["bits"]["linear_bias_bits"] // 8
    stored = report["tensor_bytes"]
    return {
        "quantized_bytes": stored,
        "dense_bytes": dense,
        "ratio": dense / stored if stored else float("nan"),
        "quantized_layers": len(report["layers"]),
        "dense_dtype": "/".join(sorted(_DTYPE_NAMES[d] for d in dtypes)),
    }


def resident_bytes(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Validate ``directory`` and return :func:`footprint` of it."""
    from vptq_rs._core import validate_checkpoint

    return footprint(validate_checkpoint(str(directory)))
