// Copyright © 2026 Apple Inc.

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "mlx/allocator.h"
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
inline float to_float(T x) {
  return static_cast<float>(x);
}

template <typename T>
inline T from_float(float x) {
  return static_cast<T>(x);
}

#ifndef __ARM_FEATURE_FP16_SCALAR_ARITHMETIC
// float16_t's own conversions branch on NaN and subnormals, which keeps GCC
// from vectorizing a row: with them the float16 kernels took 1.6 to 1.8 times
// as long on x86-64. These are the same conversions (mlx/types/fp16.h) without
// branches, bit for bit (checked over every input).
inline uint32_t select_bits(bool c, uint32_t a, uint32_t b) {
  uint32_t mask = 0u - static_cast<uint32_t>(c);
  return (a & mask) | (b & ~mask);
}

template <>
inline float to_float(float16_t x) {
  uint32_t two_w = uint32_t(x.bits_) << 17;
  uint32_t sign = (uint32_t(x.bits_) << 16) & 0x80000000u;
  float normal = std::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
  float subnormal = std::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  return std::bit_cast<float>(
      sign |
      select_bits(
          two_w < (1u << 27),
          std::bit_cast<uint32_t>(subnormal),
          std::bit_cast<uint32_t>(normal)));
}

template <>
inline float16_t from_float(float x) {
  uint32_t w = std::bit_cast<uint32_t>(x);
  uint32_t two_w = w + w;
  uint32_t sign = (w & 0x80000000u) >> 16;
  uint32_t exponent = std::max(two_w & 0xFF000000u, 0x71000000u);
  float magic = std::bit_cast<float>((exponent >> 1) + 0x07800000u);
  uint32_t bits =
      std::bit_cast<uint32_t>(magic + (std::fabs(x) * 0x1p+112f) * 0x1p-110f);
  uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
  float16_t out;
  out.bits_ = sign | select_bits(two_w > 0xFF000000u, 0x7D00u, nonsign);
  return out;
}
#endif

// The sum of term(i) over a row, in N_LANES independent partial sums.
template <typename F>
float sum_lanes(int axis_size, F term) {
  float acc[N_LANES] = {};
  int i = 0;
  for (; i + N_LANES <= axis_size; i += N_LANES) {
    for (int j = 0; j < N_LANES; j++) {
      acc[j] += term(i + j);
    }
  }
  for (int j = 0; i + j < axis_size; j++) {
    acc[j] += term(i + j);
  }
  for (int width = N_LANES / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; j++) {
      acc[j] += acc[j + width];
    }
  }
  return acc[0];
}

float sum_squares(const float* h, int axis_size) {
  return sum_lanes(axis_size, [h](int i) { return h[i] * h[i]; });
}

// sum(g * w * h), in a pass of its own: summed in the same loop as
// sum_squares, the two sets of lanes made the backward about 15% slower.
float sum_gwh(const float* g, const float* w, const float* h, int axis_size) {
  return sum_lanes(axis_size, [=](int i) { return g[i] * w[i] * h[i]; });
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
      buf[i] = to_float(in[i]);
    }
  } else {
    for (int i = 0; i < n; i++) {
      buf[i] = to_float(in[i * stride]);
    }
  }
  return buf;
}

// norm(u) * scale for one row of floats, rounded to T and written to out, as
// T or as the float value of that T. scale is the weight, or offset + weight
// when there is an offset; only then is the product taken before rounding
// (see rms_norm_scaled in fast.cpp).
template <typename T, typename Out>
void normalize_row(
    const float* u,
    const float* scale,
    bool has_offset,
    int n,
    float eps,
    Out* out) {
  auto as_out = [](T v) {
    if constexpr (std::is_same_v<Out, T>) {
      return v;
    } else {
      return to_float(v);
    }
  };
  float inv_rms = 1.0f / std::sqrt(sum_squares(u, n) / n + eps);
  if (!scale) {
    for (int i = 0; i < n; i++) {
      out[i] = as_out(from_float<T>(u[i] * inv_rms));
    }
  } else if (has_offset) {
    for (int i = 0; i < n; i++) {
      out[i] = as_out(from_float<T>(u[i] * inv_rms * scale[i]));
    }
  } else {
    for (int i = 0; i < n; i++) {
      float normalized = to_float(from_float<T>(u[i] * inv_rms));
      out[i] = as_out(from_float<T>(scale[i] * normalized));
    }
  }
}

