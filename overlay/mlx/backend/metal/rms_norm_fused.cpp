// Copyright © 2026 Apple Inc.

#include "mlx/backend/metal/rms_norm_fused.h"
#include "mlx/backend/gpu/copy.h"
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/utils.h"
#include "mlx/fast_primitives.h"

namespace mlx::core::fast {

namespace {

// The kernels index rows as row * axis_size, so inputs must be row contiguous.
array ensure_row_contiguous(
    const array& a,
    metal::CommandEncoder& encoder,
    const Stream& s) {
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

  const array x = ensure_row_contiguous(inputs[0], compute_encoder, s);
  const array res =
      has_residual_ ? ensure_row_contiguous(inputs[1], compute_encoder, s) : x;
  const array& w_branch = inputs[has_residual_ + 1];
  const array& w = inputs.back();
  if (!has_residual_ && x.is_donatable()) {
    outputs[0].copy_shared_buffer(x);
  } else {
    for (auto& out : outputs) {
      out.set_data(allocator::malloc(out.nbytes()));
    }
  }
  // Without a residual h is y, and without an output norm y is h: the kernel
  // writes only the one that exists.
  array& y = outputs[0];
  array& h = outputs.back();

  auto axis_size = static_cast<uint32_t>(x.shape().back());
  if (axis_size == 0 || y.size() == 0) {
    return;
  }
  size_t n_rows = y.size() / axis_size;

  // The variant depends on the row length and on how many threads the
  // single-row pipeline allows; the looped one takes the largest threadgroup
  // its pipeline allows. The last pipeline asked about is the one to launch.
  bool has_offset = weight_offset_ != 0;
  metal::MTLFCList func_consts = {
      {&norm_branch_, MTL::DataType::DataTypeBool, 21},
      {&norm_output_, MTL::DataType::DataTypeBool, 22},
      {&has_offset, MTL::DataType::DataTypeBool, 23},
      {&clip_residual_, MTL::DataType::DataTypeBool, 24},
  };
  MTL::ComputePipelineState* kernel = nullptr;
  auto dispatch = rms_norm_fused_dispatch(axis_size, n_rows, [&](bool looped) {
    auto name = RMSNormFusedDispatch::kernel_name(
        looped, has_residual_, type_to_name(y));
    auto hash_name = name + (norm_branch_ ? "_branch" : "") +
        (norm_output_ ? "" : "_post") + (has_offset ? "_offset" : "") +
        (clip_residual_ ? "_clip" : "");
    kernel = d.get_kernel(name, hash_name, func_consts);
    return kernel->maxTotalThreadsPerThreadgroup();
  });
  assert(dispatch.threadgroup_size <= kernel->maxTotalThreadsPerThreadgroup());

  auto weight_stride = [](const array& w) -> uint32_t {
    return w.ndim() == 1 ? w.strides()[0] : 0;
  };
  uint32_t w_stride = weight_stride(w);
  uint32_t w_branch_stride = weight_stride(w_branch);
  compute_encoder.set_compute_pipeline_state(kernel);
  compute_encoder.set_input_array(x, 0);
  compute_encoder.set_input_array(res, 1);
  compute_encoder.set_input_array(w, 2);
  compute_encoder.set_output_array(y, 3);
  compute_encoder.set_output_array(h, 4);
  compute_encoder.set_bytes(eps_, 5);
  compute_encoder.set_bytes(axis_size, 6);
  compute_encoder.set_bytes(w_stride, 7);
  compute_encoder.set_input_array(w_branch, 8);
  compute_encoder.set_bytes(w_branch_stride, 9);
  compute_encoder.set_bytes(weight_offset_, 10);
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

  const array h = ensure_row_contiguous(inputs[0], compute_encoder, s);
  const array& w = inputs[1];
  const array g = ensure_row_contiguous(inputs[2], compute_encoder, s);
  const array gh =
      has_residual_ ? ensure_row_contiguous(inputs[3], compute_encoder, s) : g;
  array& gx = outputs[0];
  array& gw = outputs[1];
  bool has_w = w.ndim() != 0;
  bool has_offset = weight_offset_ != 0;

  gx.set_data(allocator::malloc(gx.nbytes()));
  auto axis_size = static_cast<uint32_t>(h.shape().back());
  size_t n_rows = axis_size == 0 ? 0 : h.size() / axis_size;
  if (n_rows == 0) {
    // No rows: gw is all zeros.
    fill_gpu(array(0, gw.dtype()), gw, s);
    return;
  }

  // Each threadgroup takes a run of rows and keeps its part of gw in float32,
  // one row of partials per threadgroup, which are then summed in order.
  auto groups = rms_norm_fused_vjp_groups(n_rows);
  array gw_partials = has_w
      ? array(
            {static_cast<int>(groups.n_groups), h.shape().back()},
            float32,
            nullptr,
            {})
      : g;
  if (has_w) {
    gw_partials.set_data(allocator::malloc(gw_partials.nbytes()));
    compute_encoder.add_temporary(gw_partials);
  }

  metal::MTLFCList func_consts = {
      {&has_w, MTL::DataType::DataTypeBool, 20},
      {&has_offset, MTL::DataType::DataTypeBool, 23},
  };
  {
    // As in the forward: the last pipeline asked about is the one to launch.
    MTL::ComputePipelineState* kernel = nullptr;
    auto dispatch =
        rms_norm_fused_dispatch(axis_size, groups.n_groups, [&](bool looped) {
          auto name = "vjp_" +
              RMSNormFusedDispatch::kernel_name(
                          looped, has_residual_, type_to_name(gx));
          kernel = d.get_kernel(
              name,
              name + (has_w ? "_w" : "_now") + (has_offset ? "_offset" : ""),
              func_consts);
          return kernel->maxTotalThreadsPerThreadgroup();
        });
    assert(
        dispatch.threadgroup_size <= kernel->maxTotalThreadsPerThreadgroup());

    uint32_t w_stride = has_w ? w.strides()[0] : 0;
    auto n_rows_arg = static_cast<uint32_t>(n_rows);
    compute_encoder.set_compute_pipeline_state(kernel);
    compute_encoder.set_input_array(h, 0);
    compute_encoder.set_input_array(w, 1);
    compute_encoder.set_input_array(g, 2);
    compute_encoder.set_input_array(gh, 3);
    compute_encoder.set_output_array(gx, 4);
    compute_encoder.set_output_array(gw_partials, 5);
    compute_encoder.set_bytes(eps_, 6);
    compute_encoder.set_bytes(axis_size, 7);
    compute_encoder.set_bytes(w_stride, 8);
    compute_encoder.set_bytes(n_rows_arg, 9);
    compute_encoder.set_bytes(groups.rows_per_group, 10);
    compute_encoder.set_bytes(weight_offset_, 11);
    compute_encoder.dispatch_threads(
        MTL::Size(dispatch.grid_size, 1, 1),
        MTL::Size(dispatch.threadgroup_size, 1, 1));
  }

  if (!has_w) {
    fill_gpu(array(0, gw.dtype()), gw, s);
    return;
  }
  gw.set_data(allocator::malloc(gw.nbytes()));
  {
    auto kernel = d.get_kernel(
        RMSNormFusedCombineDispatch::kernel_name(type_to_name(gw)));
    auto dispatch = rms_norm_fused_combine_dispatch(
        axis_size, kernel->maxTotalThreadsPerThreadgroup());
    compute_encoder.set_compute_pipeline_state(kernel);
    compute_encoder.set_input_array(gw_partials, 0);
    compute_encoder.set_output_array(gw, 1);
    compute_encoder.set_bytes(axis_size, 2);
    compute_encoder.set_bytes(groups.n_groups, 3);
    compute_encoder.dispatch_threads(
        MTL::Size(dispatch.grid_size, 1, 1),
        MTL::Size(dispatch.threadgroup_size, 1, 1));
  }
}

} // namespace mlx::core::fast
