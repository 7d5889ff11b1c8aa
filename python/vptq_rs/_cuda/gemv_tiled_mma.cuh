// Tiled GEMV on tensor cores: one token, v = 8 codebooks too large for shared memory
// (v8/k65536), over the mma form of python/vptq_rs/tiled_layout.py.
//
// The scalar tiled kernel (gemv_tiled.cuh) spends a lane's step on 8 conversions and 8 FMAs
// for one entry's 16-byte codebook row, and under ncu it issued about 59M instructions on
// 28672x8192 (README, "What limits the GEMV"). Here a warp step takes 32 entries of one run
// as two m16n8k16 products, y_r += A B with
// - B [16 entries x 8 elements]: the entries' codebook rows, straight from the staged tile by
//   one ldmatrix.x4.trans (lane l gives the address of entry l's row; the layout deals a
//   run's entries so that each 8 of them start in distinct banks);
// - A [16 slots x 16 entries]: one nonzero a column, entry k's activation in slot m(k), so
//   D [16 slots x 8 elements] holds partial sums of the row that the flush adds up. The
//   slots are chosen so that lane l holds exactly one activation of the two products: lane
//   l = 4g + t fills slot g with entry 16 (g / 4) + (2t, 2t+1, 2t+8, 2t+9)[g % 4], the one
//   place of its A fragment (a0, a1, a4 or a5 of product g / 4) that entry can take.
// Lane l's 32-bit word holds the code of entry l (high half, for the ldmatrix address) and the
// column of the entry it supplies the activation of (low half), so no lane needs another
// lane's entry: the builder stores them that way (tiled_layout.MMA_X_ENTRY).
//
// Tensor cores take fp16 or bf16 activations. The block rounds xs to the codebook's type
// after scaling it by a power of two 2^-e chosen from max |xs| (every block sees the same xs,
// so the same e), which keeps fp16 from overflowing, and multiplies the sums back by 2^e:
// the products and sums stay fp32, the one extra rounding is of each activation
// (2^-11 relative for fp16), as in cuBLAS's fp16 GEMV. Everything else (phases, the warps'
// pieces, the epilogue) is the scalar tiled kernel's.
//
// Opt-in (VPTQ_RS_TILED_MMA=1 at load time, tiled_layout.uses_mma). On an H100 it ties the
// scalar kernel (run 24c: 116.4 and 114.4 us against 116.5 and 114.0 on the two largest
// v8/k65536 shapes) with a third of its instructions in the step loop: under ncu (run 24a)
// both issue on 60% of cycles and most of either kernel's instructions and stalls are in
// the per-phase work (tile copies, barriers, the next phase's tile starts and first loads,
// each a memory round trip), not in the sums.
#pragma once

#include "gemv_tiled.cuh"

namespace vptq {
namespace gemv {

constexpr int kTiledMmaV = 8;        // ldmatrix rows are 16 bytes: 8 fp16/bf16 elements
constexpr int kTiledMmaStep = 32;    // entries a warp step: two products of 16
constexpr int kTiledMmaThreads = 1024;
// the largest |xs| is scaled into [2^13, 2^14): fp16's largest value is about 2^16
constexpr int kTiledMmaTopExp = 14;

// Shared memory: the scalar kernel's, then 32 floats for the block's max |xs| reduction.
__host__ __device__ inline int64_t tiled_mma_smem_bytes(const LayerArgs& a, int tile_codes,
                                                       int max_rows, int min_rows) {
  return tiled_smem_bytes(a, tile_codes, max_rows, min_rows) + 32 * 4;
}

// ldmatrix.x4.trans: four 8x8 b16 matrices, rows from the addresses of lanes 8i..8i+7
// (volatile: it reads shared memory, so it must stay after the phase's barrier).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t (&b)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
               : "r"(addr));
}

// d += A B with A's fragment {a0, 0, a2, 0} (rows 8-15 of A are zero) and B's {b0, b1}.
template <typename T>
__device__ __forceinline__ void mma_slots(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0,
                                          uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
  }
#else
  __trap();  // launched only on sm_80+ (tiled_mma_supported)
#endif
}

// x rounded to T, in both halves of a 32-bit word.
template <typename T>
__device__ __forceinline__ uint32_t to_pair_bits(float x) {
  uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm("cvt.rn.f16x2.f32 %0, %1, %1;" : "=r"(r) : "f"(x));
  } else {
    asm("cvt.rn.bf16x2.f32 %0, %1, %1;" : "=r"(r) : "f"(x));
  }
#endif
  return r;
}

