// What qcompiler's C++ CPU kernels share: the instruction-set path chosen per call, and 16-bit row quantization.
#pragma once

#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

namespace qc {

enum class Path { kScalar, kAvx2, kVnni };

// The fastest path this machine runs, capped by ATen's CPU capability (ATEN_CPU_CAPABILITY), so tests reach
// every path on any machine.
inline Path path_here() {
  // ATen's capability as torch.backends.cpu.get_cpu_capability() names it: "AVX512", "AVX2", "DEFAULT", ...
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512" && __builtin_cpu_supports("avx512vnni") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return Path::kVnni;
  if ((cap == "AVX512" || cap == "AVX2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Path::kAvx2;
  return Path::kScalar;
}

inline const char* path_name(Path path) {
  switch (path) {
    case Path::kVnni: return "avx512_vnni";
    case Path::kAvx2: return "avx2";
    default: return "scalar";
  }
}

inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// x rounded half to even, for |x| < 2^22, in operations that vectorize (std::nearbyint does not).
__attribute__((always_inline)) inline int32_t round_to_int(float x) {
  const float t = x + 12582912.0f;  // 1.5 * 2^23: the sum's last bits are x's integer
  int32_t bits;
  std::memcpy(&bits, &t, 4);
  return bits - 0x4B400000;
}

// The scale that maps a float row onto integers in [-limit, limit]: max |x| / limit (at least 1e-30).
__attribute__((always_inline)) inline float row_scale(const float* x, int64_t K, int32_t limit) {
  uint32_t top = 0;  // max |x| as bits: the order of non-negative floats' bits is the floats' order
  for (int64_t k = 0; k < K; ++k) {
    uint32_t bits;
    std::memcpy(&bits, x + k, 4);
    bits &= 0x7FFFFFFFu;
    top = bits > top ? bits : top;
  }
  float amax;
  std::memcpy(&amax, &top, 4);
  return std::max(amax / float(limit), 1e-30f);
}

// x / scale rounded and clamped to [-limit, limit], given inv = 1 / scale.
__attribute__((always_inline)) inline int32_t quantize_to(float x, float inv, int32_t limit) {
  return std::min(std::max(round_to_int(x * inv), -limit), limit);
}

}  // namespace qc
