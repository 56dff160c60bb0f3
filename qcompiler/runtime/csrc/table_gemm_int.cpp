// qcompiler::table_gemm's integer paths: AVX-512 VNNI (vpdpbusd) and AVX2 (vpmaddwd) (table_gemm.cpp has the op, its
// layout and its float paths).
#include "table_gemm.h"

#include <cmath>
#include <cstring>

namespace qc::tables {

IntTable direct_table(const float* table, int bits) {
  IntTable out;
  const float unit = table[1] - table[0], z = -table[0] / unit;
  if (!(unit != 0.0f) || z != std::nearbyint(z) || std::fabs(z) > 255.0f) return out;  // NaN fails too
  for (int c = 0; c < (1 << bits); ++c)
    if (table[c] != unit * (float(c) - z)) return out;
  out.fits = true;
  out.zero = int32_t(z);
  out.unit = unit;
  return out;
}

// The table's entries as integers T = table / unit with |T| <= limit: exact at a power of two (unit = 2^-j), else
// (16 bits) rounded. False for int8 entries that are not exact, and for infinite entries.
bool integer_entries(const float* table, int entries, int32_t limit, int32_t* T, float* unit) {
  float top = 0.0f;
  for (int e = 0; e < entries; ++e) {
    if (std::isinf(table[e])) return false;
    if (!std::isnan(table[e])) top = std::max(top, std::fabs(table[e]));
  }
  if (top == 0.0f) top = 1.0f;
  const int j = int(std::floor(std::log2(float(limit) / top)));  // the largest 2^j with top * 2^j <= limit
  bool exact = true;
  for (int e = 0; e < entries && exact; ++e) {
    const float v = std::isnan(table[e]) ? 0.0f : std::ldexp(table[e], j);
    exact = v == std::nearbyint(v) && std::fabs(v) <= float(limit);
    T[e] = int32_t(v);
  }
  *unit = exact ? std::ldexp(1.0f, -j) : top / float(limit);
  if (exact || limit < kEntryMax) return exact;
  for (int e = 0; e < entries; ++e)
    T[e] = std::isnan(table[e]) ? 0 : std::min(std::max(int32_t(std::nearbyint(table[e] / *unit)), -limit), limit);
  return true;
}

IntTable int_table(const float* table, int bits, bool vbmi) {
  IntTable out = direct_table(table, bits);
  if (out.fits || bits > (vbmi ? 8 : 4)) return out;
  const int entries = 1 << bits;
  int32_t T[256];
  float unit = 1.0f;
  out.lookup = bits <= 4   ? Lookup::kShuffle
               : bits <= 6 ? Lookup::kPermute
               : bits == 7 ? Lookup::kPermute2
                           : Lookup::kPermute4;
  out.zero = 128;
  if (bits <= 4 && integer_entries(table, entries, 127, T, &unit)) {  // 5-8 bits: 16-bit entries (fewer kernels)
    out.fits = true;
    out.unit = unit;
    for (int e = 0; e < entries; ++e) out.high[e] = uint8_t(T[e] + 128);
  } else if (integer_entries(table, entries, kEntryMax, T, &unit)) {
    out.fits = out.wide = true;
    out.unit = 256.0f * unit;
    for (int e = 0; e < entries; ++e) {
      const int32_t h = (T[e] + 128) >> 8;
      out.high[e] = uint8_t(h + 128);
      out.low[e] = uint8_t(T[e] - 256 * h + 128);
    }
  }
  return out;
}

// A table's bytes in registers, and a code's byte looked up in them. vpermb and vpermi2b (AVX512-VBMI) in asm, so
// the functions around them stay compiled for AVX-512 VNNI alone: they run only where the CPU has VBMI.
template <Lookup L>
struct ByteTable {
  static constexpr int kRegs = L == Lookup::kPermute4 ? 4 : L == Lookup::kPermute2 ? 2 : 1;
  __m512i t[kRegs];
  QC_VNNI_TARGET QC_INLINE explicit ByteTable(const uint8_t* bytes) {
    if constexpr (L == Lookup::kShuffle || L == Lookup::kDirect) {
      t[0] = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
    } else {
#pragma GCC unroll 4
      for (int r = 0; r < kRegs; ++r) t[r] = _mm512_loadu_si512(bytes + 64 * r);
    }
  }
  QC_VNNI_TARGET QC_INLINE __m512i operator()(__m512i codes) const {
    if constexpr (L == Lookup::kShuffle) {
      return _mm512_shuffle_epi8(t[0], codes);
    } else if constexpr (L == Lookup::kPermute) {
      __m512i out;
      asm("vpermb %2, %1, %0" : "=v"(out) : "v"(codes), "v"(t[0]));
      return out;
    } else if constexpr (L == Lookup::kPermute2) {
      asm("vpermi2b %2, %1, %0" : "+v"(codes) : "v"(t[0]), "v"(t[1]));
      return codes;
    } else {
      __m512i low = codes, high = codes;
      asm("vpermi2b %2, %1, %0" : "+v"(low) : "v"(t[0]), "v"(t[1]));
      asm("vpermi2b %2, %1, %0" : "+v"(high) : "v"(t[2]), "v"(t[3]));
      return _mm512_mask_blend_epi8(_mm512_movepi8_mask(codes), low, high);
    }
  }
};

// Bits [FIRST, FIRST + WD) of 16 columns' codes of k = 4Q .. 4Q + 3 as each lane's 4 bytes.
template <int WD, int FIRST, int WORD, int Q>
QC_VNNI_TARGET QC_INLINE __m512i plane_quad(const __m512i* v) {
  constexpr int per = kStripe / WD, t = (4 * Q % per) / 4;
  const __m512i bits = _mm512_and_si512(_mm512_srli_epi32(v[WORD + 4 * Q / per], WD * t),
                                        _mm512_set1_epi32(int(((1u << WD) - 1) * 0x01010101u)));
  if constexpr (FIRST == 0) return bits;
  else return _mm512_slli_epi32(bits, FIRST);
}

template <int BITS, int Q>
QC_VNNI_TARGET QC_INLINE __m512i quad_codes(const __m512i* v) {
  if constexpr (BITS == 1 || BITS == 2 || BITS == 4 || BITS == 8) return plane_quad<BITS, 0, 0, Q>(v);
  else if constexpr (BITS == 3) return _mm512_or_si512(plane_quad<2, 0, 0, Q>(v), plane_quad<1, 2, 2, Q>(v));
  else if constexpr (BITS == 5) return _mm512_or_si512(plane_quad<4, 0, 0, Q>(v), plane_quad<1, 4, 4, Q>(v));
  else if constexpr (BITS == 6) return _mm512_or_si512(plane_quad<4, 0, 0, Q>(v), plane_quad<2, 4, 4, Q>(v));
  else
    return _mm512_or_si512(_mm512_or_si512(plane_quad<4, 0, 0, Q>(v), plane_quad<2, 4, 4, Q>(v)),
                           plane_quad<1, 6, 6, Q>(v));
}

// The integer weights of one table: the codes (kDirect) or their entries' bytes (a 16-bit entry's two).
template <Lookup L, bool WIDE>
struct Weights {
  ByteTable<L> high, low;
  QC_VNNI_TARGET QC_INLINE explicit Weights(const IntTable& t) : high(t.high), low(t.low) {}
};

// Independent int32 sums per row: a vpdpbusd waits for the one before it on the same register (5 cycles). Over short
// blocks the CPU overlaps blocks (each starts from zero); a one-row tile over long chains (blocks from 256 k, a
// scale per row: fp6; from 64 k with 16-bit entries, two vpdpbusd per quad on lo: nf4) is bound by that wait, so it
// spreads its quads over C = 4 registers of each kind (adds at each block's end that short blocks would pay for:
// nvfp4's are 4 quads).
constexpr int64_t long_block(bool wide) { return wide ? 64 : 256; }

// Quads Q .. END - 1 of a stripe: hi[c][r], lo[c][r] += the weights x row r's high and low int8 rows (a + 2r K, + K),
// c = Q's chain; a 16-bit entry adds its low byte x the high row to the next chain's lo (so 256 hi + lo counts each
// entry 256 times).
template <int BITS, Lookup L, bool WIDE, bool ONE, int R, int C, int Q, int END>
QC_VNNI_TARGET QC_INLINE void quads(const __m512i* v, const Weights<L, WIDE>& weights, const int8_t* a, int64_t K,
                                    __m512i (&hi)[C][R], __m512i (&lo)[C][R]) {
  constexpr int c = Q % C;
  const __m512i codes = quad_codes<BITS, Q>(v);
  __m512i w = codes;
  if constexpr (L != Lookup::kDirect) w = weights.high(codes);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if constexpr (ONE) {
      hi[c][r] = qc::dpbusd_word(hi[c][r], w, a + r * K + 4 * Q);
    } else {
      hi[c][r] = qc::dpbusd_word(hi[c][r], w, a + 2 * r * K + 4 * Q);
      lo[c][r] = qc::dpbusd_word(lo[c][r], w, a + (2 * r + 1) * K + 4 * Q);
    }
  }
  if constexpr (WIDE) {
    const __m512i wl = weights.low(codes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) lo[(c + 1) % C][r] = qc::dpbusd_word(lo[(c + 1) % C][r], wl, a + 2 * r * K + 4 * Q);
  }
  if constexpr (Q + 1 < END) quads<BITS, L, WIDE, ONE, R, C, Q + 1, END>(v, weights, a, K, hi, lo);
}

