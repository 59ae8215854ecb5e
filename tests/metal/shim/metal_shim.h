// A C++ stand-in for the parts of the Metal shading language that the mlxr
// kernels use, with Metal's execution semantics made deterministic:
//
// - a threadgroup's threads run one at a time, each until its next
//   synchronization point (threadgroup_barrier or a simdgroup function), in a
//   chosen order; a barrier releases only when every thread has reached it;
// - simdgroups are 32 lanes wide and simd_sum waits for all 32; they are
//   released when no thread can run any further or, in the simdgroup_eager
//   order, as soon as all 32 have arrived, so that the lowest such simdgroup
//   runs ahead (up to the next barrier) of others still at the previous step;
// - threadgroup memory is shared within a group, fresh for each group, and
//   starts poisoned (all bits set: NaN for floats) so reads before writes show;
// - a thread's writes to threadgroup memory reach other threads only through
//   a threadgroup_barrier whose flags include mem_threadgroup. Until then the
//   other threads read poison there (the write may or may not have landed),
//   and two threads writing the same byte between such barriers is a race.
//   Threads run one at a time, so this needs no tracking of each access: the
//   memory a thread sees is set up when it starts running, and what it wrote
//   is found by comparison when it stops.
// - device memory (every buffer a launch binds) follows the same rule with
//   mem_device: another thread's write to it becomes visible only after a
//   threadgroup_barrier whose flags include mem_device, and a write by another
//   threadgroup of the same launch never does (nothing orders threadgroups;
//   the next launch sees every write). Until then the thread reads poison
//   there, and two threads writing the same byte is a race. See DeviceMemory.
//
// Tests only: the .metal sources are compiled unchanged, except that
// `threadgroup T name[N];` declarations become MLXR_THREADGROUP(T, name, N).
#pragma once

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#ifdef MLXR_ASAN
#include <sanitizer/asan_interface.h>
#endif

#include "mlx/types/half_types.h"

using uint = uint32_t;
using half = mlx::core::float16_t;
using bfloat16_t = mlx::core::bfloat16_t;

namespace mlxr_harness {

constexpr int SIMD_WIDTH = 32;
constexpr int MAX_THREADS_PER_GROUP = 1024;
constexpr size_t MAX_THREADGROUP_BYTES = 32 * 1024;

enum class Order { forward, reverse, simdgroup0_last, simdgroup_eager };

constexpr unsigned char TG_POISON = 0xFF;
constexpr int MEM_DEVICE = 1, MEM_THREADGROUP = 2, MEM_TEXTURE = 4;

struct HarnessError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Device memory: the buffers the harness binds to a launch. Within a launch a
// thread's writes are pending: the other threads read poison (all bits set)
// there until a threadgroup_barrier with mem_device publishes them to the
// thread's own threadgroup, and once its threadgroup has finished they stay
// hidden from the later threadgroups of the launch. Two threads writing the
// same byte in that time is a race. After the launch every write is there.
//
// Device buffers are too large to compare whole at every switch of threads,
// as threadgroup memory is. Each is mapped twice instead: the kernels' view is
// read-only during a launch, so that a thread's first write to a page faults;
// the fault handler keeps the page's old contents and makes it writable. When
// the thread stops, each page it wrote is compared with its old contents,
// which finds its writes byte for byte, and made read-only again. The
// harness's view stays writable: through it, a thread's pending writes are
// put in place while it runs and replaced by poison when it stops.
//
// Reads are not intercepted: a read of hidden memory shows only through the
// poison it returns (NaN in every float type), so a test must check what the
// kernel computes from it. Not modelled: simdgroup_barrier, atomics, and which
// of two racing writes lands; a write of the value a byte already holds is not
// seen.
class DeviceMemory {
 public:
  static DeviceMemory& get() {
    static DeviceMemory memory;
    return memory;
  }

