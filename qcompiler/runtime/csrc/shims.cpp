// The kernels behind AOTInductor's C shim convention, so that a packaged model calls them directly: packaging
// links this library into the model's .so (aot_inductor.custom_ops_to_c_shims and custom_op_libs), and the .pt2
// needs neither qcompiler, nor a compiler, nor a registered op where it runs, in Python or C++.
//
// The generated code calls aoti_torch_cpu_<op> with the op's arguments in schema order: a Tensor as an
// AtenTensorHandle, a Tensor? as an AtenTensorHandle* (nullptr for None), an int as int64_t, and the result as a
// last AtenTensorHandle*. runtime/native.py writes the same declarations from the ops' schemas (c_declaration),
// and a test checks each op's symbol is here.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>

#include "ops.h"

using torch::aot_inductor::new_tensor_handle;
using torch::aot_inductor::pointer_to_optional;
using torch::aot_inductor::tensor_handle_to_tensor_pointer;

namespace {

const at::Tensor& tensor(AtenTensorHandle handle) { return *tensor_handle_to_tensor_pointer(handle); }

std::optional<at::Tensor> maybe(AtenTensorHandle* handle) { return pointer_to_optional<at::Tensor>(handle); }

}  // namespace

extern "C" {

AOTITorchError aoti_torch_cpu_int8_int4_gemm(AtenTensorHandle a, AtenTensorHandle* a_scale, AtenTensorHandle* a_zero,
                                             AtenTensorHandle w, AtenTensorHandle w_scale, AtenTensorHandle* w_offset,
                                             AtenTensorHandle* w_sums, int64_t group, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(qc::int8_int4_gemm(tensor(a), maybe(a_scale), maybe(a_zero), tensor(w), tensor(w_scale),
                                                 maybe(w_offset), maybe(w_sums), group));
  });
}

AOTITorchError aoti_torch_cpu_int8_gemm(AtenTensorHandle a, AtenTensorHandle* a_scale, AtenTensorHandle* a_zero,
                                        AtenTensorHandle w, AtenTensorHandle w_scale, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(qc::int8_gemm(tensor(a), maybe(a_scale), maybe(a_zero), tensor(w), tensor(w_scale)));
  });
}

AOTITorchError aoti_torch_cpu_int8_tile_gemm(AtenTensorHandle a, AtenTensorHandle* a_scale, AtenTensorHandle* a_zero,
                                             AtenTensorHandle w, AtenTensorHandle w_scale, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(
        qc::int8_tile_gemm(tensor(a), maybe(a_scale), maybe(a_zero), tensor(w), tensor(w_scale)));
  });
}

AOTITorchError aoti_torch_cpu_int8_tile_gemm_dq(AtenTensorHandle x, AtenTensorHandle eps, AtenTensorHandle w,
                                                AtenTensorHandle w_scale, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(qc::int8_tile_gemm_dq(tensor(x), tensor(eps), tensor(w), tensor(w_scale)));
  });
}

AOTITorchError aoti_torch_cpu_int8_tile_gemm_requant(AtenTensorHandle a, AtenTensorHandle a_scale, AtenTensorHandle a_zero,
                                                     AtenTensorHandle w, AtenTensorHandle w_scale, AtenTensorHandle* bias,
                                                     int64_t activation, AtenTensorHandle out_scale,
                                                     AtenTensorHandle out_zero, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(qc::int8_tile_gemm_requant(tensor(a), tensor(a_scale), tensor(a_zero), tensor(w),
                                                         tensor(w_scale), maybe(bias), activation, tensor(out_scale),
                                                         tensor(out_zero)));
  });
}

AOTITorchError aoti_torch_cpu_codebook_gemm(AtenTensorHandle a, AtenTensorHandle w, AtenTensorHandle table,
                                            AtenTensorHandle w_sums, AtenTensorHandle scale, int64_t bits,
                                            AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(
        qc::codebook_gemm(tensor(a), tensor(w), tensor(table), tensor(w_sums), tensor(scale), bits));
  });
}

AOTITorchError aoti_torch_cpu_table_gemm(AtenTensorHandle a, AtenTensorHandle* a_scale, AtenTensorHandle* a_zero,
                                         AtenTensorHandle w, AtenTensorHandle table, AtenTensorHandle scale,
                                         AtenTensorHandle* offset, AtenTensorHandle* w_sums, int64_t bits,
                                         int64_t block, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(qc::table_gemm(tensor(a), maybe(a_scale), maybe(a_zero), tensor(w), tensor(table),
                                             tensor(scale), maybe(offset), maybe(w_sums), bits, block));
  });
}

AOTITorchError aoti_torch_cpu_additive_gemm(AtenTensorHandle a, AtenTensorHandle codes, AtenTensorHandle codebooks,
                                            AtenTensorHandle scale, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(qc::additive_gemm(tensor(a), tensor(codes), tensor(codebooks), tensor(scale)));
  });
}

AOTITorchError aoti_torch_cpu_cache_attention(AtenTensorHandle q, AtenTensorHandle k, AtenTensorHandle v,
                                              AtenTensorHandle* k_scale, AtenTensorHandle* v_scale,
                                              AtenTensorHandle start, int64_t groups, double scale,
                                              AtenTensorHandle* slot, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *ret0 = new_tensor_handle(qc::cache_attention(tensor(q), tensor(k), tensor(v), maybe(k_scale), maybe(v_scale),
                                                  tensor(start), groups, scale, maybe(slot)));
  });
}

}  // extern "C"
