// Copyright © 2026 Apple Inc.

#include "mlx/backend/metal/rms_norm_fused.h"
#include "mlx/backend/gpu/copy.h"
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/utils.h"
#include "mlx/fast_primitives.h"

namespace mlx::core::fast {

bool RMSNormFused::use_fallback(Stream s) {
  return false;
}

void RMSNormFused::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  auto& s = stream();
  auto& d = metal::device(s.device);
  auto& compute_encoder = metal::get_command_encoder(s);

  // The kernels index rows as row * axis_size, so inputs must be row
  // contiguous.
  auto row_contiguous = [&](const array& a) {
    if (a.flags().row_contiguous) {
      return a;
    }
    array copy = contiguous_copy_gpu(a, s);
    compute_encoder.add_temporary(copy);
    return copy;
  };
  const array x = row_contiguous(inputs[0]);
  const array r = has_residual_ ? row_contiguous(inputs[1]) : x;
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

  auto max_group = d.get_kernel("rms_fused_looped" + type_to_name(out))
                       ->maxTotalThreadsPerThreadgroup();
  auto dispatch = rms_norm_fused_dispatch(axis_size, n_rows, max_group);
  auto kernel =
      d.get_kernel(dispatch.kernel_name(has_residual_, type_to_name(out)));
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

} // namespace mlx::core::fast
