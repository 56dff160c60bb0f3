#include "model.h"

#include <cstdlib>
#include <fstream>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "errors.h"
#include "mapped_model.h"

namespace qc {
namespace {

// AOTInductor's own loading: it extracts the whole archive and copies the weights blob into memory it allocates.
class CopiedModel : public Model {
 public:
  CopiedModel(const std::string& path, const std::string& why)
      : Model("copied (" + why + ")"), loader_(path) {}

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) override { return loader_.run(inputs); }
  std::vector<std::string> call_spec() override { return loader_.get_call_spec(); }
  std::unordered_map<std::string, std::string> metadata() override { return loader_.get_metadata(); }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
};

}  // namespace

std::unique_ptr<Model> load_model(const std::string& path, bool copy_weights, std::ostream& notes) {
  if (copy_weights) return std::make_unique<CopiedModel>(path, "--copy-weights");
  try {
    return load_mapped(path);
  } catch (const Unmappable& e) {
    // Not an error: AOTInductor's loader takes any package; it only costs memory.
    notes << "qc_run: " << path << ": weights copied, not mapped: " << e.what() << '\n';
    return std::make_unique<CopiedModel>(path, e.what());
  }
}

double peak_memory_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return -1;
}

}  // namespace qc
