#include "verify.h"

#include <map>
#include <string>
#include <vector>

#include "sha256.h"

namespace qc {
namespace {

constexpr std::size_t kHexDigits = 64;
constexpr const char* kSeparator = "  ";  // sha256sum's: two spaces between the digest and the name

// The folder every member sits under ("<root>/..."): AOTInductor packages have exactly one.
std::string root_folder(const std::vector<ZipMember>& members) {
  if (members.empty()) throw Refused("the archive is empty");
  std::string root = members.front().name.substr(0, members.front().name.find('/'));
  for (const ZipMember& member : members) {
    if (root.empty() || member.name.size() <= root.size() + 1 || member.name.compare(0, root.size(), root) != 0 ||
        member.name[root.size()] != '/') {
      throw Refused("member " + member.name + " is not under the archive's root folder " + root + "/");
    }
  }
  return root;
}

// The name the digest member lists a member by: its path under the root folder.
std::string name_under(const std::string& root, const ZipMember& member) { return member.name.substr(root.size() + 1); }

// Members by their name under the root; a name twice is refused, since an extracting reader may take either.
std::map<std::string, const ZipMember*> members_by_name(const std::vector<ZipMember>& members,
                                                       const std::string& root) {
  std::map<std::string, const ZipMember*> by_name;
  for (const ZipMember& member : members) {
    std::string name = name_under(root, member);
    if (!by_name.emplace(name, &member).second) throw Refused("member " + name + " is in the archive twice");
    // The digests are over the stored bytes, which are what the loader extracts only when nothing is
    // compressed or encrypted; qcompiler writes every member stored.
    if (member.method != 0) throw Refused("member " + name + " is compressed (qcompiler stores members)");
    if (member.flags & 1) throw Refused("member " + name + " is encrypted");
    if (member.size != member.compressed_size) throw Refused("member " + name + ": its sizes disagree");
  }
  return by_name;
}

bool is_lowercase_hex(const std::string& s) {
  return s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// "<64 lowercase hex>  <name>\n" per line, each name once; any order (the format allows sorting by line or name).
std::map<std::string, std::string> parse_digests(const std::string& text) {
  auto malformed = [](std::size_t line, const std::string& why) {
    return Refused("member " + std::string(kDigestMember) + " is malformed (line " + std::to_string(line) + ": " +
                   why + ")");
  };
  std::map<std::string, std::string> digests;
  std::size_t start = 0;
  for (std::size_t line = 1; start < text.size(); ++line) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) throw malformed(line, "no newline at its end");
    std::string entry = text.substr(start, end - start);
    start = end + 1;
    std::string digest = entry.substr(0, kHexDigits);
    if (digest.size() != kHexDigits || !is_lowercase_hex(digest)) throw malformed(line, "not 64 lowercase hex digits");
    if (entry.compare(kHexDigits, 2, kSeparator) != 0 || entry.size() == kHexDigits + 2) {
      throw malformed(line, "not '<sha256>  <member>'");
    }
    if (!digests.emplace(entry.substr(kHexDigits + 2), digest).second) throw malformed(line, "a member named twice");
  }
  return digests;
}

std::string hash_member(const ZipArchive& archive, const ZipMember& member) {
  Sha256 hasher;
  archive.read_member(member, [&hasher](const char* data, std::size_t size) { hasher.update(data, size); });
  return hasher.hex_digest();
}

void check_same_members(const std::map<std::string, const ZipMember*>& present,
                        const std::map<std::string, std::string>& listed) {
  for (const auto& [name, digest] : listed) {
    if (!present.count(name)) {
      throw Refused("member " + name + " is missing (listed in " + kDigestMember + ")");
    }
  }
  for (const auto& [name, member] : present) {
    if (!listed.count(name)) throw Refused("member " + name + " is not listed in " + kDigestMember);
  }
}

}  // namespace

Verified verify_package(const std::string& path) {
  ZipArchive archive(path);
  std::string root = root_folder(archive.members());
  std::map<std::string, const ZipMember*> present = members_by_name(archive.members(), root);
  auto found = present.find(kDigestMember);
  if (found == present.end()) {
    throw Refused("member " + std::string(kDigestMember) + " is missing (not written by qcompiler, or removed)");
  }
  const ZipMember& digest_member = *found->second;
  present.erase(found);
  if (digest_member.size > kMaxDigestMemberBytes) {
    throw Refused("member " + std::string(kDigestMember) + " is " + std::to_string(digest_member.size) +
                  " bytes, more than a digest list (16 MiB at most)");
  }
  std::map<std::string, std::string> listed = parse_digests(archive.read_small_member(digest_member));
  check_same_members(present, listed);
  Verified verified{root, 0, 0};
  // In archive order, so that the file is read from start to end.
  for (const ZipMember& member : archive.members()) {
    if (&member == &digest_member) continue;
    std::string name = name_under(root, member);
    if (hash_member(archive, member) != listed.at(name)) {
      throw Refused("member " + name + " is damaged: its sha256 differs from the one in " + kDigestMember);
    }
    verified.members += 1;
    verified.bytes += member.size;
  }
  return verified;
}

}  // namespace qc
