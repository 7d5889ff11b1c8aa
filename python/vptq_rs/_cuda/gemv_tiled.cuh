// Tiled GEMV: one token, codebooks too large for shared memory (v8/k65536: 1 MB), over the
// 32-bit entries of python/vptq_rs/tiled_layout.py (code << 16 | column, grouped by tile).
//
// The gather kernel reads such a codebook through L2, one 16-byte row a weight vector from
// a random 32-byte sector: about 0.7x cuBLAS fp16 on an H100 (README, GEMV tables). Here a
// block streams the codebook through shared memory once, `tile_codes` rows at a time in two
// buffers (the next tile's cp.async copy overlaps this tile's sums), and its warps take, in
// every row, the run of entries whose codes the staged tile holds; y_r = sum over entries of
// xs[col] C[code].
// - L2 traffic for the codebook: one copy a block (132 MB on 132 SMs at 1 MB) in place of a
//   sector a weight vector;
// - a warp step reads 32 consecutive entries (coalesced) and gathers 32 activations and 32
//   codebook rows, both from shared memory; within a tile the builder deals the entries
//   out by bank key, so a wavefront's lanes read rows in distinct banks (tiled_layout's
//   docstring says how);
// - each warp owns the same fraction of the block's rows in every phase: warp w takes units
//   [n w, n (w + 1)) of the n rows cut into kWarps units each, so every warp sums about
//   1/kWarps of the block's entries in each phase (whole half-row items left a quarter of
//   the warps idle for half of every phase on 28672x8192: 56 items over 32 warps); past
//   kWarps rows a warp takes two whole rows. Its sums stay in registers across tiles, each
//   (row, warp) piece lands in a slot of its own and a row's slots are added in a fixed
//   order: the result is bitwise repeatable;
// - a warp loads its pieces' runs and first batches a phase ahead (they travel during the
//   barriers), walks a run two batches a turn, and skips the empty half of a last batch.
// Each block pays for the whole codebook, so the kernel only pays on large layers
// (tiled_layout.pays).
#pragma once

#include "gemv_sorted.cuh"

