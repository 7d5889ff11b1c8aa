// Host-side launch of the GEMV kernels. The kernels of one codebook dtype and codebook
// placement (shared memory or L1/L2), and the histogram and sorted kernels of one dtype, are
// instantiated in their own translation unit (gemv_{f16,bf16}{,_l2,_hist,_sorted}.cu) so
// the eight compile in parallel.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "gemv.cuh"
#include "gemv_hist.cuh"
#include "gemv_sorted.cuh"
#include "gemv_tiled.cuh"
#include "gemv_tiled_cluster.cuh"
#include "gemv_tiled_mma.cuh"

namespace vptq {
namespace gemv {

struct DeviceInfo {
  int id = 0, sms = 0, smem_block_optin = 0, smem_sm = 0;
  int major = 0;  // compute capability
};

inline DeviceInfo device_info() {
  static DeviceInfo cache[64];
  int dev = 0;
  cudaGetDevice(&dev);
  DeviceInfo& d = cache[dev & 63];
  d.id = dev;
  if (d.sms == 0) {
    cudaDeviceGetAttribute(&d.smem_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&d.smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
    cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev);
  }
  return d;
}

inline int64_t round16(int64_t b) { return (b + 15) / 16 * 16; }

// Pipeline steps per group the tile choice aims for. VPTQ_RS_GEMV_MIN_STEPS (1..64, a power
// of two) overrides the default for tuning and for tests that need multi-step pipelines on
// small layers. Measured on an H100 (benchmarks/results/gpu-tune-gemv.json): splitting
// small groups into more steps did not help (the launch and the codebook staging dominate
// there), so by default the tile follows the group. Read at every launch (a getenv per call
// is noise next to a kernel) so a benchmark can sweep it in one process.
constexpr int kDefaultMinSteps = 1;
inline int min_steps() {
  const char* e = std::getenv("VPTQ_RS_GEMV_MIN_STEPS");
  if (e == nullptr) return kDefaultMinSteps;
  const int v = std::atoi(e);
  return (v >= 1 && v <= 64 && (v & (v - 1)) == 0) ? v : kDefaultMinSteps;
}

// Shared memory (KB) the L2-path pipeline may take. That path reads the codebook through L1,
// which shares its SRAM with shared memory: Nsight showed the 148 KB pipeline leaving L1 a
// 2% hit rate on a 1 MB codebook with L2 87% busy, so the pipeline is capped and only the
// shared memory it needs is asked for, the rest staying L1. VPTQ_RS_GEMV_L2_PIPE_KB overrides
// the cap for tuning (0: no cap, the default carveout). Of 0, 48 and 96 KB, 96 was within
// about 1% of the fastest on each of the issue's shapes on an H100, and 0-5% faster than 48
// (benchmarks/results/gpu-tune-gemv-placement.json).
constexpr int kDefaultL2PipeKb = 96;
inline int l2_pipe_kb() {
  const char* e = std::getenv("VPTQ_RS_GEMV_L2_PIPE_KB");
  if (e == nullptr) return kDefaultL2PipeKb;
  const int v = std::atoi(e);
  return (v >= 0 && v <= 256) ? v : kDefaultL2PipeKb;
}

template <typename T>
int64_t codebook_bytes(const LayerArgs& a) {
  const int64_t K = int64_t{1} << a.index_bits;
  const int64_t Kr = a.res_bits ? int64_t{1} << a.res_bits : 0;
  return round16(a.groups * K * a.v * int64_t{sizeof(T)}) +
         (a.res_centroids ? round16(a.groups * Kr * a.v * int64_t{sizeof(T)}) : 0);
}

inline int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

inline int64_t partial_bytes(int nt, int v) {
  return int64_t{threads_for(nt, v) / 32} * nt * v * 4;
}

// Shared memory of the smallest pipeline (2 stages of 128 columns, one row per warp).
inline int64_t min_pipeline_bytes(const LayerArgs& a, int nt) {
  const int tb = a.index_bits + a.res_bits;
  const int rpb = threads_for(nt, a.v) / 32;
  return 2 * stage_floats(nt, 128, tb, rpb) * 4 + partial_bytes(nt, a.v);
}

// What one kernel instantiation was last told on one device: the dynamic shared memory it may
// take and its carveout, and the occupancy answer for one size, so a decode step makes these
// driver calls once per kernel instead of on every call (small layers are host-bound).
struct LaunchState {
  int dev = -1;
  int64_t smem_allowed = 48 * 1024;
  int carveout = INT_MIN;
  int64_t occ_bytes = -1;
  int occ_blocks = 0;
};

// Launch attributes of the kernel Kern, per device.
template <auto Kern>
struct Launcher {
  static inline std::mutex mu;
  static inline LaunchState per_dev[16];  // devices past 16 share slots: only re-queries

  static LaunchState& state(int dev) {
    LaunchState& st = per_dev[dev & 15];
    if (st.dev != dev) {
      st = LaunchState{};
      st.dev = dev;
    }
    return st;
  }

