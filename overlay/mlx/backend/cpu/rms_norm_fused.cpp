// Copyright © 2026 Apple Inc.

#include <cassert>
#include <cmath>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/copy.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/dtype_utils.h"
#include "mlx/fast_primitives.h"

namespace mlx::core::fast {

namespace {

// Independent partial sums. Their number and the order in which they are
// combined depend only on the row length, so every row of a batch is reduced
// the same way whatever the number of rows.
constexpr int N_LANES = 16;

template <typename T>
float sum_squares(const T* h, int axis_size) {
  float acc[N_LANES] = {};
  int i = 0;
  for (; i + N_LANES <= axis_size; i += N_LANES) {
    for (int j = 0; j < N_LANES; j++) {
      float hj = static_cast<float>(h[i + j]);
      acc[j] += hj * hj;
    }
  }
  for (int j = 0; i + j < axis_size; j++) {
    float hj = static_cast<float>(h[i + j]);
    acc[j] += hj * hj;
  }
  for (int width = N_LANES / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; j++) {
      acc[j] += acc[j + width];
    }
  }
  return acc[0];
}

// h = x + r rounded to T, as the add primitive rounds it, then the sum of the
// squares of the rounded values.
template <typename T>
float add_sum_squares(const T* x, const T* r, T* h, int axis_size) {
  for (int i = 0; i < axis_size; i++) {
    h[i] = static_cast<T>(static_cast<float>(x[i]) + static_cast<float>(r[i]));
  }
  // h was just written, so the second read is served from cache.
  return sum_squares(h, axis_size);
}

template <typename T>
void scale_row(
    const T* h,
    const T* w,
    int64_t w_stride,
    T* y,
    float inv_rms,
    int axis_size) {
  if (w_stride == 1) {
    for (int i = 0; i < axis_size; i++) {
      T n = static_cast<T>(static_cast<float>(h[i]) * inv_rms);
      y[i] = static_cast<T>(static_cast<float>(w[i]) * static_cast<float>(n));
    }
  } else {
    for (int i = 0; i < axis_size; i++) {
      T n = static_cast<T>(static_cast<float>(h[i]) * inv_rms);
      y[i] = static_cast<T>(
          static_cast<float>(w[i * w_stride]) * static_cast<float>(n));
    }
  }
}

template <typename T>
void normalize_row(const T* h, T* y, float inv_rms, int axis_size) {
  for (int i = 0; i < axis_size; i++) {
    y[i] = static_cast<T>(static_cast<float>(h[i]) * inv_rms);
  }
}

// Offset of the first element of each row. The last axis is contiguous; the
// other axes may be sliced, transposed or broadcast.
struct RowOffsets {
  Shape shape;
  Strides strides;
  bool row_contiguous;
  int axis_size;

  explicit RowOffsets(const array& a)
      : shape(a.shape().begin(), a.shape().end() - 1),
        strides(a.strides().begin(), a.strides().end() - 1),
        row_contiguous(a.flags().row_contiguous),
        axis_size(a.shape().back()) {}

  int64_t operator()(int64_t row) const {
    if (row_contiguous) {
      return row * axis_size;
    }
    int64_t loc = 0;
    for (int i = static_cast<int>(shape.size()) - 1; i >= 0 && row > 0; i--) {
      loc += (row % shape[i]) * strides[i];
      row /= shape[i];
    }
    return loc;
  }
};

template <typename T>
void rms_norm_fused(
    const array& x,
    const array* r,
    const array& w,
    array& y,
    array* h,
    float eps,
    Stream stream) {
  auto& encoder = cpu::get_command_encoder(stream);
  encoder.set_input_array(x);
  encoder.set_input_array(w);
  encoder.set_output_array(y);
  if (r) {
    encoder.set_input_array(*r);
    encoder.set_output_array(*h);
  }

  int axis_size = x.shape().back();
  int64_t n_rows = axis_size == 0 ? 0 : y.size() / axis_size;
  const T* x_ptr = x.data<T>();
  const T* r_ptr = r ? r->data<T>() : nullptr;
  const T* w_ptr = w.data<T>();
  // A scalar weight stands for no weight; a weight of size 1 may have stride 0.
  bool has_weight = w.ndim() == 1;
  int64_t w_stride = has_weight ? w.strides()[0] : 0;
  T* y_ptr = y.data<T>();
  T* h_ptr = h ? h->data<T>() : nullptr;
  RowOffsets x_rows(x);
  std::optional<RowOffsets> r_rows;
  if (r) {
    r_rows.emplace(*r);
  }

  encoder.dispatch([=]() {
    for (int64_t row = 0; row < n_rows; row++) {
      const T* xr = x_ptr + x_rows(row);
      T* yr = y_ptr + row * axis_size;
      const T* hr = xr;
      float sumsq;
      if (r_ptr) {
        T* hw = h_ptr + row * axis_size;
        sumsq = add_sum_squares(xr, r_ptr + (*r_rows)(row), hw, axis_size);
        hr = hw;
      } else {
        sumsq = sum_squares(xr, axis_size);
      }
      float inv_rms = 1.0f / std::sqrt(sumsq / axis_size + eps);
      if (has_weight) {
        scale_row(hr, w_ptr, w_stride, yr, inv_rms, axis_size);
      } else {
        normalize_row(hr, yr, inv_rms, axis_size);
      }
    }
  });
}

} // namespace

void RMSNormFused::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  assert(inputs.size() == (has_residual_ ? 3 : 2));
  auto s = stream();
  auto& encoder = cpu::get_command_encoder(s);

  // Rows may start anywhere, but each must be contiguous.
  auto rows_contiguous = [&](const array& a) {
    if (a.strides().back() == 1 || a.shape().back() == 1) {
      return a;
    }
    array copy = contiguous_copy_cpu(a, s);
    encoder.add_temporary(copy);
    return copy;
  };
  array x = rows_contiguous(inputs[0]);
  const array& w = inputs.back();
  array& y = outputs[0];

  if (!has_residual_ && x.flags().row_contiguous && x.is_donatable()) {
    y.copy_shared_buffer(x);
  } else {
    y.set_data(allocator::malloc(y.nbytes()));
  }
  std::optional<array> r;
  if (has_residual_) {
    r = rows_contiguous(inputs[1]);
    outputs[1].set_data(allocator::malloc(outputs[1].nbytes()));
  }
  array* h = has_residual_ ? &outputs[1] : nullptr;

  switch (y.dtype()) {
    case float32:
      rms_norm_fused<float>(x, r ? &*r : nullptr, w, y, h, eps_, s);
      break;
    case float16:
      rms_norm_fused<float16_t>(x, r ? &*r : nullptr, w, y, h, eps_, s);
      break;
    case bfloat16:
      rms_norm_fused<bfloat16_t>(x, r ? &*r : nullptr, w, y, h, eps_, s);
      break;
    default:
      throw std::runtime_error(
          "[rmsnorm_fused] Only float32, float16 and bfloat16 are supported.");
  }
}

} // namespace mlx::core::fast
