// qcompiler's C++ CPU kernels, as the functions the dispatcher (register.cpp) and the artifact's C shims
// (shims.cpp) call. Their schemas are defined in Python (runtime/int8_int4.py, int8_gemm.py, int8_tile_gemm.py,
// codebook_gemm.py, table_gemm.py, additive_gemm.py, cache_attention.py); the arguments here follow them in order.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

namespace qc {

at::Tensor int8_int4_gemm(const at::Tensor& a, const std::optional<at::Tensor>& a_scale,
                          const std::optional<at::Tensor>& a_zero, const at::Tensor& w, const at::Tensor& w_scale,
                          const std::optional<at::Tensor>& w_offset, const std::optional<at::Tensor>& w_sums,
                          int64_t group);

at::Tensor int8_gemm(const at::Tensor& a, const std::optional<at::Tensor>& a_scale,
                     const std::optional<at::Tensor>& a_zero, const at::Tensor& w, const at::Tensor& w_scale);

at::Tensor int8_tile_gemm(const at::Tensor& a, const std::optional<at::Tensor>& a_scale,
                          const std::optional<at::Tensor>& a_zero, const at::Tensor& w, const at::Tensor& w_scale);

at::Tensor int8_tile_gemm_dq(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& w, const at::Tensor& w_scale);
at::Tensor int8_tile_gemm_requant(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& a_zero,
                                  const at::Tensor& w, const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                  int64_t activation, const at::Tensor& out_scale, const at::Tensor& out_zero);

at::Tensor codebook_gemm(const at::Tensor& a, const at::Tensor& w, const at::Tensor& table, const at::Tensor& w_sums,
                         const at::Tensor& scale, int64_t bits);

at::Tensor table_gemm(const at::Tensor& a, const std::optional<at::Tensor>& a_scale,
                      const std::optional<at::Tensor>& a_zero, const at::Tensor& w, const at::Tensor& table,
                      const at::Tensor& scale, const std::optional<at::Tensor>& offset,
                      const std::optional<at::Tensor>& w_sums, int64_t bits, int64_t block);

at::Tensor additive_gemm(const at::Tensor& a, const at::Tensor& codes, const at::Tensor& codebooks,
                         const at::Tensor& scale);

at::Tensor cache_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<at::Tensor>& k_scale, const std::optional<at::Tensor>& v_scale,
                           const at::Tensor& start, int64_t groups, double scale,
                           const std::optional<at::Tensor>& slot);

// The instruction set int8_int4_gemm runs with in this process: "avx512_vnni", "avx2" or "scalar".
std::string int8_int4_gemm_path();

// Whether `rows` float32 rows (and int8_int4_gemm's int8 rows) take bfloat16 AMX tiles in this process: "amx_bf16",
// or else int8_int4_gemm_path()'s answer.
std::string float_rows_path(int64_t rows);

// The path int8_tile_gemm takes for `rows` rows in this process: "amx", "avx512_vnni", "avx2" or "scalar".
std::string int8_tile_gemm_path(int64_t rows);

}  // namespace qc
