// qcompiler::int8_tile_gemm: int8 activations x int8 weights, exact int32 sums; AMX tiles for many rows, a VNNI
// GEMV for few.
//
//   y[m, n] = a_scale[m] * w_scale[n] * sum_k (a[m, k] - a_zero) * w[n, k]
//
// for int8 `a` [M, K] with an optional a_scale [M] (none: 1) and an optional a_zero: one float32 holding an integer
// in [-128, 127] (a static int8 zero point). Every path computes the same int32 sums exactly (|a - a_zero| <= 255,
// |w| <= 128 and K <= 65536 bound them below 2^31: no saturation, no overflow) and scales them the same way,
// float(sum) * a_scale[m] * w_scale[n]: the paths' outputs are bit-identical.
//
// Packed weight (runtime/int8_tile_gemm.py: pack): int8 [N/64][K/4 + 1][64][4], N padded to 64 and K to 4 with
// zeros. Block b holds columns 64b..64b+63 as one contiguous run: its quad q (256 bytes) holds w[64b + l, 4q + i]
// at byte 4l + i, which is the VNNI layout oneDNN's brgemm reads in place (ld_b = 64) and, 64 bytes at a time,
// the s8 operand of one vpdpbusd (16 columns x 4 k). The block's last quad holds its columns' int32 sums
// sum_k w[n, k] (little-endian), which take the zero points off: sum_k (a - z) w = sum_k a w - z * sum_k w.
//
// Four paths, chosen per call; ATen's CPU capability (ATEN_CPU_CAPABILITY) caps the choice, so tests reach every
// path on any machine:
//  - AMX, for M >= kAmxMinRows where oneDNN runs AMX-INT8: ATen's brgemm (oneDNN's ukernel), s8 x s8 -> s32 on
//    tiles (tdpbssd), per 64-column block and up to 128 rows.
//  - AVX512-VNNI: vpdpbusd multiplies u8 by s8, so the rows run as u = a + 128 (a ^ 0x80) and the sums take
//    (128 + a_zero) * sum_k w off. One row streams the weight once, prefetched ahead: a GEMV at memory speed.
//  - AVX2: both operands widened to int16, vpmaddwd (exact, where u8 x s8 vpmaddubsw saturates its pair sums).
//  - plain C++.
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <immintrin.h>

#include "activation_rows.h"
#include "bf16_tiles.h"
#include "kernel_common.h"
#include "ops.h"
#include "vnni.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

using qc::Path;

constexpr int64_t kBlock = 64;         // output columns per packed block
constexpr int64_t kQuad = 4;           // k per VNNI group
constexpr int64_t kQuadBytes = kBlock * kQuad;
constexpr int64_t kMaxK = 65536;       // 255 * 128 * 65536 < 2^31: the int32 sums are exact
// Rows from which the AMX path is faster than the VNNI one, measured on MiniLM's and a 7B decoder's shapes: at 4 rows
// 1.05-2.3x; at 1-2 rows the VNNI path is as fast or faster (up to 1.1x) where the weight dominates, whether read
// from cache or memory (both at the read bandwidth there), and the tiles win only on the smallest shapes.
constexpr int64_t kAmxMinRows = 4;
constexpr int64_t kFloatTileRows = 256;  // float rows from which the bfloat16 tiles beat the 16-bit int8 form
constexpr int64_t kRowChunk = 128;     // rows per work item (a multiple of the AMX calls' rows)
constexpr int64_t kAmxRows = 32;       // rows per brgemm call in a chunk of fewer rows
constexpr int64_t kAmxDepth = 1024;    // k per brgemm call where K is long
// Weight bytes a VNNI tile prefetches ahead of the ones it reads: a GEMV from memory at 7B shapes streams 1.05x faster
// than with the hardware prefetchers alone (29.4 to 31 GB/s on benchmarks/results/int8_tile_gemm.md's machine; 2-8 KB
// ahead alike).
constexpr int64_t kPrefetchAhead = 4096;

// int8_tile_gemm_requant's epilogue: the layer's float output, its activation, and the next layer's static int8
// quantization, written as int8 instead of the float32 output.
enum class Activation : int64_t { kNone = 0, kRelu = 1, kGelu = 2 };

constexpr float kMinOutScale = 0x1p-100f;  // the least out_scale: the quotient's correction stays exact above it

struct Requant {
  float a_scale;           // the rows' static scale, applied after w_scale (as the reference multiplies it)
  const float* bias;       // [N]; null: none
  Activation activation;
  float out_scale;         // q = clamp(round(y / out_scale) + out_zero, -128, 127)
  float out_zero;
  int8_t* q;               // [M, N]
};

struct Problem {
  const int8_t* a;        // [M, Kp]: a's rows padded to Kp; as u = a ^ 0x80 (uint8 bits) on the VNNI path
  const float* a_scale;   // [M]; null: 1
  int32_t shift;          // what the sums of these rows take off per unit of sum_k w: a_zero (+ 128 for u)
  const int8_t* w;        // packed
  const float* w_scale;   // [N]
  float* y;               // [M, N]; unused where requant is set
  int64_t M, N, Kp;
  const Requant* requant = nullptr;
};

inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

inline int64_t block_bytes(int64_t Kp) { return (Kp / kQuad + 1) * kQuadBytes; }

inline const int8_t* block_at(const Problem& p, int64_t b) { return p.w + b * block_bytes(p.Kp); }

inline const int32_t* column_sums(const Problem& p, int64_t b) {
  return reinterpret_cast<const int32_t*>(block_at(p, b) + p.Kp * kBlock);
}

// ------------------------------------------------------------------ the float step, every path alike

// Rows m0..m0+rows of `width` columns from n0: y = float(acc - offset) * a_scale * w_scale.
__attribute__((always_inline)) inline void finish_columns(const Problem& p, int64_t m0, int64_t rows, int64_t n0,
                                                          int64_t width, const int32_t* __restrict acc,
                                                          const int32_t* __restrict offset) {
  const float* __restrict w_scale = p.w_scale + n0;
  for (int64_t r = 0; r < rows; ++r) {
    const float a_scale = p.a_scale ? p.a_scale[m0 + r] : 1.0f;
    float* __restrict y = p.y + (m0 + r) * p.N + n0;
    for (int64_t l = 0; l < width; ++l) y[l] = float(acc[r * kBlock + l] - offset[l]) * a_scale * w_scale[l];
  }
}

// torch's erf-based GELU, 0.5 x (1 + erf(x / sqrt 2)), in float32.
inline float gelu(float x) { return x * 0.5f * (1.0f + std::erf(x * 0.70710678118654752f)); }

// The requantizing epilogue's value for one output: y = float(sum - offset) * w_scale * a_scale + bias, the
// activation, then q = clamp(round(y / out_scale) + out_zero) (the division and rounding half to even of the
// reference's quantize; |y / out_scale| clamped to 256 first, which changes no result and keeps the rounding exact).
inline int8_t requantized(const Requant& rq, int32_t sum, float w_scale, float bias) {
  float y = float(sum) * w_scale * rq.a_scale + bias;
  if (rq.activation == Activation::kRelu) y = std::max(y, 0.0f);
  else if (rq.activation == Activation::kGelu) y = gelu(y);
  const float t = std::min(std::max(y / rq.out_scale, -256.0f), 256.0f);
  return int8_t(std::min(std::max(float(qc::round_to_int(t)) + rq.out_zero, -128.0f), 127.0f));
}

// Not inlined: compiled for plain x86-64, it cannot contract y * a_scale + bias into an FMA where the reference
// rounds twice (the AVX-512 step below multiplies and adds apart too).
__attribute__((noinline)) void requant_columns(const Problem& p, int64_t m0, int64_t rows, int64_t n0, int64_t width, const int32_t* acc,
                     const int32_t* offset) {
  const Requant& rq = *p.requant;
  for (int64_t r = 0; r < rows; ++r) {
    int8_t* q = rq.q + (m0 + r) * p.N + n0;
    for (int64_t l = 0; l < width; ++l)
      q[l] = requantized(rq, acc[r * kBlock + l] - offset[l], p.w_scale[n0 + l], rq.bias ? rq.bias[n0 + l] : 0.0f);
  }
}

// Rows m0..m0+rows of block b's columns, given their int32 sums over k of row x w (acc, [rows][kBlock]):
// y = float(acc - shift * sum_k w) * a_scale * w_scale. One source, compiled per instruction set: GCC vectorizes
// the same IEEE operations in the same order, so every path's floats are the same. A full block's width is a
// constant to the compiler (whole vectors, unrolled, no remainder).
__attribute__((always_inline)) inline void finish(const Problem& p, int64_t m0, int64_t rows, int64_t b,
                                                  const int32_t* acc) {
  const int64_t n0 = b * kBlock, width = std::min(kBlock, p.N - n0);
  const int32_t* sums = column_sums(p, b);
  int32_t offset[kBlock];  // what the rows' shift takes off each column's sums, once for all the rows
  for (int64_t l = 0; l < kBlock; ++l) offset[l] = p.shift * sums[l];
  if (p.requant) requant_columns(p, m0, rows, n0, width, acc, offset);
  else if (width == kBlock) finish_columns(p, m0, rows, n0, kBlock, acc, offset);
  else finish_columns(p, m0, rows, n0, width, acc, offset);
}

#define QC_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

// e^x for x <= 0: x = n ln 2 + r (|r| <= ln 2 / 2, ln 2 in two parts), e^r by a degree-6 polynomial (the Taylor
// series' terms; relative error below 2^-22 there), times 2^n. Below -87.3 (e^x under float32's smallest normal) it
// returns about 1e-38.
QC_AVX512_TARGET inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 e = _mm512_set1_ps(1.0f / 720.0f);
  for (float c : {1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f}) e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(e, n);
}

