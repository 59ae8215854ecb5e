// Copyright © 2026 Apple Inc.

#include "mlx/backend/common/reduce.h"
#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/kernel_utils.cuh"
#include "mlx/backend/cuda/reduce/reduce.cuh"
#include "mlx/backend/gpu/copy.h"
#include "mlx/dtype_utils.h"
#include "mlx/fast_primitives.h"

#include <algorithm>

#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <nvtx3/nvtx3.hpp>

namespace mlx::core {

namespace cu {

namespace cg = cooperative_groups;

constexpr int RMS_FUSED_MAX_CHUNKS = 8;
// Up to 8 chunks of 16 bytes take about 90 registers a thread for bfloat16,
// which 1024 threads could not have.
constexpr int RMS_FUSED_SMALL_MAX_BLOCK = 512;
constexpr int RMS_FUSED_LOOPED_BLOCK = 1024;
// The backward also keeps g, w and the weight gradient of every vector in
// registers; more chunks than this would spill.
constexpr int RMS_FUSED_VJP_MAX_CHUNKS = 4;
// The backward runs this many threads in all, each block over several rows:
// enough to keep an H100 or H200 busy, and few enough blocks that their
// float32 weight-gradient partials stay a small share of the traffic.
constexpr int RMS_FUSED_VJP_THREADS = 1 << 17;

// plus_f2 and BlockBroadcastReduce are rms_norm.cu's, which keeps them to
// itself.
inline __device__ float2 plus_f2(const float2& a, const float2& b) {
  return {a.x + b.x, a.y + b.y};
}

// Similar to cub::BlockReduce, but result is broadcasted to every thread.
template <typename T, int BLOCK_DIM, int GROUP_DIM = WARP_SIZE>
struct BlockBroadcastReduce {
  using TempStorage = T[std::max(BLOCK_DIM / WARP_SIZE, 1)];

  cg::thread_block& block;
  TempStorage& temp;

  template <typename Op>
  __device__ T Reduce(const T& input, const Op& op, const T& init_value) {
    auto warp = cg::tiled_partition<GROUP_DIM>(block);
    T x = cg::reduce(warp, input, op);
    if constexpr (BLOCK_DIM > GROUP_DIM) {
      if (warp.thread_rank() == 0) {
        temp[warp.meta_group_rank()] = x;
      }
      block.sync();
      x = warp.thread_rank() < warp.meta_group_size() ? temp[warp.thread_rank()]
                                                      : init_value;
      return cg::reduce(warp, x, op);
    } else {
      return x;
    }
  }

  __device__ T Sum(const T& input) {
    return Reduce(input, cg::plus<T>{}, T{});
  }
};

// The arrays of a forward launch, with r = x when the form has no residual,
// h = out when it has one output, and the weight a form does not read the
// other one.
template <typename T>
struct FusedParams {
  const T* x;
  const T* r;
  const T* w;
  const T* w_branch;
  T* out;
  T* h;
  int64_t w_stride;
  int64_t w_branch_stride;
  float eps;
  float weight_offset;
  uint32_t axis_size;

  struct Row {
    const T* x;
    const T* r;
    T* out;
    T* h;
  };

  // The rows of x, r, out and h that a block takes.
  __device__ Row row(uint32_t i) const {
    size_t offset = static_cast<size_t>(i) * axis_size;
    return {x + offset, r + offset, out + offset, h + offset};
  }

  // 1 / sqrt(mean(v^2) + eps) of a row whose squares sum to sum_squares.
  __device__ float inv_rms(float sum_squares) const {
    return rsqrt(sum_squares / axis_size + eps);
  }
};

// The arrays of a backward launch, with gh = g when h is not an output and gw
// the float32 weight-gradient partials, a row of axis_size a block. The
// kernels copy the pointers out: read in place, as the forward reads its
// FusedParams, they cost the register-resident backward spills.
template <typename T>
struct FusedVjpParams {
  struct Arrays {
    const T* h;
    const T* w;
    const T* g;
    const T* gh;
    T* gx;
    float* gw;
  } arrays;
  int64_t w_stride;
  float eps;
  float weight_offset;
  uint32_t axis_size;
  uint32_t n_rows;
  uint32_t rows_per_block;
};

// The form of the forward: b = x, or the norm of x with the branch weight
// when NORM_BRANCH; h = b + r when HAS_RESIDUAL; y = the norm of h when
// NORM_OUTPUT. HAS_OFFSET and CLIP are compile-time too, so that the forms
// without them run the same code as before they existed.
template <
    bool HAS_RESIDUAL,
    bool NORM_BRANCH,
    bool NORM_OUTPUT,
    bool HAS_OFFSET,
    bool CLIP>
struct FusedForm {
  static constexpr bool has_residual = HAS_RESIDUAL;
  static constexpr bool norm_branch = NORM_BRANCH;
  static constexpr bool norm_output = NORM_OUTPUT;
  static constexpr bool has_offset = HAS_OFFSET;
  static constexpr bool clip = CLIP;
};

// h = b + r rounded to T, as the add op rounds it; with CLIP, the float32
// sum clipped to the float16 range first, as Gemma 3 does.
template <bool CLIP = false, typename T, int N>
__device__ void add_in_place(
    AlignedVector<T, N>& b,
    const AlignedVector<T, N>& r) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    // __fadd_rn: for float32, a b that is a product must be rounded before the
    // add, as the add op gets it, not fused with it into an FMA.
    float sum = __fadd_rn(static_cast<float>(b[i]), static_cast<float>(r[i]));
    if constexpr (CLIP) {
      sum = isnan(sum) ? sum : fminf(fmaxf(sum, -65504.0f), 65504.0f);
    }
    b[i] = static_cast<T>(sum);
  }
}

