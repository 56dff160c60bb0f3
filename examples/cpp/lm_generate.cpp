#include "lm_generate.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iomanip>

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

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

// capture_lm's program takes its inputs by keyword: (input_ids, cache_position), or, captured with slots,
// (input_ids, start, slot); the model takes them flat, in the order the call spec's keyword list gives them.
class LmCall {
 public:
  explicit LmCall(Model& model) : model_(model) {
    const std::string in_spec = model.call_spec().at(0);
    slots_ = in_spec.find("\\\"slot\\\"") != std::string::npos;
    const std::vector<std::string> names = slots_ ? std::vector<std::string>{"input_ids", "start", "slot"}
                                                  : std::vector<std::string>{"input_ids", "cache_position"};
    std::vector<std::size_t> at;
    for (const std::string& name : names) {
      at.push_back(in_spec.find("\\\"" + name + "\\\""));
      if (at.back() == std::string::npos) {
        throw UsageError("its inputs are not (input_ids, cache_position) or (input_ids, start, slot), as a "
                         "qcompiler.capture_lm program's are: " + in_spec);
      }
    }
    for (std::size_t i = 0; i < names.size(); ++i) order_.push_back(i);
    std::sort(order_.begin(), order_.end(), [&at](std::size_t a, std::size_t b) { return at[a] < at[b]; });
  }

  // Logits [1, n, vocab] for input_ids [1, n] whose first token is at `position` (slot 0 of a program with slots).
  at::Tensor operator()(const at::Tensor& input_ids, std::int64_t position) {
    const std::int64_t n = input_ids.size(1);
    std::vector<at::Tensor> by_name =
        slots_ ? std::vector<at::Tensor>{input_ids, at::tensor({position}, at::kLong), at::zeros({1}, at::kLong)}
               : std::vector<at::Tensor>{input_ids, at::arange(position, position + n, at::kLong)};
    std::vector<at::Tensor> inputs;
    for (std::size_t i : order_) inputs.push_back(by_name[i]);
    std::vector<at::Tensor> outputs = model_.run(inputs);
    if (outputs.empty() || outputs[0].dim() != 3) throw std::runtime_error("the model did not return logits [b, n, v]");
    return outputs[0];
  }

  bool slots() const { return slots_; }

 private:
  Model& model_;
  bool slots_ = false;
  std::vector<std::size_t> order_;  // the inputs' places in the call spec
};

// Calls `on_token` with each new token as it is made: qcompiler.generate.stream, greedy.
template <typename OnToken>
void stream_tokens(LmCall& call, const GenerateRequest& request, OnToken on_token) {
  auto prompt_length = static_cast<std::int64_t>(request.prompt.size());
  at::Tensor ids = at::tensor(request.prompt, at::kLong).view({1, prompt_length});
  // Position 0 starts a new sequence: nothing of the cache's previous contents is read.
  at::Tensor logits = call(ids, 0);
  for (std::int64_t step = 0; step < request.max_new_tokens; ++step) {
    at::Tensor token = logits.select(1, -1).argmax(-1);  // [batch]
    on_token(token[0].item<std::int64_t>());
    if (step + 1 == request.max_new_tokens) return;
    logits = call(token.unsqueeze(1), prompt_length + step);
  }
}

void check_request(const LmShape& shape, const GenerateRequest& request, bool slots) {
  if (request.prompt.empty()) throw UsageError("--prompt needs at least one token id");
  if (request.max_new_tokens < 0) throw UsageError("--max-new-tokens must be >= 0");
  if (shape.batch_size != 1 && !slots) {
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
  const LmShape shape = lm_shape(model.metadata());  // first: a file that is no LM says so
  LmCall call(model);
  check_request(shape, request, call.slots());
  std::vector<std::int64_t> tokens;
  stream_tokens(call, request, [&tokens](std::int64_t token) { tokens.push_back(token); });
  return tokens;
}

void generate_and_report(Model& model, const GenerateRequest& request, std::ostream& out) {
  const LmShape shape = lm_shape(model.metadata());  // first: a file that is no LM says so
  LmCall call(model);
  check_request(shape, request, call.slots());
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
