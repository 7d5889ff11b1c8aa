// Histogram GEMV: one token, codebooks of at most 2^13 entries (main and residual each).
//
// y[r] = sum_p Q[r, p] xs[p] = sum_c h_r[c] C[c], where h_r[c] sums xs[p] over the columns p
// of vector row r whose code is c. The gather kernel (gemv.cuh) reads a V-element codebook
// row per code from shared memory at a random address; Nsight showed 54% of those wavefronts
// to be bank-conflict replays, three 4-byte gathers per v = 6 entry. Here a code costs one
// 4-byte shared-memory atomic add into its row's histogram (two with a residual codebook),
// and the codebooks are read in order, once per block of rows. The dot with the codebooks
// costs in proportion to the bins, so this pays on rows about as wide as the histogram or
// wider (mode 0 asks for at least half as wide: hist_auto in gemv_launch.cuh). Leaner
// variants of the scatter (no per-code branches, rows unrolled by a compile-time count) were
// slower on an H100; README, "What limits the GEMV", has the numbers.
//
// The histograms hold integers: xs becomes fixed point with one power-of-two scale per call,
// chosen from sum |xs| so that no bin can overflow. Integer adds are native shared-memory
// atomics (float ones are compare-and-swap loops on sm_90) and their sums do not depend on
// the order the atomics land in, so the result is bitwise repeatable. The scale is 2^(30-e)
// for sum |xs| in [2^(e-1), 2^e), so the rounding error of a term is at most
// 2^(e-31) <= sum |xs| / 2^30: below an fp16 ulp of the average |xs| for rows up to 2^19
// columns.
//
// A block owns `hist_rows` vector rows and walks the columns in tiles with the gather
// kernel's cp.async pipeline (x tile and the rows' packed words, `stages` tiles ahead); every
// warp takes every row of a slice of the tile, so the activations are converted once per
// block. Then the block dots its histograms with the codebooks (zeroing them for the next
// rows), reduces over its threads and writes y.
#pragma once

#include "gemv.cuh"

namespace vptq {
namespace gemv {

constexpr int kHistThreads = 512;
constexpr int kHistWarps = kHistThreads / 32;
// accumulators per thread in the dot phase (rows x V, padded): reduced across a warp by
// halving, 62 shuffles for all of them where a butterfly per value would take 5 each
constexpr int kHistAcc = 64;
constexpr int kHistMaxBits = 13;  // main and residual codebooks: 8192 bins each at most

template <int V>
__host__ __device__ constexpr int hist_max_rows() {
  return kHistAcc / V < 8 ? kHistAcc / V : 8;
}

__host__ __device__ inline int hist_bins(const LayerArgs& a) {
  return (1 << a.index_bits) + (a.res_centroids ? 1 << a.res_bits : 0);
}

// Shared memory of the histogram kernel: [hist: rows x bins int32] [stages] [warp partials].
__host__ __device__ inline int64_t hist_smem_bytes(const LayerArgs& a, int rows, int tile,
                                                   int stages) {
  const int64_t hist = (int64_t{rows} * hist_bins(a) * 4 + 15) / 16 * 16;
  return hist + stages * stage_floats(1, tile, a.index_bits + a.res_bits, rows) * 4 +
         int64_t{kHistWarps} * kHistAcc * 4;
}

// Lane L ends with the warp sums of a[2L] and a[2L + 1] in a[0] and a[1].
__device__ __forceinline__ void warp_reduce_64(float (&a)[kHistAcc], int lane) {
  halve<32>(a, lane, 16);
  halve<16>(a, lane, 8);
  halve<8>(a, lane, 4);
  halve<4>(a, lane, 2);
  halve<2>(a, lane, 1);
}

template <typename T, int V, bool kRes>
__global__ void __launch_bounds__(kHistThreads, 1) hist_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kRowsMax = hist_max_rows<V>();
  const LayerArgs& a = p.a;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nrows_blk = p.hist_rows;
  const int tb = a.index_bits + a.res_bits;
  const uint32_t code_mask = (1u << tb) - 1u;
  const uint32_t main_mask = (1u << a.index_bits) - 1u;
  const int K = 1 << a.index_bits;
  const int bins = hist_bins(a);
  const int tile = p.tile;
  const int tw = static_cast<int>(tile_words(tile, tb));
  const int row_stride = tw + kWordPad;
  const int64_t stage_sz = stage_floats(1, tile, tb, nrows_blk);
  // two codes from one 32-bit window: any 2*tb <= 32 bits lie within two words
  const bool pairs = 2 * tb <= 32;

