// Copyright © 2026 Apple Inc.

#include <metal_common>
#include <metal_simdgroup>

#include "mlx/backend/metal/kernels/utils.h"

using namespace metal;

constant bool has_w [[function_constant(20)]];

// RMS norm of h = x + r (or of x alone), one threadgroup per row. h is rounded
// to T before it is squared, as x + r would be, and is written out when
// HAS_RESIDUAL. The output is w * T(h * rsqrt(mean(h^2) + eps)), in the order
// rms_norm uses.

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

  float acc = 0;
  float thread_h[N_READS];
  for (int i = 0; i < N_READS; i++) {
    if (lid * N_READS + i < axis_size) {
      T hi = HAS_RESIDUAL ? static_cast<T>(x[i] + r[i]) : x[i];
      if (HAS_RESIDUAL) {
        h_out[i] = hi;
      }
      thread_h[i] = hi;
    } else {
      thread_h[i] = 0;
    }
    acc += thread_h[i] * thread_h[i];
  }

  acc =
      threadgroup_sum<SIMD_SIZE>(acc, local_sums, simd_lane_id, simd_group_id);
  if (simd_group_id == 0 && simd_lane_id == 0) {
    local_inv_mean[0] = metal::precise::rsqrt(acc / axis_size + eps);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float inv_mean = local_inv_mean[0];

  for (int i = 0; i < N_READS; i++) {
    if (lid * N_READS + i < axis_size) {
      out[i] = w[w_stride * i] * static_cast<T>(thread_h[i] * inv_mean);
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

  float acc = 0;
  for (uint c = 0; c < axis_size; c += lsize * N_READS) {
    for (int i = 0; i < N_READS; i++) {
      if (c + lid * N_READS + i < axis_size) {
        T hi = HAS_RESIDUAL ? static_cast<T>(x[c + i] + r[c + i]) : x[c + i];
        if (HAS_RESIDUAL) {
          h_out[c + i] = hi;
        }
        float hf = hi;
        acc += hf * hf;
      }
    }
  }

  acc =
      threadgroup_sum<SIMD_SIZE>(acc, local_sums, simd_lane_id, simd_group_id);
  if (simd_group_id == 0 && simd_lane_id == 0) {
    local_inv_mean[0] = metal::precise::rsqrt(acc / axis_size + eps);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float inv_mean = local_inv_mean[0];

  // Each thread reads back only the h values it wrote itself.
  const device T* h = HAS_RESIDUAL ? h_out : x;
  for (uint c = 0; c < axis_size; c += lsize * N_READS) {
    for (int i = 0; i < N_READS; i++) {
      if (c + lid * N_READS + i < axis_size) {
        out[c + i] = w[w_stride * (c + i)] *
            static_cast<T>(static_cast<float>(h[c + i]) * inv_mean);
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

// Gradient of y = w * h * rsqrt(mean(h^2) + eps): dh, plus the incoming
// cotangent of h when HAS_DH. Threadgroup gid takes rows gid * rows_per_group
// up to the next group's first row (or n_rows), in order. When has_w, it also
// writes row gid of dw_partials: the float32 sum, over its rows in order, of
// g * h * inv for each column, which rms_fused_dw_combine then sums over the
// groups in order.
template <typename T, bool HAS_DH, int N_READS = RMS_N_READS>
[[kernel]] void vjp_rms_fused_single_row(
    const device T* h,
    const device T* w,
    const device T* dy,
    const device T* dh_in,
    device T* dh,
    device float* dw_partials,
    constant float& eps,
    constant uint& axis_size,
    constant uint& w_stride,
    constant uint& n_rows,
    constant uint& rows_per_group,
    uint gid [[threadgroup_position_in_grid]],
    uint lid [[thread_position_in_threadgroup]],
    uint simd_lane_id [[thread_index_in_simdgroup]],
    uint simd_group_id [[simdgroup_index_in_threadgroup]]) {
  constexpr int SIMD_SIZE = 32;
  threadgroup float local_sums[4 * SIMD_SIZE];

  uint col = lid * N_READS;
  float thread_w[N_READS];
  float dw_acc[N_READS];
  for (int i = 0; i < N_READS; i++) {
    thread_w[i] = (col + i < axis_size) ? float(w[w_stride * (col + i)]) : 0.0f;
    dw_acc[i] = 0.0f;
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
        thread_g[i] = dy[offset + i];
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
        if (HAS_DH) {
          d += static_cast<float>(dh_in[offset + i]);
        }
        dh[offset + i] = static_cast<T>(d);
        if (has_w) {
          dw_acc[i] += thread_g[i] * thread_h[i] * inv;
        }
      }
    }
  }

  if (has_w) {
    dw_partials += gid * size_t(axis_size) + col;
    for (int i = 0; i < N_READS; i++) {
      if (col + i < axis_size) {
        dw_partials[i] = dw_acc[i];
      }
    }
  }
}

// As vjp_rms_fused_single_row for rows too long for registers. Each thread
// accumulates its columns of the group's partial row in place: the columns a
// thread owns do not change from row to row, so it reads back only its own
// writes.
template <typename T, bool HAS_DH, int N_READS = RMS_N_READS>
[[kernel]] void vjp_rms_fused_looped(
    const device T* h,
    const device T* w,
    const device T* dy,
    const device T* dh_in,
    device T* dh,
    device float* dw_partials,
    constant float& eps,
    constant uint& axis_size,
    constant uint& w_stride,
    constant uint& n_rows,
    constant uint& rows_per_group,
    uint gid [[threadgroup_position_in_grid]],
    uint lid [[thread_position_in_threadgroup]],
    uint lsize [[threads_per_threadgroup]],
    uint simd_lane_id [[thread_index_in_simdgroup]],
    uint simd_group_id [[simdgroup_index_in_threadgroup]]) {
  constexpr int SIMD_SIZE = 32;
  threadgroup float local_sums[4 * SIMD_SIZE];

  uint col = lid * N_READS;
  dw_partials += gid * size_t(axis_size) + col;
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
          float gi = dy[offset + c + i];
          float wi = w[w_stride * (c + i)];
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
          float gi = dy[offset + c + i];
          float wi = w[w_stride * (c + i)];
          float d = gi * wi * inv - hi * mean_gwh * inv3;
          if (HAS_DH) {
            d += static_cast<float>(dh_in[offset + c + i]);
          }
          dh[offset + c + i] = static_cast<T>(d);
          if (has_w) {
            float dw_acc = (row == row_begin) ? 0.0f : dw_partials[c + i];
            dw_partials[c + i] = dw_acc + gi * hi * inv;
          }
        }
      }
    }
  }
}

// dw = sum over the groups of the float32 partials, one thread per column,
// in group order, rounded to T once.
template <typename T>
[[kernel]] void rms_fused_dw_combine(
    const device float* dw_partials,
    device T* dw,
    constant uint& axis_size,
    constant uint& n_groups,
    uint col [[thread_position_in_grid]]) {
  if (col >= axis_size) {
    return;
  }
  float acc = 0;
  for (uint k = 0; k < n_groups; k++) {
    acc += dw_partials[k * size_t(axis_size) + col];
  }
  dw[col] = static_cast<T>(acc);
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
      "rms_fused_dw_combine" #name, rms_fused_dw_combine, itype)               \
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
