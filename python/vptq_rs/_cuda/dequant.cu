// Dequantization of one packed VPTQ layer to a dense matrix, bit-exact with
// vptq_rs.layout.QuantizedLayer.dequantize(): fp32 (main + res) * scale + bias with no
// fused multiply-add, rounded once to the output dtype.
#include <cstdlib>

#include "common.cuh"
#include "vptq_kernels.h"

namespace vptq {
namespace {

template <typename T>
__device__ __forceinline__ float norm_at(const void* p, int j) {
  return to_f(static_cast<const T*>(p)[j]);
}

__device__ __forceinline__ float load_norm(const void* p, int dtype, int j) {
  switch (dtype) {
    case kF16: return norm_at<__half>(p, j);
    case kBF16: return norm_at<__nv_bfloat16>(p, j);
    default: return norm_at<float>(p, j);
  }
}

// Row of v <= 16 codebook values with the widest loads its alignment allows (rows start at
// multiples of v * sizeof(T) bytes from a 16-byte aligned base).
template <typename T, typename C>
__device__ __forceinline__ void load_words(const T* p, int v, float (&out)[16]) {
  constexpr int kPer = sizeof(C) / sizeof(T);
  const C* src = reinterpret_cast<const C*>(p);
  const int n = v / kPer;
#pragma unroll
  for (int i = 0; i < 16 / kPer; ++i) {
    if (i >= n) break;
    union {
      C c;
      T t[kPer];
    } u;
    u.c = src[i];
#pragma unroll
    for (int k = 0; k < kPer; ++k) out[i * kPer + k] = to_f(u.t[k]);
  }
}

template <typename T>
__device__ __forceinline__ void load_row(const T* p, int v, float (&out)[16]) {
  const int bytes = v * static_cast<int>(sizeof(T));
  if (bytes % 16 == 0) {
    load_words<T, uint4>(p, v, out);
  } else if (bytes % 8 == 0) {
    load_words<T, uint2>(p, v, out);
  } else if (bytes % 4 == 0 && sizeof(T) <= 4) {
    load_words<T, uint32_t>(p, v, out);
  } else {
#pragma unroll
    for (int l = 0; l < 16; ++l) {
      if (l >= v) break;
      out[l] = to_f(p[l]);
    }
  }
}

// The v outputs of vector row rv in original column j (p = its permuted position): rows
// r0 .. r0 + nl - 1 of column j. The codes of group g sit at words + g * group_stride.
template <typename T, typename O>
__device__ __forceinline__ void dequant_column(const LayerArgs& a, O* __restrict__ out, int rv,
                                               int j, int p, const int32_t* words,
                                               int64_t group_stride) {
  const T* cb = static_cast<const T*>(a.centroids);
  const T* rcb = static_cast<const T*>(a.res_centroids);
  const T* ocb = static_cast<const T*>(a.outlier_centroids);
  const uint32_t main_mask = (1u << a.index_bits) - 1u;
  const int64_t kmain = int64_t{1} << a.index_bits;
  const int64_t kres = a.res_bits ? (int64_t{1} << a.res_bits) : 0;
  float sc = 1.f, bi = 0.f;
  if (a.weight_scale) sc = load_norm(a.weight_scale, a.norm_dtype, j);
  if (a.weight_bias) bi = load_norm(a.weight_bias, a.norm_dtype, j);
  const int r0 = rv * a.v;
  const int nl = min(a.v, a.rows - r0);
  if (p < a.outlier_size) {
    for (int l = 0; l < nl; ++l) {
      const int r = r0 + l;
      const int oi =
          static_cast<uint16_t>(a.outlier_indices[int64_t{r / a.outlier_v} * a.outlier_size + p]);
      float val = to_f(ocb[int64_t{oi} * a.outlier_v + r % a.outlier_v]);
      if (a.weight_scale) val = __fmul_rn(val, sc);
      if (a.weight_bias) val = __fadd_rn(val, bi);
      out[int64_t{r} * a.cols + j] = from_f<O>(val);
    }
    return;
  }
  const int q = p - a.outlier_size;
  const int g = q / a.group_size;
  const int c = q - g * a.group_size;
  const uint32_t code = read_code(words + g * group_stride, a.words, c,
                                  a.index_bits + a.res_bits);
  float ev[16], resv[16];
  load_row(cb + (g * kmain + (code & main_mask)) * a.v, a.v, ev);
  if (rcb) load_row(rcb + (g * kres + (code >> a.index_bits)) * a.v, a.v, resv);
#pragma unroll
  for (int l = 0; l < 16; ++l) {
    if (l >= nl) break;
    float val = ev[l];
    if (rcb) val = __fadd_rn(val, resv[l]);
    if (a.weight_scale) val = __fmul_rn(val, sc);
    if (a.weight_bias) val = __fadd_rn(val, bi);
    out[int64_t{r0 + l} * a.cols + j] = from_f<O>(val);
  }
}

// One block per vector row: the row's packed words (every group) are staged in shared memory
// with coalesced loads, then thread t takes original columns t, t + blockDim, ... and decodes
// the code at the column's permuted position from shared memory. With a perm, reading codes
// straight from global memory (the kernel below) takes a 32-byte sector per 4-byte word.
template <typename T, typename O>
__global__ void __launch_bounds__(256) dequant_staged_kernel(LayerArgs a,
                                                             const int32_t* __restrict__ invperm,
                                                             O* __restrict__ out) {
  extern __shared__ int32_t staged[];  // [groups][words]
  const int W = a.words;
  for (int rv = blockIdx.x; rv < a.num_vectors; rv += gridDim.x) {
    __syncthreads();  // the previous row's readers are done
    for (int g = 0; g < a.groups; ++g) {
      const int32_t* src = a.indices + (int64_t{g} * a.num_vectors + rv) * W;
      for (int w = threadIdx.x; w < W; w += blockDim.x) staged[g * W + w] = src[w];
    }
    __syncthreads();
    for (int j = threadIdx.x; j < a.cols; j += blockDim.x) {
      dequant_column<T, O>(a, out, rv, j, invperm ? invperm[j] : j, staged, W);
    }
  }
}

// One thread per (vector row rv, original column j), codes read from global memory: layers
// whose packed row does not fit in shared memory. A warp covers 32 consecutive columns so
// every store is coalesced.
template <typename T, typename O>
__global__ void dequant_kernel(LayerArgs a, const int32_t* __restrict__ invperm,
                               O* __restrict__ out) {
  const int64_t total = static_cast<int64_t>(a.num_vectors) * a.cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int ii = static_cast<int>(i);
    const int rv = ii / a.cols;
    const int j = ii - rv * a.cols;
    dequant_column<T, O>(a, out, rv, j, invperm ? invperm[j] : j,
                         a.indices + int64_t{rv} * a.words, int64_t{a.num_vectors} * a.words);
  }
}

// Staged kernel unless its shared memory does not fit, or VPTQ_RS_DEQUANT_STAGED=0 (tests
// compare the two).
inline bool use_staged(int64_t bytes, int* limit) {
  const char* e = std::getenv("VPTQ_RS_DEQUANT_STAGED");
  if (e != nullptr && e[0] == '0') return false;
  int dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  return bytes <= *limit - 1024;
}

template <typename T, typename O>
cudaError_t run(const LayerArgs& a, const int32_t* invperm, void* out, cudaStream_t s) {
  const int64_t total = int64_t{a.num_vectors} * a.cols;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t staged_bytes = int64_t{a.groups} * a.words * 4;
  int limit = 0;
  if (use_staged(staged_bytes, &limit)) {
    auto kern = dequant_staged_kernel<T, O>;
    if (staged_bytes > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(
          kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(staged_bytes));
      if (e != cudaSuccess) return e;
    }
    const int grid = a.num_vectors < (1 << 20) ? a.num_vectors : (1 << 20);
    kern<<<grid, threads, staged_bytes, s>>>(a, invperm, static_cast<O*>(out));
    return cudaGetLastError();
  }
  const int64_t blocks = (total + threads - 1) / threads;
  const int grid = static_cast<int>(blocks < (1 << 20) ? blocks : (1 << 20));
  dequant_kernel<T, O><<<grid, threads, 0, s>>>(a, invperm, static_cast<O*>(out));
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_out(const LayerArgs& a, const int32_t* invperm, void* out, int out_dtype,
                    cudaStream_t s) {
  switch (out_dtype) {
    case kF16: return run<T, __half>(a, invperm, out, s);
    case kBF16: return run<T, __nv_bfloat16>(a, invperm, out, s);
    case kF32: return run<T, float>(a, invperm, out, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_dequant(const LayerArgs& a, const int32_t* invperm, void* out, int out_dtype,
                           cudaStream_t stream) {
  switch (a.cb_dtype) {
    case kF16: return run_out<__half>(a, invperm, out, out_dtype, stream);
    case kBF16: return run_out<__nv_bfloat16>(a, invperm, out, out_dtype, stream);
    case kF32: return run_out<float>(a, invperm, out, out_dtype, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace vptq
