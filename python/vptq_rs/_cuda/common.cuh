// Device helpers shared by the vptq-rs kernels: dtype conversion, aligned vector loads,
// and decoding of FORMAT.md's LSB-first packed code streams.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace vptq {

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// Round-to-nearest-even, as torch's .to(dtype) does, so dequant stays bit-exact.
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Loads V consecutive elements of T with the widest access the entry alignment allows:
// an entry starts at a multiple of V*sizeof(T) bytes from a 16-byte aligned base.
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[V]) {
  constexpr int kBytes = V * static_cast<int>(sizeof(T));
  constexpr int kAlign = kBytes % 16 == 0 ? 16
                         : kBytes % 8 == 0 ? 8
                         : kBytes % 4 == 0 ? 4
                                           : static_cast<int>(sizeof(T));
  using Chunk = std::conditional_t<
      kAlign == 16, uint4,
      std::conditional_t<kAlign == 8, uint2,
                         std::conditional_t<kAlign == 4, uint32_t, uint16_t>>>;
  constexpr int kChunks = kBytes / kAlign;
  union {
    Chunk c[kChunks];
    T t[V];
  } u;
  const Chunk* src = reinterpret_cast<const Chunk*>(p);
#pragma unroll
  for (int i = 0; i < kChunks; ++i) u.c[i] = src[i];
#pragma unroll
  for (int l = 0; l < V; ++l) out[l] = to_f(u.t[l]);
}

// One codebook row held as raw words, so a gather can be issued long before its use.
template <typename T, int V>
struct Entry {
  static constexpr int kBytes = V * static_cast<int>(sizeof(T));
  static constexpr int kAlign = kBytes % 16 == 0 ? 16
                                : kBytes % 8 == 0 ? 8
                                : kBytes % 4 == 0 ? 4
                                                  : static_cast<int>(sizeof(T));
  using Chunk = std::conditional_t<
      kAlign == 16, uint4,
      std::conditional_t<kAlign == 8, uint2,
                         std::conditional_t<kAlign == 4, uint32_t, uint16_t>>>;
  static constexpr int kChunks = kBytes / kAlign;
  union {
    Chunk c[kChunks];
    T t[V];
  } u;
  __device__ __forceinline__ void load(const T* p) {
    const Chunk* src = reinterpret_cast<const Chunk*>(p);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) u.c[i] = src[i];
  }
  // read-only path (ld.global.nc) for codebooks that stay in global memory
  __device__ __forceinline__ void load_global(const T* p) {
    const Chunk* src = reinterpret_cast<const Chunk*>(p);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) u.c[i] = __ldg(src + i);
  }
  __device__ __forceinline__ void get(float (&out)[V]) const {
    if constexpr (std::is_same_v<T, __nv_bfloat16> && kBytes % 4 == 0) {
      // bf16 is the top half of an fp32: one shift or AND a value, where the compiler
      // extracts the high half first (PRMT, then a shift)
      const uint32_t* w = reinterpret_cast<const uint32_t*>(u.c);
#pragma unroll
      for (int l = 0; l < V; ++l) {
        out[l] = __uint_as_float(l % 2 ? w[l / 2] & 0xffff0000u : w[l / 2] << 16);
      }
    } else {
#pragma unroll
      for (int l = 0; l < V; ++l) out[l] = to_f(u.t[l]);
    }
  }
};

// Code j of a packed row (tb bits each, LSB first, tb <= 32); words has nwords entries.
__device__ __forceinline__ uint32_t read_code(const int32_t* words, int nwords, int64_t j,
                                              int tb) {
  const int64_t bit = j * tb;
  const int w = static_cast<int>(bit >> 5);
  const int off = static_cast<int>(bit & 31);
  const uint64_t lo = static_cast<uint32_t>(words[w]);
  const uint64_t hi = (w + 1 < nwords) ? static_cast<uint32_t>(words[w + 1]) : 0u;
  const uint64_t window = lo | (hi << 32);
  return static_cast<uint32_t>((window >> off) & ((uint64_t{1} << tb) - 1));
}

// floor(n / d) for n < 2^27 with magic = ceil(2^32 / d) (d <= 32).
__device__ __forceinline__ uint32_t fast_div(uint32_t n, uint64_t magic) {
  return static_cast<uint32_t>((static_cast<uint64_t>(n) * magic) >> 32);
}

// cp.async: global -> shared copies that bypass registers (sm_80+), shared by the GEMV
// pipeline and the tiled k-means centroid staging
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src));
}
// The first `words` 4-byte items of a 16-byte slot (16-byte aligned on both sides), the rest
// zero-filled. A partial 16-byte copy (src-size < 16) reads only what it is told, but
// compute-sanitizer counts it as a 16-byte read, past the end of a short allocation: the
// tail goes by 4-byte copies instead.
__device__ __forceinline__ void cp_async_upto16(uint32_t* dst, const uint32_t* src, int words) {
  if (words >= 4) {
    cp_async16(dst, src);
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    if (e < words) {
      cp_async4(dst + e, src + e);
    } else {
      dst[e] = 0u;
    }
  }
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }


}  // namespace vptq
