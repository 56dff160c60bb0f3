// Zip format: PKWARE's APPNOTE.TXT (end of central directory record, zip64 end record and locator, central
// directory headers with their zip64 extra field, local file headers).
#include "zip_archive.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qc {
namespace {

constexpr std::uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr std::uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr std::uint32_t kEndSignature = 0x06054b50;
constexpr std::uint32_t kZip64EndSignature = 0x06064b50;
constexpr std::uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr std::size_t kEndRecordSize = 22;
constexpr std::size_t kMaxCommentSize = 0xffff;
constexpr std::size_t kZip64LocatorSize = 20;
constexpr std::size_t kZip64EndSize = 56;
constexpr std::size_t kCentralHeaderSize = 46;
constexpr std::size_t kLocalHeaderSize = 30;
constexpr std::uint16_t kZip64ExtraId = 0x0001;
constexpr std::uint32_t kSaturated32 = 0xffffffff;  // "the value is in the zip64 extra field"
// A .pt2 lists a few dozen members; a central directory this large is a damaged or hostile file, not a model.
constexpr std::uint64_t kMaxCentralDirectoryBytes = 64ull << 20;
constexpr std::size_t kChunkBytes = 1 << 20;

// Little-endian fields read one after another from a buffer; reading past its end refuses the archive.
class FieldReader {
 public:
  FieldReader(const char* data, std::size_t size) : data_(data), size_(size) {}

