"""Code-tiled index layout for the one-token GEMV with a codebook too large for shared
memory (``_cuda/gemv_tiled.cuh``), e.g. v8/k65536: 1 MB of fp16 rows.

The gather kernel reads such a codebook from L2, one 32-byte sector a weight vector at a
random address; the sorted layout (:mod:`vptq_rs.sorted_layout`) does not apply because its
dummy entries for unused codes would outnumber the columns. Here each vector row (and each
codebook: main, then residual) lists its columns grouped by codebook tile, one 32-bit entry
each: ``code << 16 | column``. The kernel stages the codebook through shared memory a tile
of ``tile_codes`` rows at a time, and ``tile_start`` says where each tile's entries begin in
every list, so the warps sum exactly the entries the staged tile serves.

Within a tile the entries are ordered for the shared-memory banks of the codebook loads. A
warp step reads 32 consecutive entries of a tile's run, and its codebook load is served a
few lanes at a time (8 lanes of 16-byte rows, 16 of 8-byte rows, 32 otherwise); two lanes
of one such group whose rows start in the same bank but at different rows cost a wavefront
each. The builder deals each run's entries out by bank key (:func:`bank_keys`): one entry
of every key, then the next of every key, so each group of lanes reads distinct keys while
every key still has entries left. In column order the keys are random: about 10 wavefronts
for a warp's 16-byte rows where 4 would do, 5 in this order (v8, 512 entries a tile;
counted on the CPU, as ``tests/test_tiled_layout.py`` does).
Codes in ascending order would be worse than either, a near-constant stride apart.

Storage:

- ``entries`` int32 ``[R, lists, group_size]`` (bits of uint32); ``column < group_size <=
  65534``.
- ``tile_start`` int32 ``[R, lists, tiles + 1]`` with ``tiles = ceil(max(K, K_res) /
  tile_codes)``: entries ``tile_start[t] .. tile_start[t+1] - 1`` have codes in
  ``[t * tile_codes, (t+1) * tile_codes)``.

Entries take 4 bytes where the packed words take ``(index_bits + res_bits) / 8``: twice the
bytes at 16-bit codes, which is cheap here since the gather, not the index stream, bounds
these layers. The layout is derived from the packed indices at load time (:func:`build`)
and never saved.

The mma form (``build(..., mma=True)``, v = 8 only) feeds ``_cuda/gemv_tiled_mma.cuh``,
whose warp step is 32 entries of one run taken as two m16n8k16 tensor-core products:

- every tile's run is padded to a multiple of 32 entries with entries of the zero column
  (``group_size``) and the tile's first code, so ``entries`` is int32 ``[R, lists,
  list_len]`` with ``list_len`` the longest padded list (a multiple of 32), and
  ``tile_start`` counts padded positions (multiples of 32);
- within each 32 entries, word ``l`` holds entry ``l``'s code (high half: lane ``l`` gives
  the address of that codebook row to ``ldmatrix``) and the column of entry
  ``MMA_X_ENTRY[l]`` (low half: lane ``l`` supplies that activation to the A operand).

The cluster form (``build(..., cluster=True)``, sm_90+) keeps the scalar form's entries and
feeds ``_cuda/gemv_tiled_cluster.cuh``: the blocks of a thread-block cluster split the tiles
among them (block q holds tile q) instead of each streaming every tile, and add a row's
partial sums through distributed shared memory. Its block holds one tile, not two, beside
xs, so :func:`device_tile_codes` (``cluster=True``) picks larger tiles: 8192 rows of v8 on
8192 columns, one tile for each of a cluster's 8 blocks. With ``mma=True`` as well (form 3)
the cluster kernel takes the mma form's entries and sums them on tensor cores.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from vptq_rs import ops, sorted_layout
from vptq_rs.errors import InvalidValueError

MAX_GROUP_SIZE = 0xFFFE  # 16-bit columns; group_size itself is the zero slot
ITEMS_PER_WARP = 2  # rows a thread keeps sums for (kTiledItemsPerWarp in gemv_tiled.cuh)
MIN_TILE_CODES = 8  # tile starts stay 16-byte aligned
MMA_STEP = 32  # entries of a warp step of the mma kernel (two products of 16)
MMA_VECTOR_LEN = 8  # ldmatrix rows are 16 bytes: 8 fp16/bf16 elements
MMA_REDUCE_BYTES = 32 * 4  # the mma kernel's max |xs| reduction (tiled_mma_smem_bytes)
ENV_MMA = "VPTQ_RS_TILED_MMA"  # "1" puts v = 8 layers on the mma form (uses_mma)
ENV_CLUSTER = "VPTQ_RS_TILED_CLUSTER"  # "0" keeps layers off the cluster form (uses_cluster)
CLUSTER_MAX = 16  # blocks a cluster (kTiledClusterMax in gemv_tiled_cluster.cuh)


def _mma_x_entry() -> tuple[int, ...]:
    # lane 4g + t fills A's slot g with entry 16 (g / 4) + (2t, 2t+1, 2t+8, 2t+9)[g % 4]:
    # the one place of its m16n8k16 A fragment (a0, a1, a4 or a5) that entry can take
    out = []
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        out.append(16 * (g >> 2) + (2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9)[g & 3])
    return tuple(out)


MMA_X_ENTRY = _mma_x_entry()  # lane -> the entry of its step whose activation it supplies


class TiledLayout(NamedTuple):
    """One layer's code-tiled entries (module docstring).

    entries:    int32 ``[R, lists, group_size]``, or ``[R, lists, list_len]`` in the mma form
    tile_start: int32 ``[R, lists, tiles + 1]``
    tile_codes: codebook rows a tile (a power of two)
    mma:        the tensor-core form (module docstring)
    cluster:    for the cluster kernel (``_cuda/gemv_tiled_cluster.cuh``: a cluster's
                blocks split the tiles), over the scalar form's entries or with ``mma``
                the mma form's
    """

    entries: torch.Tensor
    tile_start: torch.Tensor
    tile_codes: int
    mma: bool = False
    cluster: bool = False

    @property
    def form(self) -> int:
        """The op's ``form``: 0 scalar, 1 mma, 2 cluster, 3 cluster over mma entries."""
        return 2 * self.cluster + self.mma

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.entries, self.tile_start))


