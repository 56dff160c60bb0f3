// qcompiler::int8_gemm: int8 or 16-bit activations x int8 weights, exact integer sums, for machines without VNNI.
//
//   y[m, n] = a_scale[m] * w_scale[n] * sum_k (a[m, k] - a_zero[m]) * w[n, k]
//
// for int8 `a` [M, K] with an optional a_scale [M] (none: 1) and an optional a_zero (integer values; [M], or
// one for every row), or a float32 `a` (no a_scale, no a_zero) that is quantized here, per row, to 16 bits:
// a_scale = max |x| / 32639 (qc::kInt16Max).
// Either way the kernel runs on int16 rows (a - a_zero, or the 16-bit values) times the int8 weights widened
// to int16: AVX2's vpmaddwd multiplies int16 pairs into exact int32 sums with no saturation, where the
// u8 x s8 vpmaddubsw that int8 GEMMs use without VNNI saturates on full-range operands (oneDNN's AVX2
// int8 path is inexact for that reason). int32 sums of int8 rows (|a - a_zero| <= 255, |w| <= 128)
// are moved to float every 65536 k, those of 16-bit rows every 256 k.
//
// Packed weight: int8 [N/8][K/2][16]: block b's 16 bytes for k pair j hold (w[8b + l, 2j], w[8b + l, 2j + 1])
// for lanes l = 0..7, the operand of one vpmaddwd after sign extension.
//
// Two paths, chosen per call (ATEN_CPU_CAPABILITY caps the choice): AVX2 (every AVX2 and AVX-512 machine) and
// plain C++. On VNNI machines qcompiler lowers to u8 x s8 integer GEMMs instead, which do twice the work per
// instruction.
#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include "activation_rows.h"
#include "kernel_common.h"
#include "ops.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

using qc::Path;

constexpr int kLanes = 8;            // output columns per packed block
constexpr int32_t kLimit = qc::kInt16Max;  // float rows are quantized to [-kLimit, kLimit]: the one 16-bit encoding
constexpr int64_t kWideBlock = 256;     // k per int32 sum for 16-bit rows: 32767 * 128 * 256 < 2^31
constexpr int64_t kNarrowBlock = 65536;  // k per int32 sum for int8 rows: 255 * 128 * 65536 < 2^31

struct Problem {
  const int16_t* a;      // [M, K]: a - a_zero, or the 16-bit values of a float row
  const float* a_scale;  // [M]
  const int8_t* w;       // packed, K * kLanes bytes per block
  const float* w_scale;  // [N]
  float* y;              // [M, N]
  int64_t M, N, K, kblock;  // kblock: k per int32 sum
};

// Output (m, n0..n0+7) after a block of k: y = (first ? 0 : y) + sum, times the scales after the last block.
inline void flush_scalar(const Problem& p, int64_t m, int64_t n0, const int32_t* acc, bool first, bool last) {
  float* y = p.y + m * p.N + n0;
  for (int l = 0; l < kLanes; ++l) {
    float v = float(acc[l]) + (first ? 0.0f : y[l]);
    y[l] = last ? v * p.a_scale[m] * p.w_scale[n0 + l] : v;
  }
}

void block_scalar(const Problem& p, int64_t m0, int64_t m1, int64_t b) {
  const int8_t* w = p.w + b * p.K * kLanes;
  int32_t acc[kLanes];
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t k0 = 0; k0 < p.K; k0 += p.kblock) {
      const int64_t k1 = std::min(p.K, k0 + p.kblock);
      std::fill(acc, acc + kLanes, 0);
      for (int64_t k = k0; k < k1; k += 2)
        for (int l = 0; l < kLanes; ++l)
          acc[l] += int32_t(p.a[m * p.K + k]) * w[k * kLanes + 2 * l] +
                    int32_t(p.a[m * p.K + k + 1]) * w[k * kLanes + 2 * l + 1];
      flush_scalar(p, m, b * kLanes, acc, k0 == 0, k1 == p.K);
    }
}

// ------------------------------------------------------------------ AVX2

