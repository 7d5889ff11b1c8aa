"""The code-tiled index layout of the tiled GEMV (CPU: build, decode, what it covers)."""

from __future__ import annotations

import itertools

import pytest
import torch

import vptq_rs
from vptq_rs import tiled_layout
from vptq_rs.errors import InvalidValueError
from vptq_rs.layout import LayerConfig
from vptq_rs.nn import VQuantLinear, random_quantized_layer


def packed_layer(i, o, v, k, kr=0, seed=0):
    cfg = LayerConfig(
        in_features=i, out_features=o, vector_len=v, num_centroids=k, num_res_centroids=kr
    )
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.num_vectors, cfg.group_size)
    main = torch.randint(0, k, shape, generator=g)
    res = torch.randint(0, kr, shape, generator=g) if kr else None
    words = vptq_rs.pack_indices(
        main.numpy(), cfg.index_bits, None if res is None else res.numpy(), cfg.res_bits
    )
    return cfg, torch.from_numpy(words)[None], main, res


@pytest.mark.parametrize(
    "shape, tile_codes",
    [
        ((3000, 64, 8, 65536, 0), 4096),  # 16-bit codes: entries with the sign bit set
        ((2000, 36, 8, 65536, 256), 8192),  # a residual codebook narrower than one tile
        ((700, 12, 4, 512, 2), 8),  # 1-bit residual codes, 64 tiles of 8 codes
    ],
)
def test_build_then_decode_gives_the_codes_back(shape, tile_codes):
    cfg, words, main, res = packed_layer(*shape)
    lay = tiled_layout.build(cfg, words, tile_codes)
    codes = tiled_layout.decode(lay, cfg.group_size)
    assert torch.equal(codes[0], main)
    if res is not None:
        assert torch.equal(codes[1], res)
    lists = 2 if res is not None else 1
    tiles = -(-max(cfg.num_centroids, cfg.num_res_centroids) // tile_codes)
    assert lay.entries.shape == (cfg.num_vectors, lists, cfg.group_size)
    assert lay.tile_start.shape == (cfg.num_vectors, lists, tiles + 1)
    assert lay.entries.dtype == lay.tile_start.dtype == torch.int32
    # each list's tiles cover it from the first entry to the last
    assert bool((lay.tile_start[:, :, 0] == 0).all())
    assert bool((lay.tile_start[:, :, -1] == cfg.group_size).all())


def test_tile_starts_count_the_codes_below_each_tile():
    cfg, words, main, _ = packed_layer(3000, 16, 8, 65536, seed=1)
    lay = tiled_layout.build(cfg, words, 4096)
    for t in range(17):
        below = (main < t * 4096).sum(dim=1).to(torch.int32)
        assert torch.equal(lay.tile_start[:, 0, t], below)


def _entries(lay, b=0):
    e = lay.entries[:, b].to(torch.int64) & 0xFFFFFFFF
    return e >> 16, e & 0xFFFF


def test_without_dealing_entries_run_in_column_order_within_each_tile():
    cfg, words, main, _ = packed_layer(3000, 16, 8, 65536, seed=2)
    lay = tiled_layout.build(cfg, words, 4096, deal_by_bank=False)
    code, col = _entries(lay)
    assert torch.equal(torch.gather(main, 1, col), code)
    tile = code // 4096
    assert bool((tile[:, 1:] >= tile[:, :-1]).all())
    same = tile[:, 1:] == tile[:, :-1]
    assert bool((col[:, 1:] > col[:, :-1])[same].all())


def _codebook_wavefronts(lay, vector_len, rows=4):
    """Mean wavefronts of a warp step's codebook loads (32 consecutive entries of a tile's
    run, served ``lanes`` at a time; distinct rows of one bank key cost one each)."""
    code, _ = _entries(lay)
    total = steps = 0
    for r in range(rows):
        ts = lay.tile_start[r, 0].tolist()
        for e0, e1 in itertools.pairwise(ts):
            for w in range(e0, e1, 32):
                step = code[r, w : min(w + 32, e1)]
                keys, lanes = tiled_layout.bank_keys(step, vector_len)  # a key per lane
                for g in range(0, len(step), lanes):
                    rows_of = {}
                    group = zip(
                        step[g : g + lanes].tolist(), keys[g : g + lanes].tolist(), strict=True
                    )
                    for c, k in group:
                        rows_of.setdefault(k, set()).add(c)
                    total += max(len(v) for v in rows_of.values())
                steps += 1
    return total / steps


@pytest.mark.parametrize("v", [8, 4])
def test_dealt_entries_spread_each_step_over_the_banks(v):
    cfg, words, main, _ = packed_layer(4096, 8 * v, v, 65536, seed=4)
    dealt = tiled_layout.build(cfg, words, 4096)
    plain = tiled_layout.build(cfg, words, 4096, deal_by_bank=False)
    assert torch.equal(tiled_layout.decode(dealt, cfg.group_size)[0], main)
    assert torch.equal(dealt.tile_start, plain.tile_start)
    code, _ = _entries(dealt)
    keys, _ = tiled_layout.bank_keys(code, v)
    # each run begins with one entry of every key its tile has, in ascending key order
    for r in range(4):
        e0, e1 = dealt.tile_start[r, 0, :2].tolist()
        present = sorted(set(keys[r, e0:e1].tolist()))
        assert keys[r, e0 : e0 + len(present)].tolist() == present
    # in column order a wavefront's lanes (8 at 16-byte rows, 16 at 8-byte rows) hold random
    # keys; dealt, the steps are conflict-free until the runs of the rarer keys end
    got = (_codebook_wavefronts(dealt, v), _codebook_wavefronts(plain, v))
    ideal = 4 if v == 8 else 2  # 512 or 256 bytes a step
    assert got[0] < 0.6 * got[1], got
    if v == 8:  # 64 entries a key and tile: nearly every step conflict-free
        assert got[0] < 1.35 * ideal, got


def test_bank_keys_follow_the_rows_chunks():
    codes = torch.arange(64)
    k8, n8 = tiled_layout.bank_keys(codes, 8)  # 16-byte rows
    assert n8 == 8 and torch.equal(k8, codes % 8)
    k6, n6 = tiled_layout.bank_keys(codes, 6)  # 12-byte rows, 4-byte chunks
    assert n6 == 32 and torch.equal(k6, codes * 3 % 32)
    k4, n4 = tiled_layout.bank_keys(codes, 4)  # 8-byte rows
    assert n4 == 16 and torch.equal(k4, codes % 16)
    k16, n16 = tiled_layout.bank_keys(codes, 16)  # 32 bytes: two 16-byte chunks
    assert n16 == 8 and torch.equal(k16, codes * 2 % 8)


def test_decode_rejects_a_corrupt_layout():
    cfg, words, _, _ = packed_layer(600, 16, 8, 65536)
    lay = tiled_layout.build(cfg, words, 1024)
    lost = lay.entries.clone()
    # the last entry points at the zero slot: still in order, but its column is missing
    lost[0, 0, -1] = (lost[0, 0, -1] & ~0xFFFF) | cfg.group_size
    with pytest.raises(InvalidValueError, match="exactly once"):
        tiled_layout.decode(lay._replace(entries=lost), cfg.group_size)
    dup = lay.entries.clone()
    dup[0, 0, 1] = dup[0, 0, 0]  # a column twice
    with pytest.raises(InvalidValueError, match="column"):
        tiled_layout.decode(lay._replace(entries=dup), cfg.group_size)
    swapped = lay.entries.clone()
    swapped[0, 0, [0, -1]] = swapped[0, 0, [-1, 0]]  # the first tile's entry after the last's
    with pytest.raises(InvalidValueError, match="grouped by tile"):
        tiled_layout.decode(lay._replace(entries=swapped), cfg.group_size)
    starts = lay.tile_start.clone()
    starts[0, 0, 3] += 1
    with pytest.raises(InvalidValueError, match="tile_start"):
        tiled_layout.decode(lay._replace(tile_start=starts), cfg.group_size)


def test_what_the_layout_covers_and_where_it_pays():
    def cfg(**kw):
        return LayerConfig(
            **{**dict(in_features=5000, out_features=48, vector_len=8, num_centroids=65536), **kw}
        )

    # 28672x8192 at v8/k65536: 29.4M entries, 3.4 per codebook row and SM of 132
    big = dict(in_features=8192, out_features=28672)
    assert tiled_layout.pays(cfg(**big))
    assert tiled_layout.pays(cfg(**big, num_centroids=256, num_res_centroids=65536))
    # 14336x4096: 7.3M entries, too few to stream a 65,536-row codebook through 132 SMs
    assert not tiled_layout.pays(cfg(in_features=4096, out_features=14336))
    # a codebook no wider than a row: the sorted kernel's case
    assert tiled_layout.applies(cfg(num_centroids=4096)) and not tiled_layout.pays(
        cfg(**big, num_centroids=4096)
    )
    assert "group_num" in tiled_layout.problem(cfg(group_num=2))
    assert "input dimension" in tiled_layout.problem(cfg(vector_quant_dim="in"))
    assert "exceeds 65534" in tiled_layout.problem(cfg(in_features=70000))
    with pytest.raises(InvalidValueError, match="power of two"):
        tiled_layout.build(cfg(), torch.zeros(1, 6, 2500, dtype=torch.int32), 96)
    with pytest.raises(InvalidValueError, match=r"int32 \[1, 6, 2500\]"):
        tiled_layout.build(cfg(), torch.zeros(1, 6, 2499, dtype=torch.int32), 1024)


def test_smem_estimate_and_tile_choice():
    c = LayerConfig(in_features=8192, out_features=28672, vector_len=8, num_centroids=65536)
    # 3584 vector rows over 132 SMs: 27 or 28 a block; a row meets at most 32 // 28 + 2 warps
    x_and_zero_slot = 32784  # 8193 floats, rounded up to 16 bytes
    parts = 28 * 3 * 8 * 4
    extra = 32 * 4  # no outlier activations, 32 weight-bias partial sums
    assert tiled_layout.smem_bytes(c, 4096, 132) == (
        x_and_zero_slot + 2 * 4096 * 16 + parts + extra
    )
    # 227 KB: two 64 KB tiles fit beside 32 KB of activations, two 128 KB tiles do not
    assert tiled_layout.tile_codes_for(c, 227 * 1024, 132) == 4096
    wide = LayerConfig(in_features=28672, out_features=8192, vector_len=8, num_centroids=65536)
    assert tiled_layout.tile_codes_for(wide, 227 * 1024, 132) == 2048  # 112 KB of xs
    tall = LayerConfig(in_features=64, out_features=9000, vector_len=1, num_centroids=256)
    assert tiled_layout.tile_codes_for(tall, 227 * 1024, 132) is None  # 69 rows > 64 warps x 2


@pytest.mark.parametrize("warps", [32, 16])
def test_warp_pieces_cover_every_row_once_with_distinct_slots(warps):
    """The kernel's cut of a block's rows over its warps (mirrored by warp_pieces): each row's
    units are taken exactly once, in order, by pieces in distinct slots below slots(); no
    warp holds more than ITEMS_PER_WARP rows, and up to `warps` rows every warp takes the
    same share (nrows units)."""
    for nrows in range(1, tiled_layout.ITEMS_PER_WARP * warps + 1):
        pieces = tiled_layout.warp_pieces(nrows, warps)
        assert all(len(p) <= tiled_layout.ITEMS_PER_WARP for p in pieces)
        per_row: dict[int, list[tuple[int, int, int]]] = {}
        for w in pieces:
            for row, lo, hi, slot in w:
                assert 0 <= lo < hi <= warps
                per_row.setdefault(row, []).append((lo, hi, slot))
        assert sorted(per_row) == list(range(nrows))
        for row, ps in per_row.items():
            assert ps[0][0] == 0 and ps[-1][1] == warps
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ps)), (nrows, row, ps)
            assert [p[2] for p in ps] == list(range(len(ps)))
            assert len(ps) <= tiled_layout.slots(nrows, warps)
        if nrows <= warps:
            shares = [sum(hi - lo for _, lo, hi, _ in w) for w in pieces]
            assert shares == [nrows] * warps


