// qcompiler::codebook_gemm: float activations x b-bit codebook indices (b = 1..4), each output row's int8 table
// looked up inside the GEMM by a byte shuffle (vpshufb), the way llama.cpp's IQ4_NL and T-MAC's kernels decode.
//
//   y[m, n] = scale[n] * sum_k x[m, k] * table[n, idx[n, k]]
//
// x is float32 [M, K], quantized here per row to 16 bits and run as two int8 rows, its high and low bytes
// (activation_rows.h, as int8_int4_gemm does). table is int8 [N, 16] with entries in [-127, 127] (a b-bit codebook
// uses its first 2^b entries), scale float32 [N], w_sums int32 [N] = sum_k table[n, idx[n, k]].
//
// Packed indices: uint8, 2 * K * bits bytes per panel of 16 rows, panels in row order. A panel is stored chunk by
// chunk (128 k each), a chunk block by block (4 blocks of 4 rows: block j, lane l is row 16 * panel + 4 * j + l),
// and a block as `bits` 64-byte words. Lane l's 16 bytes of a word hold that row's indices for the chunk's
// sub-blocks of 16 k (byte i: k = 128 * chunk + 16 * s + i):
//   4 bits: word w's low nibbles hold sub-block 2w, its high nibbles 2w + 1
//   2 bits: word w's bits 2t, 2t + 1 hold sub-block 4w + t
//   1 bit:  word 0's bit s holds sub-block s
//   3 bits: words 0 and 1 as for 2 bits (the index's low two bits), word 2 as for 1 bit (its bit 2)
// so a lane is one row's 16 indices of a sub-block: the control of a 16-byte shuffle of that row's table.
//
// Paths, chosen per call (ATEN_CPU_CAPABILITY caps the choice, so tests reach each on any machine):
// - AVX512-VNNI, under 64 rows: one vpshufb of a block's 4 tables (one register) gives 4 rows x 16 int8 weights;
//   vpdpbusd takes them with the sub-block's 16 activations broadcast to each lane as uint8 a + 128; 128 * w_sums
//   comes off after, and each lane's 4 int32 sums add up at the tile's end. From 64 rows, each work item decodes
//   its panels once into uint8 weights t + 128 and runs them as int8_int4_gemm runs its weights (below). Exact:
//   |sum (a + 128) * t| <= 255 * 128 * K fits int32 for K <= 65536.
// - AVX2: the same, 2 rows a register, as vpmaddubsw(|a|, sign(t, a)) + vpmaddwd: exact (2 * 128 * 127 fits
//   int16) while no entry is -128, which is why tables stop at -127 (checked on this path).
// - plain C++.
// The high and low rows' sums combine in float32: y = a_scale * scale * (256 * hi + lo).
#include <ATen/core/Tensor.h>
#include <ATen/ops/bitwise_xor.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include "activation_rows.h"
#include "bf16_tiles.h"
#include "kernel_common.h"
#include "ops.h"
#include "vnni.h"

#include <atomic>
#include <cstdint>
#include <vector>

