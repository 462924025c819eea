// Depthwise convolution kernels for XLA:CPU, called through the XLA FFI.
//
// NHWC float32, channel multiplier 1. Built and registered as custom-call targets by
// sepnets/native/__init__.py; sepnets/layers/depthwise.py computes the geometry (output
// size, low pads) and passes it as attributes.
//
//   sepnets_dw_conv:      out[n,p,q,c] = sum_{i,j} src[n, row(p,i), col(q,j), c] * taps[i*KW+j, c]
//                         with row/col the forward window (transposed=0) or its transpose
//                         (transposed=1: the input gradient, src = the output gradient);
//   sepnets_dw_conv_bias_act: the forward sepnets_dw_conv, then act(out + bias[c]) with act
//                         none, relu, relu6, hard_swish or swish (eval-mode BatchNorm +
//                         activation);
//   sepnets_dw_act_conv_bias_act: sepnets_dw_conv_bias_act of act_in(src * in_scale[c] +
//                         in_bias[c]) (the eval-mode BatchNorm and activation of the layer
//                         before, applied as the source rows are read);
//   sepnets_dw_tap_grad:  out[i*KW+j, c] = sum_{n,p,q} x[n, row(p,i), col(q,j), c] * g[n,p,q,c].
//
// Positions outside the source are zero. Work is split over (batch, output row) and run on
// XLA's intra-op thread pool; the calling thread takes part, so the kernels finish even when
// the pool runs nothing else.

#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "simd.h"