// One norm's weight: where it is, and its stride (a weight of size 1 may
// have stride 0). A null pointer stands for no weight.
template <typename T>
struct WeightRow {
  const T* ptr = nullptr;
  int64_t stride = 0;

  explicit WeightRow(const array* w) {
    if (w && w->ndim() == 1) {
      ptr = w->data<T>();
      stride = w->strides()[0];
    }
  }

  // Whether load_scale reads it in place rather than into a buffer.
  bool in_place(bool has_offset) const {
    return !ptr || (std::is_same_v<T, float> && stride == 1 && !has_offset);
  }
};

// One norm's scale as a float row: nullptr for no weight, w, or offset + w.
// A weight that is not read in place is written to buf, which is then taken.
template <typename T>
const float* load_scale(WeightRow<T> w, float offset, int n, float*& buf) {
  if (w.in_place(offset != 0)) {
    return reinterpret_cast<const float*>(w.ptr);
  }
  float* row = buf;
  buf += n;
  const float* loaded = load_row(w.ptr, w.stride, n, row);
  for (int i = 0; offset != 0 && i < n; i++) {
    row[i] = loaded[i] + offset;
  }
  return loaded == row || offset == 0 ? loaded : row;
}

// The forward of every form: b = norm(x, w_branch) or x, h = r + b (rounded
// to T, or clipped to the float16 range first), y = norm(h, w).
template <typename T>
void rms_norm_fused(
    const array& x,
    const array* r,
    const array* w_branch,
    const array* w,
    array* y,
    array* h,
    float eps,
    float weight_offset,
    bool clip_residual,
    Stream stream) {
  auto& encoder = cpu::get_command_encoder(stream);
  for (auto* in : {&x, r, w_branch, w}) {
    if (in) {
      encoder.set_input_array(*in);
    }
  }
  for (auto* out : {y, h}) {
    if (out) {
      encoder.set_output_array(*out);
    }
  }

  int n = x.shape().back();
  int64_t n_rows = n == 0 ? 0 : x.size() / n;
  const T* x_ptr = x.data<T>();
  const T* r_ptr = r ? r->data<T>() : nullptr;
  T* y_ptr = y ? y->data<T>() : nullptr;
  T* h_ptr = h ? h->data<T>() : nullptr;
  RowLayout x_rows(x);
  std::optional<RowLayout> r_rows;
  if (r) {
    r_rows.emplace(*r);
  }
  bool has_offset = weight_offset != 0;

  // Scratch rows of floats, left uninitialized (each is written before it is
  // read): the scales when they are not read in place, x when it is normalized
  // and not read in place, the branch norm, and h.
  constexpr bool is_float = std::is_same_v<T, float>;
  WeightRow<T> wb_row(w_branch);
  WeightRow<T> w_row(w);
  bool norm_branch = w_branch != nullptr;
  bool x_buffered =
      (!r || norm_branch) && !(is_float && x_rows.axis_stride == 1);
  int n_buffers = !wb_row.in_place(has_offset) + !w_row.in_place(has_offset) +
      x_buffered + norm_branch + (r && y);

  encoder.dispatch([=]() {
    std::unique_ptr<float[]> scratch(
        n_buffers > 0 ? new float[int64_t(n_buffers) * n] : nullptr);
    float* free_buf = scratch.get();
    const float* scale_b = load_scale(wb_row, weight_offset, n, free_buf);
    const float* scale = load_scale(w_row, weight_offset, n, free_buf);
    auto take = [&](bool needed) {
      float* row = needed ? free_buf : nullptr;
      free_buf += needed ? n : 0;
      return row;
    };
    float* x_buf = take(x_buffered);
    float* b_buf = take(norm_branch);
    float* h_buf = take(r_ptr && y_ptr);
    for (int64_t row = 0; row < n_rows; row++) {
      const T* x_row = x_ptr + x_rows.offset(row);
      int64_t x_stride = x_rows.axis_stride;
      const float* u;
      if (!r_ptr) {
        u = load_row(x_row, x_stride, n, x_buf);
      } else {
        // h is rounded to T, as the add is, and then normalized; r and (when
        // it is not normalized first) x are read in place.
        const T* r_row = r_ptr + r_rows->offset(row);
        int64_t r_stride = r_rows->axis_stride;
        T* h_out = h_ptr + row * n;
        // h is kept as floats only for the output norm. Both flags are
        // constants of the loop, so that it tests nothing per value.
        auto add = [&](auto b_at, int64_t r_step) {
          auto add_row = [&](auto keep_h, auto clip) {
            for (int i = 0; i < n; i++) {
              float sum = to_float(r_row[i * r_step]) + b_at(i);
              if constexpr (clip.value) {
                sum = std::clamp(sum, -65504.0f, 65504.0f);
              }
              T hi = from_float<T>(sum);
              h_out[i] = hi;
              if constexpr (keep_h.value) {
                h_buf[i] = to_float(hi);
              }
            }
          };
          auto with_clip = [&](auto keep_h) {
            if (clip_residual) {
              add_row(keep_h, std::true_type{});
            } else {
              add_row(keep_h, std::false_type{});
            }
          };
          if (y_ptr) {
            with_clip(std::true_type{});
          } else {
            with_clip(std::false_type{});
          }
        };
        if (norm_branch) {
          const float* xf = load_row(x_row, x_stride, n, x_buf);
          normalize_row<T>(xf, scale_b, has_offset, n, eps, b_buf);
          add([=](int i) { return b_buf[i]; }, r_stride);
        } else if (x_stride == 1 && r_stride == 1) {
          add([=](int i) { return to_float(x_row[i]); }, 1);
        } else {
          add([=](int i) { return to_float(x_row[i * x_stride]); }, r_stride);
        }
        u = h_buf;
      }
      if (y_ptr) {
        T* y_out = y_ptr + row * n;
        normalize_row<T>(u, scale, has_offset, n, eps, y_out);
      }
    }
  });
}