// ROWS rows (from m0) x COLS blocks (from block b0): int32 sums in registers (ROWS * COLS of the 16, besides the
// COLS widened weights and one broadcast), moved to y after each block of k.
template <int ROWS, int COLS>
__attribute__((target("avx2,fma"))) void tile_avx2(const Problem& p, int64_t m0, int64_t b0) {
  const int64_t stride = p.K * kLanes;  // bytes per block
  const int8_t* w = p.w + b0 * stride;
  const int16_t* a = p.a + m0 * p.K;
  for (int64_t k0 = 0; k0 < p.K; k0 += p.kblock) {
    const int64_t k1 = std::min(p.K, k0 + p.kblock);
    __m256i acc[ROWS][COLS];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < COLS; ++j) acc[r][j] = _mm256_setzero_si256();
    for (int64_t k = k0; k < k1; k += 2) {
      __m256i wv[COLS];
#pragma GCC unroll 4
      for (int j = 0; j < COLS; ++j)
        wv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j * stride + k * kLanes)));
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r) {
        int32_t pair;
        std::memcpy(&pair, a + r * p.K + k, 4);
        const __m256i x = _mm256_set1_epi32(pair);
#pragma GCC unroll 4
        for (int j = 0; j < COLS; ++j) acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(wv[j], x));
      }
    }
    const bool first = k0 == 0, last = k1 == p.K;
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      float* y = p.y + (m0 + r) * p.N + b0 * kLanes;
      const __m256 a_scale = _mm256_set1_ps(p.a_scale[m0 + r]);
#pragma GCC unroll 4
      for (int j = 0; j < COLS; ++j) {
        __m256 v = _mm256_cvtepi32_ps(acc[r][j]);
        if (!first) v = _mm256_add_ps(v, _mm256_loadu_ps(y + j * kLanes));
        if (last) v = _mm256_mul_ps(_mm256_mul_ps(v, a_scale), _mm256_loadu_ps(p.w_scale + (b0 + j) * kLanes));
        _mm256_storeu_ps(y + j * kLanes, v);
      }
    }
  }
}

// Rows [m0, m1) of COLS blocks from b0: tiles of 6 rows (12 sums, 2 weights, 1 broadcast: 15 of 16 registers),
// the last rows in one smaller tile.
template <int COLS>
__attribute__((target("avx2,fma"))) void rows_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t b0) {
  constexpr int kRows = COLS == 1 ? 8 : 6;
  for (; m0 + kRows <= m1; m0 += kRows) tile_avx2<kRows, COLS>(p, m0, b0);
  switch (m1 - m0) {
    case 7: return tile_avx2<7, COLS>(p, m0, b0);
    case 6: return tile_avx2<6, COLS>(p, m0, b0);
    case 5: return tile_avx2<5, COLS>(p, m0, b0);
    case 4: return tile_avx2<4, COLS>(p, m0, b0);
    case 3: return tile_avx2<3, COLS>(p, m0, b0);
    case 2: return tile_avx2<2, COLS>(p, m0, b0);
    case 1: return tile_avx2<1, COLS>(p, m0, b0);
    default: return;
  }
}

// ------------------------------------------------------------------ activations

// One row as int16: a - round(zero) for int8 rows; for float rows the row quantized to +-kLimit, and its scale.
template <typename T>
__attribute__((always_inline)) inline void int16_row(const T* x, int64_t K, float zero, int16_t* out, float* scale) {
  if constexpr (std::is_same_v<T, float>) {
    *scale = qc::row_scale(x, K, kLimit);
    const float inv = 1.0f / *scale;
    for (int64_t k = 0; k < K; ++k) out[k] = int16_t(qc::quantize_to(x[k], inv, kLimit));
  } else {
    const int32_t z = qc::round_to_int(zero);
    for (int64_t k = 0; k < K; ++k) out[k] = int16_t(int32_t(x[k]) - z);
  }
}

template <typename T>
void int16_row_plain(const T* x, int64_t K, float zero, int16_t* out, float* scale) {
  int16_row(x, K, zero, out, scale);
}
template <typename T>
__attribute__((target("avx2,fma"))) void int16_row_avx2(const T* x, int64_t K, float zero, int16_t* out,
                                                        float* scale) {
  int16_row(x, K, zero, out, scale);
}

// The int16 rows [M, K] and, for float rows, their scales [M].
template <typename T>
std::pair<at::Tensor, at::Tensor> int16_rows(const at::Tensor& a, const float* a_zero, int64_t zero_step, Path path) {
  const int64_t M = a.size(0), K = a.size(1);
  at::Tensor rows = at::empty({M, K}, a.options().dtype(at::kShort)), scale = at::empty({M}, a.options().dtype(at::kFloat));
  const T* src = a.data_ptr<T>();
  int16_t* out = rows.data_ptr<int16_t>();
  float* s = scale.data_ptr<float>();
  const auto row = path == Path::kScalar ? int16_row_plain<T> : int16_row_avx2<T>;
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) row(src + m * K, K, a_zero ? a_zero[m * zero_step] : 0.0f, out + m * K, s + m);
  });
  return {rows, scale};
}

