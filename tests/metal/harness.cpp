// Runs the mlxr Metal kernels on the CPU under the shim in shim/metal_shim.h.
//
//   harness run FAMILY DTYPE ROWS AXIS RESIDUAL HAS_W ORDER DIR
//               [GROUPS [MAX [LOOPED_MAX]]]
//     FAMILY fwd|vjp, DTYPE float32|float16|bfloat16, ORDER forward|reverse|
//     simdgroup0_last|simdgroup_eager. Reads x, r, w (fwd) or h, w, dy, dh_in
//     (vjp) as raw arrays from DIR and writes out, h (fwd) or dh, and with a
//     weight the float32 partials dw_partials and their sum dw (vjp) there.
//     GROUPS replaces the backward's target number of row groups
//     (RMS_FUSED_VJP_GROUPS), so that short tests get several rows per group;
//     0 keeps it. MAX is the pipelines' maxTotalThreadsPerThreadgroup (1024
//     unless given), from which eval_gpu picks the threadgroup sizes;
//     LOOPED_MAX, if given, is the looped kernels' own.
//   harness geometry AXIS ROWS MAX_THREADS [LOOPED_MAX]
//     Prints the launches that eval_gpu would use, as key=value pairs.
//
// The kernel source comes in through MLXR_KERNEL_SOURCE and the launch
// geometry from the overlay's rms_norm_fused.h, the same function eval_gpu
// calls.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <type_traits>

#include "mlx/backend/metal/rms_norm_fused.h"
// After every standard header: the shim defines Metal's address-space words.
#include MLXR_KERNEL_SOURCE

namespace {

using mlxr_harness::Group;
using mlxr_harness::HarnessError;
using mlxr_harness::Order;

// Poison on each side of every buffer: reads beyond a buffer see huge values
// (0x7F7F7F7F is 3.4e38 in float32, NaN in float16), writes beyond it are
// found after the launch; the pattern is not one that arithmetic on NaN
// reproduces. Under AddressSanitizer the buffers are exact instead, so that
// it reports any access beyond them.
constexpr unsigned char POISON = 0x7F;
#ifdef MLXR_ASAN
constexpr size_t PAD = 0;
#else
constexpr size_t PAD = 256;
#endif

// A buffer in device memory, whose writes the shim tracks during a launch.
template <typename T>
struct Buffer {
  size_t size;
  unsigned char* bytes;
  size_t n;

  explicit Buffer(size_t n_)
      : size((n_ + 2 * PAD) * sizeof(T)),
        bytes(mlxr_harness::DeviceMemory::get().allocate(size)),
        n(n_) {
    std::memset(bytes, POISON, size);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    mlxr_harness::DeviceMemory::get().release(bytes);
  }

  T* data() {
    return reinterpret_cast<T*>(bytes) + PAD;
  }

  void load(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f.read(reinterpret_cast<char*>(data()), n * sizeof(T))) {
      throw HarnessError("cannot read " + path);
    }
  }

  void save(const std::string& path) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(data()), n * sizeof(T));
  }

  void check_guards(const std::string& name) const {
    for (size_t i = 0; i < PAD * sizeof(T); i++) {
      if (bytes[i] != POISON || bytes[size - 1 - i] != POISON) {
        throw HarnessError("out-of-bounds write to " + name);
      }
    }
  }
};

Order parse_order(const std::string& s) {
  if (s == "forward") {
    return Order::forward;
  }
  if (s == "reverse") {
    return Order::reverse;
  }
  if (s == "simdgroup0_last") {
    return Order::simdgroup0_last;
  }
  if (s == "simdgroup_eager") {
    return Order::simdgroup_eager;
  }
  throw HarnessError("unknown order " + s);
}

template <typename T>
std::string type_name() {
  if constexpr (std::is_same_v<T, float>) {
    return "float32";
  } else if constexpr (std::is_same_v<T, half>) {
    return "float16";
  } else {
    return "bfloat16";
  }
}

void* find_kernel(const std::string& name) {
  auto it = mlxr_harness::kernels().find(name);
  if (it == mlxr_harness::kernels().end()) {
    throw HarnessError("no kernel instantiated as " + name);
  }
  return it->second;
}

struct Launch {
  mlx::core::fast::RMSNormFusedDispatch dispatch;
  mlx::core::fast::RMSNormFusedVJPGroups groups;  // vjp only
  std::string name;
  Order order;
  int rows;
  uint axis;
  size_t max_threads;
};

