// qcompiler::int8_int4_gemm: int8 or int16 activations x int4 weights in groups, exact int32 sums per group.
//
//   y[m, n] = a_scale[m] * ( sum_g ( w_scale[g, n] * sum_{k in g} a[m, k] * q[n, k]
//                                  + w_offset[g, n] * sum_{k in g} a[m, k] )  -  a_zero[m] * w_sums[n] )
//
// for activations x = a_scale * (a - a_zero) (a int8 or int16 [M, K]; a_zero optional; a float32 `a` is
// quantized here, per row, to 16 bits: x = a_scale * a with a_scale = max |x| / 32639) and weights
// w = w_scale * q + w_offset (q in [-8, 7], w_offset optional), w_sums[n] = sum_k w[n, k]. w_scale and w_offset
// are float32 or bfloat16 (read as float32); bfloat16 ones read 2 bytes a group and column instead of 4.
// The integer sums run as uint8 u = q + 8 times int8 a (VNNI's u8 x s8 operand order) and take
// 8 * sum_{k in g} a[m, k] off after. An int16 row runs as two int8 rows, its high and low bytes
// (a = 256 * hi + lo, lo in [-128, 127]; values above 32639 saturate), whose sums combine in int32
// before the group's scale: 256 * 128 * 15 * 1024 < 2^31 bounds the group at 1024.
//
// Packed weight: uint8 [N/16][K/8][64] bytes in panels of 4 blocks of 16 rows: within a panel of
// `width` blocks, block j's bytes for k-chunk c lie at ((c * width) + j) * 64, so a panel streams
// as one run. Byte (lane * 4 + i) of a block holds, for row n = 16 * block + lane, u[n, 8c + i] in its
// low nibble and u[n, 8c + 4 + i] in its high nibble: the low (high) nibbles of a block are the
// 16 x 4 byte operand of one VNNI dot product.
//
// Three paths, chosen per call: AVX512-VNNI (vpdpbusd), AVX2 (vpmaddubsw + vpmaddwd; exact here:
// |15 * 128 * 2| fits int16) and plain C++. ATen's CPU capability (ATEN_CPU_CAPABILITY) caps the
// choice, so tests reach every path on any machine. The float results are written once per group
// into y, which a tile keeps in L1: no pass over y before or after.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <immintrin.h>

#include "activation_rows.h"
#include "bf16_tiles.h"
#include "kernel_common.h"
#include "ops.h"
#include "vnni.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace {

struct Problem {
  const int8_t* a;        // [M * pair, K]: the int8 rows, or each int16 row as its high and low bytes' rows
  int64_t pair;           // 1: int8 rows; 2: int16 rows, two int8 rows each
  const int32_t* a_sums;  // [M, G]: sum_{k in g} a[m, k] (of the int8 or int16 values)
  const float* a_scale;   // [M]
  const float* a_zero;    // [M]; null: none
  const uint8_t* w;       // packed
  const void* w_scale;    // [G, N], float32 or bfloat16 (bf16 below)
  const void* w_offset;   // [G, N], as w_scale; null: none
  const float* w_sums;    // [N]; null: none (then a_zero is null too)
  float* y;               // [M, N]: written by the first group, accumulated by the others, finished by the last
  int64_t M, N, K, group;
  bool bf16;  // w_scale and w_offset are bfloat16 (read as float32: exact)
};

