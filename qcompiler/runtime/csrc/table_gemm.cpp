// qcompiler::table_gemm: float activations x b-bit codes (b = 1..8) into one fixed table of float values, each
// block's scale (and offset) read inside the GEMM: the kernel behind intx, fp6 / fpx, MXFP4, MXFP8 and NVFP4.
//
//   y[m, n] = sum_k x[m, k] * (table[idx[n, k]] * s[n, k / block] + o[n, k / block])
//
// x float32 [M, K]; table float32 [2^bits] (the format's grid: e2m1's 16 values, e3m2's 64, intx's 0 .. 2^b - 1);
// scales and offsets stored at their width, laid out [N / 16][K / block][16] (a panel's 16 columns side by side):
//   scale: float32, bfloat16, uint8 (e8m0: 2^(e - 127)) or float8_e4m3fn
//   offset (optional): float32 or bfloat16 (added as it is), or uint8 (an integer zero point z: o = -z * s)
//
// Packed codes: uint8, 2 * K * bits bytes per panel of 16 columns, panels in column order. A panel is stored
// stripe by stripe (32 k each); a stripe's code bits in planes of 8, 4, 2 or 1 bits (runtime/table_gemm.py PLANES:
// 3 = 2 + 1, 5 = 4 + 1, 6 = 4 + 2, 7 = 4 + 2 + 1), a plane of width w as w 64-byte words. Word u of a plane holds,
// in its int32 lane c, column c's bits of the codes of k = 32 * stripe + u * (32 / w) + 4 * t + j at bit
// 8 * j + w * t. So one shift and one mask per plane give 16 columns' codes of one k as int32 lanes (the control
// of a vpermps of the table; vpermi2ps for 32 entries, two and a blend for 64, a gather from L1 above), or of 4
// consecutive k as each lane's 4 bytes (the control of a vpshufb of an int8 table, below).
//
// Paths, chosen per call (ATEN_CPU_CAPABILITY caps the choice, so tests reach each on any machine):
// - AMX-BF16, from 32 rows: each 64-column panel decoded once per 256 rows into scaled bfloat16 weights, oneDNN's
//   brgemm on tiles (bf16_tiles.h), the rows rounded to bfloat16.
// - AVX-512 VNNI, an integer table (IntTable): the rows in 16 bits as two int8 rows (activation_rows.h), 4 rows at a
//   time x one panel; per 4 k one vpdpbusd per int8 row on the codes themselves (intx's integers, any width) or on
//   the table's entries looked up by vpshufb (<= 16 entries) or vpermb / vpermi2b (<= 256, AVX512-VBMI): int8
//   entries (up to 16 integers at a power-of-two scale: e2m1's), or 16-bit ones as two bytes (e3m2's; nf4's, e4m3's
//   and other float tables rounded to 16 bits of their largest, as the rows are); int32 sums per block, then
//   float32 times the block's 16 scales.
// - AVX-512, any other table (5-8 bits without VBMI, infinite entries): up to 8 rows at a time x one panel; per k
//   the 16 columns' table values (vpermps and kin; a 7-8-bit float grid decoded with shifts, FloatGrid) times the
//   k's activation broadcast, summed per block in float32, then times the block's 16 scales.
//   Offsets add the block's offsets times the row's float sum over the block, on both AVX-512 paths.
// - AVX2 (no AVX-512, or AVX-512 without VNNI), an integer table of codes (kDirect, any width) or of up to 16
//   entries (kShuffle; int8, or 16-bit as two bytes): the rows in 16 bits (the same values as above) as int16, each
//   panel as two halves of 8 columns, up to 4 rows at a time (2 for 16-bit entries); per 4 k a lane's 4 weight bytes
//   (the codes, or a vpshufb of the entries' bytes) as two int16 pairs, each a vpmaddwd with the row's matching pair;
//   int32 sums per block, or per 256 k inside longer blocks (Int16Rows).
// - AVX2, any other table (5-8-bit entries): the float32 path in 8 lanes, as on AVX-512; the table by vpermps, or
//   gathered above 4 bits.
// - plain C++ elsewhere (the lowering rule asks for AVX2 and decomposes below).
#include "table_gemm.h"

#include <ATen/Parallel.h>

#include "activation_rows.h"
#include "bf16_tiles.h"
#include "ops.h"

#include <cmath>
#include <cstring>

