#include "mapped_model.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner_cpu.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <torch/csrc/shim_exception_state.h>

#include "constants_info.h"
#include "errors.h"
#include "flat_json.h"
#include "zip_archive.h"

namespace qc {
namespace {

// AOTInductor aligns each constant to 64 bytes in its own copy, and oneDNN's prepacked weights need it; qcompiler's
// .pt2 writer stores the blob at a 64-byte boundary of the file, and the mapping starts at a page boundary, so a
// byte's alignment in the file is its alignment in memory.
constexpr std::uint64_t kAlignment = 64;
constexpr const char* kModelFolder = "/data/aotinductor/model/";
// The generated source and the metadata are read whole: more than this is no model's.
constexpr std::uint64_t kMaxTextBytes = 256ull << 20;

using Runner = torch::inductor::AOTIModelContainerRunnerCpu;

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

// The first line of an error message: a fallback reason is said on one line.
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// The members of the model's folder, <root>/data/aotinductor/model/, that loading it with mapped weights needs.
struct ModelMembers {
  std::string folder;
  const ZipMember* library = nullptr;   // <hash>.wrapper.so
  const ZipMember* blob = nullptr;      // <hash>.wrapper_weights.blob: every weight, one after another
  const ZipMember* source = nullptr;    // <hash>.wrapper.cpp: where each weight lies in the blob
  const ZipMember* metadata = nullptr;  // <hash>.wrapper_metadata.json
};

const ZipMember* only_member(const ZipArchive& archive, const std::string& folder, const std::string& suffix) {
  const ZipMember* found = nullptr;
  int count = 0;
  for (const ZipMember& member : archive.members()) {
    if (starts_with(member.name, folder) && ends_with(member.name, suffix)) found = &member, ++count;
  }
  if (count != 1) throw Unmappable("it has " + std::to_string(count) + " members ending in " + suffix + ", not one");
  return found;
}

ModelMembers model_members(const ZipArchive& archive) {
  if (archive.members().empty()) throw Unmappable("the archive is empty");
  const std::string& first = archive.members().front().name;
  ModelMembers m;
  m.folder = first.substr(0, first.find('/')) + kModelFolder;
  m.metadata = only_member(archive, m.folder, ".wrapper_metadata.json");
  m.library = only_member(archive, m.folder, ".wrapper.so");
  m.blob = only_member(archive, m.folder, "_weights.blob");
  m.source = only_member(archive, m.folder, ".wrapper.cpp");
  return m;
}

// Members are read as stored: a compressed one (only in a file loaded with --no-verify) is not read here.
void check_stored(const ZipMember& member) {
  if (member.method != 0 || member.size != member.compressed_size) {
    throw Unmappable("member " + member.name + " is compressed");
  }
}

std::string read_text(const ZipArchive& archive, const ZipMember& member) {
  check_stored(member);
  if (member.size > kMaxTextBytes) throw Unmappable("member " + member.name + " is too large to be read whole");
  return archive.read_small_member(member);
}

std::unordered_map<std::string, std::string> cpu_metadata(const ZipArchive& archive, const ZipMember& member) {
  std::map<std::string, std::string> metadata;
  try {
    metadata = parse_flat_json_object(read_text(archive, member));
  } catch (const JsonError& e) {
    throw Unmappable(std::string("its AOTInductor metadata does not read (") + e.what() + ")");
  }
  auto device = metadata.find("AOTI_DEVICE_KEY");
  if (device == metadata.end()) throw Unmappable("its AOTInductor metadata names no device (AOTI_DEVICE_KEY)");
  if (device->second != "cpu") throw Unmappable("it runs on " + device->second + ", not the CPU");
  return {metadata.begin(), metadata.end()};
}

// A weight with its dtype, and where its first byte lies in the file (its storage offset counts from there).
struct PlacedWeight {
  ConstantInfo info;
  c10::ScalarType dtype;
  std::uint64_t file_offset;
};

c10::ScalarType scalar_type(const ConstantInfo& constant) {
  const auto& dtypes = c10::getStringToDtypeMap();
  auto found = dtypes.find(constant.dtype);
  if (found == dtypes.end() || c10::isQIntType(found->second)) {
    throw Unmappable("weight " + constant.name + " has dtype " + constant.dtype);
  }
  return found->second;
}

// Each weight's dtype and place, checked before the library is loaded: a file that fails loads copied, and its
// library is not loaded twice.
std::vector<PlacedWeight> place_weights(std::vector<ConstantInfo> constants, std::uint64_t blob_offset) {
  std::vector<PlacedWeight> placed;
  for (ConstantInfo& constant : constants) {
    PlacedWeight weight{std::move(constant), c10::ScalarType::Undefined, 0};
    weight.dtype = scalar_type(weight.info);
    weight.file_offset = blob_offset + weight.info.start;
    std::uint64_t itemsize = c10::elementSize(weight.dtype);
    std::uint64_t alignment = weight.info.onednn ? kAlignment : itemsize;
    if (weight.file_offset % alignment != 0) {
      throw Unmappable(std::string(weight.info.onednn ? "oneDNN weight " : "weight ") + weight.info.name +
                       " starts at byte " + std::to_string(weight.file_offset) + " of the file, not at a multiple of " +
                       std::to_string(alignment));
    }
    // A oneDNN weight's shape is its logical one: its bytes are in oneDNN's blocked layout, which its descriptor gives.
    if (!weight.info.onednn) check_strided_extent(weight.info, itemsize);
    placed.push_back(std::move(weight));
  }
  return placed;
}

// The blob, as mapped.py checks it: stored at a 64-byte boundary, and exactly the weights the source describes.
std::vector<PlacedWeight> weights_in_blob(const ZipArchive& archive, const ModelMembers& m) {
  check_stored(*m.blob);
  std::vector<ConstantInfo> constants = blob_constants(read_text(archive, *m.source));
  std::uint64_t total = 0;
  for (const ConstantInfo& constant : constants) total += constant.size;  // blob_constants checked for overflow
  if (total != m.blob->size) {
    throw Unmappable("its weights add up to " + std::to_string(total) + " bytes, the blob holds " +
                     std::to_string(m.blob->size));
  }
  std::uint64_t start = archive.data_offset(*m.blob);
  if (start % kAlignment != 0) {
    throw Unmappable("its weights start at byte " + std::to_string(start) + ", not at a multiple of " +
                     std::to_string(kAlignment));
  }
  return place_weights(std::move(constants), start);
}

// The whole .pt2, mapped private and writable: the model writes some of its "weights" (an LM's KV cache), and
// copy-on-write turns just those pages into private memory; the file never changes.
class FileMapping {
 public:
  explicit FileMapping(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Unmappable(std::string("cannot open it to map it: ") + std::strerror(errno));
    struct stat info {};
    if (::fstat(fd, &info) != 0 || info.st_size <= 0) {
      ::close(fd);
      throw Unmappable("cannot map it: it is empty, or its size is unknown");
    }
    size_ = static_cast<std::uint64_t>(info.st_size);
    void* data = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    int error = errno;
    ::close(fd);  // the mapping holds the file
    if (data == MAP_FAILED) throw Unmappable(std::string("cannot map it: ") + std::strerror(error));
    data_ = static_cast<char*>(data);
  }
  ~FileMapping() { ::munmap(data_, size_); }
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;

