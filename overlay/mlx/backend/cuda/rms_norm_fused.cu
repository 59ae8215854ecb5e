// Copyright © 2026 Apple Inc.

#include "mlx/backend/common/reduce.h"
#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/kernel_utils.cuh"
#include "mlx/backend/cuda/reduce/reduce.cuh"
#include "mlx/backend/gpu/copy.h"
#include "mlx/dtype_utils.h"
#include "mlx/fast_primitives.h"

#include <algorithm>

#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <nvtx3/nvtx3.hpp>

namespace mlx::core {

namespace cu {

namespace cg = cooperative_groups;

constexpr int RMS_FUSED_MAX_CHUNKS = 8;
// Up to 8 chunks of 16 bytes take about 90 registers a thread for bfloat16,
// which 1024 threads could not have.
constexpr int RMS_FUSED_SMALL_MAX_BLOCK = 512;
constexpr int RMS_FUSED_LOOPED_BLOCK = 1024;

struct Float2Plus {
  __device__ float2 operator()(const float2& a, const float2& b) const {
    return {a.x + b.x, a.y + b.y};
  }
};

// Sum over the block, broadcast to every thread. The order of the sums
// depends only on the block size, which depends only on the row length.
template <typename T, typename Op>
__device__ T block_sum(T x, T* warp_sums, const Op& op) {
  auto block = cg::this_thread_block();
  auto warp = cg::tiled_partition<WARP_SIZE>(block);
  x = cg::reduce(warp, x, op);
  if (block.size() > WARP_SIZE) {
    if (warp.thread_rank() == 0) {
      warp_sums[warp.meta_group_rank()] = x;
    }
    block.sync();
    x = warp.thread_rank() < warp.meta_group_size()
        ? warp_sums[warp.thread_rank()]
        : T{};
    x = cg::reduce(warp, x, op);
  }
  return x;
}

// h = x + r rounded to T, as the add op rounds it.
template <typename T, int N>
__device__ void add_in_place(
    AlignedVector<T, N>& x,
    const AlignedVector<T, N>& r) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    x[i] = static_cast<T>(static_cast<float>(x[i]) + static_cast<float>(r[i]));
  }
}

// One running sum over every value a thread reads, in order.
template <typename T, int N>
__device__ void add_squares(float& sum, const AlignedVector<T, N>& v) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    float t = static_cast<float>(v[i]);
    sum += t * t;
  }
}

template <typename T, int N>
__device__ void
scale(AlignedVector<T, N>& h, const AlignedVector<T, N>& w, float inv_rms) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    h[i] = w[i] * static_cast<T>(static_cast<float>(h[i]) * inv_rms);
  }
}

template <typename T, int N>
__device__ void set_zero(AlignedVector<T, N>& v) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    v[i] = T(0);
  }
}

// Rows of up to blockDim.x * N_CHUNKS vectors of N_READS values stay in
// registers between the sum of squares and the scaling: each is read once.
// ALIGNED: every pointer is 16-byte aligned, the row length is a multiple of
// N_READS and the weight is contiguous, so the loads and stores need no
// element-wise fallback, which would cost registers and occupancy. Only the
// last chunk can run past the end of the row.
template <
    typename T,
    bool HAS_RESIDUAL,
    int N_CHUNKS,
    bool ALIGNED,
    int N_READS>
__global__ void __launch_bounds__(RMS_FUSED_SMALL_MAX_BLOCK)
    rms_norm_fused_small(
        const T* x,
        const T* r,
        const T* w,
        T* out,
        T* h,
        float eps,
        uint32_t axis_size,
        int64_t w_stride) {
  __shared__ float warp_sums[WARP_SIZE];
  size_t row = static_cast<size_t>(blockIdx.x) * axis_size;
  x += row;
  r += row;
  out += row;
  h += row;

  uint32_t n_vectors = cuda::ceil_div(axis_size, N_READS);
  AlignedVector<T, N_READS> hn[N_CHUNKS];
  float sum_squares = 0;
#pragma unroll
  for (int i = 0; i < N_CHUNKS; i++) {
    uint32_t index = i * blockDim.x + threadIdx.x;
    if constexpr (ALIGNED) {
      if (i + 1 < N_CHUNKS || index < n_vectors) {
        hn[i] = unsafe_load_vector<N_READS>(x, index);
        if constexpr (HAS_RESIDUAL) {
          add_in_place(hn[i], unsafe_load_vector<N_READS>(r, index));
          unsafe_store_vector<N_READS>(h, index, hn[i]);
        }
      } else {
        set_zero(hn[i]);
      }
    } else {
      hn[i] = load_vector<N_READS>(x, index, axis_size, T(0));
      if constexpr (HAS_RESIDUAL) {
        add_in_place(hn[i], load_vector<N_READS>(r, index, axis_size, T(0)));
        store_vector<N_READS>(h, index, hn[i], axis_size);
      }
    }
    add_squares(sum_squares, hn[i]);
  }
  float inv_rms = rsqrt(
      block_sum(sum_squares, warp_sums, cg::plus<float>{}) / axis_size + eps);
#pragma unroll
  for (int i = 0; i < N_CHUNKS; i++) {
    uint32_t index = i * blockDim.x + threadIdx.x;
    if constexpr (ALIGNED) {
      if (i + 1 < N_CHUNKS || index < n_vectors) {
        scale(hn[i], unsafe_load_vector<N_READS>(w, index), inv_rms);
        unsafe_store_vector<N_READS>(out, index, hn[i]);
      }
    } else {
      scale(
          hn[i],
          load_vector<N_READS>(w, index, axis_size, w_stride, T(0)),
          inv_rms);
      store_vector<N_READS>(out, index, hn[i], axis_size);
    }
  }
}