// The sum of a row's chains, and the chains cleared.
template <int R, int C>
QC_VNNI_TARGET QC_INLINE __m512i take_chains(__m512i (&sums)[C][R], int r) {
  __m512i total = sums[0][r];
  sums[0][r] = _mm512_setzero_si512();
#pragma GCC unroll 4
  for (int c = 1; c < C; ++c) {
    total = _mm512_add_epi32(total, sums[c][r]);
    sums[c][r] = _mm512_setzero_si512();
  }
  return total;
}

// R rows from m0 x the panel from n0 on an integer table: int32 sums per block (less zero x the rows' block sums),
// scaled per block in float32. ONE: one int8 row per row (int8 activations), no low rows.
template <int BITS, Lookup L, bool WIDE, bool ONE, int R, int C>
QC_VNNI_TARGET void tile_int8(const Problem& p, const IntRows& q, int64_t m0, int64_t n0) {
  constexpr int kRows = ONE ? 1 : 2;  // int8 rows per row
  const Weights<L, WIDE> weights(*q.table);
  const int32_t zero = q.table->zero;
  __m512i hi[C][R], lo[C][R];
  __m512 acc[R], off[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) hi[c][r] = lo[c][r] = _mm512_setzero_si512();
    acc[r] = off[r] = _mm512_setzero_ps();
  }
  const uint8_t* codes = panel_codes(p, n0);
  const int8_t* a = q.rows + kRows * m0 * p.K;
  const int64_t qbase = qparam_at(p, n0, 0), nb = blocks(p);
  int64_t b = 0, block_end = p.block;
  for (int64_t s = 0; s < p.K / kStripe; ++s) {
    __m512i v[BITS];
    load_stripe<BITS>(codes + s * 64 * BITS, v);
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      if (half == 0) quads<BITS, L, WIDE, ONE, R, C, 0, 4>(v, weights, a + s * kStripe, p.K, hi, lo);
      else quads<BITS, L, WIDE, ONE, R, C, 4, 8>(v, weights, a + s * kStripe, p.K, hi, lo);
      if (s * kStripe + 16 * (half + 1) != block_end) continue;
      const int64_t at = qbase + b * kCols;
      const __m512 scale = load16(p.scale, p.scale_format, at);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int32_t* sums = q.sums + kRows * (m0 + r) * nb + b;
        const __m512i h = _mm512_sub_epi32(take_chains<R, C>(hi, r), _mm512_set1_epi32(zero * sums[0]));
        __m512 f = _mm512_cvtepi32_ps(h);
        if constexpr (!ONE) {
          const __m512i l = _mm512_sub_epi32(take_chains<R, C>(lo, r),
                                             _mm512_set1_epi32(zero * (WIDE ? sums[nb] + sums[0] : sums[nb])));
          f = _mm512_fmadd_ps(f, _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(l));
        }
        acc[r] = _mm512_fmadd_ps(f, scale, acc[r]);
      }
      if (p.offset) add_offsets<R>(p, at, scale, m0, b, off);
      ++b;
      block_end += p.block;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    _mm512_storeu_ps(p.y + (m0 + r) * p.N + n0,
                     _mm512_fmadd_ps(acc[r], _mm512_set1_ps(q.row_scale[m0 + r] * q.table->unit), off[r]));
}

