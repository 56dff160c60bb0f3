// qcompiler::cache_attention: the new tokens' queries attend over the filled prefix of a static KV cache, reading
// only the positions in use, the cache as stored (float32, bfloat16, or int8 with a float32 scale per token).
//
//   q [B, H, R, D] float32: rows r = l * groups + j (token l's j-th query head of kv head h, as capture_lm lays them)
//   k, v [C, H, S, D]; k_scale, v_scale [C, H, S, 1] float32 (int8 caches), start [B] int64, slot [B] int64 or
//   none: sequence b reads cache row slot[b] (C rows), or row b (C = B)
//   out[b, h, r] = softmax_p(scale * q_r . k_p) . v_p over p = 0 .. start[b] + r / groups
//
// Work items are (b, h, a block of rows, a split of the positions): a split reads its positions in chunks of 256;
// per chunk (converted to float32 once where it is bfloat16 or int8) the rows' scores q . k (each K row read once
// for every row of the block), each row's chunk maximum, the exponentials and their V sum, folded into the row's
// running maximum, sum and output (online softmax). Where the
// (b, h, row block) items are too few for the threads (decode: one row block per kv head), the positions are split
// across threads too and the splits' partial (max, sum, output) merge at the end (flash-decoding). On AVX-512 VNNI
// each chunk's keys are transposed once (16 positions to a register; a row's bytes a multiple of 64) and scored for
// up to 8 rows per key load: an int8 cache's (D <= 128) in integers, the block's query rows in 16 bits as two int8
// rows, two vpdpbusd per 4 dims and 16 positions (exact int32, the scales applied as the scores leave the
// registers); a float32 or bfloat16 cache's in float32, an FMA per dim and 16 positions. V rows (D % 32 == 0) are
// read as stored: a float32 or bfloat16 cache's widened in registers once for up to 8 rows, an int8 cache's summed
// in integers (each row's weights rounded to 16 bits per chunk, one vpdpwssd per pair of positions and 16 dims for
// every row, exact int32 sums scaled into the row's float32 sums once per chunk). The softmax runs 16 lanes wide.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <immintrin.h>

#include "activation_rows.h"
#include "kernel_common.h"
#include "ops.h"
#include "vnni.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kChunk = 256;   // positions scored at a time
constexpr int64_t kRowBlock = 32; // query rows sharing each K and V row read

enum class Store { kF32, kBF16, kInt8 };

struct Problem {
  const float* q;
  const void* k;
  const void* v;
  const float* k_scale;  // [B, H, S] or null
  const float* v_scale;
  Store store;
  const int64_t* start;
  const int64_t* slot;  // [B]: the cache row each sequence reads, or null (row b)
  float* out;
  int64_t B, H, R, S, D, groups;
  float scale;
  bool vnni;  // the AVX-512 VNNI path here: keys transposed and scored in 512-bit registers, V rows widened there
};

// The last position row r of sequence b attends (its token's own).
inline int64_t last_position(const Problem& p, int64_t b, int64_t r) { return p.start[b] + r / p.groups; }

// The cache row sequence b reads.
inline int64_t cache_row(const Problem& p, int64_t b) { return p.slot ? p.slot[b] : b; }

#define QC_INLINE __attribute__((always_inline)) inline

// The arithmetic is plain C++ that the compiler vectorizes for the target of the function it is inlined into
// (attend_avx2 or attend_plain below).

// A chunk of a cache (count values) as float32: the cache itself where it is float32, else converted into `buffer`
// once, for all the rows that read it.
template <Store S>
QC_INLINE const float* as_float(const void* rows, int64_t count, float* buffer) {
  if constexpr (S == Store::kF32) {
    return static_cast<const float*>(rows);
  } else if constexpr (S == Store::kBF16) {
    const uint16_t* in = static_cast<const uint16_t*>(rows);
    for (int64_t i = 0; i < count; ++i) {
      const uint32_t bits = uint32_t(in[i]) << 16;
      std::memcpy(buffer + i, &bits, 4);
    }
    return buffer;
  } else {
    const int8_t* in = static_cast<const int8_t*>(rows);
    for (int64_t i = 0; i < count; ++i) buffer[i] = float(in[i]);
    return buffer;
  }
}

template <Store S>
constexpr int64_t element_bytes() { return S == Store::kF32 ? 4 : S == Store::kBF16 ? 2 : 1; }

// 8 floats as one vector (GCC's vector extension: one register where the target has 256-bit vectors, two below)
typedef float f8 __attribute__((vector_size(32)));

QC_INLINE f8 load8(const float* at) {
  f8 v;
  std::memcpy(&v, at, sizeof v);
  return v;
}

QC_INLINE void store8(float* at, f8 v) { std::memcpy(at, &v, sizeof v); }

QC_INLINE float hsum(f8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

typedef int32_t i8v __attribute__((vector_size(32)));
// 16 floats and ints: one register in the AVX-512 functions below
typedef float f16 __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));