// Longer rows: h is formed and written in the first pass and read back, from
// L2 if it still holds it, in the second.
template <typename T, bool HAS_RESIDUAL, int N_READS>
__global__ void __launch_bounds__(RMS_FUSED_LOOPED_BLOCK) rms_norm_fused_looped(
    const T* x,
    const T* r,
    const T* w,
    T* out,
    T* h,
    float eps,
    uint32_t axis_size,
    int64_t w_stride) {
  __shared__ float warp_sums[WARP_SIZE];
  size_t row = static_cast<size_t>(blockIdx.x) * axis_size;
  x += row;
  r += row;
  out += row;
  h += row;

  uint32_t n_vectors = cuda::ceil_div(axis_size, N_READS);
  float sum_squares = 0;
  for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
    auto hn = load_vector<N_READS>(x, index, axis_size, T(0));
    if constexpr (HAS_RESIDUAL) {
      add_in_place(hn, load_vector<N_READS>(r, index, axis_size, T(0)));
      store_vector<N_READS>(h, index, hn, axis_size);
    }
    add_squares(sum_squares, hn);
  }
  float inv_rms = rsqrt(
      block_sum(sum_squares, warp_sums, cg::plus<float>{}) / axis_size + eps);
  const T* h_in = HAS_RESIDUAL ? h : x;
  for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
    auto hn = load_vector<N_READS>(h_in, index, axis_size, T(0));
    scale(
        hn, load_vector<N_READS>(w, index, axis_size, w_stride, T(0)), inv_rms);
    store_vector<N_READS>(out, index, hn, axis_size);
  }
}

// dh = w * dy * inv - h * inv^3 * mean(w * dy * h) (+ the cotangent of h),
// and per-row float32 partials of dw = dy * h * inv, summed over rows after.
template <typename T, bool HAS_DH, bool HAS_W, int N_READS>
__global__ void __launch_bounds__(RMS_FUSED_LOOPED_BLOCK) rms_norm_fused_vjp(
    const T* h,
    const T* w,
    const T* dy,
    const T* dh_in,
    T* dh,
    float* dw_rows,
    float eps,
    uint32_t axis_size,
    int64_t w_stride) {
  __shared__ float2 warp_sums[WARP_SIZE];
  size_t row = static_cast<size_t>(blockIdx.x) * axis_size;
  h += row;
  dy += row;
  dh_in += row;
  dh += row;
  dw_rows += row;

  uint32_t n_vectors = cuda::ceil_div(axis_size, N_READS);
  float2 sums = {0, 0};
  for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
    auto hn = load_vector<N_READS>(h, index, axis_size, T(0));
    auto gn = load_vector<N_READS>(dy, index, axis_size, T(0));
    auto wn = load_vector<N_READS>(w, index, axis_size, w_stride, T(0));
#pragma unroll
    for (int j = 0; j < N_READS; j++) {
      float hj = static_cast<float>(hn[j]);
      float gwj = static_cast<float>(gn[j]) *
          (HAS_W ? static_cast<float>(wn[j]) : 1.0f);
      sums.x += hj * hj;
      sums.y += gwj * hj;
    }
  }
  sums = block_sum(sums, warp_sums, Float2Plus{});
  float inv_rms = rsqrt(sums.x / axis_size + eps);
  float mean_gwh = sums.y / axis_size;
  float inv_rms3 = inv_rms * inv_rms * inv_rms;

  for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
    auto hn = load_vector<N_READS>(h, index, axis_size, T(0));
    auto gn = load_vector<N_READS>(dy, index, axis_size, T(0));
    auto wn = load_vector<N_READS>(w, index, axis_size, w_stride, T(0));
    AlignedVector<T, N_READS> dn;
    if constexpr (HAS_DH) {
      dn = load_vector<N_READS>(dh_in, index, axis_size, T(0));
    }
    AlignedVector<float, N_READS> dwn;
