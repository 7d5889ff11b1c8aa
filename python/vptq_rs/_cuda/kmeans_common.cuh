// Helpers shared by the two k-means assignment designs (kmeans_merged.cuh, kmeans_tiled.cuh).
#pragma once

#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <type_traits>

namespace vptq {
namespace km {

constexpr int kSmemBudget = 96 * 1024;  // shared memory per block: two blocks fit on an SM
constexpr int kPts = 4;  // fp32 kernels: points per thread, each centroid load serves 4

inline int sm_count() {
  static int sms[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (sms[dev & 63] == 0) cudaDeviceGetAttribute(&sms[dev & 63], cudaDevAttrMultiProcessorCount, dev);
  return sms[dev & 63];
}

// fn(std::integral_constant<int, d>{}) for d in 1..16: the fp32 kernels are compiled per d
template <typename Fn>
cudaError_t with_dim(int d, Fn&& fn) {
  switch (d) {
#define VPTQ_D(N) \
  case N: return fn(std::integral_constant<int, N>{});
    VPTQ_D(1) VPTQ_D(2) VPTQ_D(3) VPTQ_D(4) VPTQ_D(5) VPTQ_D(6) VPTQ_D(7) VPTQ_D(8)
    VPTQ_D(9) VPTQ_D(10) VPTQ_D(11) VPTQ_D(12) VPTQ_D(13) VPTQ_D(14) VPTQ_D(15) VPTQ_D(16)
#undef VPTQ_D
    default: return cudaErrorInvalidValue;
  }
}

// The assignment kernel for (mode, d): modes 1 and 2 call mma(KS, NP) (KS = 1 for d <= 8, else
// 2; NP = 3 products for mode 1, 1 for mode 2), mode 0 calls simt(D) with D = d; the
// arguments are std::integral_constant, so the callees can pick template instantiations
template <typename Mma, typename Simt>
cudaError_t with_config(int mode, int d, Mma&& mma, Simt&& simt) {
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Three = std::integral_constant<int, 3>;
  if (mode == 1) return d <= 8 ? mma(One{}, Three{}) : mma(Two{}, Three{});
  if (mode == 2) return d <= 8 ? mma(One{}, One{}) : mma(Two{}, One{});
  return with_dim(d, simt);
}

inline int grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t{sm_count()} * 32)));
}

__device__ __forceinline__ uint32_t to_tf32(float v) {
  uint32_t t;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(t) : "f"(v));
  return t;
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d = a * b + (c0, c1, c0, c1): the accumulator's initial value comes from registers that
// stay untouched, so many products can start from the same two values without copies
__device__ __forceinline__ void mma_tf32_from(float (&d)[4], const uint32_t (&a)[4],
                                              const uint32_t (&b)[2], float c0, float c1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%10,%11};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c0), "f"(c1));
}

// fp16 products (tiled mode 3): d = a * b + (c0, c1, c0, c1) with f16 A and B and an fp32
// accumulator; KS = 1 is m16n8k8 (a[0..1], b[0]), KS = 2 is m16n8k16 (a[0..3], b[0..1])
template <int KS>
__device__ __forceinline__ void mma_f16_from(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2], float c0, float c1) {
  if constexpr (KS == 1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%7,%8};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c0), "f"(c1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%10,%11};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c0), "f"(c1));
  }
}

// (lo, hi) as one f16x2 register, lo in the low half (the lower column of a fragment)
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The power-of-two exponent e that maps magnitudes <= amax into [0, 2^8) (2^e * amax < 2^8),
// leaving fp16 (max 65504) room for sums; clamped so that products of two such factors stay
// finite in fp32. 0 when amax is not finite.
__device__ __forceinline__ int f16_scale_exp(float amax) {
  if (!(amax <= FLT_MAX)) return 0;
  int ex = 0;
  frexpf(amax, &ex);  // amax < 2^ex
  return min(60, max(-60, 8 - ex));
}

// Stage centroids [c0, c0 + kc) as fp32 rows of `stride` floats (zero padded) plus norms;
// slots past k get norm +inf so they never win.
__device__ inline void stage_chunk(const float* __restrict__ cent, int k, int d, int c0, int kc,
                            int stride, bool tf32, float* s_c, float* s_n,
                            float* s_lo = nullptr) {
  for (int i = threadIdx.x; i < kc * stride; i += blockDim.x) {
    const int r = i / stride;
    const int col = i - r * stride;
    float v = 0.f;
    if (c0 + r < k && col < d) v = cent[int64_t{c0 + r} * d + col];
    if (tf32) {  // split v = hi + lo, both TF32 (3xTF32 keeps ~fp32 accuracy)
      const uint32_t hi = to_tf32(v);
      s_lo[i] = __uint_as_float(to_tf32(v - __uint_as_float(hi)));
      v = __uint_as_float(hi);
    }
    s_c[i] = v;
  }
  for (int r = threadIdx.x; r < kc; r += blockDim.x) {
    float nrm = INFINITY;
    if (c0 + r < k) {
      nrm = 0.f;
      for (int col = 0; col < d; ++col) {
        const float v = cent[int64_t{c0 + r} * d + col];
        nrm = fmaf(v, v, nrm);
      }
    }
    s_n[r] = nrm;
  }
}