// One running sum over every value a thread reads, in order. __fmaf_rn: the
// compiler contracts sum += t * t into an FMA only where the product and the
// sum fall in one block, which differs between the forms' kernels, and the
// forms must sum a row's squares alike to agree bit for bit.
template <typename T, int N>
__device__ void add_squares(float& sum, const AlignedVector<T, N>& v) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    float t = static_cast<float>(v[i]);
    sum = __fmaf_rn(t, t, sum);
  }
}

// The normalized value times the weight, w * T(h * inv_rms) in the order
// rms_norm uses, or T(h * inv_rms * (offset + w)) with an offset, as Gemma's
// norms compute it.
template <bool HAS_OFFSET = false, typename T, int N>
__device__ void scale(
    AlignedVector<T, N>& h,
    const AlignedVector<T, N>& w,
    float inv_rms,
    float offset = 0) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    if constexpr (HAS_OFFSET) {
      h[i] = static_cast<T>(
          static_cast<float>(h[i]) * inv_rms *
          (offset + static_cast<float>(w[i])));
    } else {
      h[i] = w[i] * static_cast<T>(static_cast<float>(h[i]) * inv_rms);
    }
  }
}

template <typename T, int N>
__device__ void set_zero(AlignedVector<T, N>& v) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    v[i] = T(0);
  }
}

// Rows of up to blockDim.x * N_CHUNKS vectors of N_READS values stay in
// registers between the sums of squares and the scaling: each is read once.
// ALIGNED: every pointer is 16-byte aligned, the row length is a multiple of
// N_READS and the weights are contiguous, so the loads and stores need no
// element-wise fallback, which would cost registers and occupancy. Only the
// last chunk can run past the end of the row. BLOCK_DIM is WARP_SIZE for
// blocks of one warp, which then skip the exchange between warps.
template <
    typename T,
    typename Form,
    int N_CHUNKS,
    bool ALIGNED,
    int N_READS,
    int BLOCK_DIM = RMS_FUSED_SMALL_MAX_BLOCK>
