// Copyright © 2026 Apple Inc.

#include "mlx/backend/metal/rms_norm_fused.h"
#include "mlx/backend/gpu/copy.h"
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/utils.h"
#include "mlx/fast_primitives.h"

namespace mlx::core::fast {

namespace {

// The kernels index rows as row * axis_size, so inputs must be row contiguous.
array row_contiguous_copy(
    const array& a,
    const Stream& s,
    metal::CommandEncoder& encoder) {
  if (a.flags().row_contiguous) {
    return a;
  }
  array copy = contiguous_copy_gpu(a, s);
  encoder.add_temporary(copy);
  return copy;
}

} // namespace

bool RMSNormFused::use_fallback(Stream s) {
  return false;
}

void RMSNormFused::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  auto& s = stream();
  auto& d = metal::device(s.device);
  auto& compute_encoder = metal::get_command_encoder(s);

  const array x = row_contiguous_copy(inputs[0], s, compute_encoder);
  const array r =
      has_residual_ ? row_contiguous_copy(inputs[1], s, compute_encoder) : x;
  const array& w = inputs.back();
  array& out = outputs[0];
  if (!has_residual_ && x.is_donatable()) {
    out.copy_shared_buffer(x);
  } else {
    out.set_data(allocator::malloc(out.nbytes()));
  }
  if (has_residual_) {
    outputs[1].set_data(allocator::malloc(outputs[1].nbytes()));
  }
  array& h = has_residual_ ? outputs[1] : out;

  auto axis_size = static_cast<uint32_t>(x.shape().back());
  if (axis_size == 0 || out.size() == 0) {
    return;
  }
  size_t n_rows = out.size() / axis_size;

  // The variant depends on the row length alone; the looped one then takes
  // the largest threadgroup its pipeline allows.
  auto name = rms_norm_fused_dispatch(axis_size, n_rows, 0)
                  .kernel_name(has_residual_, type_to_name(out));
  auto kernel = d.get_kernel(name);
  auto dispatch = rms_norm_fused_dispatch(
      axis_size, n_rows, kernel->maxTotalThreadsPerThreadgroup());
  assert(dispatch.threadgroup_size <= kernel->maxTotalThreadsPerThreadgroup());

  uint32_t w_stride = (w.ndim() == 1) ? w.strides()[0] : 0;
  compute_encoder.set_compute_pipeline_state(kernel);
  compute_encoder.set_input_array(x, 0);
  compute_encoder.set_input_array(r, 1);
  compute_encoder.set_input_array(w, 2);
  compute_encoder.set_output_array(out, 3);
  compute_encoder.set_output_array(h, 4);
  compute_encoder.set_bytes(eps_, 5);
  compute_encoder.set_bytes(axis_size, 6);
  compute_encoder.set_bytes(w_stride, 7);
  compute_encoder.dispatch_threads(
      MTL::Size(dispatch.grid_size, 1, 1),
      MTL::Size(dispatch.threadgroup_size, 1, 1));
}

void RMSNormFusedVJP::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  auto& s = stream();
  auto& d = metal::device(s.device);
  auto& compute_encoder = metal::get_command_encoder(s);

  const array h = row_contiguous_copy(inputs[0], s, compute_encoder);
  const array& w = inputs[1];
  const array dy = row_contiguous_copy(inputs[2], s, compute_encoder);
  const array dh_in =
      has_residual_ ? row_contiguous_copy(inputs[3], s, compute_encoder) : dy;
  array& dh = outputs[0];
  array& dw = outputs[1];
  bool has_w = w.ndim() != 0;

  dh.set_data(allocator::malloc(dh.nbytes()));
  auto axis_size = static_cast<uint32_t>(h.shape().back());
  size_t n_rows = axis_size == 0 ? 0 : h.size() / axis_size;
  if (n_rows == 0) {
    // No rows: dw is all zeros.
    fill_gpu(array(0, dw.dtype()), dw, s);
    return;
  }

  // Each threadgroup takes a run of rows and keeps its part of dw in float32,
  // one row of partials per threadgroup, which are then summed in order.
  auto groups = rms_norm_fused_vjp_groups(n_rows);
  array dw_partials = has_w
      ? array(
            {static_cast<int>(groups.n_groups), h.shape().back()},
            float32,
            nullptr,
            {})
      : dy;
  if (has_w) {
    dw_partials.set_data(allocator::malloc(dw_partials.nbytes()));
    compute_encoder.add_temporary(dw_partials);
  }

  auto name = "vjp_" +
      rms_norm_fused_dispatch(axis_size, groups.n_groups, 0)
          .kernel_name(has_residual_, type_to_name(dh));
  metal::MTLFCList func_consts = {
      {&has_w, MTL::DataType::DataTypeBool, 20},
  };
  {
    auto kernel =
        d.get_kernel(name, name + (has_w ? "_w" : "_now"), func_consts);
    auto dispatch = rms_norm_fused_dispatch(
        axis_size, groups.n_groups, kernel->maxTotalThreadsPerThreadgroup());
    assert(
        dispatch.threadgroup_size <= kernel->maxTotalThreadsPerThreadgroup());

    uint32_t w_stride = has_w ? w.strides()[0] : 0;
    auto n_rows_arg = static_cast<uint32_t>(n_rows);
    compute_encoder.set_compute_pipeline_state(kernel);
    compute_encoder.set_input_array(h, 0);
    compute_encoder.set_input_array(w, 1);
    compute_encoder.set_input_array(dy, 2);
    compute_encoder.set_input_array(dh_in, 3);
    compute_encoder.set_output_array(dh, 4);
    compute_encoder.set_output_array(dw_partials, 5);
    compute_encoder.set_bytes(eps_, 6);
    compute_encoder.set_bytes(axis_size, 7);
    compute_encoder.set_bytes(w_stride, 8);
    compute_encoder.set_bytes(n_rows_arg, 9);
    compute_encoder.set_bytes(groups.rows_per_group, 10);
    compute_encoder.dispatch_threads(
        MTL::Size(dispatch.grid_size, 1, 1),
        MTL::Size(dispatch.threadgroup_size, 1, 1));
  }

  if (!has_w) {
    fill_gpu(array(0, dw.dtype()), dw, s);
    return;
  }
  dw.set_data(allocator::malloc(dw.nbytes()));
  {
    auto kernel = d.get_kernel(
        RMSNormFusedCombineDispatch::kernel_name(type_to_name(dw)));
    auto dispatch = rms_norm_fused_combine_dispatch(
        axis_size, kernel->maxTotalThreadsPerThreadgroup());
    compute_encoder.set_compute_pipeline_state(kernel);
    compute_encoder.set_input_array(dw_partials, 0);
    compute_encoder.set_output_array(dw, 1);
    compute_encoder.set_bytes(axis_size, 2);
    compute_encoder.set_bytes(groups.n_groups, 3);
    compute_encoder.dispatch_threads(
        MTL::Size(dispatch.grid_size, 1, 1),
        MTL::Size(dispatch.threadgroup_size, 1, 1));
  }
}

} // namespace mlx::core::fast
