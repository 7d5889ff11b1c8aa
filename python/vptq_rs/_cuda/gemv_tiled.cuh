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
//   codebook rows, both from shared memory; within a tile the entries keep column order,
//   which spreads the rows over the banks (tiled_layout's docstring says why);
// - an item (row, split) belongs to one warp for the whole kernel, its sums stay in
//   registers across tiles, and a row's splits are added in a fixed order: the result is
//   bitwise repeatable.
// Each block pays for the whole codebook, so the kernel only pays on large layers
// (tiled_layout.pays).
#pragma once

#include "gemv_sorted.cuh"

namespace vptq {
namespace gemv {

constexpr int kTiledMaxGroupSize = 0xfffe;  // 16-bit columns; group_size is the zero slot
constexpr int kTiledItemsPerWarp = 2;       // accumulator sets a thread keeps

// 1024 threads up to v = 8; past it two accumulator sets need more than the 64 registers a
// 1024-thread block leaves a thread
template <int V>
__host__ __device__ constexpr int tiled_threads() {
  return V <= 8 ? 1024 : 512;
}
__host__ __device__ inline int tiled_warps(int v) { return (v <= 8 ? 1024 : 512) / 32; }

// Splits of each row: as many as keep every warp busy with at most kTiledItemsPerWarp items.
__host__ __device__ inline int tiled_splits(int rows_per_block, int v) {
  const int s = kTiledItemsPerWarp * tiled_warps(v) / (rows_per_block > 0 ? rows_per_block : 1);
  return s > 0 ? s : 1;
}

struct TiledParams {
  Params p;
  TiledLayout t;
  int splits;
};

// Shared memory: [xs of the group + the zero slot, fp32] [two codebook tiles, 16-bit]
// [one partial sum per (row, split, element)].
__host__ __device__ inline int64_t tiled_smem_bytes(const LayerArgs& a, int tile_codes,
                                                   int rows_per_block) {
  return sorted_round16(int64_t{a.group_size + 1} * 4) +
         2 * sorted_round16(int64_t{tile_codes} * a.v * 2) +
         int64_t{rows_per_block} * tiled_splits(rows_per_block, a.v) * a.v * 4;
}

// 4 bytes that are read once (see load_stream).
__device__ __forceinline__ uint32_t load_stream32(const uint32_t* ptr) {
  uint32_t r;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(ptr));
  return r;
}

template <typename T, int V>
__global__ void __launch_bounds__(tiled_threads<V>(), 1) tiled_kernel(TiledParams tp) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kWarps = tiled_threads<V>() / 32;
  constexpr int kUnroll = 2;  // entry loads a lane issues at once (and as many ahead)
  const Params& p = tp.p;
  const LayerArgs& a = p.a;
  const TiledLayout& t = tp.t;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int gs = a.group_size;
  const int R = a.num_vectors;
  const int r0 = static_cast<int>(int64_t{R} * blockIdx.x / gridDim.x);
  const int r1 = static_cast<int>(int64_t{R} * (blockIdx.x + 1) / gridDim.x);
  const int nrows = r1 - r0;
  const int S = tp.splits;
  const int items = nrows * S;
  const int tc = t.tile_codes;

  float* s_x = reinterpret_cast<float*>(smem);
  const int64_t x_bytes = sorted_round16(int64_t{gs + 1} * 4);
  const int64_t tile_bytes = sorted_round16(int64_t{tc} * V * int64_t{sizeof(T)});
  // buffer i of the two (a computed address: an indexed pointer pair would live in local memory)
  auto s_tile = [&](int i) { return reinterpret_cast<T*>(smem + x_bytes + i * tile_bytes); };
  float* s_part = reinterpret_cast<float*>(smem + x_bytes + 2 * tile_bytes);

  stage_xs(p, s_x);  // committed with the first tile