namespace {

using qc::Path;

constexpr int kPanelRows = 16;  // rows per panel: 4 blocks of 4
constexpr int kBlocks = 4;      // blocks per panel
constexpr int kChunk = 128;     // k per chunk
constexpr int kSubs = 8;        // sub-blocks of 16 k per chunk
constexpr int64_t kMaxK = 65536;
// Packed bytes a tile prefetches ahead of the ones it reads (as int8_int4_gemm: the hardware prefetchers alone
// leave decode short of the machine's read bandwidth).
constexpr int64_t kPrefetchAhead = 4096;

struct Problem {
  const int8_t* a;        // [2M, K]: each float row's high and low bytes as two int8 rows
  const uint8_t* au;      // VNNI: those rows + 128 as uint8; null on the other paths
  const float* a_scale;   // [M]
  const uint8_t* w;       // packed indices
  const int8_t* table;    // [N, 16]
  const int32_t* w_sums;  // [N]
  const float* scale;     // [N]
  float* y;               // [M, N]
  int64_t M, N, K;
  int bits;
};

inline int64_t chunk_bytes(int bits) { return int64_t(kBlocks) * bits * 64; }

// Block j's words for chunk c of the panel holding row n0.
inline const uint8_t* block_words(const Problem& p, int64_t n0, int64_t c, int j) {
  return p.w + (n0 / kPanelRows) * 2 * p.K * p.bits + c * chunk_bytes(p.bits) + int64_t(j) * p.bits * 64;
}

// y for output row m and `count` rows from n0, given the int32 sums of its high and low int8 rows.
inline void finish(const Problem& p, int64_t m, int64_t n0, int count, const int32_t* hi, const int32_t* lo) {
  for (int r = 0; r < count; ++r)
    p.y[m * p.N + n0 + r] = p.a_scale[m] * p.scale[n0 + r] * (256.0f * float(hi[r]) + float(lo[r]));
}

// ------------------------------------------------------------------ plain C++

// Lane l's index i of sub-block s, from its block's words.
inline int index_at(const uint8_t* words, int bits, int l, int s, int i) {
  const int at = l * 16 + i;
  switch (bits) {
    case 4: return (words[(s / 2) * 64 + at] >> (4 * (s % 2))) & 0xF;
    case 2: return (words[(s / 4) * 64 + at] >> (2 * (s % 4))) & 0x3;
    case 1: return (words[at] >> s) & 0x1;
    default: return ((words[(s / 4) * 64 + at] >> (2 * (s % 4))) & 0x3) | (((words[128 + at] >> s) & 0x1) << 2);
  }
}

void panel_scalar(const Problem& p, int64_t m0, int64_t m1, int64_t n0) {
  for (int64_t m = m0; m < m1; ++m) {
    int32_t sums[2][kPanelRows] = {};
    for (int h = 0; h < 2; ++h) {
      const int8_t* a = p.a + (2 * m + h) * p.K;
      for (int64_t c = 0; c < p.K / kChunk; ++c)
        for (int j = 0; j < kBlocks; ++j) {
          const uint8_t* words = block_words(p, n0, c, j);
          for (int l = 0; l < 4; ++l) {
            const int8_t* t = p.table + (n0 + 4 * j + l) * 16;
            int32_t s = 0;
            for (int sb = 0; sb < kSubs; ++sb)
              for (int i = 0; i < 16; ++i) s += int32_t(a[c * kChunk + 16 * sb + i]) * t[index_at(words, p.bits, l, sb, i)];
            sums[h][4 * j + l] += s;
          }
        }
    }
    finish(p, m, n0, kPanelRows, sums[0], sums[1]);
  }
}

// ------------------------------------------------------------------ AVX2

#define QC_AVX2_TARGET __attribute__((target("avx2,fma")))

// Sub-block S's indices (a byte each: 2 rows x 16) from a half block's words.
template <int BITS, int S>
QC_AVX2_TARGET __attribute__((always_inline)) inline __m256i indices_avx2(const __m256i* v) {
  if constexpr (BITS == 4) {
    return _mm256_and_si256(_mm256_srli_epi16(v[S / 2], 4 * (S % 2)), _mm256_set1_epi8(0x0F));
  } else if constexpr (BITS == 2) {
    return _mm256_and_si256(_mm256_srli_epi16(v[S / 4], 2 * (S % 4)), _mm256_set1_epi8(0x03));
  } else if constexpr (BITS == 1) {
    return _mm256_and_si256(_mm256_srli_epi16(v[0], S), _mm256_set1_epi8(0x01));
  } else {
    const __m256i low = _mm256_and_si256(_mm256_srli_epi16(v[S / 4], 2 * (S % 4)), _mm256_set1_epi8(0x03));
    __m256i bit;
    if constexpr (S >= 2) bit = _mm256_srli_epi16(v[2], S - 2);
    else bit = _mm256_slli_epi16(v[2], 2 - S);
    return _mm256_or_si256(low, _mm256_and_si256(bit, _mm256_set1_epi8(0x04)));
  }
}

// Sub-blocks S.. of one chunk: acc[r] += the products of int8 row r (x + r * K) with the 2 rows' weights.
template <int BITS, int ROWS, int S>
QC_AVX2_TARGET __attribute__((always_inline)) inline void subblocks_avx2(const __m256i* v, __m256i table,
                                                                        const int8_t* x, int64_t K,
                                                                        __m256i (&acc)[ROWS]) {
  const __m256i w = _mm256_shuffle_epi8(table, indices_avx2<BITS, S>(v)), ones = _mm256_set1_epi16(1);
#pragma GCC unroll 4
  for (int r = 0; r < ROWS; ++r) {
    const __m256i a = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + r * K + 16 * S)));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(w, a));
    acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(pairs, ones));
  }
  if constexpr (S + 1 < kSubs) subblocks_avx2<BITS, ROWS, S + 1>(v, table, x, K, acc);
}