// erf as torch's vectorized float erf computes it (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7):
// sign(x) (1 - t (p1 + t (p2 + t (p3 + t (p4 + t p5)))) e^(-x^2)), t = 1 / (1 + p |x|).
QC_AVX512_TARGET inline __m512 erf_as_torch(__m512 x) {
  const __m512 sign = _mm512_and_ps(x, _mm512_set1_ps(-0.0f)), a = _mm512_abs_ps(x), one = _mm512_set1_ps(1.0f);
  const __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, one);
  __m512 t = _mm512_rcp14_ps(d);  // 1 / d to 2^-14, one Newton step to about 2^-23 (a division costs 3x more here)
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
  __m512 r = _mm512_fmadd_ps(_mm512_set1_ps(1.061405429f), t, _mm512_set1_ps(-1.453152027f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(1.421413741f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-0.284496736f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(0.254829592f));
  const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(x, x)));
  const __m512 erf = _mm512_fmadd_ps(_mm512_mul_ps(t, _mm512_sub_ps(_mm512_setzero_ps(), e)), r, one);
  return _mm512_xor_ps(erf, sign);
}

// requant_columns, 16 columns at a time (the last masked), the GELU through erf_as_torch.
QC_AVX512_TARGET void requant_avx512(const Problem& p, int64_t m0, int64_t rows, int64_t n0, int64_t width,
                                     const int32_t* acc, const int32_t* offset) {
  const Requant& rq = *p.requant;
  const __m512 a_scale = _mm512_set1_ps(rq.a_scale), out_scale = _mm512_set1_ps(rq.out_scale);
  const __m512 inverse = _mm512_set1_ps(1.0f / rq.out_scale);  // correctly rounded, as the quotient step needs
  const __m512 out_zero = _mm512_set1_ps(rq.out_zero), limit = _mm512_set1_ps(256.0f);
  for (int64_t j = 0; j < width; j += 16) {
    const __mmask16 lanes = width - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (width - j)) - 1);
    const __m512i off = _mm512_maskz_loadu_epi32(lanes, offset + j);
    const __m512 w_scale = _mm512_maskz_loadu_ps(lanes, p.w_scale + n0 + j);
    const __m512 bias = rq.bias ? _mm512_maskz_loadu_ps(lanes, rq.bias + n0 + j) : _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
      const __m512i sum = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(lanes, acc + r * kBlock + j), off);
      __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum), w_scale), a_scale), bias);
      if (rq.activation == Activation::kRelu) y = _mm512_max_ps(y, _mm512_setzero_ps());
      else if (rq.activation == Activation::kGelu)
        y = _mm512_mul_ps(_mm512_mul_ps(y, _mm512_set1_ps(0.5f)),
                          _mm512_add_ps(_mm512_set1_ps(1.0f), erf_as_torch(_mm512_mul_ps(y, _mm512_set1_ps(0.70710678118654752f)))));
      // y / out_scale correctly rounded without a division (a division per vector cost more than the GELU): the
      // product with the reciprocal, then its residual's correction (Markstein; out_scale >= 2^-100 keeps the
      // residual a normal float). Where the product is infinite the residual is NaN: the product stands.
      const __m512 guess = _mm512_mul_ps(y, inverse);
      __m512 t = _mm512_fmadd_ps(_mm512_fnmadd_ps(guess, out_scale, y), inverse, guess);
      t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q), guess);
      // clamped to [-256, 256] as the scalar path (max first: a NaN y becomes -256)
      t = _mm512_min_ps(_mm512_max_ps(t, _mm512_sub_ps(_mm512_setzero_ps(), limit)), limit);
      t = _mm512_add_ps(_mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), out_zero);
      _mm512_mask_cvtsepi32_storeu_epi8(rq.q + (m0 + r) * p.N + n0 + j, lanes, _mm512_cvttps_epi32(t));
    }
  }
}

void finish_plain(const Problem& p, int64_t m0, int64_t rows, int64_t b, const int32_t* acc) {
  finish(p, m0, rows, b, acc);
}
__attribute__((target("avx2,fma"))) void finish_avx2(const Problem& p, int64_t m0, int64_t rows, int64_t b,
                                                     const int32_t* acc) {
  finish(p, m0, rows, b, acc);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) void finish_avx512(const Problem& p, int64_t m0, int64_t rows,
                                                                        int64_t b, const int32_t* acc) {
  if (!p.requant) return finish(p, m0, rows, b, acc);
  const int64_t n0 = b * kBlock;
  const int32_t* sums = column_sums(p, b);
  alignas(64) int32_t offset[kBlock];
  for (int64_t l = 0; l < kBlock; ++l) offset[l] = p.shift * sums[l];
  requant_avx512(p, m0, rows, n0, std::min(kBlock, p.N - n0), acc, offset);
}

// ------------------------------------------------------------------ plain C++

void rows_scalar(const Problem& p, int64_t m0, int64_t m1, int64_t b) {
  const int8_t* w = block_at(p, b);
  int32_t acc[kBlock];
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* a = p.a + m * p.Kp;
    std::fill(acc, acc + kBlock, 0);
    for (int64_t q = 0; q < p.Kp / kQuad; ++q)
      for (int64_t l = 0; l < kBlock; ++l)
        for (int64_t i = 0; i < kQuad; ++i) acc[l] += int32_t(a[q * kQuad + i]) * w[q * kQuadBytes + l * kQuad + i];
    finish_plain(p, m, 1, b, acc);
  }
}