__global__ void __launch_bounds__(RMS_FUSED_SMALL_MAX_BLOCK)
    rms_norm_fused_small(__grid_constant__ const FusedParams<T> args) {
  auto block = cg::this_thread_block();
  using BlockReduceT = BlockBroadcastReduce<float, BLOCK_DIM>;
  // Two, so that a warp can store the sum of the second norm while another
  // still reads that of the first.
  __shared__ typename BlockReduceT::TempStorage temp[2];

  auto [x, r, out, h] = args.row(blockIdx.x);

  uint32_t n_vectors = cuda::ceil_div(args.axis_size, N_READS);
  auto in_row = [&](int i) {
    return !ALIGNED || i + 1 < N_CHUNKS ||
        i * blockDim.x + threadIdx.x < n_vectors;
  };
  auto load = [&](const T* p, int i) {
    uint32_t index = i * blockDim.x + threadIdx.x;
    if constexpr (ALIGNED) {
      return unsafe_load_vector<N_READS>(p, index);
    } else {
      return load_vector<N_READS>(p, index, args.axis_size, T(0));
    }
  };
  auto load_weight = [&](const T* p, int64_t stride, int i) {
    uint32_t index = i * blockDim.x + threadIdx.x;
    if constexpr (ALIGNED) {
      return unsafe_load_vector<N_READS>(p, index);
    } else {
      return load_vector<N_READS>(p, index, args.axis_size, stride, T(0));
    }
  };
  auto store = [&](T* p, int i, const AlignedVector<T, N_READS>& v) {
    uint32_t index = i * blockDim.x + threadIdx.x;
    if constexpr (ALIGNED) {
      unsafe_store_vector<N_READS>(p, index, v);
    } else {
      store_vector<N_READS>(p, index, v, args.axis_size);
    }
  };

  AlignedVector<T, N_READS> hn[N_CHUNKS];
  float sum_squares = 0;
  if constexpr (Form::norm_branch) {
    // The branch norm of x, held in registers, then h = b + r.
#pragma unroll
    for (int i = 0; i < N_CHUNKS; i++) {
      if (in_row(i)) {
        hn[i] = load(x, i);
        add_squares(sum_squares, hn[i]);
      } else {
        set_zero(hn[i]);
      }
    }
    float inv_rms = args.inv_rms(BlockReduceT{block, temp[1]}.Sum(sum_squares));
    sum_squares = 0;
#pragma unroll
    for (int i = 0; i < N_CHUNKS; i++) {
      if (in_row(i)) {
        scale<Form::has_offset>(
            hn[i],
            load_weight(args.w_branch, args.w_branch_stride, i),
            inv_rms,
            args.weight_offset);
        add_in_place<Form::clip>(hn[i], load(r, i));
        store(h, i, hn[i]);
        add_squares(sum_squares, hn[i]);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < N_CHUNKS; i++) {
      if (in_row(i)) {
        hn[i] = load(x, i);
        if constexpr (Form::has_residual) {
          add_in_place<Form::clip>(hn[i], load(r, i));
          store(h, i, hn[i]);
        }
        add_squares(sum_squares, hn[i]);
      } else {
        set_zero(hn[i]);
      }
    }
  }
  if constexpr (Form::norm_output) {
    float inv_rms = args.inv_rms(BlockReduceT{block, temp[0]}.Sum(sum_squares));
#pragma unroll
    for (int i = 0; i < N_CHUNKS; i++) {
      if (in_row(i)) {
        scale<Form::has_offset>(
            hn[i],
            load_weight(args.w, args.w_stride, i),
            inv_rms,
            args.weight_offset);
        store(out, i, hn[i]);
      }
    }
  }
}

// Longer rows: h is formed and written in one pass and read back, from L2 if
// it still holds it, in the next. The branch norm first reads x once more.
template <typename T, typename Form, int N_READS>
__global__ void __launch_bounds__(RMS_FUSED_LOOPED_BLOCK)
    rms_norm_fused_looped(__grid_constant__ const FusedParams<T> args) {
  auto block = cg::this_thread_block();
  using BlockReduceT = BlockBroadcastReduce<float, RMS_FUSED_LOOPED_BLOCK>;
  // Two, as in rms_norm_fused_small.
  __shared__ typename BlockReduceT::TempStorage temp[2];

  auto [x, r, out, h] = args.row(blockIdx.x);

  uint32_t n_vectors = cuda::ceil_div(args.axis_size, N_READS);
  float branch_inv_rms = 0;
  if constexpr (Form::norm_branch) {
    float sum_squares = 0;
    for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
      add_squares(
          sum_squares, load_vector<N_READS>(x, index, args.axis_size, T(0)));
    }
    branch_inv_rms =
        args.inv_rms(BlockReduceT{block, temp[1]}.Sum(sum_squares));
  }
  float sum_squares = 0;
  for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
    auto hn = load_vector<N_READS>(x, index, args.axis_size, T(0));
    if constexpr (Form::norm_branch) {
      scale<Form::has_offset>(
          hn,
          load_vector<N_READS>(
              args.w_branch, index, args.axis_size, args.w_branch_stride, T(0)),
          branch_inv_rms,
          args.weight_offset);
    }
    if constexpr (Form::has_residual) {
      add_in_place<Form::clip>(
          hn, load_vector<N_READS>(r, index, args.axis_size, T(0)));
      store_vector<N_READS>(h, index, hn, args.axis_size);
    }
    add_squares(sum_squares, hn);
  }
  if constexpr (Form::norm_output) {
    float inv_rms = args.inv_rms(BlockReduceT{block, temp[0]}.Sum(sum_squares));
    const T* h_in = Form::has_residual ? h : x;
    for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
      auto hn = load_vector<N_READS>(h_in, index, args.axis_size, T(0));
      scale<Form::has_offset>(
          hn,
          load_vector<N_READS>(
              args.w, index, args.axis_size, args.w_stride, T(0)),
          inv_rms,
          args.weight_offset);
      store_vector<N_READS>(out, index, hn, args.axis_size);
    }
  }
}

// Hides the values of v from the compiler. A row that stays in registers across
// the block reduction then stays in its own 16-bit type there: otherwise the
// compiler keeps the float32 values of the first pass for the second, twice
// the registers, and one block of 512 threads a multiprocessor fewer.
template <typename T, int N>
__device__ void keep_packed(AlignedVector<T, N>& v) {
  if constexpr (sizeof(T) < sizeof(uint32_t)) {
    constexpr int n_words = sizeof(v) / sizeof(uint32_t);
    static_assert(n_words * sizeof(uint32_t) == sizeof(v));
    auto* words = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
    for (int i = 0; i < n_words; i++) {
      asm volatile("" : "+r"(words[i]));
    }
  }
}