namespace vptq {
namespace gemv {

constexpr int kTiledMaxGroupSize = 0xfffe;  // 16-bit columns; group_size is the zero slot
constexpr int kTiledItemsPerWarp = 2;       // accumulator sets (rows) a thread keeps

// 1024 threads up to v = 8; past it two accumulator sets need more than the 64 registers a
// 1024-thread block leaves a thread
template <int V>
__host__ __device__ constexpr int tiled_threads() {
  return V <= 8 ? 1024 : 512;
}
__host__ __device__ inline int tiled_warps(int v) { return (v <= 8 ? 1024 : 512) / 32; }

// Partial-sum slots per row of a block of n rows: with n <= warps a warp's range (n/warps of a
// row) meets at most 2 rows and a row meets at most warps/n + 2 warps; past that each warp
// takes whole rows (at most kTiledItemsPerWarp), one slot each.
__host__ __device__ inline int tiled_slots(int n, int warps) {
  if (n > warps) return 1;
  const int s = warps / (n > 0 ? n : 1) + 2;
  return s < warps ? s : warps;
}

// Partial sums of the larger of a layer's two block sizes (min_rows and min_rows + 1 rows).
__host__ __device__ inline int64_t tiled_part_floats(int max_rows, int min_rows, int v) {
  const int w = tiled_warps(v);
  const int64_t a = int64_t{max_rows} * tiled_slots(max_rows, w);
  const int64_t b = int64_t{min_rows} * tiled_slots(min_rows, w);
  return (a > b ? a : b) * v;
}

struct TiledParams {
  Params p;
  TiledLayout t;
};

// Shared memory: [xs of the group + the zero slot, fp32] [two codebook tiles, 16-bit]
// [extra_x_bytes] [one partial sum per (row, slot, element)].
__host__ __device__ inline int64_t tiled_smem_bytes(const LayerArgs& a, int tile_codes,
                                                   int max_rows, int min_rows) {
  return sorted_round16(int64_t{a.group_size + 1} * 4) +
         2 * sorted_round16(int64_t{tile_codes} * a.v * 2) +
         extra_x_bytes(a) + sorted_round16(tiled_part_floats(max_rows, min_rows, a.v) * 4);
}

// 4 bytes that are read once (see load_stream).
__device__ __forceinline__ uint32_t load_stream32(const uint32_t* ptr) {
  uint32_t r;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(ptr));
  return r;
}

// A warp's items: up to two (row, unit range) pieces of its block's nrows rows. With nrows <=
// kWarps, the rows are cut into kWarps units each and the warp takes units [nrows * warp,
// nrows * (warp + 1)), which meet at most two rows; in every phase a piece takes the same
// fraction of its row's run (units lo..hi of kWarps). Past kWarps rows a warp takes whole
// rows warp and warp + kWarps. A piece's slot is its warp's place among the warps that meet
// its row. Shared by the tiled kernels (this one and gemv_tiled_mma.cuh).
struct TiledPieces {
  int row[kTiledItemsPerWarp], lo[kTiledItemsPerWarp], hi[kTiledItemsPerWarp];
  int slot[kTiledItemsPerWarp];
  bool live[kTiledItemsPerWarp];
  template <int kWarps>
  __host__ __device__ static constexpr int unit_shift() {
    static_assert(kWarps == 32 || kWarps == 16, "a row is cut into kWarps units");
    return kWarps == 32 ? 5 : 4;
  }
};

// Codebook rows of phase (b, ft) (tc rows a tile). K <= 65536, so 32-bit (64-bit
// arithmetic took about 20 instructions a phase).
__device__ __forceinline__ int tiled_codes_of(const LayerArgs& a, int tc, int b, int ft) {
  const int left = (1 << (b == 0 ? a.index_bits : a.res_bits)) - ft * tc;
  return left < 0 ? 0 : min(left, tc);
}

// Starts the cp.async copy of phase (b, ft)'s codebook tile (list b: main, then residual;
// tc rows a tile) into dst, by the whole block (not committed). Shared by the tiled kernels.
template <typename T, int V>
__device__ __forceinline__ void stage_codebook_tile(T* dst, const LayerArgs& a, int tc, int b,
                                                    int ft) {
  const int n = tiled_codes_of(a, tc, b, ft);
  if (n == 0) return;
  const T* cb = static_cast<const T*>(b == 0 ? a.centroids : a.res_centroids);
  // tile starts are multiples of tc * V * 2 >= 16 bytes: 16-byte aligned (ops.cpp aligns
  // the codebooks)
  const int bytes = n * V * static_cast<int>(sizeof(T));
  const T* src = cb + int64_t{ft} * tc * V;
  if (bytes % 16 == 0) {  // all but codebooks of under 8 rows
    stage_copy16(dst, src, bytes);
  } else {
    stage_copy(reinterpret_cast<uint32_t*>(dst), reinterpret_cast<const uint32_t*>(src),
               bytes / 4, (bytes / 4 + 3) / 4 * 4, true);
  }
}

// A tiled kernel's block: its vector rows [r0, r0 + nrows) and its shared memory (see
// tiled_smem_bytes): xs, two codebook tiles (buffer i a computed address: an indexed pointer
// pair would live in local memory), extra_x_bytes, the partial sums. Shared by the tiled
// kernels.
template <typename T, int V>
struct TiledBlock {
  int r0, nrows;
  float* s_x;
  unsigned char* tiles;
  int64_t tile_bytes;
  float* s_xo;
  float* s_part;
  __device__ __forceinline__ TiledBlock(unsigned char* smem, const LayerArgs& a, int tc) {
    const int R = a.num_vectors;
    r0 = static_cast<int>(int64_t{R} * blockIdx.x / gridDim.x);
    nrows = static_cast<int>(int64_t{R} * (blockIdx.x + 1) / gridDim.x) - r0;
    s_x = reinterpret_cast<float*>(smem);
    const int64_t x_bytes = sorted_round16(int64_t{a.group_size + 1} * 4);
    tiles = smem + x_bytes;
    tile_bytes = sorted_round16(int64_t{tc} * V * int64_t{sizeof(T)});
    s_xo = reinterpret_cast<float*>(tiles + 2 * tile_bytes);
    s_part = s_xo + extra_x_bytes(a) / 4;
  }
  __device__ __forceinline__ T* tile(int i) const {
    return reinterpret_cast<T*>(tiles + i * tile_bytes);
  }
  // Codebook rows of phase (b, ft) (tc rows a tile).
  __device__ __forceinline__ static int codes_of(const LayerArgs& a, int tc, int b, int ft) {
    return tiled_codes_of(a, tc, b, ft);
  }
  // Starts the cp.async copy of phase (b, ft)'s tile into buffer buf (not committed).
  __device__ __forceinline__ void stage_tile(const LayerArgs& a, int tc, int b, int ft,
                                             int buf) const {
    stage_codebook_tile<T, V>(tile(buf), a, tc, b, ft);
  }
  // Zeroes the partial sums and returns the slots a row has (tiled_slots): a row may meet
  // fewer warps than it has slots, and the rest must add nothing.
  __device__ __forceinline__ int clear_parts(int warps) const {
    const int per_row = tiled_slots(nrows, warps);
    for (int i = threadIdx.x; i < nrows * per_row * V; i += blockDim.x) s_part[i] = 0.f;
    return per_row;
  }
};

template <int kWarps>
__device__ __forceinline__ TiledPieces tiled_pieces(int nrows, int warp) {
  constexpr int kUnitShift = TiledPieces::unit_shift<kWarps>();
  TiledPieces pc;
  if (nrows <= kWarps) {
    static_assert(kTiledItemsPerWarp == 2, "a range of at most one row meets two rows");
    const int u0 = nrows * warp;
    const int u1 = u0 + nrows;
    const int ra = u0 >> kUnitShift;
    const int rb = (u1 - 1) >> kUnitShift;
    pc.row[0] = ra;
    pc.lo[0] = u0 - (ra << kUnitShift);
    pc.hi[0] = ra == rb ? u1 - (ra << kUnitShift) : kWarps;
    pc.slot[0] = warp - (ra << kUnitShift) / nrows;  // the first warp of row ra holds its unit 0
    pc.live[0] = true;
    pc.row[1] = rb;
    pc.lo[1] = 0;
    pc.hi[1] = u1 - (rb << kUnitShift);
    pc.slot[1] = 0;  // starts row rb
    pc.live[1] = rb != ra;
  } else {
#pragma unroll
    for (int m = 0; m < kTiledItemsPerWarp; ++m) {
      pc.row[m] = warp + m * kWarps;
      pc.lo[m] = 0;
      pc.hi[m] = kWarps;
      pc.slot[m] = 0;
      pc.live[m] = pc.row[m] < nrows;
    }
  }
  return pc;
}

template <typename T, int V>
__global__ void __launch_bounds__(tiled_threads<V>(), 1) tiled_kernel(TiledParams tp) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kWarps = tiled_threads<V>() / 32;
  // entry loads a lane issues at once (and as many ahead): with 2 the kernel waited on them
  // (about 8 KB in flight an SM where the H100 needs about 16 KB); 4 took 118 against 129 us
  // on 28672x8192 (run 20a)
  constexpr int kUnroll = 4;
  const Params& p = tp.p;
  const LayerArgs& a = p.a;
  const TiledLayout& t = tp.t;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int gs = a.group_size;
  const int tc = t.tile_codes;
  const TiledBlock<T, V> blk(smem, a, tc);
  const int per_row = blk.clear_parts(kWarps);

