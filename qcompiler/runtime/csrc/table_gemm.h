// What table_gemm.cpp (the op, its float paths) and table_gemm_int.cpp (its integer paths, AVX-512 VNNI and AVX2) share:
// the problem, the qparams' formats and loads, the rows' tiling and the integer table. Two files so that the build
// compiles them side by side.
#pragma once

#include <ATen/core/Tensor.h>

#include <immintrin.h>

#include "activation_rows.h"
#include "kernel_common.h"
#include "vnni.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace qc::tables {

using qc::Path;

constexpr int kCols = 16;    // columns per panel
constexpr int kStripe = 32;  // k per stripe
constexpr int64_t kPrefetchAhead = 4096;
constexpr int kMaxEntries = 256;

enum Format { kF32, kBF16, kE8M0, kE4M3, kZero };  // kZero: an offset stored as an integer zero point (uint8)

// The planes of b-bit codes: (width, first bit, first word in the stripe).
struct Plane {
  int width, first, word;
};
struct Planes {
  int count;
  Plane plane[3];
};
constexpr Planes kPlanes[9] = {
    {0, {}},
    {1, {{1, 0, 0}}},
    {1, {{2, 0, 0}}},
    {2, {{2, 0, 0}, {1, 2, 2}}},
    {1, {{4, 0, 0}}},
    {2, {{4, 0, 0}, {1, 4, 4}}},
    {2, {{4, 0, 0}, {2, 4, 4}}},
    {3, {{4, 0, 0}, {2, 4, 4}, {1, 6, 6}}},
    {1, {{8, 0, 0}}},
};

// A float grid of 7 or 8 bits (one sign bit, E exponent bits with bias 2^(E-1) - 1, M mantissa bits, every code
// finite: e4m3 less its NaNs; a non-finite entry is never chosen) times a constant c: its codes decode with shifts. The magnitude's bits go under
// float32's exponent and mantissa with the exponent rebiased; a subnormal code (exponent 0) is made the normal
// 2^(1 - bias) * (1 + m) and 2^(1 - bias) taken off, so no denormal float32 is ever multiplied (which would cost
// a microcode assist per element).
struct FloatGrid {
  bool exact = false;
  int mshift = 0;          // 23 - M
  int32_t rebias = 0;      // (127 - bias) << 23
  int32_t exponent = 0;    // the exponent field's bits, in place
  float subnormal = 0.0f;  // 2^(1 - bias)
  float constant = 0.0f;   // c
};

struct Problem {
  const float* a;        // [M, K]
  const uint8_t* w;      // packed codes
  const float* table;    // [kMaxEntries], zero past 2^bits
  const void* scale;     // [N / 16][K / block][16]
  Format scale_format;
  const void* offset;    // same layout, or null
  Format offset_format;
  const float* block_sums;  // [M][K / block]: each row's sum per block (offsets only), or null
  FloatGrid grid;        // 7-8-bit tables: whether they decode with shifts
  float* y;              // [M, N]
  int64_t M, N, K, block;
  int bits;
};

inline const uint8_t* panel_codes(const Problem& p, int64_t n0) { return p.w + (n0 / kCols) * 2 * p.K * p.bits; }
inline int64_t blocks(const Problem& p) { return p.K / p.block; }
inline int64_t qparam_at(const Problem& p, int64_t n0, int64_t b) { return ((n0 / kCols) * blocks(p) + b) * kCols; }

// ------------------------------------------------------------------ AVX-512

#define QC_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define QC_INLINE __attribute__((always_inline)) inline

// 16 scales or offsets (a panel's columns for one block) as float32.
QC_AVX512_TARGET QC_INLINE __m512 load16(const void* base, Format f, int64_t at) {
  switch (f) {
    case kF32: return _mm512_loadu_ps(static_cast<const float*>(base) + at);
    case kBF16: {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + at));
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    default: {
      const __m512i u = _mm512_cvtepu8_epi32(_mm_loadu_si128(
          reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(base) + at)));
      if (f == kE8M0) return _mm512_castsi512_ps(_mm512_slli_epi32(u, 23));
      if (f == kE4M3)
        return _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_and_si512(u, _mm512_set1_epi32(0x7F)), 20)),
                             _mm512_set1_ps(0x1p120f));
      return _mm512_cvtepi32_ps(u);
    }
  }
}