  // `bytes` of device memory, readable and writable outside launches. Under
  // AddressSanitizer the memory around it is poisoned, so that any access
  // beyond it is reported.
  unsigned char* allocate(size_t bytes) {
    auto r = std::make_unique<Region>();
    r->size = page_ + (bytes + page_ - 1) / page_ * page_ + page_;
    int fd = memfd_create("mlxr-device-memory", 0);
    if (fd < 0 || ftruncate(fd, r->size) != 0) {
      throw HarnessError("cannot allocate device memory");
    }
    void* kernel =
        mmap(nullptr, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    void* harness =
        mmap(nullptr, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (kernel == MAP_FAILED || harness == MAP_FAILED) {
      throw HarnessError("cannot map device memory");
    }
    r->kernel = static_cast<unsigned char*>(kernel);
    r->harness = static_cast<unsigned char*>(harness);
    r->before.resize(r->size);
    r->value.resize(r->size);
    r->owner.assign(r->size, NONE);
    r->page_dirty.assign(r->size / page_, 0);
    // Reserved, so that the fault handler never allocates.
    r->dirty.reserve(r->size / page_);
    unsigned char* data = r->kernel + page_;
#ifdef MLXR_ASAN
    ASAN_POISON_MEMORY_REGION(r->kernel, page_);
    ASAN_POISON_MEMORY_REGION(data + bytes, r->kernel + r->size - data - bytes);
#endif
    regions_.push_back(std::move(r));
    return data;
  }

  void release(unsigned char* data) {
    for (auto it = regions_.begin(); it != regions_.end(); ++it) {
      Region& r = **it;
      if (r.kernel + page_ == data) {
#ifdef MLXR_ASAN
        ASAN_UNPOISON_MEMORY_REGION(r.kernel, r.size);
#endif
        munmap(r.kernel, r.size);
        munmap(r.harness, r.size);
        regions_.erase(it);
        return;
      }
    }
  }

  // One launch: device memory is tracked from begin to end.
  void begin_launch() {
    active_ = true;
    launch_written_.clear();
    for (auto& r : regions_) {
      mprotect(r->kernel, r->size, PROT_READ);
    }
  }

  void end_launch() {
    for (auto& r : regions_) {
      mprotect(r->kernel, r->size, PROT_READ | PROT_WRITE);
      std::fill(r->page_dirty.begin(), r->page_dirty.end(), 0);
      r->dirty.clear();
    }
    for (const Range& w : launch_written_) {
      show(w);
      set_owner(w, NONE);
    }
    launch_written_.clear();
    active_ = false;
  }

  void begin_group(int n_threads) {
    if (active_) {
      pending_.assign(n_threads, {});
      group_written_.clear();
    }
  }

  // What the group wrote is hidden from the later groups of the launch.
  void end_group() {
    if (!active_) {
      return;
    }
    for (const Range& w : group_written_) {
      Region& r = *w.region;
      for (size_t i = w.begin; i < w.end; i++) {
        if (r.owner[i] == PUBLISHED) {
          r.value[i] = r.harness[i];
        }
        r.owner[i] = OTHER_GROUP;
        r.harness[i] = POISON;
      }
    }
    launch_written_.insert(
        launch_written_.end(), group_written_.begin(), group_written_.end());
    group_written_.clear();
    pending_.clear();
  }

  // Thread lid starts running: it sees its own pending writes.
  void switch_in(int lid) {
    if (!active_) {
      return;
    }
    for (const Range& w : pending_[lid]) {
      show(w);
    }
  }

  // Thread lid stops: record what it wrote, then hide its pending writes.
  // Returns a description of a race, or "".
  std::string switch_out(int lid) {
    if (!active_) {
      return "";
    }
    std::string race;
    for (auto& rp : regions_) {
      Region& r = *rp;
      for (size_t page : r.dirty) {
        for (size_t i = page * page_; i < (page + 1) * page_; i++) {
          if (i % 64 == 0 &&
              std::memcmp(r.harness + i, &r.before[i], 64) == 0) {
            i += 63;
            continue;
          }
          if (r.harness[i] == r.before[i]) {
            continue;
          }
          int& owner = r.owner[i];
          if (owner == OTHER_GROUP) {
            race =
                "data race: two threadgroups of one launch write the same "
                "device memory";
          } else if (owner >= 0 && owner != lid) {
            race = "data race: threads " + std::to_string(owner) + " and " +
                std::to_string(lid) +
                " write the same device memory with no "
                "threadgroup_barrier(mem_flags::mem_device) between them";
          } else if (owner != lid) {
            if (owner == NONE) {
              add(group_written_, r, i);
            }
            owner = lid;
            add(pending_[lid], r, i);
          }
          r.value[i] = r.harness[i];
        }
        mprotect(r.kernel + page * page_, page_, PROT_READ);
        r.page_dirty[page] = 0;
      }
      r.dirty.clear();
    }
    for (const Range& w : pending_[lid]) {
      std::memset(w.region->harness + w.begin, POISON, w.end - w.begin);
    }
    return race;
  }

  // A barrier with mem_device makes thread lid's writes visible to its group.
  void publish(int lid) {
    if (!active_) {
      return;
    }
    for (const Range& w : pending_[lid]) {
      show(w);
      set_owner(w, PUBLISHED);
    }
    pending_[lid].clear();
  }

 private:
  static constexpr unsigned char POISON = 0xFF;
  // Who wrote a byte in this launch: a thread of the running group (its
  // write pending), or one of these.
  static constexpr int NONE = -1, PUBLISHED = -2, OTHER_GROUP = -3;

  struct Region {
    unsigned char* kernel; // the kernels' view
    unsigned char* harness; // the same memory, always writable
    size_t size;
    std::vector<unsigned char> before; // pages as the running thread found them
    std::vector<unsigned char> value; // the bytes that poison hides
    std::vector<int> owner; // per byte
    std::vector<char> page_dirty;
    std::vector<size_t> dirty; // pages the running thread wrote
  };

  struct Range {
    Region* region;
    size_t begin, end;
  };

  // Lets the kernels' view show the bytes that writes put in w.
  static void show(const Range& w) {
    Region& r = *w.region;
    std::memcpy(
        r.harness + w.begin, r.value.data() + w.begin, w.end - w.begin);
  }

  static void set_owner(const Range& w, int who) {
    auto owner = w.region->owner.begin();
    std::fill(owner + w.begin, owner + w.end, who);
  }

  DeviceMemory() : page_(sysconf(_SC_PAGESIZE)) {
    struct sigaction action = {};
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous_action());
  }

  static struct sigaction& previous_action() {
    static struct sigaction action;
    return action;
  }

  // A write to a read-only page of device memory: note the page and let the
  // write through. Any other fault goes to the handler there was before.
  static void on_fault(int, siginfo_t* info, void*) {
    if (!get().make_writable(static_cast<unsigned char*>(info->si_addr))) {
      sigaction(SIGSEGV, &previous_action(), nullptr);
    }
  }

  bool make_writable(unsigned char* p) {
    if (!active_) {
      return false;
    }
    for (auto& rp : regions_) {
      Region& r = *rp;
      if (p < r.kernel || p >= r.kernel + r.size) {
        continue;
      }
      size_t page = (p - r.kernel) / page_;
      if (r.page_dirty[page]) {
        return false;
      }
      r.page_dirty[page] = 1;
      r.dirty.push_back(page);
      std::memcpy(&r.before[page * page_], r.harness + page * page_, page_);
      return mprotect(r.kernel + page * page_, page_, PROT_READ | PROT_WRITE) ==
          0;
    }
    return false;
  }

  static void add(std::vector<Range>& ranges, Region& r, size_t i) {
    if (!ranges.empty() && ranges.back().region == &r &&
        ranges.back().end == i) {
      ranges.back().end++;
    } else {
      ranges.push_back({&r, i, i + 1});
    }
  }

  size_t page_;
  bool active_ = false;
  std::vector<std::unique_ptr<Region>> regions_;
  // Per thread of the running group: its pending writes.
  std::vector<std::vector<Range>> pending_;
  std::vector<Range> group_written_, launch_written_;
};

// Device memory is tracked for the lifetime of one of these.
struct DeviceLaunch {
  DeviceLaunch() {
    DeviceMemory::get().begin_launch();
  }
  ~DeviceLaunch() {
    DeviceMemory::get().end_launch();
  }
};

class Group {
 public:
  Group(int n_threads, Order order)
      : n_(n_threads),
        threads_(n_threads),
        eager_(order == Order::simdgroup_eager) {
    if (n_threads < 1 || n_threads > MAX_THREADS_PER_GROUP) {
      throw HarnessError(
          "threadgroup of " + std::to_string(n_threads) + " threads (limit " +
          std::to_string(MAX_THREADS_PER_GROUP) + ")");
    }
    for (int i = 0; i < n_; i++) {
      order_.push_back(i);
    }
    if (order == Order::reverse) {
      std::reverse(order_.begin(), order_.end());
    } else if (order == Order::simdgroup0_last) {
      std::stable_partition(
          order_.begin(), order_.end(), [](int i) { return i >= SIMD_WIDTH; });
    }
  }

