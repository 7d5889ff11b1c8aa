// Sorted GEMV: one token, over the code-sorted layout of python/vptq_rs/sorted_layout.py.
//
// Per vector row and codebook the layout lists the row's columns sorted by code, two columns
// of one code to a 32-bit entry (15-bit columns and a "next code" flag). y_r = sum over
// entries of (xs[col_a] + xs[col_b]) C[code]:
// - the 32 entries of a warp step cover about 32 adjacent codes, so the codebook rows come
//   from shared memory in order (distinct banks);
// - the codes come from the flags: one ballot, two popcounts;
// - the random accesses left are the two 4-byte activations, from a copy of xs in shared
//   memory, and the layout orders each entry's pair to spread them over the banks;
// - no atomics, no histograms, no dot phase: the gather kernel's conflicted codebook gathers
//   and the histogram kernel's shared atomics (README, "What limits the GEMV") are gone.
// Pairing halves the codebook work (loads, conversions, FMAs) and the step overhead per
// column, against one activation load and add more a step and a half-empty entry for codes
// with an odd column count. The single-column layout it replaced (16-bit entries, run 13e)
// was bound by instruction issue and the shared-memory pipe together: about 35 instructions
// a 32-column step, issue on 81% of cycles, L1/shared 71% busy. Two variants of that loop
// moved work from one to the other and were slower (runs 13b, 13c): the codebook staged as
// fp32 (no conversions, but 8-byte loads: L1 89% busy) and a tensor-core loop (ldmatrix of
// the rows, one m16n8k16 per step: L1 86% busy).
//
// A block owns a contiguous range of vector rows (one block per SM) and keeps all of xs in
// shared memory. For each codebook in turn (main, then residual) it stages that codebook in
// shared memory, then cuts the groups of its rows' lists (contiguous in memory) into one
// range of whole chunks per warp; a chunk is a run of 128-entry groups with a stored base
// code, so a warp can start mid-list. Each warp's 16-byte entry loads bypass L1 and run two
// groups ahead across the rows it crosses. The ranges replaced (row, chunk) items taken
// round-robin, whose last round left most warps idle and whose every item began with loads
// not yet in flight. A warp's sum for one row (a piece) lands in a shared-memory slot of its
// own (sorted_slots), and the epilogue adds a row's slots in a fixed order: the result is
// bitwise repeatable.
#pragma once

#include "gemv.cuh"