// The offsets of a block as added per unit of activation: as stored, or -z * s.
QC_AVX512_TARGET QC_INLINE __m512 offset16(const Problem& p, int64_t at, __m512 s) {
  const __m512 o = load16(p.offset, p.offset_format, at);
  return p.offset_format == kZero ? _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), o), s) : o;
}

// out[r] += block b's offsets (at `at`) times row m0 + r's sum over the block.
template <int R>
QC_AVX512_TARGET QC_INLINE void add_offsets(const Problem& p, int64_t at, __m512 scale, int64_t m0, int64_t b,
                                            __m512 (&out)[R]) {
  const __m512 o = offset16(p, at, scale);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    out[r] = _mm512_fmadd_ps(o, _mm512_set1_ps(p.block_sums[(m0 + r) * blocks(p) + b]), out[r]);
}

// A stripe's BITS words of codes, and a prefetch of the codes a few stripes on (the hardware prefetchers alone leave
// a GEMV short of the read bandwidth, as int8_int4_gemm found).
template <int BITS>
QC_AVX512_TARGET QC_INLINE void load_stripe(const uint8_t* stripe, __m512i (&v)[BITS]) {
#pragma GCC unroll 8
  for (int l = 0; l < BITS; ++l) {
    _mm_prefetch(reinterpret_cast<const char*>(stripe + kPrefetchAhead + 64 * l), _MM_HINT_T0);
    v[l] = _mm512_loadu_si512(stripe + 64 * l);
  }
}

// Rows [m0, m1) in tiles of MAX rows (a power of two), the rest in tiles of its binary digits (7 = 4 + 2 + 1):
// tile(std::integral_constant<int, R>, m). Powers of two only keep the instantiations (and the build) small.
template <int R, typename Tile>
void rest_tiles(int64_t left, int64_t m, const Tile& tile) {
  if constexpr (R > 0) {
    if (left >= R) {
      tile(std::integral_constant<int, R>{}, m);
      m += R;
      left -= R;
    }
    rest_tiles<R / 2>(left, m, tile);
  }
}

template <int MAX, typename Tile>
void row_tiles(int64_t m0, int64_t m1, const Tile& tile) {
  int64_t m = m0;
  for (; m + MAX <= m1; m += MAX) tile(std::integral_constant<int, MAX>{}, m);
  rest_tiles<MAX / 2>(m1 - m, m, tile);
}

// ------------------------------------------------------------------ AVX2

#define QC_AVX2_TARGET __attribute__((target("avx2,fma")))

// 8 scales or offsets (half a panel's columns for one block) as float32.
QC_AVX2_TARGET QC_INLINE __m256 load8(const void* base, Format f, int64_t at) {
  switch (f) {
    case kF32: return _mm256_loadu_ps(static_cast<const float*>(base) + at);
    case kBF16: {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + at));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    default: {
      const __m256i u = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
          reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(base) + at)));
      if (f == kE8M0) return _mm256_castsi256_ps(_mm256_slli_epi32(u, 23));
      if (f == kE4M3)
        return _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7F)), 20)),
                             _mm256_set1_ps(0x1p120f));
      return _mm256_cvtepi32_ps(u);
    }
  }
}

// The offsets of a block (8 columns) as added per unit of activation: as stored, or -z * s.
QC_AVX2_TARGET QC_INLINE __m256 offset8(const Problem& p, int64_t at, __m256 s) {
  const __m256 o = load8(p.offset, p.offset_format, at);
  return p.offset_format == kZero ? _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), o), s) : o;
}

// ------------------------------------------------------------------ the integer paths (table_gemm_int.cpp)


