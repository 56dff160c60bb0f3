// Where each weight lies in a CPU package's weights blob, read from the model's generated source.
//
// AOTInductor writes the weights of a CPU model into <hash>.wrapper_weights.blob and describes them in
// <hash>.wrapper.cpp, one `constants_info_[i].<field> = <value>;` line per field: name, dtype, shape, stride,
// offset (the storage offset, in elements), data_size (bytes), from_folded, layout and, for oneDNN's prepacked
// weights, opaque_metadata (oneDNN's descriptor, as bytes). The blob holds the weights in index order, each
// data_size bytes after the one before, except the folded ones (computed at load, not stored).
// The reference is qcompiler/runtime/mapped.py, which reads the same lines.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"

namespace qc {

struct ConstantInfo {
  std::string name;
  std::string dtype;  // torch's name for it: "float32", "bfloat16", "int8", ...
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> stride;
  std::int64_t offset = 0;  // storage offset, in elements
  std::uint64_t start = 0;  // its first byte in the blob
  std::uint64_t size = 0;   // bytes in the blob
  bool onednn = false;      // a oneDNN prepacked (opaque) tensor, described by `opaque`; false: strided
  std::vector<std::uint8_t> opaque;
};

// The weights the generated source reads from its blob, in blob order. Throws Unmappable, naming the weight, for
// a layout other than strided or oneDNN's, or a description in a form not known here.
std::vector<ConstantInfo> blob_constants(const std::string& source);

// Throws Unmappable unless the strided weight's shape and stride, from its storage offset, stay within its bytes.
void check_strided_extent(const ConstantInfo& constant, std::size_t itemsize);

}  // namespace qc