namespace {

enum Activation : int64_t { kNone = 0, kRelu = 1, kRelu6 = 2, kHardSwish = 3, kSwish = 4 };
constexpr int64_t kPixels = 8;  // most output columns per register block
constexpr int64_t kFewPixels = 4;  // fewest (narrower rows go column by column)
constexpr int64_t kTile = 64;  // channels per pass over a row in the forward loop
constexpr int64_t kMaxRows = 5;  // kernel rows of the register-blocked forward (3x3, 5x5)
constexpr int64_t kTapChunks = 32;  // row chunks (partial sums) of the tap gradient
constexpr int64_t kTapBandBytes = 512 << 10;  // see TapGradRows
// The widest output rows the tap gradient sums in register blocks, at column stride 1 and 2;
// wider ones go column by column (see AddTapBlock).
#if defined(__AVX512F__)
constexpr int64_t kTapBlockedWidth[2] = {28, 28};
#else
constexpr int64_t kTapBlockedWidth[2] = {14, 0};
#endif

// For each output index p, the (tap, source index) pairs that are in range: the forward
// window (s = p*stride + i*dilation - low) or, transposed, the output positions that read
// p (p = s*stride + i*dilation - low).
struct Taps {
  std::vector<int64_t> count, tap, src;  // count per p; tap/src at [p * kernel + k]
};

Taps TapTable(int64_t out_len, int64_t src_len, int64_t kernel, int64_t stride,
              int64_t dilation, int64_t low, bool transposed) {
  Taps t;
  t.count.assign(out_len, 0);
  t.tap.assign(out_len * kernel, 0);
  t.src.assign(out_len * kernel, 0);
  for (int64_t p = 0; p < out_len; ++p) {
    for (int64_t i = 0; i < kernel; ++i) {
      int64_t s;
      if (!transposed) {
        s = p * stride + i * dilation - low;
      } else {
        const int64_t num = p + low - i * dilation;
        if (num < 0 || num % stride != 0) continue;
        s = num / stride;
      }
      if (s < 0 || s >= src_len) continue;
      const int64_t k = t.count[p]++;
      t.tap[p * kernel + k] = i;
      t.src[p * kernel + k] = s;
    }
  }
  return t;
}

struct ConvArgs {
  const float* src;
  const float* taps;
  float* out;
  int64_t n, h, w, c, oh, ow, kh, kw;
  Taps rows, cols;
  const float* bias = nullptr;  // per channel, added before the activation (the epilogue)
  int64_t act = kNone;
  int64_t col_low = 0;  // the forward window's low column pad (source column of q: q*S - col_low)
  bool stream = false;  // the register blocks' output stores bypass the caches (see RunConv)
};

// Where a row kernel reads one image's source rows: row s at base + Index(s) * w * c. The
// image itself (ring == 0), or a ring of `ring` rows that holds the rows of the current window
// after a prologue (row s in slot s % ring; see RunConv).
struct Image {
  const float* base;
  int64_t ring = 0;
  int64_t Index(int64_t s) const { return ring ? s % ring : s; }
};

// The prologue act(x * scale + bias) (per channel) that turns the source as stored into the
// convolution's input: the eval-mode BatchNorm and activation of the layer before.
struct Prologue {
  const float* scale;
  const float* bias;
  int64_t act;
};

// e^t lane by lane, for the swish epilogue: t = n ln2 + r with n an integer and |r| <= ln2 / 2,
// e^r by its Taylor series to r^7 (the next term is below 6e-9 relative, a tenth of an ulp),
// times 2^n built in the exponent bits. t is clamped to [-88, 89] first. Where n <= -126
// (t below about -86.6, e^t < 3e-38) the result is 0: 1 + e^-x is 1 there either way. Above
// 88.7 it is +inf, as expf's. A NaN passes the clamp and the polynomial: NaN out.
template <typename V>
inline V Exp(V t) {
  const V zero = {};
  const V lo = zero - 88.f, hi = zero + 89.f;
  t = t < lo ? lo : t;
  t = t > hi ? hi : t;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const V n = (t * 1.44269504f + kRound) - kRound;
  const V r = (t - n * 0.693359375f) - n * -2.12194440e-4f;  // ln 2 in two parts (Cody-Waite)
  V p = r * (1.f / 5040) + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {  // p * 2^n in one instruction, overflow to +inf included
    return As<V>(_mm512_scalef_ps(As<__m512>(p), As<__m512>(n)));
  }
#endif
  // 2^(n-1), then times 2: 2^n itself would be +inf at n = 128 though e^t is finite up to 88.7
  typedef int32_t Int __attribute__((vector_size(sizeof(V))));
  Int k = __builtin_convertvector(n, Int) + 126;  // at most 254; NaN converts to INT_MIN
  k = k < 0 ? 0 : k;
  return p * As<V>(k << 23) * 2.f;
}

// 1 / d lane by lane, for d >= 1 (or NaN): the hardware's reciprocal estimate and a Newton
// step, y (2 - d y), which leaves about 2^-23 relative error from AVX-512's 14-bit estimate or
// AVX's 12-bit one; a divide elsewhere. A divide instruction per vector would cost more than
// the 3x3 taps' FMAs. 1 / inf is 0 (the Newton step alone would make it NaN).
template <typename V>
inline V Reciprocal(V d) {
#if defined(__x86_64__) && defined(__AVX__)
  if constexpr (sizeof(V) == 64 || sizeof(V) == 32) {
    V y = {};
    if constexpr (sizeof(V) == 64) {
#if defined(__AVX512F__)
      y = As<V>(_mm512_rcp14_ps(As<__m512>(d)));
#endif
    } else {
      y = As<V>(_mm256_rcp_ps(As<__m256>(d)));
    }
    const V zero = {};
    y = y * (2.f - d * y);
    return d == zero + __builtin_inff() ? zero : y;
  }
#endif
  return 1.f / d;
}

// out = act(sum + bias), lane by lane: the eval-mode BatchNorm (its scale already folded into
// the taps) and the activation that follow a depthwise convolution, as JAX computes them.
template <typename V>
inline V Epilogue(V v, const float* bias, int64_t act) {
  v += Load<V>(bias);
  const V zero = {};
  const V six = zero + 6.f;
  // Comparisons written so that a NaN passes through, as jnp.maximum / jnp.minimum keep it.
  switch (act) {
    case kRelu:
      return v < zero ? zero : v;
    case kRelu6:
      v = v < zero ? zero : v;
      return v > six ? six : v;
    case kHardSwish: {
      V r = v + 3.f;
      r = r < zero ? zero : r;
      r = r > six ? six : r;
      return v * (r * (1.f / 6.f));  // a divide per vector would cost as much as the conv
    }
    case kSwish:  // x * sigmoid(x) = x * (1 / (1 + e^-x)), as jax.nn.silu is lowered
      return v * Reciprocal<V>(Exp<V>(-v) + 1.f);
    default:
      return v;
  }
}

// Keeps v in a register: GCC would otherwise fold the load into every FMA that uses it, one
// memory operand per tap. A no-op where v is not one register (or not on x86 / AArch64).
template <typename V>
inline void PinRegister(V& v) {
#if defined(__x86_64__)
  if constexpr (sizeof(V) <= kVecBytes) asm("" : "+v"(v));
#elif defined(__aarch64__)
  if constexpr (sizeof(V) <= 16) asm("" : "+w"(v));
#endif
}

// The source of a register block whose columns are all inside the input: row r's columns
// start at src + (row_at[r] * w + col0) * c (src already offset to the channel block; row_at
// the rows' places in the Image).
struct InsideSource {
  const float* src;
  const int64_t* row_at;
  int64_t w, c, col0;
  const float* Row(int64_t r) const { return src + (row_at[r] * w + col0) * c; }
  const float* At(const float* row, int64_t m) const { return row + m * c; }
  static constexpr bool Has(int64_t) { return true; }
};

// The source of a block that reaches past the input's left or right edge: as InsideSource,
// but only the span's columns [m_lo, m_hi) are inside the input (the others read as zeros).
struct ClippedSource {
  const float* src;
  const int64_t* row_at;
  int64_t w, c, col0, m_lo, m_hi;
  const float* Row(int64_t r) const { return src + row_at[r] * w * c; }
  const float* At(const float* row, int64_t m) const { return row + (col0 + m) * c; }
  bool Has(int64_t m) const { return m >= m_lo && m < m_hi; }
};

// Where a register block's taps and outputs are: source row r's taps start at
// taps + row_tap[r] * tap_row, tap j at + j * tap_step; output column k at out + k * out_step.
// The forward window: tap_row = KW * c, tap_step = out_step = c. With `stream`, the outputs
// (register-wide, aligned) are written with non-temporal stores. A pair of output rows
// (ConvBlockPair) has its second row row_step after the first.
//
// With `stage` (registers narrower than a cache line: AVX2), streamed outputs are written a
// whole line at a time: a block of the first half of each line (second_half false) is kept in
// `stage` (P registers per output row), and the block of the second half streams both halves.
// A line written half by half, with a register block's computation between the halves, leaves
// the CPU's write-combining buffers holding partial lines, which go to memory as partial
// writes: on a Zen 3 (AVX2) at batch 32, over mobilenet_v2's and efficientnet_b0's depthwise
// shapes, the forward pass took 19% less time in all with whole lines (576 channels at 14x14
// 63% less), the input gradient 40% less (benchmarks/native_ab.py).
struct BlockLayout {
  int64_t tap_row, tap_step, out_step;
  bool stream = false;
  int64_t row_step = 0;
  float* stage = nullptr;
  bool second_half = false;
};

// Stores a register of outputs past the caches (out aligned to the register's width), where the
// instruction set has such a store; otherwise as Store.
inline void StreamStore(float* out, Vec v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(out, As<__m512>(v));
#elif defined(__AVX__)
  _mm256_stream_ps(out, As<__m256>(v));
#elif defined(__x86_64__)
  _mm_stream_ps(out, As<__m128>(v));
#else
  Store(out, v);
#endif
}

// A register block's P output columns, through the epilogue where there is a bias, to out
// (column k at k * out_step); staged (see BlockLayout) in the stage's `stage_row`.
template <typename V, int64_t P>
inline void StoreBlock(V* acc, float* out, const BlockLayout& layout, const float* bias,
                       int64_t act, int64_t stage_row = 0) {
  if (bias != nullptr) {
#pragma GCC unroll 16
    for (int64_t k = 0; k < P; ++k) acc[k] = Epilogue<V>(acc[k], bias, act);
  }
  if constexpr (sizeof(V) == kVecBytes) {
    if (layout.stream) {
      if constexpr (kLanes < kLineFloats) {
        if (layout.stage != nullptr) {
          float* stage = layout.stage + stage_row * P * kLanes;
          if (!layout.second_half) {
#pragma GCC unroll 16
            for (int64_t k = 0; k < P; ++k) Store<V>(stage + k * kLanes, acc[k]);
            return;
          }
#pragma GCC unroll 16
          for (int64_t k = 0; k < P; ++k) {
            StreamStore(out - kLanes + k * layout.out_step, Load<V>(stage + k * kLanes));
            StreamStore(out + k * layout.out_step, acc[k]);
          }
          return;
        }
      }
#pragma GCC unroll 16
      for (int64_t k = 0; k < P; ++k) StreamStore(out + k * layout.out_step, acc[k]);
      return;
    }
  }
#pragma GCC unroll 16
  for (int64_t k = 0; k < P; ++k) Store<V>(out + k * layout.out_step, acc[k]);
}

// P output columns of one row, channels [0, V's width) of `taps` / `out` (already offset to
// the channel block), from `src`: a window of KW taps at stride S over nrows source rows,
// out[k] = sum_{r, j} src(r, k * S + j) * tap(r, j). Each source vector is loaded once and
// multiplied into every output column it feeds; each tap once per source row.
template <typename V, int64_t KW, int64_t S, int64_t P, typename Source>
inline void ConvBlock(const Source& src, const float* taps, float* out, const int64_t* row_tap,
                      int64_t nrows, const BlockLayout& layout, const float* bias, int64_t act) {
  constexpr int64_t kSpan = (P - 1) * S + KW;
  V acc[P] = {};
  for (int64_t r = 0; r < nrows; ++r) {
    const auto row = src.Row(r);
    const float* tp = taps + row_tap[r] * layout.tap_row;
    V t[KW];
#pragma GCC unroll 8
    for (int64_t j = 0; j < KW; ++j) t[j] = Load<V>(tp + j * layout.tap_step);
#pragma GCC unroll 64
    for (int64_t m = 0; m < kSpan; ++m) {
      if (!src.Has(m)) continue;
      V v = Load<V>(src.At(row, m));
      PinRegister(v);
#pragma GCC unroll 8
      for (int64_t j = 0; j < KW; ++j) {
        const int64_t k = (m - j) / S;
        if (m >= j && (m - j) % S == 0 && k < P) acc[k] += v * t[j];
      }
    }
  }
  StoreBlock<V, P>(acc, out, layout, bias, act);
}

// Two output rows of a register block, as two ConvBlocks, for a square window of KW x KW
// taps at vertical stride 1: the rows of the first one's window and the one after it, r in
// [0, KW] (source rows that are outside the input skipped: r in [r_lo, r_hi] only), row r
// feeding the first output row with tap row r and the second with tap row r - 1. Each source
// vector is loaded once for both rows (KW + 1 rows, not 2 KW), the KW * KW taps once per block;
// the second row's outputs at out + row_step. (The loop over a row's columns is ConvBlock's,
// written out again: shared through a helper taking the multiply-add as a lambda, GCC 12
// inlined the row kernels differently, and 192 channels at 28x28, stride 2, took 10-15% more
// time in a loop over the layer.)
template <typename V, int64_t KW, int64_t S, int64_t P, typename Source>
inline void ConvBlockPair(const Source& src, const float* taps, float* out, int64_t r_lo,
                          int64_t r_hi, const BlockLayout& layout, const float* bias,
                          int64_t act) {
  constexpr int64_t kSpan = (P - 1) * S + KW;
  V first[P] = {}, second[P] = {};
  V t[KW * KW];
#pragma GCC unroll 32
  for (int64_t i = 0; i < KW * KW; ++i) {
    t[i] = Load<V>(taps + i / KW * layout.tap_row + i % KW * layout.tap_step);
  }
#pragma GCC unroll 8
  for (int64_t r = 0; r <= KW; ++r) {
    if (r < r_lo || r > r_hi) continue;
    const auto row = src.Row(r);
#pragma GCC unroll 64
    for (int64_t m = 0; m < kSpan; ++m) {
      if (!src.Has(m)) continue;
      V v = Load<V>(src.At(row, m));
      PinRegister(v);
#pragma GCC unroll 8
      for (int64_t j = 0; j < KW; ++j) {
        const int64_t k = (m - j) / S;
        if (m < j || (m - j) % S != 0 || k >= P) continue;
        if (r < KW) first[k] += v * t[r * KW + j];
        if (r > 0) second[k] += v * t[(r - 1) * KW + j];
      }
    }
  }
  StoreBlock<V, P>(first, out, layout, bias, act);
  StoreBlock<V, P>(second, out + layout.row_step, layout, bias, act, 1);
}

// sum_i src[src_off[i]] * taps[tap_off[i]], one channel block.
template <typename V>
inline V PixelSum(const float* src, const float* taps, const int64_t* src_off,
                  const int64_t* tap_off, int64_t n) {
  V acc = {};
  for (int64_t i = 0; i < n; ++i) acc += Load<V>(src + src_off[i]) * Load<V>(taps + tap_off[i]);
  return acc;
}

// Output column q of row (b, p), channels [c_begin, c), with only its valid taps: the
// border columns, and any column of a geometry without register blocks.
void ConvPixel(const ConvArgs& a, const Image& img, float* out_row, int64_t p, int64_t q,
               int64_t c_begin) {
  const float* src_n = img.base;
  const int64_t c = a.c, kw = a.kw;
  std::vector<int64_t> offsets;  // (source, tap) offset pairs of the valid taps
  int64_t local[2 * 64];
  const int64_t most = a.rows.count[p] * a.cols.count[q];
  if (most > 64) offsets.resize(2 * most);
  int64_t* src_off = most > 64 ? offsets.data() : local;
  int64_t* tap_off = src_off + most;
  int64_t n = 0;
  for (int64_t r = 0; r < a.rows.count[p]; ++r) {
    for (int64_t k = 0; k < a.cols.count[q]; ++k, ++n) {
      src_off[n] = (img.Index(a.rows.src[p * a.kh + r]) * a.w + a.cols.src[q * kw + k]) * c;
      tap_off[n] = (a.rows.tap[p * a.kh + r] * kw + a.cols.tap[q * kw + k]) * c;
    }
  }
  float* out_px = out_row + q * c;
  int64_t c0 = c_begin;
  for (; c0 + kLanes <= c; c0 += kLanes) {
    Vec acc = PixelSum<Vec>(src_n + c0, a.taps + c0, src_off, tap_off, n);
    if (a.bias != nullptr) acc = Epilogue<Vec>(acc, a.bias + c0, a.act);
    if (a.stream) {
      StreamStore(out_px + c0, acc);
    } else {
      Store<Vec>(out_px + c0, acc);
    }
  }
  if (c0 + kHalfLanes <= c) {
    Half acc = PixelSum<Half>(src_n + c0, a.taps + c0, src_off, tap_off, n);
    if (a.bias != nullptr) acc = Epilogue<Half>(acc, a.bias + c0, a.act);
    Store<Half>(out_px + c0, acc);
    c0 += kHalfLanes;
  }
  if (c0 < c) {  // fewer than kHalfLanes lanes left: through a zero-padded block
    const int64_t width = c - c0;
    Vec acc = {};
    for (int64_t i = 0; i < n; ++i) {
      acc += LoadTail(src_n + c0 + src_off[i], width) * LoadTail(a.taps + c0 + tap_off[i], width);
    }
    if (a.bias != nullptr) {
      float b[kLanes] = {};
      for (int64_t k = 0; k < width; ++k) b[k] = a.bias[c0 + k];
      acc = Epilogue<Vec>(acc, b, a.act);
    }
    StoreTail(out_px + c0, acc, width);
  }
}

// Output row (b, p), column by column (any geometry).
void ConvRowColumns(const ConvArgs& a, const Image& img, int64_t b, int64_t p) {
  float* out_row = a.out + (b * a.oh + p) * a.ow * a.c;
  for (int64_t q = 0; q < a.ow; ++q) ConvPixel(a, img, out_row, p, q, 0);
}

// Source lines a row kernel prefetches into L2 for the next output row: rows [r_lo, r_hi] and
// columns [col_lo, col_hi) of the image at `base` (laid out as the source); none where base is
// null. The prefetch loops are written out where they run: GCC 12 at -O3 dropped the calls of
// a helper that did nothing but prefetch, finding it free of side effects.
struct NextSource {
  const float* base = nullptr;
  int64_t r_lo = 0, r_hi = -1, col_lo = 0, col_hi = 0;
};

// Register blocks of P output columns of output row p, image img: channels [c_lo, c_hi)
// (whole register-wide blocks) and, with `tail`, the rest (a half-register block, or
// tail_pixel(k, first channel) for each column k). Source columns [col0, col0 + span) of the
// row's source rows; where they run past the input's edges, those columns read zeros. Before
// each cache line's worth of channels, `next`'s lines of those channels are prefetched. With
// R = 2, rows p and p + 1 (ConvBlockPair: a square window, vertical stride 1; the second row's
// outputs at out + layout.row_step).
template <int64_t KW, int64_t S, int64_t P, int64_t R = 1, typename TailPixel>
void BlockColumns(const ConvArgs& a, const Image& img, int64_t p, int64_t col0,
                  const float* taps, float* out, const BlockLayout& layout, const float* bias,
                  int64_t c_lo, int64_t c_hi, bool tail, const TailPixel& tail_pixel,
                  const NextSource& next = NextSource{}) {
  constexpr int64_t kSpan = (P - 1) * S + KW;
  const int64_t c = a.c, w = a.w;
  const int64_t full_c = c / kLanes * kLanes;
  static_assert(R == 1 || (R == 2 && KW < kMaxRows));
  const int64_t nrows = a.rows.count[p];
  const int64_t* row_tap = a.rows.tap.data() + p * a.kh;
  const int64_t* row_src = a.rows.src.data() + p * a.kh;
  const float* src_n = img.base;
  int64_t row_at[kMaxRows];  // nrows <= kh <= kMaxRows for the geometries with blocks
  // A pair's source rows: its first row's window from s0 (which may start above the input)
  // and the row after it, those inside the input (r in [r_lo, r_hi]).
  const int64_t s0 = row_src[0] - row_tap[0];
  const int64_t r_lo = R == 1 ? 0 : std::max<int64_t>(0, -s0);
  const int64_t r_hi = R == 1 ? nrows - 1 : std::min<int64_t>(KW, a.h - 1 - s0);
  for (int64_t r = r_lo; r <= r_hi; ++r) row_at[r] = img.Index(R == 1 ? row_src[r] : s0 + r);
  // Streamed outputs a whole line at a time where a register is half a line (see BlockLayout):
  // where every pixel starts a line, c_lo and c_hi do too (tiles of kTile channels, or all of
  // them), so the blocks come in pairs that fill lines.
  float stage[R * P * kLanes];
  const bool staged = kLanes < kLineFloats && layout.stream && c % kLineFloats == 0;
  // The register block of channels from c0, as wide as V (the type of `width`).
  auto block = [&](auto width, const auto& source, int64_t c0) {
    using V = decltype(width);
    BlockLayout at = layout;
    if (staged) at.stage = stage, at.second_half = (c0 - c_lo) / kLanes % 2 == 1;
    if constexpr (R == 1) {
      ConvBlock<V, KW, S, P>(source, taps + c0, out + c0, row_tap, nrows, at,
                             bias ? bias + c0 : nullptr, a.act);
    } else {
      ConvBlockPair<V, KW, S, P>(source, taps + c0, out + c0, r_lo, r_hi, at,
                                 bias ? bias + c0 : nullptr, a.act);
    }
  };
  auto blocks = [&](const auto& source_at) {
    for (int64_t c0 = c_lo; c0 < c_hi; c0 += kLanes) {
      if (next.base != nullptr && (c0 - c_lo) % kLineFloats == 0) {
        // this line of the next row's pixels (with the last, the tail's: up to c)
        const int64_t k_end = tail && c0 + kLineFloats >= c_hi ? c : c0 + 1;
        for (int64_t r = next.r_lo; r <= next.r_hi; ++r) {
          for (int64_t col = next.col_lo; col < next.col_hi; ++col) {
            for (int64_t k = c0; k < k_end; k += kLineFloats) {
              __builtin_prefetch(next.base + (r * w + col) * c + k, 0, 1);
            }
          }
        }
      }
      block(Vec{}, source_at(c0), c0);
    }
    if (!tail || full_c == c) return;
    if (c - full_c == kHalfLanes) {
      block(Half{}, source_at(full_c), full_c);
    } else {
      for (int64_t k = 0; k < P; ++k) tail_pixel(k, full_c);
    }
  };
  if (col0 >= 0 && col0 + kSpan <= w) {
    blocks([&](int64_t c0) { return InsideSource{src_n + c0, row_at, w, c, col0}; });
    return;
  }
  const int64_t m_lo = std::max<int64_t>(0, -col0), m_hi = std::min(kSpan, w - col0);
  blocks([&](int64_t c0) {
    return ClippedSource{src_n + c0, row_at, w, c, col0, m_lo, m_hi};
  });
}

// The output block a register block prefetches for writing: `pixels` columns from `out`, `width`
// channels each.
struct Ahead {
  float* out = nullptr;
  int64_t pixels = 0, width = 0;
};

// Output columns [q, q + P) of row (b, p) of a forward, undilated window of KW columns at
// stride S, channels [c_lo, c_hi) (whole register-wide blocks) and, with `tail`, the channels
// after the last whole block. Where the block's source columns run past the input's edges,
// those columns read zeros. Prefetches, for those channels, the source the next output row
// will need (a row ahead: the rows' own chunk of work runs on this thread), into L2: a
// block's burst of prefetches into L1 waits on L1's few outstanding misses (on a Zen 4, single
// thread, out of cache: 16-37% slower than into L2, most at stride 2, the same in cache); and
// the output block `ahead`: the hardware prefetchers alone leave this loop waiting on memory.
// With R = 2, rows p and p + 1 (see BlockColumns), and the source of the two rows after them.
template <int64_t KW, int64_t S, int64_t P, int64_t R = 1>
void ConvColumns(const ConvArgs& a, const Image& img, int64_t b, int64_t p, int64_t q,
                 const Ahead& ahead, int64_t c_lo, int64_t c_hi, bool tail) {
  const int64_t c = a.c, w = a.w;
  const int64_t last = p + R - 1;  // the last output row
  const int64_t nrows = a.rows.count[last];
  const int64_t* row_src = a.rows.src.data() + last * a.kh;
  float* out_row = a.out + (b * a.oh + p) * a.ow * c;
  // The source rows the next output rows read and these do not (the next image's first rows
  // after the last row), the columns this block covers that the previous one did not.
  NextSource next;
  int64_t next_b = b, next_p = p + R;
  if (next_p == a.oh) next_b = b + 1, next_p = 0;
  if (next_b < a.n && nrows > 0 && a.rows.count[next_p] > 0) {
    const int64_t* next_src = a.rows.src.data() + next_p * a.kh;
    next.base = a.src + next_b * a.h * w * c;
    next.r_hi = std::min(next_src[a.rows.count[next_p] - 1] + R - 1, a.h - 1);
    next.r_lo = next_p == 0 ? next_src[0] : std::max(next_src[0], row_src[nrows - 1] + 1);
    next.col_lo = std::clamp<int64_t>(q * S - a.col_low, 0, w);
    next.col_hi = q + P >= a.ow ? w : std::clamp<int64_t>((q + P) * S - a.col_low, 0, w);
  }
  // At stride 1, all at once, first. At stride 2 (twice the source rows per output row, whole
  // rows of channels per block: a burst of hundreds of prefetches, and the loads behind them
  // waited) one line's worth of channels at a time, each before its blocks (BlockColumns): on
  // a Zen 4 at batch 32, mobilenet_v2's four stride-2 layers took 28-48% less time so; the
  // three models' inference at batch 32 and 1 the same within 2% (one process, alternated).
  if constexpr (S != 2) {
    if (next.base != nullptr) {
      for (int64_t r = next.r_lo; r <= next.r_hi; ++r) {
        for (int64_t col = next.col_lo; col < next.col_hi; ++col) {
          for (int64_t k = c_lo; k < (tail ? c : c_hi); k += kLineFloats) {
            __builtin_prefetch(next.base + (r * w + col) * c + k, 0, 1);
          }
        }
      }
    }
    next.base = nullptr;
  }
  // The output block after this one, for writing.
  for (int64_t m = 0; m < ahead.pixels; ++m) {
    for (int64_t k = 0; k < ahead.width; k += kLineFloats) {
      __builtin_prefetch(ahead.out + m * c + k, 1, 3);
    }
  }
  BlockColumns<KW, S, P, R>(a, img, p, q * S - a.col_low, a.taps, out_row + q * c,
                            BlockLayout{KW * c, c, c, a.stream, a.ow * c}, a.bias, c_lo, c_hi,
                            tail,
                            [&](int64_t k, int64_t c_from) {
                              for (int64_t i = 0; i < R; ++i) {
                                ConvPixel(a, img, out_row + i * a.ow * c, p + i, q + k, c_from);
                              }
                            },
                            next);
}

// A row of ow >= kFewPixels output columns cut into `count` register blocks of kFewPixels to
// kPixels columns, as even as can be (the first ow % count one column wider): block i starts
// at Start(i). Blocks that tile the row exactly compute no column twice (14 = 7 + 7, not
// 8 + 4 + 4 with two columns recomputed).
struct RowBlocks {
  int64_t count, base, extra;
  explicit RowBlocks(int64_t ow)
      : count((ow + kPixels - 1) / kPixels),
        base(count ? ow / count : 0),
        extra(count ? ow % count : 0) {}
  int64_t Start(int64_t i) const { return i * base + std::min(i, extra); }
  int64_t Width(int64_t i) const { return base + (i < extra); }
};

// ConvColumns for a block `width` (kFewPixels to kPixels) columns wide.
template <int64_t KW, int64_t S, int64_t R>
void ConvBlockOf(int64_t width, const ConvArgs& a, const Image& img, int64_t b, int64_t p,
                 int64_t q, const Ahead& ahead, int64_t c_lo, int64_t c_hi, bool tail) {
  switch (width) {
    case 4: return ConvColumns<KW, S, 4, R>(a, img, b, p, q, ahead, c_lo, c_hi, tail);
    case 5: return ConvColumns<KW, S, 5, R>(a, img, b, p, q, ahead, c_lo, c_hi, tail);
    case 6: return ConvColumns<KW, S, 6, R>(a, img, b, p, q, ahead, c_lo, c_hi, tail);
    case 7: return ConvColumns<KW, S, 7, R>(a, img, b, p, q, ahead, c_lo, c_hi, tail);
    default: return ConvColumns<KW, S, 8, R>(a, img, b, p, q, ahead, c_lo, c_hi, tail);
  }
}

// Whether the forward loop prefetches each register block's successor for writing. Not on AMD
// CPUs: on a Zen 4 (EPYC family 25, model 17) every mobilenet_v2 depthwise layer at batch 32
// took 2-26% less time at the median without it (one process, the two alternated).
bool PrefetchOutput() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = [] {
    __builtin_cpu_init();
    return !__builtin_cpu_is("amd");
  }();
  return yes;
#else
  return true;
#endif
}