  // Runs body(lid) for every thread of the group under the schedule.
  void run(const std::function<void(int)>& body) {
    DeviceMemory::get().begin_group(n_);
    std::vector<std::thread> workers;
    workers.reserve(n_);
    for (int lid = 0; lid < n_; lid++) {
      workers.emplace_back([this, lid, &body] {
        current() = this;
        self() = lid;
        threads_[lid].go.acquire();
        if (!failed_) {
          try {
            body(lid);
          } catch (const HarnessError& e) {
            fail(e.what());
          }
        }
        threads_[lid].state = State::done;
        pass_baton(lid);
      });
    }
    pass_baton(-1);
    for (auto& w : workers) {
      w.join();
    }
    DeviceMemory::get().end_group();
    if (failed_) {
      throw HarnessError(error_);
    }
  }

  void barrier(int flags) {
    int lid = self();
    threads_[lid].state = State::at_barrier;
    threads_[lid].barrier_flags = flags;
    pass_baton(lid);
  }

  float simd_sum(float value) {
    int lid = self();
    threads_[lid].simd_value = value;
    threads_[lid].state = State::at_simd;
    pass_baton(lid);
    return threads_[lid].simd_result;
  }

  template <typename T>
  T* threadgroup_array(int site, size_t n) {
    auto it = tg_memory_.find(site);
    if (it == tg_memory_.end()) {
      tg_bytes_ += n * sizeof(T);
      if (tg_bytes_ > MAX_THREADGROUP_BYTES) {
        throw HarnessError(
            "kernel uses " + std::to_string(tg_bytes_) +
            " bytes of threadgroup memory (limit 32 KiB)");
      }
      it = tg_memory_.emplace(site, Region(n * sizeof(T))).first;
    }
    return reinterpret_cast<T*>(it->second.memory.data());
  }