// 2 int8 rows (output row m) x block j of the panel from n0: both halves of the block (2 rows each).
template <int BITS>
QC_AVX2_TARGET void block_avx2(const Problem& p, int64_t m, int64_t n0, int j, std::atomic<bool>& bad_table) {
  const int8_t* x = p.a + 2 * m * p.K;
  int32_t sums[2][4];
  for (int h = 0; h < 2; ++h) {
    const int64_t n = n0 + 4 * j + 2 * h;
    const __m256i table = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.table + n * 16));
    if (_mm256_movemask_epi8(_mm256_cmpeq_epi8(table, _mm256_set1_epi8(-128)))) bad_table = true;
    __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int64_t c = 0; c < p.K / kChunk; ++c) {
      const uint8_t* words = block_words(p, n0, c, j) + 32 * h;
      _mm_prefetch(reinterpret_cast<const char*>(words + kPrefetchAhead), _MM_HINT_T0);
      __m256i v[BITS];
#pragma GCC unroll 4
      for (int l = 0; l < BITS; ++l) v[l] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + 64 * l));
      subblocks_avx2<BITS, 2, 0>(v, table, x + c * kChunk, p.K, acc);
    }
    for (int r = 0; r < 2; ++r) {  // lane l's 4 int32 sums are row 2h + l's
      alignas(32) int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[r]);
      for (int l = 0; l < 2; ++l) sums[r][2 * h + l] = lanes[4 * l] + lanes[4 * l + 1] + lanes[4 * l + 2] + lanes[4 * l + 3];
    }
  }
  finish(p, m, n0 + 4 * j, 4, sums[0], sums[1]);
}

template <int BITS>
void panel_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t n0, std::atomic<bool>& bad_table) {
  for (int64_t m = m0; m < m1; ++m)
    for (int j = 0; j < kBlocks; ++j) block_avx2<BITS>(p, m, n0, j, bad_table);
}

// ------------------------------------------------------------------ AVX-512 VNNI

// Sub-block S's indices (a byte each: 4 rows x 16) from a block's words.
template <int BITS, int S>
QC_VNNI_TARGET __attribute__((always_inline)) inline __m512i indices_vnni(const __m512i* v) {
  if constexpr (BITS == 4) {
    return _mm512_and_si512(_mm512_srli_epi16(v[S / 2], 4 * (S % 2)), _mm512_set1_epi8(0x0F));
  } else if constexpr (BITS == 2) {
    return _mm512_and_si512(_mm512_srli_epi16(v[S / 4], 2 * (S % 4)), _mm512_set1_epi8(0x03));
  } else if constexpr (BITS == 1) {
    return _mm512_and_si512(_mm512_srli_epi16(v[0], S), _mm512_set1_epi8(0x01));
  } else {
    const __m512i low = _mm512_and_si512(_mm512_srli_epi16(v[S / 4], 2 * (S % 4)), _mm512_set1_epi8(0x03));
    __m512i bit;
    if constexpr (S >= 2) bit = _mm512_srli_epi16(v[2], S - 2);
    else bit = _mm512_slli_epi16(v[2], 2 - S);
    return _mm512_or_si512(low, _mm512_and_si512(bit, _mm512_set1_epi8(0x04)));
  }
}

// Sub-blocks S.. of one chunk for block j: acc[r][j] += uint8 row r (u + r * K) times the block's weights.
template <int BITS, int ROWS, int S>
QC_VNNI_TARGET __attribute__((always_inline)) inline void subblocks_vnni(const __m512i* v, __m512i table,
                                                                        const uint8_t* u, int64_t K, int j,
                                                                        __m512i (&acc)[ROWS][kBlocks]) {
  const __m512i w = _mm512_shuffle_epi8(table, indices_vnni<BITS, S>(v));
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
    const __m512i a = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u + r * K + 16 * S)));
    acc[r][j] = qc::dpbusd(acc[r][j], a, w);
  }
  if constexpr (S + 1 < kSubs) subblocks_vnni<BITS, ROWS, S + 1>(v, table, u, K, j, acc);
}

