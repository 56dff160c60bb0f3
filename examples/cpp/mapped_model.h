// Loading a CPU .pt2 with its weights mapped from the file instead of copied: the C++ side of
// qcompiler/runtime/mapped.py, which its docstrings explain.
//
// AOTInductor's package loader copies the weights blob into memory it allocates, so loading peaks at twice the
// weights. Here the model's library is loaded alone (AOTIModelContainerRunnerCpu, on the files of the model's folder
// but its weights, extracted to a temporary folder), and each weight is handed to it as a tensor over a private
// (copy-on-write) mapping of the whole .pt2, as a user-managed constant, which AOTInductor uses as it is. Weights are
// then read from the page cache as the model runs; a buffer the model writes (an LM's KV cache is among its
// "weights") becomes private memory page by page, and the file never changes.
#pragma once

#include <memory>
#include <string>

#include "model.h"

namespace qc {

// The package at `path` with its weights mapped. Throws Unmappable, saying why, where the file does not allow it:
// not a CPU model, not exactly one library, weights blob and generated source in its model folder, the blob
// compressed or not at a 64-byte boundary of the file, weights whose sizes do not add up to the blob's, or whose
// names, dtypes, layouts, alignment or extents are not what the library expects.
std::unique_ptr<Model> load_mapped(const std::string& path);

}  // namespace qc
