// Fused dequant-GEMV for 1-8 tokens reading FORMAT.md's packed words directly.
//
// y[t, r] = sum_p Q[r, p] * xs[t, p] + sum_j bias_w[j] x[t, j] + bias[r], where Q is the
// codebook value at permuted column p and xs[t, p] = scale[perm[p]] * x[t, perm[p]]: the
// normalisation folds into the activations (prologue kernel), so the main kernel only
// gathers codebook rows. Each warp owns one vector row (v output rows) and a 1/S slice of
// its packed words; the S partial sums of a row meet in shared memory, so no second
// reduction kernel runs. Codebooks sit in shared memory when they fit (persistent grid,
// staged once per block), else they are read through L1/L2.
#pragma once

#include "common.cuh"
#include "vptq_kernels.h"

namespace vptq {
namespace gemv {

constexpr int kTile = 1024;  // columns per prologue block (bias partial sums)

// activation tile (codes) staged in shared memory per step, and codes decoded per lane
template <int NT>
__host__ __device__ constexpr int tile_n() { return NT <= 2 ? 4096 : 1024; }
template <int V>
__host__ __device__ constexpr int codes_per_lane() { return V <= 8 ? 8 : 4; }

struct Params {
  LayerArgs a;
  const float* xs;      // [T, cols] permuted, scaled activations (fp32)
  const float* xbias;   // [T, nchunks] partial sums of weight_bias[j] * x[t, j]
  const void* bias;     // [rows] or null
  void* y;              // [T, rows]
  int tokens, nchunks, splits, cb_smem;
  uint64_t magic;       // ceil(2^32 / tb)
};

template <int NT, int V>
struct Cfg {
  static constexpr int kThreads = NT * V > 32 ? 256 : 512;
};

// xs[t, p] = x[t, perm[p]] * scale[perm[p]]; xbias[t, chunk] = sum bias_w[j] * x[t, j].
template <typename T>
__global__ void __launch_bounds__(256) prologue_kernel(Params p, const T* __restrict__ x,
                                                       const int32_t* __restrict__ perm) {
  const int t = blockIdx.y;
  const int cols = p.a.cols;
  const int base = blockIdx.x * kTile;
  float acc = 0.f;
  for (int k = threadIdx.x; k < kTile; k += blockDim.x) {
    const int pos = base + k;
    if (pos >= cols) break;
    const int j = perm ? perm[pos] : pos;
    const float xv = to_f(x[int64_t{t} * cols + j]);
    float s = 1.f, b = 0.f;
    if (p.a.weight_scale) {
      s = p.a.norm_dtype == kF32 ? static_cast<const float*>(p.a.weight_scale)[j]
                                 : to_f(static_cast<const T*>(p.a.weight_scale)[j]);
    }
    if (p.a.weight_bias) {
      b = p.a.norm_dtype == kF32 ? static_cast<const float*>(p.a.weight_bias)[j]
                                 : to_f(static_cast<const T*>(p.a.weight_bias)[j]);
    }
    const_cast<float*>(p.xs)[int64_t{t} * cols + pos] = xv * s;
    acc = fmaf(b, xv, acc);
  }
  __shared__ float red[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) const_cast<float*>(p.xbias)[t * p.nchunks + blockIdx.x] = v;
  }
}

template <typename T, int V, int NT>
__global__ void __launch_bounds__(Cfg<NT, V>::kThreads, 1) main_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const LayerArgs& a = p.a;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int S = p.splits;
  const int rows_per_block = nwarps / S;
  const int my_row = warp / S;
  const int split = warp - my_row * S;
  const int tb = a.index_bits + a.res_bits;
  const uint64_t code_mask = (uint64_t{1} << tb) - 1;
  const uint32_t main_mask = (1u << a.index_bits) - 1u;
  const int K = 1 << a.index_bits;
  const int Kr = a.res_bits ? 1 << a.res_bits : 0;
  const bool has_res = a.res_centroids != nullptr;

  // shared memory: [codebooks (optional)] [activation tile NT x kTile] [partials]
  const int64_t cb_elems = int64_t{a.groups} * K * V;
  const int64_t rcb_elems = has_res ? int64_t{a.groups} * Kr * V : 0;
  size_t off = 0;
  const T* cbm = static_cast<const T*>(a.centroids);
  const T* cbr = static_cast<const T*>(a.res_centroids);
  if (p.cb_smem) {
    T* s_cb = reinterpret_cast<T*>(smem);
    const size_t main_bytes = ((cb_elems * sizeof(T)) + 15) / 16 * 16;
    T* s_rcb = reinterpret_cast<T*>(smem + main_bytes);
    // entries are whole multiples of 4 bytes (K even), so copy 4-byte words
    const uint32_t* src = static_cast<const uint32_t*>(a.centroids);
    uint32_t* dst = reinterpret_cast<uint32_t*>(s_cb);
    for (int64_t i = threadIdx.x; i < cb_elems * int64_t{sizeof(T)} / 4; i += blockDim.x)
      dst[i] = src[i];
    if (has_res) {
      src = static_cast<const uint32_t*>(a.res_centroids);
      dst = reinterpret_cast<uint32_t*>(s_rcb);
      for (int64_t i = threadIdx.x; i < rcb_elems * int64_t{sizeof(T)} / 4; i += blockDim.x)
        dst[i] = src[i];
    }
    cbm = s_cb;
    cbr = s_rcb;
    off = main_bytes + ((rcb_elems * sizeof(T)) + 15) / 16 * 16;
  }
  float* s_x = reinterpret_cast<float*>(smem + off);
  float* s_part = s_x + NT * tile_n<NT>();