// w_scale or w_offset element i as float32.
inline float scale_at(const Problem& p, const void* base, int64_t i) {
  if (!p.bf16) return static_cast<const float*>(base)[i];
  const uint32_t bits = uint32_t(static_cast<const uint16_t*>(base)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

constexpr int kLanes = 16;  // output columns per packed block
constexpr int kChunk = 8;   // k per packed block
constexpr int kPanel = 4;   // blocks per panel
// Weight bytes a tile prefetches ahead of the ones it reads. The hardware prefetchers alone leave decode
// (one row: the weights read once, from memory) at 70% of the machine's read bandwidth; 4 KB ahead
// (16 chunks of a full panel) measured as good as 8 KB and better than 2 KB on TinyLlama's 155 GEMMs per
// token: 30.2 ms to 24.4 ms on AVX-512 VNNI, 79 ms to 43 ms on the AVX2 path.
// Past a panel's end it reads the next one's start, which is the next read; prefetches never fault.
constexpr int64_t kPrefetchAhead = 4096;
constexpr int64_t kPrefetchGroups = 2;  // and their scales this many groups ahead

// The packed blocks of the panel holding block nb, and nb's place and the panel's width in blocks.
struct Panel {
  const uint8_t* base;
  int64_t width;
};

inline Panel panel_of(const Problem& p, int64_t first_block) {
  const int64_t blocks = p.N / kLanes, width = std::min<int64_t>(kPanel, blocks - first_block);
  return {p.w + first_block * (p.K / kChunk) * 64, width};
}

// int8 row r's activations for k-chunk c as two 4-byte words (k = 8c..8c+3 and 8c+4..8c+7), to broadcast.
struct ActivationWords {
  int32_t low, high;
};

inline ActivationWords activation_words(const Problem& p, int64_t r, int64_t c) {
  ActivationWords x;
  const int8_t* a = p.a + r * p.K + c * kChunk;
  std::memcpy(&x.low, a, 4);
  std::memcpy(&x.high, a + 4, 4);
  return x;
}

// The last group's step: y[m, n] = a_scale[m] * (acc - a_zero[m] * w_sums[n]).
inline float finish(const Problem& p, int64_t m, int64_t n, float acc) {
  if (p.a_zero) acc -= p.a_zero[m] * p.w_sums[n];
  return acc * p.a_scale[m];
}

// Group g's step for output row m, 16 columns from n0, given the int32 sums of a * (q + 8) over the group.
inline void epilogue_scalar(const Problem& p, int64_t m, int64_t g, int64_t n0, const int32_t* acc) {
  const int32_t ra = p.a_sums[m * (p.K / p.group) + g];
  float* y = p.y + m * p.N + n0;
  const int64_t gi = g * p.N + n0;
  const bool first = g == 0, last = g + 1 == p.K / p.group;
  for (int l = 0; l < kLanes; ++l) {
    float f = scale_at(p, p.w_scale, gi + l) * float(acc[l] - 8 * ra);
    if (p.w_offset) f += scale_at(p, p.w_offset, gi + l) * float(ra);
    if (!first) f += y[l];
    y[l] = last ? finish(p, m, n0 + l, f) : f;
  }
}

// ------------------------------------------------------------------ plain C++

void panel_scalar(const Problem& p, int64_t m0, int64_t m1, int64_t first_block) {
  const Panel panel = panel_of(p, first_block);
  int32_t acc[kLanes];
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t j = 0; j < panel.width; ++j)
      for (int64_t g = 0; g < p.K / p.group; ++g) {
        std::fill(acc, acc + kLanes, 0);
        for (int64_t h = 0; h < p.pair; ++h) {  // an int16 row: 256 * (its high bytes' sums) + its low bytes' sums
          const int8_t* a = p.a + (m * p.pair + h) * p.K;
          for (int l = 0; l < kLanes; ++l) acc[l] <<= 8 * h;
          for (int64_t c = g * p.group / kChunk; c < (g + 1) * p.group / kChunk; ++c) {
            const uint8_t* b = panel.base + (c * panel.width + j) * 64;
            for (int l = 0; l < kLanes; ++l)
              for (int i = 0; i < 4; ++i) {
                const uint8_t byte = b[l * 4 + i];
                acc[l] += int32_t(a[c * kChunk + i]) * int32_t(byte & 0xF) +
                          int32_t(a[c * kChunk + 4 + i]) * int32_t(byte >> 4);
              }
          }
        }
        epilogue_scalar(p, m, g, (first_block + j) * kLanes, acc);
      }
}

// ------------------------------------------------------------------ AVX2

// ROWS int8 rows (ROWS / PAIR output rows) x one block, every group.
template <int ROWS, int PAIR>
__attribute__((target("avx2,fma"))) void tile_avx2(const Problem& p, int64_t r0, const Panel& panel, int64_t j,
                                                   int64_t n0) {
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  alignas(32) int32_t acc_out[kLanes];
  for (int64_t g = 0; g < p.K / p.group; ++g) {
    __m256i acc[ROWS][2];
    for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t c = g * p.group / kChunk; c < (g + 1) * p.group / kChunk; ++c) {
      const uint8_t* b = panel.base + (c * panel.width + j) * 64;
      _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetchAhead), _MM_HINT_T0);
      __m256i lo[2], hi[2];
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32 * h));
        lo[h] = _mm256_and_si256(v, low);
        hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      }
      for (int r = 0; r < ROWS; ++r) {
        const ActivationWords x = activation_words(p, r0 + r, c);
        const __m256i x0 = _mm256_set1_epi32(x.low), x1 = _mm256_set1_epi32(x.high);
        for (int h = 0; h < 2; ++h) {  // |15 * 128 * 2| per int16 pair: no saturation
          const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], x0), _mm256_maddubs_epi16(hi[h], x1));
          acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(s, ones));
        }
      }
    }
    for (int o = 0; o < ROWS / PAIR; ++o) {
      for (int h = 0; h < 2; ++h) {
        __m256i v = acc[o * PAIR][h];
        if constexpr (PAIR == 2) v = _mm256_add_epi32(_mm256_slli_epi32(v, 8), acc[o * PAIR + 1][h]);
        _mm256_store_si256(reinterpret_cast<__m256i*>(acc_out + 8 * h), v);
      }
      epilogue_scalar(p, r0 / PAIR + o, g, n0, acc_out);
    }
  }
}