// Output row (b, p) of a forward, undilated window of KW columns at stride S: blocks of 4 to
// 8 columns that tile the row exactly (RowBlocks). At stride 1 on rows of more than two
// blocks, one tile of kTile channels at a time, so the rows' tile stays in L1 across the
// blocks; otherwise each block takes every channel, so the block reads its source rows'
// columns and writes its output columns in order (on a Zen 4 at batch 32: 576 channels at
// 14x14 and 960 at 7x7 took 9-32% less time so, 384 at 14x14 the same within noise; at
// stride 2, where a block's span shares one column with the next, 56x56 and 28x28 inputs 5-9%
// less). Where PrefetchOutput(), each block prefetches the output of the
// next (the next tile's first block after the last; the next row's after the last tile's).
// Rows narrower than kFewPixels go column by column. With R = 2, rows p and p + 1 of a square
// window at vertical stride 1, each block both rows (ConvBlockPair).
template <int64_t KW, int64_t S, int64_t R = 1>
void ConvRow(const ConvArgs& a, const Image& img, int64_t b, int64_t p) {
  const int64_t ow = a.ow, c = a.c;
  if (ow < kFewPixels) {
    for (int64_t i = 0; i < R; ++i) ConvRowColumns(a, img, b, p + i);
    return;
  }
  const RowBlocks blocks(ow);
  const int64_t full_c = c / kLanes * kLanes;
  const int64_t tile = S == 1 && blocks.count > 2 ? kTile : std::max(full_c, kLanes);
  // The channels of the tile from c_lo: up to `tile`, the last one to c (a tail included).
  auto tile_end = [&](int64_t c_lo) { return std::min(c_lo + tile, full_c); };
  auto tile_width = [&](int64_t c_lo) {
    return (tile_end(c_lo) == full_c ? c : tile_end(c_lo)) - c_lo;
  };
  float* out_row = a.out + (b * a.oh + p) * ow * c;
  const bool last_row = b == a.n - 1 && p + R == a.oh;
  const bool prefetch = PrefetchOutput();
  for (int64_t c_lo = 0; c_lo < full_c || (c_lo == 0 && full_c == 0); c_lo += tile) {
    const int64_t c_hi = tile_end(c_lo);
    const bool tail = c_hi == full_c;
    for (int64_t i = 0; i < blocks.count; ++i) {
      const int64_t q = blocks.Start(i);
      Ahead ahead;
      if (prefetch) {
        if (i + 1 < blocks.count) {
          ahead = {out_row + blocks.Start(i + 1) * c + c_lo, blocks.Width(i + 1),
                   tile_width(c_lo)};
        } else if (!tail) {
          ahead = {out_row + c_hi, blocks.Width(0), tile_width(c_hi)};
        } else if (!last_row) {
          ahead = {out_row + R * ow * c, blocks.Width(0), tile_width(0)};
        }
      }
      ConvBlockOf<KW, S, R>(blocks.Width(i), a, img, b, p, q, ahead, c_lo, c_hi, tail);
    }
  }
}