template <int BITS, Lookup L, bool WIDE, bool ONE = false>
void panel_int8(const Problem& p, const IntRows& q, int64_t m0, int64_t m1, int64_t n0) {
  constexpr int most = L == Lookup::kShuffle ? 4 : L == Lookup::kPermute ? 6 : L == Lookup::kPermute2 ? 7 : 8;
  constexpr int least = L == Lookup::kPermute ? 5 : L == Lookup::kPermute2 ? 7 : L == Lookup::kPermute4 ? 8 : 1;
  if constexpr (BITS >= least && BITS <= most && (L != Lookup::kDirect || !WIDE) && (!ONE || L == Lookup::kDirect))
    row_tiles<4>(m0, m1, [&](auto rows, int64_t m) {
      constexpr int R = decltype(rows)::value;
      if (R == 1 && p.block >= long_block(WIDE)) tile_int8<BITS, L, WIDE, ONE, R, 4>(p, q, m, n0);
      else tile_int8<BITS, L, WIDE, ONE, R, 1>(p, q, m, n0);
    });
}

template <int BITS>
void panel_int(const Problem& p, const IntRows& q, int64_t m0, int64_t m1, int64_t n0) {
  const IntTable& t = *q.table;
  switch (t.lookup) {
    case Lookup::kDirect:
      return q.one ? panel_int8<BITS, Lookup::kDirect, false, true>(p, q, m0, m1, n0)
                   : panel_int8<BITS, Lookup::kDirect, false>(p, q, m0, m1, n0);
    case Lookup::kShuffle:
      return t.wide ? panel_int8<BITS, Lookup::kShuffle, true>(p, q, m0, m1, n0)
                    : panel_int8<BITS, Lookup::kShuffle, false>(p, q, m0, m1, n0);
    case Lookup::kPermute: return panel_int8<BITS, Lookup::kPermute, true>(p, q, m0, m1, n0);
    case Lookup::kPermute2: return panel_int8<BITS, Lookup::kPermute2, true>(p, q, m0, m1, n0);
    default: return panel_int8<BITS, Lookup::kPermute4, true>(p, q, m0, m1, n0);
  }
}

