"""VPTQ of one Linear: k-means codebooks, GPTQ sweep, residual, refinement -> QuantizedLayer.

Internally the quantized matrix is held *unit-major*: a unit is one column of the quantized
matrix (FORMAT.md's "column": an input column for ``vector_quant_dim="out"``, an output row
for ``"in"``), laid out as a row ``[len]`` that is cut into vectors of ``v`` (zero-padded).
Units are in permuted order; the first ``outlier_size`` form the outlier set, the rest ``G``
contiguous groups, each set with one codebook. K-means, dequantization and refinement are
the same for both orientations; only the sweep differs:

* "out": the sweep walks input columns (= units) in act-order; each step quantizes the
  whole unit, vectors run along output rows, which the loss does not couple.
* "in": the sweep walks input columns (= positions along each unit) in natural order; every
  ``v`` columns each unit's next vector is chosen jointly under the exact metric of those
  columns, ``‖(x - c) U_SS⁻¹‖²`` (OBS cost with later columns compensating).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from vptq_rs.errors import InvalidValueError
from vptq_rs.hessian import InverseHessian, invert_hessian, normalize_hessian
from vptq_rs.layout import LayerConfig, QuantizedLayer
from vptq_rs.quantize.codebook import nearest, round_for_storage
from vptq_rs.quantize.faults import fault_point
from vptq_rs.quantize.gptq import proxy_error, quantize_scalar, sweep
from vptq_rs.quantize.kmeans_dispatch import kmeans
from vptq_rs.quantize.norm import column_stats, safe_scale
from vptq_rs.quantize.options import QuantOptions
from vptq_rs.quantize.outliers import exact_codebook, outlier_columns

log = logging.getLogger(__name__)


@dataclass
class LayerResult:
    """A quantized Linear plus what was measured while making it.

    ``w_hat``: fp32 ``[O, I]`` = ``layer.dequantize(float32)`` (or the dense fake-quantized
    weight for scalar baselines with groups, where ``layer`` is None).
    """

    layer: QuantizedLayer | None
    w_hat: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


def resolve_store_dtype(opts: QuantOptions, model_dtype: torch.dtype) -> torch.dtype:
    """Codebook/scale dtype: ``--dtype`` if given, else the model's fp16/bf16, else fp16."""
    if opts.store_dtype != "auto":
        return getattr(torch, opts.store_dtype)
    return model_dtype if model_dtype in (torch.float16, torch.bfloat16) else torch.float16


@dataclass
class _Set:
    """A contiguous range of units sharing one codebook."""

    u0: int
    u1: int
    vlen: int
    cents: torch.Tensor | None  # fp32 [K, vlen], storage-rounded; None = zero (no residual)
    idx: torch.Tensor  # int64 [units, R]
    int8_scale: float | None = None
    frozen: bool = False  # exact (float-kept outlier) codebooks are never refined

    @property
    def size(self) -> int:
        return self.u1 - self.u0