// ROWS int8 rows (ROWS / 2 output rows from m0) x the panel of 16 rows from n0: every chunk, all in registers.
template <int BITS, int ROWS>
QC_VNNI_TARGET void tile_vnni(const Problem& p, int64_t m0, int64_t n0) {
  __m512i acc[ROWS][kBlocks], table[kBlocks];
#pragma GCC unroll 4
  for (int j = 0; j < kBlocks; ++j) {
    table[j] = _mm512_loadu_si512(p.table + (n0 + 4 * j) * 16);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) acc[r][j] = _mm512_setzero_si512();
  }
  const uint8_t* u = p.au + 2 * m0 * p.K;
  const uint8_t* panel = block_words(p, n0, 0, 0);
  for (int64_t c = 0; c < p.K / kChunk; ++c) {
    const uint8_t* chunk = panel + c * chunk_bytes(BITS);
#pragma GCC unroll 4
    for (int j = 0; j < kBlocks; ++j) {
      __m512i v[BITS];
#pragma GCC unroll 4
      for (int l = 0; l < BITS; ++l) {
        const uint8_t* word = chunk + (j * BITS + l) * 64;
        _mm_prefetch(reinterpret_cast<const char*>(word + kPrefetchAhead), _MM_HINT_T0);
        v[l] = _mm512_loadu_si512(word);
      }
      subblocks_vnni<BITS, ROWS, 0>(v, table[j], u + c * kChunk, p.K, j, acc);
    }
  }
  for (int o = 0; o < ROWS / 2; ++o) {  // lane l of block j's 4 int32 sums are row 4j + l's
    int32_t sums[2][kPanelRows];
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < kBlocks; ++j) {
        alignas(64) int32_t lanes[16];
        _mm512_store_si512(lanes, acc[2 * o + h][j]);
        for (int l = 0; l < 4; ++l)
          sums[h][4 * j + l] = lanes[4 * l] + lanes[4 * l + 1] + lanes[4 * l + 2] + lanes[4 * l + 3] -
                               128 * p.w_sums[n0 + 4 * j + l];
      }
    finish(p, m0 + o, n0, kPanelRows, sums[0], sums[1]);
  }
}

// Output rows [m0, m1) x one panel: tiles of 2 output rows (4 int8 rows), the odd one alone.
template <int BITS>
void panel_vnni(const Problem& p, int64_t m0, int64_t m1, int64_t n0) {
  int64_t m = m0;
  for (; m + 2 <= m1; m += 2) tile_vnni<BITS, 4>(p, m, n0);
  if (m < m1) tile_vnni<BITS, 2>(p, m, n0);
}

// --- many rows (VNNI): each panel decoded once into uint8 weights, then an int8 GEMM on them.
// Shuffling the tables for every tile of rows costs as much as the products; from kManyRows output rows a work
// item decodes its panels into w8 [K / 4][16][4] (uint8 t + 128, k-quad by k-quad: the VNNI operand of 16
// weight rows) and runs int8_int4_gemm's form on them: per k-quad one weight register per panel, one vpdpbusd
// per int8 row with the row's 4 bytes broadcast from memory; 128 * (the row's sum) comes off after.

constexpr int64_t kManyRows = 64;      // output rows from which a call decodes its panels (measured crossover)
constexpr int64_t kRowsPerItem = 256;  // int8 rows per work item: its panels decoded once for them
constexpr int kTileRows = 8;           // int8 rows (4 output rows) x 2 panels per tile: 16 accumulators