// The input gradient of a stride-2, undilated window of KW columns (the transposed window):
// input column s = 2v + parity receives, from output-gradient column v + o, the taps j with
// (parity + low - j) = 2o. For one parity that is a stride-1 window of NT taps (j from the
// largest down, 2 apart) over consecutive gradient columns, written to every other input
// column: the forward register blocks with that layout. Columns [v0, v0 + P) of one parity
// of row (b, p); a.src is the output gradient, a.out the input gradient.
template <int64_t NT, int64_t P>
void TransposedColumns(const ConvArgs& a, const Image& img, int64_t b, int64_t p,
                       int64_t parity, int64_t v0, int64_t j_max, int64_t o_min, int64_t c_lo,
                       int64_t c_hi, bool tail) {
  const int64_t c = a.c;
  float* out_row = a.out + (b * a.oh + p) * a.ow * c;
  BlockColumns<NT, 1, P>(a, img, p, v0 + o_min, a.taps + j_max * c,
                         out_row + (2 * v0 + parity) * c,
                         BlockLayout{a.kw * c, -2 * c, 2 * c, a.stream}, nullptr, c_lo, c_hi,
                         tail, [&](int64_t k, int64_t c_from) {
                           ConvPixel(a, img, out_row, p, 2 * (v0 + k) + parity, c_from);
                         });
}

// Columns [v, v + kPixels) of one parity (fewer at its end: 4-column blocks, the last shifted
// back), all channels.
template <int64_t NT>
void TransposedParityBlock(const ConvArgs& a, const Image& img, int64_t b, int64_t p,
                           int64_t parity, int64_t count, int64_t v, int64_t j_max,
                           int64_t o_min) {
  const int64_t full_c = a.c / kLanes * kLanes;
  if (count - v >= kPixels) {
    TransposedColumns<NT, kPixels>(a, img, b, p, parity, v, j_max, o_min, 0, full_c, true);
    return;
  }
  for (int64_t u = v; u < count; u += kFewPixels) {
    TransposedColumns<NT, kFewPixels>(a, img, b, p, parity, std::min(u, count - kFewPixels),
                                      j_max, o_min, 0, full_c, true);
  }
}