template void panel_int<1>(const Problem&, const IntRows&, int64_t, int64_t, int64_t);
template void panel_int<2>(const Problem&, const IntRows&, int64_t, int64_t, int64_t);
template void panel_int<3>(const Problem&, const IntRows&, int64_t, int64_t, int64_t);
template void panel_int<4>(const Problem&, const IntRows&, int64_t, int64_t, int64_t);
template void panel_int<5>(const Problem&, const IntRows&, int64_t, int64_t, int64_t);
template void panel_int<6>(const Problem&, const IntRows&, int64_t, int64_t, int64_t);
template void panel_int<7>(const Problem&, const IntRows&, int64_t, int64_t, int64_t);
template void panel_int<8>(const Problem&, const IntRows&, int64_t, int64_t, int64_t);

// ------------------------------------------------------------------ AVX2: vpmaddwd on the rows' 16 bits

// Bits [FIRST, FIRST + WD) of 8 columns' codes of k = 4Q .. 4Q + 3 as each lane's 4 bytes (half a plane's words).
template <int WD, int FIRST, int WORD, int Q>
QC_AVX2_TARGET QC_INLINE __m256i plane_quad8(const __m256i* v) {
  constexpr int per = kStripe / WD, t = (4 * Q % per) / 4;
  const __m256i bits = _mm256_and_si256(_mm256_srli_epi32(v[WORD + 4 * Q / per], WD * t),
                                        _mm256_set1_epi32(int(((1u << WD) - 1) * 0x01010101u)));
  if constexpr (FIRST == 0) return bits;
  else return _mm256_slli_epi32(bits, FIRST);
}

template <int BITS, int Q>
QC_AVX2_TARGET QC_INLINE __m256i quad_codes8(const __m256i* v) {
  if constexpr (BITS == 1 || BITS == 2 || BITS == 4 || BITS == 8) return plane_quad8<BITS, 0, 0, Q>(v);
  else if constexpr (BITS == 3) return _mm256_or_si256(plane_quad8<2, 0, 0, Q>(v), plane_quad8<1, 2, 2, Q>(v));
  else if constexpr (BITS == 5) return _mm256_or_si256(plane_quad8<4, 0, 0, Q>(v), plane_quad8<1, 4, 4, Q>(v));
  else if constexpr (BITS == 6) return _mm256_or_si256(plane_quad8<4, 0, 0, Q>(v), plane_quad8<2, 4, 4, Q>(v));
  else
    return _mm256_or_si256(_mm256_or_si256(plane_quad8<4, 0, 0, Q>(v), plane_quad8<2, 4, 4, Q>(v)),
                           plane_quad8<1, 6, 6, Q>(v));
}