// ------------------------------------------------------------------ AVX2

// Row r's quad q widened to int16 and repeated: the operand vpmaddwd pairs with 4 columns' quads.
__attribute__((target("avx2,fma"), always_inline)) inline __m256i quad16(const int8_t* a) {
  int32_t quad;
  std::memcpy(&quad, a, 4);
  return _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(quad)));
}

// ROWS rows x block b, 16 columns at a time: per quad, 4 vpmaddwd per row leave each column's sum in two lanes
// (its k pairs), added after the k loop.
template <int ROWS>
__attribute__((target("avx2,fma"))) void tile_avx2(const Problem& p, int64_t m0, int64_t b) {
  const int8_t* w = block_at(p, b);
  alignas(32) int32_t out[ROWS * kBlock];
  for (int64_t j = 0; j < kBlock / 16; ++j) {
    __m256i acc[ROWS][4];
    for (int r = 0; r < ROWS; ++r)
      for (int h = 0; h < 4; ++h) acc[r][h] = _mm256_setzero_si256();
    for (int64_t q = 0; q < p.Kp / kQuad; ++q) {
      const int8_t* wq = w + q * kQuadBytes + j * 64;
      __m256i wv[4];
      for (int h = 0; h < 4; ++h)  // 4 columns x 4 k each
        wv[h] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wq + 16 * h)));
      for (int r = 0; r < ROWS; ++r) {
        const __m256i x = quad16(p.a + (m0 + r) * p.Kp + q * kQuad);
        for (int h = 0; h < 4; ++h) acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(wv[h], x));
      }
    }
    for (int r = 0; r < ROWS; ++r)
      for (int h = 0; h < 4; h += 2) {  // hadd: columns 0 1 4 5 | 2 3 6 7; the permute puts them in order
        const __m256i v = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][h], acc[r][h + 1]), 0xD8);
        _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kBlock + j * 16 + h * 4), v);
      }
  }
  finish_avx2(p, m0, ROWS, b, out);
}

// Rows [m0, m1) of block b in tiles of 2 rows (8 sums, 4 weights and 2 rows fill 14 of the 16 registers).
template <int ROWS = 2>
__attribute__((target("avx2,fma"))) void rows_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t b) {
  for (; m0 + ROWS <= m1; m0 += ROWS) tile_avx2<ROWS>(p, m0, b);
  if constexpr (ROWS > 1) {
    if (m0 < m1) rows_avx2<ROWS - 1>(p, m0, m1, b);
  }
}

// ------------------------------------------------------------------ AVX-512 VNNI

// Quad q of ROWS rows (u = a ^ 0x80, from a) x a block (w) into acc: the block's 4 weight vectors and a broadcast
// per row, 4 * ROWS dot products.
template <int ROWS>
QC_VNNI_TARGET __attribute__((always_inline)) inline void quad_vnni(__m512i (&acc)[ROWS][4], const int8_t* w,
                                                                   const int8_t* a, int64_t Kp, int64_t q) {
  const int8_t* wq = w + q * kQuadBytes;
  __m512i wv[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    _mm_prefetch(reinterpret_cast<const char*>(wq + kPrefetchAhead + j * 64), _MM_HINT_T0);
    wv[j] = _mm512_loadu_si512(wq + j * 64);
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
    int32_t quad;
    std::memcpy(&quad, a + r * Kp + q * kQuad, 4);
    const __m512i x = _mm512_set1_epi32(quad);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[r][j] = qc::dpbusd(acc[r][j], x, wv[j]);
  }
}

// ROWS rows x block b, the int32 sums in registers (4 * ROWS of them per set, besides the 4 weights and a row).
// One or two rows keep two sets, for even and odd quads: 4 or 8 chains of dependent vpdpbusd would wait on its
// latency (5 cycles); 16 keep it busy.
template <int ROWS>
QC_VNNI_TARGET void tile_vnni(const Problem& p, int64_t m0, int64_t b) {
  constexpr int kSets = ROWS <= 2 ? 2 : 1;
  const int8_t* w = block_at(p, b);
  const int8_t* a = p.a + m0 * p.Kp;
  const int64_t quads = p.Kp / kQuad;
  __m512i acc[kSets][ROWS][4];
#pragma GCC unroll 2
  for (int s = 0; s < kSets; ++s)
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[s][r][j] = _mm512_setzero_si512();
  int64_t q = 0;
  for (; q + kSets <= quads; q += kSets)
#pragma GCC unroll 2
    for (int s = 0; s < kSets; ++s) quad_vnni<ROWS>(acc[s], w, a, p.Kp, q + s);
  if (q < quads) quad_vnni<ROWS>(acc[0], w, a, p.Kp, q);
  alignas(64) int32_t out[ROWS * kBlock];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      __m512i v = acc[0][r][j];
      if constexpr (kSets == 2) v = _mm512_add_epi32(v, acc[1][r][j]);
      _mm512_store_si512(out + r * kBlock + j * 16, v);
    }
  finish_avx512(p, m0, ROWS, b, out);
}

