// Host-side launch of the GEMV kernels for one codebook dtype (instantiated per dtype in
// gemv_f16.cu / gemv_bf16.cu so the two compile in parallel).
#pragma once

#include "gemv.cuh"

namespace vptq {
namespace gemv {

struct DeviceInfo {
  int sms = 0, smem_block_optin = 0, smem_sm = 0;
};

inline DeviceInfo device_info() {
  static DeviceInfo cache[64];
  int dev = 0;
  cudaGetDevice(&dev);
  DeviceInfo& d = cache[dev & 63];
  if (d.sms == 0) {
    cudaDeviceGetAttribute(&d.smem_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&d.smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
    cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev);
  }
  return d;
}

inline int64_t round16(int64_t b) { return (b + 15) / 16 * 16; }

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

template <typename T, int V, int NT>
cudaError_t launch_main(Params p, int mode, cudaStream_t s) {
  constexpr int kThreads = Cfg<NT, V>::kThreads;
  constexpr int kWarps = kThreads / 32;
  const DeviceInfo dev = device_info();
  const LayerArgs& a = p.a;
  const int64_t base = int64_t{NT} * tile_n<NT>() * 4 + int64_t{kWarps} * NT * V * 4;
  const int64_t cb = codebook_bytes<T>(a);
  const bool fits = cb + base + 1024 <= dev.smem_block_optin;
  const int64_t index_bytes = int64_t{a.groups} * a.num_vectors * a.words * 4;
  bool use_smem = false;
  if (mode == 1) use_smem = fits;
  if (mode == 0) use_smem = fits && cb * dev.sms <= 2 * index_bytes;
  const int64_t bytes = base + (use_smem ? cb : 0);
  const int R = a.num_vectors;
  int S = 1;
  int grid = 0;
  if (use_smem) {
    const int by_smem = static_cast<int>(dev.smem_sm / (bytes + 1024));
    const int bps = max(1, min(by_smem, 2048 / kThreads));
    const int cap = dev.sms * bps;
    while (S < kWarps && (R + kWarps / S - 1) / (kWarps / S) < cap) S <<= 1;
    const int nrb = (R + kWarps / S - 1) / (kWarps / S);
    grid = min(nrb, cap);
  } else {
    const int target = dev.sms * 16;  // a block's worth of warps per SM
    while (S < kWarps && R * S < target) S <<= 1;
    grid = (R + kWarps / S - 1) / (kWarps / S);
  }
  p.splits = S;
  p.cb_smem = use_smem ? 1 : 0;
  auto kern = main_kernel<T, V, NT>;
  if (bytes > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes));
    if (e != cudaSuccess) return e;
  }
  kern<<<grid, kThreads, bytes, s>>>(p);
  return cudaGetLastError();
}

template <typename T, int V>
cudaError_t launch_v(const Params& p, int mode, cudaStream_t s) {
  switch (next_pow2(p.tokens)) {
    case 1: return launch_main<T, V, 1>(p, mode, s);
    case 2: return launch_main<T, V, 2>(p, mode, s);
    case 4: return launch_main<T, V, 4>(p, mode, s);
    case 8: return launch_main<T, V, 8>(p, mode, s);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_typed(const LayerArgs& a, const void* x, int tokens, const int32_t* perm,
                         const void* bias, void* y, float* workspace, int mode,
                         cudaStream_t s) {
  if (tokens < 1 || tokens > 8 || a.v < 1 || a.v > 16) return cudaErrorInvalidValue;
  Params p;
  p.a = a;
  p.tokens = tokens;
  p.nchunks = (a.cols + kTile - 1) / kTile;
  p.xs = workspace;
  p.xbias = workspace + int64_t{tokens} * a.cols;
  p.bias = bias;
  p.y = y;
  const int tb = a.index_bits + a.res_bits;
  p.magic = ((uint64_t{1} << 32) + tb - 1) / tb;
  prologue_kernel<T><<<dim3(p.nchunks, tokens), 256, 0, s>>>(p, static_cast<const T*>(x), perm);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  switch (a.v) {
    case 1: return launch_v<T, 1>(p, mode, s);
    case 2: return launch_v<T, 2>(p, mode, s);
    case 3: return launch_v<T, 3>(p, mode, s);
    case 4: return launch_v<T, 4>(p, mode, s);
    case 5: return launch_v<T, 5>(p, mode, s);
    case 6: return launch_v<T, 6>(p, mode, s);
    case 7: return launch_v<T, 7>(p, mode, s);
    case 8: return launch_v<T, 8>(p, mode, s);
    case 9: return launch_v<T, 9>(p, mode, s);
    case 10: return launch_v<T, 10>(p, mode, s);
    case 11: return launch_v<T, 11>(p, mode, s);
    case 12: return launch_v<T, 12>(p, mode, s);
    case 13: return launch_v<T, 13>(p, mode, s);
    case 14: return launch_v<T, 14>(p, mode, s);
    case 15: return launch_v<T, 15>(p, mode, s);
    case 16: return launch_v<T, 16>(p, mode, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace gemv
}  // namespace vptq