// e^x for each lane (Cephes' expf: 2^n times a degree-6 polynomial on [-ln2/2, ln2/2], within 2 ulp), 0 below -87
// (-inf included: a position the row does not see). F: a vector of floats, I: of as many int32.
template <typename F, typename I>
QC_INLINE F exp_of(F x) {
  const I seen = x > -87.0f;
  x = x < 88.0f ? x : F{} + 88.0f;
  x = x > -87.0f ? x : F{} - 87.0f;
  F n = x * 1.44269504088896341f + 0.5f;
  F whole = __builtin_convertvector(__builtin_convertvector(n, I), F);
  whole += __builtin_convertvector(whole > n, F);  // floor: truncation less 1 where it rounded up
  const F r = x - whole * 0.693359375f + whole * 2.12194440e-4f;
  F y = 1.9875691500e-4f * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const I scale = (__builtin_convertvector(whole, I) + 127) << 23;
  I bits;
  std::memcpy(&bits, &y, sizeof bits);
  bits = (bits + (scale - (127 << 23))) & seen;  // y * 2^n: n added to the exponent field
  F out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// row[j] = e^(row[j] - m) for j < n, and their sum, a vector F at a time
template <typename F, typename I>
QC_INLINE float exps(float* row, int64_t n, float m) {
  constexpr int kWidth = sizeof(F) / 4;
  F sum = {};
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    F x;
    std::memcpy(&x, row + j, sizeof x);
    const F e = exp_of<F, I>(x - m);
    std::memcpy(row + j, &e, sizeof e);
    sum += e;
  }
  float total = 0.0f;
  for (int l = 0; l < kWidth; ++l) total += sum[l];
  for (; j < n; ++j) total += (row[j] = std::exp(row[j] - m));
  return total;
}

// The largest of row[0 .. n), -inf where n is 0: a vector F of running maxima (a chain of scalar maxima runs at its
// latency)
template <typename F>
QC_INLINE float largest(const float* row, int64_t n) {
  constexpr int kWidth = sizeof(F) / 4;
  F top = F{} - std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    F x;
    std::memcpy(&x, row + j, sizeof x);
    top = x > top ? x : top;
  }
  float out = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < kWidth; ++l) out = std::max(out, top[l]);
  for (; j < n; ++j) out = std::max(out, row[j]);
  return out;
}

// The same on AVX-512, 16 lanes at a time (the VNNI path's)
__attribute__((target("avx512f,avx512bw,avx512vl"))) float exps_wide(float* row, int64_t n, float m) {
  return exps<f16, i16v>(row, n, m);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) float largest_wide(const float* row, int64_t n) {
  return largest<f16>(row, n);
}

// scores[j] (j < n) = q . k_j for one row: 4 positions at a time, each an independent vector sum (D % 8 == 0)
QC_INLINE void row_scores(const float* q, const float* k, int64_t D, int64_t n, float* scores) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    f8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    const float* kj = k + j * D;
    for (int64_t d = 0; d < D; d += 8) {
      const f8 qv = load8(q + d);
      a0 += qv * load8(kj + d);
      a1 += qv * load8(kj + D + d);
      a2 += qv * load8(kj + 2 * D + d);
      a3 += qv * load8(kj + 3 * D + d);
    }
    scores[j] = hsum(a0);
    scores[j + 1] = hsum(a1);
    scores[j + 2] = hsum(a2);
    scores[j + 3] = hsum(a3);
  }
  for (; j < n; ++j) {
    f8 a = {};
    for (int64_t d = 0; d < D; d += 8) a += load8(q + d) * load8(k + j * D + d);
    scores[j] = hsum(a);
  }
}

// out += sum_j w[j] * v_j for one row, 64 of its D values at a time held in 8 vectors across the positions
// (D % 8 == 0)
QC_INLINE void row_values(const float* w, const float* v, int64_t D, int64_t n, float* out) {
  for (int64_t d0 = 0; d0 < D; d0 += 64) {
    const int vectors = int(std::min<int64_t>(64, D - d0) / 8);
    f8 acc[8];
    for (int t = 0; t < 8; ++t) acc[t] = t < vectors ? load8(out + d0 + 8 * t) : f8{};
    for (int64_t j = 0; j < n; ++j) {
      if (w[j] == 0.0f) continue;  // a position past the row's own
      const float* vj = v + j * D + d0;
      if (vectors == 8) {
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) acc[t] += w[j] * load8(vj + 8 * t);
      } else {
        for (int t = 0; t < vectors; ++t) acc[t] += w[j] * load8(vj + 8 * t);
      }
    }
    for (int t = 0; t < vectors; ++t) store8(out + d0 + 8 * t, acc[t]);
  }
}

// q . k over D, in 8 independent sums (one vector register's lanes)
QC_INLINE float dot(const float* q, const float* k, int64_t D) {
  float acc[8] = {};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int l = 0; l < 8; ++l) acc[l] += q[d + l] * k[d + l];
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; d < D; ++d) sum += q[d] * k[d];
  return sum;
}

// ---- AVX-512 VNNI: keys transposed per chunk, an int8 cache's q . k in integers

