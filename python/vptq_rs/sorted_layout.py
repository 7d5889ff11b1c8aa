"""Code-sorted index layout for the one-token GEMV (``_cuda/gemv_sorted.cuh``).

With vectors along the output dimension, a vector row ``r`` of a packed layer contributes
``y_r = sum_j xs[j] C[code[r, j]]`` (a v-vector). The packed words keep codes in column
order, so a kernel gathers codebook rows at random addresses (the gather kernel) or scatters
activations into per-row histograms with shared-memory atomics (the histogram kernel); both
are bound by random shared-memory traffic. This layout stores, per vector row and codebook
(main, then residual), the row's columns sorted by code instead. A warp then reads 32
consecutive entries whose codes span about 16 adjacent codebook rows (near-sequential,
conflict-free loads), and the one random access left is the 4-byte activation of the
entry's column.

An entry is 16 bits: ``new_code << 15 | column``.

- ``column``: the position within the group (``group_size <= 32767``); ``group_size``
  itself names a slot whose activation is zero (a dummy entry).
- ``new_code``: 1 when the entry's code is one more than the previous entry's, 0 when the
  same. The first code of a list is 0, so the code of an entry is the count of set flags up
  to it, minus one: a warp recovers 32 codes with one ballot and a popcount.
- A code no column uses gets a dummy entry with the flag set, so codes only ever step by 0
  or 1. There are ``K * exp(-group_size / K)`` such codes on average: 37% more entries when
  the group is as wide as the codebook, 7% when twice as wide, which is why
  :func:`applies` asks for ``group_size >= K``.
- Lists are padded with dummies whose flag is clear, to one length per layer that is a
  multiple of 256 entries.

Storage: ``entries`` int16 ``[R, lists, L]`` (bits of uint16). Within each group of 256
entries (8 warp steps of 32 lanes) lane ``l``'s 8 entries are adjacent, so one 16-byte load
per lane feeds 8 steps: step ``s`` of lane ``l`` in group ``g`` lives at ``g*256 + l*8 + s``.
``chunk_base`` int32 ``[R, lists, chunks]`` holds the code before each chunk of
``chunk_groups`` groups (-1 for the first), so a warp can start a list mid-way.

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
MAX_GROUP_SIZE = (1 << COLUMN_BITS) - 1  # group_size itself is the dummy column
NEW_CODE = 1 << COLUMN_BITS
GROUP_ENTRIES = 256  # 8 steps of 32 lanes: one 16-byte load per lane
STEPS_PER_GROUP = 8
LANES = 32
# groups a warp takes at once: long enough that its partial-sum reduction is noise, short
# enough that the chunks of a block's rows spread evenly over its warps
CHUNK_GROUPS_TARGET = 8


class SortedLayout(NamedTuple):
    """One layer's code-sorted entries (module docstring).

    entries:      int16 ``[R, lists, groups * 256]`` (bits of uint16)
    chunk_base:   int32 ``[R, lists, chunks]``
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


def pays(cfg: Any) -> bool:
    """Whether the sorted GEMV is worth its memory on this layer: it applies and there is no
    residual codebook. On an H100 (run 13e, ``benchmarks/results/gpu-gemv.json``) it beat
    the histogram kernel on v6/k4096 by up to 1.39x (28672x8192) and matched it within 4% on
    the 4096-wide shapes, but a residual codebook doubles its lists: v12/k4096+res4096 ran
    at 0.81-1.05x the histogram kernel's speed."""
    return applies(cfg) and cfg.num_res_centroids == 0