template <int PAIR>
__attribute__((target("avx2,fma"))) void panel_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t first_block) {
  const Panel panel = panel_of(p, first_block);
  for (int64_t j = 0; j < panel.width; ++j) {
    const int64_t n0 = (first_block + j) * kLanes;
    int64_t m = m0;
    for (; m + 4 / PAIR <= m1; m += 4 / PAIR) tile_avx2<4, PAIR>(p, m * PAIR, panel, j, n0);
    for (; m < m1; ++m) tile_avx2<PAIR, PAIR>(p, m * PAIR, panel, j, n0);
  }
}

// ------------------------------------------------------------------ AVX-512 VNNI

// 16 scales (or offsets) from element i as float32: bfloat16 ones widened (their bits are a float32's top half).
QC_VNNI_TARGET __attribute__((always_inline)) inline __m512 scales16(const Problem& p, const void* base, int64_t i) {
  if (!p.bf16) return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

// The scales (and offsets) of group g for COLS blocks from column n0, into L1. A tile reads them a group
// at a time, N columns apart: a stride the hardware prefetchers miss (-2% decode GEMM time, fetched 2 groups ahead).
template <int COLS, bool OFFSET>
QC_VNNI_TARGET __attribute__((always_inline)) inline void prefetch_scales(const Problem& p, int64_t g, int64_t n0) {
  const int64_t bytes = p.bf16 ? 2 : 4, at = (g * p.N + n0) * bytes;
  for (int64_t o = 0; o < COLS * kLanes * bytes; o += 64) {
    _mm_prefetch(static_cast<const char*>(p.w_scale) + at + o, _MM_HINT_T0);
    if constexpr (OFFSET) _mm_prefetch(static_cast<const char*>(p.w_offset) + at + o, _MM_HINT_T0);
  }
}

// Group g's step for a tile's ROWS / PAIR output rows (from m0) x COLS blocks (columns from n0), given the
// int32 sums of a * (q + 8) over the group: f = (FIRST ? 0 : f) + w_scale * (sum - 8 * sum a) [+ w_offset * sum a].
// It runs once per group and tile: the float sums stay in registers, and the options are template arguments.
template <int ROWS, int COLS, int PAIR, bool FIRST, bool OFFSET>
QC_VNNI_TARGET __attribute__((always_inline)) inline void group_step_vnni(const Problem& p, int64_t m0, int64_t n0,
                                                                         int64_t g, const __m512i (&acc)[ROWS][COLS],
                                                                         __m512 (&f)[ROWS / PAIR][COLS]) {
  const int64_t groups = p.K / p.group;
  const int64_t at = g * p.N + n0;  // the group's scales (and offsets) for these columns
#pragma GCC unroll 8
  for (int o = 0; o < ROWS / PAIR; ++o) {
    const int32_t ra = p.a_sums[(m0 + o) * groups + g];
    const __m512i shift = _mm512_set1_epi32(8 * ra);
#pragma GCC unroll 4
    for (int j = 0; j < COLS; ++j) {
      __m512i v = acc[o * PAIR][j];
      if constexpr (PAIR == 2) v = _mm512_add_epi32(_mm512_slli_epi32(v, 8), acc[o * PAIR + 1][j]);
      const __m512 x = _mm512_cvtepi32_ps(_mm512_sub_epi32(v, shift));
      const __m512 s = scales16(p, p.w_scale, at + j * kLanes);
      f[o][j] = FIRST ? _mm512_mul_ps(x, s) : _mm512_fmadd_ps(x, s, f[o][j]);
      if constexpr (OFFSET)
        f[o][j] = _mm512_fmadd_ps(scales16(p, p.w_offset, at + j * kLanes), _mm512_set1_ps(float(ra)), f[o][j]);
    }
  }
}

// ROWS int8 rows (ROWS / PAIR output rows, from int8 row r0) x COLS blocks (from block j0 of the panel),
// every group: the int32 sums of a group and the float sums of all groups stay in registers
// (ROWS * COLS + ROWS / PAIR * COLS of them, besides the 2 * COLS unpacked weights and a mask).
template <int ROWS, int COLS, int PAIR, bool OFFSET>
QC_VNNI_TARGET void tile_vnni(const Problem& p, int64_t r0, const Panel& panel, int64_t j0, int64_t n0) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const int64_t groups = p.K / p.group, stride = panel.width * 64, chunks = p.group / kChunk, m0 = r0 / PAIR;
  const uint8_t* b = panel.base + j0 * 64;
  const int8_t* a = p.a + r0 * p.K;
  __m512 f[ROWS / PAIR][COLS];
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[ROWS][COLS];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < COLS; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t c = g * chunks; c < (g + 1) * chunks; ++c) {
      const uint8_t* bc = b + c * stride;
#pragma GCC unroll 4
      for (int j = 0; j < COLS; ++j) {  // a block's nibbles at a time, for every row
        _mm_prefetch(reinterpret_cast<const char*>(bc + kPrefetchAhead + j * 64), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(bc + j * 64);
        const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) {
          const int8_t* x = a + r * p.K + c * kChunk;  // the row's 8 activations of this chunk
          acc[r][j] = qc::dpbusd_word(acc[r][j], lo, x);
          acc[r][j] = qc::dpbusd_word(acc[r][j], hi, x + 4);
        }
      }
    }
    if (g + kPrefetchGroups < groups) prefetch_scales<COLS, OFFSET>(p, g + kPrefetchGroups, n0);
    if (g == 0) group_step_vnni<ROWS, COLS, PAIR, true, OFFSET>(p, m0, n0, g, acc, f);
    else group_step_vnni<ROWS, COLS, PAIR, false, OFFSET>(p, m0, n0, g, acc, f);
  }
  // y = a_scale * (f - a_zero * w_sums)
