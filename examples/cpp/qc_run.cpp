// qc_run: verify a qcompiler .pt2, then print what it takes, run it once on saved tensors, or generate tokens.
//
// Exit codes: 0 done, 2 refused (a file that fails verification, arguments the model cannot take),
// 1 the model itself failed while loading or running.
#include <algorithm>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include "errors.h"
#include "lm_generate.h"
#include "model.h"
#include "verify.h"

namespace {

constexpr int kExitFailed = 1;
constexpr int kExitRefused = 2;

constexpr const char* kUsage = R"(usage:
  qc_run MODEL.pt2 [--verify | --no-verify]                     print the model's metadata and call spec
  qc_run MODEL.pt2 --inputs IN.pt --outputs OUT.pt              run it once
  qc_run MODEL.pt2 --generate --prompt 1,2,3 [--max-new-tokens N]  greedy tokens from an LM (N: 128)
  (each but --verify also takes --copy-weights)

  Before loading, the file is checked against qcompiler/members.sha256 (every member's SHA-256, written when
  it was packaged): a file that fails is refused (exit code 2).
  --verify      only check the file; print "ok MODEL.pt2"
  --no-verify   UNSAFE: load without checking. AOTInductor's loader extracts and dlopens the file's shared
                library, running its code: skip the check only for files you built yourself.
  --copy-weights  copy the weights into memory with AOTInductor's loader (loading peaks at twice the weights).
                By default they are mapped from the file, copy-on-write: the file never changes, but do not change
                it in place while it is loaded. A file that does not allow mapping loads copied, the reason on stderr.
  IN.pt         the model's inputs, flat, saved from Python: torch.save([x, ...], "IN.pt")
  OUT.pt        its outputs, a tuple of tensors: torch.load("OUT.pt")
)";

struct Options {
  std::string model;
  bool verify_only = false;
  bool skip_verify = false;
  bool copy_weights = false;  // AOTInductor's loader, rather than weights mapped from the file
  std::string inputs;
  std::string outputs;
  bool generate = false;
  std::optional<std::vector<std::int64_t>> prompt;  // token ids
  std::optional<std::int64_t> max_new_tokens;  // default 128, as `qcompiler generate -n`
};

std::int64_t parse_integer(const std::string& flag, const std::string& text) {
  try {
    std::size_t used = 0;
    long long value = std::stoll(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
    // std::stoll's invalid_argument and out_of_range: refused below, with the flag named
  }
  throw qc::UsageError(flag + " must be an integer; got '" + text + "'");
}

// "1,415,2934" -> {1, 415, 2934}
std::vector<std::int64_t> parse_token_ids(const std::string& text) {
  std::vector<std::int64_t> ids;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t comma = std::min(text.find(',', start), text.size());
    std::int64_t id = parse_integer("--prompt (token ids joined by commas)", text.substr(start, comma - start));
    if (id < 0) throw qc::UsageError("--prompt token ids must be >= 0; got " + std::to_string(id));
    ids.push_back(id);
    start = comma + 1;
  }
  return ids;
}

void check_combination(const Options& o) {
  if (o.model.empty()) throw qc::UsageError("give a MODEL.pt2");
  if (o.verify_only && o.skip_verify) throw qc::UsageError("--verify and --no-verify contradict each other");
  if (o.inputs.empty() != o.outputs.empty()) throw qc::UsageError("--inputs and --outputs go together");
  if (o.generate && !o.inputs.empty()) throw qc::UsageError("--generate makes its own inputs: drop --inputs");
  if (o.generate && !o.prompt) throw qc::UsageError("--generate needs --prompt (token ids, e.g. 1,2,3)");
  if (!o.generate && (o.prompt || o.max_new_tokens)) {
    throw qc::UsageError("--prompt and --max-new-tokens go with --generate");
  }
  if (o.verify_only && (o.generate || !o.inputs.empty() || o.copy_weights)) {
    throw qc::UsageError("--verify only checks the file");
  }
}

Options parse_args(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw qc::UsageError(arg + " needs a value");
      return args[++i];
    };
    if (arg == "--verify") o.verify_only = true;
    else if (arg == "--no-verify") o.skip_verify = true;
    else if (arg == "--copy-weights") o.copy_weights = true;
    else if (arg == "--inputs") o.inputs = value();
    else if (arg == "--outputs") o.outputs = value();
    else if (arg == "--generate") o.generate = true;
    else if (arg == "--prompt") o.prompt = parse_token_ids(value());
    else if (arg == "--max-new-tokens") o.max_new_tokens = parse_integer(arg, value());
    else if (arg.rfind("--", 0) == 0 || !o.model.empty()) throw qc::UsageError("unexpected argument '" + arg + "'");
    else o.model = arg;
  }
  check_combination(o);
  return o;
}