// Lane l = 4g + t supplies entry 16 (g / 4) + (2t, 2t+1, 2t+8, 2t+9)[g % 4] of a step: the
// low or high half of A register 0 or 2 of product g / 4. mask[j][r] keeps that half of
// product j's register 2r and zeroes the rest (all of it for the other product).
__device__ __forceinline__ void mma_x_masks(int lane, uint32_t (&mask)[2][2]) {
  const int g = lane >> 2;
  const uint32_t half = (g & 1) ? 0xffff0000u : 0x0000ffffu;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    mask[j][0] = (g >> 2) == j && (g & 2) == 0 ? half : 0u;
    mask[j][1] = (g >> 2) == j && (g & 2) != 0 ? half : 0u;
  }
}

// max |s_x[0, n)| over the block (NaNs ignored), then s_x scaled by 2^-e in place; returns 2^e.
// s_red: 32 floats. Ends with a barrier.
__device__ __forceinline__ float scale_xs_for_mma(float* s_x, int n, float* s_red) {
  float m = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, fabsf(s_x[i]));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) m = fmaxf(m, s_red[w]);
  int e = 0;
  if (m > 0.f && m < INFINITY) {
    int top;
    frexpf(m, &top);  // m < 2^top
    e = max(top - kTiledMmaTopExp, -100);  // 2^-e and 2^e stay normal floats
  }
  const float down = ldexpf(1.f, -e);
  for (int i = threadIdx.x; i < n; i += blockDim.x) s_x[i] *= down;
  __syncthreads();
  return ldexpf(1.f, e);
}

// 1024 threads and 64 registers. 512 threads, each warp with twice the work of a phase and
// twice the loads in flight (8 steps a batch), two accumulators and tile starts loaded two
// phases ahead, were 6-8% slower on the two largest v8/k65536 shapes in run 24c
// (benchmarks/variants/tiled-mma-512-threads.patch).
template <typename T>
__global__ void __launch_bounds__(kTiledMmaThreads, 1) tiled_mma_kernel(TiledParams tp) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int V = kTiledMmaV;
  constexpr int kWarps = kTiledMmaThreads / 32;
  constexpr int kUnitShift = TiledPieces::unit_shift<kWarps>();
  // warp steps a lane loads at once (one 4-byte word each), and as many ahead
  constexpr int kUnroll = 4;
  const Params& p = tp.p;
  const LayerArgs& a = p.a;
  const TiledLayout& t = tp.t;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int gs = a.group_size;
  const int tc = t.tile_codes;
  const int len = t.list_len;
  const TiledBlock<T, V> blk(smem, a, tc);
  // blk.clear_parts's work, with s_red between: in that order the SASS is the one run 25b
  // tested (with clear_parts the registers are allocated differently)
  const int per_row = tiled_slots(blk.nrows, kWarps);
  float* s_red = blk.s_part + sorted_round16(tiled_part_floats(blk.nrows, blk.nrows, V) * 4) / 4;
  for (int i = threadIdx.x; i < blk.nrows * per_row * V; i += blockDim.x) blk.s_part[i] = 0.f;

  blk.stage_tile(a, tc, 0, 0, 0);  // 16-byte rows: one cp.async each
  cp_commit();

  const TiledPieces pc = tiled_pieces<kWarps>(blk.nrows, warp);
  // item m's list b is list first_list[m] + b (pointers rebuilt where used: 64 registers)
  int first_list[kTiledItemsPerWarp];
#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) first_list[m] = (blk.r0 + pc.row[m]) * t.lists;
  auto list_of = [&](int m, int b) {
    return reinterpret_cast<const uint32_t*>(t.entries) + int64_t{first_list[m] + b} * len;
  };
  // Item m's piece of a phase, cut from the phase's tile starts: entries [e0, e1) of its
  // list, whole steps of 32 (the builder pads every run to them), the run clamped to the list.
  auto starts_of = [&](int m, int b, int ft, int2& ts) {
    const int32_t* q = t.tile_start + int64_t{first_list[m] + b} * (t.tiles + 1) + ft;
    ts = make_int2(__ldg(q), __ldg(q + 1));
  };
  auto cut = [&](int m, int2 ts, int& e0, int& e1) {
    const int s0 = min(max(ts.x, 0), len);
    const int steps = (min(max(ts.y, s0), len) - s0) / kTiledMmaStep;
    e0 = s0 + ((steps * pc.lo[m]) >> kUnitShift) * kTiledMmaStep;
    e1 = s0 + ((steps * pc.hi[m]) >> kUnitShift) * kTiledMmaStep;
  };
  constexpr int kBatch = kTiledMmaStep * kUnroll;
  // the lane's words of a batch from entry e on (warp-uniform), past e1 a zero activation
  auto fetch = [&](const uint32_t* ptr, int e, int e1, uint32_t pad, uint32_t(&ev)[kUnroll]) {
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      ev[k] = e + kTiledMmaStep * k < e1 ? load_stream32(ptr + kTiledMmaStep * k) : pad;
    }
  };
  auto pad_of = [&](int ft) {
    return (static_cast<uint32_t>(ft * tc) << 16) | static_cast<uint32_t>(gs);
  };
  // the phase after (b, ft), counted without divisions
  auto advance = [&](int& b, int& ft) {
    if (++ft == t.tiles) {
      ft = 0;
      ++b;
    }
  };

  // phase 0's pieces and first batches
  int nb = 0, nft = 0;
  advance(nb, nft);
  int run0[kTiledItemsPerWarp], run1[kTiledItemsPerWarp];
  uint32_t first[kTiledItemsPerWarp][kUnroll];