// The weight gradient is a sum over rows. Rows are taken in blocks, each
// summed in turn into a float32 partial, and the partials are added pairwise in
// a binary tree over the block index, kept as a binary counter: a finished
// block is added to the partial waiting at its level and the sum carried up the
// same way, so only one partial per level is alive. Blocks have MIN_BLOCK_ROWS
// rows up to MAX_BLOCKS blocks and grow beyond, so that the scratch stays at
// most log2(MAX_BLOCKS) + 2 rows. Blocks and tree depend only on the number of
// rows: gw is the same on every run, and its rounding error grows with the
// depth of the tree and the length of a block, not with the number of rows.
constexpr int64_t MIN_BLOCK_ROWS = 8;
constexpr int64_t MAX_BLOCKS = 1024;

struct GwBlocks {
  int64_t block_rows;
  int64_t n_blocks;
  // Partials alive at once: one per level of the tree and the open block, at
  // most log2(MAX_BLOCKS) + 2.
  int n_partials;

  explicit GwBlocks(int64_t n_rows)
      : block_rows(
            std::max(MIN_BLOCK_ROWS, (n_rows + MAX_BLOCKS - 1) / MAX_BLOCKS)),
        n_blocks((n_rows + block_rows - 1) / block_rows),
        n_partials(
            n_blocks == 0 ? 0 : std::bit_width(uint64_t(n_blocks - 1)) + 2) {}
};

// One row of gx, and the row's share of gw added to its block's partial.
// gh is the cotangent of h (in the residual form): nullptr, or a row of T or
// of floats.
template <bool HasWeight, typename T, typename GH>
void gx_row(
    T* gx,
    float* gw_block,
    const float* h,
    const float* g,
    const float* w,
    GH gh,
    int n,
    float inv_rms,
    float mean_gwh) {
  float inv_rms3 = inv_rms * inv_rms * inv_rms;
  for (int i = 0; i < n; i++) {
    float d = g[i] * w[i] * inv_rms - h[i] * mean_gwh * inv_rms3;
    if constexpr (!std::is_same_v<GH, std::nullptr_t>) {
      d += to_float(gh[i]);
    }
    gx[i] = from_float<T>(d);
  }
  if constexpr (HasWeight) {
    for (int i = 0; i < n; i++) {
      gw_block[i] += g[i] * (h[i] * inv_rms);
    }
  }
}

