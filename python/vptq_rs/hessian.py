"""Hessians of the layer-wise quantization loss: collect, save, load, invert.

For a Linear with inputs ``x`` the proxy loss of a weight change ``ΔW`` is
``tr(ΔW H ΔWᵀ)`` with ``H = E[x xᵀ]``. Files follow FORMAT.md (QuIP#/VPTQ-community
layout): one ``torch.save`` dict per (decoder layer, input group) named
``{layer}_{qkv|o|up|down}.pt`` holding the **centered** second moment as a flattened lower
triangle (``flatH``), the mean input ``mu``, ``n`` and the token count ``ct``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vptq_rs.errors import CheckpointError, InvalidValueError, VptqIOError
from vptq_rs.quantize.faults import fault_point

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- accumulation and files


class HessianAccumulator:
    """Running fp64 sums of ``x xᵀ`` and ``x`` over tokens.

    ``add(x)`` takes any float ``[..., n]``. On CPU each call's Gram matrix is formed in
    fp32 (one window of at most a few thousand tokens, so the sum is exact to ~1e-6 relative)
    and added to the fp64 total; on CUDA the Gram itself is fp64.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.n = n
        self.sum_xx = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.sum_x = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.n).to(self.sum_xx.device)
        gram_dtype = torch.float64 if x.is_cuda else torch.float32
        xg = x.to(gram_dtype)
        self.sum_xx += (xg.t() @ xg).double()
        self.sum_x += x.double().sum(0)
        self.count += x.shape[0]

    def second_moment(self) -> torch.Tensor:
        """``E[x xᵀ]`` fp64 ``[n, n]`` (uncentered)."""
        if self.count == 0:
            raise InvalidValueError("Hessian accumulator saw no tokens")
        return (self.sum_xx / self.count).cpu()

    def file_dict(self) -> dict[str, Any]:
        """The FORMAT.md file contents (centered flatH, mu, n, ct)."""
        mu = (self.sum_x / max(self.count, 1)).cpu()
        centered = self.second_moment() - torch.outer(mu, mu)
        return sym_to_file_dict(centered, mu, self.count)


def sym_to_file_dict(centered: torch.Tensor, mu: torch.Tensor, count: int) -> dict[str, Any]:
    """Pack a centered second moment ``[n, n]`` and mean ``[n]`` as a FORMAT.md dict."""
    n = centered.shape[0]
    rows, cols = torch.tril_indices(n, n)
    return {
        "flatH": centered[rows, cols].float().contiguous(),
        "mu": mu.float().contiguous(),
        "n": int(n),
        "ct": int(count),
    }


def hessian_file(directory: str | os.PathLike[str], layer_index: int, key: str) -> Path:
    """``{dir}/{layer}_{key}.pt`` (FORMAT.md naming)."""
    return Path(directory) / f"{layer_index}_{key}.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary name in the same folder, then rename.

    A failed write (full disk, ...) removes the temporary file and raises VptqIOError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise VptqIOError(f"cannot write {path}: {exc}") from exc