namespace {

using namespace qc::tables;


inline float grid_value(int code, int bits, const FloatGrid& g) {
  const uint32_t magnitude = uint32_t(code) & ((1u << (bits - 1)) - 1), sign = uint32_t(code) >> (bits - 1);
  uint32_t raw = magnitude << g.mshift;
  const bool sub = (raw & uint32_t(g.exponent)) == 0;
  raw += uint32_t(g.rebias) + (sub ? 1u << 23 : 0u);
  float v;
  std::memcpy(&v, &raw, 4);
  v = sub ? v - g.subnormal : v;
  return (sign ? -v : v) * g.constant;
}

FloatGrid float_grid(const float* table, int bits) {
  FloatGrid out;
  for (int ebits = 1; bits >= 7 && ebits < bits - 1 && !out.exact; ++ebits) {
    const int mbits = bits - 1 - ebits, bias = (1 << (ebits - 1)) - 1;
    out = FloatGrid{true, 23 - mbits, (127 - bias) << 23, ((1 << ebits) - 1) << 23, std::ldexp(1.0f, 1 - bias),
                    table[bias << mbits]};  // the code of 1.0
    out.exact = out.constant > 0.0f;
    for (int c = 0; c < (1 << bits) && out.exact; ++c)
      out.exact = !std::isfinite(table[c]) || table[c] == grid_value(c, bits, out);
  }
  return out;
}

// ------------------------------------------------------------------ plain C++

inline float scalar_value(const void* base, Format f, int64_t at) {
  switch (f) {
    case kF32: return static_cast<const float*>(base)[at];
    case kBF16: {
      const uint32_t bits = uint32_t(static_cast<const uint16_t*>(base)[at]) << 16;
      float v;
      std::memcpy(&v, &bits, 4);
      return v;
    }
    case kE8M0: {
      const uint32_t bits = uint32_t(static_cast<const uint8_t*>(base)[at]) << 23;
      float v;
      std::memcpy(&v, &bits, 4);
      return v;
    }
    case kE4M3: {  // the 7 magnitude bits placed under float32's exponent and mantissa, rebiased by 2^(127 - 7)
      const uint32_t bits = uint32_t(static_cast<const uint8_t*>(base)[at] & 0x7F) << 20;
      float v;
      std::memcpy(&v, &bits, 4);
      return v * 0x1p120f;
    }
    default: return float(static_cast<const uint8_t*>(base)[at]);
  }
}

inline int code_at(const uint8_t* stripe, int bits, int col, int i) {
  int code = 0;
  const Planes& planes = kPlanes[bits];
  for (int q = 0; q < planes.count; ++q) {
    const Plane& pl = planes.plane[q];
    const int per = kStripe / pl.width;
    const int at = i % per;
    uint32_t lane;
    std::memcpy(&lane, stripe + (pl.word + i / per) * 64 + col * 4, 4);
    code |= int((lane >> (8 * (at % 4) + pl.width * (at / 4))) & ((1u << pl.width) - 1)) << pl.first;
  }
  return code;
}

void panel_scalar(const Problem& p, int64_t m0, int64_t m1, int64_t n0) {
  const uint8_t* codes = panel_codes(p, n0);
  const int64_t stripe_bytes = 64 * p.bits;
  for (int64_t m = m0; m < m1; ++m)
    for (int c = 0; c < kCols; ++c) {
      float acc = 0.0f;
      for (int64_t b = 0; b < blocks(p); ++b) {
        float sum = 0.0f;
        for (int64_t k = b * p.block; k < (b + 1) * p.block; ++k)
          sum += p.a[m * p.K + k] * p.table[code_at(codes + (k / kStripe) * stripe_bytes, p.bits, c, int(k % kStripe))];
        const int64_t at = qparam_at(p, n0, b) + c;
        const float s = scalar_value(p.scale, p.scale_format, at);
        acc += sum * s;
        if (p.offset) {
          const float o = scalar_value(p.offset, p.offset_format, at);
          acc += (p.offset_format == kZero ? -o * s : o) * p.block_sums[m * blocks(p) + b];
        }
      }
      p.y[m * p.N + n0 + c] = acc;
    }
}

// ------------------------------------------------------------------ AVX-512

// Bits [FIRST, FIRST + WD) of 16 columns' codes of k-position I, from the plane of width WD starting at word WORD.
template <int WD, int FIRST, int WORD, int I>
QC_AVX512_TARGET QC_INLINE __m512i plane_bits(const __m512i* v) {
  constexpr int per = kStripe / WD, at = I % per, shift = 8 * (at % 4) + WD * (at / 4);
  const __m512i x = v[WORD + I / per];
  __m512i placed;
  if constexpr (shift > FIRST) placed = _mm512_srli_epi32(x, shift - FIRST);
  else if constexpr (shift < FIRST) placed = _mm512_slli_epi32(x, FIRST - shift);
  else placed = x;
  return _mm512_and_si512(placed, _mm512_set1_epi32(((1 << WD) - 1) << FIRST));
}

template <int BITS, int I>
QC_AVX512_TARGET QC_INLINE __m512i code_at(const __m512i* v) {
  if constexpr (BITS == 1 || BITS == 2 || BITS == 4 || BITS == 8) return plane_bits<BITS, 0, 0, I>(v);
  else if constexpr (BITS == 3) return _mm512_or_si512(plane_bits<2, 0, 0, I>(v), plane_bits<1, 2, 2, I>(v));
  else if constexpr (BITS == 5) return _mm512_or_si512(plane_bits<4, 0, 0, I>(v), plane_bits<1, 4, 4, I>(v));
  else if constexpr (BITS == 6) return _mm512_or_si512(plane_bits<4, 0, 0, I>(v), plane_bits<2, 4, 4, I>(v));
  else
    return _mm512_or_si512(_mm512_or_si512(plane_bits<4, 0, 0, I>(v), plane_bits<2, 4, 4, I>(v)),
                           plane_bits<1, 6, 6, I>(v));
}

// The table in registers (up to 64 entries); a larger one decoded with shifts where it is a float grid, else
// gathered from memory.
template <int BITS>
struct Table {
  static constexpr int kRegs = BITS <= 4 ? 1 : BITS == 5 ? 2 : BITS == 6 ? 4 : 0;
  __m512 t[kRegs > 0 ? kRegs : 1];
  const float* memory;
  FloatGrid grid;
  QC_AVX512_TARGET QC_INLINE explicit Table(const float* table, FloatGrid g) : memory(table), grid(g) {
    for (int r = 0; r < kRegs; ++r) t[r] = _mm512_loadu_ps(table + 16 * r);
  }
  QC_AVX512_TARGET QC_INLINE __m512 operator()(__m512i code) const {
    if constexpr (BITS <= 4) {
      return _mm512_permutexvar_ps(code, t[0]);
    } else if constexpr (BITS == 5) {
      return _mm512_permutex2var_ps(t[0], code, t[1]);
    } else if constexpr (BITS == 6) {
      const __m512 lo = _mm512_permutex2var_ps(t[0], code, t[1]), hi = _mm512_permutex2var_ps(t[2], code, t[3]);
      return _mm512_mask_blend_ps(_mm512_test_epi32_mask(code, _mm512_set1_epi32(32)), lo, hi);
    } else {
      if (!grid.exact) return _mm512_i32gather_ps(code, memory, 4);
      const __m512i sign = _mm512_slli_epi32(_mm512_srli_epi32(code, BITS - 1), 31);
      __m512i raw = _mm512_sll_epi32(_mm512_and_si512(code, _mm512_set1_epi32((1 << (BITS - 1)) - 1)),
                                     _mm_cvtsi32_si128(grid.mshift));
      const __mmask16 sub = _mm512_testn_epi32_mask(raw, _mm512_set1_epi32(grid.exponent));
      raw = _mm512_add_epi32(raw, _mm512_set1_epi32(grid.rebias));
      raw = _mm512_mask_add_epi32(raw, sub, raw, _mm512_set1_epi32(1 << 23));
      __m512 v = _mm512_castsi512_ps(raw);
      v = _mm512_mask_sub_ps(v, sub, v, _mm512_set1_ps(grid.subnormal));
      return _mm512_mul_ps(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), sign)),
                           _mm512_set1_ps(grid.constant));
    }
  }
};