#pragma GCC unroll 8
  for (int o = 0; o < ROWS / PAIR; ++o) {
    const int64_t m = m0 + o;
    float* y = p.y + m * p.N + n0;
#pragma GCC unroll 4
    for (int j = 0; j < COLS; ++j) {
      __m512 v = f[o][j];
      if (p.a_zero) v = _mm512_fnmadd_ps(_mm512_set1_ps(p.a_zero[m]), _mm512_loadu_ps(p.w_sums + n0 + j * kLanes), v);
      _mm512_storeu_ps(y + j * kLanes, _mm512_mul_ps(v, _mm512_set1_ps(p.a_scale[m])));
    }
  }
}

template <int ROWS, int COLS, int PAIR>
QC_VNNI_TARGET void tile_vnni(const Problem& p, int64_t r0, const Panel& panel, int64_t j0, int64_t n0) {
  if (p.w_offset) tile_vnni<ROWS, COLS, PAIR, true>(p, r0, panel, j0, n0);
  else tile_vnni<ROWS, COLS, PAIR, false>(p, r0, panel, j0, n0);
}

// Output rows [m0, m1) in tiles of ROWS int8 rows x COLS blocks; the last rows in a smaller tile.
template <int ROWS, int COLS, int PAIR>
QC_VNNI_TARGET void rows_vnni(const Problem& p, int64_t m0, int64_t m1, const Panel& panel, int64_t j, int64_t n0) {
  constexpr int kRows = ROWS / PAIR;  // output rows per tile
  if constexpr (kRows > 1) {
    if (m1 - m0 < kRows) return rows_vnni<ROWS - PAIR, COLS, PAIR>(p, m0, m1, panel, j, n0);
  }
  for (; m0 + kRows <= m1; m0 += kRows) tile_vnni<ROWS, COLS, PAIR>(p, m0 * PAIR, panel, j, n0);
  if constexpr (kRows > 1) {
    if (m0 < m1) rows_vnni<ROWS - PAIR, COLS, PAIR>(p, m0, m1, panel, j, n0);
  }
}

