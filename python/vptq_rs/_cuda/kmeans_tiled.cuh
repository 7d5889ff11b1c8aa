// k-means assignment, "tiled" design: a block keeps a tile of points (1024 for fp32 and one
// TF32 product) in registers and streams every centroid past it through shared memory,
// chunk by chunk, so a point's running best never leaves its thread: no atomics, no merge
// pass. Re-staging the centroids for each tile reads about 36 bytes per centroid from L2
// per tile (2.4 MB at k = 65,536), small next to the distance work. The score is
// |c|^2 - 2 x.c.
// - mode 0 (fp32, CUDA cores): exact fp32 scores, ties to the lowest index; the same labels
//   as the merged design.
// - modes 1 and 2 (TF32 tensor cores, mma.sync m16n8k8 with |c|^2 as the accumulator's
//   initial value; 3 split products or one): keeping an index beside every running minimum
//   costs more than the minimum itself (the merged design's inner loop spends ~22 SASS
//   instructions per mma on it), so a lane keeps only the minimum over groups of kGroup
//   8-centroid steps and which group held it. The accumulators start from |c|^2 plus the
//   warp's largest |x|^2, which makes every score non-negative, so two scores and the
//   running minimum meet in one 3-way integer min (VIMNMX3). The quad's best group leaves
//   2 * kGroup candidate centroids per point; the final pass picks the one nearest in exact
//   fp32 (the offset costs the scores ~6e-8 of the warp's max |x|^2 in fp32 rounding; the
//   re-ranking is exact).
// - mode 3 (one fp16 product, mma.sync m16n8k8 / m16n8k16 f16): fp16 has TF32's 11-bit
//   significand, and its products run at twice TF32's tensor-core rate (one m16n8k16 covers
//   d <= 16, where TF32 needs two m16n8k8). Its exponent range is narrow, so points and
//   centroids are scaled by powers of two (exact) below 2^8: centroids by one factor sc per
//   call (their scores are compared with one another), a warp's points by sx from the warp's
//   max |x|^2. The accumulator then holds sx sc / 2 times the mode-2 score: the same order,
//   so the integer min, the groups and the exact re-ranking are unchanged.
#pragma once

#include <climits>
#include <cstdlib>

#include "common.cuh"
#include "kmeans_common.cuh"