// Rows [m0, m1) of block b in tiles of 6 rows (24 sums, 4 weights and a row: 29 of the 32 registers), the last
// rows in one smaller tile.
template <int ROWS = 6>
QC_VNNI_TARGET void rows_vnni(const Problem& p, int64_t m0, int64_t m1, int64_t b) {
  for (; m0 + ROWS <= m1; m0 += ROWS) tile_vnni<ROWS>(p, m0, b);
  if constexpr (ROWS > 1) {
    if (m0 < m1) rows_vnni<ROWS - 1>(p, m0, m1, b);
  }
}

// ------------------------------------------------------------------ AMX

// Rows [m0, m1) of block b (at most kRowChunk): brgemm adds their int32 sums, s8 x s8 on AMX tiles, into a buffer
// the float step reads while it is in cache. Over a long K (> 2 kAmxDepth) a call takes kAmxDepth of it at a time,
// so that its rows and weights (128 KB and 64 KB) stay in L2 while the tiles pass over them again and again:
// 1.07-1.25x faster at K = 5120 and 11008, no faster at K = 4096. brgemm generates a kernel per shape (kept per
// thread): the rows go kRowChunk or kAmxRows at a time, the last (< kAmxRows) in one call, so a thread keeps few
// kernels per K whatever the calls' M.
void rows_amx(const Problem& p, int64_t m0, int64_t m1, int64_t b) {
  alignas(64) int32_t acc[kRowChunk * kBlock];
  const int64_t depth = p.Kp > 2 * kAmxDepth ? kAmxDepth : p.Kp;
  for (int64_t k0 = 0; k0 < p.Kp; k0 += depth) {
    const int64_t kc = std::min(depth, p.Kp - k0);
    for (int64_t m = m0; m < m1;) {
      const int64_t left = m1 - m, rows = left == kRowChunk ? kRowChunk : std::min(kAmxRows, left);
      at::native::cpublas::brgemm(rows, kBlock, kc, /*ld_a=*/p.Kp, /*ld_b=*/kBlock, /*ld_c=*/kBlock, /*add_C=*/k0 > 0,
                                  p.a + m * p.Kp + k0, block_at(p, b) + k0 * kBlock, acc + (m - m0) * kBlock,
                                  /*is_vnni=*/true);
      m += rows;
    }
  }
  finish_avx512(p, m0, m1 - m0, b, acc);
}

// ------------------------------------------------------------------ float rows (weight-only)

// Block b's weights for k in [k0, k0 + kc) (kc a multiple of 4) as bfloat16 (int8 values, exact), in the pairs AMX
// reads: out[(k - k0) / 2][l][2]. A quad's 64 columns are 4 vectors of 16 columns x 4 bytes (k = 4q + i at byte i).
QC_BF16_TARGET int64_t decode_int8_bf16(const int8_t* w, int64_t Kp, int64_t N, int64_t b, int64_t k0, int64_t kc,
                                        uint16_t* out) {
  const int8_t* block = w + b * block_bytes(Kp);
  for (int64_t q = k0 / kQuad; q < (k0 + kc) / kQuad; ++q)
#pragma GCC unroll 4
    for (int64_t j = 0; j < kBlock / 16; ++j)
      qc::store_int8_quads(_mm512_loadu_si512(block + q * kQuadBytes + j * 64),
                           out + (q * kQuad - k0) / 2 * qc::kTileCols * 2 + j * 32);
  return std::min(kBlock, N - b * kBlock);
}

// x @ (w * w_scale)^T for float rows on bfloat16 tiles: the rows rounded to bfloat16, the weight decoded per block.
at::Tensor float_rows_on_tiles(const at::Tensor& a, const at::Tensor& w, const at::Tensor& w_scale, int64_t Kp) {
  const int64_t M = a.size(0), N = w_scale.numel();
  const at::Tensor rows = qc::bf16_rows(a, std::nullopt);  // zero past K: the weight's padding to Kp is zero too
  at::Tensor y = at::empty({M, N}, a.options().dtype(at::kFloat));
  const int8_t* packed = w.data_ptr<int8_t>();
  const qc::Bf16Tiles tiles{rows.data_ptr<at::BFloat16>(), rows.size(1), nullptr, w_scale.data_ptr<float>(),
                            y.data_ptr<float>(), M, N, Kp};
  qc::bf16_tile_gemm(tiles, [&](int64_t b, int64_t k0, int64_t kc, uint16_t* out) {
    return decode_int8_bf16(packed, Kp, N, b, k0, kc, out);
  });
  return y;
}

// ------------------------------------------------------------------ dispatch

// Whether oneDNN runs int8 brgemm on AMX here: the CPU has AMX-INT8, the OS lets this process use the tiles
// (oneDNN asks Linux for them, arch_prctl(ARCH_REQ_XCOMP_PERM), when it detects the ISA), neither ONEDNN_MAX_CPU_ISA
// nor torch.backends.mkldnn turns it off. could_pack answers exactly that for int8 (torchao asks it the same way).
bool amx_here() { return at::native::cpublas::could_pack(at::kChar); }