template <typename T>
void rms_norm_fused_vjp(
    const array& h,
    const array& w,
    const array& g,
    const array* gh,
    array& gx,
    array& gw,
    float eps,
    float weight_offset,
    Stream stream) {
  auto& encoder = cpu::get_command_encoder(stream);
  encoder.set_input_array(h);
  encoder.set_input_array(w);
  encoder.set_input_array(g);
  if (gh) {
    encoder.set_input_array(*gh);
  }
  encoder.set_output_array(gx);
  encoder.set_output_array(gw);

  int axis_size = h.shape().back();
  int64_t n_rows = axis_size == 0 ? 0 : h.size() / axis_size;
  bool has_weight = w.ndim() == 1;
  int64_t w_stride = has_weight ? w.strides()[0] : 0;
  RowLayout h_rows(h);
  RowLayout g_rows(g);
  std::optional<RowLayout> gh_rows;
  if (gh) {
    gh_rows.emplace(*gh);
  }
  bool gh_in_place = gh && gh_rows->axis_stride == 1;
  GwBlocks blocks(has_weight ? n_rows : 0);

  // Float rows of scratch: w, h and g as floats, gh if it is strided, and the
  // partials of gw.
  int n_buffers = 3 + (gh && !gh_in_place);
  array scratch(
      {n_buffers + blocks.n_partials, axis_size}, float32, nullptr, {});
  scratch.set_data(allocator::malloc(scratch.nbytes()));
  encoder.add_temporary(scratch);

  encoder.dispatch([h_ptr = h.data<T>(),
                    w_ptr = w.data<T>(),
                    g_ptr = g.data<T>(),
                    gh_ptr = gh ? gh->data<T>() : nullptr,
                    gx_ptr = gx.data<T>(),
                    gw_ptr = gw.data<T>(),
                    buffers = scratch.data<float>(),
                    h_rows,
                    g_rows,
                    gh_rows,
                    gh_in_place,
                    n_buffers,
                    has_weight,
                    w_stride,
                    blocks,
                    axis_size,
                    n_rows,
                    eps,
                    weight_offset]() {
    int n = axis_size;
    auto buffer = [&](int64_t i) { return buffers + i * n; };
    float* w_row = buffer(0);
    float* h_buf = buffer(1);
    float* g_buf = buffer(2);
    float* gh_buf = buffer(3);
    for (int i = 0; i < n; i++) {
      w_row[i] = has_weight ? to_float(w_ptr[i * w_stride]) : 1.0f;
      if (weight_offset != 0) {
        w_row[i] += weight_offset;
      }
    }
    // open is the block being summed; partial[l] holds the sum of 2^l blocks
    // while bit l of the number of finished blocks is set.
    float* open = has_weight ? buffer(n_buffers) : nullptr;
    std::vector<float*> partial(std::max(blocks.n_partials - 1, 0));
    for (int l = 0; l < static_cast<int>(partial.size()); l++) {
      partial[l] = buffer(n_buffers + 1 + l);
    }

    int64_t block = 0;
    for (int64_t row = 0; row < n_rows; row++) {
      const float* hf =
          load_row(h_ptr + h_rows.offset(row), h_rows.axis_stride, n, h_buf);
      const float* gf =
          load_row(g_ptr + g_rows.offset(row), g_rows.axis_stride, n, g_buf);
      float inv_rms = 1.0f / std::sqrt(sum_squares(hf, n) / n + eps);
      float mean_gwh = sum_gwh(gf, w_row, hf, n) / n;

      T* gx_out = gx_ptr + row * n;
      bool block_start = has_weight && row % blocks.block_rows == 0;
      if (block_start) {
        std::fill_n(open, n, 0.0f);
      }
      auto write = [&](auto gh_row) {
        if (has_weight) {
          gx_row<true>(
              gx_out, open, hf, gf, w_row, gh_row, n, inv_rms, mean_gwh);
        } else {
          gx_row<false>(
              gx_out, open, hf, gf, w_row, gh_row, n, inv_rms, mean_gwh);
        }
      };
      if (!gh_ptr) {
        write(nullptr);
      } else if (gh_in_place) {
        write(gh_ptr + gh_rows->offset(row));
      } else {
        write(load_row(
            gh_ptr + gh_rows->offset(row), gh_rows->axis_stride, n, gh_buf));
      }

      // Carry a finished block up the tree. The left operand of every sum
      // holds the earlier rows.
      bool block_end = has_weight &&
          (row % blocks.block_rows == blocks.block_rows - 1 ||
           row == n_rows - 1);
      if (block_end) {
        int l = 0;
        for (int64_t k = block; k & 1; k >>= 1, l++) {
          for (int i = 0; i < n; i++) {
            open[i] = partial[l][i] + open[i];
          }
        }
        std::swap(partial[l], open);
        block++;
      }
    }

    if (!has_weight) {
      gw_ptr[0] = from_float<T>(0.0f);
      return;
    }
    if (n_rows == 0) {
      std::fill_n(gw_ptr, n, from_float<T>(0.0f));
      return;
    }
    // What is left is one partial per set bit of n_blocks, earliest highest.
    float* sum = nullptr;
    for (int l = static_cast<int>(partial.size()) - 1; l >= 0; l--) {
      if ((blocks.n_blocks >> l) & 1) {
        if (!sum) {
          sum = partial[l];
        } else {
          for (int i = 0; i < n; i++) {
            sum[i] = sum[i] + partial[l][i];
          }
        }
      }
    }
    for (int i = 0; i < n; i++) {
      gw_ptr[i] = from_float<T>(sum[i]);
    }
  });
}