  // A phase is tile ft of list b (main codebook, then residual), advanced by counting: the
  // divisions that would split a phase number cost more than a tile's setup otherwise does.
  blk.stage_tile(a, tc, 0, 0, 0);
  cp_commit();  // the activations follow (below) in a group of their own

  const TiledPieces pc = tiled_pieces<kWarps>(blk.nrows, warp);
  constexpr int kUnitShift = TiledPieces::unit_shift<kWarps>();
  const int(&row)[kTiledItemsPerWarp] = pc.row;
  const int(&lo)[kTiledItemsPerWarp] = pc.lo;
  const int(&hi)[kTiledItemsPerWarp] = pc.hi;
  const int(&slot)[kTiledItemsPerWarp] = pc.slot;
  const bool(&live)[kTiledItemsPerWarp] = pc.live;
  int first_list[kTiledItemsPerWarp];
#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) first_list[m] = (blk.r0 + row[m]) * t.lists;
  // The piece of item m in phase (b, ft): entries [e0, e1) of its list, the run clamped to
  // the row so that a malformed layout cannot leave it, then cut to the item's units.
  auto run_of = [&](int m, int b, int ft, int& e0, int& e1) {
    const int32_t* ts = t.tile_start + int64_t{first_list[m] + b} * (t.tiles + 1) + ft;
    const int s0 = min(max(ts[0], 0), gs);
    const int n = min(max(ts[1], s0), gs) - s0;
    e0 = s0 + ((n * lo[m]) >> kUnitShift);
    e1 = s0 + ((n * hi[m]) >> kUnitShift);
  };
  auto entries_of = [&](int m, int b) {
    return reinterpret_cast<const uint32_t*>(t.entries) + int64_t{first_list[m] + b} * gs;
  };
  // A batch (kUnroll entries a lane, 32 apart) from entry e (the lane's own) on, at ptr; the
  // lanes past e1 read the zero activation with the tile's first code.
  constexpr int kBatch = 32 * kUnroll;
  auto fetch = [&](const uint32_t* ptr, int e, int e1, uint32_t pad, uint32_t(&ev)[kUnroll]) {
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) ev[k] = e + 32 * k < e1 ? load_stream32(ptr + 32 * k) : pad;
  };
  auto pad_of = [&](int ft) {
    return (static_cast<uint32_t>(ft * tc) << 16) | static_cast<uint32_t>(gs);
  };

  // Each item's run and first batch are loaded a phase ahead: they travel while the warps
  // sum the current phase and wait at its barriers (loaded at the phase's start, a run and
  // its batch would cost two memory round trips a phase with every warp idle).
  int run0[kTiledItemsPerWarp], run1[kTiledItemsPerWarp];
  uint32_t first[kTiledItemsPerWarp][kUnroll];
