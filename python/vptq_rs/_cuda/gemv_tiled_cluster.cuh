// Cluster-tiled GEMV (sm_90 thread-block clusters): one token, codebooks too large for shared
// memory (v8/k65536: 1 MB), over the scalar entries of python/vptq_rs/tiled_layout.py.
//
// The tiled kernel (gemv_tiled.cuh) has every block stream the whole codebook through its
// shared memory, 16 phases of 64 KB for v8/k65536, and under ncu (run 25d) the per-phase
// work (a barrier, a tile copy, the next runs' loads) held it near 110 us on 28672x8192. Here
// the C blocks of a cluster (C <= 16) split the codebook instead of each reading all of it:
// - block q of a cluster holds tile q only (and q + C, ... when a layer has more tiles than
//   the cluster has blocks) and sums, in each of the cluster's rows, the run of entries
//   whose codes that tile holds. Codebook reads from L2: 1/C of the codebook a block, once
//   (17 MB on 132 SMs at C = 8, where the tiled kernel reads 132 MB);
// - with as many blocks as tiles there is one barrier, after the tile and xs are staged;
//   then each warp walks its rows' runs back to back (rows warp, warp + W, ...), loading
//   the next row's first batch while it sums the current row. The entry stream is the
//   tiled kernel's (4 loads a lane ahead, two batches a turn, entries dealt by bank key);
// - a warp keeps one row's sums in registers and adds them to the row's partial sum in its
//   block's shared memory (one writer a row: the same warp in every phase);
// - after a cluster barrier, block q adds rows [n q / C, n (q + 1) / C) of the cluster's n
//   rows over the cluster's blocks through distributed shared memory, block 0's partial sum
//   first, so the result is bitwise repeatable, and writes y (sorted_epilogue).
// Each block stages all of xs, so the block's shared memory is xs + one tile + the partial
// sums; tiled_layout.device_tile_codes(..., cluster=True) picks the largest tile that fits.
// Over the mma form's entries (kMma, v = 8) a step's 32 entries are two m16n8k16 products,
// as in gemv_tiled_mma.cuh; it was slower than the scalar step (run 28b: 75.6 against 71.8
// us on 28672x8192), so it is opt-in (VPTQ_RS_TILED_MMA=1).
// Run 28b (H100, v8/k65536): 71.8 us on 28672x8192 against 111.6 for the tiled kernel and
// 175.7 for cuBLAS fp16; 79.7 against 106.9 and 176.8 on 8192x28672 (README, which also has
// the variants measured and not kept).
#pragma once

#include <cooperative_groups.h>

#include "gemv_tiled_mma.cuh"

namespace vptq {
namespace gemv {

constexpr int kTiledClusterMax = 16;      // blocks a cluster (non-portable past 8 on sm_90)
constexpr int kTiledClusterPortable = 8;  // what every sm_90 part takes
// Blocks a cluster unless VPTQ_RS_TILED_CLUSTER_SIZE says otherwise. In run 27a (H100) 16
// blocks of one tile each took 115.4 us on 8192x28672 v8/k65536, 8 blocks of two tiles each
// 85.3 us.
constexpr int kTiledClusterDefault = 8;

struct TiledClusterParams {
  Params p;
  TiledLayout t;
  int rows_cap;  // rows of the largest cluster (its partial sums' room in shared memory)
};

// Vector rows of a cluster the shared memory is sized for: the rows of the busiest of
// sms / kTiledClusterMax clusters (the fewest a launch makes; more clusters, fewer rows).
__host__ __device__ inline int tiled_cluster_rows_cap(int R, int sms) {
  const int g = sms / kTiledClusterMax > 0 ? sms / kTiledClusterMax : 1;
  return (R + g - 1) / g;
}

// Shared memory: [xs of the group + the zero slot, fp32] [one codebook tile, 16-bit]
// [extra_x_bytes] [partial sums, rows_cap x V fp32] [the block's added rows, as many], and in
// the mma form [32 floats: the block's max |xs| reduction].
__host__ __device__ inline int64_t tiled_cluster_smem_bytes(const LayerArgs& a, int tile_codes,
                                                           int rows_cap, bool mma) {
  return sorted_round16(int64_t{a.group_size + 1} * 4) +
         sorted_round16(int64_t{tile_codes} * a.v * 2) + extra_x_bytes(a) +
         2 * sorted_round16(int64_t{rows_cap} * a.v * 4) + (mma ? 32 * 4 : 0);
}

// kMma: the mma form's entries (whole steps of 32, gemv_tiled_mma.cuh), summed by two
// m16n8k16 products a step (V = 8 only), the activations rounded as that kernel does.
template <typename T, int V, bool kMma>
__global__ void __launch_bounds__(tiled_threads<V>(), 1)
    tiled_cluster_kernel(TiledClusterParams cp) {
  static_assert(!kMma || V == kTiledMmaV, "the mma form takes v = 8 only");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kWarps = tiled_threads<V>() / 32;
  constexpr int kUnroll = 4;  // entry loads a lane issues at once (the tiled kernel's)
  constexpr int kBatch = 32 * kUnroll;
  const Params& p = cp.p;
  const LayerArgs& a = p.a;
  const TiledLayout& t = cp.t;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int gs = a.group_size;
  const int tc = t.tile_codes;
  const int len = t.list_len;  // gs in the scalar form
  const cg::cluster_group cluster = cg::this_cluster();
  const int C = static_cast<int>(cluster.num_blocks());
  const int q = static_cast<int>(cluster.block_rank());
  const int G = static_cast<int>(gridDim.x) / C;
  const int g = static_cast<int>(blockIdx.x) / C;
  const int R = a.num_vectors;
  const int r0 = static_cast<int>(int64_t{R} * g / G);
  const int nrows = static_cast<int>(int64_t{R} * (g + 1) / G) - r0;

  float* s_x = reinterpret_cast<float*>(smem);
  T* tile = reinterpret_cast<T*>(smem + sorted_round16(int64_t{gs + 1} * 4));
  float* s_xo = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(tile) +
                                         sorted_round16(int64_t{tc} * V * 2));
  float* s_part = s_xo + extra_x_bytes(a) / 4;
  float* s_sum = s_part + sorted_round16(int64_t{cp.rows_cap} * V * 4) / 4;
  float* s_red = s_sum + sorted_round16(int64_t{cp.rows_cap} * V * 4) / 4;  // kMma only
  for (int i = threadIdx.x; i < nrows * V; i += blockDim.x) s_part[i] = 0.f;