  const int R = a.num_vectors;
  const int nrb = (R + rows_per_block - 1) / rows_per_block;
  for (int rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
    const int rv = rb * rows_per_block + my_row;
    const bool active = rv < R;
    float acc[NT][V];
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int l = 0; l < V; ++l) acc[t][l] = 0.f;

    // outlier columns: their own codebook and vector length, few of them
    if (active && a.outlier_size > 0) {
      const T* ocb = static_cast<const T*>(a.outlier_centroids);
      for (int c = split * 32 + lane; c < a.outlier_size; c += 32 * S) {
        float xv[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t)
          xv[t] = t < p.tokens ? p.xs[int64_t{t} * a.cols + c] : 0.f;
#pragma unroll
        for (int l = 0; l < V; ++l) {
          const int r = rv * V + l;
          if (r < a.rows) {
            const int oi = static_cast<uint16_t>(
                a.outlier_indices[int64_t{r / a.outlier_v} * a.outlier_size + c]);
            const float val = to_f(ocb[int64_t{oi} * a.outlier_v + r % a.outlier_v]);
#pragma unroll
            for (int t = 0; t < NT; ++t) acc[t][l] = fmaf(val, xv[t], acc[t][l]);
          }
        }
      }
    }

    constexpr int kTileN = tile_n<NT>();
    constexpr int kCodes = codes_per_lane<V>();
    for (int g = 0; g < a.groups; ++g) {
      const int32_t* rowp = a.indices + (int64_t{g} * R + (active ? rv : 0)) * a.words;
      const T* cbg = cbm + int64_t{g} * K * V;
      const T* rcbg = has_res ? cbr + int64_t{g} * Kr * V : nullptr;
      for (int c0 = 0; c0 < a.group_size; c0 += kTileN) {
        const int cn = min(kTileN, a.group_size - c0);
        __syncthreads();  // the previous tile is consumed
        const int64_t xbase = a.outlier_size + int64_t{g} * a.group_size + c0;
        for (int i = threadIdx.x; i < NT * kTileN; i += blockDim.x) {
          const int t = i / kTileN;
          const int c = i - t * kTileN;
          s_x[i] = (t < p.tokens && c < cn) ? p.xs[int64_t{t} * a.cols + xbase + c] : 0.f;
        }
        __syncthreads();
        if (!active) continue;
        // Lanes take consecutive codes (coalesced word reads, mostly L1 hits); kCodes codes
        // per lane are decoded before any codebook row is used, so that many independent
        // gathers are in flight per lane.
        const int cend = c0 + cn;
        const int step = 32 * kCodes * S;
        uint32_t code[kCodes];
#pragma unroll
        for (int u = 0; u < kCodes; ++u) {
          const int c = c0 + split * 32 * kCodes + u * 32 + lane;
          code[u] = c < cend ? read_code(rowp, a.words, c, tb) : 0u;
        }
        for (int cb = c0 + split * 32 * kCodes; cb < cend; cb += step) {
          Entry<T, V> e[kCodes];
          Entry<T, V> re[kCodes];
#pragma unroll
          for (int u = 0; u < kCodes; ++u) {
            e[u].load(cbg + int64_t{code[u] & main_mask} * V);
            if (rcbg) re[u].load(rcbg + int64_t{code[u] >> a.index_bits} * V);
          }
          // the next step's packed words load while this step's rows are gathered
          uint32_t next[kCodes];
#pragma unroll
          for (int u = 0; u < kCodes; ++u) {
            const int c = cb + step + u * 32 + lane;
            next[u] = c < cend ? read_code(rowp, a.words, c, tb) : 0u;
          }
#pragma unroll
          for (int u = 0; u < kCodes; ++u) {
            const int c = cb + u * 32 + lane;
            if (c >= cend) continue;
            float cv[V];
            e[u].get(cv);
            if (rcbg) {
              float rv2[V];
              re[u].get(rv2);
#pragma unroll
              for (int l = 0; l < V; ++l) cv[l] += rv2[l];
            }
#pragma unroll
            for (int t = 0; t < NT; ++t) {
              const float xv = s_x[t * kTileN + (c - c0)];
#pragma unroll
              for (int l = 0; l < V; ++l) acc[t][l] = fmaf(cv[l], xv, acc[t][l]);
            }
          }
#pragma unroll
          for (int u = 0; u < kCodes; ++u) code[u] = next[u];
        }
      }
    }

    // warp reduction, then the S warps of a row meet in shared memory
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int l = 0; l < V; ++l) {
        float v = acc[t][l];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        acc[t][l] = v;
      }
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int l = 0; l < V; ++l) s_part[(warp * NT + t) * V + l] = acc[t][l];
    }
    __syncthreads();
    if (active && split == 0) {
      for (int i = lane; i < NT * V; i += 32) {
        const int t = i / V;
        const int l = i - t * V;
        const int r = rv * V + l;
        if (t >= p.tokens || r >= a.rows) continue;
        float s = 0.f;
        for (int k = 0; k < S; ++k) s += s_part[((warp + k) * NT + t) * V + l];
        if (a.weight_bias) {
          for (int k = 0; k < p.nchunks; ++k) s += p.xbias[t * p.nchunks + k];
        }
        if (p.bias) s += to_f(static_cast<const T*>(p.bias)[r]);
        static_cast<T*>(p.y)[int64_t{t} * a.rows + r] = from_f<T>(s);
      }
    }
  }
}

}  // namespace gemv
}  // namespace vptq
