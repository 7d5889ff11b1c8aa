"""The code-sorted index layout of the sorted GEMV (CPU: build, decode, what it covers)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import vptq_rs
from vptq_rs import sorted_layout
from vptq_rs.errors import InvalidValueError
from vptq_rs.layout import LayerConfig


def packed_layer(i, o, v, k, kr=0, seed=0, skew=False):
    """A config and random packed words; skew=True leaves most codes unused."""
    cfg = LayerConfig(
        in_features=i, out_features=o, vector_len=v, num_centroids=k, num_res_centroids=kr
    )
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.num_vectors, cfg.group_size)
    main = torch.randint(0, k, shape, generator=g)
    if skew:
        main = main % 7 * (k // 7)  # 7 codes used, spread over the codebook
    res = torch.randint(0, kr, shape, generator=g) if kr else None
    words = vptq_rs.pack_indices(
        main.numpy(), cfg.index_bits, None if res is None else res.numpy(), cfg.res_bits
    )
    return cfg, torch.from_numpy(words)[None], main, res


@pytest.mark.parametrize(
    "shape",
    [
        (4100, 64, 6, 4096, 0),  # 12-bit codes over several chunks
        (3000, 36, 12, 256, 1024),  # residual list with a wider codebook than the main one
        (600, 30, 2, 16, 0),  # one group: shorter than a chunk
        (700, 12, 4, 512, 2),  # 1-bit residual codes
        (20000, 4, 2, 16, 0),  # second columns past 2^14: entries with bit 31 set
    ],
)
def test_build_then_decode_gives_the_codes_back(shape):
    cfg, words, main, res = packed_layer(*shape)
    lay = sorted_layout.build(cfg, words)
    codes = sorted_layout.decode(lay, cfg.group_size)
    assert torch.equal(codes[0], main)
    if res is not None:
        assert torch.equal(codes[1], res)
    lists, rows, width = lay.entries.shape
    assert (lists, rows) == (2 if res is not None else 1, cfg.num_vectors)
    assert width % sorted_layout.GROUP_ENTRIES == 0 and lay.entries.dtype == torch.int32
    groups = width // sorted_layout.GROUP_ENTRIES
    assert lay.chunk_base.shape[2] == math.ceil(groups / lay.chunk_groups)
    assert lay.chunk_groups <= sorted_layout.CHUNK_GROUPS_TARGET
    # bit 1 is clear (the kernel reads a's byte offset as bits 2-16), and both columns sit
    # where the kernel reads them
    e = lay.entries.to(torch.int64) & 0xFFFFFFFF
    assert not bool((e & 2).any())
    assert int((e >> sorted_layout.SECOND).max()) <= cfg.group_size
    assert int((e >> sorted_layout.FIRST & sorted_layout.COLUMN_MASK).max()) <= cfg.group_size


def sorted_order(lay):
    """A layout's entries in the order the warps take them: int64 [R, lists, width]."""
    e = lay.entries.transpose(0, 1).to(torch.int64) & 0xFFFFFFFF
    rows, lists, width = e.shape
    lanes, steps = sorted_layout.LANES, sorted_layout.STEPS_PER_GROUP
    groups = width // sorted_layout.GROUP_ENTRIES
    return e.view(rows, lists, groups, lanes, steps).transpose(3, 4).reshape(rows, lists, width)


