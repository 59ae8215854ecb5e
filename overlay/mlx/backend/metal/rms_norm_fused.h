// Copyright © 2026 Apple Inc.

#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "mlx/backend/metal/kernels/defines.h"

namespace mlx::core::fast {

// Kernel variant and launch geometry of RMSNormFused on Metal. It has no Metal
// types so that it can be tested, and used to drive the kernels, anywhere.
struct RMSNormFusedDispatch {
  bool looped;
  size_t threadgroup_size;
  size_t grid_size;

  static std::string
  kernel_name(bool looped, bool has_residual, const std::string& type_name) {
    std::string name = "rms_fused";
    if (has_residual) {
      name += "_residual";
    }
    if (looped) {
      name += "_looped";
    }
    return name + type_name;
  }

  std::string kernel_name(bool has_residual, const std::string& type_name)
      const {
    return kernel_name(looped, has_residual, type_name);
  }
};

// One threadgroup per row (per group of rows in the backward). Rows up to
// RMS_LOOPED_LIMIT are held in registers, RMS_N_READS values per thread, by
// the smallest whole number of simdgroups, if the single-row kernel's pipeline
// allows that many threads. Other rows are looped over by the largest
// threadgroup the looped kernel's pipeline allows.
//
// max_threadgroup_size(looped) is the maxTotalThreadsPerThreadgroup of the
// pipeline of that variant. It is asked about the single-row variant only for
// rows that fit it, and about the looped one only when that one runs, so the
// last pipeline asked about is the one to launch.
template <typename MaxThreadgroupSize>
RMSNormFusedDispatch rms_norm_fused_dispatch(
    uint32_t axis_size,
    size_t n_groups,
    MaxThreadgroupSize&& max_threadgroup_size) {
  constexpr size_t simd_size = 32;
  RMSNormFusedDispatch d;
  d.looped = axis_size > RMS_LOOPED_LIMIT;
  if (!d.looped) {
    size_t threads_needed = (axis_size + RMS_N_READS - 1) / RMS_N_READS;
    size_t simds_needed = (threads_needed + simd_size - 1) / simd_size;
    d.threadgroup_size = simd_size * std::max<size_t>(simds_needed, 1);
    d.looped = d.threadgroup_size > max_threadgroup_size(false);
  }
  if (d.looped) {
    d.threadgroup_size = max_threadgroup_size(true);
  }
  d.grid_size = n_groups * d.threadgroup_size;
  return d;
}

// The backward gives each threadgroup a run of rows_per_group consecutive
// rows (the last run may be shorter), and each threadgroup writes one float32
// row of weight-gradient partials: column c of group k holds
//   (((0 + v[r0][c]) + v[r0 + 1][c]) + ...) over the rows r0, r0 + 1, ... of
// the group in increasing order, with v[r][c] = (g[r][c] * h[r][c]) * inv[r].
// The runs depend on the row count alone: the fewest rows per group that need
// at most RMS_FUSED_VJP_GROUPS groups. The partials, n_groups rows of
// axis_size floats, do not grow with the row count beyond that.
constexpr size_t RMS_FUSED_VJP_GROUPS = 512;

struct RMSNormFusedVJPGroups {
  uint32_t rows_per_group;
  uint32_t n_groups;

  size_t partials_bytes(uint32_t axis_size) const {
    return size_t(n_groups) * axis_size * sizeof(float);
  }
};

inline RMSNormFusedVJPGroups rms_norm_fused_vjp_groups(
    size_t n_rows,
    size_t target_groups = RMS_FUSED_VJP_GROUPS) {
  RMSNormFusedVJPGroups g;
  size_t rows_per_group =
      std::max<size_t>((n_rows + target_groups - 1) / target_groups, 1);
  g.rows_per_group = static_cast<uint32_t>(rows_per_group);
  g.n_groups =
      static_cast<uint32_t>((n_rows + rows_per_group - 1) / rows_per_group);
  return g;
}

// The partials are then summed over the groups, one thread per column, in
// group order: gw[c] = T((((0 + p[0][c]) + p[1][c]) + ...) + p[n_groups-1][c]).
struct RMSNormFusedCombineDispatch {
  size_t threadgroup_size;
  size_t grid_size;

  static std::string kernel_name(const std::string& type_name) {
    return "rms_fused_gw_combine" + type_name;
  }
};

inline RMSNormFusedCombineDispatch rms_norm_fused_combine_dispatch(
    uint32_t axis_size,
    size_t max_threadgroup_size) {
  constexpr size_t simd_size = 32;
  constexpr size_t preferred_size = 256;
  RMSNormFusedCombineDispatch d;
  size_t simds_needed = (size_t(axis_size) + simd_size - 1) / simd_size;
  d.threadgroup_size = std::min(
      {simd_size * std::max<size_t>(simds_needed, 1),
       preferred_size,
       max_threadgroup_size});
  d.grid_size = (axis_size + d.threadgroup_size - 1) / d.threadgroup_size *
      d.threadgroup_size;
  return d;
}

} // namespace mlx::core::fast
