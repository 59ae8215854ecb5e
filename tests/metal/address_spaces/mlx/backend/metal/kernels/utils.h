// Stand-in for MLX's kernels/utils.h for the address-space check: Metal's
// address spaces as distinct clang address spaces, so that a pointer or
// reference passed from one to another fails as Apple's compiler fails it.
// Unqualified values are thread memory, as in Metal. Declarations only: the
// check compiles, it does not run.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#define device __attribute__((address_space(1)))
#define constant __attribute__((address_space(2)))
#define threadgroup __attribute__((address_space(3)))
#define thread
#define METAL_FUNC inline

using uint = unsigned int;
using half = _Float16;
using bfloat16_t = __bf16;

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2 };

inline mem_flags operator|(mem_flags a, mem_flags b) {
  return mem_flags(int(a) | int(b));
}

void threadgroup_barrier(mem_flags flags);
float simd_sum(float x);
bool isnan(float x);
float clamp(float x, float lo, float hi);
float rsqrt(float x);

namespace precise {
float rsqrt(float x);
} // namespace precise

} // namespace metal

#include "mlx/backend/metal/kernels/defines.h"

// Explicit instantiation, as MLX's own instantiate_kernel makes it: every
// instance's body is checked.
#undef instantiate_kernel
#define instantiate_kernel(name, func, ...) \
  template decltype(func<__VA_ARGS__>) func<__VA_ARGS__>;