// Input-gradient row (b, p) of a stride-2 window KW columns wide: blocks of kPixels columns
// of each parity in turn, so the row is written in order (it is 4x the output gradient, and
// writing it is most of the cost), the block after next prefetched for writing. A parity with
// fewer than kFewPixels columns, or more than 3 taps, goes column by column.
template <int64_t KW>
void TransposedRow2(const ConvArgs& a, const Image& img, int64_t b, int64_t p) {
  float* out_row = a.out + (b * a.oh + p) * a.ow * a.c;
  int64_t count[2], j_max[2], nt[2], o_min[2];
  for (int64_t parity = 0; parity < 2; ++parity) {
    count[parity] = (a.ow - parity + 1) / 2;
    j_max[parity] = -1, nt[parity] = 0;
    for (int64_t j = 0; j < KW; ++j) {
      if ((parity + a.col_low - j) % 2 == 0) j_max[parity] = j, ++nt[parity];
    }
    o_min[parity] = nt[parity] ? (parity + a.col_low - j_max[parity]) / 2 : 0;
    if (count[parity] < kFewPixels || nt[parity] < 1 || nt[parity] > 3) {
      for (int64_t q = parity; q < a.ow; q += 2) ConvPixel(a, img, out_row, p, q, 0);
      count[parity] = 0;
    }
  }
  const int64_t most = std::max(count[0], count[1]);
  for (int64_t v = 0; v < most; v += kPixels) {
    const int64_t ahead = a.stream ? 0 : std::min(2 * (v + 2 * kPixels), a.ow);
    for (int64_t k = std::min(2 * (v + kPixels), a.ow) * a.c; k < ahead * a.c; k += kLineFloats) {
      __builtin_prefetch(out_row + k, 1, 3);
    }
    for (int64_t parity = 0; parity < 2; ++parity) {
      if (v >= count[parity]) continue;
      switch (nt[parity]) {
        case 1:
          TransposedParityBlock<1>(a, img, b, p, parity, count[parity], v, j_max[parity],
                                   o_min[parity]);
          break;
        case 2:
          TransposedParityBlock<2>(a, img, b, p, parity, count[parity], v, j_max[parity],
                                   o_min[parity]);
          break;
        default:
          TransposedParityBlock<3>(a, img, b, p, parity, count[parity], v, j_max[parity],
                                   o_min[parity]);
      }
    }
  }
}

using RowFn = void (*)(const ConvArgs&, const Image&, int64_t, int64_t);

// The row kernel for a geometry: register blocks for undilated windows at most kMaxRows high,
// forward 3 or 5 columns wide at stride 1 or 2, transposed 3 or 5 wide at stride 2; else column
// by column. (Transposed, 3 wide, the blocks of 1 and 2 taps were no faster than column by
// column while both wrote through the caches; with the output streamed, at batch 32 on a Zen
// 4, two runs of each build, one after the other: the input gradient of 96 channels at
// 112x112 took 5-32% less time, 144 at 56x56 20-29% less, 192 at 28x28 0-13% more, 576 at
// 14x14 from 11% more to 33% less, 240 at 28x28 15-16% more.)
RowFn PickRow(int64_t kh, int64_t kw, int64_t sw, int64_t dw, bool transposed) {
  if (transposed && dw == 1 && sw == 2 && kh <= kMaxRows && (kw == 3 || kw == 5)) {
    return kw == 3 ? TransposedRow2<3> : TransposedRow2<5>;
  }
  if (!transposed && dw == 1 && kh <= kMaxRows) {
    if (kw == 3 && sw == 1) return ConvRow<3, 1>;
    if (kw == 3 && sw == 2) return ConvRow<3, 2>;
    if (kw == 5 && sw == 1) return ConvRow<5, 1>;
    if (kw == 5 && sw == 2) return ConvRow<5, 2>;
  }
  return ConvRowColumns;
}

// The kernel for two output rows at a time (ConvRow with R = 2), where rows go in pairs: a
// forward, undilated 3x3 window at stride 1, on rows of one or two register blocks (the
// small, deep layers, whose source rows' channels overflow L1: at batch 32 on a Zen 4,
// alternated with single rows in two runs, mobilenet_v2's 384 and 576 channels at 14x14 took
// 6-10% less time in pairs, 960 at 7x7 from 3% more to 8% less, and in a loop over that one
// layer 18-28% less; wider rows, whose source comes from memory, the same or slower; the
// three models' inference the same within noise). Else null.
RowFn PickPair(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
               bool transposed, int64_t ow) {
  const bool pairs = !transposed && kh == 3 && kw == 3 && sh == 1 && sw == 1 && dh == 1 &&
                     dw == 1 && ow <= 2 * kPixels;
  return pairs ? ConvRow<3, 1, 2> : nullptr;
}

// Source row `row` (w pixels of c channels) through the prologue into `dst`.
void PrologueRow(const Prologue& pre, const float* row, float* dst, int64_t w, int64_t c) {
  const int64_t full_c = c / kLanes * kLanes;
  float scale[kLanes] = {}, bias[kLanes] = {};  // the channels after the last whole block
  for (int64_t k = full_c; k < c; ++k) {
    scale[k - full_c] = pre.scale[k];
    bias[k - full_c] = pre.bias[k];
  }
  for (int64_t px = 0; px < w; ++px, row += c, dst += c) {
    int64_t c0 = 0;
    for (; c0 < full_c; c0 += kLanes) {
      Store(dst + c0, Epilogue<Vec>(Load(row + c0) * Load(pre.scale + c0), pre.bias + c0, pre.act));
    }
    if (c0 < c) {
      const Vec v = LoadTail(row + c0, c - c0) * Load(scale);
      StoreTail(dst + c0, Epilogue<Vec>(v, bias, pre.act), c - c0);
    }
  }
}

// Half the size of the largest cache the first CPU reports (the last level, shared by the cores
// of one die or complex, and on a cloud machine with other tenants), in bytes; half of 32 MiB
// where Linux's sysfs does not say. A forward pass that moves more streams its output.
int64_t StreamAboveBytes() {
  static const int64_t bytes = [] {
    int64_t most = 0;
    for (int i = 0; i < 8; ++i) {
      char path[64];
      std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
      FILE* f = std::fopen(path, "r");
      if (f == nullptr) continue;
      long long size = 0;
      char unit = 0;
      if (std::fscanf(f, "%lld%c", &size, &unit) >= 1) {
        most = std::max<int64_t>(most, size * (unit == 'K' ? 1 << 10 : unit == 'M' ? 1 << 20 : 1));
      }
      std::fclose(f);
    }
    return (most > 0 ? most : int64_t{32} << 20) / 2;
  }();
  return bytes;
}