// How the integer path finds a code's integer weight (the uint8 operand of vpdpbusd):
// - kDirect: table[c] = unit * (c - zero) for an integer zero (intx's integers, less the middle for a float zero
//   point): the codes themselves, at any width;
// - kShuffle: a vpshufb of the table's (biased) bytes, at most 16 entries;
// - kPermute / kPermute2 / kPermute4: a vpermb (64 entries), a vpermi2b (128), two vpermi2b and a blend on the
//   code's top bit (256): AVX512-VBMI, 5-8-bit codes.
enum class Lookup { kDirect, kShuffle, kPermute, kPermute2, kPermute4 };

// A table the integer path takes: its entries T (table = unit * T) as int8, or in 16 bits as a high and a low byte
// (T = 256 * high + low, the activations' split), each stored + 128 as vpdpbusd's uint8 operand:
// - int8 entries (up to 16): values that are integers in [-127, 127] at some 2^j (e2m1's times 2);
// - 16-bit entries: values that are integers at some 2^j with |T| <= 32639 (e3m2's times 64), or any other finite
//   values rounded to 16 bits of the largest, as the activations are (nf4's, e4m3's, a learned grid's): each entry
//   moves by at most 2^-16 of the largest, where the bfloat16 tiles from 32 rows move it by up to 2^-9 of itself;
//   the product of the two low bytes (below 2^-14 of the largest product) is left out.
// NaN entries (float8_e4m3fn's two NaN codes, which quantization never gives) count as 0.
// Either way sum_k table[c] * v = unit * (sum_k u8 * v - 128 * sum_k v), exact in int32 per block for int8 entries.
constexpr int32_t kEntryMax = qc::kInt16Max;

struct IntTable {
  bool fits = false, wide = false;  // fits: the integer path takes the table
  Lookup lookup = Lookup::kDirect;
  int32_t zero = 0;
  float unit = 1.0f;                     // per unit of the int32 sums 256 * hi + lo (wide: 256 * the entry's unit)
  alignas(64) uint8_t high[256] = {};    // int8 entries, or 16-bit entries' high bytes, + 128
  alignas(64) uint8_t low[256] = {};     // 16-bit entries' low bytes + 128
};

struct IntRows {
  const int8_t* rows;       // [2M, K]: each row's high and low bytes as two int8 rows (activation_rows.h); or, one
                            // int8 row each ([M, K], `one`: int8 activations on a direct table)
  const float* row_scale;   // [M]
  const int32_t* sums;      // [2M or M][K / block]: each int8 row's sum per block
  const IntTable* table;
  bool one;
};

// The table as the integer path takes it, where it can (fits); vbmi: the CPU has AVX512-VBMI.
IntTable int_table(const float* table, int bits, bool vbmi);

// The AVX2 integer path: int16 products in int32 (vpmaddwd) take the codes, int8 entries, and 16-bit entries of up to
// 16 (as two int8 bytes, two sums); int32 sums exact over segments of up to 256 k (256 * 255 * kInt16Max < 2^31),
// the segments of a longer block (a scale per row) added in float32.
inline bool int16_takes(const IntTable& t) { return t.fits && (!t.wide || t.lookup == Lookup::kShuffle); }

// The segment (k) the AVX2 integer path sums in int32: the block, or the largest of 256, 128, .. 16 dividing it.
inline int64_t int16_segment(int64_t block) {
  int64_t g = 256;
  while (block % g) g /= 2;
  return std::min(block, g);
}

struct Int16Rows {
  const int16_t* rows;      // [M, K]: each row in 16 bits (float rows as activation_row makes them, int8 rows as
                            // they are), each 4 k stored k, k + 2, k + 1, k + 3: the pairs vpmaddwd takes
  const float* row_scale;   // [M]
  const int32_t* sums;      // [M][K / segment]: each row's sum per segment
  const IntTable* table;
  int64_t segment;          // int16_segment(block)
};

// Rows [m0, m1) x the panel from n0 on an integer table (instantiated for BITS = 1 .. 8).
template <int BITS>
void panel_int(const Problem& p, const IntRows& q, int64_t m0, int64_t m1, int64_t n0);

// The same on AVX2 (where int16_takes the table).
template <int BITS>
void panel_int16(const Problem& p, const Int16Rows& q, int64_t m0, int64_t m1, int64_t n0);

}  // namespace qc::tables