  const uint32_t* ents = reinterpret_cast<const uint32_t*>(t.entries);
  // the warp's rows: local rows warp + k kWarps, k < my_rows
  const int my_rows = nrows > warp ? (nrows - warp + kWarps - 1) / kWarps : 0;
  auto fetch = [&](const uint32_t* ptr, int e, int e1, uint32_t pad, uint32_t(&ev)[kUnroll]) {
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) ev[k] = e + 32 * k < e1 ? load_stream32(ptr + 32 * k) : pad;
  };

  // mma form: which half of a step's A registers this lane's activation fills
  uint32_t mask[2][2] = {{0u, 0u}, {0u, 0u}};
  if constexpr (kMma) mma_x_masks(lane, mask);
  float up = 1.f;  // mma form: the sums' scale back from the activations' (2^e)

  const int phases = t.lists * t.tiles;
  if (q >= phases) {  // no tile here, but the epilogue of its share of rows needs xs
    stage_xs<T>(p, s_x, s_xo);
    cp_commit();
    cp_wait<0>();  // the cluster barrier below publishes it
  }
  for (int f = q; f < phases; f += C) {
    const int b = f / t.tiles;
    const int ft = f - b * t.tiles;
    if (f != q) __syncthreads();  // every warp has left the previous phase's tile
    stage_codebook_tile<T, V>(tile, a, tc, b, ft);
    cp_commit();
    // A list's entries and run of the warp's row k. Lane k holds the runs of the warp's rows
    // kc + k (a chunk of 32 rows, one memory round trip), handed out by shuffles; runs are
    // clamped to the list so that a malformed layout cannot leave it (in the mma form, and
    // cut to whole steps).
    auto list_of = [&](int k) { return int64_t{r0 + warp + k * kWarps} * t.lists + b; };
    int lane_s0 = 0, lane_s1 = 0;
    auto load_runs = [&](int kc) {
      lane_s0 = lane_s1 = 0;
      if (kc + lane < my_rows) {
        const int32_t* ts = t.tile_start + list_of(kc + lane) * (t.tiles + 1) + ft;
        lane_s0 = min(max(ts[0], 0), len);
        lane_s1 = min(max(ts[1], lane_s0), len);
        if constexpr (kMma) {
          lane_s1 = lane_s0 + (lane_s1 - lane_s0) / kTiledMmaStep * kTiledMmaStep;
        }
      }
    };
    load_runs(0);
    if (f == q) {  // behind the tile's copies and the runs' loads, which it overlaps
      stage_xs<T>(p, s_x, s_xo);
      cp_commit();
    }
    const uint32_t code0 = static_cast<uint32_t>(ft * tc);
    const uint32_t pad = code0 << 16 | static_cast<uint32_t>(gs);  // the zero column
    // both indices are clamped: the column to the zero slot, the code to the tile
    const int ncodes = tiled_codes_of(a, tc, b, ft);
    const uint32_t cmax = ncodes > 0 ? static_cast<uint32_t>(ncodes - 1) : 0u;
    int e0 = __shfl_sync(0xffffffffu, lane_s0, 0);
    int e1 = __shfl_sync(0xffffffffu, lane_s1, 0);
    uint32_t cur[kUnroll];
    if (my_rows > 0) fetch(ents + list_of(0) * len + e0 + lane, e0 + lane, e1, pad, cur);
    cp_wait<0>();
    __syncthreads();
    if constexpr (kMma) {
      if (f == q) up = scale_xs_for_mma(s_x, gs, s_red);  // the same 2^e in every block
    }
    const uint32_t tile_addr = static_cast<uint32_t>(__cvta_generic_to_shared(tile));

    for (int k = 0; k < my_rows; ++k) {
      // the next row's run and first batch, in flight while this row is summed
      const int kn = k + 1;
      int n0 = 0, n1 = 0;
      uint32_t nxt[kUnroll];
      if (kn < my_rows) {
        if ((kn & 31) == 0) load_runs(kn);
        n0 = __shfl_sync(0xffffffffu, lane_s0, kn & 31);
        n1 = __shfl_sync(0xffffffffu, lane_s1, kn & 31);
        fetch(ents + list_of(kn) * len + n0 + lane, n0 + lane, n1, pad, nxt);
      }
      // scalar: the row's V sums; mma: the D fragment of slots x elements (lane 4g + t holds
      // slot g's elements 2t and 2t + 1 in acc[0..1]; slots 8-15 stay zero)
      constexpr int kAcc = kMma ? 4 : V;
      float acc[kAcc];
#pragma unroll
      for (int l = 0; l < kAcc; ++l) acc[l] = 0.f;
      auto sum = [&](const uint32_t(&ev)[kUnroll], int part) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (u > 0 && u >= part) break;
          const float xv = s_x[min(ev[u] & 0xffffu, static_cast<uint32_t>(gs))];
          const uint32_t c = min((ev[u] >> 16) - code0, cmax);
          if constexpr (kMma) {
            const uint32_t xa = to_pair_bits<T>(xv);
            uint32_t rows[4];
            ldmatrix_x4_trans(tile_addr + (c << 4), rows);
            mma_slots<T>(acc, xa & mask[0][0], xa & mask[0][1], rows[0], rows[1]);
            mma_slots<T>(acc, xa & mask[1][0], xa & mask[1][1], rows[2], rows[3]);
          } else {
            Entry<T, V> ent;
            ent.load(tile + c * V);
            float cv[V];
            ent.get(cv);
#pragma unroll
            for (int l = 0; l < V; ++l) acc[l] = fmaf(xv, cv[l], acc[l]);
          }
        }
      };
      // a full batch without a check per load, a run's last one with them (warp-uniform)
      auto sum_batch = [&](const uint32_t(&ev)[kUnroll], int eb) {
        if (e1 - eb >= kBatch) {
          sum(ev, kUnroll);
        } else {
          sum(ev, (e1 - eb + 31) >> 5);
        }
      };
      // the batch from entry bs: no bound checks (nor pads) where all of it is in the run
      auto fetch_next = [&](const uint32_t* bp, int bs, uint32_t(&ev)[kUnroll]) {
        if (bs + kBatch <= e1) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) ev[u] = load_stream32(bp + 32 * u);
        } else {
          fetch(bp, bs + lane, e1, pad, ev);
        }
      };
      // two batches a turn, each loading the other's successor while it is summed
      const uint32_t* ptr = ents + list_of(k) * len + e0 + lane;
      int eb = e0;
      uint32_t other[kUnroll];
      while (eb < e1) {
        fetch_next(ptr + kBatch, eb + kBatch, other);
        sum_batch(cur, eb);
        eb += kBatch;
        ptr += kBatch;
        if (eb >= e1) break;
        fetch_next(ptr + kBatch, eb + kBatch, cur);
        sum_batch(other, eb);
        eb += kBatch;
        ptr += kBatch;
      }
      float* dst = s_part + (warp + k * kWarps) * V;
      if constexpr (kMma) {  // add the slots: lanes t (< 4) end with elements 2t, 2t + 1
        float s0 = acc[0], s1 = acc[1];
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {
          s0 += __shfl_xor_sync(0xffffffffu, s0, o);
          s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        }
        if (lane < 4) {
          dst[2 * lane] += s0 * up;
          dst[2 * lane + 1] += s1 * up;
        }
      } else {
        int slot;
        const float rsum = warp_spread_sum<V>(acc, lane, slot);
        if (slot >= 0) dst[slot] += rsum;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) cur[u] = nxt[u];
      e0 = n0;
      e1 = n1;
    }
  }

  // Every block's partial sums are final (the barrier's release/acquire makes them visible
  // across the cluster). Block q adds its share of the rows in block order.
  cluster.sync();
  const int sub0 = nrows * q / C;
  const int nsub = nrows * (q + 1) / C - sub0;
  for (int i = threadIdx.x; i < nsub * V; i += blockDim.x) {
    float s = 0.f;
    for (int j = 0; j < C; ++j) s += cluster.map_shared_rank(s_part, j)[sub0 * V + i];
    s_sum[i] = s;
  }
  // no block may exit while another reads its partial sums; also publishes s_sum
  cluster.sync();
  sorted_epilogue<T, V>(p, s_sum, r0 + sub0, nsub, 1, s_xo);
#endif
}

}  // namespace gemv
}  // namespace vptq