// Each row of q in 16 bits (v = round(q / s), |v| <= 32639) as two int8 rows, its high and low bytes
// (v = 256 * hi + lo, activation_rows.h's encoding), and 128 * (256 * sum hi + sum lo), what the unsigned K bytes'
// bias adds to the dot product.
struct Rows16 {
  std::vector<int8_t> hi, lo;
  std::vector<int32_t> bias;
  std::vector<float> scale;
  Rows16(const float* q, int64_t rows, int64_t D) : hi(rows * D), lo(rows * D), bias(rows), scale(rows) {
    for (int64_t i = 0; i < rows; ++i) {
      scale[i] = qc::row_scale(q + i * D, D, qc::kInt16Max);
      const float inv = 1.0f / scale[i];
      int32_t sum = 0;
      for (int64_t d = 0; d < D; ++d) {
        const int32_t v = qc::quantize_to(q[i * D + d], inv, qc::kInt16Max), h = (v + 128) >> 8;
        hi[i * D + d] = int8_t(h);
        lo[i * D + d] = int8_t(v - 256 * h);
        sum += v;
      }
      bias[i] = 128 * sum;
    }
  }
};

// A chunk's K rows (n rows of `row_bytes`, a multiple of 64) with 16 positions in the lanes: for each group g of 16
// positions and each dword t of a row, 64 bytes whose lane l holds dword t of position 16 g + l (4 dims of an int8
// cache, xor 128 where `flip`: unsigned for vpdpbusd; 2 of a bfloat16 one; 1 of a float32 one); positions past n
// are zeros (their scores never used). Per 16 positions and 64 bytes, a 16 x 16 transpose of dwords in registers.
// The V rows of the same positions (`v`) are prefetched into L2 meanwhile, a line per K row loaded: the V sums read
// them from there while the next chunk's keys are on their way (see values_of).
__attribute__((target("avx512f,avx512bw,avx512vl"))) void transpose_keys(const char* k, int64_t n, int64_t row_bytes,
                                                                        bool flip, uint8_t* out, const char* v) {
  const __m512i bias = _mm512_set1_epi8(flip ? char(0x80) : 0);
  const int64_t dwords = row_bytes / 4;
  for (int64_t g = 0; 16 * g < n; ++g)
    for (int64_t d0 = 0; d0 < row_bytes; d0 += 64) {
      __m512i r[16], a[16], b[16];
      for (int p = 0; p < 16; ++p) {
        if (16 * g + p >= n) {
          r[p] = _mm512_setzero_si512();
          continue;
        }
        _mm_prefetch(v + (16 * g + p) * row_bytes + d0, _MM_HINT_T1);
        r[p] = _mm512_loadu_si512(k + (16 * g + p) * row_bytes + d0);
      }
      for (int i = 0; i < 8; ++i) {  // per 128-bit lane: [A0 B0 A1 B1], [A2 B2 A3 B3]
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 4; ++i) {  // b[4 i + e], lane k: dword 4 k + e of positions 4 i .. 4 i + 3
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
      }
      uint8_t* dst = out + (g * dwords + d0 / 4) * 64;
      for (int e = 0; e < 4; ++e) {  // the 4 x 4 transpose of 128-bit lanes across positions' groups
        const __m512i u0 = _mm512_shuffle_i32x4(b[e], b[4 + e], 0x44), u1 = _mm512_shuffle_i32x4(b[e], b[4 + e], 0xEE);
        const __m512i u2 = _mm512_shuffle_i32x4(b[8 + e], b[12 + e], 0x44);
        const __m512i u3 = _mm512_shuffle_i32x4(b[8 + e], b[12 + e], 0xEE);
        const __m512i y[4] = {_mm512_shuffle_i32x4(u0, u2, 0x88), _mm512_shuffle_i32x4(u0, u2, 0xDD),
                              _mm512_shuffle_i32x4(u1, u3, 0x88), _mm512_shuffle_i32x4(u1, u3, 0xDD)};
        for (int lane = 0; lane < 4; ++lane)  // dword t = 4 lane + e of the 16 positions
          _mm512_storeu_si512(dst + (4 * lane + e) * 64, _mm512_xor_si512(y[lane], bias));
      }
    }
}

// scores[i][j] = scale * q_i . k_j for a float32 or bfloat16 cache's transposed keys: per 16 positions and dword, one
// load for Rows rows, an FMA per dim and row with the row's value broadcast (bfloat16: the dword's two dims widened
// by a shift and a mask).
template <Store S, int Rows>
__attribute__((target("avx512f,avx512bw,avx512vl"))) QC_INLINE void float_scores_of(const float* q, int64_t i0,
                                                                                    const uint8_t* keys, int64_t n,
                                                                                    int64_t D, float scale,
                                                                                    float* scores) {
  const int64_t dwords = D * element_bytes<S>() / 4;
  const __m512i high = _mm512_set1_epi32(int32_t(0xFFFF0000u));
  for (int64_t g = 0; 16 * g < n; ++g) {
    __m512 acc[Rows];
    for (int i = 0; i < Rows; ++i) acc[i] = _mm512_setzero_ps();
    const uint8_t* kg = keys + g * dwords * 64;
    for (int64_t t = 0; t < dwords; ++t) {
      const __m512i k = _mm512_loadu_si512(kg + t * 64);
      if constexpr (S == Store::kF32) {
        for (int i = 0; i < Rows; ++i)
          acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[(i0 + i) * D + t]), _mm512_castsi512_ps(k), acc[i]);
      } else {
        const __m512 k0 = _mm512_castsi512_ps(_mm512_slli_epi32(k, 16));
        const __m512 k1 = _mm512_castsi512_ps(_mm512_and_si512(k, high));
        for (int i = 0; i < Rows; ++i) {
          acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[(i0 + i) * D + 2 * t]), k0, acc[i]);
          acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[(i0 + i) * D + 2 * t + 1]), k1, acc[i]);
        }
      }
    }
    const __mmask16 live = __mmask16((1u << std::min<int64_t>(16, n - 16 * g)) - 1);
    for (int i = 0; i < Rows; ++i)
      _mm512_mask_storeu_ps(scores + (i0 + i) * kChunk + 16 * g, live, _mm512_mul_ps(acc[i], _mm512_set1_ps(scale)));
  }
}

