// Activation rows for qcompiler's int8 kernels: int8 rows as they are, int16 and float32 rows as two int8 rows each
// (their high and low bytes), with the rows' sums per group and, for float rows, their per-row 16-bit scales.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>

#include "kernel_common.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace qc {

constexpr int32_t kInt16Max = 32639;  // the largest int16 whose high and low bytes are both int8 (256 * 127 + 127)

// One activation row: its sums per group, and for 16-bit rows its high and low bytes as two int8 rows.
// A float row is first quantized per row to 16 bits: x = scale * v, v = round(x / scale) in +-kInt16Max.
template <typename T>
__attribute__((always_inline)) inline void activation_row(const T* x, int64_t K, int64_t group, int8_t* hi, int8_t* lo,
                                                          int32_t* sums, float* scale) {
  float inv = 1.0f;
  if constexpr (std::is_same_v<T, float>) {
    *scale = qc::row_scale(x, K, kInt16Max);
    inv = 1.0f / *scale;
  }
  for (int64_t g = 0; g < K / group; ++g) {
    int32_t sum = 0;
    for (int64_t k = g * group; k < (g + 1) * group; ++k) {
      int32_t v;
      if constexpr (std::is_same_v<T, float>) v = qc::quantize_to(x[k], inv, kInt16Max);
      else if constexpr (std::is_same_v<T, int16_t>) v = std::min<int32_t>(x[k], kInt16Max);
      else v = x[k];
      if constexpr (!std::is_same_v<T, int8_t>) {
        const int32_t h = (v + 128) >> 8;
        hi[k] = int8_t(h);
        lo[k] = int8_t(v - 256 * h);
      }
      sum += v;
    }
    sums[g] = sum;
  }
}

template <typename T>
void activation_row_plain(const T* x, int64_t K, int64_t group, int8_t* hi, int8_t* lo, int32_t* sums, float* scale) {
  activation_row(x, K, group, hi, lo, sums, scale);
}
template <typename T>
__attribute__((target("avx2,fma"))) void activation_row_avx2(const T* x, int64_t K, int64_t group, int8_t* hi,
                                                             int8_t* lo, int32_t* sums, float* scale) {
  activation_row(x, K, group, hi, lo, sums, scale);
}
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void activation_row_avx512(
    const T* x, int64_t K, int64_t group, int8_t* hi, int8_t* lo, int32_t* sums, float* scale) {
  activation_row(x, K, group, hi, lo, sums, scale);
}

// The kernel's int8 rows, their sums per group (int32 [M, K / group]) and, for float activations, their
// scales ([M]): an int8 `a` as it is; int16 and float `a` as two int8 rows per row (activation_row).
struct ActivationRows {
  at::Tensor rows, sums, scale;
};

template <typename T>
ActivationRows activation_rows(const at::Tensor& a, int64_t group, qc::Path path) {
  constexpr int64_t pair = std::is_same_v<T, int8_t> ? 1 : 2;
  const int64_t M = a.size(0), K = a.size(1), G = K / group;
  ActivationRows out{pair == 1 ? a : at::empty({M * pair, K}, a.options().dtype(at::kChar)),
                     at::empty({M, G}, a.options().dtype(at::kInt)), at::empty({M}, a.options().dtype(at::kFloat))};
  const T* src = a.data_ptr<T>();
  int8_t* rows = out.rows.data_ptr<int8_t>();
  int32_t* sums = out.sums.data_ptr<int32_t>();
  float* scale = out.scale.data_ptr<float>();
  const auto row = path == qc::Path::kVnni ? activation_row_avx512<T>
                   : path == qc::Path::kAvx2 ? activation_row_avx2<T> : activation_row_plain<T>;
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      int8_t* hi = rows + pair * m * K;
      row(src + m * K, K, group, hi, hi + K, sums + m * G, scale + m);
    }
  });
  return out;
}

inline ActivationRows activation_rows(const at::Tensor& a, int64_t group, qc::Path path) {
  switch (a.scalar_type()) {
    case at::kChar: return activation_rows<int8_t>(a, group, path);
    case at::kShort: return activation_rows<int16_t>(a, group, path);
    default: return activation_rows<float>(a, group, path);
  }
}

}  // namespace qc
