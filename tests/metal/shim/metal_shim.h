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
//
// Tests only: the .metal sources are compiled unchanged, except that
// `threadgroup T name[N];` declarations become MLXR_THREADGROUP(T, name, N).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

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
  }

  // A barrier publishes the threadgroup-memory writes of the threads that
  // passed mem_threadgroup to it.
  void publish() {
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
        fail("deadlock: threads wait at a synchronization point that never completes");
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
#define MLXR_THREADGROUP(T, name, n)                                      \
  T* name = ::mlxr_harness::Group::current()->threadgroup_array<T>( \
      __LINE__, (n))

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