ffi::Error RunConv(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& src,
                   const ffi::Buffer<ffi::F32>& taps, const float* bias, int64_t bias_len,
                   int64_t act, ffi::Result<ffi::Buffer<ffi::F32>>& out, int64_t kh, int64_t kw,
                   int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t ph, int64_t pw,
                   bool transposed, const Prologue* pre = nullptr) {
  auto sd = src.dimensions();
  auto od = out->dimensions();
  if (sd.size() != 4 || od.size() != 4 || taps.dimensions().size() != 2) {
    return ffi::Error::InvalidArgument("sepnets_dw_conv: expected NHWC src/out and (K*K, C) taps");
  }
  ConvArgs a{src.typed_data(), taps.typed_data(), out->typed_data(), sd[0], sd[1], sd[2], sd[3],
             od[1], od[2], kh, kw};
  if (od[0] != a.n || od[3] != a.c || taps.dimensions()[0] != kh * kw ||
      taps.dimensions()[1] != a.c || (bias != nullptr && bias_len != a.c) || act < kNone ||
      act > kSwish) {
    return ffi::Error::InvalidArgument("sepnets_dw_conv: shapes or activation do not agree");
  }
  a.bias = bias;
  a.act = act;
  a.col_low = pw;
  // A forward pass whose source and output together fill more than half the last-level cache
  // writes its output past the caches: the output would not stay there for the next layer
  // either, and a non-temporal store does not first read the line it replaces (a third less
  // memory traffic). At batch 32 on a Zen 4 (32 MiB L3), mobilenet_v2's stride-1 layers took
  // 9-32% less time streaming, its stride-2 layers the same; with the threshold at half the
  // cache rather than all of it, 384 and 576 channels at 14x14 a further 21-22% less and 192 at
  // 28x28, stride 2, 9% less; the three models' inference the same within noise either way
  // (one process, alternated). The same holds for the input gradient at stride 2 (the
  // transposed window, whose output is 4x its source): the input gradients of
  // mobilenet_v2's and efficientnet_b0's stride-2 layers at batch 32 took 25-56% less time
  // streaming (3x3, then column by column, and 5x5 register blocks alike; each build run
  // once, one after the other), 576 channels at 14x14 the same. Needs whole registers of
  // channels and an aligned output.
  const int64_t moved = (a.n * a.h * a.w + a.n * a.oh * a.ow) * a.c * int64_t{sizeof(float)};
  a.stream = a.c % kLanes == 0 &&
             reinterpret_cast<uintptr_t>(a.out) % kVecBytes == 0 && moved > StreamAboveBytes();
  a.rows = TapTable(a.oh, a.h, kh, sh, dh, ph, transposed);
  a.cols = TapTable(a.ow, a.w, kw, sw, dw, pw, transposed);
  const RowFn row_fn = PickRow(kh, kw, sw, dw, transposed);
  const RowFn pair_fn = PickPair(kh, kw, sh, sw, dh, dw, transposed, a.ow);
  // Contiguous runs of output rows, a few per thread: a thread's next row reuses the source
  // rows in its cache, and is the one its prefetches are for.
  const int64_t rows = a.n * a.oh;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t chunks = std::min<int64_t>(rows, 8 * threads);
  if (pre != nullptr) {  // runs of at least 4 windows' height where that leaves each thread one:
    // a run's first row passes kh source rows through the prologue, the others 1 or 2
    chunks = std::min(chunks, std::max(std::min(threads, rows), rows / (4 * kh)));
  }
  const int64_t image = a.h * a.w * a.c;
  // With a prologue, each run keeps the source rows of its current window, through the
  // prologue, in a ring of as many rows as a window spans (source row s of image b in slot
  // s % ring): each row is transformed once per run, and read from cache by the row kernel.
  // (one row more where rows go in pairs)
  const int64_t ring = (kh - 1) * dh + 1 + (pair_fn != nullptr);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    const int64_t first = rows * chunk / chunks, last = rows * (chunk + 1) / chunks;
    // How many output rows from `row` the next call computes: two of one image in this run,
    // where there is a kernel for pairs, else one.
    auto count = [&](int64_t row) -> int64_t {
      const int64_t p = row % a.oh;
      return pair_fn != nullptr && row + 1 < last && p + 1 < a.oh && a.rows.count[p] > 0 &&
                     a.rows.count[p + 1] > 0
                 ? 2
                 : 1;
    };
    if (pre == nullptr) {
      for (int64_t row = first, n; row < last; row += n) {
        const int64_t b = row / a.oh;
        n = count(row);
        (n == 2 ? pair_fn : row_fn)(a, Image{a.src + b * image}, b, row % a.oh);
      }
      return;
    }
    std::vector<float> rows_in(ring * a.w * a.c);
    std::vector<int64_t> held(ring, -1);  // b * h + s of the row in each slot
    for (int64_t row = first, n; row < last; row += n) {
      const int64_t b = row / a.oh, p = row % a.oh;
      n = count(row);
      for (int64_t i = p; i < p + n; ++i) {
        for (int64_t k = 0; k < a.rows.count[i]; ++k) {
          const int64_t s = a.rows.src[i * kh + k], slot = s % ring;
          if (held[slot] == b * a.h + s) continue;
          held[slot] = b * a.h + s;
          PrologueRow(*pre, a.src + held[slot] * a.w * a.c, rows_in.data() + slot * a.w * a.c,
                      a.w, a.c);
        }
      }
      (n == 2 ? pair_fn : row_fn)(a, Image{rows_in.data(), ring}, b, p);
    }
  });
  return ffi::Error::Success();
}

ffi::Error DwConv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> src, ffi::Buffer<ffi::F32> taps,
                  ffi::ResultBuffer<ffi::F32> out, int64_t kh, int64_t kw, int64_t sh,
                  int64_t sw, int64_t dh, int64_t dw, int64_t ph, int64_t pw,
                  int64_t transposed) {
  return RunConv(pool, src, taps, nullptr, 0, kNone, out, kh, kw, sh, sw, dh, dw, ph, pw,
                 transposed != 0);
}

// The forward convolution with the epilogue act(sum + bias) (no transposed form: inference).
ffi::Error DwConvBiasAct(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> src,
                         ffi::Buffer<ffi::F32> taps, ffi::Buffer<ffi::F32> bias,
                         ffi::ResultBuffer<ffi::F32> out, int64_t kh, int64_t kw, int64_t sh,
                         int64_t sw, int64_t dh, int64_t dw, int64_t ph, int64_t pw,
                         int64_t act) {
  if (bias.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("sepnets_dw_conv_bias_act: expected a (C,) bias");
  }
  return RunConv(pool, src, taps, bias.typed_data(), bias.dimensions()[0], act, out, kh, kw, sh,
                 sw, dh, dw, ph, pw, false);
}

// The same with the prologue act_in(src * in_scale + in_bias) on its input (the eval-mode
// BatchNorm and activation of the layer before): out = act(conv(act_in(src * in_scale +
// in_bias)) + bias), zero padding applied after the prologue.
ffi::Error DwActConvBiasAct(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> src,
                            ffi::Buffer<ffi::F32> taps, ffi::Buffer<ffi::F32> bias,
                            ffi::Buffer<ffi::F32> in_scale, ffi::Buffer<ffi::F32> in_bias,
                            ffi::ResultBuffer<ffi::F32> out, int64_t kh, int64_t kw, int64_t sh,
                            int64_t sw, int64_t dh, int64_t dw, int64_t ph, int64_t pw,
                            int64_t act, int64_t act_in) {
  const int64_t c = src.dimensions().size() == 4 ? src.dimensions()[3] : -1;
  if (bias.dimensions().size() != 1 || in_scale.dimensions().size() != 1 ||
      in_bias.dimensions().size() != 1 || in_scale.dimensions()[0] != c ||
      in_bias.dimensions()[0] != c || act_in < kNone || act_in > kSwish) {
    return ffi::Error::InvalidArgument(
        "sepnets_dw_act_conv_bias_act: expected (C,) bias, in_scale and in_bias, a known act_in");
  }
  const Prologue pre{in_scale.typed_data(), in_bias.typed_data(), act_in};
  return RunConv(pool, src, taps, bias.typed_data(), bias.dimensions()[0], act, out, kh, kw, sh,
                 sw, dh, dw, ph, pw, false, &pre);
}

// Adds output row p's contribution to the tap gradient `acc` (K*K, C), column by column, with
// only the valid taps (any geometry; used for dilated windows and kernels other than 3x3, 5x5).
void TapGradColumns(const float* x_n, const float* g_row, float* acc, int64_t w, int64_t c,
                    int64_t kh, int64_t kw, const Taps& rows, const Taps& cols, int64_t p,
                    int64_t ow) {
  for (int64_t r = 0; r < rows.count[p]; ++r) {
    const float* x_row = x_n + rows.src[p * kh + r] * w * c;
    const int64_t i = rows.tap[p * kh + r];
    for (int64_t q = 0; q < ow; ++q) {
      const float* g_px = g_row + q * c;
      for (int64_t k = 0; k < cols.count[q]; ++k) {
        const float* x_px = x_row + cols.src[q * kw + k] * c;
        float* a = acc + (i * kw + cols.tap[q * kw + k]) * c;
        for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
          const int64_t width = std::min(kLanes, c - c0);
          if (width == kLanes) {
            Store(a + c0, Load(a + c0) + Load(x_px + c0) * Load(g_px + c0));
          } else {
            StoreTail(a + c0, LoadTail(a + c0, width) +
                                  LoadTail(x_px + c0, width) * LoadTail(g_px + c0, width), width);
          }
        }
      }
    }
  }
}

// Where TapGradRows reads: x (n, h, w, c) and g (n, oh, ow, c); the row window's stride and
// low pad, the column window's low pad, and the register blocks of columns that tile an
// output row, or (by_column) one column at a time.
struct TapGradArgs {
  const float* x;
  const float* g;
  int64_t n, h, w, c, oh, ow, sh, ph, pw;
  RowBlocks blocks;
  bool by_column;
};

// Adds output columns [q0, q0 + P) of one output row to a channel block's tap sums for kernel
// rows [I0, I1): sum[(i - I0)*KW + j] += x_row[i][(q*S + j - pw) * c] * g_row[q * c], for
// those kernel rows i with row_ok[i]; x_row and g_row are offset to the block's first channel.
// The block's P gradient vectors are loaded once, and each source vector of its span once per
// kernel row and multiplied into every tap it meets (as the forward's ConvBlock, the roles of
// taps and outputs swapped): per output column KW * (I1 - I0) multiply-adds and about
// (I1 - I0) * S + 1 loads. A source vector that meets one tap only is left to GCC, which folds
// its load into the multiply-add; so with P = 1 (column by column) each multiply-add reads its
// source from memory, one instruction. Rows up to kTapBlockedWidth columns go in blocks of 4
// to 8 columns, wider ones column by column. Measured at batch 32, alternated in one process:
// on a Zen 4 (AVX-512), column by column took 54% more time than blocks at 960 channels 7x7,
// 66% at 1152 7x7 5x5, 29% at 192 28x28, but 5-9% less on the layers of 56 and 112 columns
// (32 at 112x112, 96 at 112x112 stride 2, 144 at 56x56); on a Zen 3 (AVX2), blocks took
// 10-40% more time than column by column on rows of 28 columns and wider (also with blocks of
// at most 4 columns), about the same on rows of 14 and 7 at stride 1, and at stride 2 11-13%
// more on rows of 14 (192 and 240 channels at 28x28), the same on rows of 7. The loop runs
// over the span's columns, then the kernel rows, so all the block's sums advance together,
// not KW at a time. With kClip, the span's columns outside the input are skipped. Inlined,
// so the sums stay in registers.
template <typename V, int64_t I0, int64_t I1, int64_t KW, int64_t S, int64_t P, bool kClip,
          bool kAllRows>
