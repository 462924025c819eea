// What the native kernel sources share (each includes it; internal linkage): register-wide
// float vectors, unaligned loads and stores, and a parallel loop over XLA's intra-op pool.

#ifndef SEPNETS_NATIVE_SIMD_H_
#define SEPNETS_NATIVE_SIMD_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One register of floats (16 with AVX-512, 8 with AVX/AVX2, else 4), unaligned, and half of
// one: GCC lowers arithmetic on them to whatever instructions -march allows. Channel blocks
// are a register wide, and a half-register block takes a tail of that width (72, 120, 184 or
// 200 channels with AVX-512); other tails go lane by lane.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
typedef float Vec __attribute__((vector_size(kVecBytes), aligned(4)));
typedef float Half __attribute__((vector_size(kVecBytes / 2), aligned(4)));
constexpr int64_t kLanes = kVecBytes / 4;
constexpr int64_t kHalfLanes = kLanes / 2;
constexpr int64_t kLineFloats = 16;  // floats per 64-byte cache line (prefetch stride)

// Through memcpy: a template argument drops the typedefs' alignment attribute.
template <typename V>
inline V Load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void Store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
inline Vec Load(const float* p) { return Load<Vec>(p); }
inline void Store(float* p, Vec v) { Store<Vec>(p, v); }
// The same bits as another type of the same size (a GCC vector as an intrinsic's __m512).
template <typename To, typename From>
inline To As(const From& from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  __builtin_memcpy(&to, &from, sizeof(To));
  return to;
}
inline Vec LoadTail(const float* p, int64_t n) {
  Vec v = {};
  for (int64_t k = 0; k < n; ++k) v[k] = p[k];
  return v;
}
inline void StoreTail(float* p, Vec v, int64_t n) {
  for (int64_t k = 0; k < n; ++k) p[k] = v[k];
}

// Runs fn(chunk) for chunk in [0, chunks) on the pool and the calling thread; returns when
// every chunk has run, its stores (non-temporal ones included: a store fence ends each chunk)
// visible to the caller. Tasks that start after all chunks are claimed return at once, so
// nothing waits on a task the pool has not started.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t chunks, const Fn& fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t chunks = 0;
    const Fn* fn = nullptr;
  };
  auto state = std::make_shared<State>();
  state->chunks = chunks;
  state->fn = &fn;
  auto work = [](State& s) {
    for (int64_t c; (c = s.next.fetch_add(1)) < s.chunks;) {
      (*s.fn)(c);
#if defined(__x86_64__)
      _mm_sfence();
#endif
      s.done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state, work] { work(*state); });
  work(*state);
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

}  // namespace

#endif  // SEPNETS_NATIVE_SIMD_H_