enum class Route { kScalar, kAvx2, kVnni, kAmx };

// The path for M rows: AMX needs the AVX-512 capability too, so ATEN_CPU_CAPABILITY=avx2 reaches the AVX2 path.
Route route_for(int64_t M) {
  switch (qc::path_here()) {
    case Path::kVnni: return M >= kAmxMinRows && amx_here() ? Route::kAmx : Route::kVnni;
    case Path::kAvx2: return Route::kAvx2;
    default: return Route::kScalar;
  }
}

const char* route_name(Route route) {
  return route == Route::kAmx ? "amx" : qc::path_name(route == Route::kVnni ? Path::kVnni
                                                      : route == Route::kAvx2 ? Path::kAvx2 : Path::kScalar);
}

// The rows the kernels read: a's rows padded to Kp with zeros (the packed weight's padding is zero too), and on the
// VNNI path as uint8 u = a + 128, flipping the sign bit. a itself where neither is needed.
at::Tensor kernel_rows(const at::Tensor& a, int64_t Kp, bool unsigned_rows) {
  const int64_t M = a.size(0), K = a.size(1);
  if (Kp == K && !unsigned_rows) return a;
  at::Tensor rows = at::empty({M, Kp}, a.options());
  const uint8_t* src = static_cast<const uint8_t*>(a.data_ptr());
  uint8_t* out = static_cast<uint8_t*>(rows.data_ptr());
  const uint8_t flip = unsigned_rows ? 0x80 : 0;
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t k = 0; k < K; ++k) out[m * Kp + k] = src[m * K + k] ^ flip;
      std::fill(out + m * Kp + K, out + (m + 1) * Kp, flip);
    }
  });
  return rows;
}

// Work items: (kRowChunk rows, a block of 64 columns), a chunk's blocks consecutive: a thread writes its rows of y
// from left to right, which the hardware prefetchers follow (block by block down the rows, the float step waited
// on its stores' cache misses: 1.1-1.25x slower at M = 512-1024), and reads the weight once per chunk.
void run(const Problem& p, Route route) {
  const int64_t blocks = (p.N + kBlock - 1) / kBlock, chunks = (p.M + kRowChunk - 1) / kRowChunk;
  at::parallel_for(0, chunks * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item % blocks, m0 = (item / blocks) * kRowChunk, m1 = std::min(p.M, m0 + kRowChunk);
      switch (route) {
        case Route::kAmx: rows_amx(p, m0, m1, b); break;
        case Route::kVnni: rows_vnni(p, m0, m1, b); break;
        case Route::kAvx2: rows_avx2(p, m0, m1, b); break;
        default: rows_scalar(p, m0, m1, b);
      }
    }
    if (route == Route::kAmx) at::native::cpublas::brgemm_release();  // the thread's tiles, as torch's callers do
  });
}

// The int8 product for int8 rows `a` (the op's integer form): the path for its rows, the sums, the float step, or
// with `requant` its epilogue (which writes requant->q; the result is then an empty float32 tensor).
at::Tensor int8_rows(const at::Tensor& a, const std::optional<at::Tensor>& a_scale,
                     const std::optional<at::Tensor>& a_zero, const at::Tensor& w, const at::Tensor& w_scale,
                     const Requant* requant = nullptr) {
  const int64_t M = a.size(0), K = a.size(1), N = w_scale.numel(), Kp = round_up(K, kQuad);
  const Route route = route_for(M);
  const at::Tensor rows = kernel_rows(a, Kp, route == Route::kVnni);
  const int32_t zero = a_zero ? int32_t(a_zero->item<float>()) : 0;
  at::Tensor y = at::empty({requant ? 0 : M, N}, a.options().dtype(at::kFloat));
  const Problem p{rows.data_ptr<int8_t>(), a_scale ? a_scale->data_ptr<float>() : nullptr,
                  route == Route::kVnni ? zero + 128 : zero, w.data_ptr<int8_t>(), w_scale.data_ptr<float>(),
                  y.data_ptr<float>(), M, N, Kp, requant};
  run(p, route);
  return y;
}

// Float rows (weight-only layers): from kFloatTileRows rows where AMX-BF16 runs, on bfloat16 tiles (above); otherwise
// each row in 16 bits as activation_rows.h splits it, x = s * (256 * hi + lo), its hi and lo int8 rows interleaved
// (2m, 2m + 1) with scales 256 s and s, through int8_rows (on AMX's int8 tiles from 2 rows), the two halves of each
// output row added. The int8 tiles need no decoding and run at twice bfloat16's rate, but the split, the doubled
// output and the sum cost passes over both: measured on the AMX Xeon, the 16-bit form is 1.3-1.6x faster at 32-128
// rows of a 4096x11008 layer and as fast at 128 rows of MiniLM's, the bfloat16 tiles 1.4-1.5x faster at 512-1024
// rows of MiniLM's (docs/cpu-kernels.md).
at::Tensor float_rows(const at::Tensor& a, const at::Tensor& w, const at::Tensor& w_scale) {
  const int64_t M = a.size(0), K = a.size(1), N = w_scale.numel();
  if (M >= kFloatTileRows && qc::bf16_tiles_for(M)) return float_rows_on_tiles(a, w, w_scale, round_up(K, kQuad));
  const qc::ActivationRows rows = qc::activation_rows(a, K, qc::path_here());
  const at::Tensor scale = rows.scale.unsqueeze(1).mul(at::tensor({256.0f, 1.0f}, rows.scale.options())).reshape({2 * M});
  const at::Tensor both = int8_rows(rows.rows, scale, std::nullopt, w, w_scale).view({M, 2, N});
  return both.select(1, 0).add(both.select(1, 1));
}