// An error the model's code raised reaches us as text with its C++ backtrace appended (which AOTInductor has
// already printed to stderr): keep the message.
std::string without_backtrace(const std::string& message) {
  return message.substr(0, message.find("\nException raised from "));
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw qc::UsageError("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// torch.save([t1, t2], f) from Python reads back with torch::jit::pickle_load (torch.save's zip format).
std::vector<at::Tensor> load_tensor_list(const std::string& path) {
  std::vector<char> bytes = read_file(path);
  c10::IValue loaded;
  try {
    loaded = torch::jit::pickle_load(bytes);
  } catch (const std::exception& e) {
    throw qc::UsageError(path + " is not a list of tensors saved with torch.save: " + without_backtrace(e.what()));
  }
  std::vector<c10::IValue> items;
  if (loaded.isTensor()) items = {loaded};  // torch.save(x): one input
  else if (loaded.isList()) items = loaded.toListRef().vec();
  else if (loaded.isTuple()) items = loaded.toTupleRef().elements().vec();
  std::vector<at::Tensor> tensors;
  for (const c10::IValue& item : items) {
    if (!item.isTensor()) break;
    tensors.push_back(item.toTensor());
  }
  if (tensors.empty() || tensors.size() != items.size()) {
    throw qc::UsageError(path + " must hold a list of tensors (torch.save([x, ...], path)); it holds a " +
                         loaded.tagKind());
  }
  return tensors;
}

// A tuple, which Python reads back with torch.load as it is: pickle_save tags a list with its element type
// (torch.jit._pickle.build_tensorlist, or restore_type_tag for List[Any]), and torch.load refuses those
// functions by default (weights_only=True). A tuple is pickled plain.
void save_tensors(const std::vector<at::Tensor>& tensors, const std::string& path) {
  std::vector<c10::IValue> items(tensors.begin(), tensors.end());
  std::vector<char> bytes = torch::jit::pickle_save(c10::IValue(c10::ivalue::Tuple::create(std::move(items))));
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

void print_model(qc::Model& model, std::ostream& out) {
  std::unordered_map<std::string, std::string> metadata = model.metadata();
  out << "metadata:\n";
  for (const auto& [key, value] : std::map<std::string, std::string>(metadata.begin(), metadata.end())) {
    out << "  " << key << ": " << value << '\n';
  }
  std::vector<std::string> spec = model.call_spec();
  out << "inputs (call spec): " << spec.at(0) << '\n' << "outputs (call spec): " << spec.at(1) << '\n';
  out << "weights: " << model.weights() << '\n';
}

void run_once(qc::Model& model, const std::vector<at::Tensor>& inputs, const Options& o) {
  std::vector<at::Tensor> outputs = model.run(inputs);
  save_tensors(outputs, o.outputs);
  std::cout << "wrote " << outputs.size() << " output(s) to " << o.outputs << '\n'
            << "weights: " << model.weights() << '\n'
            << "peak memory (VmHWM): " << std::fixed << std::setprecision(1) << qc::peak_memory_mb() << " MB\n";
}

int run(const Options& o) {
  if (!o.skip_verify) {
    qc::Verified verified = qc::verify_package(o.model);
    if (o.verify_only) {
      std::cout << "ok " << o.model << " (" << verified.members << " members, " << verified.bytes << " bytes)\n";
      return 0;
    }
  }
  c10::InferenceMode no_autograd;
  std::vector<at::Tensor> inputs = o.inputs.empty() ? std::vector<at::Tensor>{} : load_tensor_list(o.inputs);
  std::unique_ptr<qc::Model> model = qc::load_model(o.model, o.copy_weights, std::cerr);
  if (o.generate) {
    qc::generate_and_report(*model, {*o.prompt, o.max_new_tokens.value_or(128)}, std::cout);
  } else if (!o.inputs.empty()) {
    run_once(*model, inputs, o);
  } else {
    print_model(*model, std::cout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || std::find(args.begin(), args.end(), "--help") != args.end()) {
    std::cout << kUsage;
    return args.empty() ? kExitRefused : 0;
  }
  Options options;
  try {
    options = parse_args(argc, argv);
    return run(options);
  } catch (const qc::Refused& e) {
    std::cerr << "qc_run: refusing " << options.model << ": " << e.what() << '\n';
    return kExitRefused;
  } catch (const qc::UsageError& e) {
    std::cerr << "qc_run: " << (options.model.empty() ? "" : options.model + ": ") << e.what()
              << "\n(qc_run --help for usage)\n";
    return kExitRefused;
  } catch (const c10::Error& e) {
    std::cerr << "qc_run: " << options.model << ": " << without_backtrace(e.what_without_backtrace()) << '\n';
    return kExitFailed;
  } catch (const std::exception& e) {
    std::cerr << "qc_run: " << options.model << ": " << without_backtrace(e.what()) << '\n';
    return kExitFailed;
  }
}