def problem(cfg: Any) -> str | None:
    """Why the tiled layout does not cover this layer (None when it does)."""
    return sorted_layout.group_problem(cfg, MAX_GROUP_SIZE)


def applies(cfg: Any) -> bool:
    """Whether :func:`build` takes this layer (see :func:`problem`)."""
    return problem(cfg) is None


# Each block streams the whole codebook through shared memory, so the kernel pays only where
# a block's entries outnumber the codebook's rows enough: at least PAYS_ENTRIES_PER_ROW
# entries per codebook row and SM of a PAYS_SMS-SM H100 (run 14, gpu-gemv.json: v8/k65536
# beat the L2 gather kernel on 28672x8192 and 8192x28672, 29.4M entries, and lost on the
# 4096-wide shapes, 7.3M).
PAYS_ENTRIES_PER_ROW = 2
PAYS_SMS = 132
# The cluster kernel reads a cluster's share of the codebook once a block, so it pays on
# smaller layers: in run 27a (H100, gpu-gemv-tiled-order-run27a_all.json) it beat the L2
# gather kernel (run 25b, gpu-gemv.json) on all five issue shapes at v8/k65536, down to
# 4096x4096 (2.1M entries, 32 per codebook row: 23.0 against 34.3 us). Smaller layers were
# not timed.
PAYS_CLUSTER_ENTRIES_PER_ROW = 32


def pays(cfg: Any, device: torch.device | None = None) -> bool:
    """Whether the tiled GEMV is the one to use: it applies, the codebook is wider than a
    row (where the sorted layout does not apply and the gather kernel reads the codebook
    through L2), and the layer has entries enough to pay for streaming the codebook through
    every SM (``PAYS_ENTRIES_PER_ROW``), or, where the layout would take the cluster form on
    ``device`` (:func:`uses_cluster`), a share of it through each block of a cluster
    (``PAYS_CLUSTER_ENTRIES_PER_ROW``)."""
    widest = max(cfg.num_centroids, cfg.num_res_centroids)
    entries = cfg.num_vectors * cfg.group_size
    if device is not None and uses_cluster(cfg, device):
        need = PAYS_CLUSTER_ENTRIES_PER_ROW * widest
    else:
        need = PAYS_ENTRIES_PER_ROW * widest * PAYS_SMS
    return applies(cfg) and widest > cfg.group_size and entries >= need


