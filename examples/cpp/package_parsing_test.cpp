// Known answers for what qc_run reads from a package to map its weights: the flat JSON of AOTInductor's metadata,
// and the weights' descriptions in the generated source (the sample of tests/test_mapped.py, which checks
// qcompiler/runtime/mapped.py's reading of the same lines).
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "constants_info.h"
#include "flat_json.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (ok) return;
  std::cerr << "FAIL " << what << '\n';
  ++failures;
}

// `run` must throw an exception of type Error whose message holds `said`.
template <typename Error>
void expect_throws(const std::function<void()>& run, const std::string& said, const std::string& what) {
  try {
    run();
  } catch (const Error& e) {
    expect(std::string(e.what()).find(said) != std::string::npos,
           what + ": said '" + e.what() + "', not '" + said + "'");
    return;
  }
  expect(false, what + ": did not throw");
}

void test_flat_json() {
  using qc::parse_flat_json_object;
  using Object = std::map<std::string, std::string>;
  expect(parse_flat_json_object("{}") == Object{}, "empty object");
  expect(parse_flat_json_object(" \n{ \"a\" : \"1\" ,\"b\":\"\"}\r\n") == Object{{"a", "1"}, {"b", ""}}, "whitespace");
  // What Python's json.dumps writes for qcompiler.lm: a JSON text inside a string.
  expect(parse_flat_json_object(R"({"qcompiler.lm": "{\"batch_size\": 1, \"max_seq_len\": 48}"})") ==
             Object{{"qcompiler.lm", R"({"batch_size": 1, "max_seq_len": 48})"}},
         "escaped quotes");
  expect(parse_flat_json_object(R"({"e": "\\ \/ \b\f\n\r\t"})") == Object{{"e", "\\ / \b\f\n\r\t"}}, "escapes");
  expect(parse_flat_json_object(R"({"u": "\u0041\u00e9\u20ac\ud83d\ude00"})") ==
             Object{{"u", "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}},
         "\\u escapes to UTF-8, a surrogate pair to one character");
  expect(parse_flat_json_object("{\"raw\": \"\xc3\xa9\"}") == Object{{"raw", "\xc3\xa9"}}, "UTF-8 passes through");
  expect(parse_flat_json_object(R"({"k": "1", "k": "2"})") == Object{{"k", "2"}}, "a key twice keeps the last");
  auto refused = [](const std::string& text, const std::string& said) {
    expect_throws<qc::JsonError>([&] { parse_flat_json_object(text); }, said, "refuses " + text);
  };
  refused("", "no '{'");
  refused("[]", "no '{'");
  refused(R"({"a": 1})", "no '\"'");
  refused(R"({"a": {"b": "c"}})", "no '\"'");
  refused(R"({"a": "b",})", "no '\"'");
  refused(R"({"a" "b"})", "no ':'");
  refused(R"({"a": "b")", "no '}'");
  refused(R"({"a": "b"} x)", "text after the object");
  refused(R"({"a": "b)", "an unterminated string");
  refused("{\"a\": \"b\nc\"}", "a control character");
  refused(R"({"a": "\x"})", "an unknown escape \\x");
  refused(R"({"a": "\u12"})", "4 hex digits");
  refused(R"({"a": "\ud83d"})", "without its low one");
  refused(R"({"a": "\ude00"})", "a lone low surrogate");
}

const std::string kSource = R"(
    constants_info_[0].name = "constant_0_w";
    constants_info_[0].dtype = cached_torch_dtype_bfloat16;
    constants_info_[0].offset = 0;
    constants_info_[0].data_size = 128;
    constants_info_[0].from_folded = false;
    constants_info_[0].shape = {4, 16};
    constants_info_[0].stride = {16, 1};
    constants_info_[0].layout = static_cast<int32_t>(cached_torch_layout_strided);
    constants_info_[1].name = "constant_folded";
    constants_info_[1].dtype = cached_torch_dtype_float32;
    constants_info_[1].offset = 0;
    constants_info_[1].data_size = 64;
    constants_info_[1].from_folded = true;
    constants_info_[1].shape = {16};
    constants_info_[1].stride = {1};
    constants_info_[1].layout = static_cast<int32_t>(cached_torch_layout_strided);
    constants_info_[2].name = "constant_1_scale";
    constants_info_[2].dtype = cached_torch_dtype_float32;
    constants_info_[2].offset = 2;
    constants_info_[2].data_size = 64;
    constants_info_[2].from_folded = false;
    constants_info_[2].shape = {};
    constants_info_[2].stride = {};
    constants_info_[2].layout = static_cast<int32_t>(cached_torch_layout_strided);
    constants_info_[3].name = "_frozen_param0";
    constants_info_[3].dtype = cached_torch_dtype_int8;
    constants_info_[3].offset = 0;
    constants_info_[3].data_size = 4096;
    constants_info_[3].from_folded = false;
    constants_info_[3].shape = {64, 64};
    constants_info_[3].stride = {64, 1};
    constants_info_[3].layout = static_cast<int32_t>(cached_torch_layout__mkldnn);
    constants_info_[3].opaque_metadata = {1L, 0L, 255L};
)";

std::string replaced(const std::string& text, const std::string& from, const std::string& to) {
  std::string out = text;
  std::size_t at = out.find(from);
  expect(at != std::string::npos, "the sample holds '" + from + "'");
  return at == std::string::npos ? out : out.replace(at, from.size(), to);
}

bool same(const qc::ConstantInfo& c, const std::string& name, const std::string& dtype,
          const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& stride, std::int64_t offset,
          std::uint64_t start, std::uint64_t size, const std::vector<std::uint8_t>& opaque) {
  return c.name == name && c.dtype == dtype && c.shape == shape && c.stride == stride && c.offset == offset &&
         c.start == start && c.size == size && c.onednn == !opaque.empty() && c.opaque == opaque;
}

void test_constants() {
  std::vector<qc::ConstantInfo> got = qc::blob_constants(kSource);
  expect(got.size() == 3, "three weights in the blob (the folded one is computed, not read)");
  if (got.size() == 3) {
    expect(same(got[0], "constant_0_w", "bfloat16", {4, 16}, {16, 1}, 0, 0, 128, {}), "weight 0");
    expect(same(got[1], "constant_1_scale", "float32", {}, {}, 2, 128, 64, {}), "weight 2, after weight 0");
    expect(same(got[2], "_frozen_param0", "int8", {64, 64}, {64, 1}, 0, 192, 4096, {1, 0, 255}), "a oneDNN weight");
  }
  auto refused = [](const std::string& source, const std::string& said, const std::string& what) {
    expect_throws<qc::Unmappable>([&] { qc::blob_constants(source); }, said, what);
  };
  refused(replaced(kSource, "cached_torch_layout_strided);\n    constants_info_[1]",
                   "cached_torch_layout_sparse_coo);\n    constants_info_[1]"),
          "weight \"constant_0_w\" has layout static_cast<int32_t>(cached_torch_layout_sparse_coo)", "sparse layout");
  refused(replaced(kSource, "    constants_info_[3].opaque_metadata = {1L, 0L, 255L};\n", ""),
          "weight \"_frozen_param0\" in a form not known here (no opaque_metadata)", "no descriptor");
  refused(replaced(kSource, "{1L, 0L, 255L}", "{1L, 0L, 256L}"), "256, not a byte", "descriptor not in bytes");
  refused(replaced(kSource, "constants_info_[2].shape = {};\n", ""), "in a form not known here (no shape)",
          "no shape");
  refused(replaced(kSource, "shape = {4, 16}", "shape = {4}"), "shape and stride differ", "ranks differ");
  refused(replaced(kSource, "data_size = 128", "data_size = 12x"), "'12x' is not an integer", "bad size");
}

void test_extents() {
  qc::ConstantInfo c;
  c.name = "w", c.shape = {4, 16}, c.stride = {16, 1}, c.size = 128;
  qc::check_strided_extent(c, 2);  // 64 bfloat16: exactly its bytes
  c.offset = 1;
  expect_throws<qc::Unmappable>([&] { qc::check_strided_extent(c, 2); }, "reach past its 128 bytes", "one too far");
  c.offset = 0, c.shape = {0, 16};
  qc::check_strided_extent(c, 2);  // empty: reaches nothing
  c.shape = {1LL << 40, 1LL << 40}, c.stride = {1LL << 40, 1};
  expect_throws<qc::Unmappable>([&] { qc::check_strided_extent(c, 8); }, "reach past", "overflowing extent");
  c.shape = {4, 16}, c.stride = {-16, 1};
  expect_throws<qc::Unmappable>([&] { qc::check_strided_extent(c, 2); }, "negative", "negative stride");
  c.shape = {}, c.stride = {}, c.offset = 2, c.size = 64;
  qc::check_strided_extent(c, 4);  // a scalar at element 2 of its 16
}

}  // namespace

int main() {
  test_flat_json();
  test_constants();
  test_extents();
  if (failures == 0) std::cout << "package parsing: all known answers match\n";
  return failures == 0 ? 0 : 1;
}