// A lane's 4 weight bytes (k .. k + 3) as int16 pairs (k, k + 2) and (k + 1, k + 3): sign-extended (entries) or
// zero-extended (codes).
template <bool SIGNED>
QC_AVX2_TARGET QC_INLINE void int16_pairs(__m256i w, __m256i& even, __m256i& odd) {
  if constexpr (SIGNED) {
    even = _mm256_srai_epi16(_mm256_slli_epi16(w, 8), 8);
    odd = _mm256_srai_epi16(w, 8);
  } else {
    even = _mm256_and_si256(w, _mm256_set1_epi16(0x00FF));
    odd = _mm256_srli_epi16(w, 8);
  }
}

// sum += the int16 pairs x a row's matching pairs (p02: its k, k + 2; p13: k + 1, k + 3), by vpmaddwd.
QC_AVX2_TARGET QC_INLINE __m256i madd_pairs(__m256i sum, __m256i even, __m256i odd, __m256i p02, __m256i p13) {
  return _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_madd_epi16(even, p02), _mm256_madd_epi16(odd, p13)));
}

// The weights of one table for the AVX2 integer path: the codes (kDirect), the int8 entries (kShuffle), or a 16-bit
// entry's high and low bytes (kShuffle, WIDE: T = 256 * high + low, each an int8), unbiased.
template <Lookup L, bool WIDE>
struct Weights16 {
  __m256i high, low;
  QC_AVX2_TARGET QC_INLINE static __m256i bytes(const uint8_t* biased) {
    return _mm256_xor_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(biased))),
                            _mm256_set1_epi8(char(0x80)));
  }
  QC_AVX2_TARGET QC_INLINE explicit Weights16(const IntTable& t) : high(bytes(t.high)), low(bytes(t.low)) {}
};

// Quads Q .. END - 1 of a stripe: hi[r] (and lo[r], WIDE) += the weights of k = 4Q .. 4Q + 3 x row r's 16-bit values
// (a + r K, each quad stored k, k + 2, k + 1, k + 3), a vpmaddwd per int16 pair with the row's pair broadcast.
template <int BITS, Lookup L, bool WIDE, int R, int Q, int END>
QC_AVX2_TARGET QC_INLINE void quads16(const __m256i* v, const Weights16<L, WIDE>& weights, const int16_t* a, int64_t K,
                                      __m256i (&hi)[R], __m256i (&lo)[R]) {
  const __m256i codes = quad_codes8<BITS, Q>(v);
  __m256i even, odd, even_low, odd_low;
  if constexpr (L == Lookup::kDirect) {
    int16_pairs<false>(codes, even, odd);
  } else {
    int16_pairs<true>(_mm256_shuffle_epi8(weights.high, codes), even, odd);
    if constexpr (WIDE) int16_pairs<true>(_mm256_shuffle_epi8(weights.low, codes), even_low, odd_low);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    int32_t pair02, pair13;
    std::memcpy(&pair02, a + r * K + 4 * Q, 4);
    std::memcpy(&pair13, a + r * K + 4 * Q + 2, 4);
    const __m256i p02 = _mm256_set1_epi32(pair02), p13 = _mm256_set1_epi32(pair13);
    hi[r] = madd_pairs(hi[r], even, odd, p02, p13);
    if constexpr (WIDE) lo[r] = madd_pairs(lo[r], even_low, odd_low, p02, p13);
  }
  if constexpr (Q + 1 < END) quads16<BITS, L, WIDE, R, Q + 1, END>(v, weights, a, K, hi, lo);
}

