// Copyright © 2026 Apple Inc.

#include <metal_common>
#include <metal_simdgroup>

#include "mlx/backend/metal/kernels/utils.h"

using namespace metal;

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

// clang-format off
#define instantiate_rms_fused(name, itype)                                 \
  instantiate_kernel("rms_fused" #name, rms_fused_single_row, itype, false) \
  instantiate_kernel(                                                      \
      "rms_fused_residual" #name, rms_fused_single_row, itype, true)       \
  instantiate_kernel("rms_fused_looped" #name, rms_fused_looped, itype, false) \
  instantiate_kernel(                                                      \
      "rms_fused_residual_looped" #name, rms_fused_looped, itype, true)

instantiate_rms_fused(float32, float)
instantiate_rms_fused(float16, half)
instantiate_rms_fused(bfloat16, bfloat16_t) // clang-format on
