// Known-answer tests of qc::Sha256 (FIPS 180-4 examples, NIST's long-message vector) and of feeding it in pieces.
#include <algorithm>
#include <iostream>
#include <string>

#include "sha256.h"

namespace {

int failures = 0;

void expect(const std::string& what, const std::string& got, const std::string& want) {
  if (got == want) return;
  std::cerr << "FAIL " << what << ": got " << got << ", want " << want << '\n';
  ++failures;
}

// The same digest however the input is cut: pieces of every size from 1 to 130 bytes (across block boundaries).
void expect_pieces_agree(const std::string& data) {
  std::string whole = qc::sha256_hex(data);
  for (std::size_t piece = 1; piece <= 130; ++piece) {
    qc::Sha256 hasher;
    for (std::size_t at = 0; at < data.size(); at += piece) {
      hasher.update(data.data() + at, std::min(piece, data.size() - at));
    }
    expect("pieces of " + std::to_string(piece), hasher.hex_digest(), whole);
  }
}

}  // namespace

int main() {
  expect("empty", qc::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  expect("abc", qc::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  expect("448 bits", qc::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  expect("896 bits",
         qc::sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                        "mnopqrstnopqrstu"),
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  expect("a million a", qc::sha256_hex(std::string(1000000, 'a')),
         "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  expect_pieces_agree(std::string(1000, 'x') + "abc");
  if (failures == 0) std::cout << "sha256: all known answers match\n";
  return failures == 0 ? 0 : 1;
}