template <Store S>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void float_scores(const float* q, int64_t rows,
                                                                       const uint8_t* keys, int64_t n, int64_t D,
                                                                       float scale, float* scores) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) float_scores_of<S, 8>(q, i, keys, n, D, scale, scores);
  for (; i + 4 <= rows; i += 4) float_scores_of<S, 4>(q, i, keys, n, D, scale, scores);
  for (; i < rows; ++i) float_scores_of<S, 1>(q, i, keys, n, D, scale, scores);
}

// scores[i][j] = scale * k_scale[j] * q_i . k_j for the rows and n positions: per 16 positions and 4 d, one K
// load for up to 4 rows, two vpdpbusd per row (its high and low bytes broadcast): 2 D / 4 instructions per 16
// positions and row.
template <int Rows>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) QC_INLINE void int8_scores_of(
    const Rows16& q, int64_t i0, const uint8_t* keys, const float* k_scale, int64_t n, int64_t D, float scale,
    float* scores) {
  const int64_t quads = D / 4;
  for (int64_t g = 0; 16 * g < n; ++g) {
    __m512i h[Rows], l[Rows];
    for (int i = 0; i < Rows; ++i) h[i] = l[i] = _mm512_setzero_si512();
    const uint8_t* kg = keys + g * quads * 64;
    for (int64_t t = 0; t < quads; ++t) {
      const __m512i kb = _mm512_loadu_si512(kg + t * 64);
      for (int i = 0; i < Rows; ++i) {
        h[i] = qc::dpbusd_word(h[i], kb, q.hi.data() + (i0 + i) * D + 4 * t);
        l[i] = qc::dpbusd_word(l[i], kb, q.lo.data() + (i0 + i) * D + 4 * t);
      }
    }
    const int64_t left = std::min<int64_t>(16, n - 16 * g);
    const __mmask16 live = __mmask16((1u << left) - 1);
    const __m512 ks = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, k_scale + 16 * g), _mm512_set1_ps(scale));
    for (int i = 0; i < Rows; ++i) {
      const __m512i dot =
          _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(h[i], 8), l[i]), _mm512_set1_epi32(q.bias[i0 + i]));
      const __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ks, _mm512_set1_ps(q.scale[i0 + i])));
      _mm512_mask_storeu_ps(scores + (i0 + i) * kChunk + 16 * g, live, s);
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void int8_scores(const Rows16& q, int64_t rows,
                                                                               const uint8_t* keys,
                                                                               const float* k_scale, int64_t n,
                                                                               int64_t D, float scale, float* scores) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) int8_scores_of<4>(q, i, keys, k_scale, n, D, scale, scores);
  for (; i < rows; ++i) int8_scores_of<1>(q, i, keys, k_scale, n, D, scale, scores);
}

// 16 values of a V row from `at` as float32 (the stored type widened)
template <Store S>
__attribute__((target("avx512f,avx512bw,avx512vl"))) QC_INLINE __m512 widen16(const void* at) {
  if constexpr (S == Store::kF32) {
    return _mm512_loadu_ps(at);
  } else if constexpr (S == Store::kBF16) {
    const __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(at)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
  } else {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(static_cast<const __m128i*>(at))));
  }
}

// acc[i] += sum_j w[i][j] * v_j for Rows rows and n V rows as stored, 32 of D at a time: each v_j's 32 values loaded
// and widened to float32 once for all the rows (w holds v's scale where the cache is int8).
// The next chunk's K rows (`next`, `ahead` of them; null: none) are prefetched into L2 meanwhile, one row per V row
// read: the memory reads run beside the arithmetic rather than after it. Without them a layer's cache read from
// memory took the arithmetic's time plus the reads' (float32, 2,048 positions: 141 us from L3, 342 us from memory;
// with them 230 us). Into L1 (T0) they changed nothing measurable: the lines would evict the chunk being read.
template <Store S, int Rows>
__attribute__((target("avx512f,avx512bw,avx512vl"))) QC_INLINE void values_of(const float* w, int64_t i0,
                                                                              const void* v, int64_t n, int64_t D,
                                                                              float* acc, const char* next,
                                                                              int64_t ahead) {
  const char* bytes = static_cast<const char*>(v);
  const int64_t row_bytes = D * element_bytes<S>(), halves = D / 32;
  for (int64_t d0 = 0; d0 < D; d0 += 32) {
    __m512 a[Rows][2];
    for (int i = 0; i < Rows; ++i)
      for (int e = 0; e < 2; ++e) a[i][e] = _mm512_loadu_ps(acc + (i0 + i) * D + d0 + 16 * e);
    for (int64_t j = 0; j < n; ++j) {
      const char* vj = bytes + (j * D + d0) * element_bytes<S>();
      if (next && j < ahead)  // this pass's share of row j's lines
        for (int64_t o = d0 / 32 * row_bytes / halves; o < (d0 / 32 + 1) * row_bytes / halves; o += 64)
          _mm_prefetch(next + j * row_bytes + o, _MM_HINT_T1);
      const __m512 v0 = widen16<S>(vj), v1 = widen16<S>(vj + 16 * element_bytes<S>());
      for (int i = 0; i < Rows; ++i) {
        const __m512 wi = _mm512_set1_ps(w[(i0 + i) * kChunk + j]);
        a[i][0] = _mm512_fmadd_ps(wi, v0, a[i][0]);
        a[i][1] = _mm512_fmadd_ps(wi, v1, a[i][1]);
      }
    }
    for (int i = 0; i < Rows; ++i)
      for (int e = 0; e < 2; ++e) _mm512_storeu_ps(acc + (i0 + i) * D + d0 + 16 * e, a[i][e]);
  }
}

