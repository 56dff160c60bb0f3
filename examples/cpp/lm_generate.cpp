#include "lm_generate.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iomanip>

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/tensor.h>

#include "errors.h"

namespace qc {
namespace {

constexpr const char* kLmMetadataKey = "qcompiler.lm";

// `"key": <integer>` in a flat JSON object such as {"batch_size": 1, "max_seq_len": 48, ...}: the only JSON the
// runner reads, so a few lines here rather than a JSON library.
std::int64_t json_integer(const std::string& json, const std::string& key) {
  std::size_t at = json.find("\"" + key + "\"");
  if (at != std::string::npos) at = json.find(':', at + key.size() + 2);
  if (at == std::string::npos) {
    throw UsageError(std::string("metadata ") + kLmMetadataKey + " has no " + key + ": " + json);
  }
  const char* start = json.c_str() + at + 1;
  char* end = nullptr;
  long long value = std::strtoll(start, &end, 10);
  if (end == start) throw UsageError(std::string("metadata ") + kLmMetadataKey + ": " + key + " is not an integer");
  return value;
}

// capture_lm's program takes input_ids and cache_position by keyword; the model takes its inputs flat, in the
// order the call spec's keyword list gives them.
bool input_ids_come_first(Model& model) {
  std::string in_spec = model.call_spec().at(0);
  std::size_t ids = in_spec.find("input_ids"), positions = in_spec.find("cache_position");
  if (ids == std::string::npos || positions == std::string::npos) {
    throw UsageError("its inputs are not (input_ids, cache_position), as a qcompiler.capture_lm program's are: " +
                     in_spec);
  }
  return ids < positions;
}

// One call: logits [batch, n, vocab] for input_ids [batch, n] at positions cache_position [n].
class LmCall {
 public:
  explicit LmCall(Model& model) : model_(model), ids_first_(input_ids_come_first(model)) {}

  at::Tensor operator()(const at::Tensor& input_ids, const at::Tensor& cache_position) {
    std::vector<at::Tensor> inputs = ids_first_ ? std::vector<at::Tensor>{input_ids, cache_position}
                                                : std::vector<at::Tensor>{cache_position, input_ids};
    std::vector<at::Tensor> outputs = model_.run(inputs);
    if (outputs.empty() || outputs[0].dim() != 3) throw std::runtime_error("the model did not return logits [b, n, v]");
    return outputs[0];
  }

 private:
  Model& model_;
  bool ids_first_;
};

// Calls `on_token` with each new token as it is made: qcompiler.generate.stream, greedy.
template <typename OnToken>
void stream_tokens(LmCall& call, const GenerateRequest& request, OnToken on_token) {
  auto prompt_length = static_cast<std::int64_t>(request.prompt.size());
  at::Tensor ids = at::tensor(request.prompt, at::kLong).view({1, prompt_length});
  // Position 0 starts a new sequence: nothing of the cache's previous contents is read.
  at::Tensor logits = call(ids, at::arange(prompt_length, at::kLong));
  for (std::int64_t step = 0; step < request.max_new_tokens; ++step) {
    at::Tensor token = logits.select(1, -1).argmax(-1);  // [batch]
    on_token(token[0].item<std::int64_t>());
    if (step + 1 == request.max_new_tokens) return;
    logits = call(token.unsqueeze(1), at::tensor({prompt_length + step}, at::kLong));
  }
}

void check_request(const LmShape& shape, const GenerateRequest& request) {
  if (request.prompt.empty()) throw UsageError("--prompt needs at least one token id");
  if (request.max_new_tokens < 0) throw UsageError("--max-new-tokens must be >= 0");
  if (shape.batch_size != 1) {
    throw UsageError("the program's batch size is " + std::to_string(shape.batch_size) +
                     "; qc_run --generate feeds it one prompt (a batch of 1)");
  }
  auto needed = static_cast<std::int64_t>(request.prompt.size()) + request.max_new_tokens;
  if (needed > shape.max_seq_len) {
    throw UsageError("a prompt of " + std::to_string(request.prompt.size()) + " tokens and --max-new-tokens " +
                     std::to_string(request.max_new_tokens) + " need " + std::to_string(needed) +
                     " positions; the program's cache holds max_seq_len=" + std::to_string(shape.max_seq_len));
  }
}

void print_report(const std::vector<std::int64_t>& tokens, const std::vector<double>& seconds,
                  std::size_t prompt_length, const std::string& weights, std::ostream& out) {
  out << "tokens:";
  for (std::int64_t token : tokens) out << ' ' << token;
  out << '\n' << std::fixed << std::setprecision(1);
  if (!seconds.empty()) {
    out << "prefill: " << prompt_length << " tokens in " << seconds.front() * 1e3 << " ms\n";
  }
  // Decode speed as `qcompiler generate` measures it: the tokens after the first, over the time after it.
  if (seconds.size() > 1) {
    double decode_seconds = seconds.back() - seconds.front();
    out << "decode: " << seconds.size() - 1 << " tokens in " << decode_seconds * 1e3 << " ms, "
        << static_cast<double>(seconds.size() - 1) / decode_seconds << " tokens/s\n";
  }
  out << "weights: " << weights << '\n';
  out << "peak memory (VmHWM): " << peak_memory_mb() << " MB\n";
}

}  // namespace

LmShape lm_shape(const std::unordered_map<std::string, std::string>& metadata) {
  auto found = metadata.find(kLmMetadataKey);
  if (found == metadata.end()) {
    throw UsageError(std::string("--generate needs an LM packaged from qcompiler.capture_lm (no ") + kLmMetadataKey +
                     " in its metadata)");
  }
  return {json_integer(found->second, "batch_size"), json_integer(found->second, "max_seq_len")};
}

std::vector<std::int64_t> generate(Model& model, const GenerateRequest& request) {
  check_request(lm_shape(model.metadata()), request);
  LmCall call(model);
  std::vector<std::int64_t> tokens;
  stream_tokens(call, request, [&tokens](std::int64_t token) { tokens.push_back(token); });
  return tokens;
}

void generate_and_report(Model& model, const GenerateRequest& request, std::ostream& out) {
  check_request(lm_shape(model.metadata()), request);
  LmCall call(model);
  // A warm-up, as `qcompiler generate` does, so that one-time costs (first-call allocations) are not timed.
  generate(model, {request.prompt, std::min<std::int64_t>(request.max_new_tokens, 2)});
  std::vector<std::int64_t> tokens;
  std::vector<double> seconds;  // since the start, at each token
  auto start = std::chrono::steady_clock::now();
  stream_tokens(call, request, [&](std::int64_t token) {
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    tokens.push_back(token);
  });
  print_report(tokens, seconds, request.prompt.size(), model.weights(), out);
}

}  // namespace qc
