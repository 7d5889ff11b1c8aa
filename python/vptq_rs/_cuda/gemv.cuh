// Fused dequant-GEMV for 1-8 tokens reading FORMAT.md's packed words directly.
//
// y[t, r] = sum_p Q[r, p] * xs[t, p] + sum_j bias_w[j] x[t, j] + bias[r], where Q is the
// codebook value at permuted column p and xs[t, p] = scale[perm[p]] * x[t, perm[p]]: the
// normalisation folds into the activations (prologue kernel), so the main kernel only
// gathers codebook rows.
//
// Main kernel: a block owns `rows_per_block` vector rows (v output rows each); S warps share
// a row, each taking 1/S of every column tile, and their partial sums meet in shared memory
// (no second reduction kernel). Columns are walked in tiles; the packed words of the block's
// rows and the activations of a tile are copied into shared memory with cp.async, `stages`
// tiles ahead, so the index stream from DRAM overlaps the gathers (Nsight showed the
// previous, register-prefetching design stalled on those loads at 16 warps/SM). A code is
// decoded from two staged words with one funnel shift. Codebooks sit in shared memory when
// they fit (persistent grid, staged once per block), else they are read through L1/L2.
#pragma once

#include "common.cuh"
#include "vptq_kernels.h"

namespace vptq {
namespace gemv {

constexpr int kTile = 1024;    // columns per prologue block (bias partial sums)
constexpr int kWordPad = 4;    // staged words per row past the tile: the w+1 read, 16B aligned

template <int V>
__host__ __device__ constexpr int codes_per_lane() { return V <= 8 ? 8 : 4; }

struct Params {
  LayerArgs a;
  const float* xs;      // [T, cols] permuted, scaled activations (fp32)
  const float* xbias;   // [T, nchunks] partial sums of weight_bias[j] * x[t, j]
  const float* xabs;    // [T, nchunks] partial sums of |xs[t, p]| (the histogram kernel's scale)
  const void* bias;     // [rows] or null
  void* y;              // [T, rows]
  int tokens, nchunks, splits;
  int tile;             // columns per pipeline step (power of two, >= 128, multiple of 32*S)
  int stages;           // tiles in flight (2 or 3)
  int words_vec;        // packed rows are 16-byte aligned: copy words 16 bytes at a time
  int x_vec;            // activation tiles are 16-byte aligned
  int perm_u16;         // perm holds uint16 values (the checkpoint's int16 bits), else int32
  int hist_rows;        // vector rows per block of the histogram kernel (gemv_hist.cuh)
  // The sorted and tiled kernels compute xs themselves from these (x_in [cols], perm as
  // the prologue kernel reads it) when x_in is set; else they read xs and xbias.
  const void* x_in;
  const void* perm;
};

// 256 threads where the accumulators or odd-length (2-byte aligned) codebook rows need more
// than the 128 registers a 512-thread block allows
__host__ __device__ constexpr int threads_for(int nt, int v) {
  return (nt * v > 32 || (v % 2 == 1 && v > 4)) ? 256 : 512;
}

// kSmem: codebooks staged in shared memory, else read through L1/L2. (Asking for two blocks
// per SM on the L2 path caps registers at 64 and spills the gathered rows.)
template <int NT, int V, bool kSmem>
struct Cfg {
  static constexpr int kThreads = threads_for(NT, V);
};

// shared-memory layout of one pipeline stage: [x: NT*tile floats][words: rpb*(tw+pad)]
__host__ __device__ inline int64_t tile_words(int tile, int tb) {
  return int64_t{tile} * tb / 32;
}
__host__ __device__ inline int64_t stage_floats(int nt, int tile, int tb, int rpb) {
  return int64_t{nt} * tile + int64_t{rpb} * (tile_words(tile, tb) + kWordPad);
}

// Copies n 4-byte items from src to dst (n_pad >= n slots, zero-filled past n), by the
// whole block; 16 bytes per copy when both sides are 16-byte aligned (vec).
__device__ __forceinline__ void stage_copy(uint32_t* dst, const uint32_t* src, int n, int n_pad,
                                           bool vec) {
  if (vec) {
    for (int i = threadIdx.x * 4; i < n_pad; i += blockDim.x * 4) {
      const int left = n - i;
      if (left > 0) {
        cp_async_upto16(dst + i, src + i, left);
      } else {
        *reinterpret_cast<uint4*>(dst + i) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
  } else {
    for (int i = threadIdx.x; i < n_pad; i += blockDim.x) {
      if (i < n) {
        cp_async4(dst + i, src + i);
      } else {
        dst[i] = 0u;
      }
    }
  }
}

// bytes (a multiple of 16, both sides 16-byte aligned) from src to dst, by the whole block:
// one cp.async per 16 bytes and no tail, where stage_copy's per-item branches cost the tiled
// kernels about a fifth of their instructions (a 64 KB tile every phase).
__device__ __forceinline__ void stage_copy16(void* dst, const void* src, int bytes) {
  for (int i = static_cast<int>(threadIdx.x) * 16; i < bytes; i += blockDim.x * 16) {
    cp_async16(static_cast<char*>(dst) + i, static_cast<const char*>(src) + i);
  }
}

// Sum over the 32 lanes of a[0..2H) by exchanging halves: afterwards a[i] for i < H holds
// the sum of one of the 2H values, which one set by this lane's bit `o` and the earlier steps.
template <int H>
__device__ __forceinline__ void halve(float* a, int lane, int o) {
  const bool up = (lane & o) != 0;
#pragma unroll
  for (int i = 0; i < H; ++i) {
    const float send = up ? a[i] : a[i + H];
    const float keep = up ? a[i + H] : a[i];
    a[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
  }
}

// The rest of warp_spread_sum: N values left at lane bit O, whose index gets N / 2 added on
// lanes that keep the upper half.
template <int N, int O>
__device__ __forceinline__ void spread_steps(float* a, int lane, int& index) {
  if constexpr (N > 1) {
    halve<N / 2>(a, lane, O);
    if (lane & O) index += N / 2;
    spread_steps<N / 2, O / 2>(a, lane, index);
  } else {
#pragma unroll
    for (int o = O; o > 0; o >>= 1) a[0] += __shfl_xor_sync(0xffffffffu, a[0], o);
  }
}

// Sum over the 32 lanes of each of v[0..V) (V <= 16) by halving exchanges: P - 1 + 5 - log2 P
// shuffles for P = V rounded up to a power of two, where a butterfly a value takes 5 V (9
// against 40 at V = 8), and the adds go down as much. Returns this lane's sum; slot is the
// index of that value on the lowest of the 32 / P lanes that hold it, -1 elsewhere (and on
// lanes that hold a padding slot), so one lane a value writes it.
template <int V>
__device__ __forceinline__ float warp_spread_sum(const float (&v)[V], int lane, int& slot) {
  static_assert(V >= 1 && V <= 16, "warp_spread_sum takes 1 to 16 values");
  constexpr int P = V <= 1 ? 1 : V <= 2 ? 2 : V <= 4 ? 4 : V <= 8 ? 8 : 16;
  float a[P];
#pragma unroll
  for (int i = 0; i < P; ++i) a[i] = i < V ? v[i] : 0.f;
  int index = 0;
  spread_steps<P, 16>(a, lane, index);
  slot = (lane & (32 / P - 1)) == 0 && index < V ? index : -1;
  return a[0];
}

// xs[t, p] = x[t, perm[p]] * scale[perm[p]]; xbias[t, chunk] = sum bias_w[j] * x[t, j];
// xabs[t, chunk] = sum |xs[t, p]|.
template <typename T>
__global__ void __launch_bounds__(256) prologue_kernel(Params p, const T* __restrict__ x,
                                                       const void* __restrict__ perm) {
  const int t = blockIdx.y;
  const int cols = p.a.cols;
  const int base = blockIdx.x * kTile;
  float acc = 0.f, aabs = 0.f;
  for (int k = threadIdx.x; k < kTile; k += blockDim.x) {
    const int pos = base + k;
    if (pos >= cols) break;
    // the checkpoint's int16 perm is read in place: a conversion would cost two more launches
    const int j = perm == nullptr ? pos
                  : p.perm_u16    ? static_cast<int>(static_cast<const uint16_t*>(perm)[pos])
                                  : static_cast<const int32_t*>(perm)[pos];
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
    aabs += fabsf(xv * s);
  }
  __shared__ float red[2][32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    acc += __shfl_xor_sync(0xffffffffu, acc, o);
    aabs += __shfl_xor_sync(0xffffffffu, aabs, o);
  }
  if ((threadIdx.x & 31) == 0) {
    red[0][threadIdx.x >> 5] = acc;
    red[1][threadIdx.x >> 5] = aabs;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    const bool in = threadIdx.x < (blockDim.x >> 5);
    float v = in ? red[0][threadIdx.x] : 0.f;
    float va = in ? red[1][threadIdx.x] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      v += __shfl_xor_sync(0xffffffffu, v, o);
      va += __shfl_xor_sync(0xffffffffu, va, o);
    }
    if (threadIdx.x == 0) {
      const_cast<float*>(p.xbias)[t * p.nchunks + blockIdx.x] = v;
      const_cast<float*>(p.xabs)[t * p.nchunks + blockIdx.x] = va;
    }
  }
}

// kRes: the layer has a residual codebook (a.res_centroids set). Separate instantiations keep
// the residual gathers, their predicates and adds out of the other layers' inner loop.
template <typename T, int V, int NT, bool kSmem, bool kRes>
__global__ void __launch_bounds__(Cfg<NT, V, kSmem>::kThreads, 1) main_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const LayerArgs& a = p.a;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int S = p.splits;
  const int rpb = nwarps / S;  // vector rows per block
  const int my_row = warp / S;
  const int split = warp - my_row * S;
  const int tb = a.index_bits + a.res_bits;
  const uint32_t code_mask = tb >= 32 ? 0xffffffffu : (1u << tb) - 1u;
  const uint32_t main_mask = (1u << a.index_bits) - 1u;
  const int K = 1 << a.index_bits;
  const int Kr = a.res_bits ? 1 << a.res_bits : 0;
  constexpr bool has_res = kRes;
  const int tile = p.tile;
  const int tw = static_cast<int>(tile_words(tile, tb));
  const int row_stride = tw + kWordPad;
  const int64_t stage_sz = stage_floats(NT, tile, tb, rpb);

  // shared memory: [codebooks (optional)] [stages x (x tile, word tiles)] [partials]
  const int64_t cb_elems = int64_t{a.groups} * K * V;
  const int64_t rcb_elems = has_res ? int64_t{a.groups} * Kr * V : 0;
  size_t off = 0;
  const T* cbm = static_cast<const T*>(a.centroids);
  const T* cbr = static_cast<const T*>(a.res_centroids);
  if (kSmem) {
    T* s_cb = reinterpret_cast<T*>(smem);
    const size_t main_bytes = ((cb_elems * sizeof(T)) + 15) / 16 * 16;
    T* s_rcb = reinterpret_cast<T*>(smem + main_bytes);
    // Entries are whole multiples of 4 bytes (K even). One cp.async group, waited for with
    // the first pipeline step: every copy is in flight at once, where a load/store loop
    // paid a global-load latency per 4 bytes per thread, and it overlaps the first tiles.
    auto stage_codebook = [&](uint32_t* dst, const void* src, int64_t elems) {
      const int n = static_cast<int>(elems * int64_t{sizeof(T)} / 4);
      const bool vec = (reinterpret_cast<uintptr_t>(src) & 15) == 0;
      stage_copy(dst, static_cast<const uint32_t*>(src), n, vec ? (n + 3) / 4 * 4 : n, vec);
    };
    stage_codebook(reinterpret_cast<uint32_t*>(s_cb), a.centroids, cb_elems);
    if (has_res) stage_codebook(reinterpret_cast<uint32_t*>(s_rcb), a.res_centroids, rcb_elems);
    cp_commit();
    cbm = s_cb;
    cbr = s_rcb;
    off = main_bytes + ((rcb_elems * sizeof(T)) + 15) / 16 * 16;
  }
  float* s_stage = reinterpret_cast<float*>(smem + off);
  float* s_part = s_stage + p.stages * stage_sz;

  const int R = a.num_vectors;
  const int gs = a.group_size;
  const int tiles_per_group = (gs + tile - 1) / tile;
  const int nsteps = a.groups * tiles_per_group;
  const int share = tile / S;  // columns of a tile one warp handles
  const int nrb = (R + rpb - 1) / rpb;

  for (int rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
    const int rv = rb * rpb + my_row;
    const bool active = rv < R;

    // Step st of this row block: group st / tiles_per_group, column tile st % tiles_per_group.
    auto issue = [&](int st) {
      if (st < nsteps) {
        const int g = st / tiles_per_group;
        const int c0 = (st - g * tiles_per_group) * tile;
        const int cn = min(tile, gs - c0);
        float* buf = s_stage + (st % p.stages) * stage_sz;
        const int64_t xbase = a.outlier_size + int64_t{g} * gs + c0;
        for (int t = 0; t < NT; ++t) {
          uint32_t* dst = reinterpret_cast<uint32_t*>(buf + t * tile);
          if (t < p.tokens) {
            stage_copy(dst, reinterpret_cast<const uint32_t*>(p.xs + int64_t{t} * a.cols + xbase),
                       cn, tile, p.x_vec);
          } else {
            stage_copy(dst, nullptr, 0, tile, true);
          }
        }
        // words of this tile: bits [c0*tb, (c0+cn)*tb) of each row (c0*tb is a multiple of
        // 128); the S warps of a row copy its words, coalesced, with no index arithmetic
        const int64_t w0 = int64_t{c0} * tb / 32;
        const int nw = active ? static_cast<int>(min(int64_t{tw}, int64_t{a.words} - w0)) : 0;
        uint32_t* dst = reinterpret_cast<uint32_t*>(buf + NT * tile) + my_row * row_stride;
        const uint32_t* src = reinterpret_cast<const uint32_t*>(
            a.indices + (int64_t{g} * R + min(rv, R - 1)) * a.words + w0);
        if (p.words_vec) {
          for (int k = 4 * (split * 32 + lane); k < row_stride; k += 128 * S) {
            if (k < nw) {
              cp_async_upto16(dst + k, src + k, nw - k);
            } else {
              *reinterpret_cast<uint4*>(dst + k) = make_uint4(0u, 0u, 0u, 0u);
            }
          }
        } else {
          for (int k = split * 32 + lane; k < row_stride; k += 32 * S) {
            if (k < nw) {
              cp_async4(dst + k, src + k);
            } else {
              dst[k] = 0u;
            }
          }
        }
      }
      cp_commit();  // an empty group past the end keeps the wait counts uniform
    };

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

    __syncthreads();  // the previous row block is done with every stage buffer
    for (int st = 0; st < p.stages - 1; ++st) issue(st);

    constexpr int kCodes = codes_per_lane<V>();
    for (int st = 0; st < nsteps; ++st) {
      if (p.stages == 3) {
        cp_wait<1>();
      } else {
        cp_wait<0>();
      }
      __syncthreads();  // step st is staged for every thread; step st-1's buffer is free
      issue(st + p.stages - 1);
      if (!active) continue;

      const int g = st / tiles_per_group;
      const int c0 = (st - g * tiles_per_group) * tile;
      const int cn = min(tile, gs - c0);
      const float* sx = s_stage + (st % p.stages) * stage_sz;
      const uint32_t* sw =
          reinterpret_cast<const uint32_t*>(sx + NT * tile) + my_row * row_stride;
      const T* cbg = cbm + int64_t{g} * K * V;
      const T* rcbg = has_res ? cbr + int64_t{g} * Kr * V : nullptr;
      const int qend = min(cn, (split + 1) * share);
      // Lanes take consecutive codes: the words they read are consecutive (conflict-free),
      // and kCodes codes per lane are decoded before any codebook row is used, so that many
      // independent gathers are in flight per lane.
      auto gather = [&](Entry<T, V>& e, Entry<T, V>& re, uint32_t code) {
        if (kSmem) {
          e.load(cbg + (code & main_mask) * V);
          if constexpr (kRes) re.load(rcbg + (code >> a.index_bits) * V);
        } else {
          e.load_global(cbg + (code & main_mask) * V);
          if constexpr (kRes) re.load_global(rcbg + (code >> a.index_bits) * V);
        }
      };
      auto accumulate = [&](const Entry<T, V>& e, const Entry<T, V>& re, int q) {
        float cv[V];
        e.get(cv);
        if constexpr (kRes) {
          float rv2[V];
          re.get(rv2);
#pragma unroll
          for (int l = 0; l < V; ++l) cv[l] += rv2[l];
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          const float xv = sx[t * tile + q];
#pragma unroll
          for (int l = 0; l < V; ++l) acc[t][l] = fmaf(cv[l], xv, acc[t][l]);
        }
      };
      int q0 = split * share;
      // Whole chunks: no clamps or guards, so every gather is hoisted above the FMAs. The
      // codes a lane reads are 32 apart, i.e. exactly tb words apart at one bit offset, so
      // the offset is computed once per chunk and each code costs two word loads, a funnel
      // shift and a mask.
      for (; q0 + 32 * kCodes <= qend; q0 += 32 * kCodes) {
        const uint32_t bit = static_cast<uint32_t>(q0 + lane) * tb;
        const uint32_t* wp = sw + (bit >> 5);
        const uint32_t sh = bit & 31;
        Entry<T, V> e[kCodes];
        Entry<T, V> re[kCodes];
#pragma unroll
        for (int u = 0; u < kCodes; ++u) {
          const uint32_t* w = wp + u * tb;
          gather(e[u], re[u], __funnelshift_r(w[0], w[1], sh) & code_mask);
        }
#pragma unroll
        for (int u = 0; u < kCodes; ++u) accumulate(e[u], re[u], q0 + u * 32 + lane);
      }
      // the tail of the share: clamped decode, guarded use
      if (q0 < qend) {
        Entry<T, V> e[kCodes];
        Entry<T, V> re[kCodes];
#pragma unroll
        for (int u = 0; u < kCodes; ++u) {
          const int q = min(q0 + u * 32 + lane, qend - 1);
          const uint32_t bit = static_cast<uint32_t>(q) * tb;
          const uint32_t w = bit >> 5;
          gather(e[u], re[u], __funnelshift_r(sw[w], sw[w + 1], bit & 31) & code_mask);
        }
#pragma unroll
        for (int u = 0; u < kCodes; ++u) {
          const int q = q0 + u * 32 + lane;
          if (q < qend) accumulate(e[u], re[u], q);
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
  cp_wait<0>();  // no copy may outlive the block (nothing is pending unless nsteps == 0)
}

}  // namespace gemv
}  // namespace vptq