namespace vptq {
namespace gemv {

// An entry: b << 17 | a << 2 | new_code (bit 1 clear). a sits where its byte offset in s_x
// is one AND away. No column needs a clamp: a malformed layout reads wrong values, never
// outside the block's shared memory, which reaches past s_x (the codebook, then padding) as
// far as a column can:
// - the fixed reach (kGroupReach false): any 32-bit word gives a and b below 2^15, so the
//   shared memory is at least 2^15 floats (128 KB) past s_x;
// - the group reach (kGroupReach true), for GPUs that give a block less (99 KB on the RTX 30
//   and 40 series): both byte offsets are ANDed with sorted_group_reach - 4, held in a
//   register, so the shared memory needs padding only where xs and the codebook are smaller
//   than that power of two. That costs 1.5-3.5% on an H100 (run 22b: 61.2 and 61.6 against
//   60.3 us on 28672x8192 v6/k4096, 77.8 and 78.7 against 75.3 with a residual codebook), so
//   it runs only where the fixed reach does not fit.
constexpr int kSortedColBits = 15;
constexpr int kSortedMaxGroupSize = (1 << kSortedColBits) - 1;  // group_size = the zero slot
constexpr uint32_t kSortedNewCode = 1u;                         // the flag
constexpr uint32_t kSortedFirstBytes = ((1u << kSortedColBits) - 1u) << 2;  // a * 4
constexpr int kSortedSecond = 17;  // bit offset of the second column
constexpr int kSortedSecondBytes = 15;  // an entry shifted by this holds b * 4 from bit 2
constexpr int64_t kSortedXReach = int64_t{4} << kSortedColBits;  // the fixed reach, bytes

// The group reach in bytes: the smallest power-of-two count of floats that holds xs and its
// zero slot.
__host__ __device__ inline int64_t sorted_group_reach(int64_t group_size) {
  int64_t r = 4;
  while (r < (group_size + 1) * 4) r <<= 1;
  return r;
}

// 1024 threads keep 32 KB of entry loads in flight per SM (two loads ahead a lane). Past
// v = 8 the accumulators and codebook rows need more registers: v9-v12 hold one load ahead
// instead (the same 16 KB as 512 threads with two, and twice the warps). For v12 that was
// even with 512 threads in run 19a (78.7 and 68.9 us against 78.0 and 69.9 on the two largest
// shapes; under ncu it issues on 71% of cycles, 70% in run 17c), so latency does not hold it.
// Past v = 12 even one load ahead spills within the 64 registers of 1024 threads,
// so v13-v16 keep 512 threads and two.
__host__ __device__ constexpr int sorted_warps(int v) { return v <= 12 ? 32 : 16; }
// 16-byte entry loads a lane holds: the one in use plus those ahead
__host__ __device__ constexpr int sorted_ring(int v) { return v <= 8 || v > 12 ? 3 : 2; }
template <int V>
__host__ __device__ constexpr int sorted_threads() {
  return sorted_warps(V) * 32;
}

struct SortedParams {
  Params p;
  SortedLayout s;
};

__host__ __device__ inline int64_t sorted_round16(int64_t b) { return (b + 15) / 16 * 16; }

// Partial-sum slots of one (row, list): one per piece a warp leaves in the row. With at least
// as many chunks in a block as warps, the warps that meet a row number at most
// warps / min_rows + 2 (min_rows: the fewest rows a block has); with fewer, a piece is one
// chunk and takes that chunk's slot.
__host__ __device__ inline int sorted_slots(int chunks, int warps, int min_rows) {
  const int s = warps / (min_rows > 0 ? min_rows : 1) + 2;
  return chunks < s ? chunks : s;
}

// The shared-memory region just before the partial sums of the sorted and tiled kernels: the
// outlier columns' activations and one weight-bias partial sum per warp (at most 32), fp32,
// which the block computes itself or copies from the prologue kernel (stage_xs). It sits
// at a parameter's distance from the partial sums, so the epilogue finds it without a
// register held through the main loop.
__host__ __device__ inline int64_t extra_x_bytes(const LayerArgs& a) {
  return sorted_round16(int64_t{a.outlier_size + 32} * 4);
}

// Shared memory: [xs of the group + the zero slot, fp32] [one codebook, 16-bit] [padding up
// to the reach, where xs and the codebook are smaller] [extra_x_bytes] [the pieces' partial
// sums: rows_per_block x lists x slots x V, fp32]. A column of any entry lands in the first
// three, which no warp writes while others read entries.
__host__ __device__ inline int64_t sorted_parts_offset(int64_t group_size, int64_t cb_bytes,
                                                       bool group_reach) {
  const int64_t used = sorted_round16((group_size + 1) * 4) + sorted_round16(cb_bytes);
  const int64_t reach = group_reach ? sorted_group_reach(group_size) : kSortedXReach;
  return used > reach ? used : reach;
}

__host__ __device__ inline int64_t sorted_smem_bytes(const LayerArgs& a, const SortedLayout& s,
                                                    int rows_per_block, int min_rows,
                                                    bool group_reach) {
  const int64_t K = int64_t{1} << a.index_bits;
  const int64_t Kr = a.res_centroids ? int64_t{1} << a.res_bits : 0;
  const int64_t cb = (K > Kr ? K : Kr) * a.v * 2;
  const int slots = sorted_slots(s.chunks, sorted_warps(a.v), min_rows);
  return sorted_parts_offset(a.group_size, cb, group_reach) + extra_x_bytes(a) +
         sorted_round16(int64_t{rows_per_block} * s.lists * slots * a.v * 4);
}

// 16 bytes that are read once: skip L1, which shares its SRAM with the shared memory here.
__device__ __forceinline__ uint4 load_stream(const uint4* ptr) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(ptr));
  return r;
}

