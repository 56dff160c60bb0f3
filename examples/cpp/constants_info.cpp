#include "constants_info.h"

#include <cstdint>
#include <map>
#include <sstream>

namespace qc {
namespace {

constexpr const char* kPrefix = "constants_info_[";

using Fields = std::map<std::string, std::string>;  // field -> its value as written

// "constants_info_[3].dtype = cached_torch_dtype_int8;" -> (3, "dtype", "cached_torch_dtype_int8"); false for
// other lines. The value runs to the line's last ';', as mapped.py's pattern reads it.
bool parse_field_line(const std::string& line, std::int64_t& index, std::string& field, std::string& value) {
  std::size_t at = line.find(kPrefix);
  if (at == std::string::npos) return false;
  std::size_t digits = at + std::char_traits<char>::length(kPrefix), close = line.find(']', digits);
  if (close == std::string::npos || close == digits || close - digits > 9 ||
      line.find_first_not_of("0123456789", digits) != close || close + 1 >= line.size() || line[close + 1] != '.') {
    return false;
  }
  std::size_t name_end = line.find(" = ", close + 2), end = line.rfind(';');
  if (name_end == std::string::npos || end == std::string::npos || end < name_end + 3) return false;
  index = std::stoll(line.substr(digits, close - digits));
  field = line.substr(close + 2, name_end - close - 2);
  value = line.substr(name_end + 3, end - name_end - 3);
  return field.find_first_not_of("abcdefghijklmnopqrstuvwxyz_0123456789") == std::string::npos;
}

std::map<std::int64_t, Fields> fields_by_index(const std::string& source) {
  std::map<std::int64_t, Fields> fields;
  std::istringstream lines(source);
  std::string line, field, value;
  std::int64_t index = 0;
  while (std::getline(lines, line)) {
    if (parse_field_line(line, index, field, value)) fields[index][field] = value;
  }
  return fields;
}

// A description this reader does not know: the weight, and what about it.
struct UnknownForm {
  std::string what;
};

const std::string& field_of(const Fields& fields, const std::string& name) {
  auto found = fields.find(name);
  if (found == fields.end()) throw UnknownForm{"no " + name};
  return found->second;
}

std::int64_t integer(const std::string& text) {
  std::string digits = text;
  if (!digits.empty() && digits.back() == 'L') digits.pop_back();  // C++ literals: 64L
  std::size_t used = 0;
  std::int64_t value = 0;
  try {
    value = std::stoll(digits, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (digits.empty() || used != digits.size()) throw UnknownForm{"'" + text + "' is not an integer"};
  return value;
}

std::string trimmed(const std::string& text) {
  std::size_t first = text.find_first_not_of(" \t"), last = text.find_last_not_of(" \t");
  return first == std::string::npos ? "" : text.substr(first, last - first + 1);
}

// "{4L, 16L}" or "{}" -> {4, 16} or {}
std::vector<std::int64_t> integers(const std::string& text) {
  std::string list = trimmed(text);
  if (list.size() < 2 || list.front() != '{' || list.back() != '}') throw UnknownForm{"'" + text + "' is not a list"};
  std::vector<std::int64_t> values;
  std::istringstream items(list.substr(1, list.size() - 2));
  for (std::string item; std::getline(items, item, ',');) {
    if (!trimmed(item).empty()) values.push_back(integer(trimmed(item)));
  }
  return values;
}

std::string without_prefix(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0 ? text.substr(prefix.size()) : text;
}

std::uint64_t non_negative(std::int64_t value, const std::string& field) {
  if (value < 0) throw UnknownForm{field + " " + std::to_string(value) + " is negative"};
  return static_cast<std::uint64_t>(value);
}

std::vector<std::uint8_t> opaque_bytes(const std::string& text) {
  std::vector<std::uint8_t> bytes;
  for (std::int64_t value : integers(text)) {
    if (value < 0 || value > 255) throw UnknownForm{"opaque_metadata holds " + std::to_string(value) + ", not a byte"};
    bytes.push_back(static_cast<std::uint8_t>(value));
  }
  return bytes;
}

ConstantInfo constant_from(const Fields& f, std::uint64_t start, bool onednn) {
  ConstantInfo c;
  c.onednn = onednn;
  c.name = trimmed(field_of(f, "name"));
  if (c.name.size() < 2 || c.name.front() != '"' || c.name.back() != '"') throw UnknownForm{"name " + c.name};
  c.name = c.name.substr(1, c.name.size() - 2);
  c.dtype = without_prefix(trimmed(field_of(f, "dtype")), "cached_torch_dtype_");
  c.shape = integers(field_of(f, "shape"));
  c.stride = integers(field_of(f, "stride"));
  if (c.shape.size() != c.stride.size()) throw UnknownForm{"its shape and stride differ in length"};
  c.offset = static_cast<std::int64_t>(non_negative(integer(trimmed(field_of(f, "offset"))), "offset"));
  c.start = start;
  c.size = non_negative(integer(trimmed(field_of(f, "data_size"))), "data_size");
  if (c.onednn) c.opaque = opaque_bytes(field_of(f, "opaque_metadata"));
  return c;
}

}  // namespace

std::vector<ConstantInfo> blob_constants(const std::string& source) {
  std::vector<ConstantInfo> constants;
  std::uint64_t start = 0;
  for (const auto& [index, fields] : fields_by_index(source)) {
    auto folded = fields.find("from_folded");
    if (folded != fields.end() && trimmed(folded->second) == "true") continue;  // computed at load, not in the blob
    auto name = fields.find("name");
    std::string label = name != fields.end() ? trimmed(name->second) : std::to_string(index);
    auto layout = fields.find("layout");
    std::string layout_text = layout != fields.end() ? trimmed(layout->second) : "(none)";
    bool strided = layout_text.find("layout_strided") != std::string::npos;
    bool onednn = layout_text.find("layout__mkldnn") != std::string::npos;
    if (!strided && !onednn) throw Unmappable("weight " + label + " has layout " + layout_text);
    try {
      constants.push_back(constant_from(fields, start, onednn));
    } catch (const UnknownForm& e) {
      throw Unmappable("the generated code describes weight " + label + " in a form not known here (" + e.what + ")");
    }
    if (constants.back().size > UINT64_MAX - start) throw Unmappable("the weights' sizes overflow");
    start += constants.back().size;
  }
  return constants;
}

void check_strided_extent(const ConstantInfo& c, std::size_t itemsize) {
  // Elements from the first to the last one reached: 1 + sum((n - 1) * stride), none for an empty tensor.
  std::uint64_t extent = 1;
  bool empty = false, overflow = false;
  for (std::size_t d = 0; d < c.shape.size(); ++d) {
    if (c.shape[d] < 0 || c.stride[d] < 0) {
      throw Unmappable("weight " + c.name + " has a negative size or stride");
    }
    if (c.shape[d] == 0) empty = true;
    std::uint64_t reach = 0;
    overflow |= __builtin_mul_overflow(static_cast<std::uint64_t>(c.shape[d] > 0 ? c.shape[d] - 1 : 0),
                                       static_cast<std::uint64_t>(c.stride[d]), &reach);
    overflow |= __builtin_add_overflow(extent, reach, &extent);
  }
  if (empty) extent = 0;
  std::uint64_t bytes = 0;
  overflow |= __builtin_add_overflow(extent, static_cast<std::uint64_t>(c.offset), &bytes);
  overflow |= __builtin_mul_overflow(bytes, static_cast<std::uint64_t>(itemsize), &bytes);
  if (overflow || bytes > c.size) {
    throw Unmappable("weight " + c.name + "'s shape and stride reach past its " + std::to_string(c.size) + " bytes");
  }
}

}  // namespace qc