  // Lets the kernel take `bytes` of dynamic shared memory; its resident blocks per SM.
  static cudaError_t prepare(int dev, int threads, int64_t bytes, int* blocks) {
    std::lock_guard<std::mutex> lock(mu);
    LaunchState& st = state(dev);
    if (bytes > st.smem_allowed) {
      const cudaError_t e = cudaFuncSetAttribute(
          Kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
      if (e != cudaSuccess) return e;
      st.smem_allowed = bytes;
    }
    if (st.occ_bytes != bytes) {
      const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &st.occ_blocks, Kern, threads, static_cast<size_t>(bytes));
      if (e != cudaSuccess) return e;
      st.occ_bytes = bytes;
    }
    *blocks = st.occ_blocks;
    return cudaSuccess;
  }

  // The preferred carveout (a percentage or cudaSharedmemCarveoutDefault), set when it
  // differs from the last one set: the attribute outlives the launch.
  static cudaError_t carveout(int dev, int pct) {
    std::lock_guard<std::mutex> lock(mu);
    LaunchState& st = state(dev);
    if (st.carveout == pct) return cudaSuccess;
    const cudaError_t e =
        cudaFuncSetAttribute(Kern, cudaFuncAttributePreferredSharedMemoryCarveout, pct);
    if (e == cudaSuccess) st.carveout = pct;
    return e;
  }
};

// Picks splits per row, column tile and pipeline depth, then launches one configuration.
template <typename T, int V, int NT, bool kSmem, bool kRes>
cudaError_t launch_main(Params p, cudaStream_t s) {
  using C = Cfg<NT, V, kSmem>;
  constexpr int kWarps = C::kThreads / 32;
  const DeviceInfo dev = device_info();
  const LayerArgs& a = p.a;
  const int tb = a.index_bits + a.res_bits;
  const int R = a.num_vectors;
  const int64_t cb = kSmem ? codebook_bytes<T>(a) : 0;
  const int64_t part = int64_t{kWarps} * NT * V * 4;
  // enough rows x splits for one block on every SM
  const int64_t target = int64_t{dev.sms} * kWarps;
  int S = 1;
  while (S < 8 && S < kWarps && int64_t{R} * S < target) S <<= 1;
  // more splits when they balance the row blocks over the SMs clearly better (tail effect)
  auto balance = [&](int s_) {
    const int64_t n = (R + kWarps / s_ - 1) / (kWarps / s_);
    const int64_t rounds = (n + dev.sms - 1) / dev.sms;
    return static_cast<double>(n) / static_cast<double>(rounds * dev.sms);
  };
  for (int s2 = S * 2; s2 <= 8 && s2 <= kWarps; s2 <<= 1)
    if (balance(s2) > balance(S) + 0.05) S = s2;
  const int rpb = kWarps / S;
  // about 1024 codes per warp per step (the wait + barrier + copy issue of a step cost about
  // as much as 8 codes per lane); never wider than the group
  // at least min_steps() tiles per group (see min_steps)
  const int min_tile = std::max(128, 32 * S);
  int tile = std::min(4096, 1024 * S);
  tile = std::min(tile, std::max(min_tile, next_pow2(a.group_size) / min_steps()));
  int stages = 3;
  auto need = [&](int t, int st) { return cb + st * stage_floats(NT, t, tb, rpb) * 4 + part; };
  const int pipe_kb = kSmem ? 0 : l2_pipe_kb();
  int64_t budget = dev.smem_block_optin - 1024;
  if (pipe_kb > 0)
    budget = std::min(budget, std::max<int64_t>(pipe_kb * 1024, need(min_tile, 2)));
  while (need(tile, stages) > budget) {
    if (tile > std::max(min_tile, 512 * S)) {
      tile >>= 1;
    } else if (stages == 3) {
      stages = 2;
    } else if (tile > min_tile) {
      tile >>= 1;
    } else {
      return cudaErrorInvalidConfiguration;
    }
  }
  const int64_t bytes = need(tile, stages);
  p.splits = S;
  p.tile = tile;
  p.stages = stages;
  constexpr auto kern = main_kernel<T, V, NT, kSmem, kRes>;
  using L = Launcher<kern>;
  int bps = 0;
  cudaError_t e = L::prepare(dev.id, C::kThreads, bytes, &bps);
  if (e != cudaSuccess) return e;
  if (!kSmem && dev.smem_sm > 0) {
    // just the shared memory the resident blocks need (plus the 1 KB per block the driver
    // reserves); the attribute is a percentage hint that the driver rounds up. Without a cap
    // the default is set again, since the attribute outlives the call.
    const int64_t per_sm = std::max(1, bps) * (bytes + 1024);
    const int64_t need_pct = (per_sm * 100 + dev.smem_sm - 1) / dev.smem_sm;
    int pct = cudaSharedmemCarveoutDefault;
    if (pipe_kb > 0) pct = static_cast<int>(std::min<int64_t>(100, need_pct));
    e = L::carveout(dev.id, pct);
    if (e != cudaSuccess) return e;
  }
  const int nrb = (R + rpb - 1) / rpb;
  const int grid = std::max(1, std::min(nrb, dev.sms * std::max(1, bps)));
  kern<<<grid, C::kThreads, bytes, s>>>(p);
  return cudaGetLastError();
}

template <typename T, int V, int NT, bool kSmem>
cudaError_t launch_res(const Params& p, cudaStream_t s) {
  return p.a.res_centroids ? launch_main<T, V, NT, kSmem, true>(p, s)
                           : launch_main<T, V, NT, kSmem, false>(p, s);
}

template <typename T, int V, bool kSmem>
cudaError_t launch_v(const Params& p, cudaStream_t s) {
  switch (next_pow2(p.tokens)) {
    case 1: return launch_res<T, V, 1, kSmem>(p, s);
    case 2: return launch_res<T, V, 2, kSmem>(p, s);
    case 4: return launch_res<T, V, 4, kSmem>(p, s);
    case 8: return launch_res<T, V, 8, kSmem>(p, s);
    default: return cudaErrorInvalidValue;
  }
}

// Every vector length for one dtype and codebook placement (explicitly instantiated per TU).
template <typename T, bool kSmem>
cudaError_t run(const Params& p, cudaStream_t s) {
  switch (p.a.v) {
    case 1: return launch_v<T, 1, kSmem>(p, s);
    case 2: return launch_v<T, 2, kSmem>(p, s);
    case 3: return launch_v<T, 3, kSmem>(p, s);
    case 4: return launch_v<T, 4, kSmem>(p, s);
    case 5: return launch_v<T, 5, kSmem>(p, s);
    case 6: return launch_v<T, 6, kSmem>(p, s);
    case 7: return launch_v<T, 7, kSmem>(p, s);
    case 8: return launch_v<T, 8, kSmem>(p, s);
    case 9: return launch_v<T, 9, kSmem>(p, s);
    case 10: return launch_v<T, 10, kSmem>(p, s);
    case 11: return launch_v<T, 11, kSmem>(p, s);
    case 12: return launch_v<T, 12, kSmem>(p, s);
    case 13: return launch_v<T, 13, kSmem>(p, s);
    case 14: return launch_v<T, 14, kSmem>(p, s);
    case 15: return launch_v<T, 15, kSmem>(p, s);
    case 16: return launch_v<T, 16, kSmem>(p, s);
    default: return cudaErrorInvalidValue;
  }
}

// ---- histogram kernel (gemv_hist.cuh) ----

// Whether the histogram kernel takes this call: one token, one group, codebooks of at most
// 2^13 entries, and one row's histogram plus the smallest pipeline fit in shared memory.
inline bool hist_applies(const LayerArgs& a, int tokens) {
  if (tokens != 1 || a.groups != 1 || a.index_bits > kHistMaxBits) return false;
  if (a.res_centroids && a.res_bits > kHistMaxBits) return false;
  return hist_smem_bytes(a, 1, 512, 2) <= device_info().smem_block_optin - 1024;
}

// Whether mode 0 picks the histogram kernel where it applies: when a row has at least half as
// many columns as its histogram has bins (the dot phase reads and zeroes every bin once per
// row) and there are enough vector rows to give every SM one (a block owns whole rows). On an
// H100 it beat the gather kernels on every k4096 layer of the issue's shapes, the narrowest
// being v12/k4096+res4096 on 4096x4096 (4096 columns, 8192 bins: 27 vs 34 us;
// benchmarks/results/gpu-gemv.json). It was slower on 512x2048 v4/k4096, 128 rows on 132 SMs
// (17.1 us in run 12b against 13.9 us for the gather kernel in run 12c; gpu-run12{b,c} logs).
// VPTQ_RS_GEMV_HIST=0 turns it off for comparisons.
inline bool hist_auto(const LayerArgs& a) {
  const char* e = std::getenv("VPTQ_RS_GEMV_HIST");
  if (e != nullptr && e[0] == '0') return false;
  return 2 * a.group_size >= hist_bins(a) && a.num_vectors >= device_info().sms;
}

template <typename T, int V, bool kRes>
cudaError_t launch_hist(Params p, cudaStream_t s) {
  constexpr int kRowsMax = hist_max_rows<V>();
  const DeviceInfo dev = device_info();
  const LayerArgs& a = p.a;
  const int64_t budget = dev.smem_block_optin - 1024;
  const int R = a.num_vectors;
  // Rows per block: the most that fit whose row blocks keep 85% of the SMs busy in every
  // round (one block per SM); failing that, the best spread.
  auto balance = [&](int rows) {
    const int64_t n = (R + rows - 1) / rows;
    const int64_t rounds = (n + dev.sms - 1) / dev.sms;
    return static_cast<double>(n) / static_cast<double>(rounds * dev.sms);
  };
  int rows = 0, best = 0;
  double best_bal = -1.0;
  for (int r = kRowsMax; r >= 1; --r) {
    if (hist_smem_bytes(a, r, 512, 2) > budget) continue;
    const double b = balance(r);
    if (b >= 0.85) {
      rows = r;
      break;
    }
    if (b > best_bal) {
      best_bal = b;
      best = r;
    }
  }
  if (rows == 0) rows = best;
  if (rows == 0) return cudaErrorInvalidConfiguration;
  int tile = std::min(2048, std::max(512, next_pow2(a.group_size)));
  int stages = 3;
  while (hist_smem_bytes(a, rows, tile, stages) > budget) {
    if (tile > 1024) {
      tile >>= 1;
    } else if (stages == 3) {
      stages = 2;
    } else if (tile > 512) {
      tile >>= 1;
    } else {
      return cudaErrorInvalidConfiguration;
    }
  }
  const int64_t bytes = hist_smem_bytes(a, rows, tile, stages);
  p.hist_rows = rows;
  p.tile = tile;
  p.stages = stages;
  constexpr auto kern = hist_kernel<T, V, kRes>;
  int bps = 0;
  const cudaError_t e = Launcher<kern>::prepare(dev.id, kHistThreads, bytes, &bps);
  if (e != cudaSuccess) return e;
  const int nrb = (R + rows - 1) / rows;
  const int grid = std::max(1, std::min(nrb, dev.sms * std::max(1, bps)));
  kern<<<grid, kHistThreads, bytes, s>>>(p);
  return cudaGetLastError();
}

template <typename T, int V>
cudaError_t launch_hist_res(const Params& p, cudaStream_t s) {
  return p.a.res_centroids ? launch_hist<T, V, true>(p, s) : launch_hist<T, V, false>(p, s);
}

// Every vector length for one dtype (explicitly instantiated in gemv_hist_{f16,bf16}.cu).
template <typename T>
cudaError_t run_hist(const Params& p, cudaStream_t s) {
  switch (p.a.v) {
    case 1: return launch_hist_res<T, 1>(p, s);
    case 2: return launch_hist_res<T, 2>(p, s);
    case 3: return launch_hist_res<T, 3>(p, s);
    case 4: return launch_hist_res<T, 4>(p, s);
    case 5: return launch_hist_res<T, 5>(p, s);
    case 6: return launch_hist_res<T, 6>(p, s);
    case 7: return launch_hist_res<T, 7>(p, s);
    case 8: return launch_hist_res<T, 8>(p, s);
    case 9: return launch_hist_res<T, 9>(p, s);
    case 10: return launch_hist_res<T, 10>(p, s);
    case 11: return launch_hist_res<T, 11>(p, s);
    case 12: return launch_hist_res<T, 12>(p, s);
    case 13: return launch_hist_res<T, 13>(p, s);
    case 14: return launch_hist_res<T, 14>(p, s);
    case 15: return launch_hist_res<T, 15>(p, s);
    case 16: return launch_hist_res<T, 16>(p, s);
    default: return cudaErrorInvalidValue;
  }
}

// ---- sorted kernel (gemv_sorted.cuh) ----

// Blocks of the sorted kernel: one per SM (at most one per vector row), each owning a
// contiguous range of rows.
inline int sorted_grid(const LayerArgs& a) {
  return std::max(1, std::min(a.num_vectors, device_info().sms));
}

// Shared memory of the sorted kernel's blocks (sized for the largest row range), with the
// fixed or the group reach (gemv_sorted.cuh).
inline int64_t sorted_block_smem(const LayerArgs& a, const SortedLayout& s, bool group_reach) {
  const int grid = sorted_grid(a);
  return sorted_smem_bytes(a, s, (a.num_vectors + grid - 1) / grid, a.num_vectors / grid,
                           group_reach);
}

// Whether the sorted kernel takes this layer: one group, group_size <= 32767, and xs, one
// codebook and the partial sums in shared memory (with the group reach, the smaller).
inline bool sorted_applies(const LayerArgs& a, const SortedLayout& s) {
  if (a.groups != 1 || a.group_size > kSortedMaxGroupSize) return false;
  return sorted_block_smem(a, s, true) <= device_info().smem_block_optin - 1024;
}

// The group reach runs where the fixed reach's shared memory does not fit the device, or
// everywhere with VPTQ_RS_SORTED_REACH=group (tests and comparisons; read at every launch).
inline bool sorted_uses_group_reach(const LayerArgs& a, const SortedLayout& s) {
  const char* e = std::getenv("VPTQ_RS_SORTED_REACH");
  if (e != nullptr && std::strcmp(e, "group") == 0) return true;
  return sorted_block_smem(a, s, false) > device_info().smem_block_optin - 1024;
}

template <typename T, int V, bool kGroupReach>
cudaError_t launch_sorted_reach(const SortedParams& sp, int64_t bytes, cudaStream_t st) {
  constexpr auto kern = sorted_kernel<T, V, kGroupReach>;
  int bps = 0;
  const cudaError_t e =
      Launcher<kern>::prepare(device_info().id, sorted_threads<V>(), bytes, &bps);
  if (e != cudaSuccess) return e;
  kern<<<sorted_grid(sp.p.a), sorted_threads<V>(), bytes, st>>>(sp);
  return cudaGetLastError();
}

template <typename T, int V>
cudaError_t launch_sorted(const SortedParams& sp, cudaStream_t st) {
  const bool group = sorted_uses_group_reach(sp.p.a, sp.s);
  const int64_t bytes = sorted_block_smem(sp.p.a, sp.s, group);
  if (bytes > device_info().smem_block_optin - 1024) return cudaErrorInvalidConfiguration;
  return group ? launch_sorted_reach<T, V, true>(sp, bytes, st)
               : launch_sorted_reach<T, V, false>(sp, bytes, st);
}

// Every vector length for one dtype (explicitly instantiated in gemv_sorted_{f16,bf16}.cu).
template <typename T>
cudaError_t run_sorted(const SortedParams& sp, cudaStream_t st) {
  switch (sp.p.a.v) {
    case 1: return launch_sorted<T, 1>(sp, st);
    case 2: return launch_sorted<T, 2>(sp, st);
    case 3: return launch_sorted<T, 3>(sp, st);
    case 4: return launch_sorted<T, 4>(sp, st);
    case 5: return launch_sorted<T, 5>(sp, st);
    case 6: return launch_sorted<T, 6>(sp, st);
    case 7: return launch_sorted<T, 7>(sp, st);
    case 8: return launch_sorted<T, 8>(sp, st);
    case 9: return launch_sorted<T, 9>(sp, st);
    case 10: return launch_sorted<T, 10>(sp, st);
    case 11: return launch_sorted<T, 11>(sp, st);
    case 12: return launch_sorted<T, 12>(sp, st);
    case 13: return launch_sorted<T, 13>(sp, st);
    case 14: return launch_sorted<T, 14>(sp, st);
    case 15: return launch_sorted<T, 15>(sp, st);
    case 16: return launch_sorted<T, 16>(sp, st);
    default: return cudaErrorInvalidValue;
  }
}

// ---- tiled kernel (gemv_tiled.cuh) ----

// Vector rows of the busiest block of the sorted and tiled kernels.
inline int rows_per_block(const LayerArgs& a) {
  const int grid = sorted_grid(a);
  return (a.num_vectors + grid - 1) / grid;
}

// Shared memory of the tiled kernels' blocks (sized for the larger of the two row counts).
inline int64_t tiled_block_smem(const LayerArgs& a, const TiledLayout& t) {
  const int hi = rows_per_block(a);
  const int lo = a.num_vectors / sorted_grid(a);
  return t.mma ? tiled_mma_smem_bytes(a, t.tile_codes, hi, lo)
               : tiled_smem_bytes(a, t.tile_codes, hi, lo);
}

// Shared memory of the cluster-tiled kernel's blocks.
inline int64_t tiled_cluster_block_smem(const LayerArgs& a, const TiledLayout& t) {
  return tiled_cluster_smem_bytes(a, t.tile_codes,
                                  tiled_cluster_rows_cap(a.num_vectors, device_info().sms),
                                  t.mma != 0);
}

// Whether the tiled kernel of the layout's form takes this layer: one group, group_size <=
// 65534, at most kTiledItemsPerWarp rows a warp, and xs, two tiles and the partial sums in
// shared memory; the mma form also needs v = 8 and an sm_80+ GPU. The cluster form needs an
// sm_90+ GPU and xs, one tile and its partial sums in shared memory (and v = 8 with mma
// entries).
inline bool tiled_applies(const LayerArgs& a, const TiledLayout& t) {
  if (a.groups != 1 || a.group_size > kTiledMaxGroupSize) return false;
  if (t.cluster) {
    return device_info().major >= 9 && (!t.mma || a.v == kTiledMmaV) &&
           tiled_cluster_block_smem(a, t) <= device_info().smem_block_optin - 1024;
  }
  if (t.mma && (a.v != kTiledMmaV || device_info().major < 8)) return false;
  if (rows_per_block(a) > kTiledItemsPerWarp * tiled_warps(a.v)) return false;
  return tiled_block_smem(a, t) <= device_info().smem_block_optin - 1024;
}

template <auto kern>
cudaError_t launch_tiled_kernel(const TiledParams& tp, int threads, cudaStream_t st) {
  const DeviceInfo dev = device_info();
  const int64_t bytes = tiled_block_smem(tp.p.a, tp.t);
  if (bytes > dev.smem_block_optin - 1024) return cudaErrorInvalidConfiguration;
  int bps = 0;
  const cudaError_t e = Launcher<kern>::prepare(dev.id, threads, bytes, &bps);
  if (e != cudaSuccess) return e;
  kern<<<sorted_grid(tp.p.a), threads, bytes, st>>>(tp);
  return cudaGetLastError();
}

template <typename T, int V>
cudaError_t launch_tiled(const TiledParams& tp, cudaStream_t st) {
  return launch_tiled_kernel<tiled_kernel<T, V>>(tp, tiled_threads<V>(), st);
}

// ---- cluster-tiled kernel (gemv_tiled_cluster.cuh) ----

// Blocks a cluster: one a phase up to kTiledClusterDefault, or VPTQ_RS_TILED_CLUSTER_SIZE
// (1..16) for tuning (read at every launch). The launch takes the largest size up to that
// whose clusters the device can hold (a size past 8 needs the non-portable attribute, and a
// GPC with as many free SMs).
inline int tiled_cluster_want(int phases) {
  const char* e = std::getenv("VPTQ_RS_TILED_CLUSTER_SIZE");
  const int v = e == nullptr ? 0 : std::atoi(e);
  if (v >= 1 && v <= kTiledClusterMax) return v;
  return std::max(1, std::min(phases, kTiledClusterDefault));
}

// A launch of `blocks` blocks in clusters of `size` (attr: the one attribute's storage).
inline cudaLaunchConfig_t cluster_config(int size, int blocks, int threads, int64_t bytes,
                                         cudaStream_t st, cudaLaunchAttribute (&attr)[1]) {
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = size;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = static_cast<size_t>(bytes);
  cfg.stream = st;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// Clusters of one size the device holds at once for the kernel Kern, asked once per (device,
// size, shared memory).
template <auto Kern>
struct ClusterOccupancy {
  static inline std::mutex mu;
  struct Slot {
    int dev = -1;
    int64_t bytes = -1;
    int clusters = 0;
  };
  static inline Slot slots[kTiledClusterMax + 1];

  static cudaError_t max_clusters(int dev, int size, int threads, int64_t bytes, int* out) {
    std::lock_guard<std::mutex> lock(mu);
    Slot& s = slots[size];
    if (s.dev == dev && s.bytes == bytes) {
      *out = s.clusters;
      return cudaSuccess;
    }
    if (size > kTiledClusterPortable) {
      const cudaError_t e =
          cudaFuncSetAttribute(Kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
      if (e != cudaSuccess) return e;
    }
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = cluster_config(size, size, threads, bytes, nullptr, attr);
    int n = 0;
    const cudaError_t e = cudaOccupancyMaxActiveClusters(&n, Kern, &cfg);
    if (e != cudaSuccess) {
      cudaGetLastError();  // a size the device refuses: not sticky, try a smaller one
      n = 0;
    }
    s = Slot{dev, bytes, n};
    *out = n;
    return cudaSuccess;
  }
};

// Launches G clusters of C blocks: G the clusters the device holds at once (one wave, each
// block staging its tile once), at least as many as keep a cluster within the rows its
// shared memory was sized for (rows_cap), at most one a row.
template <auto kern>
cudaError_t launch_tiled_cluster_kernel(TiledClusterParams cp, int threads, cudaStream_t st) {
  const DeviceInfo dev = device_info();
  const LayerArgs& a = cp.p.a;
  if (dev.major < 9) return cudaErrorInvalidDevice;
  const int64_t bytes = tiled_cluster_block_smem(a, cp.t);
  if (bytes > dev.smem_block_optin - 1024) return cudaErrorInvalidConfiguration;
  int bps = 0;
  cudaError_t e = Launcher<kern>::prepare(dev.id, threads, bytes, &bps);
  if (e != cudaSuccess) return e;
  int C = tiled_cluster_want(cp.t.lists * cp.t.tiles);
  int M = 0;
  for (;;) {
    e = ClusterOccupancy<kern>::max_clusters(dev.id, C, threads, bytes, &M);
    if (e != cudaSuccess) return e;
    if (M > 0 || C == 1) break;
    C = C > kTiledClusterPortable ? kTiledClusterPortable : C / 2;
  }
  if (M == 0) return cudaErrorInvalidConfiguration;
  const int R = a.num_vectors;
  cp.rows_cap = tiled_cluster_rows_cap(R, dev.sms);
  const int G = std::min(R, std::max(M, (R + cp.rows_cap - 1) / cp.rows_cap));
  cudaLaunchAttribute attr[1];
  const cudaLaunchConfig_t cfg = cluster_config(C, G * C, threads, bytes, st, attr);
  e = cudaLaunchKernelEx(&cfg, kern, cp);
  return e != cudaSuccess ? e : cudaGetLastError();
}

template <typename T, int V, bool kMma = false>
cudaError_t launch_tiled_cluster(const TiledParams& tp, cudaStream_t st) {
  TiledClusterParams cp;
  cp.p = tp.p;
  cp.t = tp.t;
  cp.rows_cap = 0;
  return launch_tiled_cluster_kernel<tiled_cluster_kernel<T, V, kMma>>(cp, tiled_threads<V>(),
                                                                       st);
}

// Every vector length of the cluster form for one dtype, and the cluster form over mma entries
// (v = 8; explicitly instantiated in
// gemv_tiled_cluster_{f16,bf16}.cu, which compile beside the other tiled kernels).
template <typename T>
cudaError_t run_tiled_cluster(const TiledParams& tp, cudaStream_t st) {
  if (tp.t.mma) {
    if (tp.p.a.v != kTiledMmaV) return cudaErrorInvalidValue;
    return launch_tiled_cluster<T, kTiledMmaV, true>(tp, st);
  }
  switch (tp.p.a.v) {
    case 1: return launch_tiled_cluster<T, 1>(tp, st);
    case 2: return launch_tiled_cluster<T, 2>(tp, st);
    case 3: return launch_tiled_cluster<T, 3>(tp, st);
    case 4: return launch_tiled_cluster<T, 4>(tp, st);
    case 5: return launch_tiled_cluster<T, 5>(tp, st);
    case 6: return launch_tiled_cluster<T, 6>(tp, st);
    case 7: return launch_tiled_cluster<T, 7>(tp, st);
    case 8: return launch_tiled_cluster<T, 8>(tp, st);
    case 9: return launch_tiled_cluster<T, 9>(tp, st);
    case 10: return launch_tiled_cluster<T, 10>(tp, st);
    case 11: return launch_tiled_cluster<T, 11>(tp, st);
    case 12: return launch_tiled_cluster<T, 12>(tp, st);
    case 13: return launch_tiled_cluster<T, 13>(tp, st);
    case 14: return launch_tiled_cluster<T, 14>(tp, st);
    case 15: return launch_tiled_cluster<T, 15>(tp, st);
    case 16: return launch_tiled_cluster<T, 16>(tp, st);
    default: return cudaErrorInvalidValue;
  }
}

extern template cudaError_t run_tiled_cluster<__half>(const TiledParams&, cudaStream_t);
extern template cudaError_t run_tiled_cluster<__nv_bfloat16>(const TiledParams&, cudaStream_t);

// Every vector length for one dtype, the mma form, or the cluster form (explicitly
// instantiated in gemv_tiled_{f16,bf16}.cu).
template <typename T>
cudaError_t run_tiled(const TiledParams& tp, cudaStream_t st) {
  if (tp.t.cluster) return run_tiled_cluster<T>(tp, st);
  if (tp.t.mma) {
    if (tp.p.a.v != kTiledMmaV) return cudaErrorInvalidValue;
    return launch_tiled_kernel<tiled_mma_kernel<T>>(tp, kTiledMmaThreads, st);
  }
  switch (tp.p.a.v) {
    case 1: return launch_tiled<T, 1>(tp, st);
    case 2: return launch_tiled<T, 2>(tp, st);
    case 3: return launch_tiled<T, 3>(tp, st);
    case 4: return launch_tiled<T, 4>(tp, st);
    case 5: return launch_tiled<T, 5>(tp, st);
    case 6: return launch_tiled<T, 6>(tp, st);
    case 7: return launch_tiled<T, 7>(tp, st);
    case 8: return launch_tiled<T, 8>(tp, st);
    case 9: return launch_tiled<T, 9>(tp, st);
    case 10: return launch_tiled<T, 10>(tp, st);
    case 11: return launch_tiled<T, 11>(tp, st);
    case 12: return launch_tiled<T, 12>(tp, st);
    case 13: return launch_tiled<T, 13>(tp, st);
    case 14: return launch_tiled<T, 14>(tp, st);
    case 15: return launch_tiled<T, 15>(tp, st);
    case 16: return launch_tiled<T, 16>(tp, st);
    default: return cudaErrorInvalidValue;
  }
}

extern template cudaError_t run_tiled<__half>(const TiledParams&, cudaStream_t);
extern template cudaError_t run_tiled<__nv_bfloat16>(const TiledParams&, cudaStream_t);
extern template cudaError_t run_sorted<__half>(const SortedParams&, cudaStream_t);
extern template cudaError_t run_sorted<__nv_bfloat16>(const SortedParams&, cudaStream_t);
extern template cudaError_t run_hist<__half>(const Params&, cudaStream_t);
extern template cudaError_t run_hist<__nv_bfloat16>(const Params&, cudaStream_t);
extern template cudaError_t run<__half, true>(const Params&, cudaStream_t);
extern template cudaError_t run<__half, false>(const Params&, cudaStream_t);
extern template cudaError_t run<__nv_bfloat16, true>(const Params&, cudaStream_t);
extern template cudaError_t run<__nv_bfloat16, false>(const Params&, cudaStream_t);

// The kernels' parameters before the launch choices (tile, stages, splits, rows per block).
inline Params make_params(const LayerArgs& a, int tokens, const void* bias, void* y,
                          float* workspace, int perm_bytes) {
  Params p;
  p.a = a;
  p.tokens = tokens;
  p.nchunks = (a.cols + kTile - 1) / kTile;
  p.xs = workspace;
  p.xbias = workspace + int64_t{tokens} * a.cols;
  p.xabs = p.xbias + int64_t{tokens} * p.nchunks;
  p.hist_rows = 1;
  p.bias = bias;
  p.y = y;
  p.splits = 1;
  p.tile = 128;
  p.stages = 2;
  p.perm_u16 = perm_bytes == 2 ? 1 : 0;
  p.x_in = nullptr;
  p.perm = nullptr;
  // 16-byte copies need 16-byte aligned rows: whole multiples of 4 words / floats
  p.words_vec = (a.words % 4 == 0 && reinterpret_cast<uintptr_t>(a.indices) % 16 == 0) ? 1 : 0;
  p.x_vec = (a.cols % 4 == 0 && a.outlier_size % 4 == 0 && a.group_size % 4 == 0) ? 1 : 0;
  return p;
}

// The widest layer whose one-token kernels compute xs themselves. A block's thread loads its
// columns' x and norm values (after their perm values) in batches of 4, one memory round
// trip a batch, where the prologue kernel's xs reach shared memory in one round trip of
// cp.async copies; past this width that costs more than the prologue kernel's launch. In
// runs 23a and 23b (H100, v6/k4096 sorted, us with the prologue kernel in parentheses), with
// a perm: 4096 columns 20.1 (23.9) and 32.6 (35.0), 8192 columns 58.2 (60.0), 14336 columns
// 31.8 (28.9), 28672 columns 111.4 (52.8); without one: 19.5 (23.7), 31.2 (34.7), 58.8
// (59.2), 32.9 (28.2), 65.4 (52.0).
constexpr int kFusedMaxCols = 8192;

// Whether the one-token kernels (sorted, tiled) compute xs themselves (stage_xs in
// gemv_sorted.cuh) rather than after the prologue kernel: up to kFusedMaxCols columns.
// VPTQ_RS_GEMV_PROLOGUE=fused or =kernel forces either, for tests and comparisons (read at
// every launch).
inline bool one_token_prologue_fused(const LayerArgs& a) {
  const char* e = std::getenv("VPTQ_RS_GEMV_PROLOGUE");
  if (e != nullptr && std::strcmp(e, "kernel") == 0) return false;
  if (e != nullptr && std::strcmp(e, "fused") == 0) return true;
  return a.cols <= kFusedMaxCols;
}

// The one-token kernels' xs: from x in the kernel itself, or the prologue kernel first.
template <typename T>
cudaError_t one_token_xs(Params& p, const void* x, const void* perm, cudaStream_t s) {
  if (one_token_prologue_fused(p.a)) {
    p.x_in = x;
    p.perm = perm;
    return cudaSuccess;
  }
  if (p.xs == nullptr) return cudaErrorInvalidValue;  // no workspace for the prologue kernel
  prologue_kernel<T><<<dim3(p.nchunks, 1), 256, 0, s>>>(p, static_cast<const T*>(x), perm);
  return cudaGetLastError();
}

// The sorted kernel (one token), its xs as one_token_xs says.
template <typename T>
cudaError_t launch_sorted_typed(const LayerArgs& a, const SortedLayout& sl, const void* x,
                                const void* perm, int perm_bytes, const void* bias, void* y,
                                float* workspace, cudaStream_t s) {
  if (a.v < 1 || a.v > 16) return cudaErrorInvalidValue;
  if (perm != nullptr && perm_bytes != 2 && perm_bytes != 4) return cudaErrorInvalidValue;
  if (!sorted_applies(a, sl)) return cudaErrorInvalidValue;
  SortedParams sp;
  sp.p = make_params(a, 1, bias, y, workspace, perm_bytes);
  sp.s = sl;
  const cudaError_t e = one_token_xs<T>(sp.p, x, perm, s);
  if (e != cudaSuccess) return e;
  return run_sorted<T>(sp, s);
}

// The tiled kernel (one token), its xs as one_token_xs says.
template <typename T>
cudaError_t launch_tiled_typed(const LayerArgs& a, const TiledLayout& tl, const void* x,
                               const void* perm, int perm_bytes, const void* bias, void* y,
                               float* workspace, cudaStream_t s) {
  if (a.v < 1 || a.v > 16) return cudaErrorInvalidValue;
  if (perm != nullptr && perm_bytes != 2 && perm_bytes != 4) return cudaErrorInvalidValue;
  if (!tiled_applies(a, tl)) return cudaErrorInvalidValue;
  TiledParams tp;
  tp.p = make_params(a, 1, bias, y, workspace, perm_bytes);
  tp.t = tl;
  const cudaError_t e = one_token_xs<T>(tp.p, x, perm, s);
  if (e != cudaSuccess) return e;
  return run_tiled<T>(tp, s);
}

// Prologue, then the main kernel with the codebooks in shared memory (mode 1, or mode 0
// when they fit and staging them per block costs less than the index stream) or in L2, or
// the histogram kernel (mode 3, or mode 0 where hist_auto says so).
template <typename T>
cudaError_t launch_typed(const LayerArgs& a, const void* x, int tokens, const void* perm,
                         int perm_bytes, const void* bias, void* y, float* workspace, int mode,
                         cudaStream_t s) {
  if (tokens < 1 || tokens > 8 || a.v < 1 || a.v > 16) return cudaErrorInvalidValue;
  if (perm != nullptr && perm_bytes != 2 && perm_bytes != 4) return cudaErrorInvalidValue;
  const bool hist = hist_applies(a, tokens);
  if (mode == 3 && !hist) return cudaErrorInvalidValue;
  const Params p = make_params(a, tokens, bias, y, workspace, perm_bytes);
  prologue_kernel<T><<<dim3(p.nchunks, tokens), 256, 0, s>>>(p, static_cast<const T*>(x), perm);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  if (mode == 3 || (mode == 0 && hist && hist_auto(a))) return run_hist<T>(p, s);
  const DeviceInfo dev = device_info();
  const int nt = next_pow2(tokens);
  const int64_t cb = codebook_bytes<T>(a);
  const bool fits = cb + min_pipeline_bytes(a, nt) + 1024 <= dev.smem_block_optin;
  const int64_t index_bytes = int64_t{a.groups} * a.num_vectors * a.words * 4;
  bool use_smem = false;
  if (mode == 1) use_smem = fits;
  if (mode == 0) use_smem = fits && cb * dev.sms <= 2 * index_bytes;
  return use_smem ? run<T, true>(p, s) : run<T, false>(p, s);
}

}  // namespace gemv
}  // namespace vptq