  static Group*& current() {
    static thread_local Group* group = nullptr;
    return group;
  }

  static int& self() {
    static thread_local int lid = -1;
    return lid;
  }

 private:
  enum class State { ready, at_barrier, at_simd, done };
  struct Thread {
    std::binary_semaphore go{0};
    State state = State::ready;
    int barrier_flags = 0;
    float simd_value = 0;
    float simd_result = 0;
  };

  // One threadgroup array. `memory` is what the running thread sees (the
  // kernel's pointer), `shown` what it saw when it started running;
  // `committed` holds the writes every thread sees, `pending` and `writer`
  // the writes not yet published by a barrier (writer -1: none).
  struct Region {
    std::vector<unsigned char> memory, shown, committed, pending;
    std::vector<int> writer;
    size_t n_pending = 0;

    explicit Region(size_t bytes)
        : memory(bytes, TG_POISON),
          shown(bytes, TG_POISON),
          committed(bytes, TG_POISON),
          pending(bytes, TG_POISON),
          writer(bytes, -1) {}
  };

  // Sets up the threadgroup memory that thread lid sees as it starts running.
  void switch_in(int lid) {
    for (auto& [site, m] : tg_memory_) {
      if (m.n_pending == 0) {
        m.memory = m.committed;
      } else {
        for (size_t i = 0; i < m.memory.size(); i++) {
          m.memory[i] = m.writer[i] < 0 ? m.committed[i]
              : m.writer[i] == lid      ? m.pending[i]
                                        : TG_POISON;
        }
      }
      m.shown = m.memory;
    }
    DeviceMemory::get().switch_in(lid);
  }

  // Records what thread lid wrote to threadgroup memory while it ran.
  void switch_out(int lid) {
    for (auto& [site, m] : tg_memory_) {
      if (m.memory == m.shown) {
        continue;
      }
      for (size_t i = 0; i < m.memory.size(); i++) {
        if (m.memory[i] == m.shown[i]) {
          continue;
        }
        if (m.writer[i] >= 0 && m.writer[i] != lid) {
          fail(
              "data race: threads " + std::to_string(m.writer[i]) + " and " +
              std::to_string(lid) +
              " write the same threadgroup memory with no "
              "threadgroup_barrier(mem_flags::mem_threadgroup) between them");
        }
        m.n_pending += m.writer[i] < 0;
        m.writer[i] = lid;
        m.pending[i] = m.memory[i];
      }
    }
    std::string race = DeviceMemory::get().switch_out(lid);
    if (!race.empty()) {
      fail(race);
    }
  }

  // A barrier publishes the threadgroup-memory writes of the threads that
  // passed mem_threadgroup to it, and the device-memory writes of those that
  // passed mem_device.
  void publish() {
    for (int lid = 0; lid < n_; lid++) {
      if (threads_[lid].barrier_flags & MEM_DEVICE) {
        DeviceMemory::get().publish(lid);
      }
    }
    for (auto& [site, m] : tg_memory_) {
      for (size_t i = 0; m.n_pending > 0 && i < m.memory.size(); i++) {
        int w = m.writer[i];
        if (w >= 0 && (threads_[w].barrier_flags & MEM_THREADGROUP)) {
          m.committed[i] = m.pending[i];
          m.writer[i] = -1;
          m.n_pending--;
        }
      }
    }
  }

  void fail(const std::string& message) {
    if (!failed_) {
      failed_ = true;
      error_ = message;
    }
  }