namespace vptq {
namespace km {
namespace tiled {

constexpr int kThreads = 256;
constexpr int kGroup = 8;  // 8-centroid steps per group in the tensor-core kernel

// ---- mode 0: exact fp32 on CUDA cores -------------------------------------------------
template <int D>
__global__ void __launch_bounds__(kThreads, 2) assign_simt(const float* __restrict__ x, int64_t n,
                                                           const float* __restrict__ cent, int k,
                                                           int kc, int32_t* __restrict__ labels) {
  extern __shared__ __align__(16) float sm[];
  float* s_c = sm;
  float* s_n = sm + kc * D;
  const int64_t tile = int64_t{kThreads} * kPts;
  const int64_t ntiles = (n + tile - 1) / tile;
  for (int64_t tb = blockIdx.x; tb < ntiles; tb += gridDim.x) {
    float m2x[kPts][D];
    float best[kPts];
    int bi[kPts];
    load_points<D>(x, n, tb * tile + threadIdx.x, kThreads, m2x, best, bi);
    for (int c0 = 0; c0 < k; c0 += kc) {
      const int nc = min(kc, k - c0);
      __syncthreads();  // the previous chunk is consumed
      stage_chunk(cent, k, D, c0, nc, D, false, s_c, s_n);
      __syncthreads();
      score_chunk<D>(s_c, s_n, nc, c0, m2x, best, bi);
    }
#pragma unroll
    for (int q = 0; q < kPts; ++q) {
      const int64_t i = tb * tile + q * kThreads + threadIdx.x;
      if (i < n) labels[i] = bi[q];
    }
  }
}

template <int D>
cudaError_t run_simt(const float* x, int64_t n, const float* cent, int k, int32_t* labels,
                     cudaStream_t s) {
  int kc = kSmemBudget / ((D + 1) * 4) / 64 * 64;
  kc = std::min(kc, (k + 7) / 8 * 8);
  const size_t smem = static_cast<size_t>(kc) * (D + 1) * 4;
  const int64_t ntiles = (n + kThreads * kPts - 1) / (kThreads * kPts);
  auto kern = assign_simt<D>;
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const int grid = static_cast<int>(std::min<int64_t>(ntiles, int64_t{1} << 30));
  kern<<<grid, kThreads, smem, s>>>(x, n, cent, k, kc, labels);
  return cudaGetLastError();
}

// ---- modes 1-3: tensor cores ----------------------------------------------------------------
// KS: k-steps of 8 dimensions (d <= 8 * KS); NP: products per step (3 = split hi/lo, 1 = hi);
// H: fp16 operands (mode 3, NP = 1). Centroids are pre-arranged in global memory in mma
// fragment order, one record per step of 8 centroids: TF32 hi [32 lanes][2 KS], (NP == 3)
// lo [32 lanes][2 KS], or fp16 pairs [32 lanes][KS]; then norms [8]. A lane's B fragment is
// then one vector load from shared memory, free of bank conflicts, and staging a chunk is a
// straight copy.
template <int KS, int NP, bool H>
__host__ __device__ constexpr int step_floats() {
  return H ? 32 * KS + 8 : 64 * KS * (NP == 3 ? 2 : 1) + 8;
}
template <int KS, int NP, bool H>
__host__ __device__ constexpr int norm_offset() { return step_floats<KS, NP, H>() - 8; }

// 16-point m-tiles per warp: independent accumulators hide the mma latency (8 warps per
// SM give little else to switch to); an fp16 step is one mma whatever KS
template <int KS, int NP, bool H>
__host__ __device__ constexpr int m_tiles() { return H ? 8 : (NP == 1 ? 8 : 4) / KS; }

// |c|^2 of centroid j (fp32, exact order), +inf past k
__device__ __forceinline__ float centroid_norm(const float* __restrict__ cent, int k, int d, int j) {
  if (j >= k) return INFINITY;
  float nrm = 0.f;
  for (int col = 0; col < d; ++col) nrm = fmaf(cent[int64_t{j} * d + col], cent[int64_t{j} * d + col], nrm);
  return nrm;
}

// *amax = max |v| over v [n] (*amax zeroed before; non-negative floats order like their bits)
__global__ void abs_max(const float* __restrict__ v, int64_t n, int* __restrict__ amax) {
  float m = 0.f;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    m = fmaxf(m, fabsf(v[i]));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) atomicMax(amax, __float_as_int(m));
}

// One thread per (step, lane): step records for centroids [0, nsteps * 8). Slots past k are
// zero with norm +inf so they never win. TF32: column t + 4 h + 8 s as hi (and lo);
// fp16 (H): sc c in pairs, columns 2 t + 8 s and the next, sc = 2^f16_scale_exp(*amax).
// Norms unscaled.
template <int KS, int NP, bool H>
__global__ void prep_fragments(const float* __restrict__ cent, int k, int d, int nsteps,
                               const int* __restrict__ amax, float* __restrict__ out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= int64_t{nsteps} * 32) return;
  const int step = static_cast<int>(i >> 5);
  const int lane = static_cast<int>(i & 31);
  const int g = lane >> 2;
  const int t = lane & 3;
  const int j = step * 8 + g;
  float* rec = out + int64_t{step} * step_floats<KS, NP, H>();
  if constexpr (H) {
    const float sc = ldexpf(1.f, f16_scale_exp(__int_as_float(*amax)));
    auto at = [&](int col) { return j < k && col < d ? sc * cent[int64_t{j} * d + col] : 0.f; };
#pragma unroll
    for (int s = 0; s < KS; ++s)
      reinterpret_cast<uint32_t*>(rec)[lane * KS + s] =
          pack_f16x2(at(2 * t + 8 * s), at(2 * t + 8 * s + 1));
  } else {
#pragma unroll
    for (int s = 0; s < KS; ++s)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int col = t + 4 * h + 8 * s;
        const float v = j < k && col < d ? cent[int64_t{j} * d + col] : 0.f;
        const uint32_t hi = to_tf32(v);
        rec[lane * 2 * KS + 2 * s + h] = __uint_as_float(hi);
        if (NP == 3) rec[64 * KS + lane * 2 * KS + 2 * s + h] = __uint_as_float(to_tf32(v - __uint_as_float(hi)));
      }
  }
  if (t == 0) rec[norm_offset<KS, NP, H>() + g] = centroid_norm(cent, k, d, j);
}