def mma_supported(cfg: Any, device: torch.device) -> bool:
    """Whether the tensor-core tiled kernel can take layers like ``cfg`` on ``device``: v = 8
    on an sm_80+ GPU."""
    device = torch.device(device)
    return (
        cfg.vector_len == MMA_VECTOR_LEN
        and device.type == "cuda"
        and torch.cuda.get_device_capability(device)[0] >= 8
    )


def uses_mma(cfg: Any, device: torch.device) -> bool:
    """Whether the layouts built at load time take the mma form: only with
    ``VPTQ_RS_TILED_MMA=1`` where :func:`mma_supported`. On an H100 the mma kernel ties the
    scalar one (run 24c: 116.4 and 114.4 us against 116.5 and 114.0 on the two largest
    v8/k65536 shapes), whose sums keep the activations in fp32, so the scalar form stays
    the default. Under the cluster kernel it is slower (run 28b: 75.6 and 86.0 us against
    71.8 and 79.7)."""
    return os.environ.get(ENV_MMA, "0") == "1" and mma_supported(cfg, device)


def cluster_supported(device: torch.device) -> bool:
    """Whether the cluster-tiled kernel runs on ``device``: an sm_90+ GPU (thread-block
    clusters)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def uses_cluster(cfg: Any, device: torch.device) -> bool:
    """Whether the layouts built at load time take the cluster form: wherever
    :func:`cluster_supported`, unless ``VPTQ_RS_TILED_CLUSTER=0``. Run 27b (H100,
    v8/k65536): 75.9 and 84.8 us on the two largest shapes against 111.0 and 107.6 for the
    scalar tiled kernel, and 23.1 us on 4096x4096 against 34.3 for the gather kernel (run
    25b)."""
    return os.environ.get(ENV_CLUSTER, "1") != "0" and cluster_supported(device)


def load_form(cfg: Any, device: torch.device) -> tuple[bool, bool]:
    """The form, as (mma, cluster), of the layouts built at load time on ``device``: mma
    entries where :func:`uses_mma`, for the cluster kernel where :func:`uses_cluster`."""
    return uses_mma(cfg, device), uses_cluster(cfg, device)


def threads(cfg: Any) -> int:
    """Threads of a tiled kernel block (``tiled_threads`` in gemv_tiled.cuh)."""
    return 1024 if cfg.vector_len <= 8 else 512


def _round16(b: int) -> int:
    return -(-b // 16) * 16


def rows_per_block(cfg: Any, sms: int) -> int:
    """Vector rows of the busiest block on a GPU with ``sms`` SMs (one block an SM)."""
    r = cfg.num_vectors
    return -(-r // max(1, min(r, sms)))


def slots(nrows: int, warps: int) -> int:
    """Partial-sum slots per row of a block of ``nrows`` rows (``tiled_slots``): with at most
    one row a warp, a row meets at most ``warps // nrows + 2`` warps; past that each warp
    takes whole rows."""
    return 1 if nrows > warps else min(warps, warps // max(nrows, 1) + 2)


def warp_pieces(nrows: int, warps: int) -> list[list[tuple[int, int, int, int]]]:
    """Each warp's pieces ``(row, lo, hi, slot)`` in a block of ``nrows`` rows, as the kernel
    cuts them: with ``nrows <= warps`` every row is ``warps`` units and warp w takes units
    ``[nrows * w, nrows * (w + 1))``, the same fraction ``lo/warps .. hi/warps`` of its rows'
    runs in every tile; past that warp w takes rows w and w + warps whole."""
    if nrows > warps:
        return [[(r, 0, warps, 0) for r in (w, w + warps) if r < nrows] for w in range(warps)]
    out = []
    for w in range(warps):
        u0, u1 = nrows * w, nrows * (w + 1)
        ra, rb = u0 // warps, (u1 - 1) // warps
        first = [
            (ra, u0 - ra * warps, u1 - ra * warps if ra == rb else warps, w - ra * warps // nrows)
        ]
        out.append(first + ([(rb, 0, u1 - rb * warps, 0)] if rb != ra else []))
    return out


def smem_bytes(cfg: Any, tile_codes: int, sms: int, *, mma: bool = False) -> int:
    """Shared memory the tiled kernel asks for: xs plus a zero slot (fp32), two codebook
    tiles (16-bit), a partial sum per (row, slot, element) of the larger block, and
    :func:`sorted_layout.extra_x_bytes` (mirrors ``tiled_smem_bytes`` in gemv_tiled.cuh);
    the mma kernel adds ``MMA_REDUCE_BYTES``."""
    warps = threads(cfg) // 32
    r = cfg.num_vectors
    lo = r // max(1, min(r, sms))
    hi = rows_per_block(cfg, sms)
    parts = max(n * slots(n, warps) for n in (lo, hi))
    return (
        _round16((cfg.group_size + 1) * 4)
        + 2 * _round16(tile_codes * cfg.vector_len * 2)
        + _round16(parts * cfg.vector_len * 4)
        + sorted_layout.extra_x_bytes(cfg)
        + (MMA_REDUCE_BYTES if mma else 0)
    )


def cluster_rows_cap(cfg: Any, sms: int) -> int:
    """Vector rows of a cluster the cluster kernel's shared memory holds partial sums for:
    those of the busiest of ``sms // CLUSTER_MAX`` clusters (``tiled_cluster_rows_cap``)."""
    g = max(1, sms // CLUSTER_MAX)
    return -(-cfg.num_vectors // g)


def cluster_smem_bytes(cfg: Any, tile_codes: int, sms: int, *, mma: bool = False) -> int:
    """Shared memory the cluster kernel asks for: xs plus a zero slot (fp32), one codebook
    tile (16-bit), :func:`sorted_layout.extra_x_bytes`, twice ``rows_cap x V`` fp32 (the
    partial sums and the block's added rows) and over mma entries the max |xs| reduction
    (``tiled_cluster_smem_bytes``)."""
    rows = cluster_rows_cap(cfg, sms)
    return (
        _round16((cfg.group_size + 1) * 4)
        + _round16(tile_codes * cfg.vector_len * 2)
        + sorted_layout.extra_x_bytes(cfg)
        + 2 * _round16(rows * cfg.vector_len * 4)
        + (MMA_REDUCE_BYTES if mma else 0)
    )


def tile_codes_for(
    cfg: Any, smem_limit: int, sms: int, *, mma: bool = False, cluster: bool = False
) -> int | None:
    """The largest power-of-two tile (at most the widest codebook) whose shared memory fits
    ``smem_limit`` bytes on ``sms`` SMs; None when none does or (but for the cluster form)
    the block has more rows than its warps take (``ITEMS_PER_WARP`` each)."""
    if not cluster and rows_per_block(cfg, sms) > ITEMS_PER_WARP * threads(cfg) // 32:
        return None
    tc = max(cfg.num_centroids, cfg.num_res_centroids)
    while tc >= MIN_TILE_CODES:
        need = (
            cluster_smem_bytes(cfg, tc, sms, mma=mma)
            if cluster
            else smem_bytes(cfg, tc, sms, mma=mma)
        )
        if need <= smem_limit:
            return tc
        tc //= 2
    return None


def device_tile_codes(
    cfg: Any, device: torch.device, *, mma: bool = False, cluster: bool = False
) -> int | None:
    """:func:`tile_codes_for` on a CUDA device (1 KB of its per-block limit left spare, as
    the kernel's own check does)."""
    props = torch.cuda.get_device_properties(device)
    return tile_codes_for(
        cfg,
        props.shared_memory_per_block_optin - 1024,
        props.multi_processor_count,
        mma=mma,
        cluster=cluster,
    )


# entries sorted at once while building: bounds the int64 temporaries to a few hundred MB
BUILD_BLOCK_ENTRIES = 1 << 22


def bank_keys(codes: torch.Tensor, vector_len: int) -> tuple[torch.Tensor, int]:
    """Which bank group each code's fp16 codebook row starts in, and how many groups a
    wavefront serves at once (the lanes a wavefront takes).

    The kernel loads a row in chunks of the widest of 16, 8 or 4 bytes that divides it
    (``Entry`` in common.cuh); a wavefront serves 128 bytes, so 128 / chunk lanes, whose
    rows conflict when they start in the same chunk-sized slot of 128 bytes at different
    rows. Within one tile the slot of code ``c`` is ``c * row / chunk`` plus a constant.
    Rows of an odd number of 2-byte halves are keyed by their first 4-byte word.

    codes: int64, any shape; returns (int64 keys of that shape, number of keys).
    """
    row = 2 * vector_len
    chunk = 16 if row % 16 == 0 else 8 if row % 8 == 0 else 4
    keys = 128 // chunk
    return (codes * row // chunk) % keys, keys


def _deal_by_key(tile: torch.Tensor, key: torch.Tensor, keys: int) -> torch.Tensor:
    """The order that deals each tile's entries out by key: the first entry of every key in
    ascending key order, then the second of every key, and so on; entries of one key keep
    column order. tile, key: int64 ``[rows, n]``; returns int64 ``[rows, n]`` positions."""
    n = tile.shape[1]
    col = torch.arange(n, device=tile.device)
    bucket = tile * keys + key
    # n < 2**16 and tiles * keys < 2**20: the composite keys fit an int64
    by_bucket = torch.sort(bucket << 16 | col, dim=1).indices
    sorted_bucket = torch.gather(bucket, 1, by_bucket).contiguous()
    rank = col - torch.searchsorted(sorted_bucket, sorted_bucket)  # within the bucket
    sorted_key = sorted_bucket % keys
    dealt = torch.sort((sorted_bucket // keys) << 24 | rank << 8 | sorted_key, dim=1).indices
    return torch.gather(by_bucket, 1, dealt)


def _unsigned32(e: torch.Tensor) -> torch.Tensor:
    """int64 values below 2^32 as the int32 tensor that holds their bits."""
    return torch.where(e >= 1 << 31, e - (1 << 32), e).to(torch.int32)


def _whole_steps(n: torch.Tensor) -> torch.Tensor:
    """Entry counts rounded up to whole steps of ``MMA_STEP``."""
    return (n + MMA_STEP - 1) // MMA_STEP * MMA_STEP


def _padded_starts(start: torch.Tensor) -> torch.Tensor:
    """Tile starts of the mma form: every run padded to whole steps.
    start: int64 ``[..., tiles + 1]``; returns int64 of that shape."""
    return F.pad(_whole_steps(start.diff(dim=-1)).cumsum(-1), (1, 0))


def _mma_words(
    e: torch.Tensor, start: torch.Tensor, tile_codes: int, gs: int, list_len: int
) -> torch.Tensor:
    """The mma form of some lists: e int64 ``[n, gs]`` (``code << 16 | column``, grouped by
    tile), start int64 ``[n, tiles + 1]``; returns int64 ``[n, list_len]`` words."""
    n, tiles = e.shape[0], start.shape[1] - 1
    dev = e.device
    nstart = _padded_starts(start)
    tile = (e >> 16) // tile_codes
    pos = torch.arange(gs, device=dev) + torch.gather(nstart[:, :-1] - start[:, :-1], 1, tile)
    # padding: the zero column with the first code of the tile whose padded run holds it
    p = torch.arange(list_len, device=dev).expand(n, -1).contiguous()
    ptile = torch.searchsorted(nstart[:, 1:].contiguous(), p, right=True).clamp(max=tiles - 1)
    words = (ptile * tile_codes) << 16 | gs
    words.scatter_(1, pos, e)
    # each step: word l keeps entry l's code and takes entry MMA_X_ENTRY[l]'s column
    w = words.view(n, list_len // MMA_STEP, MMA_STEP)
    take = torch.tensor(MMA_X_ENTRY, device=dev)
    return ((w >> 16) << 16 | (w[..., take] & 0xFFFF)).view(n, list_len)


def _tile_counts(cfg: Any, indices: torch.Tensor, tile_codes: int, tiles: int) -> torch.Tensor:
    """Entries per (row, list, tile): int64 ``[R, lists, tiles]``."""
    nlists = 2 if cfg.res_bits else 1
    gs = cfg.group_size
    out = torch.zeros(cfg.num_vectors, nlists, tiles, dtype=torch.int64, device=indices.device)
    step = max(1, BUILD_BLOCK_ENTRIES // gs)
    for r0 in range(0, cfg.num_vectors, step):
        main, res = ops.unpack_codes(indices[:, r0 : r0 + step], cfg.index_bits, gs, cfg.res_bits)
        for b, codes in enumerate((main, res)[:nlists]):
            tile = codes[0].to(torch.int64) // tile_codes
            out[r0 : r0 + step, b].scatter_add_(1, tile, torch.ones_like(tile))
    return out


def build(
    cfg: Any,
    indices: torch.Tensor,
    tile_codes: int,
    *,
    deal_by_bank: bool = True,
    mma: bool = False,
    cluster: bool = False,
) -> TiledLayout:
    """The tiled layout of a packed layer, on the indices' device.

    cfg: :class:`vptq_rs.layout.LayerConfig`; indices: int32 packed words ``[1, R, words]``;
    tile_codes: a power of two >= 8 (:func:`device_tile_codes` picks the kernel's);
    deal_by_bank: order each tile's entries for the codebook loads' banks (module
    docstring); False keeps column order (the kernel takes either);
    mma: the tensor-core form (module docstring; v = 8 only, :func:`uses_mma`);
    cluster: mark the layout for the cluster kernel (:func:`uses_cluster`; the entries are
    the scalar form's, or with ``mma`` the mma form's, and ``tile_codes`` should come from
    ``device_tile_codes(..., cluster=True)``).
    """
    why = problem(cfg)
    if why is not None:
        raise InvalidValueError(f"the tiled GEMV layout does not cover this layer: {why}")
    if tile_codes < MIN_TILE_CODES or tile_codes & (tile_codes - 1):
        raise InvalidValueError(
            f"tile_codes must be a power of two >= {MIN_TILE_CODES}, got {tile_codes}"
        )
    if mma and cfg.vector_len != MMA_VECTOR_LEN:
        raise InvalidValueError(
            f"the mma form of the tiled layout needs vector_len {MMA_VECTOR_LEN}, "
            f"got {cfg.vector_len}"
        )
    sorted_layout.check_indices(cfg, indices)
    gs = cfg.group_size
    nlists = 2 if cfg.res_bits else 1
    rows = cfg.num_vectors
    dev = indices.device
    tiles = math.ceil(max(cfg.num_centroids, cfg.num_res_centroids) / tile_codes)
    bounds = torch.arange(tiles + 1, device=dev, dtype=torch.int64)  # tile numbers
    list_len = gs
    if mma:  # the longest padded list
        counts = _tile_counts(cfg, indices, tile_codes, tiles)
        list_len = max(MMA_STEP, int(_whole_steps(counts).sum(-1).max()))
    entries = torch.empty(rows, nlists, list_len, dtype=torch.int32, device=dev)
    tile_start = torch.empty(rows, nlists, tiles + 1, dtype=torch.int32, device=dev)
    step = max(1, BUILD_BLOCK_ENTRIES // list_len)
    for r0 in range(0, rows, step):
        main, res = ops.unpack_codes(indices[:, r0 : r0 + step], cfg.index_bits, gs, cfg.res_bits)
        for b, codes in enumerate((main, res)[:nlists]):
            c = codes[0].to(torch.int64)
            tile = c // tile_codes
            if deal_by_bank:
                key, keys = bank_keys(c, cfg.vector_len)
                order = _deal_by_key(tile, key, keys)
            else:  # stable: within a tile, columns stay in order
                order = torch.sort(tile, dim=1, stable=True).indices
            tile = torch.gather(tile, 1, order).contiguous()
            e = (torch.gather(c, 1, order) << 16) | order
            start = torch.searchsorted(tile, bounds.expand(tile.shape[0], -1).contiguous())
            if mma:
                e = _mma_words(e, start, tile_codes, gs, list_len)
                start = _padded_starts(start)
            entries[r0 : r0 + step, b] = _unsigned32(e)  # uint32 bits in an int32 tensor
            tile_start[r0 : r0 + step, b] = start.to(torch.int32)
    return TiledLayout(entries, tile_start, tile_codes, mma, cluster)


def _from_mma(layout: TiledLayout, group_size: int) -> torch.Tensor:
    """The scalar form's entries of an mma-form layout, int64 ``[R, lists, group_size]``
    (``code << 16 | column``). Raises if a tile start is not a multiple of ``MMA_STEP`` or
    past the list, if a position holds a code outside its tile, or if a list does not hold
    ``group_size`` entries besides its padding."""
    e = layout.entries.to(torch.int64) & 0xFFFFFFFF
    rows, nlists, n = e.shape
    ts = layout.tile_start.to(torch.int64)
    if n % MMA_STEP or bool((ts % MMA_STEP != 0).any()) or bool((ts.diff(dim=2) < 0).any()):
        raise InvalidValueError("mma-form runs must start and end on steps of 32 entries")
    if bool((ts[:, :, 0] != 0).any()) or bool((ts[:, :, -1] > n).any()):
        raise InvalidValueError("tile_start must run from 0 to at most the list length")
    w = e.view(rows, nlists, n // MMA_STEP, MMA_STEP)
    col = torch.empty_like(w)
    col[..., list(MMA_X_ENTRY)] = w & 0xFFFF
    code = (w >> 16).reshape(rows, nlists, n)
    col = col.reshape(rows, nlists, n)
    p = torch.arange(n, device=e.device).expand(rows * nlists, -1).contiguous()
    ends = ts[:, :, 1:].reshape(rows * nlists, -1).contiguous()
    ptile = torch.searchsorted(ends, p, right=True).view(rows, nlists, n)
    live = ptile < ts.shape[2] - 1
    if not bool(((code // layout.tile_codes == ptile) | ~live).all()):
        raise InvalidValueError("an entry's code lies outside its tile")
    keep = live & (col != group_size)
    if not bool((keep.sum(-1) == group_size).all()):
        raise InvalidValueError(f"every list must hold {group_size} entries besides padding")
    return (code[keep] << 16 | col[keep]).view(rows, nlists, group_size)


def decode(layout: TiledLayout, group_size: int) -> torch.Tensor:
    """The codes a layout encodes, int64 ``[lists, R, group_size]`` (the reference for
    :func:`build`). Raises if a column is missing or appears twice, if entries are not
    grouped by tile in ascending order, or if a tile's start disagrees with the codes (the
    mma form: see :func:`_from_mma`)."""
    if layout.mma:
        flat = _from_mma(layout, group_size)
        tile = (flat >> 16) // layout.tile_codes
        bounds = torch.arange(layout.tile_start.shape[2], device=flat.device)
        r, nl = flat.shape[:2]
        start = torch.searchsorted(
            tile.reshape(r * nl, -1), bounds.expand(r * nl, -1).contiguous()
        ).view(r, nl, -1)
        plain = TiledLayout(_unsigned32(flat), start.to(torch.int32), layout.tile_codes)
        return decode(plain, group_size)
    e = layout.entries.to(torch.int64) & 0xFFFFFFFF
    rows, nlists, n = e.shape
    if n != group_size:
        raise InvalidValueError(f"entries hold {n} columns, not group_size {group_size}")
    code, col = e >> 16, e & 0xFFFF
    tile = code // layout.tile_codes
    if not bool(tile.diff(dim=2).ge(0).all()):
        raise InvalidValueError("entries must be grouped by tile in ascending order")
    bounds = torch.arange(layout.tile_start.shape[2], device=e.device)
    expect = torch.searchsorted(
        tile.reshape(rows * nlists, n), bounds.expand(rows * nlists, -1).contiguous()
    )
    if not torch.equal(expect.view(rows, nlists, -1), layout.tile_start.to(torch.int64)):
        raise InvalidValueError("tile_start disagrees with the entries")
    counts = torch.zeros(rows, nlists, group_size + 1, dtype=torch.int64, device=e.device)
    counts.scatter_add_(2, col.clamp(max=group_size), torch.ones_like(col))
    if not bool((counts[:, :, :group_size] == 1).all()):
        raise InvalidValueError("every column must appear exactly once per list")
    out = torch.zeros(rows, nlists, group_size, dtype=torch.int64, device=e.device)
    out.scatter_(2, col, code)
    return out.transpose(0, 1)