  // Release every simdgroup whose lanes have all reached a simdgroup function.
  bool release_simdgroups() {
    bool released = false;
    for (int g = 0; g * SIMD_WIDTH < n_; g++) {
      int end = std::min(n_, (g + 1) * SIMD_WIDTH);
      bool all = true;
      for (int i = g * SIMD_WIDTH; i < end; i++) {
        all &= threads_[i].state == State::at_simd;
      }
      if (all) {
        float sum = 0;
        for (int i = g * SIMD_WIDTH; i < end; i++) {
          sum += threads_[i].simd_value;
        }
        for (int i = g * SIMD_WIDTH; i < end; i++) {
          threads_[i].simd_result = sum;
          threads_[i].state = State::ready;
        }
        released = true;
      }
    }
    return released;
  }

  // Release whatever synchronization point is complete. Only called when no
  // thread can run, so every thread has gone as far as it can on its own.
  bool release() {
    if (release_simdgroups()) {
      return true;
    }
    int at_barrier = 0, done = 0;
    for (auto& t : threads_) {
      at_barrier += t.state == State::at_barrier;
      done += t.state == State::done;
    }
    if (at_barrier > 0 && at_barrier + done == n_) {
      if (done > 0) {
        fail("threadgroup_barrier reached by only some threads");
        return false;
      }
      publish();
      for (auto& t : threads_) {
        t.state = State::ready;
      }
      return true;
    }
    return false;
  }

  int pick() {
    while (true) {
      if (eager_ && !failed_) {
        release_simdgroups();
      }
      for (int lid : order_) {
        if (threads_[lid].state == State::ready) {
          return lid;
        }
      }
      if (failed_ || !release()) {
        return -1;
      }
    }
  }

  // Hand the right to run to the next thread, then wait for it to come back.
  void pass_baton(int from) {
    if (from >= 0) {
      switch_out(from);
    }
    int next = pick();
    if (next < 0) {
      bool all_done = true;
      for (auto& t : threads_) {
        all_done &= t.state == State::done;
      }
      if (!all_done) {
        fail(
            "deadlock: threads wait at a synchronization point that never completes");
        // Let every waiting thread finish without running more kernel code.
        for (auto& t : threads_) {
          if (t.state != State::done) {
            t.state = State::ready;
          }
        }
        next = pick();
      }
    }
    if (next >= 0) {
      switch_in(next);
      threads_[next].go.release();
    }
    if (from >= 0 && threads_[from].state != State::done) {
      threads_[from].go.acquire();
      if (failed_) {
        throw HarnessError(error_);
      }
    }
  }

  int n_;
  std::vector<Thread> threads_;
  std::vector<int> order_;
  bool eager_;
  std::map<int, Region> tg_memory_;
  size_t tg_bytes_ = 0;
  bool failed_ = false;
  std::string error_;
};

// Registry of instantiated kernels, by host name.
inline std::map<std::string, void*>& kernels() {
  static std::map<std::string, void*> registry;
  return registry;
}

struct Registered {
  Registered(const char* name, void* fn) {
    kernels()[name] = fn;
  }
};

} // namespace mlxr_harness

#define MLXR_CAT2(a, b) a##b
#define MLXR_CAT(a, b) MLXR_CAT2(a, b)
#define MLXR_THREADGROUP(T, name, n) \
  T* name =                          \
      ::mlxr_harness::Group::current()->threadgroup_array<T>(__LINE__, (n))

namespace metal {

enum class mem_flags {
  mem_none = 0,
  mem_device = mlxr_harness::MEM_DEVICE,
  mem_threadgroup = mlxr_harness::MEM_THREADGROUP,
  mem_texture = mlxr_harness::MEM_TEXTURE,
};

inline mem_flags operator|(mem_flags a, mem_flags b) {
  return mem_flags(int(a) | int(b));
}

inline void threadgroup_barrier(mem_flags flags) {
  mlxr_harness::Group::current()->barrier(int(flags));
}

inline float simd_sum(float x) {
  return mlxr_harness::Group::current()->simd_sum(x);
}

namespace precise {
inline float rsqrt(float x) {
  return 1.0f / std::sqrt(x);
}
} // namespace precise

inline float rsqrt(float x) {
  return 1.0f / std::sqrt(x);
}

inline bool isnan(float x) {
  return std::isnan(x);
}

// As Metal defines it: fmin(fmax(x, lo), hi), so a NaN x gives lo.
inline float clamp(float x, float lo, float hi) {
  return std::fmin(std::fmax(x, lo), hi);
}

} // namespace metal

// Metal's address spaces mean nothing here. Defined last: `thread` would
// otherwise break std::thread above.
#define device
#define constant
#define thread
#define threadgroup
#define METAL_FUNC inline