// int8dq's rows: per row s = max(max(-min x, max x) / 127.5, eps) and q = clamp(round(x / s), -128, 127), each step
// the float32 operation int8dq's reference takes (x / s correctly rounded; rounding half to even), so q and s are its
// values exactly. max(-min x, max x) is max |x| (found on the floats' bits, which vectorizes). One source, compiled
// per instruction set (GCC vectorizes it; a scalar division per element cost int8dq twice its GEMMs).
//
// x / s without a division (vector divisions were 13% of MiniLM int8dq's time at 8x128): q0 = x * (1 / s), then
// q0 + (x - q0 s) / s with the residual exact in an FMA (Markstein), which is x / s correctly rounded while the
// residual is a normal float; for s below 2^-100 or above 2^100 (an infinity in the row) it may not be (measured: 0 of
// 2e8 such rows' elements differ inside, 0.1% of random float pairs outside), so those rows divide.
__attribute__((always_inline)) inline void dynamic_int8_row(const float* x, int64_t K, float eps, int8_t* q,
                                                            float* scale) {
  const float s = std::max(qc::row_scale(x, K, 1) / 127.5f, eps);  // row_scale(x, K, 1): max |x| (at least 1e-30)
  if (s >= 0x1p-100f && s <= 0x1p100f) {  // else (an infinity in the row, say) the residual may not be exact
    const float inv = 1.0f / s;
    for (int64_t k = 0; k < K; ++k) {
      const float q0 = x[k] * inv, t = std::fma(std::fma(-q0, s, x[k]), inv, q0);
      q[k] = int8_t(std::min(std::max(qc::round_to_int(t), -128), 127));
    }
  } else {
    for (int64_t k = 0; k < K; ++k) q[k] = int8_t(std::min(std::max(qc::round_to_int(x[k] / s), -128), 127));
  }
  *scale = s;
}

void dynamic_int8_row_plain(const float* x, int64_t K, float eps, int8_t* q, float* s) {
  dynamic_int8_row(x, K, eps, q, s);
}
__attribute__((target("avx2,fma"))) void dynamic_int8_row_avx2(const float* x, int64_t K, float eps, int8_t* q,
                                                               float* s) {
  dynamic_int8_row(x, K, eps, q, s);
}
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void dynamic_int8_row_avx512(const float* x, int64_t K,
                                                                                      float eps, int8_t* q, float* s) {
  dynamic_int8_row(x, K, eps, q, s);
}

std::pair<at::Tensor, at::Tensor> dynamic_int8_rows(const at::Tensor& x, float eps) {
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor q = at::empty({M, K}, x.options().dtype(at::kChar)), s = at::empty({M}, x.options());
  const float* src = x.data_ptr<float>();
  int8_t* out = q.data_ptr<int8_t>();
  float* scale = s.data_ptr<float>();
  const Path path = qc::path_here();
  const auto row = path == Path::kVnni ? dynamic_int8_row_avx512
                   : path == Path::kAvx2 ? dynamic_int8_row_avx2 : dynamic_int8_row_plain;
  at::parallel_for(0, M, 8, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) row(src + m * K, K, eps, out + m * K, scale + m);
  });
  return {q, s};
}

