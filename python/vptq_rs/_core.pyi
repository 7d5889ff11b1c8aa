"""Type stubs of the compiled core (rust/vptq-py)."""

from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

__version__: str

def pack_indices(
    main: npt.NDArray[np.integer[Any]],
    index_bits: int,
    res: npt.NDArray[np.integer[Any]] | None = None,
    res_bits: int = 0,
) -> npt.NDArray[np.int32]: ...
def unpack_indices(
    packed: npt.NDArray[np.int32], index_bits: int, n: int, res_bits: int = 0
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32] | None]: ...
@overload
def kmeans(
    x: npt.NDArray[np.float32],
    k: int,
    *,
    weights: npt.NDArray[np.float32] | None = None,
    iters: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    return_info: Literal[False] = False,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]: ...
@overload
def kmeans(
    x: npt.NDArray[np.float32],
    k: int,
    *,
    weights: npt.NDArray[np.float32] | None = None,
    iters: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    return_info: Literal[True],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], dict[str, Any]]: ...
def nearest(
    x: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]
) -> npt.NDArray[np.int32]: ...
def save_tensors(
    directory: str,
    tensors: list[tuple[str, str, list[int], bytes]],
    max_shard_bytes: int = 5_000_000_000,
    metadata: dict[str, str] | None = None,
) -> list[str]: ...
def load_tensors(directory: str) -> dict[str, tuple[str, list[int], bytes]]: ...
def validate_checkpoint(directory: str) -> dict[str, Any]: ...
