// Greedy generation from a .pt2 packaged from qcompiler.capture_lm, as qcompiler.generate does it in Python.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <unordered_map>
#include <vector>

#include "model.h"

namespace qc {

// The KV cache's shape, from the AOTInductor metadata key "qcompiler.lm" (qcompiler/capture_lm.py LM_METADATA_KEY).
struct LmShape {
  std::int64_t batch_size;
  std::int64_t max_seq_len;
};

// Throws UsageError for a file without that key (not an LM captured by qcompiler.capture_lm).
LmShape lm_shape(const std::unordered_map<std::string, std::string>& metadata);

struct GenerateRequest {
  std::vector<std::int64_t> prompt;  // token ids
  std::int64_t max_new_tokens;
};

// The new tokens: one prefill call with the whole prompt, then one call per token; greedy (argmax).
std::vector<std::int64_t> generate(Model& model, const GenerateRequest& request);

// Checks the request against the model (as qcompiler.generate does), warms up, generates, and prints the tokens,
// the prefill time, decode tokens/s, how the weights were loaded and the peak memory to `out`.
void generate_and_report(Model& model, const GenerateRequest& request, std::ostream& out);

}  // namespace qc