// Adds h * h, in the order and with the FMAs of the forward's sum of squares
// (add_squares), and s * g * h, where the scale s is w, or offset + w.
template <bool HAS_W, bool HAS_OFFSET, typename T, int N>
__device__ void add_vjp_sums(
    float2& sums,
    const AlignedVector<T, N>& h,
    const AlignedVector<T, N>& g,
    const AlignedVector<T, N>& w,
    float offset) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    float hi = static_cast<float>(h[i]);
    float wgi = static_cast<float>(g[i]);
    if constexpr (HAS_W && HAS_OFFSET) {
      wgi *= static_cast<float>(w[i]) + offset;
    } else if constexpr (HAS_W) {
      wgi *= static_cast<float>(w[i]);
    }
    sums.x = __fmaf_rn(hi, hi, sums.x);
    sums.y += wgi * hi;
  }
}

// gx = s * g * inv_rms - h * inv_rms^3 * mean(s * g * h) (+ gh), and
// gw += g * h * inv_rms, all in float32, with the scale s = w or offset + w.
template <bool HAS_W, bool HAS_GH, bool HAS_OFFSET, typename T, int N>
__device__ AlignedVector<T, N> vjp_vector(
    const AlignedVector<T, N>& h,
    const AlignedVector<T, N>& g,
    const AlignedVector<T, N>& w,
    const AlignedVector<T, N>& gh,
    float offset,
    float inv_rms,
    float mean_wgh,
    float inv_rms3,
    AlignedVector<float, N>& gw) {
  AlignedVector<T, N> gx;
#pragma unroll
  for (int i = 0; i < N; i++) {
    float hi = static_cast<float>(h[i]);
    float gi = static_cast<float>(g[i]);
    float wgi = gi;
    if constexpr (HAS_W && HAS_OFFSET) {
      wgi *= static_cast<float>(w[i]) + offset;
    } else if constexpr (HAS_W) {
      wgi *= static_cast<float>(w[i]);
    }
    float gxi = wgi * inv_rms - hi * mean_wgh * inv_rms3;
    if constexpr (HAS_GH) {
      gxi += static_cast<float>(gh[i]);
    }
    gx[i] = static_cast<T>(gxi);
    if constexpr (HAS_W) {
      gw[i] += gi * hi * inv_rms;
    }
  }
  return gx;
}

// The backward in rms_norm_fused_small's layout, with the weight. A block
// takes rows_per_block rows in turn: their h, g (and gh, the cotangent of h)
// stay in registers between the sums and gx, and w and the block's float32
// weight-gradient partial for all of them. gw gets one row of partials a
// block, summed over the blocks afterwards.
template <
    typename T,
    bool HAS_GH,
    bool HAS_OFFSET,
    int N_CHUNKS,
    int N_READS,
    int BLOCK_DIM = RMS_FUSED_SMALL_MAX_BLOCK>
__global__ void __launch_bounds__(
    RMS_FUSED_SMALL_MAX_BLOCK,
    N_CHUNKS <= 2 ? 2 : 1) rms_norm_fused_vjp_small(FusedVjpParams<T> args) {
  auto [h, w, g, gh, gx, gw] = args.arrays;
  auto block = cg::this_thread_block();
  using BlockReduceF2 = BlockBroadcastReduce<float2, BLOCK_DIM>;
  // Two, so that a warp can store the sums of a row while another still
  // reads those of the row before.
  __shared__ typename BlockReduceF2::TempStorage temp[2];

  uint32_t n_vectors = args.axis_size / N_READS;
  // Only the last chunk can run past the end of the row.
  bool last_in_row = (N_CHUNKS - 1) * blockDim.x + threadIdx.x < n_vectors;
  AlignedVector<T, N_READS> wn[N_CHUNKS];
  AlignedVector<float, N_READS> gwn[N_CHUNKS];
#pragma unroll
  for (int i = 0; i < N_CHUNKS; i++) {
    if (i + 1 < N_CHUNKS || last_in_row) {
      wn[i] = unsafe_load_vector<N_READS>(w, i * blockDim.x + threadIdx.x);
    }
    set_zero(gwn[i]);
  }

  uint32_t first_row = blockIdx.x * args.rows_per_block;
  uint32_t n_block_rows = min(args.rows_per_block, args.n_rows - first_row);
  size_t row = static_cast<size_t>(first_row) * args.axis_size;
  h += row;
  g += row;
  gh += row;
  gx += row;
  for (uint32_t k = 0; k < n_block_rows; k++) {
    AlignedVector<T, N_READS> hn[N_CHUNKS];
    AlignedVector<T, N_READS> gn[N_CHUNKS];
    AlignedVector<T, N_READS> ghn[N_CHUNKS];
    float2 sums = {0, 0};
#pragma unroll
    for (int i = 0; i < N_CHUNKS; i++) {
      uint32_t index = i * blockDim.x + threadIdx.x;
      if (i + 1 < N_CHUNKS || last_in_row) {
        hn[i] = unsafe_load_vector<N_READS>(h, index);
        gn[i] = unsafe_load_vector<N_READS>(g, index);
        if constexpr (HAS_GH) {
          ghn[i] = unsafe_load_vector<N_READS>(gh, index);
        }
        add_vjp_sums<true, HAS_OFFSET>(
            sums, hn[i], gn[i], wn[i], args.weight_offset);
      }
    }
    sums = BlockReduceF2{block, temp[k % 2]}.Reduce(sums, plus_f2, {});
    float inv_rms = rsqrt(sums.x / args.axis_size + args.eps);
    float mean_wgh = sums.y / args.axis_size;
    float inv_rms3 = inv_rms * inv_rms * inv_rms;
#pragma unroll
    for (int i = 0; i < N_CHUNKS; i++) {
      if (i + 1 < N_CHUNKS || last_in_row) {
        keep_packed(hn[i]);
        keep_packed(gn[i]);
        keep_packed(wn[i]);
        unsafe_store_vector<N_READS>(
            gx,
            i * blockDim.x + threadIdx.x,
            vjp_vector<true, HAS_GH, HAS_OFFSET>(
                hn[i],
                gn[i],
                wn[i],
                HAS_GH ? ghn[i] : hn[i],
                args.weight_offset,
                inv_rms,
                mean_wgh,
                inv_rms3,
                gwn[i]));
      }
    }
    h += args.axis_size;
    g += args.axis_size;
    gh += args.axis_size;
    gx += args.axis_size;
  }

  gw += static_cast<size_t>(blockIdx.x) * args.axis_size;
#pragma unroll
  for (int i = 0; i < N_CHUNKS; i++) {
    store_vector<N_READS>(
        gw, i * blockDim.x + threadIdx.x, gwn[i], args.axis_size);
  }
}