  int* s_hist = reinterpret_cast<int*>(smem);
  const int64_t hist_bytes = (int64_t{nrows_blk} * bins * 4 + 15) / 16 * 16;
  float* s_stage = reinterpret_cast<float*>(smem + hist_bytes);
  float* s_red = s_stage + p.stages * stage_sz;

  // Fixed-point scale 2^k with scale * sum|xs| < 2^30: no partial sum of a bin leaves int32.
  float sum_abs = 0.f;
  for (int k = 0; k < p.nchunks; ++k) sum_abs += p.xabs[k];
  const bool finite = isfinite(sum_abs);
  int e = 0;
  frexpf(sum_abs, &e);  // sum_abs < 2^e
  const int k2 = (finite && sum_abs > 0.f) ? min(30 - e, 126) : 0;
  const float scale = ldexpf(1.f, k2);
  const float unscale = ldexpf(1.f, -k2);
  const float poison = finite ? 0.f : sum_abs - sum_abs;  // NaN/inf in x: NaN out, as a dot

  for (int i = threadIdx.x; i < nrows_blk * bins; i += kHistThreads) s_hist[i] = 0;

  const int R = a.num_vectors;
  const int gs = a.group_size;
  const int nsteps = (gs + tile - 1) / tile;
  const int nrb = (R + nrows_blk - 1) / nrows_blk;
  const T* cbm = static_cast<const T*>(a.centroids);
  const T* cbr = static_cast<const T*>(a.res_centroids);

  // Step st of row block blk: stages the activations and words of column tile st.
  auto issue = [&](int blk, int st) {
    if (blk < nrb && st < nsteps) {
      const int r0 = blk * nrows_blk;
      const int nrows = min(nrows_blk, R - r0);
      const int c0 = st * tile;
      const int cn = min(tile, gs - c0);
      float* buf = s_stage + (st % p.stages) * stage_sz;
      stage_copy(reinterpret_cast<uint32_t*>(buf),
                 reinterpret_cast<const uint32_t*>(p.xs + a.outlier_size + c0), cn, tile,
                 p.x_vec);
      const int64_t w0 = int64_t{c0} * tb / 32;
      const int nw = static_cast<int>(min(int64_t{tw}, int64_t{a.words} - w0));
      uint32_t* dst = reinterpret_cast<uint32_t*>(buf + tile);
      const uint32_t* src = reinterpret_cast<const uint32_t*>(a.indices) +
                            int64_t{r0} * a.words + w0;
      // rows past the layer's last are never read, so they are not staged
      if (p.words_vec) {
        const int per_row = row_stride / 4;
        for (int i = threadIdx.x; i < nrows * per_row; i += kHistThreads) {
          const int r = i / per_row;
          const int k = (i - r * per_row) * 4;
          uint32_t* d = dst + r * row_stride + k;
          if (k < nw) {
            cp_async_upto16(d, src + int64_t{r} * a.words + k, nw - k);
          } else {
            *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
          }
        }
      } else {
        for (int i = threadIdx.x; i < nrows * row_stride; i += kHistThreads) {
          const int r = i / row_stride;
          const int k = i - r * row_stride;
          if (k < nw) {
            cp_async4(dst + i, src + int64_t{r} * a.words + k);
          } else {
            dst[i] = 0u;
          }
        }
      }
    }
    cp_commit();
  };

  // adds x (fixed point) to the bins of `code` in the histogram h
  auto add = [&](int* h, uint32_t code, int x) {
    if (x == 0) return;
    atomicAdd(h + (code & main_mask), x);
    if constexpr (kRes) atomicAdd(h + K + (code >> a.index_bits), x);
  };

