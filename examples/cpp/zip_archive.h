// A read-only view of a zip archive's central directory (zip64 included), enough to hash each stored member.
//
// Our own reader rather than torch's PyTorchStreamReader, because verification needs what that reader does not
// say: each member's compression method, a name that appears twice, a local header that disagrees with the
// central directory. Nothing here decompresses: a .pt2 stores its members as they are.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "errors.h"

namespace qc {

struct ZipMember {
  std::string name;
  std::uint16_t method = 0;  // 0: stored
  std::uint16_t flags = 0;
  std::uint64_t size = 0;  // bytes of data (stored: compressed size == size)
  std::uint64_t compressed_size = 0;
  std::uint64_t local_header_offset = 0;
};

class ZipArchive {
 public:
  explicit ZipArchive(const std::string& path);  // throws Refused if the file is not a readable zip archive
  ~ZipArchive();
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;

  const std::vector<ZipMember>& members() const { return members_; }
  // Calls `consume` with the member's stored bytes, a chunk at a time (never the whole member at once).
  void read_member(const ZipMember& member, const std::function<void(const char*, std::size_t)>& consume) const;
  std::string read_small_member(const ZipMember& member) const;  // the whole member: for small ones only
  // Where the member's stored bytes start in the file (they run compressed_size bytes, within the file).
  std::uint64_t data_offset(const ZipMember& member) const;

 private:
  void read_at(std::uint64_t offset, void* buffer, std::size_t size) const;
  std::uint64_t find_end_of_central_directory() const;
  void read_central_directory(std::uint64_t end_record);

  int fd_ = -1;
  std::uint64_t file_size_ = 0;
  std::vector<ZipMember> members_;
};

}  // namespace qc