// ------------------------------------------------------------------ the op

void check_inputs(const at::Tensor& a, const std::optional<at::Tensor>& a_scale, const std::optional<at::Tensor>& a_zero,
                  const at::Tensor& w, const at::Tensor& w_scale) {
  const auto type = a.scalar_type();
  TORCH_CHECK(a.dim() == 2 && (type == at::kChar || type == at::kFloat),
              "int8_gemm: a must be int8 or float32 [M, K], got ", type, " ", a.sizes());
  const int64_t M = a.size(0), K = a.size(1), N = w_scale.numel();
  TORCH_CHECK(K % 2 == 0, "int8_gemm: K = ", K, " must be even");
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 && N % kLanes == 0,
              "int8_gemm: w_scale must be float32 [N] with N a multiple of 8, got ", w_scale.scalar_type(), " ",
              w_scale.sizes());
  TORCH_CHECK(w.scalar_type() == at::kChar && w.numel() == N * K, "int8_gemm: w must be int8 with N*K = ", N * K,
              " elements, got ", w.scalar_type(), " ", w.sizes());
  if (type == at::kFloat) {
    TORCH_CHECK(!a_scale && !a_zero, "int8_gemm: float32 a takes no a_scale or a_zero (the kernel quantizes each "
                "row to 16 bits itself)");
  }
  TORCH_CHECK(!a_scale || (a_scale->scalar_type() == at::kFloat && a_scale->numel() == M),
              "int8_gemm: a_scale must be float32 with M = ", M, " elements");
  TORCH_CHECK(!a_zero || (a_zero->scalar_type() == at::kFloat && (a_zero->numel() == M || a_zero->numel() == 1)),
              "int8_gemm: a_zero must be float32 with M = ", M, " elements or one");
}

}  // namespace

namespace qc {

at::Tensor int8_gemm(const at::Tensor& a_in, const std::optional<at::Tensor>& a_scale_in,
                     const std::optional<at::Tensor>& a_zero_in, const at::Tensor& w_in, const at::Tensor& w_scale_in) {
  check_inputs(a_in, a_scale_in, a_zero_in, w_in, w_scale_in);
  const at::Tensor a = a_in.contiguous(), w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  const std::optional<at::Tensor> a_zero = qc::contiguous(a_zero_in);
  const int64_t M = a.size(0), K = a.size(1), N = w_scale.numel();
  const Path path = qc::path_here();
  const bool wide = a.scalar_type() == at::kFloat;
  const float* zero = a_zero ? a_zero->data_ptr<float>() : nullptr;
  const int64_t zero_step = a_zero && a_zero->numel() == M ? 1 : 0;
  const auto [rows, scale] = wide ? int16_rows<float>(a, zero, zero_step, path) : int16_rows<int8_t>(a, zero, zero_step, path);
  const at::Tensor a_scale = wide ? scale : a_scale_in ? a_scale_in->contiguous() : at::ones({M}, a.options().dtype(at::kFloat));
  at::Tensor y = at::empty({M, N}, a.options().dtype(at::kFloat));
  const Problem p{rows.data_ptr<int16_t>(), a_scale.data_ptr<float>(), w.data_ptr<int8_t>(), w_scale.data_ptr<float>(),
                  y.data_ptr<float>(), M, N, K, wide ? kWideBlock : kNarrowBlock};
  // Work items: (up to 48 rows, 4 blocks = 32 columns); the blocks' weights stay in cache across the rows.
  constexpr int64_t kRowChunk = 48, kBlocks = 4;
  const int64_t blocks = N / kLanes, panels = (blocks + kBlocks - 1) / kBlocks, row_items = (M + kRowChunk - 1) / kRowChunk;
  at::parallel_for(0, row_items * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t m0 = (item / panels) * kRowChunk, m1 = std::min(M, m0 + kRowChunk);
      const int64_t b_end = std::min(blocks, (item % panels + 1) * kBlocks);
      int64_t b = (item % panels) * kBlocks;
      if (path == Path::kScalar) {
        for (; b < b_end; ++b) block_scalar(p, m0, m1, b);
        continue;
      }
      for (; b + 2 <= b_end; b += 2) rows_avx2<2>(p, m0, m1, b);
      if (b < b_end) rows_avx2<1>(p, m0, m1, b);
    }
  });
  return y;
}

}  // namespace qc