// The pipelines eval_gpu asks for their maxTotalThreadsPerThreadgroup: the
// looped kernels' is looped_max, every other's max. Remembers the variant it
// was last asked about, which eval_gpu launches.
struct Pipelines {
  size_t max, looped_max;
  bool last_looped = false;

  mlx::core::fast::RMSNormFusedDispatch dispatch(uint32_t axis, size_t n_groups) {
    auto d = mlx::core::fast::rms_norm_fused_dispatch(axis, n_groups, [this](bool looped) {
      last_looped = looped;
      return looped ? looped_max : max;
    });
    if (d.looped != last_looped || d.threadgroup_size > (d.looped ? looped_max : max)) {
      throw HarnessError("the launch is not the last pipeline asked about, or exceeds its limit");
    }
    return d;
  }
};

// Each threadgroup runs to completion before the next starts, in increasing
// order (decreasing under the reverse schedule), which are schedules Metal
// allows; what one writes to device memory stays hidden from the others until
// the launch ends, so a group that reads another's writes fails in one order
// or the other.
template <typename F>
void for_each_thread(size_t grid_size, size_t threadgroup_size, Order order, F&& call) {
  if (grid_size % threadgroup_size != 0) {
    throw HarnessError("grid is not a whole number of threadgroups");
  }
  mlxr_harness::DeviceLaunch launch;
  size_t n_groups = grid_size / threadgroup_size;
  for (size_t i = 0; i < n_groups; i++) {
    size_t gid = order == Order::reverse ? n_groups - 1 - i : i;
    Group group(static_cast<int>(threadgroup_size), order);
    group.run([&](int lid) { call(uint(gid), uint(lid)); });
  }
}

template <typename F>
void for_each_thread(const Launch& l, F&& call) {
  for_each_thread(l.dispatch.grid_size, l.dispatch.threadgroup_size, l.order, call);
}

// The form's function constants and offset, from MLXR_FORM ("norm_branch
// norm_output weight_offset clip_residual"; the pre-norm and plain forms,
// "0 1 0 0", when unset).
struct Form {
  bool norm_branch = false;
  bool norm_output = true;
  float weight_offset = 0.0f;
  bool clip_residual = false;

  static Form from_env() {
    Form f;
    if (const char* text = std::getenv("MLXR_FORM")) {
      int branch, output, clip;
      if (std::sscanf(text, "%d %d %f %d", &branch, &output, &f.weight_offset, &clip) != 4) {
        throw HarnessError(std::string("bad MLXR_FORM: ") + text);
      }
      f.norm_branch = branch;
      f.norm_output = output;
      f.clip_residual = clip;
    }
    return f;
  }
};

template <typename T>
void run_forward(const Launch& l, bool residual, bool has_weight, const std::string& dir) {
  size_t n = size_t(l.rows) * l.axis;
  Form form = Form::from_env();
  Buffer<T> x(n), r(n), w(has_weight ? l.axis : 1), wb(has_weight ? l.axis : 1), out(n), h(n);
  x.load(dir + "/x.bin");
  if (residual) {
    r.load(dir + "/r.bin");
  }
  if (has_weight) {
    w.load(dir + "/w.bin");
    wb.load(dir + "/wb.bin");
  } else {
    w.data()[0] = T(1.0f);
    wb.data()[0] = T(1.0f);
  }
  float eps = 1e-5f;
  uint axis = l.axis;
  uint w_stride = has_weight ? 1 : 0;
  uint lsize = l.dispatch.threadgroup_size;
  // As eval_gpu binds them: without a residual, r is x and h is out; without
  // an output norm, out is h. The branch weight is read only by the forms that
  // normalize x first.
  T* r_ptr = residual ? r.data() : x.data();
  T* h_ptr = residual ? h.data() : out.data();
  T* out_ptr = form.norm_output ? out.data() : h_ptr;
  norm_branch = form.norm_branch;
  norm_output = form.norm_output;
  has_offset = form.weight_offset != 0.0f;
  clip_residual = form.clip_residual;
  float weight_offset = form.weight_offset;
  void* kernel = find_kernel(l.name);
  for_each_thread(l, [&](uint gid, uint lid) {
    if (l.dispatch.looped) {
      using Fn = void (*)(const T*, const T*, const T*, T*, T*, float&, uint&, uint&,
                          const T*, uint&, float&, uint, uint, uint, uint, uint);
      reinterpret_cast<Fn>(kernel)(x.data(), r_ptr, w.data(), out_ptr, h_ptr, eps, axis,
                                   w_stride, wb.data(), w_stride, weight_offset, gid, lid,
                                   lsize, lid % 32, lid / 32);
    } else {
      using Fn = void (*)(const T*, const T*, const T*, T*, T*, float&, uint&, uint&,
                          const T*, uint&, float&, uint, uint, uint, uint);
      reinterpret_cast<Fn>(kernel)(x.data(), r_ptr, w.data(), out_ptr, h_ptr, eps, axis,
                                   w_stride, wb.data(), w_stride, weight_offset, gid, lid,
                                   lid % 32, lid / 32);
    }
  });
  out.check_guards("out");
  h.check_guards("h");
  x.check_guards("x");
  r.check_guards("r");
  w.check_guards("w");
  wb.check_guards("wb");
  if (form.norm_output) {
    out.save(dir + "/out.bin");
  }
  if (residual) {
    h.save(dir + "/h.bin");
  }
}