#pragma unroll
    for (int j = 0; j < N_READS; j++) {
      float hj = static_cast<float>(hn[j]);
      float gj = static_cast<float>(gn[j]);
      float gwj = gj * (HAS_W ? static_cast<float>(wn[j]) : 1.0f);
      float d = gwj * inv_rms - hj * mean_gwh * inv_rms3;
      if constexpr (HAS_DH) {
        d += static_cast<float>(dn[j]);
      }
      dn[j] = static_cast<T>(d);
      dwn[j] = gj * hj * inv_rms;
    }
    store_vector<N_READS>(dh, index, dn, axis_size);
    if constexpr (HAS_W) {
      store_vector<N_READS>(dw_rows, index, dwn, axis_size);
    }
  }
}

} // namespace cu

namespace fast {

namespace {

// The block size depends on the row length alone, so that every row of a
// batch is reduced the same way. Short rows get one warp to four, one vector
// each. Longer rows get more threads, up to RMS_FUSED_SMALL_MAX_BLOCK, before
// more than two vectors a thread: on an H100 the residual form of 8192
// bfloat16 values ran at 91% of copy bandwidth with 128 threads of 8 vectors
// and at 100% with 512 threads of 2. Up to RMS_FUSED_MAX_CHUNKS vectors a
// thread stay in registers; longer rows take the looped kernel.
struct FusedLaunch {
  int block_dim;
  int n_chunks; // 0: the looped kernel
};

FusedLaunch fused_launch(uint32_t axis_size, int n_reads) {
  int64_t n_vectors = (axis_size + n_reads - 1) / n_reads;
  int block_dim = WARP_SIZE;
  while (block_dim < 128 && block_dim < n_vectors) {
    block_dim *= 2;
  }
  while (block_dim < cu::RMS_FUSED_SMALL_MAX_BLOCK &&
         n_vectors > 2 * block_dim) {
    block_dim *= 2;
  }
  int64_t n_chunks = (n_vectors + block_dim - 1) / block_dim;
  if (n_chunks > cu::RMS_FUSED_MAX_CHUNKS) {
    return {cu::RMS_FUSED_LOOPED_BLOCK, 0};
  }
  return {block_dim, static_cast<int>(n_chunks)};
}

template <typename F>
void dispatch_fused_chunks(int n_chunks, F&& f) {
  switch (n_chunks) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 7:
      return f(std::integral_constant<int, 7>{});
    default:
      return f(std::integral_constant<int, 8>{});
  }
}

// The kernels index rows as row * axis_size.
array ensure_row_contiguous(
    const array& a,
    cu::CommandEncoder& encoder,
    const Stream& s) {
  if (a.flags().row_contiguous) {
    return a;
  }
  array copy = contiguous_copy_gpu(a, s);
  encoder.add_temporary(copy);
  return copy;
}

} // namespace

bool RMSNormFused::use_fallback(Stream s) {
  return false;
}

void RMSNormFused::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  nvtx3::scoped_range r("RMSNormFused::eval_gpu");
  auto& s = stream();
  auto& encoder = cu::get_command_encoder(s);

  bool donate_x = !has_residual_ && inputs[0].flags().row_contiguous &&
      inputs[0].is_donatable();
  const array x = ensure_row_contiguous(inputs[0], encoder, s);
  const array res =
      has_residual_ ? ensure_row_contiguous(inputs[1], encoder, s) : x;
  const array& w = inputs.back();
  array& out = outputs[0];
  if (donate_x) {
    out.copy_shared_buffer(x);
  } else {
    out.set_data(cu::malloc_async(out.nbytes(), encoder));
  }
  if (has_residual_) {
    outputs[1].set_data(cu::malloc_async(outputs[1].nbytes(), encoder));
  }
  array& h = has_residual_ ? outputs[1] : out;

  uint32_t axis_size = x.shape().back();
  if (axis_size == 0 || out.size() == 0) {
    return;
  }
  uint32_t n_rows = out.size() / axis_size;
  int64_t w_stride = (w.ndim() == 1) ? w.strides()[0] : 0;

  encoder.set_input_array(x);
  if (has_residual_) {
    encoder.set_input_array(res);
    encoder.set_output_array(h);
  }
  encoder.set_input_array(w);
  encoder.set_output_array(out);
  dispatch_float_types(out.dtype(), "rmsnorm_fused", [&](auto type_tag) {
    using DataType = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    constexpr int N_READS = 16 / sizeof(DataType);
    auto launch = fused_launch(axis_size, N_READS);
    auto is_aligned = [](const array& a) {
      return cu::is_aligned<N_READS>(gpu_ptr<DataType>(a));
    };
    bool aligned = axis_size % N_READS == 0 && w_stride == 1 && is_aligned(x) &&
        is_aligned(res) && is_aligned(w) && is_aligned(out) && is_aligned(h);
    auto add_node = [&](auto kernel) {
      encoder.add_kernel_node(
          kernel,
          n_rows,
          launch.block_dim,
          gpu_ptr<DataType>(x),
          gpu_ptr<DataType>(res),
          gpu_ptr<DataType>(w),
          gpu_ptr<DataType>(out),
          gpu_ptr<DataType>(h),
          eps_,
          axis_size,
          w_stride);
    };
    dispatch_bool(has_residual_, [&](auto has_residual) {
      if (launch.n_chunks == 0) {
        add_node(
            cu::rms_norm_fused_looped<DataType, has_residual.value, N_READS>);
        return;
      }
      dispatch_fused_chunks(launch.n_chunks, [&](auto n_chunks) {
        if (aligned) {
          add_node(
              cu::rms_norm_fused_small<
                  DataType,
                  has_residual.value,
                  n_chunks.value,
                  true,
                  N_READS>);
        } else {
          add_node(
              cu::rms_norm_fused_small<
                  DataType,
                  has_residual.value,
                  n_chunks.value,
                  false,
                  N_READS>);
        }
      });
    });
  });
}