#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) {
    if (!pc.live[m]) continue;
    int2 ts;
    starts_of(m, 0, 0, ts);
    cut(m, ts, run0[m], run1[m]);
    fetch(list_of(m, 0) + run0[m] + lane, run0[m], run1[m], pad_of(0), first[m]);
  }

  stage_xs<T>(p, blk.s_x, blk.s_xo);
  cp_commit();
  cp_wait<0>();
  __syncthreads();
  const float up = scale_xs_for_mma(blk.s_x, gs, s_red);

  uint32_t mask[2][2];
  mma_x_masks(lane, mask);

  float acc[kTiledItemsPerWarp][4];
#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) {
#pragma unroll
    for (int l = 0; l < 4; ++l) acc[m][l] = 0.f;
  }

  int b = 0, ft = 0;  // this phase; (nb, nft) the next
  for (int f = 0; f < t.lists * t.tiles; ++f) {
    const bool more = nb < t.lists;
    if (more) {
      blk.stage_tile(a, tc, nb, nft, (f + 1) & 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const uint32_t code0 = static_cast<uint32_t>(ft * tc);
    const int ncodes = blk.codes_of(a, tc, b, ft);
    const uint32_t tile_addr = static_cast<uint32_t>(__cvta_generic_to_shared(blk.tile(f & 1)));
    const uint32_t cmax = ncodes > 0 ? static_cast<uint32_t>(ncodes - 1) : 0u;
#pragma unroll
    for (int m = 0; m < kTiledItemsPerWarp; ++m) {
      if (!pc.live[m]) continue;
      const int e1 = run1[m];
      int eb = run0[m];
      const uint32_t* ptr = list_of(m, b) + eb + lane;
      if (more) {  // the next phase's piece, used after the loop
        int2 ts;
        starts_of(m, nb, nft, ts);
        cut(m, ts, run0[m], run1[m]);
      }
      const uint32_t pad = pad_of(ft);
      auto sum = [&](const uint32_t(&ev)[kUnroll], int part) {
#pragma unroll
        for (int k = 0; k < kUnroll; ++k) {
          if (k > 0 && k >= part) break;
          const uint32_t w = ev[k];
          const uint32_t xa =
              to_pair_bits<T>(blk.s_x[min(w & 0xffffu, static_cast<uint32_t>(gs))]);
          const uint32_t c = min((w >> 16) - code0, cmax);
          uint32_t rows[4];
          ldmatrix_x4_trans(tile_addr + (c << 4), rows);
          mma_slots<T>(acc[m], xa & mask[0][0], xa & mask[0][1], rows[0], rows[1]);
          mma_slots<T>(acc[m], xa & mask[1][0], xa & mask[1][1], rows[2], rows[3]);
        }
      };
      auto part_of = [&](int eb) { return (e1 - eb) / kTiledMmaStep; };
      uint32_t other[kUnroll];
      while (eb < e1) {
        fetch(ptr + kBatch, eb + kBatch, e1, pad, other);
        sum(first[m], part_of(eb));
        eb += kBatch;
        ptr += kBatch;
        if (eb >= e1) break;
        fetch(ptr + kBatch, eb + kBatch, e1, pad, first[m]);
        sum(other, part_of(eb));
        eb += kBatch;
        ptr += kBatch;
      }
      if (more) {
        fetch(list_of(m, nb) + run0[m] + lane, run0[m], run1[m], pad_of(nft), first[m]);
      }
    }
    b = nb;
    ft = nft;
    advance(nb, nft);
    __syncthreads();
  }

  // lane 4g + t holds slot g's elements 2t and 2t + 1 (slots 8-15 stay zero): add the slots
#pragma unroll
  for (int m = 0; m < kTiledItemsPerWarp; ++m) {
    if (!pc.live[m]) continue;
    float s0 = acc[m][0], s1 = acc[m][1];
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
      s0 += __shfl_xor_sync(0xffffffffu, s0, o);
      s1 += __shfl_xor_sync(0xffffffffu, s1, o);
    }
    if (lane < 4) {
      float* dst = blk.s_part + (pc.row[m] * per_row + pc.slot[m]) * V + 2 * lane;
      dst[0] = s0 * up;
      dst[1] = s1 * up;
    }
  }
  __syncthreads();
  sorted_epilogue<T, V>(p, blk.s_part, blk.r0, blk.nrows, per_row,
                        blk.s_part - extra_x_bytes(a) / 4);
}

}  // namespace gemv
}  // namespace vptq
