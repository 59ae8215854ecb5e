// Copyright © 2026 Apple Inc.

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/fast_primitives.h"

namespace mlx::core::fast {

namespace {

// Independent partial sums. Their number and the order in which they are
// combined depend only on the row length, so every row of a batch is reduced
// the same way whatever the number of rows.
constexpr int N_LANES = 16;

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Picks a where mask is all ones and b where it is zero. Bit arithmetic rather
// than ?: because GCC does not vectorize loops over the latter.
inline uint32_t select(bool c, uint32_t a, uint32_t b) {
  uint32_t mask = 0u - static_cast<uint32_t>(c);
  return (a & mask) | (b & ~mask);
}

// Conversions between float and the storage type, written without branches so
// that whole rows vectorize. They round exactly as float16_t and bfloat16_t do
// (to nearest even, with the same NaN), so h matches what x + r gives.
template <typename T>
struct Convert {
  static float to_float(T x) {
    return x;
  }
  static T from_float(float x) {
    return x;
  }
};

template <>
struct Convert<float16_t> {
  static float to_float(float16_t x) {
    uint32_t w = uint32_t(x.bits_) << 16;
    uint32_t sign = w & 0x80000000u;
    uint32_t two_w = w + w;
    float normalized = bits_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    float denormalized = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
    return bits_float(
        sign |
        select(
            two_w < (1u << 27),
            float_bits(denormalized),
            float_bits(normalized)));
  }
  static float16_t from_float(float x) {
    float base = (std::fabs(x) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w = float_bits(x);
    uint32_t shl1_w = w + w;
    uint32_t sign = (w & 0x80000000u) >> 16;
    uint32_t bias = std::max(shl1_w & 0xFF000000u, 0x71000000u);
    uint32_t bits = float_bits(bits_float((bias >> 1) + 0x07800000u) + base);
    uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
    float16_t out;
    out.bits_ = sign | select(shl1_w > 0xFF000000u, 0x7D00u, nonsign);
    return out;
  }
};

template <>
struct Convert<bfloat16_t> {
  static float to_float(bfloat16_t x) {
    return bits_float(uint32_t(x.bits_) << 16);
  }
  static bfloat16_t from_float(float x) {
    uint32_t u = float_bits(x);
    uint32_t rounded = (u + ((u >> 16) & 1) + 0x7FFFu) >> 16;
    bfloat16_t out;
    out.bits_ = select((u & 0x7FFFFFFFu) > 0x7F800000u, 0x7FC0u, rounded);
    return out;
  }
};

float dot(const float* a, const float* b, int axis_size) {
  float acc[N_LANES] = {};
  int i = 0;
  for (; i + N_LANES <= axis_size; i += N_LANES) {
    for (int j = 0; j < N_LANES; j++) {
      acc[j] += a[i + j] * b[i + j];
    }
  }
  for (int j = 0; i + j < axis_size; j++) {
    acc[j] += a[i + j] * b[i + j];
  }
  for (int width = N_LANES / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; j++) {
      acc[j] += acc[j + width];
    }
  }
  return acc[0];
}

float sum_squares(const float* h, int axis_size) {
  return dot(h, h, axis_size);
}

// Where each row starts, and the stride along it. Only the last axis is read
// as a row; the other axes may be sliced, transposed or broadcast.
struct RowLayout {
  Shape shape;
  Strides strides;
  bool row_contiguous;
  int axis_size;
  int64_t axis_stride;

  explicit RowLayout(const array& a)
      : shape(a.shape().begin(), a.shape().end() - 1),
        strides(a.strides().begin(), a.strides().end() - 1),
        row_contiguous(a.flags().row_contiguous),
        axis_size(a.shape().back()),
        axis_stride(a.shape().back() == 1 ? 1 : a.strides().back()) {}

