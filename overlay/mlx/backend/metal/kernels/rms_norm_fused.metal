// Copyright © 2026 Apple Inc.

#include <metal_common>
#include <metal_simdgroup>

#include "mlx/backend/metal/kernels/utils.h"

using namespace metal;

constant bool has_w [[function_constant(20)]];
constant bool norm_branch [[function_constant(21)]];
constant bool norm_output [[function_constant(22)]];
constant bool has_offset [[function_constant(23)]];
constant bool clip_residual [[function_constant(24)]];

// The forms of RMSNormFused, one threadgroup per row: b = x, or the norm of x
// with the weight w_branch when norm_branch; h = b + r when HAS_RESIDUAL,
// rounded to T as the add is (in float32 and clipped to the float16 range
// when clip_residual), and written out; y = the norm of h with the weight w
// when norm_output. Each norm is w * T(v * rsqrt(mean(v^2) + eps)), in the
// order rms_norm uses, or T(v * rsqrt(mean(v^2) + eps) * (offset + w)) with
// has_offset, as Gemma's norms compute it.

template <int SIMD_SIZE>
METAL_FUNC float threadgroup_sum(
    float acc,
    threadgroup float* local_sums,
    uint simd_lane_id,
    uint simd_group_id) {
  acc = simd_sum(acc);
  if (simd_group_id == 0) {
    local_sums[simd_lane_id] = 0;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (simd_lane_id == 0) {
    local_sums[simd_group_id] = acc;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return simd_sum(local_sums[simd_lane_id]);
}

// rsqrt(mean(v^2) + eps) of a row, from each thread's sum of squares. The
// barrier at the end also keeps a second call from clearing local_sums while
// another simdgroup still reads it for the first.
template <int SIMD_SIZE>
METAL_FUNC float threadgroup_inv_rms(
    float sum_squares,
    threadgroup float* local_sums,
    threadgroup float* local_inv_mean,
    uint axis_size,
    float eps,
    uint simd_lane_id,
    uint simd_group_id) {
  sum_squares = threadgroup_sum<SIMD_SIZE>(
      sum_squares, local_sums, simd_lane_id, simd_group_id);
  if (simd_group_id == 0 && simd_lane_id == 0) {
    local_inv_mean[0] = metal::precise::rsqrt(sum_squares / axis_size + eps);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return local_inv_mean[0];
}

template <typename T>
METAL_FUNC T scale_normalized(float v, float inv_mean, T w, float offset) {
  if (has_offset) {
    return static_cast<T>(v * inv_mean * (offset + static_cast<float>(w)));
  }
  return w * static_cast<T>(v * inv_mean);
}

template <typename T>
METAL_FUNC T residual_add(T b, T r) {
  if (clip_residual) {
    float sum = static_cast<float>(b) + static_cast<float>(r);
    return static_cast<T>(
        metal::isnan(sum) ? sum : metal::clamp(sum, -65504.0f, 65504.0f));
  }
  return static_cast<T>(b + r);
}

template <typename T, bool HAS_RESIDUAL, int N_READS = RMS_N_READS>
[[kernel]] void rms_fused_single_row(
    const device T* x,
    const device T* r,
    const device T* w,
    device T* out,
    device T* h_out,
    constant float& eps,
    constant uint& axis_size,
    constant uint& w_stride,
    const device T* w_branch,
    constant uint& w_branch_stride,
    constant float& weight_offset,
    uint gid [[threadgroup_position_in_grid]],
    uint lid [[thread_position_in_threadgroup]],
    uint simd_lane_id [[thread_index_in_simdgroup]],
    uint simd_group_id [[simdgroup_index_in_threadgroup]]) {
  constexpr int SIMD_SIZE = 32;
  threadgroup float local_inv_mean[1];
  threadgroup float local_sums[SIMD_SIZE];

  size_t offset = gid * size_t(axis_size) + lid * N_READS;
  x += offset;
  r += offset;
  h_out += offset;
  out += offset;
  w += w_stride * lid * N_READS;
  w_branch += w_branch_stride * lid * N_READS;

  float thread_h[N_READS];
  if (norm_branch) {
    float acc = 0;
    for (int i = 0; i < N_READS; i++) {
      thread_h[i] = (lid * N_READS + i < axis_size) ? float(x[i]) : 0;
      acc += thread_h[i] * thread_h[i];
    }
    float inv_mean = threadgroup_inv_rms<SIMD_SIZE>(
        acc,
        local_sums,
        local_inv_mean,
        axis_size,
        eps,
        simd_lane_id,
        simd_group_id);
    for (int i = 0; i < N_READS; i++) {
      if (lid * N_READS + i < axis_size) {
        thread_h[i] = scale_normalized(
            thread_h[i],
            inv_mean,
            w_branch[w_branch_stride * i],
            weight_offset);
      }
    }
  }

  float acc = 0;
  for (int i = 0; i < N_READS; i++) {
    if (lid * N_READS + i < axis_size) {
      T bi = norm_branch ? static_cast<T>(thread_h[i]) : x[i];
      T hi = HAS_RESIDUAL ? residual_add(bi, r[i]) : bi;
      if (HAS_RESIDUAL) {
        h_out[i] = hi;
      }
      thread_h[i] = hi;
    } else {
      thread_h[i] = 0;
    }
    acc += thread_h[i] * thread_h[i];
  }
  if (!norm_output) {
    return;
  }

  float inv_mean = threadgroup_inv_rms<SIMD_SIZE>(
      acc,
      local_sums,
      local_inv_mean,
      axis_size,
      eps,
      simd_lane_id,
      simd_group_id);
  for (int i = 0; i < N_READS; i++) {
    if (lid * N_READS + i < axis_size) {
      out[i] = scale_normalized(
          thread_h[i], inv_mean, w[w_stride * i], weight_offset);
    }
  }
}

template <typename T, bool HAS_RESIDUAL, int N_READS = RMS_N_READS>
[[kernel]] void rms_fused_looped(
    const device T* x,
    const device T* r,
    const device T* w,
    device T* out,
    device T* h_out,
    constant float& eps,
    constant uint& axis_size,
    constant uint& w_stride,
    const device T* w_branch,
    constant uint& w_branch_stride,
    constant float& weight_offset,
    uint gid [[threadgroup_position_in_grid]],
    uint lid [[thread_position_in_threadgroup]],
    uint lsize [[threads_per_threadgroup]],
    uint simd_lane_id [[thread_index_in_simdgroup]],
    uint simd_group_id [[simdgroup_index_in_threadgroup]]) {
  constexpr int SIMD_SIZE = 32;
  threadgroup float local_inv_mean[1];
  threadgroup float local_sums[SIMD_SIZE];

  size_t offset = gid * size_t(axis_size) + lid * N_READS;
  x += offset;
  r += offset;
  h_out += offset;
  out += offset;
  w += w_stride * lid * N_READS;
  w_branch += w_branch_stride * lid * N_READS;

  float branch_inv_mean = 0;
  if (norm_branch) {
    float acc = 0;
    for (uint c = 0; c < axis_size; c += lsize * N_READS) {
      for (int i = 0; i < N_READS; i++) {
        if (c + lid * N_READS + i < axis_size) {
          float xf = x[c + i];
          acc += xf * xf;
        }
      }
    }
    branch_inv_mean = threadgroup_inv_rms<SIMD_SIZE>(
        acc,
        local_sums,
        local_inv_mean,
        axis_size,
        eps,
        simd_lane_id,
        simd_group_id);
  }

  float acc = 0;
  for (uint c = 0; c < axis_size; c += lsize * N_READS) {
    for (int i = 0; i < N_READS; i++) {
      if (c + lid * N_READS + i < axis_size) {
        T bi = norm_branch ? scale_normalized(
                                 static_cast<float>(x[c + i]),
                                 branch_inv_mean,
                                 w_branch[w_branch_stride * (c + i)],
                                 weight_offset)
                           : x[c + i];
        T hi = HAS_RESIDUAL ? residual_add(bi, r[c + i]) : bi;
        if (HAS_RESIDUAL) {
          h_out[c + i] = hi;
        }
        float hf = hi;
        acc += hf * hf;
      }
    }
  }
  if (!norm_output) {
    return;
  }

  float inv_mean = threadgroup_inv_rms<SIMD_SIZE>(
      acc,
      local_sums,
      local_inv_mean,
      axis_size,
      eps,
      simd_lane_id,
      simd_group_id);

  // Each thread reads back only the h values it wrote itself.
  const device T* h = HAS_RESIDUAL ? h_out : x;
  for (uint c = 0; c < axis_size; c += lsize * N_READS) {
    for (int i = 0; i < N_READS; i++) {
      if (c + lid * N_READS + i < axis_size) {
        out[c + i] = scale_normalized(
            static_cast<float>(h[c + i]),
            inv_mean,
            w[w_stride * (c + i)],
            weight_offset);
      }
    }
  }
}

// Both sums of a row over the threadgroup, each in the order threadgroup_sum
// uses. local_sums holds 2 * SIMD_SIZE floats; a loop over rows alternates
// between two such halves, so that simdgroup 0 never clears the one that
// another simdgroup may still be reading for the previous row.
template <int SIMD_SIZE>
METAL_FUNC void threadgroup_sum_pair(
    thread float& a,
    thread float& b,
    threadgroup float* local_sums,
    uint simd_lane_id,
    uint simd_group_id) {
  a = simd_sum(a);
  b = simd_sum(b);
  if (simd_group_id == 0) {
    local_sums[simd_lane_id] = 0;
    local_sums[SIMD_SIZE + simd_lane_id] = 0;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (simd_lane_id == 0) {
    local_sums[simd_group_id] = a;
    local_sums[SIMD_SIZE + simd_group_id] = b;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  a = simd_sum(local_sums[simd_lane_id]);
  b = simd_sum(local_sums[SIMD_SIZE + simd_lane_id]);
}

// Gradient of y = s * h * rsqrt(mean(h^2) + eps), with the scale s = w, or
// offset + w when has_offset: gx, plus the incoming cotangent gh of h when
// HAS_GH. Threadgroup gid takes rows gid * rows_per_group up to the next
// group's first row (or n_rows), in order. When has_w, it also writes row gid
// of gw_partials: the float32 sum, over its rows in order, of g * h * inv for
// each column, which rms_fused_gw_combine then sums over the groups in order.
template <typename T, bool HAS_GH, int N_READS = RMS_N_READS>
[[kernel]] void vjp_rms_fused_single_row(
    const device T* h,
    const device T* w,
    const device T* g,
    const device T* gh,
    device T* gx,
    device float* gw_partials,
    constant float& eps,
    constant uint& axis_size,
    constant uint& w_stride,
    constant uint& n_rows,
    constant uint& rows_per_group,
    constant float& weight_offset,
    uint gid [[threadgroup_position_in_grid]],
    uint lid [[thread_position_in_threadgroup]],
    uint simd_lane_id [[thread_index_in_simdgroup]],
    uint simd_group_id [[simdgroup_index_in_threadgroup]]) {
  constexpr int SIMD_SIZE = 32;
  threadgroup float local_sums[4 * SIMD_SIZE];

  uint col = lid * N_READS;
  float thread_w[N_READS];
  float gw_acc[N_READS];
  for (int i = 0; i < N_READS; i++) {
    thread_w[i] = (col + i < axis_size) ? float(w[w_stride * (col + i)]) : 0.0f;
    if (has_offset) {
      thread_w[i] += weight_offset;
    }
    gw_acc[i] = 0.0f;
  }

  uint row_begin = gid * rows_per_group;
  uint row_end = row_begin + rows_per_group;
  if (row_end > n_rows) {
    row_end = n_rows;
  }
  for (uint row = row_begin; row < row_end; row++) {
    size_t offset = row * size_t(axis_size) + col;
    float thread_h[N_READS];
    float thread_g[N_READS];
    float sumh2 = 0;
    float sumgwh = 0;
    for (int i = 0; i < N_READS; i++) {
      if (col + i < axis_size) {
        thread_h[i] = h[offset + i];
        thread_g[i] = g[offset + i];
      } else {
        thread_h[i] = 0;
        thread_g[i] = 0;
      }
      sumh2 += thread_h[i] * thread_h[i];
      sumgwh += thread_g[i] * thread_w[i] * thread_h[i];
    }
    threadgroup_sum_pair<SIMD_SIZE>(
        sumh2,
        sumgwh,
        local_sums + 2 * SIMD_SIZE * (row & 1),
        simd_lane_id,
        simd_group_id);

    float inv = metal::precise::rsqrt(sumh2 / axis_size + eps);
    float mean_gwh = sumgwh / axis_size;
    float inv3 = inv * inv * inv;
    for (int i = 0; i < N_READS; i++) {
      if (col + i < axis_size) {
        float d =
            thread_g[i] * thread_w[i] * inv - thread_h[i] * mean_gwh * inv3;
        if (HAS_GH) {
          d += static_cast<float>(gh[offset + i]);
        }
        gx[offset + i] = static_cast<T>(d);
        if (has_w) {
          gw_acc[i] += thread_g[i] * thread_h[i] * inv;
        }
      }
    }
  }

  if (has_w) {
    gw_partials += gid * size_t(axis_size) + col;
    for (int i = 0; i < N_READS; i++) {
      if (col + i < axis_size) {
        gw_partials[i] = gw_acc[i];
      }
    }
  }
}

// As vjp_rms_fused_single_row for rows too long for registers. Each thread
// accumulates its columns of the group's partial row in place: the columns a
// thread owns do not change from row to row, so it reads back only its own
// writes.
template <typename T, bool HAS_GH, int N_READS = RMS_N_READS>
[[kernel]] void vjp_rms_fused_looped(
    const device T* h,
    const device T* w,
    const device T* g,
    const device T* gh,
    device T* gx,
    device float* gw_partials,
    constant float& eps,
    constant uint& axis_size,
    constant uint& w_stride,
    constant uint& n_rows,
    constant uint& rows_per_group,
    constant float& weight_offset,
    uint gid [[threadgroup_position_in_grid]],
    uint lid [[thread_position_in_threadgroup]],
    uint lsize [[threads_per_threadgroup]],
    uint simd_lane_id [[thread_index_in_simdgroup]],
    uint simd_group_id [[simdgroup_index_in_threadgroup]]) {
  constexpr int SIMD_SIZE = 32;
  threadgroup float local_sums[4 * SIMD_SIZE];

  uint col = lid * N_READS;
  gw_partials += gid * size_t(axis_size) + col;
  w += w_stride * col;

  uint row_begin = gid * rows_per_group;
  uint row_end = row_begin + rows_per_group;
  if (row_end > n_rows) {
    row_end = n_rows;
  }
  for (uint row = row_begin; row < row_end; row++) {
    size_t offset = row * size_t(axis_size) + col;
    float sumh2 = 0;
    float sumgwh = 0;
    for (uint c = 0; c < axis_size; c += lsize * N_READS) {
      for (int i = 0; i < N_READS; i++) {
        if (c + col + i < axis_size) {
          float hi = h[offset + c + i];
          float gi = g[offset + c + i];
          float wi = w[w_stride * (c + i)];
          if (has_offset) {
            wi += weight_offset;
          }
          sumh2 += hi * hi;
          sumgwh += gi * wi * hi;
        }
      }
    }
    threadgroup_sum_pair<SIMD_SIZE>(
        sumh2,
        sumgwh,
        local_sums + 2 * SIMD_SIZE * (row & 1),
        simd_lane_id,
        simd_group_id);

    float inv = metal::precise::rsqrt(sumh2 / axis_size + eps);
    float mean_gwh = sumgwh / axis_size;
    float inv3 = inv * inv * inv;
    for (uint c = 0; c < axis_size; c += lsize * N_READS) {
      for (int i = 0; i < N_READS; i++) {
        if (c + col + i < axis_size) {
          float hi = h[offset + c + i];
          float gi = g[offset + c + i];
          float wi = w[w_stride * (c + i)];
          if (has_offset) {
            wi += weight_offset;
          }
          float d = gi * wi * inv - hi * mean_gwh * inv3;
          if (HAS_GH) {
            d += static_cast<float>(gh[offset + c + i]);
          }
          gx[offset + c + i] = static_cast<T>(d);
          if (has_w) {
            float gw_acc = (row == row_begin) ? 0.0f : gw_partials[c + i];
            gw_partials[c + i] = gw_acc + gi * hi * inv;
          }
        }
      }
    }
  }
}

// gw = sum over the groups of the float32 partials, one thread per column,
// in group order, rounded to T once.
template <typename T>
[[kernel]] void rms_fused_gw_combine(
    const device float* gw_partials,
    device T* gw,
    constant uint& axis_size,
    constant uint& n_groups,
    uint col [[thread_position_in_grid]]) {
  if (col >= axis_size) {
    return;
  }
  float acc = 0;
  for (uint k = 0; k < n_groups; k++) {
    acc += gw_partials[k * size_t(axis_size) + col];
  }
  gw[col] = static_cast<T>(acc);
}

// clang-format off
#define instantiate_rms_fused(name, itype)                                     \
  instantiate_kernel("rms_fused" #name, rms_fused_single_row, itype, false)    \
  instantiate_kernel(                                                          \
      "rms_fused_residual" #name, rms_fused_single_row, itype, true)           \
  instantiate_kernel("rms_fused_looped" #name, rms_fused_looped, itype, false) \
  instantiate_kernel(                                                          \
      "rms_fused_residual_looped" #name, rms_fused_looped, itype, true)        \
  instantiate_kernel(                                                          \
      "rms_fused_gw_combine" #name, rms_fused_gw_combine, itype)               \
  instantiate_kernel(                                                          \
      "vjp_rms_fused" #name, vjp_rms_fused_single_row, itype, false)           \
  instantiate_kernel(                                                          \
      "vjp_rms_fused_residual" #name, vjp_rms_fused_single_row, itype, true)   \
  instantiate_kernel(                                                          \
      "vjp_rms_fused_looped" #name, vjp_rms_fused_looped, itype, false)        \
  instantiate_kernel(                                                          \
      "vjp_rms_fused_residual_looped" #name, vjp_rms_fused_looped, itype, true)

instantiate_rms_fused(float32, float)
instantiate_rms_fused(float16, half)
instantiate_rms_fused(bfloat16, bfloat16_t) // clang-format on