def save_hessian(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write one FORMAT.md Hessian dict atomically."""
    atomic_torch_save(data, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _unpickler_detail(exc: BaseException) -> str:
    """The one informative line of torch's long weights_only error (what was refused)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    detail = [ln for ln in lines if not ln.startswith(boiler)]
    return detail[0] if detail else _first_line(exc)


def safe_load(path: str | os.PathLike[str], what: str = "Hessian", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` of a ``.pt`` file, never running pickled code.

    Raises CheckpointError naming the file: missing, truncated/corrupt, or holding objects
    other than tensors and plain containers (a pickle that would run code is refused by
    torch's restricted unpickler before anything executes). ``mmap`` maps tensor data
    instead of reading it (zip-format files only; others are read normally).
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} not found")
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError:
                raise
            except Exception:  # legacy (non-zip) files cannot be mapped: read them below
                pass
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # nothing in the file ran: torch's restricted unpickler stops at the first
        # instruction or global that is not a tensor or a plain container
        detail = _unpickler_detail(exc)
        if "GLOBAL" not in detail.upper():
            raise CheckpointError(
                f"{what} file {path} is not readable: damaged or not a torch.save file ({detail})"
            ) from exc
        raise CheckpointError(
            f"{what} file {path} is not a plain tensor file: the safe loader "
            f"(weights_only) refused it ({detail})"
        ) from exc
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise CheckpointError(f"{what} file {path} is not readable: {_first_line(exc)}") from exc


def _flat_numel(data: Any, path: Path) -> tuple[torch.Tensor, int]:
    if not isinstance(data, dict) or not isinstance(data.get("flatH"), torch.Tensor):
        raise CheckpointError(f"Hessian file {path} has no 'flatH' tensor")
    flat = data["flatH"]
    raw_n = data.get("n", 0)
    try:
        n = int(raw_n.item() if isinstance(raw_n, torch.Tensor) else raw_n)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Hessian file {path}: 'n' is not an integer") from exc
    n = n or (math.isqrt(8 * flat.numel() + 1) - 1) // 2
    if n < 1 or n * (n + 1) // 2 != flat.numel():
        raise CheckpointError(f"Hessian file {path}: flatH has {flat.numel()} values, n={n}")
    mu = data.get("mu")
    if mu is not None and (not isinstance(mu, torch.Tensor) or mu.numel() != n):
        raise CheckpointError(f"Hessian file {path}: mu does not hold n={n} values")
    return flat, n


def check_hessian_file(path: str | os.PathLike[str], n: int) -> None:
    """Cheap check that a Hessian file loads safely and is for ``n`` inputs.

    Maps tensor data instead of reading it, so a whole model's files can be checked before
    the run starts. Raises CheckpointError naming the file and what is wrong.
    """
    path = Path(path)
    _, got = _flat_numel(safe_load(path, mmap=True), path)
    if got != n:
        raise CheckpointError(f"Hessian file {path} is for {got} inputs, the layer has {n}")


def check_inverse_hessian_file(path: str | os.PathLike[str], n: int) -> None:
    """Cheap check of a reference inverse-Hessian file (``invH`` is ``[n, n]``)."""
    path = Path(path)
    data = safe_load(path, "inverse Hessian", mmap=True)
    inv = data.get("invH") if isinstance(data, dict) else None
    if not isinstance(inv, torch.Tensor):
        raise CheckpointError(f"inverse Hessian file {path} has no 'invH' tensor")
    if tuple(inv.shape) != (n, n):
        raise CheckpointError(
            f"inverse Hessian file {path} is {list(inv.shape)}, the layer needs [{n}, {n}]"
        )


def load_hessian(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Read a FORMAT.md / QuIP# Hessian file: ``(E[x xᵀ] fp64 [n,n], mu fp64 [n], ct)``.

    The centered ``flatH`` is unflattened to a symmetric matrix and ``μμᵀ`` added back.
    Files without ``mu`` (some older dumps) are taken as uncentered.
    """
    path = Path(path)
    data = safe_load(path)
    flat, n = _flat_numel(data, path)
    flat = flat.double().reshape(-1)
    full = torch.zeros(n, n, dtype=torch.float64)
    rows, cols = torch.tril_indices(n, n)
    full[rows, cols] = flat
    full[cols, rows] = flat
    mu = data.get("mu")
    mu = torch.zeros(n, dtype=torch.float64) if mu is None else mu.double().reshape(-1)
    ct = data.get("ct", 0)
    try:
        ct = int(ct.item()) if isinstance(ct, torch.Tensor) else int(ct)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Hessian file {path}: 'ct' is not an integer") from exc
    if not torch.isfinite(full).all() or not torch.isfinite(mu).all():
        raise CheckpointError(f"Hessian file {path} holds non-finite values")
    return full + torch.outer(mu, mu), mu, ct


# ---------------------------------------------------------------- inversion


@dataclass
class InverseHessian:
    """The damped, permuted inverse Hessian in GPTQ's Cholesky form.

    ``chol``: fp32 ``[n, n]`` upper factor ``U`` with ``Uᵀ U = (H[perm][:, perm] + λI)⁻¹``;
    ``perm``: int64 ``[n]`` sweep order (original column at each position);
    ``zero_idx``: bool ``[n]`` dead inputs (never active; their weights do not matter).
    """

    chol: torch.Tensor
    perm: torch.Tensor
    zero_idx: torch.Tensor


def normalize_hessian(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H / mean(diag), dead)`` with dead inputs (zero diagonal) given a unit diagonal.

    h: float ``[n, n]``; returns fp64 ``[n, n]`` and bool ``[n]``. Scaling does not change
    the quantizer's decisions; it makes ``percdamp`` mean the same for every layer.
    """
    h = h.double().clone()
    diag = torch.diagonal(h)
    dead = diag <= 0
    live = diag[~dead]
    if live.numel() == 0:
        raise InvalidValueError("Hessian is all zero: no calibration signal reached this layer")
    h /= live.mean()
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    return h, dead


def invert_hessian(
    h: torch.Tensor, percdamp: float = 0.01, act_order: bool = False
) -> InverseHessian:
    """Damped, optionally act-order-permuted inverse Cholesky factor of a Hessian.

    h: float ``[n, n]`` (any positive scale). Damping adds ``percdamp · mean(diag)`` to the
    diagonal; if Cholesky still fails the damping grows tenfold (logged) up to 4 times.
    """
    hn, dead = normalize_hessian(h)
    n = hn.shape[0]
    if act_order:
        # stable sort so that ties keep their original order (determinism across platforms)
        # dead inputs go last: their unit diagonal is a placeholder, not a sensitivity
        key = torch.where(dead, torch.full_like(torch.diagonal(hn), -1.0), torch.diagonal(hn))
        perm = torch.sort(key, descending=True, stable=True).indices
    else:
        perm = torch.arange(n, device=hn.device)
    hp = hn[perm][:, perm]
    damp = percdamp * torch.diagonal(hp).mean().item()
    for attempt in range(5):
        try:
            eye = torch.eye(n, dtype=hp.dtype, device=hp.device)
            lower = torch.linalg.cholesky(hp + damp * eye)
            hinv = torch.cholesky_inverse(lower)
            chol = torch.linalg.cholesky(hinv, upper=True)
            break
        except torch.linalg.LinAlgError:
            if attempt == 4:
                raise InvalidValueError(
                    f"Hessian is not positive definite even with damping {damp:g}"
                ) from None
            damp = max(damp * 10, 1e-6)
            log.warning("Hessian Cholesky failed; retrying with damping %g", damp)
    return InverseHessian(chol=chol.float(), perm=perm.long(), zero_idx=dead)


def load_inverse_hessian(path: str | os.PathLike[str]) -> InverseHessian:
    """Read a reference inverse-Hessian file (``invH``, ``perm``, ``zero_idx``)."""
    path = Path(path)
    data = safe_load(path, "inverse Hessian")
    if not isinstance(data, dict) or not isinstance(data.get("invH"), torch.Tensor):
        raise CheckpointError(f"inverse Hessian file {path} has no 'invH' tensor")
    chol = data["invH"].float()
    if chol.dim() != 2:
        raise CheckpointError(f"inverse Hessian file {path}: invH is not a matrix")
    n = chol.shape[0]
    try:
        perm = data.get("perm")
        perm = torch.arange(n) if perm is None else perm.long().reshape(-1)
        zero = data.get("zero_idx")
        zero = torch.zeros(n, dtype=torch.bool) if zero is None else zero.bool().reshape(-1)
    except (AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"inverse Hessian file {path}: perm/zero_idx not tensors") from exc
    if chol.shape != (n, n) or perm.numel() != n or zero.numel() != n:
        raise CheckpointError(f"inverse Hessian file {path}: inconsistent shapes")
    if not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise CheckpointError(f"inverse Hessian file {path}: perm is not a permutation")
    if not torch.isfinite(chol).all():
        raise CheckpointError(f"inverse Hessian file {path} holds non-finite values")
    return InverseHessian(chol=torch.triu(chol), perm=perm, zero_idx=zero)


# ---------------------------------------------------------------- collection


class _StopForward(Exception):
    """Raised by the capture hook once the first decoder layer's input is known."""


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def collect_hessians(
    model: Any,
    windows: Sequence[Sequence[int]],
    out_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    layers_to_do: Iterable[int] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Run ``model`` decoder layer by decoder layer and write every group's Hessian file.

    windows: token id lists, all of the same length. Only the current decoder layer (plus
    embeddings and rotary tables) sits on ``device``; hidden states stay on the CPU between
    layers. Files that already exist are kept (so an interrupted collection resumes), and
    the layer is still run to produce the next layer's inputs. Returns the written paths.
    """
    from tqdm.auto import tqdm

    from vptq_rs.models import decoder_layers, linear_groups

    if not windows:
        raise InvalidValueError("need at least one calibration window")
    if len({len(w) for w in windows}) != 1:
        raise InvalidValueError("calibration windows must all have the same length")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    prefix, layers = decoder_layers(model)
    groups = linear_groups(model)
    wanted = set(range(len(layers))) if layers_to_do is None else set(layers_to_do)
    last = max(wanted)

    base = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    model.to("cpu")
    for _name, child in base.named_children():
        if child is not layers:
            child.to(device)

    inputs: list[torch.Tensor] = []
    layer_kwargs: dict[str, Any] = {}

    def capture(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hs = args[0] if args else kwargs["hidden_states"]
        inputs.append(hs.detach().to("cpu"))
        if not layer_kwargs:
            layer_kwargs.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            for w in windows:
                with contextlib.suppress(_StopForward):
                    model(torch.tensor([list(w)], device=device), use_cache=False)
    finally:
        handle.remove()
    layer_kwargs["use_cache"] = False
    layer_kwargs.pop("past_key_values", None)

    written: list[Path] = []
    bar = tqdm(total=last + 1, desc="hessians", unit="layer", disable=not progress)
    for i in range(last + 1):
        layer = layers[i].to(device)
        mine = [g for g in groups if g.layer_index == i]
        todo = [g for g in mine if i in wanted and not hessian_file(out_dir, i, g.key).exists()]
        accs: dict[str, HessianAccumulator] = {}
        handles = []
        for g in todo:
            mod = model.get_submodule(g.names[0])
            acc = HessianAccumulator(mod.in_features, device)
            accs[g.key] = acc
            handles.append(
                mod.register_forward_pre_hook(lambda _m, a, acc=acc: acc.add(a[0].detach()))
            )
        outs = []
        try:
            with torch.no_grad():
                for hs in inputs:
                    out = _layer_output(layer(hs.to(device), **layer_kwargs))
                    if i < last:
                        outs.append(out.detach().to("cpu"))
        finally:
            for h in handles:
                h.remove()
        for key, acc in accs.items():
            path = hessian_file(out_dir, i, key)
            save_hessian(path, acc.file_dict())
            written.append(path)
            fault_point("hessian_written")
        layers[i].to("cpu")
        inputs = outs
        bar.update(1)
    bar.close()
    model.to("cpu")
    return written