// Up to 16 int8 rows (a batched decode step), tiles span the panel's 4 blocks: up to 4 int8 rows in one tile, then 6
// at a time. Several passes over a panel from memory (tiles of 2 int8 rows, or of 2 of its blocks) took the reads'
// time plus the later passes' arithmetic; a tile across all 4 blocks streams the panel once while all its rows'
// arithmetic runs (AMD Zen 4, a TinyLlama MLP GEMM from memory: 2 int16 rows 254 to 195 us, 4 rows 312 to 280, 8
// rows 548 to 502). More rows, where the arithmetic bounds every pass: tiles of 8 (int16 rows) or 6 (int8 rows) int8
// rows x 2 blocks, the int32 and float sums all in registers (the 6 x 4 tile spills its float sums, touched once a
// group; narrower panels keep the 2-block tiles).
template <int PAIR>
QC_VNNI_TARGET void panel_vnni(const Problem& p, int64_t m0, int64_t m1, int64_t first_block) {
  const Panel panel = panel_of(p, first_block);
  const int64_t n0 = first_block * kLanes;
  if ((m1 - m0) * PAIR <= 4) {
    switch (panel.width) {
      case 4: return rows_vnni<4, 4, PAIR>(p, m0, m1, panel, 0, n0);
      case 3: return rows_vnni<4, 3, PAIR>(p, m0, m1, panel, 0, n0);
      case 2: return rows_vnni<4, 2, PAIR>(p, m0, m1, panel, 0, n0);
      default: return rows_vnni<4, 1, PAIR>(p, m0, m1, panel, 0, n0);
    }
  }
  if ((m1 - m0) * PAIR <= 16 && panel.width == 4) return rows_vnni<6, 4, PAIR>(p, m0, m1, panel, 0, n0);
  constexpr int kRows = PAIR == 2 ? 8 : 6;  // int8 rows per tile: the int32 and float sums fill the registers
  int64_t j = 0;
  for (; j + 2 <= panel.width; j += 2) rows_vnni<kRows, 2, PAIR>(p, m0, m1, panel, j, n0 + j * kLanes);
  if (j < panel.width) rows_vnni<kRows, 1, PAIR>(p, m0, m1, panel, j, n0 + j * kLanes);
}

// ------------------------------------------------------------------ AMX: bfloat16 tiles, from kAmxMinRows rows

// Panel `panel`'s weights w = w_scale * q + w_offset for k in [k0, k0 + kc), rounded to bfloat16, as
// out[(k - k0) / 2][n][2]. A packed block's 64 bytes hold 16 columns x 8 k (k = 8c + i in the low nibble of byte
// 4 * lane + i, 8c + 4 + i in the high one): each of the 8 k becomes 16 floats u * s + (offset - 8 s), and each pair
// of k one 32-wide bfloat16 row, interleaved by column.
QC_BF16_TARGET int64_t decode_int4_bf16(const Problem& p, int64_t panel_index, int64_t k0, int64_t kc, uint16_t* out) {
  const Panel panel = panel_of(p, panel_index * kPanel);
  const int64_t width = panel.width * kLanes, n_first = panel_index * kPanel * kLanes;
  const __m512i low = _mm512_set1_epi32(0x0F0F0F0F), byte = _mm512_set1_epi32(0xFF);
  for (int64_t c = k0 / kChunk; c < (k0 + kc) / kChunk; ++c) {
    const int64_t g = c * kChunk / p.group;
    uint16_t* row = out + (c * kChunk - k0) / 2 * qc::kTileCols * 2;  // the chunk's first pair of k
    for (int64_t j = 0; j < panel.width; ++j) {
      const int64_t at = g * p.N + n_first + j * kLanes;
      const __m512 s = scales16(p, p.w_scale, at);
      const __m512 o = p.w_offset ? scales16(p, p.w_offset, at) : _mm512_setzero_ps();
      const __m512 shift = _mm512_fnmadd_ps(_mm512_set1_ps(8.0f), s, o);  // offset - 8 s: w = u s + shift
      const __m512i v = _mm512_loadu_si512(panel.base + (c * panel.width + j) * 64);
      const __m512i nibbles[2] = {_mm512_and_si512(v, low), _mm512_and_si512(_mm512_srli_epi32(v, 4), low)};
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h)
#pragma GCC unroll 2
        for (int pair = 0; pair < 2; ++pair) {
          const __m512i u0 = _mm512_and_si512(_mm512_srli_epi32(nibbles[h], 16 * pair), byte);
          const __m512i u1 = _mm512_and_si512(_mm512_srli_epi32(nibbles[h], 16 * pair + 8), byte);
          const __m512 w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(u0), s, shift);
          const __m512 w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(u1), s, shift);
          _mm512_storeu_si512(row + (2 * h + pair) * qc::kTileCols * 2 + j * 2 * kLanes, qc::bf16_pairs(w0, w1));
        }
    }
  }
  return width;
}