template <typename T>
void run_vjp(const Launch& l, bool residual, bool has_weight, const std::string& dir) {
  size_t n = size_t(l.rows) * l.axis;
  // The partials are exactly as large as eval_gpu allocates them.
  size_t n_partials = l.groups.partials_bytes(l.axis) / sizeof(float);
  Buffer<T> h(n), w(has_weight ? l.axis : 1), dy(n), dh_in(n), dh(n), dw(has_weight ? l.axis : 1);
  Buffer<float> dw_partials(has_weight ? n_partials : 1);
  h.load(dir + "/h.bin");
  dy.load(dir + "/dy.bin");
  if (residual) {
    dh_in.load(dir + "/dh_in.bin");
  }
  if (has_weight) {
    w.load(dir + "/w.bin");
  } else {
    w.data()[0] = T(1.0f);
  }
  has_w = has_weight;
  float eps = 1e-5f;
  uint axis = l.axis;
  uint w_stride = has_weight ? 1 : 0;
  uint n_rows = l.rows;
  uint rows_per_group = l.groups.rows_per_group;
  uint n_groups = l.groups.n_groups;
  uint lsize = l.dispatch.threadgroup_size;
  const T* dh_in_ptr = residual ? dh_in.data() : dy.data();
  // The backward takes only the offset of the form.
  float weight_offset = Form::from_env().weight_offset;
  has_offset = weight_offset != 0.0f;
  void* kernel = find_kernel(l.name);
  for_each_thread(l, [&](uint gid, uint lid) {
    if (l.dispatch.looped) {
      using Fn = void (*)(const T*, const T*, const T*, const T*, T*, float*, float&,
                          uint&, uint&, uint&, uint&, float&, uint, uint, uint, uint, uint);
      reinterpret_cast<Fn>(kernel)(h.data(), w.data(), dy.data(), dh_in_ptr, dh.data(),
                                   dw_partials.data(), eps, axis, w_stride, n_rows,
                                   rows_per_group, weight_offset, gid, lid, lsize, lid % 32,
                                   lid / 32);
    } else {
      using Fn = void (*)(const T*, const T*, const T*, const T*, T*, float*, float&,
                          uint&, uint&, uint&, uint&, float&, uint, uint, uint, uint);
      reinterpret_cast<Fn>(kernel)(h.data(), w.data(), dy.data(), dh_in_ptr, dh.data(),
                                   dw_partials.data(), eps, axis, w_stride, n_rows,
                                   rows_per_group, weight_offset, gid, lid, lid % 32,
                                   lid / 32);
    }
  });
  dh.check_guards("dh");
  dw_partials.check_guards("dw_partials");
  if (has_weight) {
    // The second launch, as eval_gpu makes it.
    auto combine = mlx::core::fast::rms_norm_fused_combine_dispatch(axis, l.max_threads);
    void* combine_kernel = find_kernel(combine.kernel_name(type_name<T>()));
    using Fn = void (*)(const float*, T*, uint&, uint&, uint);
    for_each_thread(combine.grid_size, combine.threadgroup_size, l.order, [&](uint gid, uint lid) {
      reinterpret_cast<Fn>(combine_kernel)(dw_partials.data(), dw.data(), axis, n_groups,
                                           uint(gid * combine.threadgroup_size + lid));
    });
    dw_partials.check_guards("dw_partials");
    dw.check_guards("dw");
  }
  h.check_guards("h");
  w.check_guards("w");
  dy.check_guards("dy");
  dh_in.check_guards("dh_in");
  dh.save(dir + "/dh.bin");
  if (has_weight) {
    dw_partials.save(dir + "/dw_partials.bin");
    dw.save(dir + "/dw.bin");
  }
}

