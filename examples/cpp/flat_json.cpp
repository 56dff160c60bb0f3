// JSON: RFC 8259 (strings: section 7; whitespace: section 2).
#include "flat_json.h"

#include <cstdint>

namespace qc {
namespace {

class FlatJsonReader {
 public:
  explicit FlatJsonReader(const std::string& text) : text_(text) {}

  std::map<std::string, std::string> object() {
    std::map<std::string, std::string> values;
    expect('{');
    if (!take('}')) {
      do {
        std::string key = string();
        expect(':');
        values[key] = string();
      } while (take(','));
      expect('}');
    }
    skip_whitespace();
    if (pos_ != text_.size()) fail("text after the object");
    return values;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw JsonError("not a flat JSON object of strings: " + what + " at byte " + std::to_string(pos_));
  }

  void skip_whitespace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  // Skips whitespace, then takes `c` if it comes next.
  bool take(char c) {
    skip_whitespace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void expect(char c) {
    if (!take(c)) fail(std::string("no '") + c + "'");
  }

  char next() {
    if (pos_ >= text_.size()) fail("an unterminated string");
    return text_[pos_++];
  }

  unsigned hex4() {
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      char c = next();
      unsigned digit = c >= '0' && c <= '9'   ? unsigned(c - '0')
                       : c >= 'a' && c <= 'f' ? unsigned(c - 'a' + 10)
                       : c >= 'A' && c <= 'F' ? unsigned(c - 'A' + 10)
                                              : 16u;
      if (digit == 16) fail("a \\u escape without 4 hex digits");
      value = value * 16 + digit;
    }
    return value;
  }

  // A \u escape's code point: characters past U+FFFF come as a surrogate pair, \uD83D\uDE00.
  std::uint32_t code_point() {
    unsigned first = hex4();
    if (first >= 0xDC00 && first <= 0xDFFF) fail("a lone low surrogate");
    if (first < 0xD800 || first > 0xDBFF) return first;
    if (next() != '\\' || next() != 'u') fail("a high surrogate without its low one");
    unsigned second = hex4();
    if (second < 0xDC00 || second > 0xDFFF) fail("a high surrogate without its low one");
    return 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
  }

  static void append_utf8(std::uint32_t cp, std::string& out) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  void escape(std::string& out) {
    char c = next();
    switch (c) {
      case '"': case '\\': case '/': out += c; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': append_utf8(code_point(), out); break;
      default: fail(std::string("an unknown escape \\") + c);
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    for (char c = next(); c != '"'; c = next()) {
      if (static_cast<unsigned char>(c) < 0x20) fail("a control character in a string");
      if (c == '\\') escape(out);
      else out += c;  // UTF-8 passes through as bytes
    }
    return out;
  }

  const std::string& text_;
  std::size_t pos_ = 0;
};

}  // namespace

std::map<std::string, std::string> parse_flat_json_object(const std::string& text) {
  return FlatJsonReader(text).object();
}

}  // namespace qc