// k-positions I .. END - 1 of a stripe: sums[r] += table[code] * x[r][I] for R rows (x + r * K).
template <int BITS, int R, int I, int END>
QC_AVX512_TARGET QC_INLINE void positions(const __m512i* v, const Table<BITS>& table, const float* x, int64_t K,
                                          __m512 (&sums)[R]) {
  const __m512 w = table(code_at<BITS, I>(v));
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) sums[r] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[r * K + I]), sums[r]);
  if constexpr (I + 1 < END) positions<BITS, R, I + 1, END>(v, table, x, K, sums);
}

// R rows from m0 x the panel from n0: per half stripe (16 k) the block's sums, folded into acc at each block's end.
template <int BITS, int R>
QC_AVX512_TARGET void tile_avx512(const Problem& p, int64_t m0, int64_t n0) {
  const Table<BITS> table(p.table, p.grid);
  __m512 acc[R], sums[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = sums[r] = _mm512_setzero_ps();
  const uint8_t* codes = panel_codes(p, n0);
  const float* x = p.a + m0 * p.K;
  const int64_t qbase = qparam_at(p, n0, 0);
  int64_t b = 0, block_end = p.block;  // the current block, and the k where it ends
  for (int64_t s = 0; s < p.K / kStripe; ++s) {
    __m512i v[BITS];
    load_stripe<BITS>(codes + s * 64 * BITS, v);
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      if (half == 0) positions<BITS, R, 0, 16>(v, table, x + s * kStripe, p.K, sums);
      else positions<BITS, R, 16, 32>(v, table, x + s * kStripe, p.K, sums);
      if (s * kStripe + 16 * (half + 1) != block_end) continue;
      const int64_t at = qbase + b * kCols;
      const __m512 scale = load16(p.scale, p.scale_format, at);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_fmadd_ps(sums[r], scale, acc[r]);
        sums[r] = _mm512_setzero_ps();
      }
      if (p.offset) add_offsets<R>(p, at, scale, m0, b, acc);
      ++b;
      block_end += p.block;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(p.y + (m0 + r) * p.N + n0, acc[r]);
}

template <int BITS>
void panel_avx512(const Problem& p, int64_t m0, int64_t m1, int64_t n0) {
  row_tiles<8>(m0, m1, [&](auto rows, int64_t m) { tile_avx512<BITS, decltype(rows)::value>(p, m, n0); });
}

// ------------------------------------------------------------------ AVX2 (no AVX-512)

// Bits [FIRST, FIRST + WD) of 8 columns' codes of k-position I (one half of a plane's 64-byte words).
template <int WD, int FIRST, int WORD, int I>
QC_AVX2_TARGET QC_INLINE __m256i plane_bits8(const __m256i* v) {
  constexpr int per = kStripe / WD, at = I % per, shift = 8 * (at % 4) + WD * (at / 4);
  const __m256i x = v[WORD + I / per];
  __m256i placed;
  if constexpr (shift > FIRST) placed = _mm256_srli_epi32(x, shift - FIRST);
  else if constexpr (shift < FIRST) placed = _mm256_slli_epi32(x, FIRST - shift);
  else placed = x;
  return _mm256_and_si256(placed, _mm256_set1_epi32(((1 << WD) - 1) << FIRST));
}

template <int BITS, int I>
QC_AVX2_TARGET QC_INLINE __m256i code8_at(const __m256i* v) {
  if constexpr (BITS == 1 || BITS == 2 || BITS == 4 || BITS == 8) return plane_bits8<BITS, 0, 0, I>(v);
  else if constexpr (BITS == 3) return _mm256_or_si256(plane_bits8<2, 0, 0, I>(v), plane_bits8<1, 2, 2, I>(v));
  else if constexpr (BITS == 5) return _mm256_or_si256(plane_bits8<4, 0, 0, I>(v), plane_bits8<1, 4, 4, I>(v));
  else if constexpr (BITS == 6) return _mm256_or_si256(plane_bits8<4, 0, 0, I>(v), plane_bits8<2, 4, 4, I>(v));
  else
    return _mm256_or_si256(_mm256_or_si256(plane_bits8<4, 0, 0, I>(v), plane_bits8<2, 4, 4, I>(v)),
                           plane_bits8<1, 6, 6, I>(v));
}

// The table for 8 lanes: up to 8 entries in one register (vpermps), 16 in two and a blend on the code's bit 3,
// more gathered from memory (L1: the table is 1 KB at most).
template <int BITS>
struct Table8 {
  __m256 lo, hi;
  const float* memory;
  QC_AVX2_TARGET QC_INLINE explicit Table8(const float* table)
      : lo(_mm256_loadu_ps(table)), hi(_mm256_loadu_ps(table + 8)), memory(table) {}
  QC_AVX2_TARGET QC_INLINE __m256 operator()(__m256i code) const {
    if constexpr (BITS <= 3) {
      return _mm256_permutevar8x32_ps(lo, code);
    } else if constexpr (BITS == 4) {
      const __m256 top = _mm256_castsi256_ps(_mm256_slli_epi32(code, 28));  // bit 3 to the sign: blendv's select
      return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, code), _mm256_permutevar8x32_ps(hi, code), top);
    } else {
      return _mm256_i32gather_ps(memory, code, 4);
    }
  }
};

