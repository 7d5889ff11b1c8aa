"""Code-sorted index layout for the one-token GEMV (``_cuda/gemv_sorted.cuh``).

With vectors along the output dimension, a vector row ``r`` of a packed layer contributes
``y_r = sum_j xs[j] C[code[r, j]]`` (a v-vector). The packed words keep codes in column
order, so a kernel gathers codebook rows at random addresses (the gather kernel) or scatters
activations into per-row histograms with shared-memory atomics (the histogram kernel); both
are bound by random shared-memory traffic. This layout stores, per vector row and codebook
(main, then residual), the row's columns sorted by code instead, two columns of one code to
an entry: ``y_r = sum over entries of (xs[a] + xs[b]) C[code]``. A warp then reads 32
consecutive entries whose codes span about 32 adjacent codebook rows (conflict-free loads),
and does the codebook work (loads, conversions, FMAs) once per two columns; the random
accesses left are the entries' 4-byte activations.

An entry is 32 bits: ``b << 17 | a << 2 | new_code``, bit 1 clear (``a << 2`` is its
byte offset in the kernel's fp32 xs).

- ``a``, ``b``: columns within the group (``group_size <= 32767``); ``group_size`` itself
  names a slot whose activation is zero. A code with an odd number of columns ends with a
  half-empty entry (``b`` the zero slot). Both fields of any 32-bit word are below 2^15, and
  the kernel's shared memory reaches that far past xs (:func:`smem_bytes`), so it reads the
  columns without a clamp. Where the device cannot give a block that much (99 KB on the RTX
  30 and 40 series), a variant masks both columns' byte offsets to :func:`group_reach_bytes`
  instead, about 2% slower.
- ``new_code``: 1 on a code's first entry. The first code of a list is 0, so the code of an
  entry is the count of set flags up to it, minus one: a warp recovers 32 codes with one
  ballot and a popcount.
- A code no column uses gets one empty entry with the flag set, so codes only ever step by
  0 or 1. At ``group_size / K = 2`` columns per code (Poisson), a code averages 1.38 entries:
  0.69 entries a column.
- Which column of a pair is ``a`` is free; :func:`build` picks it so that each of the two
  activation loads of a warp step spreads over the 32 shared-memory banks (greedy, lane by
  lane), which cuts their bank conflicts by about a fifth on random columns.
- Lists are padded with empty entries whose flag is clear, to one length per layer that is a
  multiple of 128 entries.

Storage: ``entries`` int32 ``[lists, R, L]`` (a codebook's lists are contiguous, so a warp's
run of groups crosses rows without a jump). Within each group of 128 entries (4 warp steps
of 32 lanes) lane ``l``'s 4 entries are adjacent, so one 16-byte load per lane feeds 4 steps:
step ``s`` of lane ``l`` in group ``g`` lives at ``g*128 + l*4 + s``. ``chunk_base`` int32
``[lists, R, chunks]`` holds the code before each chunk of ``chunk_groups`` groups (-1 for
the first), so a warp can start a list mid-way.

The layout is derived from the packed indices at load time (:func:`build`) and is never
saved: checkpoints keep FORMAT.md's packed words.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from vptq_rs import ops
from vptq_rs.errors import InvalidValueError

COLUMN_BITS = 15
MAX_GROUP_SIZE = (1 << COLUMN_BITS) - 1  # group_size itself is the zero slot
COLUMN_MASK = (1 << COLUMN_BITS) - 1
FLAG_BIT = 0
NEW_CODE = 1 << FLAG_BIT
FIRST = 2  # bit offset of an entry's first column
SECOND = 17  # bit offset of an entry's second column
# bytes past the start of xs that a column field can reach: the kernel's shared memory is at
# least this large before its partial sums (kSortedXReach in gemv_sorted.cuh)
X_REACH_BYTES = 4 << COLUMN_BITS
GROUP_ENTRIES = 128  # 4 steps of 32 lanes: one 16-byte load per lane
STEPS_PER_GROUP = 4
LANES = 32
BANKS = 32  # shared-memory banks of 4 bytes
# lanes whose column order the builder picks at once (one pass each): 4 balances a step's
# activation loads nearly as well as 1 (5.77 against 5.66 words in the fullest banks of its
# two loads, 7.07 unordered, on random columns) in a quarter of the passes
BALANCE_LANES = 4
# the grain at which the kernel cuts a block's groups into one range per warp: a warp's share
# is within a chunk of the mean. A chunk costs a base code (4 bytes a list) and a partial-sum
# slot (V floats of shared memory a row, at most sorted_slots per row). On an H100 (run 17b,
# results/gpu-gemv-sorted-grain-run17b.json) 4 was the fastest of 2, 4 and 8, or within 1%
# of it, on the two largest v6/k4096 shapes; with a residual codebook 2 was 1-3% faster
# there, and on the 4096-wide shapes the three were within 5%.
CHUNK_GROUPS_TARGET = 4


class SortedLayout(NamedTuple):
    """One layer's code-sorted entries (module docstring).

    entries:      int32 ``[lists, R, groups * 128]``
    chunk_base:   int32 ``[lists, R, chunks]``
    chunk_groups: groups per chunk (the last chunk of a list may be shorter)
    """

    entries: torch.Tensor
    chunk_base: torch.Tensor
    chunk_groups: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.entries, self.chunk_base))


def group_problem(cfg: Any, max_group_size: int) -> str | None:
    """What keeps a one-token kernel over a per-row layout (this one or
    :mod:`vptq_rs.tiled_layout`) off a layer: vectors along the input dimension, several
    groups, or a group wider than ``max_group_size``. None when there is nothing."""
    if cfg.vector_quant_dim != "out":
        return "vectors run along the input dimension"
    if cfg.group_num != 1:
        return f"group_num is {cfg.group_num}, not 1"
    if cfg.group_size > max_group_size:
        return f"group_size {cfg.group_size} exceeds {max_group_size}"
    return None


def problem(cfg: Any) -> str | None:
    """Why the sorted layout does not cover this layer (None when it does)."""
    why = group_problem(cfg, MAX_GROUP_SIZE)
    if why is not None:
        return why
    widest = max(cfg.num_centroids, cfg.num_res_centroids)
    if cfg.group_size < widest:
        return (
            f"group_size {cfg.group_size} is narrower than the {widest}-entry codebook "
            "(dummy entries for unused codes would outnumber a third of the columns)"
        )
    return None


def applies(cfg: Any) -> bool:
    """Whether :func:`build` takes this layer (see :func:`problem`)."""
    return problem(cfg) is None


# A residual codebook doubles the lists, so the sorted kernel pays only on large layers: on
# an H100 (run 15c, benchmarks/results/gpu-gemv.json) v12/k4096+res4096 beat the histogram
# kernel on 28672x8192 and 8192x28672 (98.0 vs 107.8 us, 84.3 vs 91.7; 19.6M columns of
# vector rows) and lost 8-36% on the 4096-wide shapes (4.9M at most).
PAYS_RESIDUAL_COLUMNS = 1 << 23


def pays(cfg: Any) -> bool:
    """Whether the sorted GEMV is worth its memory on this layer: it applies, and either
    there is no residual codebook (run 15c: 1.39-1.50x the histogram kernel's speed on the
    large v6/k4096 shapes, within 4-7% of it on 4096x4096) or the layer has at least
    ``PAYS_RESIDUAL_COLUMNS`` columns of vector rows."""
    if not applies(cfg):
        return False
    return cfg.num_res_centroids == 0 or (cfg.num_vectors * cfg.group_size >= PAYS_RESIDUAL_COLUMNS)


def slots(chunks: int, warps: int, min_rows: int) -> int:
    """Partial-sum slots the kernel keeps per (row, list): one per piece a warp leaves in
    the row (mirrors ``sorted_slots`` in gemv_sorted.cuh). When a block has at least as many
    chunks as warps, the warps that meet one row number at most ``warps // min_rows + 2``
    (``min_rows``: the fewest rows a block has); with fewer, each piece is one chunk."""
    return min(chunks, warps // max(1, min_rows) + 2)


def group_reach_bytes(group_size: int) -> int:
    """Bytes past xs that the group-reach kernel's column masks reach: the smallest
    power-of-two count of floats holding xs and its zero slot (``sorted_group_reach`` in
    gemv_sorted.cuh)."""
    return 4 << max(0, group_size).bit_length()


def extra_x_bytes(cfg: Any) -> int:
    """The shared memory of the sorted and tiled kernels just before their partial sums: the
    outlier columns' activations and 32 weight-bias partial sums, fp32, 16-byte aligned
    (``extra_x_bytes`` in gemv_sorted.cuh)."""
    return -(-(cfg.outlier_size + 32) * 4 // 16) * 16


def smem_bytes(cfg: Any, layout: SortedLayout, sms: int, group_reach: bool = False) -> int:
    """Shared memory the sorted kernel asks for on a GPU with ``sms`` SMs: xs plus a zero
    slot (fp32) and the larger codebook (16-bit), padded to ``X_REACH_BYTES`` (or to
    :func:`group_reach_bytes` with ``group_reach``), then the partial sums of a block's rows
    (:func:`slots` per row and list, fp32 x V) and :func:`extra_x_bytes` (mirrors
    ``sorted_smem_bytes`` in gemv_sorted.cuh)."""
    r = cfg.num_vectors
    grid = max(1, min(r, sms))
    rows_per_block = -(-r // grid)
    widest = max(cfg.num_centroids, cfg.num_res_centroids)
    lists, _, chunks = layout.chunk_base.shape
    warps = 32 if cfg.vector_len <= 12 else 16  # sorted_warps

    def round16(b: int) -> int:
        return -(-b // 16) * 16

    x_and_codebook = round16((cfg.group_size + 1) * 4) + round16(widest * cfg.vector_len * 2)
    return (
        max(x_and_codebook, group_reach_bytes(cfg.group_size) if group_reach else X_REACH_BYTES)
        + round16(rows_per_block * lists * slots(chunks, warps, r // grid) * cfg.vector_len * 4)
        + extra_x_bytes(cfg)
    )


def fits(cfg: Any, layout: SortedLayout, device: torch.device) -> bool:
    """Whether the sorted kernel can run this layout on ``device`` (a CUDA device): with the
    group reach, the smaller of its two shared-memory footprints."""
    props = torch.cuda.get_device_properties(device)
    need = smem_bytes(cfg, layout, props.multi_processor_count, group_reach=True)
    return need <= props.shared_memory_per_block_optin - 1024


def _paired_list(
    codes: torch.Tensor, k: int, gs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One codebook's entries in sorted order, before balancing and padding.

    codes: int ``[R, N]`` in ``[0, k)``. Returns cols int64 ``[R, P, 2]`` (each entry's two
    columns, ``gs`` where there is none), flag bool ``[R, P]`` (an entry opens its code) and
    length int64 ``[R]`` (entries of each row; past it, cols are ``gs`` and flags clear).
    """
    rows, n = codes.shape
    dev = codes.device
    sc, order = torch.sort(codes.to(torch.int64), dim=1, stable=True)
    counts = torch.zeros(rows, k, dtype=torch.int64, device=dev)
    counts.scatter_add_(1, sc, torch.ones_like(sc))
    per_code = ((counts + 1) // 2).clamp(min=1)  # an unused code still takes one entry
    first = torch.cumsum(per_code, dim=1) - per_code  # each code's first entry
    col_start = torch.cumsum(counts, dim=1) - counts  # each code's first sorted column
    rank = torch.arange(n, device=dev) - col_start.gather(1, sc)  # place within the code
    length = per_code.sum(dim=1)
    width = int(length.max())
    # a flat [R, 2 * width] view: the columns of entry e sit at 2e and 2e + 1
    cols = torch.full((rows, 2 * width), gs, dtype=torch.int64, device=dev)
    cols.scatter_(1, 2 * (first.gather(1, sc) + rank // 2) + rank % 2, order)
    flag = torch.zeros(rows, width, dtype=torch.bool, device=dev)
    flag.scatter_(1, first, True)
    return cols.view(rows, width, 2), flag, length


def _balance_banks(cols: torch.Tensor, gs: int) -> torch.Tensor:
    """Each entry's two columns ordered so that, in every warp step, the first columns and
    the second columns each spread over the shared-memory banks (xs is fp32: column ``c``
    sits in bank ``c % 32``). Greedy, ``BALANCE_LANES`` lanes at a time: a lane takes the
    order that keeps the busier of its two banks least loaded, given the lanes before its
    round. The zero slot is one word that any number of lanes read at once, so it adds no
    load.

    cols: int64 ``[..., W, 2]`` with ``W`` a multiple of 32; returns the same shape.
    """
    c = cols.reshape(-1, LANES, 2)
    steps = c.shape[0]
    load = torch.zeros(2, steps, BANKS, dtype=torch.int64, device=cols.device)
    out = torch.empty_like(c)

    def cost(which: int, col: torch.Tensor) -> torch.Tensor:
        return load[which].gather(1, col % BANKS) + (col != gs)

    for l0 in range(0, LANES, BALANCE_LANES):
        a, b = c[:, l0 : l0 + BALANCE_LANES, 0], c[:, l0 : l0 + BALANCE_LANES, 1]
        swap = torch.maximum(cost(0, b), cost(1, a)) < torch.maximum(cost(0, a), cost(1, b))
        first, second = torch.where(swap, b, a), torch.where(swap, a, b)
        for which, col in ((0, first), (1, second)):
            load[which].scatter_add_(1, col % BANKS, (col != gs).long())
        out[:, l0 : l0 + BALANCE_LANES, 0] = first
        out[:, l0 : l0 + BALANCE_LANES, 1] = second
    return out.view(cols.shape)


# entries sorted at once while building: bounds the int64 temporaries (about 100 bytes a
# column) to a few hundred MB however large the layer
BUILD_BLOCK_ENTRIES = 1 << 22


def check_indices(cfg: Any, indices: torch.Tensor) -> None:
    """Raises unless ``indices`` are the layer's packed words, int32 ``[1, R, words]`` (what
    this layout's and :mod:`vptq_rs.tiled_layout`'s builders read)."""
    rows = cfg.num_vectors
    words = -(-cfg.group_size * (cfg.index_bits + cfg.res_bits) // 32)
    if indices.dtype != torch.int32 or tuple(indices.shape) != (1, rows, words):
        raise InvalidValueError(
            f"indices must be int32 [1, {rows}, {words}], got {indices.dtype} {list(indices.shape)}"
        )


def build(
    cfg: Any, indices: torch.Tensor, chunk_groups_target: int = CHUNK_GROUPS_TARGET
) -> SortedLayout:
    """The sorted layout of a packed layer, on the indices' device.

    cfg: :class:`vptq_rs.layout.LayerConfig`; indices: int32 packed words ``[1, R, words]``.
    Rows are sorted in blocks of about ``BUILD_BLOCK_ENTRIES`` entries.
    """
    why = problem(cfg)
    if why is not None:
        raise InvalidValueError(f"the sorted GEMV layout does not cover this layer: {why}")
    if chunk_groups_target < 1:
        raise InvalidValueError(f"chunk_groups_target must be >= 1, got {chunk_groups_target}")
    check_indices(cfg, indices)
    gs = cfg.group_size
    nlists = 2 if cfg.res_bits else 1
    rows = cfg.num_vectors
    dev = indices.device
    step = max(1, BUILD_BLOCK_ENTRIES // gs)
    empty = gs << SECOND | gs << FIRST  # an entry of two zero slots, flag clear
    blocks = []  # per row block: int64 [rows, lists, width] in sorted order, its own width
    for r0 in range(0, rows, step):
        # unpacked a block at a time too: int64 codes of a whole layer would be the peak
        main, res = ops.unpack_codes(indices[:, r0 : r0 + step], cfg.index_bits, gs, cfg.res_bits)
        lists = ((main, cfg.num_centroids), (res, cfg.num_res_centroids))[:nlists]
        parts = [_paired_list(c[0], k, gs) for c, k in lists]
        longest = max(int(n.max()) for _, _, n in parts)
        width = GROUP_ENTRIES * max(1, math.ceil(longest / GROUP_ENTRIES))
        block = []
        for cols, flag, _ in parts:
            pad = width - cols.shape[1]
            cols = _balance_banks(F.pad(cols, (0, 0, 0, pad), value=gs), gs)
            flag = F.pad(flag, (0, pad))
            block.append(cols[..., 1] << SECOND | cols[..., 0] << FIRST | flag.long() * NEW_CODE)
        blocks.append(torch.stack(block, dim=1))
    width = max(b.shape[2] for b in blocks)
    # shorter blocks take whole groups of empty entries (the same in any order)
    out = torch.cat([F.pad(b, (0, width - b.shape[2]), value=empty) for b in blocks])
    groups = width // GROUP_ENTRIES
    chunks = math.ceil(groups / chunk_groups_target)
    chunk_groups = math.ceil(groups / chunks)
    chunks = math.ceil(groups / chunk_groups)
    chunk_base = torch.full((rows, nlists, chunks), -1, dtype=torch.int32, device=dev)
    if chunks > 1:
        ends = torch.arange(1, chunks, device=dev) * chunk_groups * GROUP_ENTRIES
        for r0 in range(0, rows, step):
            flags = ((out[r0 : r0 + step] >> FLAG_BIT) & 1).to(torch.int32)
            before = torch.cumsum(flags, dim=2, dtype=torch.int32)[:, :, ends - 1]
            chunk_base[r0 : r0 + step, :, 1:] = before - 1
    # sorted order [g, step, lane] -> stored order [g, lane, step]; bit 31 is b's top bit:
    # the entries' two's-complement int32 values
    stored = out.view(rows, nlists, groups, STEPS_PER_GROUP, LANES).transpose(3, 4)
    stored = torch.where(stored >= 1 << 31, stored - (1 << 32), stored)
    entries = stored.reshape(rows, nlists, width).to(torch.int32).transpose(0, 1).contiguous()
    return SortedLayout(entries, chunk_base.transpose(0, 1).contiguous(), chunk_groups)


def decode(layout: SortedLayout, group_size: int) -> torch.Tensor:
    """The codes a layout encodes, int64 ``[lists, R, group_size]``, as the kernel reads them
    (the reference for :func:`build`). Raises if a column is missing or appears twice, or if
    a chunk's base code disagrees with the entries before it."""
    e = layout.entries.transpose(0, 1).to(torch.int64) & 0xFFFFFFFF  # [R, lists, width]
    rows, nlists, width = e.shape
    groups = width // GROUP_ENTRIES
    e = (
        e.view(rows, nlists, groups, LANES, STEPS_PER_GROUP)
        .transpose(3, 4)
        .reshape(rows, nlists, width)
    )
    code = torch.cumsum((e >> FLAG_BIT) & 1, dim=2) - 1
    starts = (
        torch.arange(layout.chunk_base.shape[2], device=e.device)
        * layout.chunk_groups
        * GROUP_ENTRIES
    )
    before = torch.where(starts > 0, code[:, :, (starts - 1).clamp(min=0)], -1)
    if not torch.equal(before, layout.chunk_base.transpose(0, 1).to(torch.int64)):
        raise InvalidValueError("chunk_base disagrees with the entries")
    # both columns of an entry, in order: [R, lists, 2 * width]
    col = torch.stack((e >> FIRST & COLUMN_MASK, e >> SECOND), dim=3).reshape(
        rows, nlists, 2 * width
    )
    code = code.repeat_interleave(2, dim=2)
    real = col < group_size
    counts = torch.zeros(rows, nlists, group_size + 1, dtype=torch.int64, device=e.device)
    counts.scatter_add_(2, col.clamp(max=group_size), torch.ones_like(col))
    if not bool((counts[:, :, :group_size] == 1).all()):
        raise InvalidValueError("every column must appear exactly once per list")
    out = torch.zeros(rows, nlists, group_size, dtype=torch.int64, device=e.device)
    out.scatter_add_(2, torch.where(real, col, 0), torch.where(real, code, 0))
    return out.transpose(0, 1)
