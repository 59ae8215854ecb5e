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

  std::string kernel_name(bool has_residual, const std::string& type_name)
      const {
    std::string name = "rms_fused";
    if (has_residual) {
      name += "_residual";
    }
    if (looped) {
      name += "_looped";
    }
    return name + type_name;
  }
};

// One threadgroup per row. Rows up to RMS_LOOPED_LIMIT are held in registers,
// RMS_N_READS values per thread, by the smallest whole number of simdgroups;
// longer rows are looped over by the largest threadgroup the kernel allows.
inline RMSNormFusedDispatch rms_norm_fused_dispatch(
    uint32_t axis_size,
    size_t n_rows,
    size_t max_threadgroup_size) {
  constexpr size_t simd_size = 32;
  RMSNormFusedDispatch d;
  d.looped = axis_size > RMS_LOOPED_LIMIT;
  if (d.looped) {
    d.threadgroup_size = max_threadgroup_size;
  } else {
    size_t threads_needed = (axis_size + RMS_N_READS - 1) / RMS_N_READS;
    size_t simds_needed = (threads_needed + simd_size - 1) / simd_size;
    d.threadgroup_size = simd_size * std::max<size_t>(simds_needed, 1);
  }
  d.grid_size = n_rows * d.threadgroup_size;
  return d;
}

} // namespace mlx::core::fast
