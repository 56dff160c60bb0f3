// Known-answer tests of qc::Sha256 (FIPS 180-4 examples, NIST's long-message vector, digests from Python's
// hashlib) and of feeding it in pieces, run through each implementation: portable, and SHA-NI where the CPU has it.
// `sha256_test --bench [MiB]` measures the throughput of each instead (default 1024 MiB, median of 3 runs).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sha256.h"

namespace {

using qc::Sha256Impl;

int failures = 0;

const char* name(Sha256Impl impl) {
  switch (impl) {
    case Sha256Impl::automatic: return "automatic";
    case Sha256Impl::portable: return "portable";
    case Sha256Impl::sha_ni: return "SHA-NI";
  }
  return "?";
}

void expect(const std::string& what, const std::string& got, const std::string& want) {
  if (got == want) return;
  std::cerr << "FAIL " << what << ": got " << got << ", want " << want << '\n';
  ++failures;
}

// Bytes 0, 1, ..., 250, 0, 1, ...: a period (251, a prime) that no block or read size is a multiple of.
std::string pattern(std::size_t size) {
  std::string data(size, '\0');
  for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<char>(i % 251);
  return data;
}

void expect_fips_vectors(Sha256Impl impl) {
  auto expect_digest = [impl](const std::string& what, const std::string& data, const std::string& want) {
    expect(std::string(name(impl)) + " " + what, qc::sha256_hex(data, impl), want);
  };
  expect_digest("empty", "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  expect_digest("abc", "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  expect_digest("448 bits", "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  expect_digest("896 bits",
                "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                "mnopqrstnopqrstu",
                "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  expect_digest("a million a", std::string(1000000, 'a'),
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Lengths around the 64-byte block (the padding needs 9 bytes, so 55 and 56 differ), and one of 3 MiB + 7 bytes:
// hashlib.sha256(bytes(i % 251 for i in range(size))).hexdigest().
void expect_pattern_digests(Sha256Impl impl) {
  const std::vector<std::pair<std::size_t, std::string>> digests = {
      {0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {1, "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"},
      {55, "463eb28e72f82e0a96c0a4cc53690c571281131f672aa229e0d45ae59b598b59"},
      {56, "da2ae4d6b36748f2a318f23e7ab1dfdf45acdc9d049bd80e59de82a60895f562"},
      {63, "29af2686fd53374a36b0846694cc342177e428d1647515f078784d69cdb9e488"},
      {64, "fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108"},
      {65, "4bfd2c8b6f1eec7a2afeb48b934ee4b2694182027e6d0fc075074f2fabb31781"},
      {119, "da18797ed7c3a777f0847f429724a2d8cd5138e6ed2895c3fa1a6d39d18f7ec6"},
      {120, "f52b23db1fbb6ded89ef42a23ce0c8922c45f25c50b568a93bf1c075420bbb7c"},
      {1000, "4e4c294b331f7a2099a379bec34b9f9fc03dc46ab465d998f4d683da53487e6d"},
      {(3 << 20) + 7, "f578a61853ca2f4272dba551bd868420e22302fbb6d6dfc0cc80da1d2c7b779f"},
  };
  for (const auto& [size, digest] : digests) {
    expect(std::string(name(impl)) + " pattern of " + std::to_string(size), qc::sha256_hex(pattern(size), impl),
           digest);
  }
}

// The same digest however the input is cut: pieces of every size from 1 to 130 bytes (across block boundaries).
void expect_pieces_agree(Sha256Impl impl, const std::string& data) {
  std::string whole = qc::sha256_hex(data, impl);
  for (std::size_t piece = 1; piece <= 130; ++piece) {
    qc::Sha256 hasher(impl);
    for (std::size_t at = 0; at < data.size(); at += piece) {
      hasher.update(data.data() + at, std::min(piece, data.size() - at));
    }
    expect(std::string(name(impl)) + " pieces of " + std::to_string(piece), hasher.hex_digest(), whole);
  }
}

// SHA-NI and portable agree on every length up to eight blocks. Only the first length they disagree on is reported:
// a broken block function gets every length wrong.
void expect_implementations_agree() {
  std::string data = pattern(8 * 64);
  for (std::size_t size = 0; size <= data.size(); ++size) {
    std::string_view prefix(data.data(), size);
    std::string sha_ni = qc::sha256_hex(prefix, Sha256Impl::sha_ni);
    std::string portable = qc::sha256_hex(prefix, Sha256Impl::portable);
    if (sha_ni != portable) {
      return expect("SHA-NI and portable on " + std::to_string(size) + " bytes", sha_ni, portable);
    }
  }
}

// Where SHA-NI is missing, asking for it is refused rather than running instructions the CPU lacks.
void expect_sha_ni_refused() {
  try {
    qc::Sha256 hasher(Sha256Impl::sha_ni);
  } catch (const std::runtime_error&) {
    return;
  }
  expect("SHA-NI asked for without SHA-NI", "a hasher", "std::runtime_error");
}

// Portable, and SHA-NI where the CPU has it (saying so where it is skipped).
std::vector<Sha256Impl> impls_to_run() {
  if (qc::Sha256::sha_ni_available()) return {Sha256Impl::portable, Sha256Impl::sha_ni};
  std::cout << "sha256 SHA-NI: skipped: no SHA-NI\n";
  return {Sha256Impl::portable};
}

int run_tests() {
  if (!qc::Sha256::sha_ni_available()) expect_sha_ni_refused();
  for (Sha256Impl impl : impls_to_run()) {
    int failures_before = failures;
    expect_fips_vectors(impl);
    expect_pattern_digests(impl);
    expect_pieces_agree(impl, std::string(1000, 'x') + "abc");
    if (impl == Sha256Impl::sha_ni) expect_implementations_agree();
    if (failures == failures_before) std::cout << "sha256 " << name(impl) << ": all known answers match\n";
  }
  // What qc_run uses: the tests of the runner check that QC_RUN_SHA256=portable changes it.
  std::cout << "sha256 automatic: " << name(qc::Sha256().impl()) << '\n';
  return failures == 0 ? 0 : 1;
}

// Seconds to hash `data` once.
double time_once(Sha256Impl impl, const std::string& data) {
  auto start = std::chrono::steady_clock::now();
  qc::sha256_hex(data, impl);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run_bench(std::size_t mib) {
  std::string data = pattern(mib << 20);
  for (Sha256Impl impl : impls_to_run()) {
    std::vector<double> seconds;
    for (int run = 0; run < 3; ++run) seconds.push_back(time_once(impl, data));
    std::sort(seconds.begin(), seconds.end());
    long mb_per_s = static_cast<long>(data.size() / seconds[1] / 1e6);
    std::cout << "sha256 " << name(impl) << ": " << mb_per_s << " MB/s (median of 3, " << mib << " MiB; runs "
              << seconds[0] << " to " << seconds[2] << " s)\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 1) return run_tests();
  std::size_t mib = argc == 3 ? std::strtoul(argv[2], nullptr, 10) : 1024;
  if (std::string(argv[1]) != "--bench" || argc > 3 || mib == 0) {
    std::cerr << "usage: sha256_test [--bench [MiB]]\n";
    return 2;
  }
  return run_bench(mib);
}