  char* data() const { return data_; }
  std::uint64_t size() const { return size_; }

 private:
  char* data_ = nullptr;
  std::uint64_t size_ = 0;
};

// A fresh folder under TMPDIR (or /tmp), removed with what it holds when this goes.
class TemporaryFolder {
 public:
  TemporaryFolder() {
    std::string pattern = (std::filesystem::temp_directory_path() / "qc_run-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("cannot create a temporary folder " + pattern + ": " + std::strerror(errno));
    }
    path_ = pattern;
  }
  ~TemporaryFolder() {
    std::error_code ignored;  // what cannot be removed stays: no reason to fail a loaded model
    std::filesystem::remove_all(path_, ignored);
  }
  TemporaryFolder(const TemporaryFolder&) = delete;
  TemporaryFolder& operator=(const TemporaryFolder&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void extract(const ZipArchive& archive, const ZipMember& member, const std::string& path) {
  check_stored(member);
  std::ofstream out(path, std::ios::binary);
  archive.read_member(member, [&out](const char* data, std::size_t size) {
    out.write(data, static_cast<std::streamsize>(size));
  });
  if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

// The model's library, loaded from the files of its folder but the weights blob, extracted under their own names:
// the proxy executor reads its op list (<hash>.wrapper.json) from beside the .so. The folder goes once the library
// is loaded (it stays mapped).
std::unique_ptr<Runner> load_library(const ZipArchive& archive, const ModelMembers& m) {
  TemporaryFolder folder;
  std::string library_path;
  for (const ZipMember& member : archive.members()) {
    if (&member == m.blob || !starts_with(member.name, m.folder) || ends_with(member.name, "/")) continue;
    std::string name = member.name.substr(m.folder.size());
    if (name.find('/') != std::string::npos || name == "." || name == "..") {
      throw Unmappable("member " + member.name + " lies in a folder under the model's");
    }
    std::string path = folder.path() + "/" + name;
    extract(archive, member, path);
    if (&member == m.library) library_path = path;
  }
  return std::make_unique<Runner>(library_path);
}

// The library's own list of weights must hold every weight the source describes, with the same dtype.
void check_library_expects(const Runner& runner, const std::vector<PlacedWeight>& weights) {
  std::unordered_map<std::string, std::string> names = runner.getConstantNamesToOriginalFQNs();
  std::unordered_map<std::string, std::int32_t> dtypes = runner.getConstantNamesToDtypes();
  for (const PlacedWeight& weight : weights) {
    if (!names.count(weight.info.name)) {
      throw Unmappable("the generated code and the library name different weights (" + weight.info.name + ")");
    }
    auto dtype = dtypes.find(weight.info.name);  // AOTInductor's dtype codes are c10::ScalarType's values
    if (dtype != dtypes.end() && dtype->second != static_cast<std::int32_t>(weight.dtype)) {
      throw Unmappable("weight " + weight.info.name + " is " + weight.info.dtype +
                       " in the generated code, another dtype in the library");
    }
  }
}

// No deleter: the tensor views the mapping, which outlives the library that uses it (MappedModel).
at::Tensor strided_weight(char* file, const PlacedWeight& weight) {
  char* first = file + weight.file_offset + weight.info.offset * c10::elementSize(weight.dtype);
  return at::from_blob(first, weight.info.shape, weight.info.stride, at::TensorOptions().dtype(weight.dtype));
}

// A oneDNN prepacked weight, made over the mapping as AOTInductor makes it over its own copy: with its C function,
// the _mkldnn layout and the descriptor the generated code holds (oneDNN wraps the bytes; it does not copy them).
at::Tensor onednn_weight(char* file, const PlacedWeight& weight) {
  const ConstantInfo& info = weight.info;
  AtenTensorHandle handle = nullptr;
  AOTITorchError failed = aoti_torch_create_tensor_from_blob_v2(
      file + weight.file_offset, static_cast<std::int64_t>(info.shape.size()), info.shape.data(), info.stride.data(),
      info.offset, static_cast<std::int32_t>(weight.dtype), aoti_torch_device_type_cpu(), 0, &handle,
      aoti_torch_layout__mkldnn(), info.opaque.data(), static_cast<std::int64_t>(info.opaque.size()));
  if (failed != AOTI_TORCH_SUCCESS || handle == nullptr) {
    throw Unmappable("oneDNN weight " + info.name + " could not be made over the mapping: " +
                     first_line(torch::csrc::shim::details::get_torch_exception_what_without_backtrace()));
  }
  // The handle is a new at::Tensor that we own: keep the tensor (a reference to the same one), free the handle.
  at::Tensor tensor = *torch::aot_inductor::tensor_handle_to_tensor_pointer(handle);
  aoti_torch_delete_tensor_object(handle);
  return tensor;
}

std::unordered_map<std::string, at::Tensor> tensors_over(const FileMapping& mapping,
                                                         const std::vector<PlacedWeight>& weights) {
  std::unordered_map<std::string, at::Tensor> tensors;
  for (const PlacedWeight& weight : weights) {
    if (weight.file_offset > mapping.size() || weight.info.size > mapping.size() - weight.file_offset) {
      throw Unmappable("weight " + weight.info.name + " lies past the end of the file (was it changed?)");
    }
    tensors.emplace(weight.info.name, weight.info.onednn ? onednn_weight(mapping.data(), weight)
                                                         : strided_weight(mapping.data(), weight));
  }
  return tensors;
}

std::string mapped_summary(const std::vector<PlacedWeight>& weights) {
  std::uint64_t bytes = 0, onednn = 0;
  for (const PlacedWeight& weight : weights) bytes += weight.info.size, onednn += weight.info.onednn;
  return "mapped from the file (" + std::to_string(weights.size()) + " tensors, " +
         (onednn ? std::to_string(onednn) + " of them oneDNN-prepacked, " : "") + std::to_string(bytes) + " bytes)";
}

class MappedModel : public Model {
 public:
  MappedModel(std::unique_ptr<FileMapping> mapping, std::unordered_map<std::string, at::Tensor> weights,
              std::unique_ptr<Runner> runner, std::unordered_map<std::string, std::string> metadata,
              std::string summary)
      : Model(std::move(summary)),
        mapping_(std::move(mapping)),
        weights_(std::move(weights)),
        runner_(std::move(runner)),
        metadata_(std::move(metadata)) {}

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) override { return runner_->run(inputs); }
  std::vector<std::string> call_spec() override { return runner_->get_call_spec(); }
  std::unordered_map<std::string, std::string> metadata() override { return metadata_; }

 private:
  // Members go in reverse order: the library first, then the tensors it was handed, then the mapping they view.
  std::unique_ptr<FileMapping> mapping_;
  std::unordered_map<std::string, at::Tensor> weights_;
  std::unique_ptr<Runner> runner_;
  std::unordered_map<std::string, std::string> metadata_;
};

std::unique_ptr<Model> load_mapped_from(const std::string& path) {
  ZipArchive archive(path);
  ModelMembers members = model_members(archive);
  std::unordered_map<std::string, std::string> metadata = cpu_metadata(archive, *members.metadata);
  std::vector<PlacedWeight> weights = weights_in_blob(archive, members);
  auto mapping = std::make_unique<FileMapping>(path);
  std::unique_ptr<Runner> runner = load_library(archive, members);
  check_library_expects(*runner, weights);
  std::unordered_map<std::string, at::Tensor> tensors = tensors_over(*mapping, weights);
  try {
    runner->update_constant_buffer(tensors, /*use_inactive=*/false, /*validate_full_updates=*/true,
                                   /*user_managed=*/true);
  } catch (const std::exception& e) {
    throw Unmappable(std::string("AOTInductor refused the mapped weights: ") + first_line(e.what()));
  }
  return std::make_unique<MappedModel>(std::move(mapping), std::move(tensors), std::move(runner), std::move(metadata),
                                       mapped_summary(weights));
}

}  // namespace

std::unique_ptr<Model> load_mapped(const std::string& path) {
  try {
    return load_mapped_from(path);
  } catch (const Refused& e) {  // verification refuses these first; with --no-verify, AOTInductor's loader decides
    throw Unmappable(e.what());
  }
}

}  // namespace qc