// The product on bfloat16 tiles: float rows rounded to bfloat16, int8 rows as a - a_zero (exact), times the decoded
// weights; int8 rows' a_scale applied after.
void run_amx(const Problem& p, const at::Tensor& a, const std::optional<at::Tensor>& a_scale,
             const std::optional<at::Tensor>& a_zero) {
  const at::Tensor rows = qc::bf16_rows(a, a_zero);
  const qc::Bf16Tiles tiles{rows.data_ptr<at::BFloat16>(), rows.size(1), a_scale ? p.a_scale : nullptr, nullptr, p.y,
                           p.M, p.N, p.K};
  qc::bf16_tile_gemm(tiles, [&](int64_t panel, int64_t k0, int64_t kc, uint16_t* out) {
    return decode_int4_bf16(p, panel, k0, kc, out);
  });
}

// ------------------------------------------------------------------ dispatch

using qc::Path;

// Whether M rows of this type take the bfloat16 tiles: float32 or int8 (exact in bfloat16 after their zero point;
// int16 rows keep the exact integer paths), as many as qc::bf16_tiles_for takes.
bool amx_route(at::ScalarType type, int64_t M) { return type != at::kShort && qc::bf16_tiles_for(M); }

void check_inputs(const at::Tensor& a, const std::optional<at::Tensor>& a_scale, const std::optional<at::Tensor>& a_zero,
                  const at::Tensor& w, const at::Tensor& w_scale, const std::optional<at::Tensor>& w_offset,
                  const std::optional<at::Tensor>& w_sums, int64_t group) {
  const auto type = a.scalar_type();
  TORCH_CHECK(a.dim() == 2 && (type == at::kChar || type == at::kShort || type == at::kFloat),
              "int8_int4_gemm: a must be int8, int16 or float32 [M, K], got ", type, " ", a.sizes());
  TORCH_CHECK(w_scale.dim() == 2, "int8_int4_gemm: w_scale must be [K / group, N], got ", w_scale.sizes());
  const int64_t M = a.size(0), K = a.size(1), N = w_scale.size(1);
  TORCH_CHECK(group > 0 && group % kChunk == 0 && K % group == 0, "int8_int4_gemm: group ", group,
              " must be a multiple of 8 dividing K = ", K);
  TORCH_CHECK(type == at::kChar || group <= 1024, "int8_int4_gemm: group ", group,
              " must be at most 1024 with 16-bit activations (the int32 sums would overflow)");
  TORCH_CHECK(N % kLanes == 0, "int8_int4_gemm: N = ", N, " must be a multiple of 16");
  TORCH_CHECK(w.scalar_type() == at::kByte && w.numel() == N * K / 2, "int8_int4_gemm: w must be uint8 with N*K/2 = ",
              N * K / 2, " bytes, got ", w.scalar_type(), " ", w.sizes());
  if (type == at::kFloat) {
    TORCH_CHECK(!a_scale && !a_zero, "int8_int4_gemm: float32 a takes no a_scale or a_zero (the kernel quantizes "
                "each row to 16 bits itself)");
  } else {
    TORCH_CHECK(a_scale && a_scale->scalar_type() == at::kFloat && a_scale->numel() == M,
                "int8_int4_gemm: a_scale must be float32 with M = ", M, " elements for integer a");
  }
  TORCH_CHECK(!a_zero || (a_zero->scalar_type() == at::kFloat && a_zero->numel() == M),
              "int8_int4_gemm: a_zero must be float32 with M = ", M, " elements");
  TORCH_CHECK(!a_zero || w_sums, "int8_int4_gemm: an a_zero needs w_sums");
  TORCH_CHECK(!w_sums || (w_sums->scalar_type() == at::kFloat && w_sums->numel() == N),
              "int8_int4_gemm: w_sums must be float32 with N = ", N, " elements");
  const int64_t G = K / group;
  const auto scale_type = w_scale.scalar_type();
  TORCH_CHECK((scale_type == at::kFloat || scale_type == at::kBFloat16) && w_scale.size(0) == G,
              "int8_int4_gemm: w_scale must be float32 or bfloat16 [", G, ", ", N, "], got ", scale_type, " ",
              w_scale.sizes());
  TORCH_CHECK(!w_offset || (w_offset->scalar_type() == scale_type && w_offset->numel() == G * N),
              "int8_int4_gemm: w_offset must be ", scale_type, " (as w_scale) [", G, ", ", N, "]");
}

}  // namespace