// The backward for every other case: rows too long for registers, unaligned
// data or no weight. h and g are read a second time, from cache if it still
// holds them, and each thread adds into its own values of the block's row of
// weight-gradient partials in gw. The sums take the order of
// rms_norm_fused_small and rms_norm_fused_vjp_small at the same block size.
template <typename T, bool HAS_GH, bool HAS_W, bool HAS_OFFSET, int N_READS>
__global__ void __launch_bounds__(RMS_FUSED_LOOPED_BLOCK)
    rms_norm_fused_vjp_looped(FusedVjpParams<T> args) {
  auto [h, w, g, gh, gx, gw] = args.arrays;
  auto block = cg::this_thread_block();
  using BlockReduceF2 = BlockBroadcastReduce<float2, RMS_FUSED_LOOPED_BLOCK>;
  // Two, as in rms_norm_fused_vjp_small.
  __shared__ typename BlockReduceF2::TempStorage temp[2];

  uint32_t n_vectors = cuda::ceil_div(args.axis_size, N_READS);
  uint32_t first_row = blockIdx.x * args.rows_per_block;
  uint32_t n_block_rows = min(args.rows_per_block, args.n_rows - first_row);
  if constexpr (HAS_W) {
    gw += static_cast<size_t>(blockIdx.x) * args.axis_size;
  }
  for (uint32_t k = 0; k < n_block_rows; k++) {
    size_t row = static_cast<size_t>(first_row + k) * args.axis_size;
    float2 sums = {0, 0};
    for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
      auto hn = load_vector<N_READS>(h + row, index, args.axis_size, T(0));
      auto gn = load_vector<N_READS>(g + row, index, args.axis_size, T(0));
      AlignedVector<T, N_READS> wn;
      if constexpr (HAS_W) {
        wn =
            load_vector<N_READS>(w, index, args.axis_size, args.w_stride, T(0));
      }
      add_vjp_sums<HAS_W, HAS_OFFSET>(sums, hn, gn, wn, args.weight_offset);
    }
    sums = BlockReduceF2{block, temp[k % 2]}.Reduce(sums, plus_f2, {});
    float inv_rms = rsqrt(sums.x / args.axis_size + args.eps);
    float mean_wgh = sums.y / args.axis_size;
    float inv_rms3 = inv_rms * inv_rms * inv_rms;

    for (uint32_t index = threadIdx.x; index < n_vectors; index += blockDim.x) {
      auto hn = load_vector<N_READS>(h + row, index, args.axis_size, T(0));
      auto gn = load_vector<N_READS>(g + row, index, args.axis_size, T(0));
      AlignedVector<T, N_READS> wn;
      AlignedVector<T, N_READS> ghn;
      AlignedVector<float, N_READS> gwn;
      if constexpr (HAS_W) {
        wn =
            load_vector<N_READS>(w, index, args.axis_size, args.w_stride, T(0));
        if (k == 0) {
          set_zero(gwn);
        } else {
          gwn = load_vector<N_READS>(gw, index, args.axis_size, 0.0f);
        }
      }
      if constexpr (HAS_GH) {
        ghn = load_vector<N_READS>(gh + row, index, args.axis_size, T(0));
      }
      store_vector<N_READS>(
          gx + row,
          index,
          vjp_vector<HAS_W, HAS_GH, HAS_OFFSET>(
              hn,
              gn,
              wn,
              ghn,
              args.weight_offset,
              inv_rms,
              mean_wgh,
              inv_rms3,
              gwn),
          args.axis_size);
      if constexpr (HAS_W) {
        store_vector<N_READS>(gw, index, gwn, args.axis_size);
      }
    }
  }
}

} // namespace cu

