// SHA-256 (FIPS 180-4), fed in pieces so that a member of several GB is hashed in bounded memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qc {

// Which code hashes the 64-byte blocks; both give the same digests. sha_ni uses the x86 SHA extensions (several
// times faster); portable is plain C++ and runs on any CPU.
enum class Sha256Impl { automatic, portable, sha_ni };

class Sha256 {
 public:
  // automatic: sha_ni where sha_ni_available(), unless the environment variable QC_RUN_SHA256 is "portable" (for
  // tests and for comparing the two; read once per process, any other value ignored). Asking for sha_ni where it is
  // not available throws std::runtime_error.
  explicit Sha256(Sha256Impl impl = Sha256Impl::automatic);
  void update(const void* data, std::size_t size);
  // The digest as 64 lowercase hex digits (the form sha256sum writes); the hasher is spent afterwards.
  std::string hex_digest();
  // The code this hasher runs: portable or sha_ni, never automatic.
  Sha256Impl impl() const { return impl_; }
  // This build targets x86 and the CPU has the SHA extensions, SSE4.1 and SSSE3 (asked with cpuid).
  static bool sha_ni_available();

 private:
  void compress(const std::uint8_t* blocks, std::size_t count);

  Sha256Impl impl_;
  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> block_{};
  std::size_t block_used_ = 0;
  std::uint64_t total_bytes_ = 0;
};

std::string sha256_hex(std::string_view data, Sha256Impl impl = Sha256Impl::automatic);

}  // namespace qc