  // phase f: tile f % tiles of list f / tiles (main codebook, then residual)
  const int phases = t.lists * t.tiles;
  auto codes_of = [&](int f) -> int64_t {
    const int64_t K = int64_t{1} << (f / t.tiles == 0 ? a.index_bits : a.res_bits);
    const int64_t left = K - int64_t{f % t.tiles} * tc;
    return left < 0 ? 0 : (left < tc ? left : tc);
  };
  auto stage_tile = [&](int f) {
    const int64_t n = codes_of(f);
    if (n == 0) return;
    const T* cb = static_cast<const T*>(f / t.tiles == 0 ? a.centroids : a.res_centroids);
    // tile starts are multiples of tc * V * 2 >= 16 bytes: 16-byte aligned (ops.cpp aligns
    // the codebooks)
    const int words = static_cast<int>(n * V * int64_t{sizeof(T)} / 4);
    stage_copy(reinterpret_cast<uint32_t*>(s_tile(f & 1)),
               reinterpret_cast<const uint32_t*>(cb + int64_t{f % t.tiles} * tc * V), words,
               (words + 3) / 4 * 4, true);
  };
  stage_tile(0);
  cp_commit();

  float acc[kTiledItemsPerWarp][V];
#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) {
#pragma unroll
    for (int l = 0; l < V; ++l) acc[m][l] = 0.f;
  }

  for (int f = 0; f < phases; ++f) {
    if (f + 1 < phases) {
      stage_tile(f + 1);  // into the buffer the previous phase read (freed by its barrier)
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const int b = f / t.tiles;
    const uint32_t code0 = static_cast<uint32_t>(f % t.tiles) * tc;
    const int64_t ncodes = codes_of(f);
    const T* tile = s_tile(f & 1);
    if (ncodes > 0) {
      const uint32_t cmax = static_cast<uint32_t>(ncodes - 1);
      // the masked lanes of a step read the zero activation
      const uint32_t pad = (code0 << 16) | static_cast<uint32_t>(gs);
#pragma unroll
      for (int m = 0; m < kTiledItemsPerWarp; ++m) {
        const int item = warp + m * kWarps;
        if (item >= items) continue;
        const int rl = item / S;
        const int sp = item - rl * S;
        const int64_t list = int64_t{r0 + rl} * t.lists + b;
        const int32_t* ts = t.tile_start + list * (t.tiles + 1) + f % t.tiles;
        // a malformed layout cannot leave the row: the run is clamped to it
        const int e0 = min(max(ts[0], 0), gs);
        const int e1 = min(max(ts[1], e0), gs);
        // the split takes every S-th batch of the run (one short batch a run at most)
        constexpr int kBatch = 32 * kUnroll;
        const int stride = S * kBatch;
        const uint32_t* ent = reinterpret_cast<const uint32_t*>(t.entries) + list * gs;
        auto fetch = [&](int e, uint32_t(&ev)[kUnroll]) {
#pragma unroll
          for (int k = 0; k < kUnroll; ++k) {
            ev[k] = e + 32 * k < e1 ? load_stream32(ent + e + 32 * k) : pad;
          }
        };
        // the next batch is loaded while this one is summed
        uint32_t next[kUnroll];
        fetch(e0 + sp * kBatch + lane, next);
        for (int e = e0 + sp * kBatch + lane; e - lane < e1; e += stride) {
          uint32_t ev[kUnroll];
#pragma unroll
          for (int k = 0; k < kUnroll; ++k) ev[k] = next[k];
          fetch(e + stride, next);
#pragma unroll
          for (int k = 0; k < kUnroll; ++k) {
            // both indices are clamped: the column to the zero slot, the code to the tile
            const float xv = s_x[min(ev[k] & 0xffffu, static_cast<uint32_t>(gs))];
            const uint32_t c = min((ev[k] >> 16) - code0, cmax);
            Entry<T, V> row;
            row.load(tile + c * V);
            float cv[V];
            row.get(cv);
#pragma unroll
            for (int l = 0; l < V; ++l) acc[m][l] = fmaf(xv, cv[l], acc[m][l]);
          }
        }
      }
    }
    __syncthreads();  // this buffer is restaged in the next phase but one
  }

#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) {
    const int item = warp + m * kWarps;
    if (item >= items) continue;
#pragma unroll
    for (int l = 0; l < V; ++l) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[m][l] += __shfl_xor_sync(0xffffffffu, acc[m][l], o);
    }
    if (lane == 0) {
#pragma unroll
      for (int l = 0; l < V; ++l) s_part[int64_t{item} * V + l] = acc[m][l];
    }
  }
  __syncthreads();
  sorted_epilogue<T, V>(p, s_part, r0, nrows, S);
}

}  // namespace gemv
}  // namespace vptq