namespace fast {

namespace {

// The block size depends on the row length alone, so that every row of a
// batch is reduced the same way. Short rows get one warp to four, one vector
// each. Longer rows get more threads, up to RMS_FUSED_SMALL_MAX_BLOCK, before
// more than two vectors a thread: on an H100 the residual form of 8192
// bfloat16 values ran at 91% of copy bandwidth with 128 threads of 8 vectors
// and at 100% with 512 threads of 2. Up to RMS_FUSED_MAX_CHUNKS vectors a
// thread stay in registers; longer rows take the looped kernel.
struct FusedLaunch {
  int block_dim;
  int n_chunks; // 0: the looped kernel
};

FusedLaunch fused_launch(uint32_t axis_size, int n_reads) {
  int64_t n_vectors = (axis_size + n_reads - 1) / n_reads;
  int block_dim = WARP_SIZE;
  while (block_dim < 128 && block_dim < n_vectors) {
    block_dim *= 2;
  }
  while (block_dim < cu::RMS_FUSED_SMALL_MAX_BLOCK &&
         n_vectors > 2 * block_dim) {
    block_dim *= 2;
  }
  int64_t n_chunks = (n_vectors + block_dim - 1) / block_dim;
  if (n_chunks > cu::RMS_FUSED_MAX_CHUNKS) {
    return {cu::RMS_FUSED_LOOPED_BLOCK, 0};
  }
  return {block_dim, static_cast<int>(n_chunks)};
}

// Upstream's dispatch_chunks is private to rms_norm.cu.
template <typename F>
void dispatch_fused_chunks(int n_chunks, F&& f) {
  switch (n_chunks) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 7:
      return f(std::integral_constant<int, 7>{});
    default:
      return f(std::integral_constant<int, 8>{});
  }
}

// The block size a kernel that keeps its rows in registers is compiled for:
// blocks of one warp, the single-chunk launches of short rows, skip the
// exchange of sums between warps; others are compiled for the largest block.
template <int N_CHUNKS, typename F>
void dispatch_one_warp(const FusedLaunch& launch, F&& f) {
  if constexpr (N_CHUNKS == 1) {
    if (launch.block_dim == WARP_SIZE) {
      return f(std::integral_constant<int, WARP_SIZE>{});
    }
  }
  f(std::integral_constant<int, cu::RMS_FUSED_SMALL_MAX_BLOCK>{});
}

// The kernels index rows as row * axis_size.
array ensure_row_contiguous(
    const array& a,
    cu::CommandEncoder& encoder,
    const Stream& s) {
  if (a.flags().row_contiguous) {
    return a;
  }
  array copy = contiguous_copy_gpu(a, s);
  encoder.add_temporary(copy);
  return copy;
}

// The kernels are instantiated for the forms RMSNormFused has, with the
// offset and the clip as the form asks; the clip only where T is float16,
// the one type it changes.
template <bool CAN_CLIP, typename F>
void dispatch_fused_form(
    bool has_residual,
    bool norm_branch,
    bool norm_output,
    bool has_offset,
    bool clip,
    F&& f) {
  dispatch_bool(has_offset, [&](auto offset) {
    auto with_clip = [&](auto residual, auto branch, auto output) {
      auto form = [&](auto clip_constant) {
        f(cu::FusedForm<
            residual.value,
            branch.value,
            output.value,
            offset.value,
            clip_constant.value>{});
      };
      if constexpr (CAN_CLIP && residual.value) {
        dispatch_bool(clip, form);
      } else {
        form(std::false_type{});
      }
    };
    if (!has_residual) {
      with_clip(std::false_type{}, std::false_type{}, std::true_type{});
    } else if (!norm_branch) {
      with_clip(std::true_type{}, std::false_type{}, std::true_type{});
    } else if (!norm_output) {
      with_clip(std::true_type{}, std::true_type{}, std::false_type{});
    } else {
      with_clip(std::true_type{}, std::true_type{}, std::true_type{});
    }
  });
}

} // namespace

bool RMSNormFused::use_fallback(Stream s) {
  return false;
}

