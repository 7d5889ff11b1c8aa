// Host-side launch of the GEMV kernels. The kernels of one codebook dtype and codebook
// placement (shared memory or L1/L2) are instantiated in their own translation unit
// (gemv_{f16,bf16}{,_l2}.cu) so the four compile in parallel.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <mutex>

#include "gemv.cuh"

namespace vptq {
namespace gemv {

struct DeviceInfo {
  int id = 0, sms = 0, smem_block_optin = 0, smem_sm = 0;
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

extern template cudaError_t run<__half, true>(const Params&, cudaStream_t);
extern template cudaError_t run<__half, false>(const Params&, cudaStream_t);
extern template cudaError_t run<__nv_bfloat16, true>(const Params&, cudaStream_t);
extern template cudaError_t run<__nv_bfloat16, false>(const Params&, cudaStream_t);

// Prologue, then the main kernel with the codebooks in shared memory (mode 1, or mode 0
// when they fit and staging them per block costs less than the index stream) or in L2.
template <typename T>
cudaError_t launch_typed(const LayerArgs& a, const void* x, int tokens, const void* perm,
                         int perm_bytes, const void* bias, void* y, float* workspace, int mode,
                         cudaStream_t s) {
  if (tokens < 1 || tokens > 8 || a.v < 1 || a.v > 16) return cudaErrorInvalidValue;
  if (perm != nullptr && perm_bytes != 2 && perm_bytes != 4) return cudaErrorInvalidValue;
  Params p;
  p.a = a;
  p.tokens = tokens;
  p.nchunks = (a.cols + kTile - 1) / kTile;
  p.xs = workspace;
  p.xbias = workspace + int64_t{tokens} * a.cols;
  p.bias = bias;
  p.y = y;
  p.splits = 1;
  p.tile = 128;
  p.stages = 2;
  p.perm_u16 = perm_bytes == 2 ? 1 : 0;
  // 16-byte copies need 16-byte aligned rows: whole multiples of 4 words / floats
  p.words_vec = (a.words % 4 == 0 && reinterpret_cast<uintptr_t>(a.indices) % 16 == 0) ? 1 : 0;
  p.x_vec = (a.cols % 4 == 0 && a.outlier_size % 4 == 0 && a.group_size % 4 == 0) ? 1 : 0;
  prologue_kernel<T><<<dim3(p.nchunks, tokens), 256, 0, s>>>(p, static_cast<const T*>(x), perm);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
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