// k-positions I .. END - 1 of a stripe: sums[r] += table[code] * x[r][I] for R rows (x + r * K), 8 columns.
template <int BITS, int R, int I, int END>
QC_AVX2_TARGET QC_INLINE void positions8(const __m256i* v, const Table8<BITS>& table, const float* x, int64_t K,
                                         __m256 (&sums)[R]) {
  const __m256 w = table(code8_at<BITS, I>(v));
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) sums[r] = _mm256_fmadd_ps(w, _mm256_set1_ps(x[r * K + I]), sums[r]);
  if constexpr (I + 1 < END) positions8<BITS, R, I + 1, END>(v, table, x, K, sums);
}

// R rows from m0 x half h (8 columns) of the panel from n0, as tile_avx512 does for 16.
template <int BITS, int R>
QC_AVX2_TARGET void tile_avx2(const Problem& p, int64_t m0, int64_t n0, int h) {
  const Table8<BITS> table(p.table);
  __m256 acc[R], sums[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = sums[r] = _mm256_setzero_ps();
  const uint8_t* codes = panel_codes(p, n0) + 32 * h;
  const float* x = p.a + m0 * p.K;
  const int64_t qbase = qparam_at(p, n0, 0) + 8 * h;
  int64_t b = 0, block_end = p.block;
  for (int64_t s = 0; s < p.K / kStripe; ++s) {
    __m256i v[BITS];
#pragma GCC unroll 8
    for (int l = 0; l < BITS; ++l)
      v[l] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + s * 64 * BITS + 64 * l));
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      if (half == 0) positions8<BITS, R, 0, 16>(v, table, x + s * kStripe, p.K, sums);
      else positions8<BITS, R, 16, 32>(v, table, x + s * kStripe, p.K, sums);
      if (s * kStripe + 16 * (half + 1) != block_end) continue;
      const int64_t at = qbase + b * kCols;
      const __m256 scale = load8(p.scale, p.scale_format, at);
      const __m256 o = p.offset ? offset8(p, at, scale) : _mm256_setzero_ps();
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm256_fmadd_ps(sums[r], scale, acc[r]);
        sums[r] = _mm256_setzero_ps();
        if (p.offset) acc[r] = _mm256_fmadd_ps(o, _mm256_set1_ps(p.block_sums[(m0 + r) * blocks(p) + b]), acc[r]);
      }
      ++b;
      block_end += p.block;
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(p.y + (m0 + r) * p.N + n0 + 8 * h, acc[r]);
}