void RMSNormFusedVJP::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  nvtx3::scoped_range r("RMSNormFusedVJP::eval_gpu");
  auto& s = stream();
  auto& encoder = cu::get_command_encoder(s);

  const array h = ensure_row_contiguous(inputs[0], encoder, s);
  const array& w = inputs[1];
  const array dy = ensure_row_contiguous(inputs[2], encoder, s);
  const array dh_in =
      has_residual_ ? ensure_row_contiguous(inputs[3], encoder, s) : dy;
  array& dh = outputs[0];
  array& dw = outputs[1];
  bool has_w = w.ndim() != 0;

  dh.set_data(cu::malloc_async(dh.nbytes(), encoder));
  uint32_t axis_size = h.shape().back();
  uint32_t n_rows = axis_size == 0 ? 0 : h.size() / axis_size;
  if (n_rows == 0 || !has_w) {
    fill_gpu(array(0, dw.dtype()), dw, s);
  }
  if (n_rows == 0) {
    return;
  }

  // Per-row weight-gradient partials stay in float32 until they are summed.
  array dw_rows = has_w
      ? array(
            {static_cast<int>(n_rows), h.shape().back()}, float32, nullptr, {})
      : dy;
  if (has_w) {
    dw_rows.set_data(cu::malloc_async(dw_rows.nbytes(), encoder));
    encoder.add_temporary(dw_rows);
  }
  int64_t w_stride = has_w ? w.strides()[0] : 0;

  encoder.set_input_array(h);
  encoder.set_input_array(w);
  encoder.set_input_array(dy);
  if (has_residual_) {
    encoder.set_input_array(dh_in);
  }
  encoder.set_output_array(dh);
  if (has_w) {
    encoder.set_output_array(dw_rows);
  }
  dispatch_float_types(dh.dtype(), "rmsnorm_fused_vjp", [&](auto type_tag) {
    dispatch_bool(has_residual_, [&](auto has_dh) {
      dispatch_bool(has_w, [&](auto has_w_constant) {
        using DataType = cuda_type_t<MLX_GET_TYPE(type_tag)>;
        constexpr int N_READS = 16 / sizeof(DataType);
        auto launch = fused_launch(axis_size, N_READS);
        encoder.add_kernel_node(
            cu::rms_norm_fused_vjp<
                DataType,
                has_dh.value,
                has_w_constant.value,
                N_READS>,
            n_rows,
            launch.block_dim,
            gpu_ptr<DataType>(h),
            gpu_ptr<DataType>(w),
            gpu_ptr<DataType>(dy),
            gpu_ptr<DataType>(dh_in),
            gpu_ptr<DataType>(dh),
            has_w ? gpu_ptr<float>(dw_rows) : nullptr,
            eps_,
            axis_size,
            w_stride);
      });
    });
  });

  if (!has_w) {
    return;
  }
  ReductionPlan plan(
      ReductionOpType::ContiguousStridedReduce,
      {static_cast<int>(n_rows)},
      {static_cast<int64_t>(axis_size)});
  if (dw.dtype() == float32) {
    col_reduce(encoder, dw_rows, dw, Reduce::ReduceType::Sum, {0}, plan);
  } else {
    array dw_f32(dw.shape(), float32, nullptr, {});
    col_reduce(encoder, dw_rows, dw_f32, Reduce::ReduceType::Sum, {0}, plan);
    encoder.add_temporary(dw_f32);
    copy_gpu(dw_f32, dw, CopyType::General, s);
  }
}

} // namespace fast

} // namespace mlx::core