// The rows' V sums on AVX-512 (D % 32 == 0), rows 8 at a time
template <Store S>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void wide_values(const float* w, int64_t rows, const void* v,
                                                                      int64_t n, int64_t D, float* acc,
                                                                      const char* next, int64_t ahead) {
  int64_t i = 0;  // the first call prefetches
  for (; i + 8 <= rows; i += 8, next = nullptr) values_of<S, 8>(w, i, v, n, D, acc, next, ahead);
  for (; i + 4 <= rows; i += 4, next = nullptr) values_of<S, 4>(w, i, v, n, D, acc, next, ahead);
  for (; i < rows; ++i, next = nullptr) values_of<S, 1>(w, i, v, n, D, acc, next, ahead);
}

// ---- AVX-512 VNNI: an int8 cache's V sums in integers

constexpr int32_t kWeightMax = 32767;  // weights of int8 V rows in 16 bits: 256 positions x 32767 x 128 < 2^31

// Each row's weights of the chunk's n V rows (its exponentials times v's scales, >= 0) in 16 bits over the row's
// largest: w16[i][j] = round(w[i][j] / scale[i]) <= 32767, and a zero past n where n is odd (positions go in pairs).
__attribute__((target("avx512f,avx512bw,avx512vl"))) void weights16(const float* w, int64_t rows, int64_t n,
                                                                    int16_t* w16, float* scale) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = w + i * kChunk;
    scale[i] = qc::row_scale(row, n, kWeightMax);
    const float inv = 1.0f / scale[i];
    int16_t* out = w16 + i * kChunk;
    for (int64_t j = 0; j < n; ++j) out[j] = int16_t(qc::quantize_to(row[j], inv, kWeightMax));
    if (n % 2) out[n] = 0;
  }
}

// acc[i] += scale[i] * sum_j w16[i][j] * v_j for Rows rows over an int8 cache's n V rows, 32 of D at a time: each pair
// of V rows widened to 16 bits and interleaved once for all the rows, one vpdpwssd per row, pair and 16 dims (exact
// int32 sums), scaled into the row's float32 sums once per chunk. The next chunk's K rows are prefetched into L2
// meanwhile, as in values_of.
template <int Rows>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) QC_INLINE void int8_values_of(
    const int16_t* w16, const float* scale, int64_t i0, const int8_t* v, int64_t n, int64_t D, float* acc,
    const char* next, int64_t ahead) {
  for (int64_t d0 = 0; d0 < D; d0 += 32) {
    __m512i a[Rows][2];
    for (int i = 0; i < Rows; ++i) a[i][0] = a[i][1] = _mm512_setzero_si512();
    for (int64_t j = 0; j < n; j += 2) {
      if (next && d0 == 0)
        for (int64_t o = j * D; o < std::min(j + 2, ahead) * D; o += 64) _mm_prefetch(next + o, _MM_HINT_T1);
      const __m512i x0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + j * D + d0)));
      const __m512i x1 = j + 1 < n ? _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                                         reinterpret_cast<const __m256i*>(v + (j + 1) * D + d0)))
                                   : _mm512_setzero_si512();
      // per 128-bit lane L: dims d0 + 8 L + 0..3 (lo) and + 4..7 (hi) of positions j and j + 1, paired
      const __m512i lo = _mm512_unpacklo_epi16(x0, x1), hi = _mm512_unpackhi_epi16(x0, x1);
      for (int i = 0; i < Rows; ++i) {
        const int16_t* w = w16 + (i0 + i) * kChunk + j;
        a[i][0] = qc::dpwssd_word(a[i][0], lo, w);
        a[i][1] = qc::dpwssd_word(a[i][1], hi, w);
      }
    }
    for (int i = 0; i < Rows; ++i) {  // the 128-bit lanes back in dims' order: lo 0, hi 0, lo 1, hi 1, ...
      const __m512i first = _mm512_shuffle_i32x4(a[i][0], a[i][1], 0x44), second = _mm512_shuffle_i32x4(a[i][0], a[i][1], 0xEE);
      const __m512 s = _mm512_set1_ps(scale[i0 + i]);
      float* out = acc + (i0 + i) * D + d0;
      _mm512_storeu_ps(out, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_shuffle_i32x4(first, first, 0xD8)), s,
                                            _mm512_loadu_ps(out)));
      _mm512_storeu_ps(out + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_shuffle_i32x4(second, second, 0xD8)), s,
                                                 _mm512_loadu_ps(out + 16)));
    }
  }
}

