// Torch operator registration (namespace vptq_rs) for the CUDA kernels: argument checks
// that name the offending tensor, output allocation, stream and device handling.
// Fake (meta) implementations are registered from Python (vptq_rs/cuda_ext.py).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <type_traits>
#include <optional>

#include "vptq_kernels.h"

namespace {

using at::Tensor;

// Error messages: the device machine's build crashed (segfault) when a failing TORCH_CHECK
// streamed an integer or a shape into its message, while strings and dtypes were fine, so
// messages are assembled here with snprintf and handed over as one string.
void append(std::string& s, const char* v) { s += v; }
void append(std::string& s, const std::string& v) { s += v; }
void append(std::string& s, at::ScalarType v) { s += c10::toString(v); }
void append(std::string& s, const c10::Device& v) { s += v.str(); }
template <typename I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
void append(std::string& s, I v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  s += buf;
}
void append(std::string& s, at::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    append(s, v[i]);
  }
  s += "]";
}
template <typename... A>
std::string message(const A&... parts) {
  std::string s;
  (append(s, parts), ...);
  return s;
}
#define VPTQ_CHECK(cond, ...) TORCH_CHECK(cond, message(__VA_ARGS__))
using OptTensor = std::optional<Tensor>;

void check_cuda(cudaError_t e, const char* what) {
  VPTQ_CHECK(e == cudaSuccess, what, " failed: ", cudaGetErrorString(e));
}

int dtype_code(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat: return vptq::kF32;
    case at::kHalf: return vptq::kF16;
    case at::kBFloat16: return vptq::kBF16;
    default: VPTQ_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t);
  }
  return 0;
}

void check_on(const Tensor& t, const Tensor& ref, const char* name) {
  VPTQ_CHECK(t.is_cuda(), name, " must be on CUDA");
  VPTQ_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), ", got ",
             t.device());
  VPTQ_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Codebooks must start 16-byte aligned for the vector loads; a view may not be.