  for (int st = 0; st < p.stages - 1; ++st) issue(blockIdx.x, st);
  for (int rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
    const int r0 = rb * nrows_blk;
    const int nrows = min(nrows_blk, R - r0);
    // The first barrier of a step also orders the previous row block's dot phase (which
    // zeroes the histograms) before this block's atomics.
    for (int st = 0; st < nsteps; ++st) {
      if (p.stages == 3) {
        cp_wait<1>();
      } else {
        cp_wait<0>();
      }
      __syncthreads();
      issue(rb, st + p.stages - 1);
      const int cn = min(tile, gs - st * tile);
      const float* sx = s_stage + (st % p.stages) * stage_sz;
      const uint32_t* sw = reinterpret_cast<const uint32_t*>(sx + tile);
      // Past cn the staged x is zero (and the words too), so the last chunk needs no guard.
      // The words of every row are loaded before the first atomic: the compiler may not move
      // a shared-memory load past an atomic.
      if (pairs) {
        for (int q0 = warp * 64; q0 < cn; q0 += kHistWarps * 64) {
          const int q = q0 + 2 * lane;
          const float2 xv = *reinterpret_cast<const float2*>(sx + q);
          const int x0 = __float2int_rn(xv.x * scale);
          const int x1 = __float2int_rn(xv.y * scale);
          const uint32_t bit = static_cast<uint32_t>(q) * tb;
          uint32_t win[kRowsMax];
#pragma unroll
          for (int r = 0; r < kRowsMax; ++r) {
            const uint32_t* w = sw + r * row_stride + (bit >> 5);
            win[r] = r < nrows ? __funnelshift_r(w[0], w[1], bit & 31) : 0u;
          }
#pragma unroll
          for (int r = 0; r < kRowsMax; ++r) {
            if (r < nrows) {
              int* h = s_hist + r * bins;
              add(h, win[r] & code_mask, x0);
              add(h, (win[r] >> tb) & code_mask, x1);
            }
          }
        }
      } else {
        for (int q0 = warp * 32; q0 < cn; q0 += kHistWarps * 32) {
          const int q = q0 + lane;
          const int x0 = __float2int_rn(sx[q] * scale);
          const uint32_t bit = static_cast<uint32_t>(q) * tb;
          uint32_t code[kRowsMax];
#pragma unroll
          for (int r = 0; r < kRowsMax; ++r) {
            const uint32_t* w = sw + r * row_stride + (bit >> 5);
            code[r] = r < nrows ? __funnelshift_r(w[0], w[1], bit & 31) & code_mask : 0u;
          }
#pragma unroll
          for (int r = 0; r < kRowsMax; ++r)
            if (r < nrows) add(s_hist + r * bins, code[r], x0);
        }
      }
    }
    __syncthreads();  // every atomic has landed and every stage buffer is free
    // the next row block's first tiles load while this one is dotted with the codebooks
    for (int st = 0; st < p.stages - 1; ++st) issue(rb + gridDim.x, st);

    // dot phase: acc[r * V + l] = sum over this thread's bins of h_r[c] * C[c][l]
    float acc[kHistAcc];
#pragma unroll
    for (int i = 0; i < kHistAcc; ++i) acc[i] = 0.f;
    for (int c = threadIdx.x; c < bins; c += kHistThreads) {
      Entry<T, V> ent;
      if (!kRes || c < K) {
        ent.load_global(cbm + int64_t{c} * V);
      } else {
        ent.load_global(cbr + int64_t{c - K} * V);
      }
      float cv[V];
      ent.get(cv);
#pragma unroll
      for (int r = 0; r < kRowsMax; ++r) {
        if (r < nrows) {
          int* hp = s_hist + r * bins + c;
          const float hv = static_cast<float>(*hp);
          *hp = 0;  // ready for the next row block
#pragma unroll
          for (int l = 0; l < V; ++l) acc[r * V + l] = fmaf(hv, cv[l], acc[r * V + l]);
        }
      }
    }
    // outlier columns, few: their own codebook and vector length, at the same scale
    if (a.outlier_size > 0) {
      const T* ocb = static_cast<const T*>(a.outlier_centroids);
      for (int c = threadIdx.x; c < a.outlier_size; c += kHistThreads) {
        const float xv = p.xs[c] * scale;
#pragma unroll
        for (int r = 0; r < kRowsMax; ++r) {
#pragma unroll
          for (int l = 0; l < V; ++l) {
            const int row = (r0 + r) * V + l;
            if (r < nrows && row < a.rows) {
              const int oi = static_cast<uint16_t>(
                  a.outlier_indices[int64_t{row / a.outlier_v} * a.outlier_size + c]);
              const float val = to_f(ocb[int64_t{oi} * a.outlier_v + row % a.outlier_v]);
              acc[r * V + l] = fmaf(val, xv, acc[r * V + l]);
            }
          }
        }
      }
    }
    warp_reduce_64(acc, lane);
    s_red[warp * kHistAcc + 2 * lane] = acc[0];
    s_red[warp * kHistAcc + 2 * lane + 1] = acc[1];
    __syncthreads();
    if (threadIdx.x < nrows * V) {
      const int i = threadIdx.x;
      const int row = r0 * V + i;  // (r0 + i / V) * V + i % V
      if (row < a.rows) {
        float s = 0.f;
        for (int w = 0; w < kHistWarps; ++w) s += s_red[w * kHistAcc + i];
        s = s * unscale + poison;
        if (a.weight_bias) {
          for (int k = 0; k < p.nchunks; ++k) s += p.xbias[k];
        }
        if (p.bias) s += to_f(static_cast<const T*>(p.bias)[row]);
        static_cast<T*>(p.y)[row] = from_f<T>(s);
      }
    }
  }
  cp_wait<0>();
}

}  // namespace gemv
}  // namespace vptq