template <typename T>
void run(const std::string& family, const Launch& l, bool residual, bool has_w,
         const std::string& dir) {
  if (family == "fwd") {
    run_forward<T>(l, residual, has_w, dir);
  } else {
    run_vjp<T>(l, residual, has_w, dir);
  }
}

int main_run(int argc, char** argv) {
  std::string family = argv[2], dtype = argv[3];
  int rows = std::stoi(argv[4]);
  uint axis = std::stoul(argv[5]);
  bool residual = std::stoi(argv[6]), has_weight = std::stoi(argv[7]);
  Launch l;
  l.order = parse_order(argv[8]);
  l.rows = rows;
  l.axis = axis;
  size_t target = argc >= 11 ? std::stoul(argv[10]) : 0;
  l.max_threads = argc >= 12 ? std::stoul(argv[11]) : mlxr_harness::MAX_THREADS_PER_GROUP;
  Pipelines pipelines{l.max_threads, argc >= 13 ? std::stoul(argv[12]) : l.max_threads};
  if (family == "vjp") {
    target = target ? target : mlx::core::fast::RMS_FUSED_VJP_GROUPS;
    l.groups = mlx::core::fast::rms_norm_fused_vjp_groups(rows, target);
  } else {
    l.groups = {1, uint32_t(rows)};
  }
  l.dispatch = pipelines.dispatch(axis, l.groups.n_groups);
  l.name = (family == "vjp" ? "vjp_" : "") + l.dispatch.kernel_name(residual, dtype);
  std::string dir = argv[9];
  if (dtype == "float32") {
    run<float>(family, l, residual, has_weight, dir);
  } else if (dtype == "float16") {
    run<half>(family, l, residual, has_weight, dir);
  } else if (dtype == "bfloat16") {
    run<bfloat16_t>(family, l, residual, has_weight, dir);
  } else {
    throw HarnessError("unknown dtype " + dtype);
  }
  std::cout << "ran=" << l.name << " threadgroup=" << l.dispatch.threadgroup_size
            << " groups=" << l.dispatch.grid_size / l.dispatch.threadgroup_size
            << " rows_per_group=" << l.groups.rows_per_group << "\n";
  return 0;
}

int main_geometry(int argc, char** argv) {
  namespace fast = mlx::core::fast;
  uint32_t axis = std::stoul(argv[2]);
  size_t rows = std::stoul(argv[3]), max_threads = std::stoul(argv[4]);
  Pipelines pipelines{max_threads, argc >= 6 ? std::stoul(argv[5]) : max_threads};
  auto d = pipelines.dispatch(axis, rows);
  auto g = fast::rms_norm_fused_vjp_groups(rows);
  auto v = pipelines.dispatch(axis, g.n_groups);
  auto c = fast::rms_norm_fused_combine_dispatch(axis, max_threads);
  std::cout << "looped=" << d.looped << " threadgroup_size=" << d.threadgroup_size
            << " grid_size=" << d.grid_size << " kernel=" << d.kernel_name(true, "float32")
            << " vjp_rows_per_group=" << g.rows_per_group << " vjp_groups=" << g.n_groups
            << " vjp_threadgroup_size=" << v.threadgroup_size << " vjp_grid_size=" << v.grid_size
            << " vjp_partials_bytes=" << g.partials_bytes(axis)
            << " combine_threadgroup_size=" << c.threadgroup_size
            << " combine_grid_size=" << c.grid_size
            << " combine_kernel=" << c.kernel_name("float32") << "\n";
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  try {
    if (argc >= 10 && argc <= 13 && std::string(argv[1]) == "run") {
      return main_run(argc, argv);
    }
    if ((argc == 5 || argc == 6) && std::string(argv[1]) == "geometry") {
      return main_geometry(argc, argv);
    }
    std::cerr << "usage: harness run FAMILY DTYPE ROWS AXIS RESIDUAL HAS_W ORDER DIR [GROUPS [MAX "
                 "[LOOPED_MAX]]]\n"
                 "       harness geometry AXIS ROWS MAX_THREADS [LOOPED_MAX]\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "harness: " << e.what() << "\n";
    return 1;
  }
}