// Sub-blocks S.. of one chunk for block j: the shuffled weights (lane l: row 4j + l's 16 k) transposed by k-quads
// (lane t: rows 4j..4j+3's 4 bytes of k-quad t) and stored where w8 keeps each k-quad's 16 rows.
template <int BITS, int S>
QC_VNNI_TARGET __attribute__((always_inline)) inline void decode_subblocks(const __m512i* v, __m512i table,
                                                                          __m512i by_quad, uint8_t* w8) {
  const __m512i w = _mm512_permutexvar_epi32(by_quad, _mm512_shuffle_epi8(table, indices_vnni<BITS, S>(v)));
  uint8_t* at = w8 + 4 * S * 64;  // k-quads 4S..4S+3 of the chunk
  _mm_storeu_si128(reinterpret_cast<__m128i*>(at), _mm512_extracti32x4_epi32(w, 0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(at + 64), _mm512_extracti32x4_epi32(w, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(at + 128), _mm512_extracti32x4_epi32(w, 2));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(at + 192), _mm512_extracti32x4_epi32(w, 3));
  if constexpr (S + 1 < kSubs) decode_subblocks<BITS, S + 1>(v, table, by_quad, w8);
}

// Chunks [c0, c1) of the panel from n0 as uint8 weights t + 128, w8 [(c1 - c0) * 32][16][4]: each k-quad's 4 bytes
// for the panel's 16 rows.
template <int BITS>
QC_VNNI_TARGET void decode_panel(const Problem& p, int64_t n0, uint8_t* w8, int64_t c0, int64_t c1) {
  const uint8_t* panel = block_words(p, n0, 0, 0);
  const __m512i by_quad = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (int j = 0; j < kBlocks; ++j) {
    const __m512i table = _mm512_xor_si512(_mm512_loadu_si512(p.table + (n0 + 4 * j) * 16), _mm512_set1_epi8(-128));
    for (int64_t c = c0; c < c1; ++c) {
      __m512i v[BITS];
      for (int l = 0; l < BITS; ++l) v[l] = _mm512_loadu_si512(panel + c * chunk_bytes(BITS) + (j * BITS + l) * 64);
      decode_subblocks<BITS, 0>(v, table, by_quad, w8 + (c - c0) * (kChunk / 4) * 64 + 16 * j);
    }
  }
}

template <int BITS>
QC_VNNI_TARGET void decode_panel(const Problem& p, int64_t n0, uint8_t* w8) {
  decode_panel<BITS>(p, n0, w8, 0, p.K / kChunk);
}

// --- many rows (AMX): the 4 panels of a 64-column tile panel decoded as above, then their uint8 t + 128 made
// bfloat16 t (exact) in the pairs AMX reads: out[(k - k0) / 2][16 * panel + lane][2].
template <int BITS>
QC_BF16_TARGET int64_t decode_bf16(const Problem& p, int64_t tile_panel, int64_t k0, int64_t kc, uint16_t* out) {
  const __m512i flip = _mm512_set1_epi8(-128);
  const int64_t n0 = tile_panel * qc::kTileCols, panels = std::min<int64_t>(qc::kTileCols, p.N - n0) / kPanelRows;
  thread_local std::vector<uint8_t> w8;  // this thread's decoded panel, [kc / 4][16][4] bytes
  w8.resize(kc * kPanelRows);
  for (int64_t j = 0; j < panels; ++j) {
    decode_panel<BITS>(p, n0 + j * kPanelRows, w8.data(), k0 / kChunk, (k0 + kc) / kChunk);
    for (int64_t q = 0; q < kc / 4; ++q)  // int8 t (t + 128 flipped): 16 rows x 4 k
      qc::store_int8_quads(_mm512_xor_si512(_mm512_loadu_si512(w8.data() + q * 64), flip),
                           out + 2 * q * qc::kTileCols * 2 + j * 2 * kPanelRows);
  }
  return panels * kPanelRows;
}

// x @ (table[idx] * scale)^T on bfloat16 tiles: the rows rounded to bfloat16, the entries exact, scale after.
template <int BITS>
void run_tiles(const Problem& p, const at::Tensor& a) {
  const at::Tensor rows = qc::bf16_rows(a, std::nullopt);
  const qc::Bf16Tiles tiles{rows.data_ptr<at::BFloat16>(), rows.size(1), nullptr, p.scale, p.y, p.M, p.N, p.K};
  qc::bf16_tile_gemm(tiles, [&](int64_t panel, int64_t k0, int64_t kc, uint16_t* out) {
    return decode_bf16<BITS>(p, panel, k0, kc, out);
  });
}

// ROWS int8 rows (from r0, ROWS / 2 output rows) x COLS decoded panels (w8 + j * panel, columns from n0): every
// k-quad, the int32 sums in registers; then y = a_scale * scale * (256 * hi + lo), hi and lo less 128 * row sum.
template <int ROWS, int COLS>
QC_VNNI_TARGET void many_tile(const Problem& p, const int32_t* row_sums, const uint8_t* w8, int64_t r0, int64_t n0) {
  __m512i acc[ROWS][COLS];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
    for (int j = 0; j < COLS; ++j) acc[r][j] = _mm512_setzero_si512();
  const int8_t* a = p.a + r0 * p.K;
  const int64_t panel = 16 * p.K;
  for (int64_t q = 0; q < p.K / 4; ++q) {  // K >= 128
    __m512i w[COLS];
#pragma GCC unroll 2
    for (int j = 0; j < COLS; ++j) w[j] = _mm512_loadu_si512(w8 + j * panel + q * 64);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 2
      for (int j = 0; j < COLS; ++j) acc[r][j] = qc::dpbusd_word(acc[r][j], w[j], a + r * p.K + 4 * q);
  }
#pragma GCC unroll 4
  for (int o = 0; o < ROWS / 2; ++o) {
    const int64_t m = r0 / 2 + o;
    const __m512i hi_shift = _mm512_set1_epi32(128 * row_sums[r0 + 2 * o]);
    const __m512i lo_shift = _mm512_set1_epi32(128 * row_sums[r0 + 2 * o + 1]);
#pragma GCC unroll 2
    for (int j = 0; j < COLS; ++j) {
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[2 * o][j], hi_shift));
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[2 * o + 1][j], lo_shift));
      const __m512 f = _mm512_fmadd_ps(hi, _mm512_set1_ps(256.0f), lo);
      const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(p.scale + n0 + 16 * j), _mm512_set1_ps(p.a_scale[m]));
      _mm512_storeu_ps(p.y + m * p.N + n0 + 16 * j, _mm512_mul_ps(f, s));
    }
  }
}