// R rows from m0 x half h (8 columns) of the panel from n0: int32 sums per segment (less zero x the rows' segment
// sums; a 16-bit entry's high bytes' sum weighs 256 its low bytes'), then float32 times the block's 8 scales; a
// block's offsets at its end. As tile_int8 does on AVX-512, with segments of at most 256 k inside long blocks.
template <int BITS, Lookup L, bool WIDE, int R>
QC_AVX2_TARGET void tile_int16(const Problem& p, const Int16Rows& q, int64_t m0, int64_t n0, int h) {
  const Weights16<L, WIDE> weights(*q.table);
  const int32_t zero = L == Lookup::kDirect ? q.table->zero : 0;
  __m256i hi[R], lo[R];
  __m256 acc[R];
  float unit[R];  // per unit of a row's int32 sums (WIDE: of its high bytes'): its scale times the table's unit
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    hi[r] = lo[r] = _mm256_setzero_si256();
    acc[r] = _mm256_setzero_ps();
    unit[r] = q.row_scale[m0 + r] * q.table->unit;
  }
  const uint8_t* codes = panel_codes(p, n0) + 32 * h;
  const int16_t* a = q.rows + m0 * p.K;
  const int64_t qbase = qparam_at(p, n0, 0) + 8 * h, nb = blocks(p), ns = p.K / q.segment;
  int64_t b = 0, block_end = p.block, g = 0, segment_end = q.segment;
  for (int64_t s = 0; s < p.K / kStripe; ++s) {
    const uint8_t* stripe = codes + s * 64 * BITS;
    __m256i v[BITS];
#pragma GCC unroll 8
    for (int l = 0; l < BITS; ++l) {
      _mm_prefetch(reinterpret_cast<const char*>(stripe + kPrefetchAhead + 64 * l), _MM_HINT_T0);
      v[l] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(stripe + 64 * l));
    }
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      if (half == 0) quads16<BITS, L, WIDE, R, 0, 4>(v, weights, a + s * kStripe, p.K, hi, lo);
      else quads16<BITS, L, WIDE, R, 4, 8>(v, weights, a + s * kStripe, p.K, hi, lo);
      const int64_t k = s * kStripe + 16 * (half + 1);
      if (k != segment_end) continue;
      const int64_t at = qbase + b * kCols;
      const __m256 scale = load8(p.scale, p.scale_format, at);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(hi[r], _mm256_set1_epi32(zero * q.sums[(m0 + r) * ns + g])));
        if constexpr (WIDE) f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo[r]), _mm256_set1_ps(1.0f / 256.0f), f);
        acc[r] = _mm256_fmadd_ps(f, _mm256_mul_ps(scale, _mm256_set1_ps(unit[r])), acc[r]);
        hi[r] = lo[r] = _mm256_setzero_si256();
      }
      ++g;
      segment_end += q.segment;
      if (k != block_end) continue;
      if (p.offset) {
        const __m256 offset = offset8(p, at, scale);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
          acc[r] = _mm256_fmadd_ps(offset, _mm256_set1_ps(p.block_sums[(m0 + r) * nb + b]), acc[r]);
      }
      ++b;
      block_end += p.block;
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(p.y + (m0 + r) * p.N + n0 + 8 * h, acc[r]);
}

template <int BITS, Lookup L, bool WIDE>
void panel_int16_lookup(const Problem& p, const Int16Rows& q, int64_t m0, int64_t m1, int64_t n0) {
  if constexpr (L == Lookup::kDirect || BITS <= 4)
    for (int h = 0; h < 2; ++h)  // WIDE: two sums per row, so 2 rows a tile (16 ymm registers)
      row_tiles<WIDE ? 2 : 4>(m0, m1, [&](auto rows, int64_t m) {
        tile_int16<BITS, L, WIDE, decltype(rows)::value>(p, q, m, n0, h);
      });
}

template <int BITS>
void panel_int16(const Problem& p, const Int16Rows& q, int64_t m0, int64_t m1, int64_t n0) {
  if (q.table->lookup == Lookup::kDirect) panel_int16_lookup<BITS, Lookup::kDirect, false>(p, q, m0, m1, n0);
  else if (q.table->wide) panel_int16_lookup<BITS, Lookup::kShuffle, true>(p, q, m0, m1, n0);
  else panel_int16_lookup<BITS, Lookup::kShuffle, false>(p, q, m0, m1, n0);
}

template void panel_int16<1>(const Problem&, const Int16Rows&, int64_t, int64_t, int64_t);
template void panel_int16<2>(const Problem&, const Int16Rows&, int64_t, int64_t, int64_t);
template void panel_int16<3>(const Problem&, const Int16Rows&, int64_t, int64_t, int64_t);
template void panel_int16<4>(const Problem&, const Int16Rows&, int64_t, int64_t, int64_t);
template void panel_int16<5>(const Problem&, const Int16Rows&, int64_t, int64_t, int64_t);
template void panel_int16<6>(const Problem&, const Int16Rows&, int64_t, int64_t, int64_t);
template void panel_int16<7>(const Problem&, const Int16Rows&, int64_t, int64_t, int64_t);
template void panel_int16<8>(const Problem&, const Int16Rows&, int64_t, int64_t, int64_t);

}  // namespace qc::tables