def test_each_code_takes_its_columns_in_pairs_and_an_unused_code_one_empty_entry():
    """Code k with n columns holds max(1, ceil(n / 2)) entries, the first flagged; only its
    last entry may be half empty; the padding past the list is empty and unflagged."""
    cfg, words, main, _ = packed_layer(2000, 24, 6, 256, skew=True)
    lay = sorted_layout.build(cfg, words)
    e = sorted_order(lay)[:, 0]
    gs, k = cfg.group_size, cfg.num_centroids
    flags = (e >> sorted_layout.FLAG_BIT) & 1
    a, b = e >> sorted_layout.FIRST & sorted_layout.COLUMN_MASK, e >> sorted_layout.SECOND
    code = torch.cumsum(flags, dim=1) - 1
    for r in range(main.shape[0]):
        n = torch.bincount(main[r], minlength=k)
        want = torch.clamp((n + 1) // 2, min=1)
        used = int(want.sum())
        assert torch.equal(torch.bincount(code[r, :used], minlength=k), want)
        # a half-empty entry (either column the zero slot) closes an odd code: the next
        # entry opens a code, or the list ends
        half = torch.nonzero((a[r, :used] == gs) != (b[r, :used] == gs)).flatten()
        nxt = torch.cat([flags[r], torch.ones(1, dtype=flags.dtype)])[half + 1]
        assert bool((nxt == 1).all()) and half.numel() == int((n % 2).sum())
        assert bool((flags[r, used:] == 0).all()) and bool((a[r, used:] == gs).all())


def test_pairs_are_ordered_to_spread_each_activation_load_over_the_banks(monkeypatch):
    """Swapping an entry's columns changes no code; the greedy order leaves fewer bank
    conflicts (words in the fullest bank, per load of a warp step) than the plain one."""
    cfg, words, main, _ = packed_layer(8192, 60, 6, 4096, seed=5)

    def conflicts(lay):
        e = sorted_order(lay)[:, 0]
        total = 0
        for cols in (
            e >> sorted_layout.FIRST & sorted_layout.COLUMN_MASK,
            e >> sorted_layout.SECOND,
        ):
            step = cols.reshape(-1, sorted_layout.LANES)
            real = step != cfg.group_size
            load = torch.zeros(step.shape[0], sorted_layout.BANKS, dtype=torch.int64)
            load.scatter_add_(1, step % sorted_layout.BANKS, real.long())
            total += int(load.max(dim=1).values.sum())
        return total

    balanced = sorted_layout.build(cfg, words)
    monkeypatch.setattr(sorted_layout, "_balance_banks", lambda cols, gs: cols)
    plain = sorted_layout.build(cfg, words)
    assert torch.equal(sorted_layout.decode(balanced, cfg.group_size)[0], main)
    assert not torch.equal(balanced.entries, plain.entries)
    assert conflicts(balanced) < 0.9 * conflicts(plain)


def test_small_chunks_start_from_their_base_codes():
    cfg, words, main, _ = packed_layer(4100, 30, 6, 4096, seed=3)
    lay = sorted_layout.build(cfg, words, chunk_groups_target=1)
    groups = lay.entries.shape[2] // sorted_layout.GROUP_ENTRIES
    assert lay.chunk_groups == 1 and lay.chunk_base.shape[2] == groups
    assert torch.equal(sorted_layout.decode(lay, cfg.group_size)[0], main)
    assert bool((lay.chunk_base[:, :, 0] == -1).all())
    assert bool((lay.chunk_base[:, :, 1:] >= 0).all())


def test_decode_rejects_a_corrupt_layout():
    cfg, words, _, _ = packed_layer(600, 30, 2, 16)
    lay = sorted_layout.build(cfg, words)
    dup = lay.entries.clone()
    dup[0, 0, 1] = dup[0, 0, 0]  # a column twice, another missing
    with pytest.raises(InvalidValueError, match="exactly once"):
        sorted_layout.decode(lay._replace(entries=dup), cfg.group_size)
    base = lay.chunk_base.clone()
    base[0, 0, 0] = 3
    with pytest.raises(InvalidValueError, match="chunk_base"):
        sorted_layout.decode(lay._replace(chunk_base=base), cfg.group_size)


def test_what_the_layout_covers():
    def cfg(**kw):
        return LayerConfig(
            **{**dict(in_features=5000, out_features=48, vector_len=6, num_centroids=4096), **kw}
        )

    assert sorted_layout.applies(cfg()) and sorted_layout.pays(cfg())
    assert sorted_layout.applies(cfg(num_res_centroids=256))
    assert not sorted_layout.pays(cfg(num_res_centroids=256))  # slower than the histogram
    # with a residual codebook it pays only on large layers (run 15c)
    for o, i, paid in ((28672, 8192, True), (8192, 28672, True), (14336, 4096, False)):
        shape = dict(out_features=o, in_features=i, vector_len=12, num_res_centroids=4096)
        assert sorted_layout.pays(cfg(**shape)) is paid, (o, i)
    assert "group_num" in sorted_layout.problem(cfg(group_num=2))
    assert "input dimension" in sorted_layout.problem(cfg(vector_quant_dim="in"))
    assert "exceeds 32767" in sorted_layout.problem(cfg(in_features=40000))
    assert "narrower" in sorted_layout.problem(cfg(num_res_centroids=8192))
    with pytest.raises(InvalidValueError, match="narrower"):
        sorted_layout.build(cfg(in_features=2000), torch.zeros(1, 8, 750, dtype=torch.int32))
    with pytest.raises(InvalidValueError, match=r"int32 \[1, 8, 1875\]"):
        sorted_layout.build(cfg(), torch.zeros(1, 8, 1874, dtype=torch.int32))


def r16(b: int) -> int:
    return -(-b // 16) * 16


def test_smem_estimate_counts_activations_codebook_and_partials():
    c, words, _, _ = packed_layer(4100, 64, 6, 4096)  # 11 vector rows, 4100 columns
    lay = sorted_layout.build(c, words)
    chunks = lay.chunk_base.shape[2]
    # xs, its zero slot (4101 floats, rounded up to 16 bytes) and the codebook come to 65568
    # bytes: padded to the 2^15 floats a column field can reach
    assert 16416 + 4096 * 6 * 2 < sorted_layout.X_REACH_BYTES == 131072
    reach = sorted_layout.X_REACH_BYTES
    # then the partial sums (rounded up to 16 bytes) and the extra activations: no outlier
    # columns here, so only the 32 weight-bias partial sums
    extra = sorted_layout.extra_x_bytes(c)
    assert extra == 32 * 4
    partials_per_row = chunks * 6 * 4
    assert sorted_layout.smem_bytes(c, lay, 132) == reach + r16(partials_per_row) + extra
    # 11 rows over 4 SMs: 3 rows per block
    assert sorted_layout.smem_bytes(c, lay, 4) == reach + r16(3 * partials_per_row) + extra
    # one block of 11 rows: its 32 warps meet a row at most 32 // 11 + 2 = 4 times
    assert chunks > 4
    assert sorted_layout.smem_bytes(c, lay, 1) == reach + r16(11 * 4 * 6 * 4) + extra
    # past the reach (the widest group, 32768 floats with its zero slot, and 16 KB of
    # codebook): no padding
    c2, words2, _, _ = packed_layer(32767, 4, 2, 4096)
    lay2 = sorted_layout.build(c2, words2)
    # 2 rows on one SM: 32 // 2 + 2 slots each (fewer than the chunks)
    assert lay2.chunk_base.shape[2] > 18
    parts2 = 2 * 18 * 2 * 4
    assert sorted_layout.smem_bytes(c2, lay2, 1) == 131072 + 4096 * 2 * 2 + parts2 + extra
    # the group reach (GPUs with less than 128 KB a block): masks to 8192 floats, within xs and
    # the codebook here, so no padding
    assert sorted_layout.group_reach_bytes(4100) == 32768 < 16416 + 4096 * 6 * 2
    assert sorted_layout.smem_bytes(c, lay, 132, group_reach=True) == (
        16416 + 4096 * 6 * 2 + r16(partials_per_row) + extra
    )
    # a 16-entry codebook: xs and the codebook (16480 bytes) are padded to the group's reach
    c1, words1, _, _ = packed_layer(4100, 64, 2, 16)
    lay1 = sorted_layout.build(c1, words1)
    # 32 rows over 32 blocks: a row a block, a slot for each of its chunks
    parts1 = r16(lay1.chunk_base.shape[2] * 2 * 4) + extra
    assert sorted_layout.smem_bytes(c1, lay1, 132, group_reach=True) == 32768 + parts1
    assert sorted_layout.smem_bytes(c1, lay1, 132) == 131072 + parts1
    # outlier columns' activations join the weight-bias sums, 16-byte aligned
    assert (
        sorted_layout.extra_x_bytes(
            dataclasses.replace(c, outlier_size=5, outlier_vector_len=1, outlier_num_centroids=4)
        )
        == 160
    )
    # the widest group reaches as far either way
    assert sorted_layout.group_reach_bytes(32767) == 131072
    assert sorted_layout.smem_bytes(c2, lay2, 1, group_reach=True) == sorted_layout.smem_bytes(
        c2, lay2, 1
    )
    assert [sorted_layout.group_reach_bytes(g) for g in (0, 1, 3, 4, 4095, 4096)] == [
        4,
        8,
        16,
        32,
        16384,
        32768,
    ]


def test_warp_ranges_leave_each_row_at_most_its_slots():
    """The kernel's split (gemv_sorted.cuh): warp w of W takes the chunks
    [units * w // W, units * (w + 1) // W) of its block's rows, and each piece (a warp's part
    of one row) takes a distinct slot below ``slots``: the warp's place among the warps that
    meet its first row, 0 for a row it starts, or its chunk when some ranges are empty."""
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        warps = (16, 32)[int(torch.randint(2, (1,), generator=g))]
        chunks, rows = (int(v) for v in torch.randint(1, 60, (2,), generator=g))
        sms = int(torch.randint(1, 20, (1,), generator=g))
        grid = min(rows, sms)
        n_slots = sorted_layout.slots(chunks, warps, rows // grid)
        for blk in range(grid):
            nrows = rows * (blk + 1) // grid - rows * blk // grid
            units = nrows * chunks
            taken = set()
            for w in range(warps):
                u0, u1 = units * w // warps, units * (w + 1) // warps
                if u0 == u1:
                    continue
                rl0, c0 = divmod(u0, chunks)
                first = w - ((rl0 * chunks + 1) * warps - 1) // units if units >= warps else c0
                for row in range(rl0, (u1 - 1) // chunks + 1):
                    piece = (row, first if row == rl0 else 0)
                    assert 0 <= piece[1] < n_slots and piece not in taken
                    taken.add(piece)


def test_building_in_row_blocks_gives_the_same_layout(monkeypatch):
    """Rows are sorted a block at a time (bounded temporaries); blocks of other widths are
    padded to the widest with whole groups, so the layout does not depend on the split."""
    cfg, words, _, _ = packed_layer(3000, 60, 6, 2048, seed=4)
    whole = sorted_layout.build(cfg, words)
    monkeypatch.setattr(sorted_layout, "BUILD_BLOCK_ENTRIES", 3 * cfg.group_size)
    blocked = sorted_layout.build(cfg, words)
    assert torch.equal(blocked.entries, whole.entries)
    assert torch.equal(blocked.chunk_base, whole.chunk_base)
    assert blocked.chunk_groups == whole.chunk_groups
