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
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from vptq_rs import ops, sorted_layout
from vptq_rs.errors import InvalidValueError

MAX_GROUP_SIZE = 0xFFFE  # 16-bit columns; group_size itself is the zero slot
ITEMS_PER_WARP = 2  # rows a thread keeps sums for (kTiledItemsPerWarp in gemv_tiled.cuh)
MIN_TILE_CODES = 8  # tile starts stay 16-byte aligned


class TiledLayout(NamedTuple):
    """One layer's code-tiled entries (module docstring).

    entries:    int32 ``[R, lists, group_size]``
    tile_start: int32 ``[R, lists, tiles + 1]``
    tile_codes: codebook rows a tile (a power of two)
    """

    entries: torch.Tensor
    tile_start: torch.Tensor
    tile_codes: int

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


def pays(cfg: Any) -> bool:
    """Whether the tiled GEMV is the one to use: it applies, the codebook is wider than a
    row (where the sorted layout does not apply and the gather kernel reads the codebook
    through L2), and the layer has entries enough to pay for streaming the codebook through
    every SM (``PAYS_ENTRIES_PER_ROW``)."""
    widest = max(cfg.num_centroids, cfg.num_res_centroids)
    entries = cfg.num_vectors * cfg.group_size
    return (
        applies(cfg)
        and widest > cfg.group_size
        and entries >= PAYS_ENTRIES_PER_ROW * widest * PAYS_SMS
    )


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


def smem_bytes(cfg: Any, tile_codes: int, sms: int) -> int:
    """Shared memory the tiled kernel asks for: xs plus a zero slot (fp32), two codebook
    tiles (16-bit), a partial sum per (row, slot, element) of the larger block, and
    :func:`sorted_layout.extra_x_bytes` (mirrors ``tiled_smem_bytes`` in gemv_tiled.cuh)."""
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
    )


def tile_codes_for(cfg: Any, smem_limit: int, sms: int) -> int | None:
    """The largest power-of-two tile (at most the widest codebook) whose shared memory fits
    ``smem_limit`` bytes on ``sms`` SMs; None when none does or the block has more rows
    than its warps take (``ITEMS_PER_WARP`` each)."""
    if rows_per_block(cfg, sms) > ITEMS_PER_WARP * threads(cfg) // 32:
        return None
    tc = max(cfg.num_centroids, cfg.num_res_centroids)
    while tc >= MIN_TILE_CODES:
        if smem_bytes(cfg, tc, sms) <= smem_limit:
            return tc
        tc //= 2
    return None


def device_tile_codes(cfg: Any, device: torch.device) -> int | None:
    """:func:`tile_codes_for` on a CUDA device (1 KB of its per-block limit left spare, as
    the kernel's own check does)."""
    props = torch.cuda.get_device_properties(device)
    return tile_codes_for(
        cfg, props.shared_memory_per_block_optin - 1024, props.multi_processor_count
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


def build(
    cfg: Any, indices: torch.Tensor, tile_codes: int, *, deal_by_bank: bool = True
) -> TiledLayout:
    """The tiled layout of a packed layer, on the indices' device.

    cfg: :class:`vptq_rs.layout.LayerConfig`; indices: int32 packed words ``[1, R, words]``;
    tile_codes: a power of two >= 8 (:func:`device_tile_codes` picks the kernel's);
    deal_by_bank: order each tile's entries for the codebook loads' banks (module
    docstring); False keeps column order (the kernel takes either).
    """
    why = problem(cfg)
    if why is not None:
        raise InvalidValueError(f"the tiled GEMV layout does not cover this layer: {why}")
    if tile_codes < MIN_TILE_CODES or tile_codes & (tile_codes - 1):
        raise InvalidValueError(
            f"tile_codes must be a power of two >= {MIN_TILE_CODES}, got {tile_codes}"
        )
    sorted_layout.check_indices(cfg, indices)
    gs = cfg.group_size
    nlists = 2 if cfg.res_bits else 1
    rows = cfg.num_vectors
    dev = indices.device
    tiles = math.ceil(max(cfg.num_centroids, cfg.num_res_centroids) / tile_codes)
    bounds = torch.arange(tiles + 1, device=dev, dtype=torch.int64)  # tile numbers
    entries = torch.empty(rows, nlists, gs, dtype=torch.int32, device=dev)
    tile_start = torch.empty(rows, nlists, tiles + 1, dtype=torch.int32, device=dev)
    step = max(1, BUILD_BLOCK_ENTRIES // gs)
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
            # uint32 bits in an int32 tensor
            entries[r0 : r0 + step, b] = torch.where(e >= 1 << 31, e - (1 << 32), e).to(torch.int32)
            start = torch.searchsorted(tile, bounds.expand(tile.shape[0], -1).contiguous())
            tile_start[r0 : r0 + step, b] = start.to(torch.int32)
    return TiledLayout(entries, tile_start, tile_codes)


def decode(layout: TiledLayout, group_size: int) -> torch.Tensor:
    """The codes a layout encodes, int64 ``[lists, R, group_size]`` (the reference for
    :func:`build`). Raises if a column is missing or appears twice, if entries are not
    grouped by tile in ascending order, or if a tile's start disagrees with the codes."""
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