// a lane's B fragments of one step: one 8- or 16-byte load (consecutive lanes, no conflicts)
template <int KS>
__device__ __forceinline__ void load_frag(const float* p, uint32_t (&b)[KS][2]) {
  if constexpr (KS == 1) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    b[0][0] = __float_as_uint(v.x);
    b[0][1] = __float_as_uint(v.y);
  } else {
    const float4 v = *reinterpret_cast<const float4*>(p);
    b[0][0] = __float_as_uint(v.x);
    b[0][1] = __float_as_uint(v.y);
    b[1][0] = __float_as_uint(v.z);
    b[1][1] = __float_as_uint(v.w);
  }
}

// max |x|^2 over the warp's 16 kMt rows from m0 (lane 4 g + t sums columns t, t+4, ...; the
// quad completes a row), in every lane
template <int kMt>
__device__ __forceinline__ float warp_max_sq_norm(const float* __restrict__ x, int64_t n, int d,
                                                  int64_t m0, int g, int t) {
  float m = 0.f;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = m0 + mt * 16 + g + 8 * h;
      float s = 0.f;
      if (r < n)
        for (int c = t; c < d; c += 4) s = fmaf(x[r * d + c], x[r * d + c], s);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      m = fmaxf(m, s);
    }
#pragma unroll
  for (int o = 4; o < 32; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  return m;
}