  int64_t offset(int64_t row) const {
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

// Reads one row as floats. A contiguous float row is used in place.
template <typename T>
const float* load_row(const T* in, int64_t stride, int n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    if (stride == 1) {
      return in;
    }
  }
  if (stride == 1) {
    for (int i = 0; i < n; i++) {
      buf[i] = Convert<T>::to_float(in[i]);
    }
  } else {
    for (int i = 0; i < n; i++) {
      buf[i] = Convert<T>::to_float(in[i * stride]);
    }
  }
  return buf;
}

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
  // A scalar weight stands for no weight; a weight of size 1 may have stride 0.
  bool has_weight = w.ndim() == 1;
  int64_t w_stride = has_weight ? w.strides()[0] : 0;
  const T* x_ptr = x.data<T>();
  const T* r_ptr = r ? r->data<T>() : nullptr;
  const T* w_ptr = w.data<T>();
  T* y_ptr = y.data<T>();
  T* h_ptr = h ? h->data<T>() : nullptr;
  RowLayout x_rows(x);
  std::optional<RowLayout> r_rows;
  if (r) {
    r_rows.emplace(*r);
  }

  encoder.dispatch([=]() {
    using C = Convert<T>;
    // At most three rows of floats, whatever the number of rows.
    std::vector<float> w_row(has_weight ? axis_size : 0);
    std::vector<float> x_buf(axis_size);
    std::vector<float> r_buf(r_ptr ? axis_size : 0);
    if (has_weight) {
      for (int i = 0; i < axis_size; i++) {
        w_row[i] = C::to_float(w_ptr[i * w_stride]);
      }
    }
    for (int64_t row = 0; row < n_rows; row++) {
      const float* hf = load_row(
          x_ptr + x_rows.offset(row),
          x_rows.axis_stride,
          axis_size,
          x_buf.data());
      if (r_ptr) {
        const float* rf = load_row(
            r_ptr + r_rows->offset(row),
            r_rows->axis_stride,
            axis_size,
            r_buf.data());
        // h is rounded to T, as x + r is, and then normalized.
        T* h_out = h_ptr + row * axis_size;
        float* h_buf = x_buf.data();
        for (int i = 0; i < axis_size; i++) {
          T hi = C::from_float(hf[i] + rf[i]);
          h_out[i] = hi;
          h_buf[i] = C::to_float(hi);
        }
        hf = h_buf;
      }
      float inv_rms =
          1.0f / std::sqrt(sum_squares(hf, axis_size) / axis_size + eps);
      T* y_out = y_ptr + row * axis_size;
      if (has_weight) {
        const float* wf = w_row.data();
        for (int i = 0; i < axis_size; i++) {
          float n = C::to_float(C::from_float(hf[i] * inv_rms));
          y_out[i] = C::from_float(wf[i] * n);
        }
      } else {
        for (int i = 0; i < axis_size; i++) {
          y_out[i] = C::from_float(hf[i] * inv_rms);
        }
      }
    }
  });
}

template <typename T>
void rms_norm_fused_vjp(
    const array& h,
    const array& w,
    const array& dy,
    const array* dh_in,
    array& dh,
    array& dw,
    float eps,
    Stream stream) {
  auto& encoder = cpu::get_command_encoder(stream);
  encoder.set_input_array(h);
  encoder.set_input_array(w);
  encoder.set_input_array(dy);
  if (dh_in) {
    encoder.set_input_array(*dh_in);
  }
  encoder.set_output_array(dh);
  encoder.set_output_array(dw);

  int axis_size = h.shape().back();
  int64_t n_rows = axis_size == 0 ? 0 : h.size() / axis_size;
  bool has_weight = w.ndim() == 1;
  int64_t w_stride = has_weight ? w.strides()[0] : 0;
  const T* h_ptr = h.data<T>();
  const T* w_ptr = w.data<T>();
  const T* dy_ptr = dy.data<T>();
  const T* dh_in_ptr = dh_in ? dh_in->data<T>() : nullptr;
  T* dh_ptr = dh.data<T>();
  T* dw_ptr = dw.data<T>();
  RowLayout h_rows(h);
  RowLayout dy_rows(dy);
  std::optional<RowLayout> dh_in_rows;
  if (dh_in) {
    dh_in_rows.emplace(*dh_in);
  }

  encoder.dispatch([=]() {
    using C = Convert<T>;
    std::vector<float> w_row(axis_size, 1.0f);
    // The weight gradient accumulates in float32 whatever T is, row after row.
    std::vector<float> dw_acc(has_weight ? axis_size : 0, 0.0f);
    std::vector<float> h_buf(axis_size);
    std::vector<float> dy_buf(axis_size);
    std::vector<float> dh_buf(dh_in_ptr ? axis_size : 0);
    std::vector<float> gw(axis_size);
    if (has_weight) {
      for (int i = 0; i < axis_size; i++) {
        w_row[i] = C::to_float(w_ptr[i * w_stride]);
      }
    }
    for (int64_t row = 0; row < n_rows; row++) {
      const float* hf = load_row(
          h_ptr + h_rows.offset(row),
          h_rows.axis_stride,
          axis_size,
          h_buf.data());
      const float* gf = load_row(
          dy_ptr + dy_rows.offset(row),
          dy_rows.axis_stride,
          axis_size,
          dy_buf.data());
      for (int i = 0; i < axis_size; i++) {
        gw[i] = gf[i] * w_row[i];
      }
      float inv_rms =
          1.0f / std::sqrt(sum_squares(hf, axis_size) / axis_size + eps);
      float mean_gwh = dot(gw.data(), hf, axis_size) / axis_size;
      float inv_rms3 = inv_rms * inv_rms * inv_rms;
      T* out = dh_ptr + row * axis_size;
      if (dh_in_ptr) {
        const float* df = load_row(
            dh_in_ptr + dh_in_rows->offset(row),
            dh_in_rows->axis_stride,
            axis_size,
            dh_buf.data());
        for (int i = 0; i < axis_size; i++) {
          out[i] = C::from_float(
              gw[i] * inv_rms - hf[i] * mean_gwh * inv_rms3 + df[i]);
        }
      } else {
        for (int i = 0; i < axis_size; i++) {
          out[i] = C::from_float(gw[i] * inv_rms - hf[i] * mean_gwh * inv_rms3);
        }
      }
      if (has_weight) {
        for (int i = 0; i < axis_size; i++) {
          dw_acc[i] += gf[i] * hf[i] * inv_rms;
        }
      }
    }
    if (has_weight) {
      for (int i = 0; i < axis_size; i++) {
        dw_ptr[i] = C::from_float(dw_acc[i]);
      }
    } else {
      dw_ptr[0] = C::from_float(0.0f);
    }
  });
}

} // namespace

void RMSNormFused::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  assert(inputs.size() == (has_residual_ ? 3 : 2));
  const array& x = inputs[0];
  const array* r = has_residual_ ? &inputs[1] : nullptr;
  const array& w = inputs.back();
  array& y = outputs[0];
  array* h = has_residual_ ? &outputs[1] : nullptr;