Tensor aligned(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

struct Layer {
  vptq::LayerArgs a;
  std::vector<Tensor> keep;  // tensors made here that must outlive the launch
};

Layer make_layer(const Tensor& indices, const Tensor& centroids, const OptTensor& res_centroids,
                 const OptTensor& outlier_indices, const OptTensor& outlier_centroids,
                 const OptTensor& weight_scale, const OptTensor& weight_bias, int64_t rows,
                 int64_t cols, int64_t vector_len, int64_t index_bits, int64_t res_bits,
                 int64_t group_num, int64_t outlier_size, int64_t outlier_vector_len) {
  Layer L;
  auto& a = L.a;
  check_on(indices, indices, "indices");
  VPTQ_CHECK(indices.scalar_type() == at::kInt, "indices must be int32, got ",
             indices.scalar_type());
  VPTQ_CHECK(index_bits >= 1 && index_bits <= 16, "index_bits must be in [1, 16], got ",
             index_bits);
  VPTQ_CHECK(res_bits >= 0 && res_bits <= 16, "res_bits must be in [0, 16], got ", res_bits);
  VPTQ_CHECK(vector_len >= 1 && vector_len <= 16, "vector_len must be in [1, 16], got ",
             vector_len);
  VPTQ_CHECK(rows >= 1 && cols >= 1, "rows and cols must be positive");
  VPTQ_CHECK(group_num >= 1 && outlier_size >= 0 && outlier_size < cols &&
                 (cols - outlier_size) % group_num == 0,
             "group_num ", group_num, " must divide cols - outlier_size = ", cols - outlier_size);
  const int64_t group_size = (cols - outlier_size) / group_num;
  const int64_t R = (rows + vector_len - 1) / vector_len;
  const int64_t tb = index_bits + res_bits;
  const int64_t W = (group_size * tb + 31) / 32;
  VPTQ_CHECK(indices.dim() == 3 && indices.size(0) == group_num && indices.size(1) == R &&
                 indices.size(2) == W,
             "indices must have shape [", group_num, ", ", R, ", ", W, "], got ",
             indices.sizes());
  check_on(centroids, indices, "centroids");
  const int64_t K = int64_t{1} << index_bits;
  VPTQ_CHECK(centroids.numel() == group_num * K * vector_len, "centroids must hold G*K*v = ",
             group_num * K * vector_len, " values, got ", centroids.numel());
  a.cb_dtype = dtype_code(centroids.scalar_type(), "centroids");
  Tensor cb = aligned(centroids);
  L.keep.push_back(cb);
  a.centroids = cb.data_ptr();
  if (res_bits > 0) {
    VPTQ_CHECK(res_centroids.has_value(), "res_centroids is required when res_bits > 0");
    const Tensor& r = *res_centroids;
    check_on(r, indices, "res_centroids");
    VPTQ_CHECK(r.scalar_type() == centroids.scalar_type(),
               "res_centroids must have the centroids' dtype ", centroids.scalar_type());
    const int64_t Kr = int64_t{1} << res_bits;
    VPTQ_CHECK(r.numel() == group_num * Kr * vector_len, "res_centroids must hold G*Kres*v = ",
               group_num * Kr * vector_len, " values, got ", r.numel());
    Tensor rr = aligned(r);
    L.keep.push_back(rr);
    a.res_centroids = rr.data_ptr();
  }
  if (outlier_size > 0) {
    VPTQ_CHECK(outlier_indices.has_value() && outlier_centroids.has_value(),
               "outlier_indices and outlier_centroids are required when outlier_size > 0");
    VPTQ_CHECK(outlier_vector_len >= 1, "outlier_vector_len must be >= 1");
    const Tensor& oi = *outlier_indices;
    const Tensor& oc = *outlier_centroids;
    check_on(oi, indices, "outlier_indices");
    check_on(oc, indices, "outlier_centroids");
    VPTQ_CHECK(oi.scalar_type() == at::kShort, "outlier_indices must be int16, got ",
               oi.scalar_type());
    const int64_t R0 = (rows + outlier_vector_len - 1) / outlier_vector_len;
    VPTQ_CHECK(oi.numel() == R0 * outlier_size, "outlier_indices must have shape [1, ", R0,
               ", ", outlier_size, "], got ", oi.sizes());
    VPTQ_CHECK(oc.scalar_type() == centroids.scalar_type(),
               "outlier_centroids must have the centroids' dtype");
    VPTQ_CHECK(oc.numel() % outlier_vector_len == 0 && oc.numel() > 0,
               "outlier_centroids must hold K0*v0 values");
    a.outlier_indices = oi.data_ptr<int16_t>();
    a.outlier_centroids = oc.data_ptr();
  }
  int norm_dtype = -1;
  for (auto* pr : {&weight_scale, &weight_bias}) {
    if (!pr->has_value()) continue;
    const Tensor& t = **pr;
    const char* name = pr == &weight_scale ? "weight_scale" : "weight_bias";
    check_on(t, indices, name);
    VPTQ_CHECK(t.numel() == cols, name, " must have ", cols, " values, got ", t.numel());
    const int code = dtype_code(t.scalar_type(), name);
    VPTQ_CHECK(norm_dtype < 0 || norm_dtype == code,
               "weight_scale and weight_bias must have the same dtype");
    norm_dtype = code;
  }
  a.norm_dtype = norm_dtype < 0 ? vptq::kF32 : norm_dtype;
  if (weight_scale.has_value()) a.weight_scale = weight_scale->data_ptr();
  if (weight_bias.has_value()) a.weight_bias = weight_bias->data_ptr();
  a.indices = indices.data_ptr<int32_t>();
  a.rows = static_cast<int>(rows);
  a.cols = static_cast<int>(cols);
  a.v = static_cast<int>(vector_len);
  a.index_bits = static_cast<int>(index_bits);
  a.res_bits = static_cast<int>(res_bits);
  a.groups = static_cast<int>(group_num);
  a.group_size = static_cast<int>(group_size);
  a.words = static_cast<int>(W);
  a.num_vectors = static_cast<int>(R);
  a.outlier_size = static_cast<int>(outlier_size);
  a.outlier_v = static_cast<int>(outlier_size > 0 ? outlier_vector_len : 1);
  return L;
}

// perm: int16 (bits of uint16), int32 or int64, cols values
void check_perm(const Tensor& perm, const Tensor& ref, int64_t cols) {
  check_on(perm, ref, "perm");
  VPTQ_CHECK(perm.numel() == cols, "perm must have ", cols, " values, got ", perm.numel());
  VPTQ_CHECK(perm.scalar_type() == at::kShort || perm.scalar_type() == at::kInt ||
                 perm.scalar_type() == at::kLong,
             "perm must be int16, int32 or int64, got ", perm.scalar_type());
}

// perm -> int32 values
Tensor perm_i32(const Tensor& perm, const Tensor& ref, int64_t cols) {
  check_perm(perm, ref, cols);
  Tensor p = perm.to(at::kInt);
  if (perm.scalar_type() == at::kShort) p = p.bitwise_and(0xFFFF);
  return p.contiguous();
}

Tensor dequant(const Tensor& indices, const Tensor& centroids, const OptTensor& res_centroids,
               const OptTensor& outlier_indices, const OptTensor& outlier_centroids,
               const OptTensor& perm, const OptTensor& weight_scale,
               const OptTensor& weight_bias, int64_t rows, int64_t cols, int64_t vector_len,
               int64_t index_bits, int64_t res_bits, int64_t group_num, int64_t outlier_size,
               int64_t outlier_vector_len, at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(indices.device());
  Layer L = make_layer(indices, centroids, res_centroids, outlier_indices, outlier_centroids,
                       weight_scale, weight_bias, rows, cols, vector_len, index_bits, res_bits,
                       group_num, outlier_size, outlier_vector_len);
  const int out_code = dtype_code(out_dtype, "out_dtype");
  VPTQ_CHECK(int64_t{L.a.num_vectors} * cols < (int64_t{1} << 31),
             "dequant: (rows / v) * cols must stay below 2^31");
  Tensor inv;
  if (perm.has_value()) {
    Tensor p = perm_i32(*perm, indices, cols);
    inv = at::empty_like(p);
    inv.scatter_(0, p.to(at::kLong), at::arange(cols, p.options()));
  }
  Tensor out = at::empty({rows, cols}, indices.options().dtype(out_dtype));
  check_cuda(vptq::launch_dequant(L.a, inv.defined() ? inv.data_ptr<int32_t>() : nullptr,
                                  out.data_ptr(), out_code,
                                  at::cuda::getCurrentCUDAStream().stream()),
             "vptq_rs::dequant");
  return out;
}

// x: on the layer's device, contiguous, in the codebooks' dtype, which must be fp16 or bf16.
void check_activations(const Layer& L, const Tensor& x, const Tensor& indices,
                       const Tensor& centroids, const char* op) {
  check_on(x, indices, "x");
  VPTQ_CHECK(x.scalar_type() == centroids.scalar_type(), "x must have the centroids' dtype ",
             centroids.scalar_type(), ", got ", x.scalar_type());
  VPTQ_CHECK(L.a.cb_dtype != vptq::kF32, op, " needs fp16 or bf16 codebooks");
}

// Norms the prologue reads (fp32 or the codebook dtype) and the bias's length and dtype.
void prepare_gemv_inputs(Layer& L, const Tensor& x, const OptTensor& weight_scale,
                         const OptTensor& weight_bias, const OptTensor& bias, int64_t rows) {
  if (L.a.norm_dtype != vptq::kF32 && L.a.norm_dtype != L.a.cb_dtype) {
    for (auto* pr : {&weight_scale, &weight_bias}) {
      if (!pr->has_value()) continue;
      Tensor f = (*pr)->to(at::kFloat);
      L.keep.push_back(f);
      (pr == &weight_scale ? L.a.weight_scale : L.a.weight_bias) = f.data_ptr();
    }
    L.a.norm_dtype = vptq::kF32;
  }
  if (bias.has_value()) {
    check_on(*bias, x, "bias");
    VPTQ_CHECK(bias->numel() == rows && bias->scalar_type() == x.scalar_type(),
               "bias must have ", rows, " values of dtype ", x.scalar_type());
  }
}

// The perm as the GEMV kernels read it: int16 (the checkpoint's) and int32 as they are,
// int64 narrowed; undefined when there is none.
Tensor kernel_perm(const OptTensor& perm, const Tensor& ref, int64_t cols) {
  if (!perm.has_value()) return Tensor();
  check_perm(*perm, ref, cols);
  return perm->scalar_type() == at::kLong ? perm->to(at::kInt) : *perm;
}

Tensor gemv(const Tensor& x, const Tensor& indices, const Tensor& centroids,
            const OptTensor& res_centroids, const OptTensor& outlier_indices,
            const OptTensor& outlier_centroids, const OptTensor& perm,
            const OptTensor& weight_scale, const OptTensor& weight_bias, const OptTensor& bias,
            int64_t rows, int64_t cols, int64_t vector_len, int64_t index_bits,
            int64_t res_bits, int64_t group_num, int64_t outlier_size,
            int64_t outlier_vector_len, int64_t mode) {
  const c10::cuda::CUDAGuard guard(indices.device());
  Layer L = make_layer(indices, centroids, res_centroids, outlier_indices, outlier_centroids,
                       weight_scale, weight_bias, rows, cols, vector_len, index_bits, res_bits,
                       group_num, outlier_size, outlier_vector_len);
  check_activations(L, x, indices, centroids, "gemv");
  VPTQ_CHECK(x.dim() == 2 && x.size(1) == cols, "x must have shape [tokens, ", cols, "], got ",
             x.sizes());
  const int64_t tokens = x.size(0);
  VPTQ_CHECK(tokens >= 1 && tokens <= 8, "gemv takes 1 to 8 tokens, got ", tokens);
  VPTQ_CHECK(mode >= 0 && mode <= 3,
             "mode must be 0 (auto), 1 (shared-memory codebooks), 2 (L1/L2 codebooks) or 3 "
             "(histogram), got ",
             mode);
  VPTQ_CHECK(mode != 3 || vptq::gemv_hist_applies(L.a, static_cast<int>(tokens)),
             "mode 3 (histogram) needs 1 token, group_num 1 and index and residual bits <= 13");
  prepare_gemv_inputs(L, x, weight_scale, weight_bias, bias, rows);
  Tensor p = kernel_perm(perm, indices, cols);
  Tensor ws = at::empty({vptq::gemv_workspace_floats(static_cast<int>(cols),
                                                     static_cast<int>(tokens))},
                        x.options().dtype(at::kFloat));
  Tensor y = at::empty({tokens, rows}, x.options());
  check_cuda(vptq::launch_gemv(L.a, x.data_ptr(), static_cast<int>(tokens),
                               p.defined() ? p.data_ptr() : nullptr,
                               p.defined() ? static_cast<int>(p.element_size()) : 4,
                               bias.has_value() ? bias->data_ptr() : nullptr, y.data_ptr(),
                               ws.data_ptr<float>(), static_cast<int>(mode),
                               at::cuda::getCurrentCUDAStream().stream()),
             "vptq_rs::gemv");
  return y;
}

// The checks the layout-reading one-token ops share, after make_layer: the activations,
// one token, one group.
void check_one_token(const Layer& L, const Tensor& x, const Tensor& indices,
                     const Tensor& centroids, int64_t cols, int64_t group_num, const char* op) {
  check_activations(L, x, indices, centroids, op);
  VPTQ_CHECK(x.dim() == 2 && x.size(0) == 1 && x.size(1) == cols, "x must have shape [1, ",
             cols, "] (", op, " takes one token), got ", x.sizes());
  VPTQ_CHECK(group_num == 1, op, " needs group_num 1, got ", group_num);
}

// y [1, rows] from a layout-reading one-token kernel: the inputs prepared as for gemv, then
// launch(perm, perm_bytes, bias, y, workspace, stream) -> cudaError_t.
template <typename Launch>
Tensor run_one_token(Layer& L, const Tensor& x, const Tensor& indices, const OptTensor& perm,
                     const OptTensor& weight_scale, const OptTensor& weight_bias,
                     const OptTensor& bias, int64_t rows, int64_t cols, const char* op,
                     Launch launch) {
  prepare_gemv_inputs(L, x, weight_scale, weight_bias, bias, rows);
  Tensor p = kernel_perm(perm, indices, cols);
  // the prologue kernel's output, when the kernel does not compute xs itself
  Tensor ws;
  if (!vptq::gemv_one_token_prologue_fused(L.a)) {
    ws = at::empty({vptq::gemv_workspace_floats(static_cast<int>(cols), 1)},
                   x.options().dtype(at::kFloat));
  }
  Tensor y = at::empty({1, rows}, x.options());
  check_cuda(launch(p.defined() ? p.data_ptr() : nullptr,
                    p.defined() ? static_cast<int>(p.element_size()) : 4,
                    bias.has_value() ? bias->data_ptr() : nullptr, y.data_ptr(),
                    ws.defined() ? ws.data_ptr<float>() : nullptr,
                    at::cuda::getCurrentCUDAStream().stream()),
             op);
  return y;
}

Tensor gemv_sorted(const Tensor& x, const Tensor& entries, const Tensor& chunk_base,
                   int64_t chunk_groups, const Tensor& indices, const Tensor& centroids,
                   const OptTensor& res_centroids, const OptTensor& outlier_indices,
                   const OptTensor& outlier_centroids, const OptTensor& perm,
                   const OptTensor& weight_scale, const OptTensor& weight_bias,
                   const OptTensor& bias, int64_t rows, int64_t cols, int64_t vector_len,
                   int64_t index_bits, int64_t res_bits, int64_t group_num,
                   int64_t outlier_size, int64_t outlier_vector_len) {
  const c10::cuda::CUDAGuard guard(indices.device());
  Layer L = make_layer(indices, centroids, res_centroids, outlier_indices, outlier_centroids,
                       weight_scale, weight_bias, rows, cols, vector_len, index_bits, res_bits,
                       group_num, outlier_size, outlier_vector_len);
  check_one_token(L, x, indices, centroids, cols, group_num, "gemv_sorted");
  const int64_t lists = res_bits > 0 ? 2 : 1;
  check_on(entries, indices, "entries");
  VPTQ_CHECK(entries.scalar_type() == at::kInt, "entries must be int32, got ",
             entries.scalar_type());
  VPTQ_CHECK(entries.dim() == 3 && entries.size(0) == lists &&
                 entries.size(1) == L.a.num_vectors && entries.size(2) > 0 &&
                 entries.size(2) % 128 == 0,
             "entries must have shape [", lists, ", ", L.a.num_vectors,
             ", a multiple of 128], got ", entries.sizes());
  const int64_t groups = entries.size(2) / 128;
  VPTQ_CHECK(chunk_groups >= 1, "chunk_groups must be >= 1, got ", chunk_groups);
  const int64_t chunks = (groups + chunk_groups - 1) / chunk_groups;
  check_on(chunk_base, indices, "chunk_base");
  VPTQ_CHECK(chunk_base.scalar_type() == at::kInt && chunk_base.dim() == 3 &&
                 chunk_base.size(0) == lists && chunk_base.size(1) == L.a.num_vectors &&
                 chunk_base.size(2) == chunks,
             "chunk_base must be int32 [", lists, ", ", L.a.num_vectors, ", ", chunks,
             "], got ", chunk_base.scalar_type(), " ", chunk_base.sizes());
  Tensor ent = aligned(entries);
  L.keep.push_back(ent);
  vptq::SortedLayout sl;
  sl.entries = ent.data_ptr<int32_t>();
  sl.chunk_base = chunk_base.data_ptr<int32_t>();
  sl.lists = static_cast<int>(lists);
  sl.groups = static_cast<int>(groups);
  sl.chunks = static_cast<int>(chunks);
  sl.chunk_groups = static_cast<int>(chunk_groups);
  VPTQ_CHECK(vptq::gemv_sorted_applies(L.a, sl),
             "gemv_sorted: group_size ", L.a.group_size,
             " with this codebook does not fit the kernel (group_size <= 32767 and xs, one "
             "codebook and the partial sums in shared memory)");
  return run_one_token(L, x, indices, perm, weight_scale, weight_bias, bias, rows, cols,
                       "vptq_rs::gemv_sorted",
                       [&](const void* pm, int pb, const void* bs, void* y, float* ws,
                           cudaStream_t st) {
                         return vptq::launch_gemv_sorted(L.a, sl, x.data_ptr(), pm, pb, bs, y,
                                                         ws, st);
                       });
}

Tensor gemv_tiled(const Tensor& x, const Tensor& entries, const Tensor& tile_start,
                  int64_t tile_codes, const Tensor& indices, const Tensor& centroids,
                  const OptTensor& res_centroids, const OptTensor& outlier_indices,
                  const OptTensor& outlier_centroids, const OptTensor& perm,
                  const OptTensor& weight_scale, const OptTensor& weight_bias,
                  const OptTensor& bias, int64_t rows, int64_t cols, int64_t vector_len,
                  int64_t index_bits, int64_t res_bits, int64_t group_num,
                  int64_t outlier_size, int64_t outlier_vector_len, int64_t form) {
  const c10::cuda::CUDAGuard guard(indices.device());
  Layer L = make_layer(indices, centroids, res_centroids, outlier_indices, outlier_centroids,
                       weight_scale, weight_bias, rows, cols, vector_len, index_bits, res_bits,
                       group_num, outlier_size, outlier_vector_len);
  check_one_token(L, x, indices, centroids, cols, group_num, "gemv_tiled");
  VPTQ_CHECK(form == 0 || form == 2 || ((form == 1 || form == 3) && vector_len == 8),
             "form must be 0 (scalar), 1 (mma, vector_len 8 only), 2 (cluster) or 3 (cluster "
             "over mma entries, vector_len 8 only), got ", form);
  const bool mma_entries = form == 1 || form == 3;
  VPTQ_CHECK(tile_codes >= 8 && tile_codes <= 65536 && (tile_codes & (tile_codes - 1)) == 0,
             "tile_codes must be a power of two in [8, 65536], got ", tile_codes);
  const int64_t lists = res_bits > 0 ? 2 : 1;
  const int64_t widest = int64_t{1} << std::max(index_bits, res_bits);
  const int64_t tiles = (widest + tile_codes - 1) / tile_codes;
  const int64_t gs = L.a.group_size;
  check_on(entries, indices, "entries");
  if (!mma_entries) {
    VPTQ_CHECK(entries.scalar_type() == at::kInt && entries.dim() == 3 &&
                   entries.size(0) == L.a.num_vectors && entries.size(1) == lists &&
                   entries.size(2) == gs,
               "entries must be int32 [", L.a.num_vectors, ", ", lists, ", ", gs, "], got ",
               entries.scalar_type(), " ", entries.sizes());
  } else {
    VPTQ_CHECK(entries.scalar_type() == at::kInt && entries.dim() == 3 &&
                   entries.size(0) == L.a.num_vectors && entries.size(1) == lists &&
                   entries.size(2) >= gs && entries.size(2) % 32 == 0 &&
                   entries.size(2) <= (int64_t{1} << 30),
               "entries must be int32 [", L.a.num_vectors, ", ", lists,
               ", n] with n >= ", gs, " a multiple of 32, got ", entries.scalar_type(), " ",
               entries.sizes());
  }
  check_on(tile_start, indices, "tile_start");
  VPTQ_CHECK(tile_start.scalar_type() == at::kInt && tile_start.dim() == 3 &&
                 tile_start.size(0) == L.a.num_vectors && tile_start.size(1) == lists &&
                 tile_start.size(2) == tiles + 1,
             "tile_start must be int32 [", L.a.num_vectors, ", ", lists, ", ", tiles + 1,
             "], got ", tile_start.scalar_type(), " ", tile_start.sizes());
  Tensor ent = entries.contiguous();
  Tensor starts = tile_start.contiguous();
  L.keep.push_back(ent);
  L.keep.push_back(starts);
  vptq::TiledLayout tl;
  tl.entries = ent.data_ptr<int32_t>();
  tl.tile_start = starts.data_ptr<int32_t>();
  tl.lists = static_cast<int>(lists);
  tl.tiles = static_cast<int>(tiles);
  tl.tile_codes = static_cast<int>(tile_codes);
  tl.list_len = static_cast<int>(ent.size(2));
  tl.mma = mma_entries ? 1 : 0;
  tl.cluster = form >= 2 ? 1 : 0;
  VPTQ_CHECK(vptq::gemv_tiled_applies(L.a, tl),
             "gemv_tiled: this layer does not fit the kernel (group_size <= 65534, at most "
             "two vector rows a warp, and xs plus two tiles of ", tile_codes,
             " codebook rows in shared memory; the mma form needs an sm_80+ GPU, the cluster "
             "form an sm_90+ GPU and xs plus one tile)");
  return run_one_token(L, x, indices, perm, weight_scale, weight_bias, bias, rows, cols,
                       "vptq_rs::gemv_tiled",
                       [&](const void* pm, int pb, const void* bs, void* y, float* ws,
                           cudaStream_t st) {
                         return vptq::launch_gemv_tiled(L.a, tl, x.data_ptr(), pm, pb, bs, y, ws,
                                                        st);
                       });
}

void check_points(const Tensor& x) {
  VPTQ_CHECK(x.is_cuda(), "x must be on CUDA");
  VPTQ_CHECK(x.scalar_type() == at::kFloat, "x must be float32, got ", x.scalar_type());
  VPTQ_CHECK(x.dim() == 2 && x.size(1) >= 1 && x.size(1) <= 16,
             "x must have shape [n, d] with 1 <= d <= 16, got ", x.sizes());
  VPTQ_CHECK(x.is_contiguous(), "x must be contiguous");
}

std::tuple<Tensor, Tensor> kmeans_assign(const Tensor& x, const Tensor& centroids,
                                         int64_t mode, int64_t design) {
  check_points(x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_on(centroids, x, "centroids");
  VPTQ_CHECK(centroids.scalar_type() == at::kFloat && centroids.dim() == 2 &&
                 centroids.size(1) == x.size(1) && centroids.size(0) >= 1,
             "centroids must be float32 [k, ", x.size(1), "], got ", centroids.sizes());
  VPTQ_CHECK(centroids.size(0) <= (int64_t{1} << 24), "k must be <= 2^24");
  VPTQ_CHECK(mode >= 0 && mode <= 3,
             "mode must be 0 (fp32), 1 (tf32), 2 (tf32x1) or 3 (fp16x1), got ", mode);
  VPTQ_CHECK(design == 0 || design == 1, "design must be 0 (merged) or 1 (tiled), got ",
             design);
  VPTQ_CHECK(mode != 3 || design == 1, "mode 3 (fp16x1) needs design 1 (tiled)");
  const int64_t n = x.size(0);
  const int k = static_cast<int>(centroids.size(0));
  const int d = static_cast<int>(x.size(1));
  const auto bytes = static_cast<int64_t>(vptq::kmeans_assign_scratch_bytes(
      n, k, d, static_cast<int>(mode), static_cast<int>(design)));
  Tensor scratch = at::empty({std::max<int64_t>(bytes, 16)}, x.options().dtype(at::kByte));
  Tensor labels = at::empty({n}, x.options().dtype(at::kInt));
  Tensor dist = at::empty({n}, x.options());
  check_cuda(vptq::launch_kmeans_assign(x.data_ptr<float>(), n, d, centroids.data_ptr<float>(),
                                        k, static_cast<int>(mode), static_cast<int>(design),
                                        scratch.data_ptr(), labels.data_ptr<int32_t>(),
                                        dist.data_ptr<float>(),
                                        at::cuda::getCurrentCUDAStream().stream()),
             "vptq_rs::kmeans_assign");
  return {labels, dist};
}

std::tuple<Tensor, Tensor> kmeans_update(const Tensor& x, const OptTensor& weights,
                                         const Tensor& labels, int64_t k) {
  check_points(x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_on(labels, x, "labels");
  VPTQ_CHECK(labels.scalar_type() == at::kInt && labels.numel() == x.size(0),
             "labels must be int32 [n]");
  VPTQ_CHECK(k >= 1, "k must be >= 1");
  const float* w = nullptr;
  if (weights.has_value()) {
    check_on(*weights, x, "weights");
    VPTQ_CHECK(weights->scalar_type() == at::kFloat && weights->numel() == x.size(0),
               "weights must be float32 [n]");
    w = weights->data_ptr<float>();
  }
  Tensor sums = at::zeros({k, x.size(1)}, x.options().dtype(at::kDouble));
  Tensor wsum = at::zeros({k}, x.options().dtype(at::kDouble));
  check_cuda(vptq::launch_kmeans_update(x.data_ptr<float>(), w, labels.data_ptr<int32_t>(),
                                        x.size(0), static_cast<int>(x.size(1)),
                                        static_cast<int>(k), sums.data_ptr<double>(),
                                        wsum.data_ptr<double>(),
                                        at::cuda::getCurrentCUDAStream().stream()),
             "vptq_rs::kmeans_update");
  return {sums, wsum};
}

Tensor kmeans_seed(const Tensor& x, const OptTensor& weights, int64_t k, int64_t seed) {
  check_points(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = x.size(0);
  VPTQ_CHECK(k >= 1 && k <= m, "k must be in [1, ", m, "], got ", k);
  const float* w = nullptr;
  if (weights.has_value()) {
    check_on(*weights, x, "weights");
    VPTQ_CHECK(weights->scalar_type() == at::kFloat && weights->numel() == m,
               "weights must be float32 [n]");
    w = weights->data_ptr<float>();
  }
  Tensor d2 = at::empty({m}, x.options());
  Tensor partials = at::empty({vptq::kmeanspp_blocks(m)}, x.options().dtype(at::kDouble));
  Tensor counter = at::zeros({1}, x.options().dtype(at::kInt));
  Tensor cent = at::empty({k, x.size(1)}, x.options());
  check_cuda(vptq::launch_kmeanspp(x.data_ptr<float>(), w, m, static_cast<int>(x.size(1)),
                                   static_cast<int>(k), static_cast<uint64_t>(seed),
                                   d2.data_ptr<float>(), partials.data_ptr<double>(),
                                   reinterpret_cast<unsigned int*>(counter.data_ptr<int32_t>()),
                                   cent.data_ptr<float>(),
                                   at::cuda::getCurrentCUDAStream().stream()),
             "vptq_rs::kmeans_seed");
  return cent;
}

}  // namespace

TORCH_LIBRARY(vptq_rs, m) {
  m.def(
      "dequant(Tensor indices, Tensor centroids, Tensor? res_centroids, "
      "Tensor? outlier_indices, Tensor? outlier_centroids, Tensor? perm, "
      "Tensor? weight_scale, Tensor? weight_bias, int rows, int cols, int vector_len, "
      "int index_bits, int res_bits, int group_num, int outlier_size, "
      "int outlier_vector_len, ScalarType out_dtype) -> Tensor");
  m.def(
      "gemv(Tensor x, Tensor indices, Tensor centroids, Tensor? res_centroids, "
      "Tensor? outlier_indices, Tensor? outlier_centroids, Tensor? perm, "
      "Tensor? weight_scale, Tensor? weight_bias, Tensor? bias, int rows, int cols, "
      "int vector_len, int index_bits, int res_bits, int group_num, int outlier_size, "
      "int outlier_vector_len, int mode) -> Tensor");
  m.def(
      "gemv_sorted(Tensor x, Tensor entries, Tensor chunk_base, int chunk_groups, "
      "Tensor indices, Tensor centroids, Tensor? res_centroids, Tensor? outlier_indices, "
      "Tensor? outlier_centroids, Tensor? perm, Tensor? weight_scale, Tensor? weight_bias, "
      "Tensor? bias, int rows, int cols, int vector_len, int index_bits, int res_bits, "
      "int group_num, int outlier_size, int outlier_vector_len) -> Tensor");
  m.def(
      "gemv_tiled(Tensor x, Tensor entries, Tensor tile_start, int tile_codes, "
      "Tensor indices, Tensor centroids, Tensor? res_centroids, Tensor? outlier_indices, "
      "Tensor? outlier_centroids, Tensor? perm, Tensor? weight_scale, Tensor? weight_bias, "
      "Tensor? bias, int rows, int cols, int vector_len, int index_bits, int res_bits, "
      "int group_num, int outlier_size, int outlier_vector_len, int form=0) -> Tensor");
  m.def("kmeans_assign(Tensor x, Tensor centroids, int mode, int design=0) -> (Tensor, Tensor)");
  m.def("kmeans_update(Tensor x, Tensor? weights, Tensor labels, int k) -> (Tensor, Tensor)");
  m.def("kmeans_seed(Tensor x, Tensor? weights, int k, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(vptq_rs, CUDA, m) {
  m.impl("dequant", &dequant);
  m.impl("gemv", &gemv);
  m.impl("gemv_sorted", &gemv_sorted);
  m.impl("gemv_tiled", &gemv_tiled);
  m.impl("kmeans_assign", &kmeans_assign);
  m.impl("kmeans_update", &kmeans_update);
  m.impl("kmeans_seed", &kmeans_seed);
}