template <typename F>
void dispatch_norm_types(Dtype dtype, F&& f) {
  dispatch_float_types(dtype, "[rmsnorm_fused]", [&](auto type_tag) {
    using T = MLX_GET_TYPE(type_tag);
    if constexpr (std::is_same_v<T, double>) {
      throw std::invalid_argument("[rmsnorm_fused] float64 is not supported.");
    } else {
      f(type_tag);
    }
  });
}

} // namespace

void RMSNormFused::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  const array& x = inputs[0];
  const array* res = has_residual_ ? &inputs[1] : nullptr;
  const array* w_branch = norm_branch_ ? &inputs[has_residual_ + 1] : nullptr;
  const array* w = norm_output_ ? &inputs.back() : nullptr;
  array* y = norm_output_ ? &outputs[0] : nullptr;
  array* h = has_residual_ ? &outputs.back() : nullptr;

  // Rows are read in place whatever their layout, so the only buffers are the
  // outputs. A second output keeps its inputs alive through its siblings, so
  // only the plain form can take over x.
  if (!has_residual_ && x.flags().row_contiguous && x.is_donatable()) {
    y->copy_shared_buffer(x);
  } else {
    for (auto& out : outputs) {
      out.set_data(allocator::malloc(out.nbytes()));
    }
  }

  dispatch_norm_types(x.dtype(), [&](auto type_tag) {
    using T = MLX_GET_TYPE(type_tag);
    rms_norm_fused<T>(
        x,
        res,
        w_branch,
        w,
        y,
        h,
        eps_,
        weight_offset_,
        clip_residual_,
        stream());
  });
}

void RMSNormFusedVJP::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  assert(inputs.size() == (has_residual_ ? 4 : 3));
  const array& h = inputs[0];
  const array& w = inputs[1];
  const array& g = inputs[2];
  const array* gh = has_residual_ ? &inputs[3] : nullptr;
  array& gx = outputs[0];
  array& gw = outputs[1];
  gx.set_data(allocator::malloc(gx.nbytes()));
  gw.set_data(allocator::malloc(gw.nbytes()));

  dispatch_norm_types(gx.dtype(), [&](auto type_tag) {
    using T = MLX_GET_TYPE(type_tag);
    rms_norm_fused_vjp<T>(h, w, g, gh, gx, gw, eps_, weight_offset_, stream());
  });
}

} // namespace mlx::core::fast
