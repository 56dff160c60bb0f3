// A JSON object whose values are all strings, as AOTInductor writes its metadata (<hash>.wrapper_metadata.json):
// {"AOTI_DEVICE_KEY": "cpu", "qcompiler.lm": "{\"batch_size\": 1, ...}"}. The only JSON document qc_run reads
// whole, so a small parser here rather than a JSON library.
#pragma once

#include <map>
#include <stdexcept>
#include <string>

namespace qc {

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Keys to their values, escapes decoded (\uXXXX to UTF-8); a key given twice keeps its last value, as Python's
// json and nlohmann::json do. Throws JsonError, saying where, for anything else: another JSON value, a nested
// object, a number, trailing text.
std::map<std::string, std::string> parse_flat_json_object(const std::string& text);

}  // namespace qc