// The block's activations, shared by the sorted and tiled kernels: the group's xs into
// s_x [group_size], the zero slot s_x[group_size] that dummy and padding entries read, the
// outlier columns' xs into s_xo [outlier_size] and weight-bias partial sums into
// s_xo[outlier_size + w] (w < 32; the epilogue adds them).
// - With p.x_in set (up to 8192 columns: one_token_prologue_fused in gemv_launch.cuh), the
//   block does the prologue kernel's work itself: xs[pos] = x[perm[pos]] * scale[perm[pos]]
//   and sum_j weight_bias[j] x[j]. Every block reads x, perm and the norm vectors (from L2
//   after the first), which there costs less than a second launch and a round trip of xs
//   through memory.
// - Else it copies xs from the prologue kernel's output (cp.async copies, not committed),
//   and folds that kernel's xbias partial sums into 32 (thread t adds t, t + 32, ...).
// Plain stores either way: the caller's barrier publishes them.
template <typename T>
__device__ __forceinline__ void stage_xs(const Params& p, float* s_x, float* s_xo) {
  const LayerArgs& a = p.a;
  const int gs = a.group_size;
  const int o = a.outlier_size;
  if (p.x_in == nullptr) {
    stage_copy(reinterpret_cast<uint32_t*>(s_x), reinterpret_cast<const uint32_t*>(p.xs + o),
               gs, p.x_vec ? (gs + 3) / 4 * 4 : gs, p.x_vec);
    for (int c = threadIdx.x; c < o; c += blockDim.x) s_xo[c] = p.xs[c];
    if (threadIdx.x < 32) {
      float b = 0.f;
      for (int k = threadIdx.x; k < p.nchunks; k += 32) b += p.xbias[k];
      s_xo[o + threadIdx.x] = b;
    }
  } else {
    const int cols = a.cols;
    const T* x = static_cast<const T*>(p.x_in);
    float acc = 0.f;
    // kBatch columns a thread at once: their perm loads, then their x and norm loads, in
    // flight together (each a round trip to L2)
    constexpr int kBatch = 4;
    for (int i0 = threadIdx.x; i0 < cols; i0 += kBatch * blockDim.x) {
      int j[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int pos = min(i0 + k * static_cast<int>(blockDim.x), cols - 1);
        if (p.perm == nullptr) {
          j[k] = pos;
        } else if (p.perm_u16) {
          j[k] = static_cast<int>(__ldg(static_cast<const uint16_t*>(p.perm) + pos));
        } else {
          j[k] = __ldg(static_cast<const int32_t*>(p.perm) + pos);
        }
      }
      float xv[kBatch], sc[kBatch], wb[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        xv[k] = to_f(x[j[k]]);
        sc[k] = 1.f;
        wb[k] = 0.f;
        if (a.weight_scale) {
          sc[k] = a.norm_dtype == kF32 ? __ldg(static_cast<const float*>(a.weight_scale) + j[k])
                                       : to_f(static_cast<const T*>(a.weight_scale)[j[k]]);
        }
        if (a.weight_bias) {
          wb[k] = a.norm_dtype == kF32 ? __ldg(static_cast<const float*>(a.weight_bias) + j[k])
                                       : to_f(static_cast<const T*>(a.weight_bias)[j[k]]);
        }
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int pos = i0 + k * static_cast<int>(blockDim.x);
        if (pos >= cols) break;
        const float v = xv[k] * sc[k];
        if (pos < o) {
          s_xo[pos] = v;
        } else {
          s_x[pos - o] = v;
        }
        acc = fmaf(wb[k], xv[k], acc);
      }
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, d);
    const int warps = static_cast<int>(blockDim.x >> 5);
    if (threadIdx.x < 32 && static_cast<int>(threadIdx.x) >= warps) s_xo[o + threadIdx.x] = 0.f;
    if ((threadIdx.x & 31) == 0) s_xo[o + (threadIdx.x >> 5)] = acc;
  }
  if (threadIdx.x == 0) s_x[gs] = 0.f;  // past the copy: x_vec implies gs % 4 == 0
}

