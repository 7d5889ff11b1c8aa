"""The code-sorted index layout of the sorted GEMV (CPU: build, decode, what it covers)."""

from __future__ import annotations

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
    ],
)
def test_build_then_decode_gives_the_codes_back(shape):
    cfg, words, main, res = packed_layer(*shape)
    lay = sorted_layout.build(cfg, words)
    codes = sorted_layout.decode(lay, cfg.group_size)
    assert torch.equal(codes[0], main)
    if res is not None:
        assert torch.equal(codes[1], res)
    rows, lists, width = lay.entries.shape
    assert (rows, lists) == (cfg.num_vectors, 2 if res is not None else 1)
    assert width % sorted_layout.GROUP_ENTRIES == 0 and lay.entries.dtype == torch.int16
    groups = width // sorted_layout.GROUP_ENTRIES
    assert lay.chunk_base.shape[2] == math.ceil(groups / lay.chunk_groups)
    assert lay.chunk_groups <= sorted_layout.CHUNK_GROUPS_TARGET


def test_entries_per_list_count_one_dummy_per_unused_code():
    """A list holds every column once plus one flagged dummy per unused code below its
    largest; the padding past that is unflagged."""
    cfg, words, main, _ = packed_layer(2000, 24, 6, 256, skew=True)
    lay = sorted_layout.build(cfg, words)
    e = lay.entries.to(torch.int64) & 0xFFFF
    rows, _, width = e.shape
    e = e.view(rows, width // 256, 32, 8).transpose(2, 3).reshape(rows, width)
    flags = e >> sorted_layout.COLUMN_BITS
    cols = e & (sorted_layout.NEW_CODE - 1)
    top = main.max(dim=1).values
    used = torch.tensor([torch.unique(r).numel() for r in main])
    assert torch.equal(flags.sum(dim=1), top + 1)  # one flag per code 0..top
    dummies = (cols == cfg.group_size) & (flags == 1)
    assert torch.equal(dummies.sum(dim=1), top + 1 - used)


def test_small_chunks_start_from_their_base_codes():
    cfg, words, main, _ = packed_layer(4100, 30, 6, 4096, seed=3)
    lay = sorted_layout.build(cfg, words, chunk_groups_target=1)
    assert lay.chunk_groups == 1 and lay.chunk_base.shape[2] == lay.entries.shape[2] // 256
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
    assert "group_num" in sorted_layout.problem(cfg(group_num=2))
    assert "input dimension" in sorted_layout.problem(cfg(vector_quant_dim="in"))
    assert "exceeds 32767" in sorted_layout.problem(cfg(in_features=40000))
    assert "narrower" in sorted_layout.problem(cfg(num_res_centroids=8192))
    with pytest.raises(InvalidValueError, match="narrower"):
        sorted_layout.build(cfg(in_features=2000), torch.zeros(1, 8, 750, dtype=torch.int32))
    with pytest.raises(InvalidValueError, match=r"int32 \[1, 8, 1875\]"):
        sorted_layout.build(cfg(), torch.zeros(1, 8, 1874, dtype=torch.int32))


def test_smem_estimate_counts_activations_codebook_and_partials():
    c, words, _, _ = packed_layer(4100, 64, 6, 4096)  # 11 vector rows, 4100 columns
    lay = sorted_layout.build(c, words)
    chunks = lay.chunk_base.shape[2]
    x_and_zero_slot = 16416  # 4101 floats, rounded up to 16 bytes
    codebook = 4096 * 6 * 2
    partials_per_row = chunks * 6 * 4
    assert sorted_layout.smem_bytes(c, lay, 132) == x_and_zero_slot + codebook + partials_per_row
    # 11 rows over 4 SMs: 3 rows per block
    assert sorted_layout.smem_bytes(c, lay, 4) == x_and_zero_slot + codebook + 3 * partials_per_row


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