void RMSNormFused::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  nvtx3::scoped_range r("RMSNormFused::eval_gpu");
  auto& s = stream();
  auto& encoder = cu::get_command_encoder(s);

  bool donate_x = !has_residual_ && inputs[0].flags().row_contiguous &&
      inputs[0].is_donatable();
  const array x = ensure_row_contiguous(inputs[0], encoder, s);
  const array res =
      has_residual_ ? ensure_row_contiguous(inputs[1], encoder, s) : x;
  const array& w_branch = inputs[has_residual_ + 1];
  const array& w = inputs.back();
  if (donate_x) {
    outputs[0].copy_shared_buffer(x);
  } else {
    for (auto& out : outputs) {
      out.set_data(cu::malloc_async(out.nbytes(), encoder));
    }
  }
  // Without a residual h is y, and without an output norm y is h: the kernel
  // writes only the one that exists.
  array& out = outputs[0];
  array& h = outputs.back();

  uint32_t axis_size = x.shape().back();
  if (axis_size == 0 || out.size() == 0) {
    return;
  }
  uint32_t n_rows = out.size() / axis_size;
  auto weight_stride = [](const array& w) -> int64_t {
    return w.ndim() == 1 ? w.strides()[0] : 0;
  };
  int64_t w_stride = weight_stride(w);
  int64_t w_branch_stride = weight_stride(w_branch);

  encoder.set_input_array(x);
  if (has_residual_) {
    encoder.set_input_array(res);
  }
  if (norm_branch_) {
    encoder.set_input_array(w_branch);
  }
  encoder.set_input_array(w);
  for (auto& o : outputs) {
    encoder.set_output_array(o);
  }
  dispatch_float_types(out.dtype(), "rmsnorm_fused", [&](auto type_tag) {
    using DataType = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    constexpr int N_READS = 16 / sizeof(DataType);
    auto launch = fused_launch(axis_size, N_READS);
    auto is_aligned = [](const array& a) {
      return cu::is_aligned<N_READS>(gpu_ptr<DataType>(a));
    };
    // An unread weight (the branch weight of the plain and pre-norm forms,
    // the output weight of the post-norm form) is the other one.
    bool aligned = axis_size % N_READS == 0 && w_stride == 1 &&
        (!norm_branch_ || w_branch_stride == 1) && is_aligned(x) &&
        is_aligned(res) && is_aligned(w) && is_aligned(w_branch) &&
        is_aligned(out) && is_aligned(h);
    cu::FusedParams<DataType> params{
        gpu_ptr<DataType>(x),
        gpu_ptr<DataType>(res),
        gpu_ptr<DataType>(w),
        gpu_ptr<DataType>(w_branch),
        gpu_ptr<DataType>(out),
        gpu_ptr<DataType>(h),
        w_stride,
        w_branch_stride,
        eps_,
        weight_offset_,
        axis_size};
    auto add_node = [&](auto kernel) {
      encoder.add_kernel_node(kernel, n_rows, launch.block_dim, params);
    };
    constexpr bool can_clip = std::is_same_v<DataType, __half>;
    dispatch_fused_form<can_clip>(
        has_residual_,
        norm_branch_,
        norm_output_,
        weight_offset_ != 0,
        clip_residual_,
        [&](auto form) {
          using Form = decltype(form);
          if (launch.n_chunks == 0) {
            add_node(cu::rms_norm_fused_looped<DataType, Form, N_READS>);
            return;
          }
          dispatch_fused_chunks(launch.n_chunks, [&](auto n_chunks) {
            dispatch_bool(aligned, [&](auto aligned_constant) {
              constexpr int N_CHUNKS = n_chunks.value;
              constexpr bool ALIGNED = aligned_constant.value;
              dispatch_one_warp<N_CHUNKS>(launch, [&](auto block_dim) {
                add_node(
                    cu::rms_norm_fused_small<
                        DataType,
                        Form,
                        N_CHUNKS,
                        ALIGNED,
                        N_READS,
                        block_dim.value>);
              });
            });
          });
        });
  });
}

