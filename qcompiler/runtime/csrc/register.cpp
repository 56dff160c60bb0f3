// The kernels' implementations for PyTorch's dispatcher, in the library qcompiler loads into Python
// (runtime/native.py): what runs a lowered program eagerly. Kept out of the static library that packaging links
// into a .pt2 (shims.cpp is that library's entry), so a model's .so registers nothing in the process it loads in.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(qcompiler, CPU, m) {
  m.impl("int8_int4_gemm", &qc::int8_int4_gemm);
  m.impl("int8_gemm", &qc::int8_gemm);
  m.impl("int8_tile_gemm", &qc::int8_tile_gemm);
  m.impl("int8_tile_gemm_dq", &qc::int8_tile_gemm_dq);
  m.impl("int8_tile_gemm_requant", &qc::int8_tile_gemm_requant);
  m.impl("codebook_gemm", &qc::codebook_gemm);
  m.impl("table_gemm", &qc::table_gemm);
  m.impl("additive_gemm", &qc::additive_gemm);
  m.impl("cache_attention", &qc::cache_attention);
}

TORCH_LIBRARY_FRAGMENT(qcompiler_native, m) {
  m.def("int8_int4_gemm_path() -> str", &qc::int8_int4_gemm_path);
  m.def("int8_tile_gemm_path(int rows) -> str", &qc::int8_tile_gemm_path);
  m.def("float_rows_path(int rows) -> str", &qc::float_rows_path);
}