__attribute__((always_inline)) inline void AddTapBlock(V* sum, const float* const* x_row,
                                                       const bool* row_ok, const float* g_row,
                                                       int64_t q0, const TapGradArgs& a) {
  constexpr int64_t kSpan = (P - 1) * S + KW;
  const int64_t c = a.c, col0 = q0 * S - a.pw;
  const int64_t m_lo = kClip ? std::max<int64_t>(0, -col0) : 0;
  const int64_t m_hi = kClip ? std::min(kSpan, a.w - col0) : kSpan;
  V gv[P];
#pragma GCC unroll 16
  for (int64_t k = 0; k < P; ++k) gv[k] = Load<V>(g_row + (q0 + k) * c);
  const float* xr[I1];
#pragma GCC unroll 8
  for (int64_t i = I0; i < I1; ++i) xr[i] = x_row[i] + col0 * c;
#pragma GCC unroll 64
  for (int64_t m = 0; m < kSpan; ++m) {
    if (kClip && (m < m_lo || m >= m_hi)) continue;
    const int64_t at = m * c;
#pragma GCC unroll 8
    for (int64_t i = I0; i < I1; ++i) {
      if (!kAllRows && !row_ok[i]) continue;
      V v = Load<V>(xr[i] + at);
      int64_t uses = 0;  // a constant once the loops are unrolled
#pragma GCC unroll 8
      for (int64_t j = 0; j < KW; ++j) uses += m >= j && (m - j) % S == 0 && (m - j) / S < P;
      if (uses > 1) PinRegister(v);
#pragma GCC unroll 8
      for (int64_t j = 0; j < KW; ++j) {
        const int64_t k = (m - j) / S;
        if (m >= j && (m - j) % S == 0 && k < P) sum[(i - I0) * KW + j] += v * gv[k];
      }
    }
  }
}

// AddTapBlock for a block `width` (kFewPixels to kPixels) columns wide.
template <typename V, int64_t I0, int64_t I1, int64_t KW, int64_t S, bool kClip, bool kAllRows>
__attribute__((always_inline)) inline void AddTapBlockOf(int64_t width, V* sum,
                                                         const float* const* x_row,
                                                         const bool* row_ok, const float* g_row,
                                                         int64_t q0, const TapGradArgs& a) {
  switch (width) {
#define SEPNETS_TAP_BLOCK(P) \
  case P:                    \
    return AddTapBlock<V, I0, I1, KW, S, P, kClip, kAllRows>(sum, x_row, row_ok, g_row, q0, a);
    SEPNETS_TAP_BLOCK(4) SEPNETS_TAP_BLOCK(5) SEPNETS_TAP_BLOCK(6) SEPNETS_TAP_BLOCK(7)
#undef SEPNETS_TAP_BLOCK
    default:
      return AddTapBlock<V, I0, I1, KW, S, kPixels, kClip, kAllRows>(sum, x_row, row_ok, g_row,
                                                                     q0, a);
  }
}

// Adds one output row to a channel block's tap sums for kernel rows [I0, I1), in the register
// blocks that tile the row (a.blocks) or column by column (a.by_column), those whose span
// reaches past the input's edges clipped.
template <typename V, int64_t I0, int64_t I1, int64_t KW, int64_t S, bool kAllRows>
__attribute__((always_inline)) inline void AddTapRow(V* sum, const float* const* x_row,
                                                     const bool* row_ok, const float* g_row,
                                                     const TapGradArgs& a) {
  if (a.by_column) {
    for (int64_t q = 0; q < a.ow; ++q) {
      const int64_t col0 = q * S - a.pw;
      if (col0 >= 0 && col0 + KW <= a.w) {
        AddTapBlock<V, I0, I1, KW, S, 1, false, kAllRows>(sum, x_row, row_ok, g_row, q, a);
      } else {
        AddTapBlock<V, I0, I1, KW, S, 1, true, kAllRows>(sum, x_row, row_ok, g_row, q, a);
      }
    }
    return;
  }
  for (int64_t b = 0; b < a.blocks.count; ++b) {
    const int64_t q0 = a.blocks.Start(b), width = a.blocks.Width(b);
    const int64_t col0 = q0 * S - a.pw;
    if (col0 >= 0 && col0 + (width - 1) * S + KW <= a.w) {
      AddTapBlockOf<V, I0, I1, KW, S, false, kAllRows>(width, sum, x_row, row_ok, g_row, q0, a);
    } else {
      AddTapBlockOf<V, I0, I1, KW, S, true, kAllRows>(width, sum, x_row, row_ok, g_row, q0, a);
    }
  }
}

// The output rows a tap-gradient block walks with its sums in registers: `count` rows of
// one image, row k's gradient at g_row[k] and its source rows at x_row[k][i] (row_ok[k][i]:
// inside the input; all_rows[k]: all of them).
constexpr int64_t kMaxBand = 16;
struct TapBand {
  int64_t count = 0;
  const float* g_row[kMaxBand];
  const float* x_row[kMaxBand][kMaxRows];
  bool row_ok[kMaxBand][kMaxRows];
  bool all_rows[kMaxBand];
};

// Adds a band's rows to the tap gradient `acc` (K*K, C), channels [c0, c0 + V's width), kernel
// rows [I0, I1): those taps' sums are loaded from acc (or start from zero where `fresh`),
// carried in registers along the band's rows and stored back. (A 5x5 window's 25 sums, a
// block's gradient vectors and the source vector do not fit AVX-512's 32 registers together.)
template <typename V, int64_t I0, int64_t I1, int64_t KW, int64_t S>
inline void TapBlock(const TapGradArgs& a, const TapBand& band, int64_t c0, bool fresh,
                     float* acc) {
  constexpr int64_t kSums = (I1 - I0) * KW;
  float* at = acc + I0 * KW * a.c + c0;
  V sum[kSums];
#pragma GCC unroll 32
  for (int64_t t = 0; t < kSums; ++t) sum[t] = fresh ? V{} : Load<V>(at + t * a.c);
  for (int64_t k = 0; k < band.count; ++k) {
    const float* xr[I1];
    for (int64_t i = I0; i < I1; ++i) xr[i] = band.x_row[k][i] + c0;
    if (band.all_rows[k]) {
      AddTapRow<V, I0, I1, KW, S, true>(sum, xr, band.row_ok[k], band.g_row[k] + c0, a);
    } else {
      AddTapRow<V, I0, I1, KW, S, false>(sum, xr, band.row_ok[k], band.g_row[k] + c0, a);
    }
  }
#pragma GCC unroll 32
  for (int64_t t = 0; t < kSums; ++t) Store<V>(at + t * a.c, sum[t]);
}

// All KH kernel rows of a channel block: TapBlock over rows [0, 3), then [3, KH).
template <typename V, int64_t KH, int64_t KW, int64_t S>
inline void TapBlocks(const TapGradArgs& a, const TapBand& band, int64_t c0, bool fresh,
                      float* acc) {
  constexpr int64_t kSplit = KH < 3 ? KH : 3;
  TapBlock<V, 0, kSplit, KW, S>(a, band, c0, fresh, acc);
  if constexpr (KH > kSplit) TapBlock<V, kSplit, KH, KW, S>(a, band, c0, fresh, acc);
}

