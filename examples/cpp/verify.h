// Verify a qcompiler .pt2 against the SHA-256 of each member recorded when it was packaged, before anything in
// it is extracted or loaded: AOTInductor's loader unpacks and dlopens whatever the archive holds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "zip_archive.h"

namespace qc {

// Relative to the archive's root folder. One line per other member: "<64 hex>  <name under the root>\n".
inline constexpr const char* kDigestMember = "qcompiler/members.sha256";
inline constexpr std::uint64_t kMaxDigestMemberBytes = 16ull << 20;

struct Verified {
  std::string root;      // the archive's root folder
  std::size_t members;   // members hashed (the digest member aside)
  std::uint64_t bytes;   // bytes hashed
};

// Throws Refused, naming the member at fault, unless every member is listed in the digest member and has
// the SHA-256 listed there, and every member listed is there.
Verified verify_package(const std::string& path);

}  // namespace qc
