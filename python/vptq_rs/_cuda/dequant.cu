// Dequantization of one packed VPTQ layer to a dense matrix, bit-exact with
// vptq_rs.layout.QuantizedLayer.dequantize(): fp32 (main + res) * scale + bias with no
// fused multiply-add, rounded once to the output dtype.
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

// One thread per (vector row rv, original column j): decodes the code once and writes v
// outputs down the column; a warp covers 32 consecutive columns so every store is coalesced.
template <typename T, typename O>
__global__ void dequant_kernel(LayerArgs a, const int32_t* __restrict__ invperm,
                               O* __restrict__ out) {
  const T* cb = static_cast<const T*>(a.centroids);
  const T* rcb = static_cast<const T*>(a.res_centroids);
  const T* ocb = static_cast<const T*>(a.outlier_centroids);
  const int64_t total = static_cast<int64_t>(a.num_vectors) * a.cols;
  const int tb = a.index_bits + a.res_bits;
  const uint32_t main_mask = (1u << a.index_bits) - 1u;
  const int64_t kmain = int64_t{1} << a.index_bits;
  const int64_t kres = a.res_bits ? (int64_t{1} << a.res_bits) : 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int ii = static_cast<int>(i);
    const int rv = ii / a.cols;
    const int j = ii - rv * a.cols;
    const int p = invperm ? invperm[j] : j;
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
      continue;
    }
    const int q = p - a.outlier_size;
    const int g = q / a.group_size;
    const int c = q - g * a.group_size;
    const int32_t* row = a.indices + (int64_t{g} * a.num_vectors + rv) * a.words;
    const uint32_t code = read_code(row, a.words, c, tb);
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
}

template <typename T, typename O>
cudaError_t run(const LayerArgs& a, const int32_t* invperm, void* out, cudaStream_t s) {
  const int64_t total = int64_t{a.num_vectors} * a.cols;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
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