// The rows' V sums for an int8 cache on AVX-512 VNNI (D % 32 == 0): the weights in 16 bits, rows 8 at a time
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void int8_values(
    const float* w, int64_t rows, const int8_t* v, int64_t n, int64_t D, float* acc, const char* next, int64_t ahead,
    int16_t* w16, float* scale) {
  weights16(w, rows, n, w16, scale);
  int64_t i = 0;  // the first call prefetches
  for (; i + 8 <= rows; i += 8, next = nullptr) int8_values_of<8>(w16, scale, i, v, n, D, acc, next, ahead);
  for (; i + 4 <= rows; i += 4, next = nullptr) int8_values_of<4>(w16, scale, i, v, n, D, acc, next, ahead);
  for (; i < rows; ++i, next = nullptr) int8_values_of<1>(w16, scale, i, v, n, D, acc, next, ahead);
}

// A row block's running softmax: the maximum and sum of each row's exponentials so far, and its output (unnormalized).
struct Running {
  std::vector<float> max, sum, acc;
  Running(int64_t rows, int64_t D)
      : max(rows, -std::numeric_limits<float>::infinity()), sum(rows, 0.0f), acc(rows * D, 0.0f) {}
};

// Rows [r0, r0 + rows) of (b, h) over positions [p0, p1), chunk by chunk, into `run`: per chunk the scores q . k
// (each K row read once for all the block's rows), each row's maximum and exponentials, the running sums rescaled,
// and the exponentials times the chunk's V rows added.
template <Store S>
QC_INLINE void attend(const Problem& p, int64_t b, int64_t h, int64_t r0, int64_t rows, int64_t p0, int64_t p1,
                      Running& run) {
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  const int64_t bh = b * p.H + h, D = p.D, bytes = D * element_bytes<S>();
  const int64_t ch = cache_row(p, b) * p.H + h;  // its (slot, head) in the cache
  const float* q = p.q + (bh * p.R + r0) * D;
  // AVX-512 VNNI: the keys transposed per chunk (16 positions to a register), an int8 cache's against q in 16 bits
  // (D <= 128 keeps the sums in int32), the others' in float32; V rows widened in registers (D % 32 == 0)
  const bool wide = p.vnni && bytes % 64 == 0 && (S != Store::kInt8 || D <= 128), wide_v = p.vnni && D % 32 == 0;
  // float32 copies of a chunk's K and V rows where those paths do not read them as stored
  std::vector<float> scores(rows * kChunk), k_rows(S == Store::kF32 || wide ? 0 : kChunk * D);
  std::vector<float> v_rows(S == Store::kF32 || wide_v ? 0 : kChunk * D);
  std::optional<Rows16> q16;
  std::vector<uint8_t> keys(wide ? kChunk * bytes : 0);
  std::vector<int16_t> w16(S == Store::kInt8 && wide_v ? rows * kChunk : 0);  // the V weights in 16 bits
  std::vector<float> w_scale(w16.empty() ? 0 : rows);
  if (wide && S == Store::kInt8) q16.emplace(q, rows, D);
  for (int64_t c0 = p0; c0 < p1; c0 += kChunk) {
    const int64_t n = std::min(kChunk, p1 - c0);
    const char* stored_k = static_cast<const char*>(p.k) + (ch * p.S + c0) * bytes;
    const float* k = wide ? nullptr : as_float<S>(stored_k, n * D, k_rows.data());
    if (wide) {
      transpose_keys(stored_k, n, bytes, S == Store::kInt8, keys.data(),
                     static_cast<const char*>(p.v) + (ch * p.S + c0) * bytes);
      if constexpr (S == Store::kInt8)
        int8_scores(*q16, rows, keys.data(), p.k_scale + ch * p.S + c0, n, D, p.scale, scores.data());
      else
        float_scores<S>(q, rows, keys.data(), n, D, p.scale, scores.data());
    } else if (D % 8 == 0) {
      for (int64_t i = 0; i < rows; ++i) row_scores(q + i * D, k, D, n, scores.data() + i * kChunk);
    } else {
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < rows; ++i) scores[i * kChunk + j] = dot(q + i * D, k + j * D, D);
    }
    bool any = false;
    for (int64_t i = 0; i < rows; ++i) {
      float* row = scores.data() + i * kChunk;
      const int64_t last = last_position(p, b, r0 + i) - c0;  // the row's last position in this chunk
      const int64_t seen = std::clamp<int64_t>(last + 1, 0, n);  // positions [0, seen) of the chunk
      if (!wide) {  // the wide paths' scores come scaled
        const float* ks = p.k_scale ? p.k_scale + ch * p.S + c0 : nullptr;
        for (int64_t j = 0; j < seen; ++j) row[j] *= (ks ? ks[j] : 1.0f) * p.scale;
      }
      std::fill(row + seen, row + n, kNone);
      const float top = p.vnni ? largest_wide(row, seen) : largest<f8>(row, seen);
      if (top == kNone) {  // nothing of this chunk for this row
        std::fill(row, row + n, 0.0f);
        continue;
      }
      any = true;
      const float m = std::max(run.max[i], top), rescale = std::exp(run.max[i] - m);  // 0 where nothing ran yet
      run.max[i] = m;
      const float sum = p.vnni ? exps_wide(row, n, m) : exps<f8, i8v>(row, n, m);
      if (p.v_scale)  // the weight of v_j as stored
        for (int64_t j = 0; j < n; ++j) row[j] *= p.v_scale[ch * p.S + c0 + j];
      run.sum[i] = run.sum[i] * rescale + sum;
      if (rescale != 1.0f)
        for (int64_t d = 0; d < D; ++d) run.acc[i * D + d] *= rescale;
    }
    if (!any) continue;
    const char* stored_v = static_cast<const char*>(p.v) + (ch * p.S + c0) * bytes;
    if (wide_v) {
      const int64_t ahead = std::min(kChunk, p1 - c0 - n);  // the next chunk's positions
      const char* next = ahead > 0 ? stored_k + n * bytes : nullptr;
      if constexpr (S == Store::kInt8)
        int8_values(scores.data(), rows, reinterpret_cast<const int8_t*>(stored_v), n, D, run.acc.data(), next, ahead,
                    w16.data(), w_scale.data());
      else
        wide_values<S>(scores.data(), rows, stored_v, n, D, run.acc.data(), next, ahead);
      continue;
    }
    const float* v = as_float<S>(stored_v, n * D, v_rows.data());
    if (D % 8 == 0) {
      for (int64_t i = 0; i < rows; ++i) row_values(scores.data() + i * kChunk, v, D, n, run.acc.data() + i * D);
    } else {
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < rows; ++i) {
          const float w = scores[i * kChunk + j];
          if (w == 0.0f) continue;  // a position past the row's own
          float* out = run.acc.data() + i * D;
          for (int64_t d = 0; d < D; ++d) out[d] += w * v[j * D + d];
        }
    }
  }
}

