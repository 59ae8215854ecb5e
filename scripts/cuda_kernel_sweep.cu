// Times the fused forward kernel of mlx/backend/cuda/rms_norm_fused.cu at
// launch geometries other than the one eval_gpu picks, on raw device buffers
// with CUDA events, next to a device-to-device copy of the same bytes. It
// exists to choose the block-size policy on a real card; see
// scripts/cuda_on_device.sh, which builds it against the applied tree.
//
// Usage: cuda_kernel_sweep [ROWSxHIDDEN ...]

#include "mlx/backend/cuda/rms_norm_fused.cu"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

// eval_gpu, compiled in with the kernels, calls into libmlx's CUDA backend,
// which keeps those functions hidden. The sweep never runs eval_gpu; these
// stand in for them so that it links.
namespace mlx::core {

[[noreturn]] void not_in_the_sweep() {
  std::fprintf(stderr, "cuda_kernel_sweep: eval_gpu is not run here\n");
  std::abort();
}

namespace cu {

CommandEncoder& get_command_encoder(Stream) {
  not_in_the_sweep();
}
Buffer malloc_async(size_t, CommandEncoder&) {
  not_in_the_sweep();
}
void CommandEncoder::set_input_array(const array&) {
  not_in_the_sweep();
}
void CommandEncoder::set_output_array(const array&) {
  not_in_the_sweep();
}
void CommandEncoder::add_kernel_node_raw(
    void*,
    dim3,
    dim3,
    dim3,
    uint32_t,
    void**) {
  not_in_the_sweep();
}

} // namespace cu

array contiguous_copy_gpu(const array&, const Stream&) {
  not_in_the_sweep();
}
void copy_gpu(const array&, array&, CopyType, const Stream&) {
  not_in_the_sweep();
}
void fill_gpu(const array&, array&, const Stream&) {
  not_in_the_sweep();
}
void col_reduce(
    cu::CommandEncoder&,
    const array&,
    array&,
    Reduce::ReduceType,
    const std::vector<int>&,
    const ReductionPlan&) {
  not_in_the_sweep();
}

} // namespace mlx::core

namespace {

using namespace mlx::core;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}

template <typename F>
float median_us(F&& launch, int repeats = 15, int batch = 20) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  for (int i = 0; i < 3; i++) {
    launch();
  }
  std::vector<float> times;
  for (int i = 0; i < repeats; i++) {
    cudaEventRecord(start);
    for (int j = 0; j < batch; j++) {
      launch();
    }
    cudaEventRecord(stop);
    check(cudaEventSynchronize(stop), "kernel");
    float ms;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms * 1e3f / batch);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

template <typename T, bool RESIDUAL, int N_CHUNKS>
void run(
    const char* dtype,
    uint32_t rows,
    uint32_t hidden,
    int block_dim,
    T* x,
    T* r,
    T* w,
    T* out,
    T* h,
    float copy_us) {
  constexpr int N_READS = 16 / sizeof(T);
  auto kernel = cu::rms_norm_fused_small<T, RESIDUAL, N_CHUNKS, true, N_READS>;
  float us = median_us([&]() {
    kernel<<<rows, block_dim>>>(x, r, w, out, h, 1e-6f, hidden, 1);
  });
  double bytes = (RESIDUAL ? 4.0 : 2.0) * rows * hidden * sizeof(T);
  double copy_gbps = 2.0 * rows * hidden * sizeof(T) / copy_us / 1e3;
  double gbps = bytes / us / 1e3;
  std::printf(
      "| %ux%u | %s | %s | %d | %d | %.1f | %.0f | %.0f%% |\n",
      rows,
      hidden,
      dtype,
      RESIDUAL ? "residual" : "plain",
      block_dim,
      N_CHUNKS,
      us,
      gbps,
      100.0 * gbps / copy_gbps);
}

template <typename T>
void sweep(const char* dtype, uint32_t rows, uint32_t hidden) {
  constexpr int N_READS = 16 / sizeof(T);
  size_t n = size_t(rows) * hidden;
  T *x, *r, *w, *out, *h;
  check(cudaMalloc(&x, n * sizeof(T)), "malloc");
  check(cudaMalloc(&r, n * sizeof(T)), "malloc");
  check(cudaMalloc(&out, n * sizeof(T)), "malloc");
  check(cudaMalloc(&h, n * sizeof(T)), "malloc");
  check(cudaMalloc(&w, hidden * sizeof(T)), "malloc");
  cudaMemset(x, 0, n * sizeof(T));
  cudaMemset(r, 0, n * sizeof(T));
  cudaMemset(w, 0, hidden * sizeof(T));
  float copy_us = median_us(
      [&]() { cudaMemcpyAsync(out, x, n * sizeof(T), cudaMemcpyDefault); });
  std::printf(
      "| %ux%u | %s | copy | - | - | %.1f | %.0f | 100%% |\n",
      rows,
      hidden,
      dtype,
      copy_us,
      2.0 * n * sizeof(T) / copy_us / 1e3);
  int n_vectors = hidden / N_READS;
  for (int block_dim = 32; block_dim <= cu::RMS_FUSED_SMALL_MAX_BLOCK;
       block_dim *= 2) {
    int n_chunks = n_vectors / block_dim;
    if (n_vectors % block_dim != 0 || n_chunks < 1 ||
        n_chunks > cu::RMS_FUSED_MAX_CHUNKS) {
      continue;
    }
    fast::dispatch_fused_chunks(n_chunks, [&](auto chunks) {
      run<T, false, chunks.value>(
          dtype, rows, hidden, block_dim, x, r, w, out, h, copy_us);
      run<T, true, chunks.value>(
          dtype, rows, hidden, block_dim, x, r, w, out, h, copy_us);
    });
  }
  auto chosen = fast::fused_launch(hidden, N_READS);
  std::printf(
      "eval_gpu picks block %d, %d chunks for %s hidden %u\n",
      chosen.block_dim,
      chosen.n_chunks,
      dtype,
      hidden);
  cudaFree(x);
  cudaFree(r);
  cudaFree(w);
  cudaFree(out);
  cudaFree(h);
}

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string> shapes(argv + 1, argv + argc);
  if (shapes.empty()) {
    shapes = {"16384x8192", "32768x4096"};
  }
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, 0), "device");
  std::printf("Card: %s\n\n", prop.name);
  std::printf(
      "| shape | dtype | form | block | chunks | time (us) | GB/s | "
      "share of copy |\n"
      "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  for (auto& shape : shapes) {
    auto cross = shape.find('x');
    uint32_t rows = std::stoul(shape.substr(0, cross));
    uint32_t hidden = std::stoul(shape.substr(cross + 1));
    sweep<__nv_bfloat16>("bfloat16", rows, hidden);
    sweep<float>("float32", rows, hidden);
  }
  return 0;
}