// One block of kT threads per SM (a persistent grid): with two, the 128-register cap made
// ptxas copy every accumulator's initial value (~2 extra instructions per mma); ~180
// registers fit one. Chunks
// of centroid records are double buffered, the next one (of this tile or, after the last, the
// first of the next tile) copied in while the current one is used. amax (mode 3): the
// centroids' max |c|, which sets their fp16 scale.
template <int KS, int NP, bool H, int kT>
__global__ void __launch_bounds__(kT, 1) assign_mma(const float* __restrict__ x, int64_t n,
                                                          int d, const float* __restrict__ rec,
                                                          const int* __restrict__ amax,
                                                          int nsteps, int chunk_steps,
                                                          int32_t* __restrict__ cand) {
  constexpr int kSf = step_floats<KS, NP, H>();
  constexpr int kMt = m_tiles<KS, NP, H>();
  extern __shared__ __align__(16) float sm[];
  const int nchunks = (nsteps + chunk_steps - 1) / chunk_steps;
  // buffer b starts at sm + b * second (one buffer when a chunk holds every centroid)
  const int second = nchunks > 1 ? chunk_steps * kSf : 0;
  auto stage = [&](int ch, float* dst) {
    const int cs = ch * chunk_steps;
    const int nv = min(chunk_steps, nsteps - cs) * kSf / 4;
    const float* src = rec + int64_t{cs} * kSf;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) cp_async16(dst + 4 * i, src + 4 * i);
    cp_commit();
  };
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int ec = H ? f16_scale_exp(__int_as_float(*amax)) : 0;
  constexpr int64_t kWarpPts = 16 * kMt;
  constexpr int64_t kTile = kWarpPts * (kT / 32);
  const int64_t ntiles = (n + kTile - 1) / kTile;
  if (blockIdx.x < ntiles) stage(0, sm);
  int it = 0;  // chunks used so far by this block: buffer it & 1
  for (int64_t tb = blockIdx.x; tb < ntiles; tb += gridDim.x) {
    const int64_t m0 = tb * kTile + warp * kWarpPts;
    uint32_t a[kMt][KS][4];
    uint32_t al[NP == 3 ? kMt : 1][KS][4];
    uint32_t ah[H ? kMt : 1][4];
    if constexpr (!H) load_a_frags<KS, NP, kMt>(x, n, d, m0, g, t, a, al);
    // shift >= |x|^2 of every row of this warp: scores |c|^2 + shift - 2 x.c =
    // |x - c|^2 + (shift - |x|^2) are then non-negative and compare as integers (below).
    // Per warp, so that a far outlier coarsens the fp32 scores of 127 other points at most.
    const float shift = warp_max_sq_norm<kMt>(x, n, d, m0, g, t);
    // scores are kept times ks (mode 3: sx sc / 2, a power of two; else 1)
    const int ex = H ? f16_scale_exp(sqrtf(shift)) : 0;
    const float ks = H ? ldexpf(1.f, ex + ec - 1) : 1.f;
    const float shift_k = shift * ks;
    if constexpr (H) load_a_frags_f16<KS, kMt>(x, n, d, m0, g, t, ldexpf(1.f, ex), ah);
    int best[kMt][2];  // scores as int bits: non-negative floats order like their bits
    int bgrp[kMt][2];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      best[mt][0] = best[mt][1] = INT_MAX;
      bgrp[mt][0] = bgrp[mt][1] = 0;
    }
    for (int ch = 0; ch < nchunks; ++ch, ++it) {
      const int cs = ch * chunk_steps;
      const int ns = min(chunk_steps, nsteps - cs);  // a multiple of kGroup
      cp_wait<0>();  // this chunk's copy is done
      // ... for every thread, and every thread is done with the other buffer
      __syncthreads();
      if (nchunks > 1 && (ch + 1 < nchunks || tb + gridDim.x < ntiles))
        stage(ch + 1 < nchunks ? ch + 1 : 0, sm + ((it + 1) & 1) * second);
      const float* sm_c = sm + (it & 1) * second;
      for (int s0 = 0; s0 < ns; s0 += kGroup) {
        int gm[kMt][2];
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) gm[mt][0] = gm[mt][1] = INT_MAX;
#pragma unroll
        for (int u = 0; u < kGroup; ++u) {
          const float* st = sm_c + (s0 + u) * kSf;
          uint32_t b[KS][2], bl[KS][2], bh[2];
          if constexpr (H) {
            if constexpr (KS == 1) {
              bh[0] = reinterpret_cast<const uint32_t*>(st)[lane];
            } else {
              const uint2 v = reinterpret_cast<const uint2*>(st)[lane];
              bh[0] = v.x;
              bh[1] = v.y;
            }
          } else {
            load_frag<KS>(st + lane * 2 * KS, b);
            if (NP == 3) load_frag<KS>(st + 64 * KS + lane * 2 * KS, bl);
          }
          const float2 nn = *reinterpret_cast<const float2*>(st + norm_offset<KS, NP, H>() + 2 * t);
          const float n0 = H ? fmaf(nn.x, ks, shift_k) : nn.x + shift;
          const float n1 = H ? fmaf(nn.y, ks, shift_k) : nn.y + shift;
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
            float c[4];
            if constexpr (H) {
              mma_f16_from<KS>(c, ah[mt], bh, n0, n1);
            } else {
#pragma unroll
              for (int s = 0; s < KS; ++s) {  // small terms first: lo*hi, hi*lo, then hi*hi
                if (NP == 3) {
                  if (s == 0) {
                    mma_tf32_from(c, al[NP == 3 ? mt : 0][s], b[s], n0, n1);
                  } else {
                    mma_tf32(c, al[NP == 3 ? mt : 0][s], b[s]);
                  }
                  mma_tf32(c, a[mt][s], bl[s]);
                  mma_tf32(c, a[mt][s], b[s]);
                } else if (s == 0) {
                  mma_tf32_from(c, a[mt][s], b[s], n0, n1);
                } else {
                  mma_tf32(c, a[mt][s], b[s]);
                }
              }
            }
            // one 3-way integer min per two scores (VIMNMX3 on sm_90); a score that rounds
            // below zero is a near-exact match and wins, as it should
            gm[mt][0] = __vimin3_s32(gm[mt][0], __float_as_int(c[0]), __float_as_int(c[1]));
            gm[mt][1] = __vimin3_s32(gm[mt][1], __float_as_int(c[2]), __float_as_int(c[3]));
          }
        }
        const int grp = (cs + s0) / kGroup;
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            if (gm[mt][h] < best[mt][h]) {
              best[mt][h] = gm[mt][h];
              bgrp[mt][h] = grp;
            }
      }
    }
    // the four lanes of a quad saw different columns of the same rows: keep the best
    // (score, first candidate) and write the first candidate centroid of its group
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int bs = best[mt][h];
        int bc = bgrp[mt][h] * kGroup * 8 + 2 * t;
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
          const int os = __shfl_xor_sync(0xffffffffu, bs, o);
          const int oc = __shfl_xor_sync(0xffffffffu, bc, o);
          if (os < bs || (os == bs && oc < bc)) {
            bs = os;
            bc = oc;
          }
        }
        const int64_t r = m0 + mt * 16 + g + 8 * h;
        if (t == 0 && r < n) cand[r] = bc;
      }
  }
}

// scratch: (mode 3) 4 floats holding the centroids' max |c| (16-byte aligned records after
// it), then the step records
inline int mma_steps(int k) {
  return ((k + 7) / 8 + kGroup - 1) / kGroup * kGroup;
}
template <int KS, int NP, bool H>
size_t mma_scratch_floats(int k) {
  return (H ? 4 : 0) + static_cast<size_t>(mma_steps(k)) * step_floats<KS, NP, H>();
}

