// Per-channel sums for BatchNorm in training, for XLA:CPU, called through the XLA FFI.
//
//   sepnets_channel_sums: for a (..., C) float32 `a` and `b` of the same shape,
//                         sum_a[c] = sum of a[..., c] and sum_ab[c] = sum of a[..., c] * b[..., c]
//                         (with square=1, a[..., c]^2: `b` is not read).
//
// One pass over the inputs gives both sums: a BatchNorm's statistics (sum x, sum x^2) in the
// forward and its backward's (sum g, sum g * x), where XLA reads the tensors once per sum.
// Runs of up to kBlock positions are summed in float32 registers and memory, and added into
// float64 partials, one per chunk of positions, which are added in chunk order: the result is
// the same for any thread count.

#include <vector>

#include "simd.h"

namespace {

constexpr int64_t kBlock = 128;  // positions summed in float32 before the float64 partial
constexpr int64_t kRowsPerChunk = 256;  // fewest positions per parallel chunk
constexpr int64_t kMaxChunks = 64;  // (not tied to the thread count: see above)

// Adds positions [lo, hi) of the (rows, c) inputs into the float64 partials `sa`, `sab`;
// `fa`, `fab` are (c,) float32 scratch.
template <bool kSquare>
void SumRows(const float* a, const float* b, int64_t lo, int64_t hi, int64_t c, float* fa,
             float* fab, double* sa, double* sab) {
  const int64_t full = c / kLanes * kLanes;
  for (int64_t p0 = lo; p0 < hi; p0 += kBlock) {
    const int64_t p1 = std::min(hi, p0 + kBlock);
    std::fill(fa, fa + c, 0.f);
    std::fill(fab, fab + c, 0.f);
    int64_t p = p0;
    for (; p + 4 <= p1; p += 4) {  // four positions per load and store of the sums
      for (int64_t c0 = 0; c0 < full; c0 += kLanes) {
        Vec s = Load(fa + c0), t = Load(fab + c0);
#pragma GCC unroll 4
        for (int64_t r = 0; r < 4; ++r) {
          const Vec x = Load(a + (p + r) * c + c0);
          const Vec y = kSquare ? x : Load(b + (p + r) * c + c0);
          s += x;
          t += x * y;
        }
        Store(fa + c0, s);
        Store(fab + c0, t);
      }
      for (int64_t r = 0; r < 4; ++r) {
        for (int64_t k = full; k < c; ++k) {
          const float x = a[(p + r) * c + k], y = kSquare ? x : b[(p + r) * c + k];
          fa[k] += x;
          fab[k] += x * y;
        }
      }
    }
    for (; p < p1; ++p) {
      for (int64_t k = 0; k < c; ++k) {
        const float x = a[p * c + k], y = kSquare ? x : b[p * c + k];
        fa[k] += x;
        fab[k] += x * y;
      }
    }
    for (int64_t k = 0; k < c; ++k) {
      sa[k] += fa[k];
      sab[k] += fab[k];
    }
  }
}

ffi::Error ChannelSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                       ffi::ResultBuffer<ffi::F32> sum_a, ffi::ResultBuffer<ffi::F32> sum_ab,
                       int64_t square) {
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  if (ad.size() < 1 || sum_a->dimensions().size() != 1 || sum_ab->dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("sepnets_channel_sums: expected (..., C) in, (C,) out");
  }
  const int64_t c = ad[ad.size() - 1];
  bool same = bd.size() == ad.size();
  for (size_t i = 0; same && i < ad.size(); ++i) same = ad[i] == bd[i];
  if (!same || sum_a->dimensions()[0] != c || sum_ab->dimensions()[0] != c) {
    return ffi::Error::InvalidArgument("sepnets_channel_sums: shapes do not agree");
  }
  const int64_t rows = c > 0 ? static_cast<int64_t>(a.element_count()) / c : 0;
  const int64_t chunks = std::clamp<int64_t>(rows / kRowsPerChunk, 1, kMaxChunks);
  std::vector<double> partial(chunks * 2 * c, 0.0);
  const float* pa = a.typed_data();
  const float* pb = b.typed_data();
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    std::vector<float> scratch(2 * c);
    double* sums = partial.data() + chunk * 2 * c;
    const int64_t lo = rows * chunk / chunks, hi = rows * (chunk + 1) / chunks;
    if (square != 0) {
      SumRows<true>(pa, pb, lo, hi, c, scratch.data(), scratch.data() + c, sums, sums + c);
    } else {
      SumRows<false>(pa, pb, lo, hi, c, scratch.data(), scratch.data() + c, sums, sums + c);
    }
  });
  float* oa = sum_a->typed_data();
  float* oab = sum_ab->typed_data();
  for (int64_t k = 0; k < c; ++k) {
    double s = 0, t = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      s += partial[chunk * 2 * c + k];
      t += partial[chunk * 2 * c + c + k];
    }
    oa[k] = static_cast<float>(s);
    oab[k] = static_cast<float>(t);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepnetsChannelSums, ChannelSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("square"));