template <int BITS>
void panel_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t n0) {
  for (int h = 0; h < 2; ++h)
    row_tiles<4>(m0, m1, [&](auto rows, int64_t m) { tile_avx2<BITS, decltype(rows)::value>(p, m, n0, h); });
}

// ------------------------------------------------------------------ AMX (bfloat16 tiles)

// k-positions I .. END - 1 (I even) of a stripe as scaled bfloat16 pairs: out + (I / 2) * 2 * kTileCols.
template <int BITS, int I, int END>
QC_BF16_TARGET QC_INLINE void decode_pairs(const __m512i* v, const Table<BITS>& table, __m512 scale, __m512 offset,
                                           uint16_t* out) {
  const __m512 w0 = _mm512_fmadd_ps(table(code_at<BITS, I>(v)), scale, offset);
  const __m512 w1 = _mm512_fmadd_ps(table(code_at<BITS, I + 1>(v)), scale, offset);
  _mm512_storeu_si512(out + (I / 2) * 2 * qc::kTileCols, qc::bf16_pairs(w0, w1));
  if constexpr (I + 2 < END) decode_pairs<BITS, I + 2, END>(v, table, scale, offset, out);
}

// The (up to 4) panels of tile panel `tile_panel`, k in [k0, k0 + kc), as bfloat16 pairs for the tiles.
template <int BITS>
QC_BF16_TARGET int64_t decode_bf16(const Problem& p, int64_t tile_panel, int64_t k0, int64_t kc, uint16_t* out) {
  const Table<BITS> table(p.table, p.grid);
  const int64_t n0 = tile_panel * qc::kTileCols, panels = std::min<int64_t>(qc::kTileCols, p.N - n0) / kCols;
  for (int64_t j = 0; j < panels; ++j) {
    const int64_t n = n0 + j * kCols;
    const uint8_t* codes = panel_codes(p, n);
    const int64_t qbase = qparam_at(p, n, 0);
    int64_t b = k0 / p.block, block_end = (b + 1) * p.block;  // the current block, and the k where it ends
    for (int64_t s = k0 / kStripe; s < (k0 + kc) / kStripe; ++s) {
      __m512i v[BITS];
#pragma GCC unroll 8
      for (int l = 0; l < BITS; ++l) v[l] = _mm512_loadu_si512(codes + s * 64 * BITS + 64 * l);
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        if (s * kStripe + 16 * half == block_end) {
          ++b;
          block_end += p.block;
        }
        const int64_t at = qbase + b * kCols;
        const __m512 scale = load16(p.scale, p.scale_format, at);
        const __m512 offset = p.offset ? offset16(p, at, scale) : _mm512_setzero_ps();
        uint16_t* dst = out + ((s * kStripe - k0) / 2) * 2 * qc::kTileCols + j * 2 * kCols;  // the stripe's k = 0
        if (half == 0) decode_pairs<BITS, 0, 16>(v, table, scale, offset, dst);
        else decode_pairs<BITS, 16, 32>(v, table, scale, offset, dst);
      }
    }
  }
  return panels * kCols;
}