#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) {
    if (!live[m]) continue;
    run_of(m, 0, 0, run0[m], run1[m]);
    const int e = run0[m] + lane;
    fetch(entries_of(m, 0) + e, e, run1[m], pad_of(0), first[m]);
  }

  // behind the first tile's copies and batches, which it overlaps; waited for with the first
  // tile (the group before the next tile's)
  stage_xs<T>(p, blk.s_x, blk.s_xo);
  cp_commit();

  float acc[kTiledItemsPerWarp][V];
#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) {
#pragma unroll
    for (int l = 0; l < V; ++l) acc[m][l] = 0.f;
  }

  int b = 0, ft = 0;  // this phase
  for (int f = 0; f < t.lists * t.tiles; ++f) {
    const bool last_tile = ft + 1 == t.tiles;
    const int nb = last_tile ? b + 1 : b;  // the next phase (nb == lists: none)
    const int nft = last_tile ? 0 : ft + 1;
    const bool more = nb < t.lists;
    // One barrier a phase: it publishes this phase's tile (staged during the previous phase)
    // and, since every warp is past the previous phase, frees the buffer that phase read for
    // the next tile. (Staging before the barrier needed a second one at each phase's end.)
    cp_wait<0>();
    __syncthreads();
    if (more) {
      blk.stage_tile(a, tc, nb, nft, (f + 1) & 1);
      cp_commit();
    }
    const uint32_t code0 = static_cast<uint32_t>(ft * tc);
    const int ncodes = blk.codes_of(a, tc, b, ft);
    const T* tile = blk.tile(f & 1);
    // both indices are clamped: the column to the zero slot, the code to the tile (a
    // phase without codes has no entries in a valid layout)
    const uint32_t cmax = ncodes > 0 ? static_cast<uint32_t>(ncodes - 1) : 0u;
#pragma unroll
    for (int m = 0; m < kTiledItemsPerWarp; ++m) {
      if (!live[m]) continue;
      const int e1 = run1[m];
      int eb = run0[m];  // the batch's first entry (warp-uniform)
      const uint32_t* ptr = entries_of(m, b) + eb + lane;
      if (more) run_of(m, nb, nft, run0[m], run1[m]);  // used after the loop
      const uint32_t pad = pad_of(ft);
      // a batch's first `part` loads of each lane (warp-uniform): a piece's last batch skips
      // the loads that hold no entry
      auto sum = [&](const uint32_t(&ev)[kUnroll], int part) {
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) {
          if (k > 0 && k >= part) break;
          const float xv = blk.s_x[min(ev[k] & 0xffffu, static_cast<uint32_t>(gs))];
          const uint32_t c = min((ev[k] >> 16) - code0, cmax);
          Entry<T, V> ent;
          ent.load(tile + c * V);
          float cv[V];
          ent.get(cv);
#pragma unroll
          for (int l = 0; l < V; ++l) acc[m][l] = fmaf(xv, cv[l], acc[m][l]);
        }
      };
      // the batch from eb: a full one without a check per load (two instructions of about
      // 26 an entry), a piece's last one with them (warp-uniform either way)
      auto sum_batch = [&](const uint32_t(&ev)[kUnroll], int eb) {
        if (e1 - eb >= kBatch) {
          sum(ev, kUnroll);
        } else {
          sum(ev, (e1 - eb + 31) >> 5);
        }
      };
      // two batches a turn, each loading the other's successor while it is summed: the
      // buffers trade roles without register copies
      uint32_t other[kUnroll];
      while (eb < e1) {
        fetch(ptr + kBatch, eb + kBatch + lane, e1, pad, other);
        sum_batch(first[m], eb);
        eb += kBatch;
        ptr += kBatch;
        if (eb >= e1) break;
        fetch(ptr + kBatch, eb + kBatch + lane, e1, pad, first[m]);
        sum_batch(other, eb);
        eb += kBatch;
        ptr += kBatch;
      }
      if (more) {
        const int en = run0[m] + lane;
        fetch(entries_of(m, nb) + en, en, run1[m], pad_of(nft), first[m]);
      }
    }
    b = nb;
    ft = nft;
  }

#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) {
    if (!live[m]) continue;
#pragma unroll
    for (int l = 0; l < V; ++l) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[m][l] += __shfl_xor_sync(0xffffffffu, acc[m][l], o);
    }
    if (lane == 0) {
      float* dst = blk.s_part + (row[m] * per_row + slot[m]) * V;
#pragma unroll
      for (int l = 0; l < V; ++l) dst[l] = acc[m][l];
    }
  }
  __syncthreads();
  sorted_epilogue<T, V>(p, blk.s_part, blk.r0, blk.nrows, per_row,
                        blk.s_part - extra_x_bytes(a) / 4);
}

}  // namespace gemv
}  // namespace vptq