// Int8 rows [r0, r1) x the COLS panels from n0, decoded once: tiles of 8 int8 rows, the last ones 2 at a time.
template <int BITS, int COLS>
void panels_many_vnni(const Problem& p, const int32_t* row_sums, int64_t r0, int64_t r1, int64_t n0) {
  std::vector<uint8_t> w8(COLS * kPanelRows * p.K);
  for (int j = 0; j < COLS; ++j) decode_panel<BITS>(p, n0 + 16 * j, w8.data() + j * kPanelRows * p.K);
  int64_t r = r0;
  for (; r + kTileRows <= r1; r += kTileRows) many_tile<kTileRows, COLS>(p, row_sums, w8.data(), r, n0);
  for (; r < r1; r += 2) many_tile<2, COLS>(p, row_sums, w8.data(), r, n0);
}

template <int BITS>
void many_vnni(const Problem& p, const int32_t* row_sums, int64_t r0, int64_t r1, int64_t n0, int64_t cols) {
  if (cols == 2) panels_many_vnni<BITS, 2>(p, row_sums, r0, r1, n0);
  else panels_many_vnni<BITS, 1>(p, row_sums, r0, r1, n0);
}

// ------------------------------------------------------------------ dispatch

template <int BITS>
void run_panel(const Problem& p, Path path, int64_t m0, int64_t m1, int64_t n0, std::atomic<bool>& bad_table) {
  if (path == Path::kVnni) panel_vnni<BITS>(p, m0, m1, n0);
  else if (path == Path::kAvx2) panel_avx2<BITS>(p, m0, m1, n0, bad_table);
  else panel_scalar(p, m0, m1, n0);
}

void check_inputs(const at::Tensor& a, const at::Tensor& w, const at::Tensor& table, const at::Tensor& w_sums,
                  const at::Tensor& scale, int64_t bits) {
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kFloat, "codebook_gemm: a must be float32 [M, K], got ",
              a.scalar_type(), " ", a.sizes());
  TORCH_CHECK(bits >= 1 && bits <= 4, "codebook_gemm: bits must be 1, 2, 3 or 4, got ", bits);
  const int64_t K = a.size(1), N = scale.numel();
  TORCH_CHECK(K % kChunk == 0 && K <= kMaxK, "codebook_gemm: K = ", K, " must be a multiple of 128, at most 65536");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && N % kPanelRows == 0,
              "codebook_gemm: scale must be float32 [N] with N a multiple of 16, got ", scale.scalar_type(), " ",
              scale.sizes());
  TORCH_CHECK(table.scalar_type() == at::kChar && table.numel() == N * 16,
              "codebook_gemm: table must be int8 [N, 16] with N = ", N, ", got ", table.scalar_type(), " ",
              table.sizes());
  TORCH_CHECK(w_sums.scalar_type() == at::kInt && w_sums.numel() == N, "codebook_gemm: w_sums must be int32 [N] with N = ",
              N, ", got ", w_sums.scalar_type(), " ", w_sums.sizes());
  TORCH_CHECK(w.scalar_type() == at::kByte && w.numel() == N * K * bits / 8, "codebook_gemm: w must be uint8 with ",
              "N * K * bits / 8 = ", N * K * bits / 8, " bytes, got ", w.scalar_type(), " ", w.sizes());
}

}  // namespace