template <int BITS>
void run_tiles(const Problem& p, const at::Tensor& a) {
  const at::Tensor rows = qc::bf16_rows(a, std::nullopt);
  const qc::Bf16Tiles tiles{rows.data_ptr<at::BFloat16>(), rows.size(1), nullptr, nullptr, p.y, p.M, p.N, p.K};
  qc::bf16_tile_gemm(tiles, [&](int64_t panel, int64_t k0, int64_t kc, uint16_t* out) {
    return decode_bf16<BITS>(p, panel, k0, kc, out);
  });
}

// ------------------------------------------------------------------ dispatch

// The rows for the AVX2 integer path (Int16Rows), [M, K] int16: float rows in 16 bits as activation_row makes them
// (the values the AVX-512 path splits into two int8 rows), int8 rows as they are (scale 1); each 4 k stored k, k + 2,
// k + 1, k + 3. `held` gets their scales and sums per segment (int16_segment).
constexpr int64_t kPairSlot[4] = {0, 2, 1, 3};  // where k % 4 goes among its 4

at::Tensor int16_rows(const Problem& p, const at::Tensor& a, const at::Tensor& int8, qc::ActivationRows& held) {
  const int64_t M = p.M, K = p.K, segment = int16_segment(p.block), nb = K / segment;
  at::Tensor rows = at::empty({M, K}, a.options().dtype(at::kShort));
  held.sums = at::empty({M, nb}, a.options().dtype(at::kInt));
  held.scale = at::empty({M}, a.options());
  int16_t* out = rows.data_ptr<int16_t>();
  int32_t* sums = held.sums.data_ptr<int32_t>();
  float* scale = held.scale.data_ptr<float>();
  const int8_t* q = int8.defined() ? int8.data_ptr<int8_t>() : nullptr;
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float* x = p.a + m * K;
      scale[m] = q ? 1.0f : qc::row_scale(x, K, qc::kInt16Max);
      const float inv = 1.0f / scale[m];
      for (int64_t b = 0; b < nb; ++b) {
        int32_t sum = 0;
        for (int64_t k = b * segment; k < (b + 1) * segment; ++k) {
          const int32_t v = q ? q[m * K + k] : qc::quantize_to(x[k], inv, qc::kInt16Max);
          out[m * K + (k & ~int64_t(3)) + kPairSlot[k & 3]] = int16_t(v);
          sum += v;
        }
        sums[m * nb + b] = sum;
      }
    }
  });
  return rows;
}