// y for a block's rows [r0, r0 + nrows) from their partial sums s_part [nrows][per_row][V]
// (added in a fixed order), plus outlier columns, weight bias and bias. Shared by the sorted
// and tiled kernels.
// s_xo: stage_xs's outlier activations and weight-bias partial sums.
template <typename T, int V>
__device__ __forceinline__ void sorted_epilogue(const Params& p, const float* s_part, int r0,
                                                int nrows, int per_row, const float* s_xo) {
  const LayerArgs& a = p.a;
  float xbias = 0.f;  // added in a fixed order: every block gets the same value
  if (a.weight_bias) {
    for (int w = 0; w < 32; ++w) xbias += s_xo[a.outlier_size + w];
  }
  const int nout = nrows * V;
  for (int i = threadIdx.x; i < nout; i += blockDim.x) {
    const int rl = i / V;
    const int l = i - rl * V;
    const int row = r0 * V + i;
    if (row >= a.rows) continue;
    float sum = 0.f;
    const float* part = s_part + int64_t{rl} * per_row * V + l;
    for (int k = 0; k < per_row; ++k) sum += part[k * V];
    // outlier columns, few: their own codebook and vector length
    if (a.outlier_size > 0) {
      const T* ocb = static_cast<const T*>(a.outlier_centroids);
      const int16_t* oi_row = a.outlier_indices + int64_t{row / a.outlier_v} * a.outlier_size;
      for (int c = 0; c < a.outlier_size; ++c) {
        const int oi = static_cast<uint16_t>(oi_row[c]);
        sum = fmaf(to_f(ocb[int64_t{oi} * a.outlier_v + row % a.outlier_v]), s_xo[c], sum);
      }
    }
    sum += xbias;
    if (p.bias) sum += to_f(static_cast<const T*>(p.bias)[row]);
    static_cast<T*>(p.y)[row] = from_f<T>(sum);
  }
}

