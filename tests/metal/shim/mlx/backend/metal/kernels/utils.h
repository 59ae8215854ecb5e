// Stand-in for MLX's kernels/utils.h: the shim, MLX's own defines.h, and an
// instantiate_kernel that registers each kernel under its host name.
#pragma once

#include "metal_shim.h"

#include "mlx/backend/metal/kernels/defines.h"

#undef instantiate_kernel
#define instantiate_kernel(name, func, ...)                       \
  static ::mlxr_harness::Registered MLXR_CAT(mlxr_kernel_, __COUNTER__)( \
      name, reinterpret_cast<void*>(&func<__VA_ARGS__>));