void check_inputs(const at::Tensor& a, const std::optional<at::Tensor>& a_scale, const std::optional<at::Tensor>& a_zero,
                  const at::Tensor& w, const at::Tensor& w_scale) {
  TORCH_CHECK(a.dim() == 2 && (a.scalar_type() == at::kChar || a.scalar_type() == at::kFloat),
              "int8_tile_gemm: a must be int8 or float32 [M, K], got ", a.scalar_type(), " ", a.sizes());
  TORCH_CHECK(a.scalar_type() == at::kChar || (!a_scale && !a_zero), "int8_tile_gemm: float32 a takes no a_scale or "
              "a_zero (the kernel takes the rows themselves, in 16 bits or on bfloat16 tiles)");
  const int64_t M = a.size(0), K = a.size(1);
  TORCH_CHECK(K >= 1 && K <= kMaxK, "int8_tile_gemm: K = ", K, " must be in [1, ", kMaxK,
              "] (the int32 sums must not overflow)");
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1, "int8_tile_gemm: w_scale must be float32 [N], "
              "got ", w_scale.scalar_type(), " ", w_scale.sizes());
  const int64_t N = w_scale.numel();
  const std::vector<int64_t> packed{(N + kBlock - 1) / kBlock, round_up(K, kQuad) / kQuad + 1, kBlock, kQuad};
  TORCH_CHECK(w.scalar_type() == at::kChar && w.sizes() == at::IntArrayRef(packed), "int8_tile_gemm: w must be "
              "int8_tile_gemm.pack's int8 ", at::IntArrayRef(packed), " for N = ", N, ", K = ", K, ", got ",
              w.scalar_type(), " ", w.sizes());
  TORCH_CHECK(!a_scale || (a_scale->scalar_type() == at::kFloat && a_scale->numel() == M),
              "int8_tile_gemm: a_scale must be float32 with M = ", M, " elements");
  TORCH_CHECK(!a_zero || (a_zero->scalar_type() == at::kFloat && a_zero->numel() == 1),
              "int8_tile_gemm: a_zero must be one float32 (a static zero point for every row)");
  if (a_zero) {
    const float z = a_zero->item<float>();
    TORCH_CHECK(z == std::nearbyint(z) && z >= -128.0f && z <= 127.0f, "int8_tile_gemm: a_zero = ", z,
                " must be an integer in [-128, 127]");
  }
}

}  // namespace

namespace qc {

at::Tensor int8_tile_gemm(const at::Tensor& a_in, const std::optional<at::Tensor>& a_scale_in,
                          const std::optional<at::Tensor>& a_zero, const at::Tensor& w_in,
                          const at::Tensor& w_scale_in) {
  check_inputs(a_in, a_scale_in, a_zero, w_in, w_scale_in);
  const at::Tensor a = a_in.contiguous(), w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  if (a.scalar_type() == at::kFloat) return float_rows(a, w, w_scale);
  return int8_rows(a, qc::contiguous(a_scale_in), a_zero, w, w_scale);
}

at::Tensor int8_tile_gemm_dq(const at::Tensor& x_in, const at::Tensor& eps, const at::Tensor& w_in,
                             const at::Tensor& w_scale_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "int8_tile_gemm_dq: x must be float32 [M, K], got ",
              x_in.scalar_type(), " ", x_in.sizes());
  TORCH_CHECK(eps.scalar_type() == at::kFloat && eps.numel() == 1, "int8_tile_gemm_dq: eps must be one float32");
  const auto [q, s] = dynamic_int8_rows(x_in.contiguous(), eps.item<float>());
  check_inputs(q, s, std::nullopt, w_in, w_scale_in);
  return int8_rows(q, s, std::nullopt, w_in.contiguous(), w_scale_in.contiguous());
}

at::Tensor int8_tile_gemm_requant(const at::Tensor& a_in, const at::Tensor& a_scale, const at::Tensor& a_zero,
                                  const at::Tensor& w_in, const at::Tensor& w_scale_in,
                                  const std::optional<at::Tensor>& bias_in, int64_t activation,
                                  const at::Tensor& out_scale, const at::Tensor& out_zero) {
  TORCH_CHECK(a_in.dim() == 2 && a_in.scalar_type() == at::kChar, "int8_tile_gemm_requant: a must be int8 [M, K], got ",
              a_in.scalar_type(), " ", a_in.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"a_scale", a_scale}, {"a_zero", a_zero},
                                {"out_scale", out_scale}, {"out_zero", out_zero}})
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1, "int8_tile_gemm_requant: ", name,
                " must be one float32");
  check_inputs(a_in, std::nullopt, a_zero, w_in, w_scale_in);
  TORCH_CHECK(activation >= 0 && activation <= 2, "int8_tile_gemm_requant: activation = ", activation,
              " must be 0 (none), 1 (relu) or 2 (gelu)");
  const float o_zero = out_zero.item<float>(), o_scale = out_scale.item<float>();
  TORCH_CHECK(o_zero == std::nearbyint(o_zero) && o_zero >= -128.0f && o_zero <= 127.0f,
              "int8_tile_gemm_requant: out_zero = ", o_zero, " must be an integer in [-128, 127]");
  TORCH_CHECK(o_scale >= kMinOutScale && std::isfinite(o_scale), "int8_tile_gemm_requant: out_scale = ", o_scale,
              " must be finite and at least 2^-100");
  const int64_t M = a_in.size(0), N = w_scale_in.numel();
  const std::optional<at::Tensor> bias = qc::contiguous(bias_in);
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->numel() == N),
              "int8_tile_gemm_requant: bias must be float32 with N = ", N, " elements");
  at::Tensor q = at::empty({M, N}, a_in.options());
  const Requant requant{a_scale.item<float>(), bias ? bias->data_ptr<float>() : nullptr, Activation(activation),
                        o_scale, o_zero, q.data_ptr<int8_t>()};
  int8_rows(a_in.contiguous(), std::nullopt, a_zero, w_in.contiguous(), w_scale_in.contiguous(), &requant);
  return q;
}

std::string int8_tile_gemm_path(int64_t rows) { return route_name(route_for(rows)); }

}  // namespace qc