namespace qc {

at::Tensor codebook_gemm(const at::Tensor& a_in, const at::Tensor& w_in, const at::Tensor& table_in,
                         const at::Tensor& w_sums_in, const at::Tensor& scale_in, int64_t bits) {
  check_inputs(a_in, w_in, table_in, w_sums_in, scale_in, bits);
  const at::Tensor a = a_in.contiguous(), w = w_in.contiguous(), table = table_in.contiguous(),
                   w_sums = w_sums_in.contiguous(), scale = scale_in.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = scale.numel();
  const Path path = qc::path_here();
  at::Tensor y = at::empty({M, N}, a.options());
  if (qc::bf16_tiles_for(M)) {
    const Problem p{nullptr, nullptr, nullptr, w.data_ptr<uint8_t>(), table.data_ptr<int8_t>(), w_sums.data_ptr<int32_t>(),
                    scale.data_ptr<float>(), y.data_ptr<float>(), M, N, K, int(bits)};
    switch (bits) {
      case 1: run_tiles<1>(p, a); break;
      case 2: run_tiles<2>(p, a); break;
      case 3: run_tiles<3>(p, a); break;
      default: run_tiles<4>(p, a); break;
    }
    return y;
  }
  const qc::ActivationRows rows = qc::activation_rows(a, K, path);
  const bool many = path == Path::kVnni && M >= kManyRows;
  const at::Tensor au = path == Path::kVnni && !many ? at::bitwise_xor(rows.rows.view(at::kByte), 128) : at::Tensor();
  const Problem p{rows.rows.data_ptr<int8_t>(), au.defined() ? au.data_ptr<uint8_t>() : nullptr,
                  rows.scale.data_ptr<float>(), w.data_ptr<uint8_t>(), table.data_ptr<int8_t>(),
                  w_sums.data_ptr<int32_t>(), scale.data_ptr<float>(), y.data_ptr<float>(), M, N, K, int(bits)};
  std::atomic<bool> bad_table{false};
  const int64_t panels = N / kPanelRows;
  if (many) {  // work items: (256 int8 rows, 2 panels), the panels decoded once per item
    const at::Tensor row_sums = rows.rows.sum({1}, false, at::kInt);
    const int32_t* sums = row_sums.data_ptr<int32_t>();
    const int64_t int8_rows = 2 * M, pairs = (panels + 1) / 2, items = (int8_rows + kRowsPerItem - 1) / kRowsPerItem;
    at::parallel_for(0, items * pairs, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t r0 = (item / pairs) * kRowsPerItem, r1 = std::min(int8_rows, r0 + kRowsPerItem);
        const int64_t first = (item % pairs) * 2, cols = std::min<int64_t>(2, panels - first), n0 = first * kPanelRows;
        switch (bits) {
          case 1: many_vnni<1>(p, sums, r0, r1, n0, cols); break;
          case 2: many_vnni<2>(p, sums, r0, r1, n0, cols); break;
          case 3: many_vnni<3>(p, sums, r0, r1, n0, cols); break;
          default: many_vnni<4>(p, sums, r0, r1, n0, cols); break;
        }
      }
    });
    return y;
  }
  // Work items: (32 output rows, one panel of 16 rows); a panel's indices stay in cache across its rows.
  constexpr int64_t kRowChunk = 32;
  const int64_t row_items = (M + kRowChunk - 1) / kRowChunk;
  at::parallel_for(0, row_items * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t m0 = (item / panels) * kRowChunk, m1 = std::min(M, m0 + kRowChunk), n0 = (item % panels) * kPanelRows;
      switch (bits) {
        case 1: run_panel<1>(p, path, m0, m1, n0, bad_table); break;
        case 2: run_panel<2>(p, path, m0, m1, n0, bad_table); break;
        case 3: run_panel<3>(p, path, m0, m1, n0, bad_table); break;
        default: run_panel<4>(p, path, m0, m1, n0, bad_table); break;
      }
    }
  });
  TORCH_CHECK(!bad_table, "codebook_gemm: table entries must lie in [-127, 127] (the AVX2 path negates them); "
              "found -128");
  return y;
}

}  // namespace qc