  // Rows are read in place whatever their layout, so the only buffers are the
  // outputs. A second output keeps its inputs alive through its siblings, so
  // only the single-output form can take over x.
  if (!has_residual_ && x.flags().row_contiguous && x.is_donatable()) {
    y.copy_shared_buffer(x);
  } else {
    y.set_data(allocator::malloc(y.nbytes()));
  }
  if (h) {
    h->set_data(allocator::malloc(h->nbytes()));
  }

  switch (y.dtype()) {
    case float32:
      rms_norm_fused<float>(x, r, w, y, h, eps_, stream());
      break;
    case float16:
      rms_norm_fused<float16_t>(x, r, w, y, h, eps_, stream());
      break;
    case bfloat16:
      rms_norm_fused<bfloat16_t>(x, r, w, y, h, eps_, stream());
      break;
    default:
      throw std::runtime_error(
          "[rmsnorm_fused] Only float32, float16 and bfloat16 are supported.");
  }
}

void RMSNormFusedVJP::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  assert(inputs.size() == (has_residual_ ? 4 : 3));
  const array& h = inputs[0];
  const array& w = inputs[1];
  const array& dy = inputs[2];
  const array* dh_in = has_residual_ ? &inputs[3] : nullptr;
  array& dh = outputs[0];
  array& dw = outputs[1];
  dh.set_data(allocator::malloc(dh.nbytes()));
  dw.set_data(allocator::malloc(dw.nbytes()));

  switch (dh.dtype()) {
    case float32:
      rms_norm_fused_vjp<float>(h, w, dy, dh_in, dh, dw, eps_, stream());
      break;
    case float16:
      rms_norm_fused_vjp<float16_t>(h, w, dy, dh_in, dh, dw, eps_, stream());
      break;
    case bfloat16:
      rms_norm_fused_vjp<bfloat16_t>(h, w, dy, dh_in, dh, dw, eps_, stream());
      break;
    default:
      throw std::runtime_error(
          "[rmsnorm_fused] Only float32, float16 and bfloat16 are supported.");
  }
}

} // namespace mlx::core::fast