template <Store S>
__attribute__((target("avx2,fma"))) void attend_avx2(const Problem& p, int64_t b, int64_t h, int64_t r0, int64_t rows,
                                                     int64_t p0, int64_t p1, Running& run) {
  attend<S>(p, b, h, r0, rows, p0, p1, run);
}

template <Store S>
void attend_plain(const Problem& p, int64_t b, int64_t h, int64_t r0, int64_t rows, int64_t p0, int64_t p1,
                  Running& run) {
  attend<S>(p, b, h, r0, rows, p0, p1, run);
}

using Attend = void (*)(const Problem&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, Running&);

Attend attend_for(Store s, bool avx2) {
  switch (s) {
    case Store::kF32: return avx2 ? attend_avx2<Store::kF32> : attend_plain<Store::kF32>;
    case Store::kBF16: return avx2 ? attend_avx2<Store::kBF16> : attend_plain<Store::kBF16>;
    default: return avx2 ? attend_avx2<Store::kInt8> : attend_plain<Store::kInt8>;
  }
}

void run(const Problem& p, bool avx2) {
  const Attend attend_rows = attend_for(p.store, avx2);
  const int64_t blocks = (p.R + kRowBlock - 1) / kRowBlock;
  int64_t most = 0;  // positions read by the longest sequence
  for (int64_t b = 0; b < p.B; ++b) most = std::max(most, last_position(p, b, p.R - 1) + 1);
  const int64_t items = p.B * p.H * blocks, threads = at::get_num_threads();
  // split the positions where the row blocks alone leave threads idle, no split smaller than a chunk
  const int64_t splits = items >= 2 * threads ? 1 : std::max<int64_t>(1, std::min((2 * threads + items - 1) / items,
                                                                                    (most + kChunk - 1) / kChunk));
  const int64_t span = ((most + splits - 1) / splits + kChunk - 1) / kChunk * kChunk;  // positions per split
  // partial results per (item, split): max and sum per row, output per row
  std::vector<float> part_max(splits > 1 ? items * splits * kRowBlock : 0);
  std::vector<float> part_sum(part_max.size()), part_acc(part_max.size() * p.D);
  at::parallel_for(0, items * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t item = w / splits, split = w % splits;
      const int64_t bh = item / blocks, b = bh / p.H, h = bh % p.H, r0 = (item % blocks) * kRowBlock;
      const int64_t rows = std::min(kRowBlock, p.R - r0);
      const int64_t limit = last_position(p, b, r0 + rows - 1) + 1;  // the block's positions: [0, limit)
      const int64_t p0 = split * span, p1 = std::min(limit, p0 + span);
      Running state(rows, p.D);
      if (p0 < p1) attend_rows(p, b, h, r0, rows, p0, p1, state);
      if (splits == 1) {
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t d = 0; d < p.D; ++d)
            p.out[(bh * p.R + r0 + i) * p.D + d] = state.acc[i * p.D + d] / state.sum[i];
        continue;
      }
      const int64_t at = w * kRowBlock;
      std::copy(state.max.begin(), state.max.end(), part_max.begin() + at);
      std::copy(state.sum.begin(), state.sum.end(), part_sum.begin() + at);
      std::copy(state.acc.begin(), state.acc.end(), part_acc.begin() + at * p.D);
    }
  });
  if (splits == 1) return;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {  // merge the splits of each row
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / blocks, r0 = (item % blocks) * kRowBlock, rows = std::min(kRowBlock, p.R - r0);
      for (int64_t i = 0; i < rows; ++i) {
        float m = -std::numeric_limits<float>::infinity(), sum = 0.0f;
        for (int64_t s = 0; s < splits; ++s) m = std::max(m, part_max[(item * splits + s) * kRowBlock + i]);
        float* out = p.out + (bh * p.R + r0 + i) * p.D;
        std::fill(out, out + p.D, 0.0f);
        for (int64_t s = 0; s < splits; ++s) {
          const int64_t at = (item * splits + s) * kRowBlock + i;
          if (part_max[at] == -std::numeric_limits<float>::infinity()) continue;  // a split past the row's positions
          const float f = std::exp(part_max[at] - m);
          sum += part_sum[at] * f;
          for (int64_t d = 0; d < p.D; ++d) out[d] += part_acc[at * p.D + d] * f;
        }
        for (int64_t d = 0; d < p.D; ++d) out[d] /= sum;
      }
    }
  });
}