// a: the float32 rows; int8: the same rows as int8 (int8 activations), or undefined.
template <int BITS>
void run(const Problem& p, const at::Tensor& a, const at::Tensor& int8, Path path) {
  if (qc::bf16_tiles_for(p.M)) return run_tiles<BITS>(p, a);
  // An integer table takes the rows in 16 bits, as two int8 rows, on int32 sums (vpshufb / vpermb + vpdpbusd),
  // exact per block up to 65536 k (32768 for 16-bit entries, whose low bytes add a product).
  // On AVX2 an integer table of codes or entries of up to 16 takes the rows in 16 bits (vpmaddwd).
  const bool avx2 = path == Path::kAvx2;
  IntTable ints = path == Path::kVnni ? int_table(p.table, p.bits, __builtin_cpu_supports("avx512vbmi"))
                  : avx2              ? int_table(p.table, p.bits, false)
                                      : IntTable();
  ints.fits = avx2 ? int16_takes(ints) : ints.fits && p.block <= (ints.wide ? 32768 : 65536);
  qc::ActivationRows rows;
  at::Tensor sums, rows16;
  IntRows q{};
  Int16Rows q16{};
  if (ints.fits && avx2) {
    rows16 = int16_rows(p, a, int8, rows);
    q16 = Int16Rows{rows16.data_ptr<int16_t>(), rows.scale.data_ptr<float>(), rows.sums.data_ptr<int32_t>(), &ints,
                    int16_segment(p.block)};
  } else if (ints.fits) {
    // int8 rows go in as one int8 row each on a direct table, else as int16 rows 256 * a (their high bytes: the
    // product of the low bytes that 16-bit entries leave out is then 0)
    const bool one = int8.defined() && ints.lookup == Lookup::kDirect;
    rows = qc::activation_rows(int8.defined() ? (one ? int8 : int8.to(at::kShort).mul_(256)) : a, p.K, path);
    if (int8.defined()) rows.scale.fill_(one ? 1.0f : 1.0f / 256.0f);
    sums = rows.rows.view({(one ? 1 : 2) * p.M, blocks(p), p.block}).sum(2, false, at::kInt);
    q = IntRows{rows.rows.data_ptr<int8_t>(), rows.scale.data_ptr<float>(), sums.data_ptr<int32_t>(), &ints, one};
  }
  // Work items: (up to 64 rows, one panel); a panel's codes stay in cache across its rows.
  constexpr int64_t kRowChunk = 64;
  const int64_t panels = p.N / kCols, row_items = (p.M + kRowChunk - 1) / kRowChunk;
  at::parallel_for(0, row_items * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t m0 = (item / panels) * kRowChunk, m1 = std::min(p.M, m0 + kRowChunk), n0 = (item % panels) * kCols;
      if (ints.fits && avx2) panel_int16<BITS>(p, q16, m0, m1, n0);
      else if (ints.fits) panel_int<BITS>(p, q, m0, m1, n0);
      else if (path == Path::kVnni) panel_avx512<BITS>(p, m0, m1, n0);
      else if (path == Path::kAvx2) panel_avx2<BITS>(p, m0, m1, n0);
      else panel_scalar(p, m0, m1, n0);
    }
  });
}

Format format_of(const at::Tensor& t, bool offset) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kBFloat16: return kBF16;
    case at::kByte: return offset ? kZero : kE8M0;
    default: return kE4M3;
  }
}

void check_qparams(const at::Tensor& t, const char* name, bool offset, int64_t count) {
  const auto d = t.scalar_type();
  const bool ok = d == at::kFloat || d == at::kBFloat16 || d == at::kByte || (!offset && d == at::kFloat8_e4m3fn);
  TORCH_CHECK(ok, "table_gemm: ", name, offset ? " must be float32, bfloat16 or uint8 (a zero point)"
                                               : " must be float32, bfloat16, uint8 (e8m0) or float8_e4m3fn", ", got ", d);
  TORCH_CHECK(t.numel() == count, "table_gemm: ", name, " must hold one value per column and block (", count,
              "), got ", t.sizes());
}

// int8 rows: a_scale [M] (and a_zero [M] with w_sums [N]) float32; float rows: none of them.
void check_int8_rows(const at::Tensor& a, const std::optional<at::Tensor>& a_scale,
                     const std::optional<at::Tensor>& a_zero, const std::optional<at::Tensor>& w_sums, int64_t N) {
  const int64_t M = a.size(0);
  if (a.scalar_type() == at::kFloat) {
    TORCH_CHECK(!a_scale && !a_zero && !w_sums, "table_gemm: float32 rows take no a_scale, a_zero or w_sums");
    return;
  }
  TORCH_CHECK(a_scale && a_scale->scalar_type() == at::kFloat && a_scale->numel() == M,
              "table_gemm: int8 rows need a_scale, float32 with one value per row (", M, ")");
  TORCH_CHECK(!a_zero || (a_zero->scalar_type() == at::kFloat && a_zero->numel() == M),
              "table_gemm: a_zero must be float32 with one value per row (", M, ")");
  TORCH_CHECK(bool(a_zero) == bool(w_sums), "table_gemm: a_zero and w_sums go together (w_sums: each column's sum)");
  TORCH_CHECK(!w_sums || (w_sums->scalar_type() == at::kFloat && w_sums->numel() == N),
              "table_gemm: w_sums must be float32 with one value per column (", N, ")");
}