// fp32 kernels: this thread's kPts points (i = base + q * step), stored as -2 x, with their
// running best (score, index) reset
template <int D>
__device__ __forceinline__ void load_points(const float* __restrict__ x, int64_t n, int64_t base,
                                            int step, float (&m2x)[kPts][D],
                                            float (&best)[kPts], int (&bi)[kPts]) {
#pragma unroll
  for (int q = 0; q < kPts; ++q) {
    const int64_t i = base + int64_t{q} * step;
#pragma unroll
    for (int c = 0; c < D; ++c) m2x[q][c] = i < n ? -2.f * x[i * D + c] : 0.f;
    best[q] = INFINITY;
    bi[q] = 0;
  }
}

// fp32 kernels: scores |c|^2 - 2 x.c of nc staged centroids (rows s_c, norms s_n) for the
// thread's points; a strictly lower score takes index j0 + j, so ties keep the lowest
template <int D>
__device__ __forceinline__ void score_chunk(const float* s_c, const float* s_n, int nc, int j0,
                                            const float (&m2x)[kPts][D], float (&best)[kPts],
                                            int (&bi)[kPts]) {
  for (int j = 0; j < nc; ++j) {
    float cv[D];
#pragma unroll
    for (int c = 0; c < D; ++c) cv[c] = s_c[j * D + c];
    const float nrm = s_n[j];
#pragma unroll
    for (int q = 0; q < kPts; ++q) {
      float s = nrm;
#pragma unroll
      for (int c = 0; c < D; ++c) s = fmaf(m2x[q][c], cv[c], s);
      if (s < best[q]) {
        best[q] = s;
        bi[q] = j0 + j;
      }
    }
  }
}

// Tensor-core kernels: a warp's A fragments (mma m16n8k8 row layout, lane = 4 g + t) for the
// kMt 16-point m-tiles from row m0: -2 x as TF32 (hi) and, for 3 products, the TF32 rest
// (lo). KS k-steps of 8 dimensions; columns past d and rows past n are zero.
template <int KS, int NP, int kMt>
__device__ __forceinline__ void load_a_frags(const float* __restrict__ x, int64_t n, int d,
                                             int64_t m0, int g, int t,
                                             uint32_t (&a)[kMt][KS][4],
                                             uint32_t (&al)[NP == 3 ? kMt : 1][KS][4]) {
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    const int64_t r0 = m0 + mt * 16 + g;
    const int64_t r1 = r0 + 8;
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const int ca = t + 8 * s;
      const int cb = ca + 4;
      const float v[4] = {r0 < n && ca < d ? -2.f * x[r0 * d + ca] : 0.f,
                          r1 < n && ca < d ? -2.f * x[r1 * d + ca] : 0.f,
                          r0 < n && cb < d ? -2.f * x[r0 * d + cb] : 0.f,
                          r1 < n && cb < d ? -2.f * x[r1 * d + cb] : 0.f};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        a[mt][s][e] = to_tf32(v[e]);
        if (NP == 3) al[NP == 3 ? mt : 0][s][e] = to_tf32(v[e] - __uint_as_float(a[mt][s][e]));
      }
    }
  }
}

// Tensor-core kernels, fp16 (mode 3): a warp's A fragments (m16n8k8 for KS = 1, m16n8k16
// for KS = 2; register 2 s + h holds row g + 8 h, columns 2 t + 8 s and the next) for the kMt
// m-tiles from row m0: -sx x in fp16, sx a power of two; columns past d, rows past n zero.
template <int KS, int kMt>
__device__ __forceinline__ void load_a_frags_f16(const float* __restrict__ x, int64_t n, int d,
                                                 int64_t m0, int g, int t, float sx,
                                                 uint32_t (&a)[kMt][4]) {
  auto at = [&](int64_t r, int c) { return r < n && c < d ? -sx * x[r * d + c] : 0.f; };
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
    for (int s = 0; s < KS; ++s)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = m0 + mt * 16 + g + 8 * h;
        const int c = 2 * t + 8 * s;
        a[mt][2 * s + h] = pack_f16x2(at(r, c), at(r, c + 1));
      }
}

}  // namespace km
}  // namespace vptq