Store store_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Store::kF32;
    case at::kBFloat16: return Store::kBF16;
    default: return Store::kInt8;
  }
}

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& k_scale,
           const std::optional<at::Tensor>& v_scale, const at::Tensor& start, int64_t groups,
           const std::optional<at::Tensor>& slot) {
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == at::kFloat, "cache_attention: q must be float32 [B, H, R, D], got ",
              q.scalar_type(), " ", q.sizes());
  TORCH_CHECK(groups >= 1 && q.size(2) % groups == 0, "cache_attention: groups = ", groups,
              " must be >= 1 and divide q's rows (", q.size(2), ")");
  const auto kind = k.scalar_type();
  TORCH_CHECK(kind == at::kFloat || kind == at::kBFloat16 || kind == at::kChar,
              "cache_attention: k and v must be float32, bfloat16 or int8, got ", kind);
  for (const at::Tensor* t : {&k, &v})
    TORCH_CHECK(t->dim() == 4 && t->scalar_type() == kind && (slot || t->size(0) == q.size(0)) &&
                    t->size(1) == q.size(1) && t->size(3) == q.size(3) && t->sizes() == k.sizes(),
                "cache_attention: k and v must be ", slot ? "[C, H, S, D] = [C, " : "[B, H, S, D] = [",
                slot ? "" : std::to_string(q.size(0)) + ", ", q.size(1), ", S, ", q.size(3), "] of one dtype, got ",
                k.scalar_type(), " ", k.sizes(), " and ", v.scalar_type(), " ", v.sizes());
  const bool int8 = kind == at::kChar;
  TORCH_CHECK(k_scale.has_value() == int8 && v_scale.has_value() == int8,
              "cache_attention: k_scale and v_scale go with an int8 cache, and only with one");
  for (const auto* s : {&k_scale, &v_scale})
    TORCH_CHECK(!s->has_value() || ((*s)->scalar_type() == at::kFloat && (*s)->numel() == k.numel() / k.size(3)),
                "cache_attention: k_scale and v_scale must be float32 [B, H, S, 1]");
  TORCH_CHECK(start.dim() == 1 && start.scalar_type() == at::kLong && start.size(0) == q.size(0),
              "cache_attention: start must be int64 [B] (each sequence's first new position)");
  TORCH_CHECK(!slot || (slot->dim() == 1 && slot->scalar_type() == at::kLong && slot->size(0) == q.size(0)),
              "cache_attention: slot must be int64 [B] (the cache row each sequence reads)");
}

}  // namespace

namespace qc {

at::Tensor cache_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                           const std::optional<at::Tensor>& k_scale_in, const std::optional<at::Tensor>& v_scale_in,
                           const at::Tensor& start_in, int64_t groups, double scale,
                           const std::optional<at::Tensor>& slot_in) {
  check(q_in, k_in, v_in, k_scale_in, v_scale_in, start_in, groups, slot_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), start = start_in.contiguous();
  const std::optional<at::Tensor> k_scale = qc::contiguous(k_scale_in), v_scale = qc::contiguous(v_scale_in);
  const int64_t B = q.size(0), H = q.size(1), R = q.size(2), D = q.size(3), S = k.size(2);
  const std::optional<at::Tensor> slot = qc::contiguous(slot_in);
  const int64_t* first = start.data_ptr<int64_t>();
  const int64_t* rows = slot ? slot->data_ptr<int64_t>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(first[b] >= 0 && first[b] + R / groups <= S, "cache_attention: sequence ", b, " starts at ", first[b],
                " with ", R / groups, " new positions; the cache holds ", S);
    TORCH_CHECK(!rows || (rows[b] >= 0 && rows[b] < k.size(0)), "cache_attention: sequence ", b, " reads slot ",
                rows ? rows[b] : 0, "; the cache has ", k.size(0));
  }
  at::Tensor out = at::empty({B, H, R, D}, q.options());
  if (out.numel() == 0) return out;
  const Problem p{q.data_ptr<float>(), k.data_ptr(), v.data_ptr(), k_scale ? k_scale->data_ptr<float>() : nullptr,
                  v_scale ? v_scale->data_ptr<float>() : nullptr, store_of(k), first, rows, out.data_ptr<float>(),
                  B, H, R, S, D, groups, float(scale), qc::path_here() == qc::Path::kVnni};
  run(p, qc::path_here() != qc::Path::kScalar);
  return out;
}

}  // namespace qc