  std::uint64_t uint(std::size_t bytes) {
    need(bytes);
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < bytes; ++i) {
      value |= std::uint64_t{static_cast<unsigned char>(data_[pos_ + i])} << (8 * i);
    }
    pos_ += bytes;
    return value;
  }
  std::uint16_t u16() { return static_cast<std::uint16_t>(uint(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(uint(4)); }
  std::uint64_t u64() { return uint(8); }
  std::string text(std::size_t bytes) {
    need(bytes);
    std::string s(data_ + pos_, bytes);
    pos_ += bytes;
    return s;
  }
  void skip(std::size_t bytes) {
    need(bytes);
    pos_ += bytes;
  }
  std::size_t left() const { return size_ - pos_; }

 private:
  void need(std::size_t bytes) const {
    if (bytes > size_ - pos_) throw Refused("its zip central directory is malformed (a record runs past its end)");
  }

  const char* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// Where the central directory holds 0xffffffff, the real value is in the zip64 extra field (APPNOTE 4.5.3):
// the saturated fields' values follow one another there, in this order.
void apply_zip64_extra(const std::string& extra, std::uint32_t size32, std::uint32_t compressed32,
                       std::uint32_t offset32, ZipMember& member) {
  FieldReader fields(extra.data(), extra.size());
  while (fields.left() >= 4) {
    std::uint16_t id = fields.u16(), length = fields.u16();
    std::string body = fields.text(length);
    if (id != kZip64ExtraId) continue;
    FieldReader values(body.data(), body.size());
    if (size32 == kSaturated32) member.size = values.u64();
    if (compressed32 == kSaturated32) member.compressed_size = values.u64();
    if (offset32 == kSaturated32) member.local_header_offset = values.u64();
    return;
  }
  if (size32 == kSaturated32 || compressed32 == kSaturated32 || offset32 == kSaturated32) {
    throw Refused("member " + member.name + ": its zip64 sizes are missing from the central directory");
  }
}

ZipMember read_central_header(FieldReader& directory) {
  if (directory.u32() != kCentralHeaderSignature) {
    throw Refused("its zip central directory is malformed (a header without its signature)");
  }
  ZipMember member;
  directory.skip(4);  // versions made by, needed
  member.flags = directory.u16();
  member.method = directory.u16();
  directory.skip(8);  // time, date, CRC-32 (the SHA-256 checks the data instead)
  std::uint32_t compressed32 = directory.u32(), size32 = directory.u32();
  std::uint16_t name_length = directory.u16(), extra_length = directory.u16(), comment_length = directory.u16();
  std::uint16_t disk = directory.u16();
  directory.skip(6);  // internal and external attributes
  std::uint32_t offset32 = directory.u32();
  member.name = directory.text(name_length);
  std::string extra = directory.text(extra_length);
  directory.skip(comment_length);
  member.size = size32, member.compressed_size = compressed32, member.local_header_offset = offset32;
  apply_zip64_extra(extra, size32, compressed32, offset32, member);
  if (disk != 0 && disk != 0xffff) throw Refused("member " + member.name + " is on another disk of a split archive");
  return member;
}

}  // namespace

ZipArchive::ZipArchive(const std::string& path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Refused(std::string("cannot open it: ") + std::strerror(errno));
  struct stat info {};
  if (::fstat(fd_, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd_);
    throw Refused("it is not a regular file");
  }
  file_size_ = static_cast<std::uint64_t>(info.st_size);
  try {
    read_central_directory(find_end_of_central_directory());
  } catch (...) {
    ::close(fd_);  // the destructor does not run for a constructor that throws
    throw;
  }
}

ZipArchive::~ZipArchive() { ::close(fd_); }

void ZipArchive::read_at(std::uint64_t offset, void* buffer, std::size_t size) const {
  if (offset > file_size_ || size > file_size_ - offset) {
    throw Refused("it ends before a record its zip directory points to (truncated?)");
  }
  auto* out = static_cast<char*>(buffer);
  while (size > 0) {
    ssize_t got = ::pread(fd_, out, size, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) throw Refused(std::string("cannot read it: ") + (got < 0 ? std::strerror(errno) : "unexpected end"));
    out += got, offset += static_cast<std::uint64_t>(got), size -= static_cast<std::size_t>(got);
  }
}

// The end record sits in the last 22 bytes, or before a comment of up to 64 KiB: search backwards.
std::uint64_t ZipArchive::find_end_of_central_directory() const {
  std::size_t tail = static_cast<std::size_t>(std::min<std::uint64_t>(file_size_, kEndRecordSize + kMaxCommentSize));
  if (tail < kEndRecordSize) throw Refused("it is not a zip archive (too short to be one)");
  std::string bytes(tail, '\0');
  read_at(file_size_ - tail, bytes.data(), tail);
  for (std::size_t pos = tail - kEndRecordSize + 1; pos-- > 0;) {
    if (FieldReader(bytes.data() + pos, 4).u32() == kEndSignature) return file_size_ - tail + pos;
  }
  throw Refused("it is not a zip archive (no end of central directory: truncated, or another kind of file)");
}

void ZipArchive::read_central_directory(std::uint64_t end_record) {
  char end[kEndRecordSize];
  read_at(end_record, end, sizeof end);
  FieldReader fields(end, sizeof end);
  fields.skip(4);
  std::uint64_t disk = fields.u16(), directory_disk = fields.u16();
  std::uint64_t entries_here = fields.u16(), entries = fields.u16();
  std::uint64_t directory_size = fields.u32(), directory_offset = fields.u32();
  std::uint64_t directory_end = end_record;
  // A zip64 archive (over 65535 members or 4 GiB) puts a locator just before the end record.
  if (end_record >= kZip64LocatorSize) {
    char locator[kZip64LocatorSize];
    read_at(end_record - kZip64LocatorSize, locator, sizeof locator);
    FieldReader located(locator, sizeof locator);
    if (located.u32() == kZip64LocatorSignature) {
      located.skip(4);
      std::uint64_t zip64_end = located.u64();
      char record[kZip64EndSize];
      read_at(zip64_end, record, sizeof record);
      FieldReader zip64(record, sizeof record);
      if (zip64.u32() != kZip64EndSignature) throw Refused("its zip64 end of central directory is malformed");
      zip64.skip(12);  // record size, versions
      disk = zip64.u32(), directory_disk = zip64.u32();
      entries_here = zip64.u64(), entries = zip64.u64();
      directory_size = zip64.u64(), directory_offset = zip64.u64();
      directory_end = zip64_end;
    }
  }
  if (disk != 0 || directory_disk != 0 || entries_here != entries) {
    throw Refused("it is a split (multi-disk) zip archive");
  }
  if (directory_size > kMaxCentralDirectoryBytes || directory_offset > directory_end ||
      directory_size > directory_end - directory_offset) {
    throw Refused("its zip central directory lies outside the file (truncated, or damaged)");
  }
  std::string directory(static_cast<std::size_t>(directory_size), '\0');
  read_at(directory_offset, directory.data(), directory.size());
  FieldReader headers(directory.data(), directory.size());
  // Each header is at least 46 bytes: a count the directory cannot hold is refused before reserving memory.
  if (entries > directory.size() / kCentralHeaderSize) throw Refused("its zip central directory is malformed");
  members_.reserve(static_cast<std::size_t>(entries));
  for (std::uint64_t i = 0; i < entries; ++i) members_.push_back(read_central_header(headers));
}

// The data follows the member's local header, whose name and extra field may differ in length from the
// central directory's: read the local header itself, as an extracting reader (miniz, in torch) does.
std::uint64_t ZipArchive::data_offset(const ZipMember& member) const {
  char header[kLocalHeaderSize];
  read_at(member.local_header_offset, header, sizeof header);
  FieldReader fields(header, sizeof header);
  if (fields.u32() != kLocalHeaderSignature) throw Refused("member " + member.name + ": its local header is damaged");
  fields.skip(4);  // version needed, flags
  std::uint16_t method = fields.u16();
  fields.skip(16);  // time, date, CRC-32, sizes (the central directory's are the ones to trust)
  std::uint16_t name_length = fields.u16(), extra_length = fields.u16();
  std::string name(name_length, '\0');
  read_at(member.local_header_offset + kLocalHeaderSize, name.data(), name.size());
  if (name != member.name || method != member.method) {
    throw Refused("member " + member.name + ": its local header disagrees with the central directory");
  }
  std::uint64_t offset = member.local_header_offset + kLocalHeaderSize + name_length + extra_length;
  if (offset > file_size_ || member.compressed_size > file_size_ - offset) {
    throw Refused("member " + member.name + ": its data runs past the end of the file (truncated?)");
  }
  return offset;
}

void ZipArchive::read_member(const ZipMember& member,
                             const std::function<void(const char*, std::size_t)>& consume) const {
  std::uint64_t offset = data_offset(member);
  std::vector<char> chunk(static_cast<std::size_t>(std::min<std::uint64_t>(kChunkBytes, member.compressed_size)));
  for (std::uint64_t left = member.compressed_size; left > 0;) {
    std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(left, chunk.size()));
    read_at(offset, chunk.data(), take);
    consume(chunk.data(), take);
    offset += take, left -= take;
  }
}

std::string ZipArchive::read_small_member(const ZipMember& member) const {
  std::string data;
  data.reserve(static_cast<std::size_t>(member.compressed_size));
  read_member(member, [&data](const char* bytes, std::size_t size) { data.append(bytes, size); });
  return data;
}

}  // namespace qc