def smem_bytes(cfg: Any, layout: SortedLayout, sms: int) -> int:
    """Shared memory the sorted kernel asks for on a GPU with ``sms`` SMs: xs plus a zero
    slot (fp32), the larger codebook (16-bit), and one partial sum per (row, list, chunk,
    element) of a block's rows (mirrors ``sorted_smem_bytes`` in gemv_sorted.cuh)."""
    r = cfg.num_vectors
    rows_per_block = -(-r // max(1, min(r, sms)))
    widest = max(cfg.num_centroids, cfg.num_res_centroids)
    _, lists, chunks = layout.chunk_base.shape

    def round16(b: int) -> int:
        return -(-b // 16) * 16

    return (
        round16((cfg.group_size + 1) * 4)
        + round16(widest * cfg.vector_len * 2)
        + rows_per_block * lists * chunks * cfg.vector_len * 4
    )


def fits(cfg: Any, layout: SortedLayout, device: torch.device) -> bool:
    """Whether the sorted kernel can run this layout on ``device`` (a CUDA device)."""
    props = torch.cuda.get_device_properties(device)
    need = smem_bytes(cfg, layout, props.multi_processor_count)
    return need <= props.shared_memory_per_block_optin - 1024


def _sorted_list(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions and values of one codebook's entries, before padding.

    codes: int ``[R, N]``. Returns pos int64 ``[R, N]`` (slot of each column's entry),
    value int64 ``[R, N]`` (its 16-bit entry) and length int64 ``[R]`` (entries incl. dummies).
    """
    n = codes.shape[1]
    sc, order = torch.sort(codes.to(torch.int64), dim=1, stable=True)
    new = torch.ones_like(sc, dtype=torch.bool)
    new[:, 1:] = sc[:, 1:] != sc[:, :-1]
    distinct_before = torch.cumsum(new, dim=1) - 1  # index of the entry's code among used ones
    # every unused code below an entry's code holds one dummy slot ahead of it
    pos = torch.arange(n, device=codes.device) + sc - distinct_before
    length = n + sc[:, -1] - distinct_before[:, -1]
    value = (new.to(torch.int64) << COLUMN_BITS) | order
    return pos, value, length


# entries sorted at once while building: bounds the int64 temporaries (about 50 bytes an
# entry) to a few hundred MB however large the layer
BUILD_BLOCK_ENTRIES = 1 << 22


def _as_int16(v: torch.Tensor) -> torch.Tensor:
    """uint16 values (in a wider int tensor) -> their int16 bits."""
    return torch.where(v >= 1 << 15, v - (1 << 16), v).to(torch.int16)


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
    blocks = []  # per row block: int16 [rows, lists, width] in sorted order, its own width
    for r0 in range(0, rows, step):
        # unpacked a block at a time too: int64 codes of a whole layer would be the peak
        main, res = ops.unpack_codes(indices[:, r0 : r0 + step], cfg.index_bits, gs, cfg.res_bits)
        parts = [_sorted_list(c[0]) for c in (main, res)[:nlists]]
        width = GROUP_ENTRIES * max(1, math.ceil(max(int(n.max()) for _, _, n in parts) / 256))
        slot = torch.arange(width, device=dev)
        block = []
        for pos, value, length in parts:
            # slots below the list's length that no column takes are unused codes (flag
            # set); the rest pad the list (flag clear): both read the zero activation
            o = torch.where(slot[None] < length[:, None], NEW_CODE | gs, gs)
            o.scatter_(1, pos, value)
            block.append(_as_int16(o))
        blocks.append(torch.stack(block, dim=1))
    width = max(b.shape[2] for b in blocks)
    # shorter blocks take whole groups of unflagged padding (the same in any order)
    out = torch.cat([F.pad(b, (0, width - b.shape[2]), value=gs) for b in blocks])
    groups = width // GROUP_ENTRIES
    chunks = math.ceil(groups / chunk_groups_target)
    chunk_groups = math.ceil(groups / chunks)
    chunks = math.ceil(groups / chunk_groups)
    chunk_base = torch.full((rows, nlists, chunks), -1, dtype=torch.int32, device=dev)
    if chunks > 1:
        ends = torch.arange(1, chunks, device=dev) * chunk_groups * GROUP_ENTRIES
        for r0 in range(0, rows, step):
            flags = (out[r0 : r0 + step] < 0).to(torch.int32)  # the flag is the sign bit
            before = torch.cumsum(flags, dim=2, dtype=torch.int32)[:, :, ends - 1]
            chunk_base[r0 : r0 + step, :, 1:] = before - 1
    # sorted order [g, step, lane] -> stored order [g, lane, step]
    stored = out.view(rows, nlists, groups, STEPS_PER_GROUP, LANES).transpose(3, 4)
    return SortedLayout(stored.reshape(rows, nlists, width).contiguous(), chunk_base, chunk_groups)


def decode(layout: SortedLayout, group_size: int) -> torch.Tensor:
    """The codes a layout encodes, int64 ``[lists, R, group_size]``, as the kernel reads them
    (the reference for :func:`build`). Raises if a column is missing or appears twice, or if
    a chunk's base code disagrees with the entries before it."""
    e = layout.entries.to(torch.int64) & 0xFFFF
    rows, nlists, width = e.shape
    groups = width // GROUP_ENTRIES
    e = (
        e.view(rows, nlists, groups, LANES, STEPS_PER_GROUP)
        .transpose(3, 4)
        .reshape(rows, nlists, width)
    )
    flag = e >> COLUMN_BITS
    col = e & (NEW_CODE - 1)
    code = torch.cumsum(flag, dim=2) - 1
    starts = (
        torch.arange(layout.chunk_base.shape[2], device=e.device)
        * layout.chunk_groups
        * GROUP_ENTRIES
    )
    before = torch.where(starts > 0, code[:, :, (starts - 1).clamp(min=0)], -1)
    if not torch.equal(before, layout.chunk_base.to(torch.int64)):
        raise InvalidValueError("chunk_base disagrees with the entries")
    real = col < group_size
    counts = torch.zeros(rows, nlists, group_size + 1, dtype=torch.int64, device=e.device)
    counts.scatter_add_(2, col.clamp(max=group_size), torch.ones_like(col))
    if not bool((counts[:, :, :group_size] == 1).all()):
        raise InvalidValueError("every column must appear exactly once per list")
    out = torch.zeros(rows, nlists, group_size, dtype=torch.int64, device=e.device)
    out.scatter_add_(2, torch.where(real, col, 0), torch.where(real, code, 0))
    return out.transpose(0, 1)