// Threads per block of the fp16 d <= 8 kernel: 256 (the timed default), or 384 with
// VPTQ_RS_KMEANS_THREADS=384. At 160 registers a thread 12 warps fit an SM, 3 per scheduler
// instead of 2 to switch between while products are in flight (the other kernels need ~180
// registers); its labels are the same, its time is not measured yet (benchmarks/gpu_tune.py
// kmeans). Read per call.
inline int f16_threads() {
  const char* e = std::getenv("VPTQ_RS_KMEANS_THREADS");
  return e && std::atoi(e) == 384 ? 384 : 256;
}

template <int KS, int NP, bool H, int kT>
cudaError_t launch_mma(const float* x, int64_t n, int d, const float* rec, const int* amax,
                       int nsteps, int32_t* cand, cudaStream_t s) {
  constexpr int kSf = step_floats<KS, NP, H>();
  // two buffers of up to 96 KB where the device allows (227 KB on an H100)
  int optin = 0, dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  const int budget = std::min(kSmemBudget, optin / 2);
  const int chunk_steps = std::min(nsteps, budget / (kSf * 4) / kGroup * kGroup);
  const int nbuf = chunk_steps < nsteps ? 2 : 1;
  const size_t smem = static_cast<size_t>(nbuf) * chunk_steps * kSf * 4;
  constexpr int64_t kTile = 16 * m_tiles<KS, NP, H>() * (kT / 32);
  const int64_t ntiles = (n + kTile - 1) / kTile;
  auto kern = assign_mma<KS, NP, H, kT>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const int grid = static_cast<int>(std::min<int64_t>(ntiles, sm_count()));
  kern<<<grid, kT, smem, s>>>(x, n, d, rec, amax, nsteps, chunk_steps, cand);
  return cudaGetLastError();
}

template <int KS, int NP, bool H>
cudaError_t run_mma(const float* x, int64_t n, int d, const float* cent, int k, float* scratch,
                    int32_t* cand, cudaStream_t s) {
  const int nsteps = mma_steps(k);
  int* amax = H ? reinterpret_cast<int*>(scratch) : nullptr;
  float* rec = scratch + (H ? 4 : 0);
  const int pgrid = (nsteps * 32 + 255) / 256;
  if constexpr (H) {  // the centroids' fp16 scale
    const cudaError_t e = cudaMemsetAsync(amax, 0, sizeof(int), s);
    if (e != cudaSuccess) return e;
    abs_max<<<grid_for(int64_t{k} * d, 256), 256, 0, s>>>(cent, int64_t{k} * d, amax);
  }
  prep_fragments<KS, NP, H><<<pgrid, 256, 0, s>>>(cent, k, d, nsteps, amax, rec);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  if constexpr (H && KS == 1) {
    if (f16_threads() == 384) return launch_mma<KS, NP, H, 384>(x, n, d, rec, amax, nsteps, cand, s);
  }
  return launch_mma<KS, NP, H, 256>(x, n, d, rec, amax, nsteps, cand, s);
}

inline size_t scratch_floats(int k, int d, int mode) {
  if (mode == 1) return d <= 8 ? mma_scratch_floats<1, 3, false>(k) : mma_scratch_floats<2, 3, false>(k);
  if (mode == 2) return d <= 8 ? mma_scratch_floats<1, 1, false>(k) : mma_scratch_floats<2, 1, false>(k);
  if (mode == 3) return d <= 8 ? mma_scratch_floats<1, 1, true>(k) : mma_scratch_floats<2, 1, true>(k);
  return 0;
}

// cand int32 [n]: the label (mode 0) or the first of the candidates cand + 8 s + e,
// s < kGroup, e < 2 (modes 1-3); scratch: float [scratch_floats(k, d, mode)].
inline cudaError_t assign(const float* x, int64_t n, int d, const float* centroids, int k,
                          int mode, float* scratch, int32_t* cand, cudaStream_t stream) {
  if (mode == 3)
    return d <= 8 ? run_mma<1, 1, true>(x, n, d, centroids, k, scratch, cand, stream)
                  : run_mma<2, 1, true>(x, n, d, centroids, k, scratch, cand, stream);
  return with_config(
      mode, d,
      [&](auto ks, auto np) {
        return run_mma<decltype(ks)::value, decltype(np)::value, false>(x, n, d, centroids, k,
                                                                        scratch, cand, stream);
      },
      [&](auto dim) { return run_simt<decltype(dim)::value>(x, n, centroids, k, cand, stream); });
}

}  // namespace tiled
}  // namespace km
}  // namespace vptq