void check_inputs(const at::Tensor& a, const std::optional<at::Tensor>& a_scale,
                  const std::optional<at::Tensor>& a_zero, const at::Tensor& w, const at::Tensor& table,
                  const at::Tensor& scale, const std::optional<at::Tensor>& offset,
                  const std::optional<at::Tensor>& w_sums, int64_t bits, int64_t block) {
  TORCH_CHECK(a.dim() == 2 && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kChar),
              "table_gemm: a must be float32 or int8 [M, K], got ", a.scalar_type(), " ", a.sizes());
  TORCH_CHECK(bits >= 1 && bits <= 8, "table_gemm: bits must be 1 to 8, got ", bits);
  const int64_t K = a.size(1);
  TORCH_CHECK(K > 0 && K % kStripe == 0, "table_gemm: K = ", K, " must be a positive multiple of 32");
  TORCH_CHECK(block >= 16 && block % 16 == 0 && K % block == 0, "table_gemm: block = ", block,
              " must be a multiple of 16 dividing K = ", K);
  TORCH_CHECK(table.dim() == 1 && table.scalar_type() == at::kFloat && table.numel() == (int64_t(1) << bits),
              "table_gemm: table must be float32 [2^bits] = [", int64_t(1) << bits, "], got ", table.scalar_type(), " ",
              table.sizes());
  TORCH_CHECK(w.scalar_type() == at::kByte && w.numel() % (2 * K * bits) == 0 && w.numel() > 0,
              "table_gemm: w must be uint8 with a multiple of 2 * K * bits = ", 2 * K * bits, " bytes, got ",
              w.scalar_type(), " ", w.sizes());
  const int64_t N = w.numel() / (2 * K * bits) * kCols;
  check_qparams(scale, "scale", false, N * (K / block));
  if (offset) check_qparams(*offset, "offset", true, N * (K / block));
  check_int8_rows(a, a_scale, a_zero, w_sums, N);
}

}  // namespace

namespace qc {

at::Tensor table_gemm(const at::Tensor& a_in, const std::optional<at::Tensor>& a_scale,
                      const std::optional<at::Tensor>& a_zero, const at::Tensor& w_in, const at::Tensor& table_in,
                      const at::Tensor& scale_in, const std::optional<at::Tensor>& offset_in,
                      const std::optional<at::Tensor>& w_sums, int64_t bits, int64_t block) {
  check_inputs(a_in, a_scale, a_zero, w_in, table_in, scale_in, offset_in, w_sums, bits, block);
  const bool int8_rows = a_in.scalar_type() == at::kChar;
  const at::Tensor int8 = int8_rows ? a_in.contiguous() : at::Tensor();
  const at::Tensor a = int8_rows ? int8.to(at::kFloat) : a_in.contiguous();  // the rows' values
  const at::Tensor w = w_in.contiguous(), scale = scale_in.contiguous();
  const std::optional<at::Tensor> offset = qc::contiguous(offset_in);
  const int64_t M = a.size(0), K = a.size(1), N = w.numel() / (2 * K * bits) * kCols;
  alignas(64) float table[kMaxEntries] = {};
  const at::Tensor t = table_in.contiguous();
  std::memcpy(table, t.data_ptr<float>(), sizeof(float) * t.numel());
  at::Tensor y = at::empty({M, N}, a.options());
  if (M == 0) return y;
  const at::Tensor block_sums = offset ? a.view({M, K / block, block}).sum(2).contiguous() : at::Tensor();
  const Problem p{a.data_ptr<float>(), w.data_ptr<uint8_t>(), table, scale.data_ptr(), format_of(scale, false),
                  offset ? offset->data_ptr() : nullptr, offset ? format_of(*offset, true) : kF32,
                  offset ? block_sums.data_ptr<float>() : nullptr, float_grid(table, int(bits)), y.data_ptr<float>(),
                  M, N, K, block, int(bits)};
  const Path path = qc::path_here();
  switch (bits) {
    case 1: run<1>(p, a, int8, path); break;
    case 2: run<2>(p, a, int8, path); break;
    case 3: run<3>(p, a, int8, path); break;
    case 4: run<4>(p, a, int8, path); break;
    case 5: run<5>(p, a, int8, path); break;
    case 6: run<6>(p, a, int8, path); break;
    case 7: run<7>(p, a, int8, path); break;
    default: run<8>(p, a, int8, path); break;
  }
  if (!int8_rows) return y;
  // int8 rows x = a_scale * (a - a_zero): y = a_scale * (sum w a - a_zero * sum w)
  y.mul_(a_scale->view({M, 1}));
  if (a_zero) y.sub_(a_scale->mul(*a_zero).view({M, 1}).mul(w_sums->view({1, N})));
  return y;
}

}  // namespace qc