namespace qc {

at::Tensor int8_int4_gemm(const at::Tensor& a_in, const std::optional<at::Tensor>& a_scale_in,
                          const std::optional<at::Tensor>& a_zero_in, const at::Tensor& w_in,
                          const at::Tensor& w_scale_in, const std::optional<at::Tensor>& w_offset_in,
                          const std::optional<at::Tensor>& w_sums_in, int64_t group) {
  check_inputs(a_in, a_scale_in, a_zero_in, w_in, w_scale_in, w_offset_in, w_sums_in, group);
  const at::Tensor a = a_in.contiguous(), w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = w_scale.size(1);
  const std::optional<at::Tensor> a_zero = qc::contiguous(a_zero_in), w_offset = qc::contiguous(w_offset_in),
                                  w_sums = qc::contiguous(w_sums_in);
  const Path path = qc::path_here();
  at::Tensor y = at::empty({M, N}, a.options().dtype(at::kFloat));
  if (amx_route(a.scalar_type(), M)) {
    const std::optional<at::Tensor> a_scale = qc::contiguous(a_scale_in);
    const Problem p{nullptr, 1, nullptr, a_scale ? a_scale->data_ptr<float>() : nullptr, nullptr, w.data_ptr<uint8_t>(),
                    w_scale.data_ptr(), w_offset ? w_offset->data_ptr() : nullptr, nullptr, y.data_ptr<float>(),
                    M, N, K, group, w_scale.scalar_type() == at::kBFloat16};
    run_amx(p, a, a_scale, a_zero);
    return y;
  }
  const qc::ActivationRows rows = qc::activation_rows(a, group, path);
  const at::Tensor a_scale = a_scale_in ? a_scale_in->contiguous() : rows.scale;
  const Problem p{rows.rows.data_ptr<int8_t>(), a.scalar_type() == at::kChar ? 1 : 2,
                  rows.sums.data_ptr<int32_t>(), a_scale.data_ptr<float>(), a_zero ? a_zero->data_ptr<float>() : nullptr,
                  w.data_ptr<uint8_t>(), w_scale.data_ptr(), w_offset ? w_offset->data_ptr() : nullptr,
                  w_sums ? w_sums->data_ptr<float>() : nullptr, y.data_ptr<float>(), M, N, K, group,
                  w_scale.scalar_type() == at::kBFloat16};
  // Work items: (64 int8 rows, one panel of 64 columns); a panel's weights stay in cache across its rows.
  const int64_t panels = (N / kLanes + kPanel - 1) / kPanel, row_chunk = 64 / p.pair;
  const int64_t row_items = (M + row_chunk - 1) / row_chunk;
  at::parallel_for(0, row_items * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t m0 = (item / panels) * row_chunk, m1 = std::min(M, m0 + row_chunk);
      const int64_t first_block = (item % panels) * kPanel;
      const bool pairs = p.pair == 2;
      if (path == Path::kVnni) pairs ? panel_vnni<2>(p, m0, m1, first_block) : panel_vnni<1>(p, m0, m1, first_block);
      else if (path == Path::kAvx2) pairs ? panel_avx2<2>(p, m0, m1, first_block) : panel_avx2<1>(p, m0, m1, first_block);
      else panel_scalar(p, m0, m1, first_block);
    }
  });
  return y;
}

std::string int8_int4_gemm_path() { return qc::path_name(qc::path_here()); }

std::string float_rows_path(int64_t rows) {
  return qc::bf16_tiles_for(rows) ? "amx_bf16" : qc::path_name(qc::path_here());
}

}  // namespace qc