def test_building_in_row_blocks_gives_the_same_layout(monkeypatch):
    cfg, words, _, _ = packed_layer(3000, 60, 6, 8192, kr=16, seed=4)
    whole = tiled_layout.build(cfg, words, 512)
    monkeypatch.setattr(tiled_layout, "BUILD_BLOCK_ENTRIES", 3 * cfg.group_size)
    blocked = tiled_layout.build(cfg, words, 512)
    assert torch.equal(blocked.entries, whole.entries)
    assert torch.equal(blocked.tile_start, whole.tile_start)


def test_use_sorted_gemv_takes_the_tiled_kernel_where_it_pays():
    """A codebook wider than a row turns the switch on only on a layer with entries enough
    (2 per codebook row and SM of 132): 80,000 entries against 256 rows, not 20,000."""

    def layer(out):
        cfg = LayerConfig(in_features=200, out_features=out, vector_len=1, num_centroids=256)
        return VQuantLinear.from_quantized(random_quantized_layer(cfg, seed=0))

    assert tiled_layout.pays(layer(400).config) and layer(400).use_sorted_gemv()
    assert not layer(100).use_sorted_gemv()


# ---- the mma form (gemv_tiled_mma.cuh) -------------------------------------------------------


@pytest.mark.parametrize(
    "shape, tile_codes",
    [
        ((3000, 64, 8, 65536, 0), 4096),
        ((2000, 36, 8, 65536, 256), 8192),  # the residual list lies in one tile
        ((300, 16, 8, 65536, 0), 64),  # 1024 tiles, most runs empty or one entry
    ],
)
def test_mma_form_holds_the_codes_in_runs_of_whole_steps(shape, tile_codes):
    cfg, words, main, res = packed_layer(*shape)
    plain = tiled_layout.build(cfg, words, tile_codes)
    lay = tiled_layout.build(cfg, words, tile_codes, mma=True)
    assert lay.mma and not plain.mma
    codes = tiled_layout.decode(lay, cfg.group_size)
    assert torch.equal(codes[0], main)
    if res is not None:
        assert torch.equal(codes[1], res)
    step = tiled_layout.MMA_STEP
    assert lay.entries.shape[2] % step == 0
    assert bool((lay.tile_start % step == 0).all())
    # each run is the scalar run padded to whole steps, and the longest list sets the length
    runs, padded = plain.tile_start.diff(dim=2), lay.tile_start.diff(dim=2)
    assert torch.equal(padded, (runs + step - 1) // step * step)
    assert lay.entries.shape[2] == max(step, int(lay.tile_start[:, :, -1].max()))


def test_mma_x_entry_gives_each_lane_one_activation_of_the_step():
    take = tiled_layout.MMA_X_ENTRY
    assert sorted(take) == list(range(32))
    # lanes 0-15 feed the first product (entries 0-15), lanes 16-31 the second
    assert all((e >= 16) == (lane >= 16) for lane, e in enumerate(take))


def _emulated_mma_rows(lay, cfg, x, cb):
    """y of every vector row as gemv_tiled_mma.cuh computes it, one lane register at a time
    (PTX's m16n8k16 and ldmatrix .trans fragment layouts), in float64 without the fp16
    rounding of the activations: [R, 8]."""
    e = lay.entries[:, 0].to(torch.int64) & 0xFFFFFFFF
    xs = torch.cat([x, x.new_zeros(1)])  # the zero slot
    lanes = torch.arange(32)
    g, t = lanes >> 2, lanes & 3
    half = g & 1  # which half of the pair a lane's activation keeps
    reg = (g >> 1) & 1  # A register 0 (a0, a1) or 2 (a4, a5)
    prod = g >> 2  # which of the two products
    out = torch.zeros(e.shape[0], 8, dtype=torch.float64)
    for r in range(e.shape[0]):
        for w0 in range(0, int(lay.tile_start[r, 0, -1]), 32):
            w = e[r, w0 : w0 + 32]
            code, xcol = w >> 16, w & 0xFFFF
            xv = xs[xcol]
            d = torch.zeros(16, 8, dtype=torch.float64)
            for j in range(2):
                a = torch.zeros(16, 16, dtype=torch.float64)
                for lane in range(32):
                    if prod[lane] != j:
                        continue  # the masks zero this lane's registers for product j
                    # register 0 holds A[g][2t + half], register 2 A[g][2t + 8 + half]
                    k = 2 * int(t[lane]) + 8 * int(reg[lane]) + int(half[lane])
                    a[int(g[lane]), k] = xv[lane]
                # ldmatrix.x4.trans: matrix i's row q is the row at lane 8i + q's address;
                # product j's B[k][n] is matrix 2j + k // 8's row k % 8, element n
                b = cb[code[16 * j : 16 * j + 16]]
                d += a @ b
            out[r] += d.sum(0)  # the flush adds the slots (lanes 4g + t over g)
    return out


def test_mma_form_emulated_lane_by_lane_gives_each_rows_sum():
    cfg, words, main, _ = packed_layer(1000, 40, 8, 65536, seed=3)
    lay = tiled_layout.build(cfg, words, 4096, mma=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.group_size, generator=g, dtype=torch.float64)
    cb = torch.randn(65536, 8, generator=g, dtype=torch.float64)
    want = torch.einsum("j,rjn->rn", x, cb[main])
    assert torch.allclose(_emulated_mma_rows(lay, cfg, x, cb), want, atol=1e-9)


def test_mma_form_refuses_other_vector_lengths_and_reports_corruption():
    cfg4, words4, _, _ = packed_layer(600, 16, 4, 4096)
    with pytest.raises(InvalidValueError, match="vector_len 8"):
        tiled_layout.build(cfg4, words4, 1024, mma=True)
    cfg, words, _, _ = packed_layer(600, 16, 8, 65536)
    lay = tiled_layout.build(cfg, words, 1024, mma=True)
    starts = lay.tile_start.clone()
    starts[0, 0, 3] += 1
    with pytest.raises(InvalidValueError, match="steps of 32"):
        tiled_layout.decode(lay._replace(tile_start=starts), cfg.group_size)
    moved = lay.entries.clone()
    moved[0, 0, 0] = (moved[0, 0, 0] & 0xFFFF) | (60000 << 16) - (1 << 32)  # a code of tile 58
    with pytest.raises(InvalidValueError, match="outside its tile"):
        tiled_layout.decode(lay._replace(entries=moved), cfg.group_size)
    lost = lay.entries.clone()
    lost[0, 0, 0] = (lost[0, 0, 0] & ~0xFFFF) | cfg.group_size  # a column turned padding
    with pytest.raises(InvalidValueError, match="besides padding"):
        tiled_layout.decode(lay._replace(entries=lost), cfg.group_size)


def test_mma_kernel_choice_and_shared_memory(monkeypatch):
    c = LayerConfig(in_features=8192, out_features=28672, vector_len=8, num_centroids=65536)
    base = tiled_layout.smem_bytes(c, 4096, 132)
    assert tiled_layout.smem_bytes(c, 4096, 132, mma=True) == base + 128
    assert tiled_layout.tile_codes_for(c, 227 * 1024, 132, mma=True) == 4096
    gpu = torch.device("cuda", 0)
    assert not tiled_layout.mma_supported(c, torch.device("cpu"))
    v4 = LayerConfig(in_features=8192, out_features=28672, vector_len=4, num_centroids=65536)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert tiled_layout.mma_supported(c, gpu) and not tiled_layout.mma_supported(v4, gpu)
    # the scalar form stays the default; VPTQ_RS_TILED_MMA=1 opts in where it is supported
    monkeypatch.delenv("VPTQ_RS_TILED_MMA", raising=False)
    assert not tiled_layout.uses_mma(c, gpu)
    monkeypatch.setenv("VPTQ_RS_TILED_MMA", "1")
    assert tiled_layout.uses_mma(c, gpu) and not tiled_layout.uses_mma(v4, gpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    assert not tiled_layout.uses_mma(c, gpu)


# ---- the cluster form (gemv_tiled_cluster.cuh) ----------------------------------------------


def test_cluster_form_tile_choice_shared_memory_and_default(monkeypatch):
    """The cluster kernel's block holds xs, one tile and twice the rows of the busiest of
    132 // 16 clusters: 8192 columns take 8192-row tiles (8 blocks a cluster), 28672 columns
    4096 (xs alone is 112 KB). It is the default on sm_90+ only (VPTQ_RS_TILED_CLUSTER=0
    turns it off), and its entries are the scalar form's."""
    wide = LayerConfig(in_features=28672, out_features=8192, vector_len=8, num_centroids=65536)
    tall = LayerConfig(in_features=8192, out_features=28672, vector_len=8, num_centroids=65536)
    assert tiled_layout.cluster_rows_cap(tall, 132) == 448  # 3584 rows over 8 clusters
    # 8196 + 8192 x 16 + 32 x 4 + 2 x 448 x 32 bytes (rounded to 16)
    assert tiled_layout.cluster_smem_bytes(tall, 8192, 132) == 32784 + 131072 + 128 + 28672
    assert tiled_layout.tile_codes_for(tall, 227 * 1024, 132, cluster=True) == 8192
    assert tiled_layout.tile_codes_for(wide, 227 * 1024, 132, cluster=True) == 4096
    # the tiled kernel's limit of two rows a warp does not apply: one GPU of 16 SMs
    assert tiled_layout.tile_codes_for(tall, 227 * 1024, 16) is None
    assert tiled_layout.tile_codes_for(tall, 227 * 1024, 16, cluster=True) is None  # 3584 rows
    small = LayerConfig(in_features=4096, out_features=4096, vector_len=8, num_centroids=65536)
    assert tiled_layout.tile_codes_for(small, 227 * 1024, 16, cluster=True) == 8192
    gpu = torch.device("cuda", 0)
    assert not tiled_layout.cluster_supported(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.delenv("VPTQ_RS_TILED_CLUSTER", raising=False)
    assert tiled_layout.cluster_supported(gpu) and tiled_layout.uses_cluster(tall, gpu)
    monkeypatch.setenv("VPTQ_RS_TILED_CLUSTER", "0")
    assert not tiled_layout.uses_cluster(tall, gpu)
    monkeypatch.setenv("VPTQ_RS_TILED_MMA", "1")
    assert tiled_layout.load_form(tall, gpu) == (True, False)
    monkeypatch.delenv("VPTQ_RS_TILED_CLUSTER")  # the cluster kernel over mma entries
    assert tiled_layout.load_form(tall, gpu) == (True, True)
    # its block needs the max |xs| reduction's 128 bytes more
    assert (
        tiled_layout.cluster_smem_bytes(tall, 8192, 132, mma=True)
        == tiled_layout.cluster_smem_bytes(tall, 8192, 132) + 128
    )
    # the cluster form pays from 32 entries a codebook row (4096x4096 at v8/k65536) where
    # the tiled kernel needs 2 a row and SM
    square = LayerConfig(in_features=4096, out_features=4096, vector_len=8, num_centroids=65536)
    narrow = LayerConfig(in_features=2048, out_features=4096, vector_len=8, num_centroids=65536)
    assert tiled_layout.pays(square, gpu) and not tiled_layout.pays(narrow, gpu)
    assert not tiled_layout.pays(square) and not tiled_layout.pays(square, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    assert not tiled_layout.uses_cluster(tall, gpu) and not tiled_layout.pays(square, gpu)
    cfg, words, _, _ = packed_layer(600, 64, 8, 4096)
    plain = tiled_layout.build(cfg, words, 512)
    lay = tiled_layout.build(cfg, words, 512, cluster=True)
    assert lay.cluster and lay.form == 2 and plain.form == 0
    assert torch.equal(lay.entries, plain.entries) and torch.equal(lay.tile_start, plain.tile_start)
    both = tiled_layout.build(cfg, words, 512, mma=True, cluster=True)
    mma = tiled_layout.build(cfg, words, 512, mma=True)
    assert both.form == 3 and mma.form == 1 and torch.equal(both.entries, mma.entries)