void RMSNormFusedVJP::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  nvtx3::scoped_range r("RMSNormFusedVJP::eval_gpu");
  auto& s = stream();
  auto& encoder = cu::get_command_encoder(s);
  array& gx = outputs[0];
  array& gw = outputs[1];

  // The kernels index rows as row * axis_size. As in RMSNormVJP, gx takes the
  // buffer of an input that nothing else holds, or of a copy made here: each
  // value of gx is written by the thread that read its h, g and gh.
  bool gx_has_buffer = false;
  auto check_input = [&](const array& in) {
    bool copied = !in.flags().row_contiguous;
    bool donate = !gx_has_buffer && in.dtype() == gx.dtype() &&
        (copied || in.is_donatable());
    array a = copied ? contiguous_copy_gpu(in, s) : in;
    if (donate) {
      gx.copy_shared_buffer(a);
      gx_has_buffer = true;
    } else if (copied) {
      encoder.add_temporary(a);
    }
    return a;
  };
  const array h = check_input(inputs[0]);
  const array& w = inputs[1];
  const array g = check_input(inputs[2]);
  const array gh = has_residual_ ? check_input(inputs[3]) : g;
  if (!gx_has_buffer) {
    gx.set_data(cu::malloc_async(gx.nbytes(), encoder));
  }

  // Without a weight, w is a scalar and gw is zero.
  bool has_w = w.ndim() != 0;
  uint32_t axis_size = h.shape().back();
  uint32_t n_rows = axis_size == 0 ? 0 : h.size() / axis_size;
  if (n_rows == 0 || !has_w) {
    fill_gpu(array(0, gw.dtype()), gw, s);
  }
  if (n_rows == 0) {
    return;
  }
  int64_t w_stride = has_w ? w.strides()[0] : 0;

  encoder.set_input_array(h);
  encoder.set_input_array(w);
  encoder.set_input_array(g);
  if (has_residual_) {
    encoder.set_input_array(gh);
  }
  encoder.set_output_array(gx);
  dispatch_float_types(gx.dtype(), "rmsnorm_fused_vjp", [&](auto type_tag) {
    using DataType = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    constexpr int N_READS = 16 / sizeof(DataType);

    // The forward's block size, so that the sum of squares is the forward's.
    // Each block takes rows_per_block rows, a number that depends on the shape
    // only, and writes one float32 row of weight-gradient partials: the
    // weight gradient is the same from run to run.
    auto launch = fused_launch(axis_size, N_READS);
    uint32_t max_blocks =
        std::max(cu::RMS_FUSED_VJP_THREADS / launch.block_dim, 1);
    uint32_t rows_per_block = cuda::ceil_div(n_rows, max_blocks);
    uint32_t n_blocks = cuda::ceil_div(n_rows, rows_per_block);
    array gw_temp(
        {static_cast<int>(n_blocks), h.shape().back()}, float32, nullptr, {});
    if (has_w) {
      gw_temp.set_data(cu::malloc_async(gw_temp.nbytes(), encoder));
      encoder.add_temporary(gw_temp);
      encoder.set_output_array(gw_temp);
    }

    auto is_aligned = [](const array& a) {
      return cu::is_aligned<N_READS>(gpu_ptr<DataType>(a));
    };
    bool small = has_w && launch.n_chunks > 0 &&
        launch.n_chunks <= cu::RMS_FUSED_VJP_MAX_CHUNKS &&
        axis_size % N_READS == 0 && w_stride == 1 && is_aligned(h) &&
        is_aligned(w) && is_aligned(g) && is_aligned(gh) && is_aligned(gx);
    cu::FusedVjpParams<DataType> params{
        {gpu_ptr<DataType>(h),
         gpu_ptr<DataType>(w),
         gpu_ptr<DataType>(g),
         gpu_ptr<DataType>(gh),
         gpu_ptr<DataType>(gx),
         has_w ? gpu_ptr<float>(gw_temp) : nullptr},
        w_stride,
        eps_,
        weight_offset_,
        axis_size,
        n_rows,
        rows_per_block};
    auto add_node = [&](auto kernel) {
      encoder.add_kernel_node(kernel, n_blocks, launch.block_dim, params);
    };
    dispatch_bool(has_residual_, [&](auto has_gh) {
      dispatch_bool(weight_offset_ != 0, [&](auto has_offset) {
        constexpr bool HAS_GH = has_gh.value;
        constexpr bool HAS_OFFSET = has_offset.value;
        if (!small) {
          dispatch_bool(has_w, [&](auto has_w_constant) {
            add_node(
                cu::rms_norm_fused_vjp_looped<
                    DataType,
                    HAS_GH,
                    has_w_constant.value,
                    HAS_OFFSET,
                    N_READS>);
          });
          return;
        }
        dispatch_fused_chunks(launch.n_chunks, [&](auto n_chunks) {
          constexpr int N_CHUNKS = n_chunks.value;
          if constexpr (N_CHUNKS <= cu::RMS_FUSED_VJP_MAX_CHUNKS) {
            dispatch_one_warp<N_CHUNKS>(launch, [&](auto block_dim) {
              add_node(
                  cu::rms_norm_fused_vjp_small<
                      DataType,
                      HAS_GH,
                      HAS_OFFSET,
                      N_CHUNKS,
                      N_READS,
                      block_dim.value>);
            });
          }
        });
      });
    });

    if (!has_w) {
      return;
    }
    ReductionPlan plan(
        ReductionOpType::ContiguousStridedReduce,
        {static_cast<int>(n_blocks)},
        {static_cast<int64_t>(axis_size)});
    if (gw.dtype() == float32) {
      col_reduce(encoder, gw_temp, gw, Reduce::ReduceType::Sum, {0}, plan);
    } else {
      array gw_f32(gw.shape(), float32, nullptr, {});
      col_reduce(encoder, gw_temp, gw_f32, Reduce::ReduceType::Sum, {0}, plan);
      encoder.add_temporary(gw_f32);
      copy_gpu(gw_f32, gw, CopyType::General, s);
    }
  });
}

} // namespace fast

} // namespace mlx::core