// Sums output rows [first, last) of all n * oh into the tap gradient `acc` (K*K, C; what it
// held before is overwritten, so it need not be zeroed), for an undilated KH x KW window at
// column stride S, in bands of rows: channel block by channel
// block, each block's sums in registers across the band (the edges' taps too). A band is a
// whole image where one image's x and gradient fit in kTapBandBytes and it has at most
// kMaxBand rows (the small late layers, whose rows are a few columns: loading and storing the
// sums once per row cost about as much as the row; 1152 channels at 7x7, 5x5, took 37% less
// time so, in one run each; with 1 MiB, 576 channels at 14x14 took 80% more), else one row.
// Before each cache line's worth of channels, that line of the pixels the next band reads and
// this one does not (its new source rows and its gradient rows) is prefetched into L2: with
// the hardware prefetchers alone this loop waited on memory (on a Zen 4, 2 threads, batch 32,
// 576 channels at 14x14 took 2.3x as long, 384 1.6x, 144 at 56x56 1.3x).
template <int64_t KH, int64_t KW, int64_t S>
void TapGradRows(const TapGradArgs& a, int64_t first, int64_t last, float* acc) {
  const int64_t c = a.c, w = a.w, h = a.h, oh = a.oh;
  const bool whole = oh <= kMaxBand && (h * w + oh * a.ow) * c * 4 <= kTapBandBytes;
  for (int64_t row = first, end; row < last; row = end) {
    const int64_t b = row / oh, p0 = row % oh;
    end = whole ? std::min(last, (b + 1) * oh) : row + 1;
    const bool fresh = row == first;  // acc holds nothing yet: the sums start from zero
    TapBand band;
    band.count = end - row;
    for (int64_t k = 0; k < band.count; ++k) {
      const int64_t p = p0 + k;
      band.g_row[k] = a.g + (row + k) * a.ow * c;
      band.all_rows[k] = true;
      for (int64_t i = 0; i < KH; ++i) {
        const int64_t s = p * a.sh + i - a.ph;
        band.row_ok[k][i] = s >= 0 && s < h;
        band.all_rows[k] = band.all_rows[k] && band.row_ok[k][i];
        band.x_row[k][i] = a.x + (b * h + (band.row_ok[k][i] ? s : 0)) * w * c;
      }
    }
    // The next band's new source rows [r_lo, r_hi] (all of its rows in the next image) and
    // its gradient rows.
    const bool next = end < a.n * oh;
    const int64_t nb = end / oh, np = end % oh;
    const int64_t np_last = whole ? oh - 1 : np;
    int64_t r_lo = std::max<int64_t>(0, np * a.sh - a.ph);
    const int64_t r_hi = std::min<int64_t>(h - 1, np_last * a.sh - a.ph + KH - 1);
    if (nb == b) r_lo = std::max(r_lo, (end - 1 - b * oh) * a.sh - a.ph + KH);
    const float* next_x = a.x + nb * h * w * c;
    const float* next_g = a.g + end * a.ow * c;
    const int64_t next_g_pixels = (np_last - np + 1) * a.ow;
    // The prefetch loops are written out here: GCC dropped them from a lambda (see NextSource).
    for (int64_t c0 = 0; c0 < c;) {
      if (next && c0 % kLineFloats == 0) {
        for (int64_t r = r_lo; r <= r_hi; ++r) {
          for (int64_t col = 0; col < w; ++col) {
            __builtin_prefetch(next_x + (r * w + col) * c + c0, 0, 1);
          }
        }
        for (int64_t q = 0; q < next_g_pixels; ++q) __builtin_prefetch(next_g + q * c + c0, 0, 1);
      }
      if (c0 + kLanes <= c) {
        TapBlocks<Vec, KH, KW, S>(a, band, c0, fresh, acc);
        c0 += kLanes;
      } else if (c - c0 >= kHalfLanes) {
        TapBlocks<Half, KH, KW, S>(a, band, c0, fresh, acc);
        c0 += kHalfLanes;
      } else {
        TapBlocks<float, KH, KW, S>(a, band, c0, fresh, acc);
        ++c0;
      }
    }
  }
}

using TapRowsFn = void (*)(const TapGradArgs&, int64_t, int64_t, float*);

// TapGradRows for the geometry, where there is one (undilated 3x3 or 5x5 at column stride 1
// or 2, output rows at least kFewPixels wide); null elsewhere.
TapRowsFn PickTapRows(int64_t kh, int64_t kw, int64_t sw, int64_t dh, int64_t dw, int64_t ow) {
  if (dh != 1 || dw != 1 || ow < kFewPixels) return nullptr;
  if (kh == 3 && kw == 3 && sw == 1) return TapGradRows<3, 3, 1>;
  if (kh == 3 && kw == 3 && sw == 2) return TapGradRows<3, 3, 2>;
  if (kh == 5 && kw == 5 && sw == 1) return TapGradRows<5, 5, 1>;
  if (kh == 5 && kw == 5 && sw == 2) return TapGradRows<5, 5, 2>;
  return nullptr;
}

ffi::Error DwTapGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> grad,
                     ffi::ResultBuffer<ffi::F32> out, int64_t kh, int64_t kw, int64_t sh,
                     int64_t sw, int64_t dh, int64_t dw, int64_t ph, int64_t pw) {
  auto xd = x.dimensions();
  auto gd = grad.dimensions();
  if (xd.size() != 4 || gd.size() != 4 || out->dimensions().size() != 2) {
    return ffi::Error::InvalidArgument("sepnets_dw_tap_grad: expected NHWC x/grad, (K*K, C) out");
  }
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3];
  const int64_t oh = gd[1], ow = gd[2], kk = kh * kw;
  if (gd[0] != n || gd[3] != c || out->dimensions()[0] != kk || out->dimensions()[1] != c) {
    return ffi::Error::InvalidArgument("sepnets_dw_tap_grad: shapes do not agree");
  }
  const Taps rows = TapTable(oh, h, kh, sh, dh, ph, false);
  const Taps cols = TapTable(ow, w, kw, sw, dw, pw, false);
  const float* xs = x.typed_data();
  const float* gs = grad.typed_data();
  float* o = out->typed_data();
  // Chunks of output rows, each summed into its own (K*K, C) partial; the partials are added
  // in chunk order, so the result does not depend on the thread count.
  const int64_t total = n * oh;
  const int64_t chunks = std::min<int64_t>(total, kTapChunks);
  if (chunks == 0) {
    std::fill(o, o + kk * c, 0.f);
    return ffi::Error::Success();
  }
  // The partials live in a buffer of the calling thread's, kept from call to call: a fresh
  // one per call (a megabyte at 960 channels, 3x3) was zeroed and page-faulted every time.
  thread_local std::vector<float> partial_buffer;
  if (partial_buffer.size() < static_cast<size_t>(chunks * kk * c)) {
    partial_buffer.resize(chunks * kk * c);
  }
  float* partial = partial_buffer.data();
  const TapGradArgs args{xs, gs, n, h, w, c, oh, ow, sh, ph, pw, RowBlocks(ow),
                         sw > 2 || ow > kTapBlockedWidth[sw - 1]};
  const TapRowsFn tap_rows = PickTapRows(kh, kw, sw, dh, dw, ow);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    float* acc = partial + chunk * kk * c;
    const int64_t first = total * chunk / chunks, last = total * (chunk + 1) / chunks;
    if (tap_rows != nullptr) {
      tap_rows(args, first, last, acc);
      return;
    }
    std::fill(acc, acc + kk * c, 0.f);
    for (int64_t row = first; row < last; ++row) {
      TapGradColumns(xs + row / oh * h * w * c, gs + row * ow * c, acc, w, c, kh, kw, rows, cols,
                     row % oh, ow);
    }
  });
  // The sum over chunks, in chunk order, in slices of the (K*K * C) taps run in parallel.
  const int64_t slice = 4096, slices = (kk * c + slice - 1) / slice;
  ParallelFor(pool, slices, [&](int64_t k_slice) {
    const int64_t lo = k_slice * slice, hi = std::min(kk * c, lo + slice);
    std::copy(partial + lo, partial + hi, o + lo);
    for (int64_t chunk = 1; chunk < chunks; ++chunk) {
      const float* part = partial + chunk * kk * c;
      for (int64_t k = lo; k < hi; ++k) o[k] += part[k];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// The window attributes every kernel takes, in its parameters' order.
template <typename Binding>
auto WithWindow(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("kh")
      .template Attr<int64_t>("kw")
      .template Attr<int64_t>("sh")
      .template Attr<int64_t>("sw")
      .template Attr<int64_t>("dh")
      .template Attr<int64_t>("dw")
      .template Attr<int64_t>("ph")
      .template Attr<int64_t>("pw");
}

using F32Buffer = ffi::Buffer<ffi::F32>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepnetsDwConv, DwConv,
                              WithWindow(ffi::Ffi::Bind()
                                             .Ctx<ffi::ThreadPool>()
                                             .Arg<F32Buffer>()
                                             .Arg<F32Buffer>()
                                             .Ret<F32Buffer>())
                                  .Attr<int64_t>("transposed"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepnetsDwConvBiasAct, DwConvBiasAct,
                              WithWindow(ffi::Ffi::Bind()
                                             .Ctx<ffi::ThreadPool>()
                                             .Arg<F32Buffer>()
                                             .Arg<F32Buffer>()
                                             .Arg<F32Buffer>()
                                             .Ret<F32Buffer>())
                                  .Attr<int64_t>("act"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepnetsDwActConvBiasAct, DwActConvBiasAct,
                              WithWindow(ffi::Ffi::Bind()
                                             .Ctx<ffi::ThreadPool>()
                                             .Arg<F32Buffer>()
                                             .Arg<F32Buffer>()
                                             .Arg<F32Buffer>()
                                             .Arg<F32Buffer>()
                                             .Arg<F32Buffer>()
                                             .Ret<F32Buffer>())
                                  .Attr<int64_t>("act")
                                  .Attr<int64_t>("act_in"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepnetsDwTapGrad, DwTapGrad,
                              WithWindow(ffi::Ffi::Bind()
                                             .Ctx<ffi::ThreadPool>()
                                             .Arg<F32Buffer>()
                                             .Arg<F32Buffer>()
                                             .Ret<F32Buffer>()));

// StreamAboveBytes, for sepnets.native.stream_above_bytes.
extern "C" int64_t SepnetsStreamAboveBytes() { return StreamAboveBytes(); }