template <typename T, int V, bool kGroupReach>
__global__ void __launch_bounds__(sorted_threads<V>(), 1) sorted_kernel(SortedParams sp) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int kWarps = sorted_threads<V>() / 32;
  const Params& p = sp.p;
  const LayerArgs& a = p.a;
  const SortedLayout& s = sp.s;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int gs = a.group_size;
  const int R = a.num_vectors;
  const int r0 = static_cast<int>(int64_t{R} * blockIdx.x / gridDim.x);
  const int r1 = static_cast<int>(int64_t{R} * (blockIdx.x + 1) / gridDim.x);
  const int nrows = r1 - r0;
  const int64_t K = int64_t{1} << a.index_bits;
  const int64_t Kr = a.res_centroids ? int64_t{1} << a.res_bits : 0;
  constexpr int kSortedRing = sorted_ring(V);

  float* s_x = reinterpret_cast<float*>(smem);
  const int64_t x_bytes = sorted_round16(int64_t{gs + 1} * 4);
  T* s_cb = reinterpret_cast<T*>(smem + x_bytes);
  float* s_xo = reinterpret_cast<float*>(
      smem + sorted_parts_offset(gs, (K > Kr ? K : Kr) * V * int64_t{sizeof(T)}, kGroupReach));
  float* s_part = s_xo + extra_x_bytes(a) / 4;

  // a row may leave fewer pieces than it has slots: the rest must add nothing
  const int slots = sorted_slots(s.chunks, kWarps, R / static_cast<int>(gridDim.x));
  const int per_row = s.lists * slots;
  for (int i = threadIdx.x; i < nrows * per_row * V; i += blockDim.x) s_part[i] = 0.f;
  uint32_t lanes_le;
  asm("mov.u32 %0, %%lanemask_le;" : "=r"(lanes_le));
  // The block's lists of one codebook are contiguous: [nrows][groups] groups, cut into
  // chunks. Warp w takes the chunks [units * w / W, units * (w + 1) / W) in row-major order,
  // so every warp gets the same number of groups to within one chunk, pays for one pipeline
  // start, and crosses a row or two.
  const int units = nrows * s.chunks;
  const int u0 = static_cast<int>(int64_t{units} * warp / kWarps);
  const int u1 = static_cast<int>(int64_t{units} * (warp + 1) / kWarps);
  const int rl0 = u0 / s.chunks;
  const int c0 = u0 - rl0 * s.chunks;
  const int rl1 = u1 / s.chunks;
  const int64_t flat0 = int64_t{rl0} * s.groups + c0 * s.chunk_groups;
  const int total = static_cast<int>(int64_t{rl1} * s.groups +
                                     (u1 - rl1 * s.chunks) * s.chunk_groups - flat0);
  // the slot of the warp's first piece: its place among the warps that meet row rl0 (the
  // first of them holds the row's first chunk), or, with empty ranges about, its chunk
  const int first_slot =
      units >= kWarps ? warp - ((rl0 * s.chunks + 1) * kWarps - 1) / units : c0;
  const uint4* entries = reinterpret_cast<const uint4*>(s.entries);

  for (int b = 0; b < s.lists; ++b) {
    const T* cb = static_cast<const T*>(b == 0 ? a.centroids : a.res_centroids);
    const int64_t Kb = b == 0 ? K : Kr;
    uint32_t kmax = static_cast<uint32_t>(Kb - 1);
    // opaque: kept in a register, where the compiler would rebuild it from the params every
    // group (6 instructions)
    asm volatile("" : "+r"(kmax));
    uint32_t xmask = kGroupReach ? static_cast<uint32_t>(sorted_group_reach(gs) - 4) : 0u;
    if constexpr (kGroupReach) asm volatile("" : "+r"(xmask));
    const int64_t list0 = int64_t{b} * R + r0;  // the block's first list of this codebook
    const uint4* e = entries + (list0 * s.groups + flat0) * 32 + lane;
    constexpr int kAhead = kSortedRing - 1;
    // a ring of kSortedRing loads, kAhead groups ahead (below). Its first loads and the base
    // code touch no shared memory: they are in flight while the codebook (and, for the first,
    // the activations) is staged.
    uint4 ring[kSortedRing];
    int base = -1;
    if (total > 0) {
      ring[0] = load_stream(e);
#pragma unroll
      for (int k = 1; k < kAhead; ++k) ring[k] = k < total ? load_stream(e + k * 32) : ring[0];
      base = s.chunk_base[(list0 + rl0) * s.chunks + c0];
    }
    __syncthreads();  // the previous codebook's readers are done
    {
      // K * V * sizeof(T) is a multiple of 4 (K even); ops.cpp aligns codebooks to 16 bytes
      const int n = static_cast<int>(Kb * V * int64_t{sizeof(T)} / 4);
      stage_copy(reinterpret_cast<uint32_t*>(s_cb), reinterpret_cast<const uint32_t*>(cb), n,
                 (n + 3) / 4 * 4, true);
      cp_commit();
    }
    if (b == 0) {  // behind the first loads and the codebook's copies, which it overlaps
      stage_xs<T>(p, s_x, s_xo);
      cp_commit();
    }
    cp_wait<0>();
    __syncthreads();
    if (total <= 0) continue;
    int rl = rl0;
    int slot = first_slot;  // of the open piece; a piece from a row's start takes slot 0
    int row_end = s.groups - c0 * s.chunk_groups;  // groups of the range before a row ends
    float acc[V];
#pragma unroll
    for (int l = 0; l < V; ++l) acc[l] = 0.f;
    // the open piece's sums into its slot, and a fresh piece from the next row's start
    auto flush = [&]() {
#pragma unroll
      for (int l = 0; l < V; ++l) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[l] += __shfl_xor_sync(0xffffffffu, acc[l], o);
      }
      if (lane == 0) {
        float* dst = s_part + ((int64_t{rl} * s.lists + b) * slots + slot) * V;
#pragma unroll
        for (int l = 0; l < V; ++l) dst[l] = acc[l];
      }
#pragma unroll
      for (int l = 0; l < V; ++l) acc[l] = 0.f;
    };
    // the 4 warp steps of one 16-byte load per lane
    auto steps = [&](const uint4& q) {
      const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t ev = w[j];
        uint32_t flags;  // the new-code flags; one LOP3 to a predicate (the compiler's own
                         // test takes a sign extension and a compare)
        asm("{\n\t.reg .pred f;\n\t.reg .b32 t;\n\t"
            "and.b32 t, %1, %2;\n\tsetp.ne.u32 f, t, 0;\n\t"
            "vote.sync.ballot.b32 %0, f, 0xffffffff;\n\t}"
            : "=r"(flags)
            : "r"(ev), "n"(kSortedNewCode));
        // a malformed layout cannot leave the codebook (the clamp fuses with the add) nor
        // the block's shared memory (the columns' reach, above)
        const uint32_t code = min(static_cast<uint32_t>(base + __popc(flags & lanes_le)), kmax);
        base += __popc(flags);
        const char* xs = reinterpret_cast<const char*>(s_x);
        float xv;
        if constexpr (kGroupReach) {
          xv = *reinterpret_cast<const float*>(xs + (ev & xmask)) +
               *reinterpret_cast<const float*>(xs + ((ev >> kSortedSecondBytes) & xmask));
        } else {
          xv = *reinterpret_cast<const float*>(xs + (ev & kSortedFirstBytes)) +
               s_x[ev >> kSortedSecond];
        }
        Entry<T, V> ent;
        ent.load(s_cb + code * V);
        float cv[V];
        ent.get(cv);
#pragma unroll
        for (int l = 0; l < V; ++l) acc[l] = fmaf(xv, cv[l], acc[l]);
      }
    };
    // The ring is unrolled by its length so that no registers are copied from one slot to
    // the next; the block's groups of one codebook are contiguous, so the loads run on
    // across rows.
    // group gi of the range, in ring slot u: start the load kAhead groups on, take the 4
    // steps, and close the piece where a row ends
    auto group = [&](int gi, int u) {
      const int ahead = gi + kAhead;
      if (ahead < total) ring[(u + kAhead) % kSortedRing] = load_stream(e + ahead * 32);
      steps(ring[u]);
      if (gi + 1 == row_end) {  // warp-uniform
        flush();
        ++rl;
        slot = 0;
        base = -1;
        row_end += s.groups;
      }
    };
    // whole turns of the ring without a bounds check per group, then the last groups
    int g = 0;
    for (; g + kSortedRing <= total; g += kSortedRing) {
#pragma unroll
      for (int u = 0; u < kSortedRing; ++u) group(g + u, u);
    }
#pragma unroll
    for (int u = 0; u < kSortedRing - 1; ++u) {
      if (g + u < total) group(g + u, u);
    }
    if (total > row_end - s.groups) flush();  // the range ends inside a row
  }
  __syncthreads();
  sorted_epilogue<T, V>(p, s_part, r0, nrows, per_row, s_part - extra_x_bytes(a) / 4);
}

}  // namespace gemv
}  // namespace vptq