def _unit_vectors(mu: torch.Tensor, vlen: int) -> torch.Tensor:
    """``[units, len]`` -> ``[units * R, vlen]`` zero-padded (unit-major, then vector)."""
    units, length = mu.shape
    r = -(-length // vlen)
    if r * vlen == length:
        return mu.reshape(units * r, vlen)
    pad = torch.zeros(units, r * vlen, dtype=mu.dtype, device=mu.device)
    pad[:, :length] = mu
    return pad.reshape(units * r, vlen)


def _nearest_vectors(
    x: torch.Tensor, cents: torch.Tensor, length: int, cnorm: torch.Tensor | None = None
) -> torch.Tensor:
    """Nearest centroid per vector of ONE unit ``x [R, vlen]`` whose last vector may be short.

    cnorm: ``|c|²`` per centroid ``[K]`` when known (the sweep computes it once per set).
    """
    vlen = cents.shape[1]
    lanes = length - (x.shape[0] - 1) * vlen
    if lanes == vlen:
        return nearest(x, cents, cnorm=cnorm)
    head = nearest(x[:-1], cents) if x.shape[0] > 1 else x.new_zeros(0, dtype=torch.long)
    return torch.cat([head, nearest(x[-1:, :lanes], cents[:, :lanes])])


def _dequant_set(s: _Set, length: int) -> torch.Tensor:
    """Normalized values ``[units, len]`` of a set from its codebook and indices."""
    if s.cents is None:
        return torch.zeros(s.size, length, device=s.idx.device)
    return s.cents[s.idx].reshape(s.size, -1)[:, :length]


class _Quantizer:
    """Holds the sets, scales and orientation; builds sweep callbacks and dense results."""

    def __init__(
        self,
        out_mode: bool,
        sets: list[_Set],
        scale: torch.Tensor,
        bias: torch.Tensor,
        length: int,
        with_bias: bool,
    ) -> None:
        self.out_mode = out_mode
        self.sets = sets
        self.scale = scale  # [units] stored scale (fp32 values)
        self.sdiv = safe_scale(scale)
        self.bias = bias if with_bias else torch.zeros_like(bias)
        self.length = length
        # set index of every unit (a plain list: read once per sweep column on the host)
        self.set_of = [k for k, s in enumerate(sets) for _ in range(s.size)]
        # |c|² per centroid, once per set rather than once per column (codebooks are fixed
        # during a sweep)
        self.cnorm = [None if s.cents is None else (s.cents * s.cents).sum(1) for s in sets]

    def dense_units(self) -> torch.Tensor:
        """Unit-major quantized values ``[units, len]`` (scale and bias applied)."""
        rows = torch.cat([_dequant_set(s, self.length) for s in self.sets])
        return rows * self.scale[:, None] + self.bias[:, None]

    def to_w(self, mu: torch.Tensor) -> torch.Tensor:
        """Unit-major ``[units, len]`` -> sweep orientation (``[len, units]`` for "out")."""
        return mu.t() if self.out_mode else mu

    def callback(self, u_chol: torch.Tensor | None):
        """Sweep callback; ``u_chol`` None means plain L2 (k-means-only assignment)."""
        if self.out_mode:
            return self._out_at
        return lambda c, wb, i, q: self._in_at(c, wb, i, q, u_chol)

    def _out_at(self, c: int, wb: torch.Tensor, i: int, q: torch.Tensor) -> None:
        k = self.set_of[c]
        s = self.sets[k]
        if s.cents is None:
            q[:, c] = self.bias[c]
            return
        x = (wb[:, i] - self.bias[c]) / self.sdiv[c]
        vecs = _unit_vectors(x[None, :], s.vlen)
        idx = _nearest_vectors(vecs, s.cents, self.length, self.cnorm[k])
        s.idx[c - s.u0] = idx
        deq = s.cents[idx].reshape(-1)[: self.length]
        q[:, c] = deq * self.scale[c] + self.bias[c]

    def _in_at(
        self, c: int, wb: torch.Tensor, i: int, q: torch.Tensor, u_chol: torch.Tensor | None
    ) -> None:
        for s in self.sets:
            if c % s.vlen:
                continue
            rows = slice(s.u0, s.u1)
            lanes = min(s.vlen, self.length - c)
            if s.cents is None:
                q[rows, c : c + lanes] = self.bias[rows, None]
                continue
            x = (wb[rows, i : i + lanes] - self.bias[rows, None]) / self.sdiv[rows, None]
            cents = s.cents[:, :lanes]
            if u_chol is not None:
                # metric of the joint OBS cost: ‖(x - c) U_SS⁻¹‖²
                a = torch.linalg.inv(u_chol[c : c + lanes, c : c + lanes].double()).float()
                idx = nearest(x @ a, cents @ a)
            else:
                idx = nearest(x, cents)
            s.idx[:, c // s.vlen] = idx
            q[rows, c : c + lanes] = cents[idx] * self.scale[rows, None] + self.bias[rows, None]


def _refine(
    s: _Set,
    targets_u: torch.Tensor,
    sdiv: torch.Tensor,
    bias: torch.Tensor,
    unit_w: torch.Tensor,
    store_dtype: torch.dtype,
    bitwidth: int,
) -> torch.Tensor | None:
    """Hessian-weighted mean of the sweep targets assigned to each centroid (same indices).

    targets_u: unit-major targets ``[units, len]`` of the whole matrix. Returns the refined
    codebook ``[K, vlen]`` (storage-rounded) or None for sets without a trainable codebook.
    """
    if s.cents is None:
        return None
    x = (targets_u[s.u0 : s.u1] - bias[s.u0 : s.u1, None]) / sdiv[s.u0 : s.u1, None]
    vecs = _unit_vectors(x, s.vlen)
    length = targets_u.shape[1]
    r = -(-length // s.vlen)
    w = unit_w[s.u0 : s.u1].repeat_interleave(r)[:, None].expand(-1, s.vlen).clone()
    lanes = length - (r - 1) * s.vlen
    if lanes < s.vlen:  # padded lanes carry no information
        w.view(s.size, r, s.vlen)[:, -1, lanes:] = 0
    lab = s.idx.reshape(-1)
    k = s.cents.shape[0]
    num = torch.zeros_like(s.cents).index_add_(0, lab, vecs * w)
    den = torch.zeros_like(s.cents).index_add_(0, lab, w)
    new = torch.where(den > 0, num / den.clamp_min(1e-30), s.cents)
    assert new.shape[0] == k
    return round_for_storage(new, store_dtype, bitwidth)[0]


def _unit_weights(
    hdiag: torch.Tensor, sdiv: torch.Tensor, out_mode: bool, length: int, enable_norm: bool
) -> torch.Tensor:
    """Per-unit k-means weight: Hessian diagonal of the unit's input(s) x scale²."""
    base = hdiag if out_mode else torch.full_like(sdiv, float(hdiag.sum()) / max(length, 1))
    return base * (sdiv**2 if enable_norm else 1.0)


def _vector_weights(
    unit_w: torch.Tensor, hdiag: torch.Tensor, s: _Set, out_mode: bool, length: int
) -> torch.Tensor:
    """Weight of each vector of a set ``[units * R]`` for k-means."""
    r = -(-length // s.vlen)
    w = unit_w[s.u0 : s.u1].repeat_interleave(r)
    if not out_mode:
        # "in": a vector spans inputs, so it weighs the Hessian diagonal it covers
        pad = torch.zeros(r * s.vlen, device=hdiag.device)
        pad[:length] = hdiag
        per_vec = pad.view(r, s.vlen).sum(1) / (hdiag.sum() / length).clamp_min(1e-30)
        w = w * per_vec.repeat(s.size)
    peak = float(w.max()) if w.numel() else 0.0
    return w.clamp_min(peak * 1e-8 if peak > 0 else 1.0)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (restored after)."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quantize_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    opts: QuantOptions,
    bias: torch.Tensor | None = None,
    inv: InverseHessian | None = None,
    device: str | torch.device | None = None,
    name: str = "layer",
) -> LayerResult:
    """Quantize one Linear.

    weight: float ``[O, I]``; hessian: float ``[I, I]`` = ``E[x xᵀ]`` of its input (any
    positive scale); bias: ``[O]`` or None; inv: a precomputed inverse-Hessian factor
    (``--inv_hessian_path``), else computed with ``opts.percdamp``/act-order.

    On the CPU the layer runs on one torch thread: the sweep is thousands of small
    operations, where a second OpenMP thread costs more than it brings (10-100x more on a
    busy machine, where every barrier waits for a descheduled thread), and a fixed thread
    count keeps results identical whatever ``--workers`` is. Parallelism comes from
    ``--workers`` (one layer per process) and the Rust k-means.
    """
    dev = torch.device(device) if device is not None else weight.device
    if dev.type != "cpu":
        return _quantize_layer(weight, hessian, opts, bias, inv, dev, name)
    with _torch_threads(1):
        return _quantize_layer(weight, hessian, opts, bias, inv, dev, name)


def _quantize_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    opts: QuantOptions,
    bias: torch.Tensor | None,
    inv: InverseHessian | None,
    dev: torch.device,
    name: str,
) -> LayerResult:
    t_start = time.perf_counter()
    store_dtype = resolve_store_dtype(opts, weight.dtype)
    w = weight.detach().to(dev, torch.float32)
    o, n_in = w.shape
    h = hessian.to(dev, torch.float64)
    if h.shape != (n_in, n_in):
        raise InvalidValueError(f"{name}: Hessian {list(h.shape)} does not match in={n_in}")
    opts.check_layer(o, n_in, name)
    if opts.method != "vptq":
        return _scalar_layer(w, h, opts, bias, inv, store_dtype, t_start, name)

    out_mode = opts.vector_quant_dim == "out"
    _hn, dead = normalize_hessian(h)
    if inv is None:
        inv = invert_hessian(h, opts.percdamp, act_order=opts.enable_perm and out_mode)
    elif inv.chol.shape != (n_in, n_in):
        raise InvalidValueError(f"{name}: inverse Hessian does not match in={n_in}")
    identity = torch.arange(n_in)
    if not out_mode and not torch.equal(inv.perm.cpu(), identity):
        raise InvalidValueError(
            f"{name}: vector_quant_dim 'in' needs an unpermuted inverse Hessian"
        )
    if out_mode and not opts.enable_perm and not torch.equal(inv.perm.cpu(), identity):
        raise InvalidValueError(f"{name}: the inverse Hessian is permuted: pass --enable_perm")
    u_chol = inv.chol.to(dev, torch.float32)
    sweep_perm = inv.perm.to(dev)
    hdiag = torch.diagonal(h).float().clone()
    hdiag[dead.to(dev) | inv.zero_idx.to(dev)] = 0
    wz = w.clone()
    wz[:, dead.to(dev) | inv.zero_idx.to(dev)] = 0  # dead inputs: their weights never matter

    # unit-major matrix in original unit order, then permuted
    if out_mode:
        units_orig = wz.t()
        perm = sweep_perm
        length = o
        hd_units = hdiag[perm]
    else:
        units_orig = wz
        if opts.enable_perm:
            energy = ((wz.double() @ h) * wz.double()).sum(1)
            perm = torch.sort(energy, descending=True, stable=True).indices
        else:
            perm = torch.arange(o, device=dev)
        length = n_in
        hd_units = hdiag
    n_units = units_orig.shape[0]
    scale_o, bias_o = column_stats(units_orig.t(), opts.enable_norm, store_dtype)
    mu = units_orig[perm]
    scale, bshift = scale_o[perm], bias_o[perm]
    sdiv = safe_scale(scale)
    xn = (mu - bshift[:, None]) / sdiv[:, None]
    unit_w = _unit_weights(hd_units, sdiv, out_mode, length, opts.enable_norm)
    sweep_w = mu.t() if out_mode else mu

    osz = outlier_columns(opts.npercent, n_units, opts.group_num)
    gsize = (n_units - osz) // opts.group_num
    v, k = opts.v, opts.k
    t_km = time.perf_counter()

    # ---- codebooks from Hessian-weighted k-means (before the sweep)
    sets: list[_Set] = []
    k0 = -1
    v0 = opts.outlier_v
    if osz:
        r0 = -(-length // v0)
        oset = _Set(0, osz, v0, None, torch.zeros(osz, r0, dtype=torch.long, device=dev))
        ovecs = _unit_vectors(xn[:osz], v0)
        if opts.outliers_float:
            cents, labels = exact_codebook(ovecs.to(store_dtype).float())
            oset.frozen = True
        else:
            wts = _vector_weights(unit_w, hd_units, oset, out_mode, length)
            cents, labels = kmeans(
                ovecs,
                opts.num_centroids[0],
                wts,
                opts.kiter,
                opts.ktol,
                opts.kseed + 7919,
                precision=opts.kmeans_precision,
            )
            cents, oset.int8_scale = round_for_storage(cents.to(dev), store_dtype, opts.bitwidth)
        oset.cents = cents.to(dev).float()
        oset.idx = labels.to(dev).reshape(osz, r0)
        k0 = oset.cents.shape[0]
        sets.append(oset)
    r_main = -(-length // v)
    for g in range(opts.group_num):
        u0 = osz + g * gsize
        s = _Set(u0, u0 + gsize, v, None, torch.zeros(gsize, r_main, dtype=torch.long, device=dev))
        wts = _vector_weights(unit_w, hd_units, s, out_mode, length)
        cents, labels = kmeans(
            _unit_vectors(xn[s.u0 : s.u1], v),
            k,
            wts,
            opts.kiter,
            opts.ktol,
            opts.kseed + g,
            precision=opts.kmeans_precision,
        )
        s.cents, s.int8_scale = round_for_storage(cents.to(dev), store_dtype, opts.bitwidth)
        s.idx = labels.to(dev).reshape(gsize, r_main)
        sets.append(s)
    t_km = time.perf_counter() - t_km
    fault_point("layer_kmeans")

    unperm = torch.empty_like(perm)
    unperm[perm] = torch.arange(n_units, device=dev)

    def w_from_units(mu_q: torch.Tensor) -> torch.Tensor:
        """Unit-major (permuted) -> dense ``[O, I]`` in the original layout."""
        orig = mu_q[unperm]
        return orig.t() if out_mode else orig

    stats: dict[str, Any] = {"name": name, "out_features": o, "in_features": n_in}
    quant = _Quantizer(out_mode, sets, scale, bshift, length, with_bias=True)
    blocksize = opts.blocksize
    if not out_mode:  # a vector's columns must share one lazy-update block
        step = math.lcm(v, v0 if osz else v)
        blocksize = -(-blocksize // step) * step

    # ---- k-means only: the k-means assignment itself, no error feedback
    stats["proxy_kmeans"] = proxy_error(w_from_units(quant.dense_units()), w, h)

    # ---- main sweep
    t_sw = time.perf_counter()
    _, targets = sweep(sweep_w, u_chol, blocksize, quant.callback(u_chol))
    q1_units = quant.dense_units()
    stats["proxy_sweep"] = proxy_error(w_from_units(q1_units), w, h)
    if opts.refine_centroids:
        q1_units = _try_refine(
            quant, targets, out_mode, unit_w, store_dtype, opts, w, h, w_from_units, stats, "sweep"
        )
    t_sw = time.perf_counter() - t_sw

    # ---- residual VQ of what the main codebook left, with its own sweep
    res_sets: list[_Set] = []
    t_res = 0.0
    if opts.kres:
        t_res = time.perf_counter()
        d_units = mu - q1_units
        dn = d_units / sdiv[:, None]
        if osz:
            res_sets.append(
                _Set(0, osz, v0, None, torch.zeros(osz, 1, dtype=torch.long, device=dev))
            )
        for g, s in enumerate(sets[1:] if osz else sets):
            rs = _Set(s.u0, s.u1, v, None, torch.zeros_like(s.idx))
            wts = _vector_weights(unit_w, hd_units, rs, out_mode, length)
            cents, _ = kmeans(
                _unit_vectors(dn[rs.u0 : rs.u1], v),
                opts.kres,
                wts,
                opts.kiter,
                opts.ktol,
                opts.kseed + 104729 + g,
                precision=opts.kmeans_precision,
            )
            rs.cents, rs.int8_scale = round_for_storage(cents.to(dev), store_dtype, opts.bitwidth)
            res_sets.append(rs)
        rquant = _Quantizer(out_mode, res_sets, scale, bshift, length, with_bias=False)
        d_sweep = d_units.t() if out_mode else d_units
        _, rtargets = sweep(d_sweep, u_chol, blocksize, rquant.callback(u_chol))
        final_units = q1_units + rquant.dense_units()
        stats["proxy_residual"] = proxy_error(w_from_units(final_units), w, h)
        if opts.refine_centroids:

            def w_res(mu_r: torch.Tensor) -> torch.Tensor:
                return w_from_units(q1_units + mu_r)

            _try_refine(
                rquant,
                rtargets,
                out_mode,
                unit_w,
                store_dtype,
                opts,
                w,
                h,
                w_res,
                stats,
                "residual",
            )
        t_res = time.perf_counter() - t_res

    # ---- assemble the stored layer; its dequantization is the truth from here on
    cfg = LayerConfig(
        in_features=n_in,
        out_features=o,
        vector_len=v,
        num_centroids=k,
        num_res_centroids=opts.kres,
        group_num=opts.group_num,
        outlier_size=osz,
        outlier_vector_len=v0 if osz else -1,
        outlier_num_centroids=k0 if osz else -1,
        enable_perm=opts.enable_perm,
        enable_norm=True,
        bias=bias is not None,
        vector_quant_dim=opts.vector_quant_dim,
    )
    main_sets = sets[1:] if osz else sets
    layer = QuantizedLayer(
        config=cfg,
        centroids=torch.stack([s.cents for s in main_sets]).to(store_dtype).cpu(),
        main_idx=torch.stack([s.idx.t() for s in main_sets]).to(torch.int32).cpu(),
        weight_scale=scale_o.to(store_dtype).cpu(),
        weight_bias=bias_o.to(store_dtype).cpu(),
        perm=perm.to(torch.int64).cpu() if opts.enable_perm else None,
        bias=bias.detach().to(store_dtype).cpu() if bias is not None else None,
    )
    if osz:
        assert sets[0].cents is not None
        layer.outlier_centroids = sets[0].cents[None].to(store_dtype).cpu()
        layer.outlier_idx = sets[0].idx.t()[None].to(torch.int32).cpu()
    if opts.kres:
        rmain = res_sets[1:] if osz else res_sets
        layer.res_centroids = torch.stack([s.cents for s in rmain]).to(store_dtype).cpu()
        layer.res_idx = torch.stack([s.idx.t() for s in rmain]).to(torch.int32).cpu()
    layer.validate()
    w_hat = layer.dequantize(torch.float32)
    stats["proxy_final"] = proxy_error(w_hat.to(dev), w, h)
    int8_scales = [s.int8_scale for s in sets + res_sets if s.int8_scale is not None]
    if int8_scales:
        stats["int8_codebook_scales"] = int8_scales
    stats["config"] = cfg.to_hf()
    stats["time_kmeans_s"] = t_km
    stats["time_sweep_s"] = t_sw
    stats["time_residual_s"] = t_res
    stats["time_total_s"] = time.perf_counter() - t_start
    return LayerResult(layer=layer, w_hat=w_hat, stats=stats)


def _try_refine(
    quant: _Quantizer,
    targets: torch.Tensor,
    out_mode: bool,
    unit_w: torch.Tensor,
    store_dtype: torch.dtype,
    opts: QuantOptions,
    w: torch.Tensor,
    h: torch.Tensor,
    to_w: Any,
    stats: dict[str, Any],
    stage: str,
) -> torch.Tensor:
    """Refine every codebook of ``quant`` in place if that lowers the proxy error.

    Returns the unit-major dense values that are kept. Records both errors in ``stats``.
    """
    before = quant.dense_units()
    err_before = proxy_error(to_w(before), w, h)
    targets_u = targets.t() if out_mode else targets
    old = [s.cents for s in quant.sets]
    for s in quant.sets:
        if s.cents is None or s.frozen:
            continue
        new = _refine(s, targets_u, quant.sdiv, quant.bias, unit_w, store_dtype, opts.bitwidth)
        if new is not None:
            s.cents = new
    after = quant.dense_units()
    err_after = proxy_error(to_w(after), w, h)
    stats[f"proxy_{stage}_unrefined"] = err_before
    stats[f"proxy_{stage}_refined"] = err_after
    if err_after < err_before:
        stats[f"refined_{stage}"] = True
        return after
    for s, c in zip(quant.sets, old, strict=True):
        s.cents = c
    stats[f"refined_{stage}"] = False
    return before


def _scalar_layer(
    w: torch.Tensor,
    h: torch.Tensor,
    opts: QuantOptions,
    bias: torch.Tensor | None,
    inv: InverseHessian | None,
    store_dtype: torch.dtype,
    t_start: float,
    name: str,
) -> LayerResult:
    """RTN / GPTQ scalar baseline; per-channel results become a v=1 "in" codebook layer."""
    o, n_in = w.shape
    u = perm = None
    if opts.method == "gptq":
        if inv is None:
            inv = invert_hessian(h, opts.percdamp, act_order=opts.enable_perm)
        u, perm = inv.chol.to(w.device), inv.perm.to(w.device)
    w_hat, codes, scale, offset = quantize_scalar(
        w, u, perm, opts.wbits, opts.groupsize, opts.blocksize, store_dtype
    )
    stats: dict[str, Any] = {"name": name, "out_features": o, "in_features": n_in}
    layer = None
    # integer grids above 8 bits are not exact in bf16 codebooks: keep those dense
    if codes is not None and scale is not None and offset is not None and opts.wbits <= 8:
        kq = 2**opts.wbits
        cfg = LayerConfig(
            in_features=n_in,
            out_features=o,
            vector_len=1,
            num_centroids=max(kq, 2),
            bias=bias is not None,
            vector_quant_dim="in",
        )
        grid = torch.arange(cfg.num_centroids, dtype=torch.float32)
        layer = QuantizedLayer(
            config=cfg,
            centroids=grid.reshape(1, -1, 1).to(store_dtype),
            main_idx=codes.t().reshape(1, n_in, o).to(torch.int32).cpu(),
            weight_scale=scale.to(store_dtype).cpu(),
            weight_bias=offset.to(store_dtype).cpu(),
            bias=bias.detach().to(store_dtype).cpu() if bias is not None else None,
        )
        layer.validate()
        w_hat = layer.dequantize(torch.float32)
        stats["config"] = cfg.to_hf()
    stats["proxy_final"] = proxy_error(w_hat.to(w.device), w, h)
    stats["time_total_s"] = time.perf_counter() - t_start
    return LayerResult(layer=layer, w_hat=w_hat.cpu(), stats=stats)
