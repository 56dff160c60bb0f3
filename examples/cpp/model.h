// A loaded .pt2: its weights mapped from the file (mapped_model.h), or copied by AOTInductor's package loader.
#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/Tensor.h>

namespace qc {

class Model {
 public:
  explicit Model(std::string weights) : weights_(std::move(weights)) {}
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // The outputs for the inputs, flat, in call-spec order.
  virtual std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) = 0;
  // The (inputs, outputs) pytree specs, as AOTInductor serializes them.
  virtual std::vector<std::string> call_spec() = 0;
  // AOTInductor's metadata: AOTI_DEVICE_KEY, ..., and the keys qcompiler adds (qcompiler.lm for an LM).
  virtual std::unordered_map<std::string, std::string> metadata() = 0;

  // How its weights were loaded, for a "weights: " line: "mapped from the file (...)", "copied (why)".
  const std::string& weights() const { return weights_; }

 private:
  std::string weights_;
};

// copy_weights: AOTInductor's loader, which copies every weight into memory it allocates (loading peaks at twice
// the weights). Otherwise the weights are mapped from the file where it allows that, and copied where not: then
// `notes` gets one line saying why.
std::unique_ptr<Model> load_model(const std::string& path, bool copy_weights, std::ostream& notes);

// Peak resident memory of this process: VmHWM, as `qcompiler generate` reports it (MB = 1024 kB there too); -1 where
// unknown. Pages of a mapped file count once read, so a mapped model's weights count as they are used.
double peak_memory_mb();

}  // namespace qc
