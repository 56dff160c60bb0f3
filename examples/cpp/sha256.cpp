// SHA-256 written from the FIPS 180-4 description: our own code, so the runner needs no crypto library.
// Two implementations of the block function: portable C++, and one with the x86 SHA extensions (SHA-NI), compiled
// into every x86 build and chosen at run time where cpuid reports them, so one binary runs on any CPU.
#include "sha256.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#define QC_SHA256_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace qc {
namespace {

using State = std::array<std::uint32_t, 8>;
constexpr std::size_t kBlockBytes = 64;

constexpr std::array<std::uint32_t, 64> kRoundConstants = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

constexpr State kInitialState = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

// --- portable ---

std::uint32_t rotate_right(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

std::uint32_t load_big_endian(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

void compress_block_portable(State& state, const std::uint8_t* block) {
  std::array<std::uint32_t, 64> w{};
  for (int i = 0; i < 16; ++i) w[i] = load_big_endian(block + 4 * i);
  for (int i = 16; i < 64; ++i) {
    std::uint32_t s0 = rotate_right(w[i - 15], 7) ^ rotate_right(w[i - 15], 18) ^ (w[i - 15] >> 3);
    std::uint32_t s1 = rotate_right(w[i - 2], 17) ^ rotate_right(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  std::uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
  std::uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
  for (int i = 0; i < 64; ++i) {
    std::uint32_t s1 = rotate_right(e, 6) ^ rotate_right(e, 11) ^ rotate_right(e, 25);
    std::uint32_t choose = (e & f) ^ (~e & g);
    std::uint32_t t1 = h + s1 + choose + kRoundConstants[i] + w[i];
    std::uint32_t s0 = rotate_right(a, 2) ^ rotate_right(a, 13) ^ rotate_right(a, 22);
    std::uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
    std::uint32_t t2 = s0 + majority;
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state[0] += a, state[1] += b, state[2] += c, state[3] += d;
  state[4] += e, state[5] += f, state[6] += g, state[7] += h;
}

void compress_portable(State& state, const std::uint8_t* blocks, std::size_t count) {
  for (; count > 0; --count, blocks += kBlockBytes) compress_block_portable(state, blocks);
}

// --- SHA-NI ---

#ifdef QC_SHA256_X86
// Compiled for these extensions whatever flags the build passes (no -msha), and run only where cpuid reports them.
// Every function using their intrinsics needs the attribute: without it the intrinsics cannot be inlined into it.
#define QC_SHA_NI_TARGET __attribute__((target("sha,sse4.1,ssse3")))

// Leaf 1: SSSE3 is ECX bit 9, SSE4.1 ECX bit 19; leaf 7 subleaf 0: SHA is EBX bit 29. Both __get_cpuid calls
// return 0 where the CPU lacks the leaf.
bool cpu_has_sha_ni() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  bool ssse3_and_sse41 = ((ecx >> 9) & 1) && ((ecx >> 19) & 1);
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  return ssse3_and_sse41 && ((ebx >> 29) & 1);
}

QC_SHA_NI_TARGET __m128i load_128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// Four message words, big-endian in the input: the bytes of each 32-bit lane reversed.
QC_SHA_NI_TARGET __m128i load_words(const std::uint8_t* p) {
  const __m128i reverse_each_word = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
  return _mm_shuffle_epi8(load_128(p), reverse_each_word);
}

// _mm_sha256rnds2_epu32 keeps the state in two registers, (A, B, E, F) and (C, D, G, H), A and C in the highest
// lanes; the state array is a..h from the lowest lane up. (Lanes are listed lowest first below.)
QC_SHA_NI_TARGET void load_state(const State& state, __m128i& abef, __m128i& cdgh) {
  __m128i badc = _mm_shuffle_epi32(load_128(state.data()), 0xb1);
  __m128i hgfe = _mm_shuffle_epi32(load_128(state.data() + 4), 0x1b);
  abef = _mm_alignr_epi8(badc, hgfe, 8);     // f e b a
  cdgh = _mm_blend_epi16(hgfe, badc, 0xf0);  // h g d c
}

QC_SHA_NI_TARGET void store_state(__m128i abef, __m128i cdgh, State& state) {
  __m128i abef_low_first = _mm_shuffle_epi32(abef, 0x1b);  // a b e f
  __m128i ghcd = _mm_shuffle_epi32(cdgh, 0xb1);            // g h c d
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state.data()), _mm_blend_epi16(abef_low_first, ghcd, 0xf0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state.data() + 4), _mm_alignr_epi8(ghcd, abef_low_first, 8));
}

// Rounds 4 * group to 4 * group + 3, on their message words. Each _mm_sha256rnds2_epu32 does two rounds, taking
// the words (plus the round constants) from the low two lanes; it returns the new (A, B, E, F), and the (A, B, E, F)
// it was given is then (C, D, G, H): the two registers swap roles twice, ending as they began.
QC_SHA_NI_TARGET void four_rounds(__m128i& abef, __m128i& cdgh, __m128i words, int group) {
  __m128i words_and_constants = _mm_add_epi32(words, load_128(kRoundConstants.data() + 4 * group));
  cdgh = _mm_sha256rnds2_epu32(cdgh, abef, words_and_constants);
  abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(words_and_constants, 0x0e));  // high words moved low
}

// Message words W[t..t+3] from the sixteen before them (w0 = W[t-16..t-13], ..., w3 = W[t-4..t-1]):
// msg1 gives W[t-16+i] + sigma0(W[t-15+i]), to which W[t-7+i] is added, and msg2 adds sigma1(W[t-2+i]) (for the
// last two, of words it has just computed).
QC_SHA_NI_TARGET __m128i next_words(__m128i w0, __m128i w1, __m128i w2, __m128i w3) {
  __m128i seven_back = _mm_alignr_epi8(w3, w2, 4);  // W[t-7..t-4]
  return _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), seven_back), w3);
}

// All the blocks in one call, so that the state is rearranged into registers once, not once a block.
QC_SHA_NI_TARGET void compress_sha_ni(State& state, const std::uint8_t* blocks, std::size_t count) {
  __m128i abef, cdgh;
  load_state(state, abef, cdgh);
  for (; count > 0; --count, blocks += kBlockBytes) {
    const __m128i abef_before = abef, cdgh_before = cdgh;
    // The sixteen words in flight, four to a register; from group 4 on, each group's words replace those of
    // group - 4, the oldest of the sixteen they are computed from.
    __m128i words[4] = {load_words(blocks), load_words(blocks + 16), load_words(blocks + 32),
                        load_words(blocks + 48)};
    for (int group = 0; group < 16; ++group) {
      __m128i& current = words[group % 4];
      if (group >= 4) {
        current = next_words(current, words[(group + 1) % 4], words[(group + 2) % 4], words[(group + 3) % 4]);
      }
      four_rounds(abef, cdgh, current, group);
    }
    abef = _mm_add_epi32(abef, abef_before);
    cdgh = _mm_add_epi32(cdgh, cdgh_before);
  }
  store_state(abef, cdgh, state);
}
#endif

// What automatic means in this process, decided on first use.
Sha256Impl automatic_impl() {
  static const Sha256Impl impl = [] {
    const char* forced = std::getenv("QC_RUN_SHA256");
    bool portable = forced != nullptr && std::string_view(forced) == "portable";
    return !portable && Sha256::sha_ni_available() ? Sha256Impl::sha_ni : Sha256Impl::portable;
  }();
  return impl;
}

Sha256Impl resolve(Sha256Impl asked) {
  if (asked == Sha256Impl::automatic) return automatic_impl();
  if (asked == Sha256Impl::sha_ni && !Sha256::sha_ni_available()) {
    throw std::runtime_error("SHA-256: SHA-NI asked for, but this CPU or build lacks the x86 SHA extensions");
  }
  return asked;
}

}  // namespace

Sha256::Sha256(Sha256Impl impl) : impl_(resolve(impl)), state_(kInitialState) {}

bool Sha256::sha_ni_available() {
#ifdef QC_SHA256_X86
  static const bool available = cpu_has_sha_ni();
  return available;
#else
  return false;
#endif
}

void Sha256::compress(const std::uint8_t* blocks, std::size_t count) {
#ifdef QC_SHA256_X86
  if (impl_ == Sha256Impl::sha_ni) return compress_sha_ni(state_, blocks, count);
#endif
  compress_portable(state_, blocks, count);
}

void Sha256::update(const void* data, std::size_t size) {
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  total_bytes_ += size;
  // Top up a partly filled block first, then hash whole blocks straight from the input.
  if (block_used_ > 0) {
    std::size_t take = std::min(size, block_.size() - block_used_);
    std::memcpy(block_.data() + block_used_, bytes, take);
    block_used_ += take, bytes += take, size -= take;
    if (block_used_ < block_.size()) return;
    compress(block_.data(), 1);
    block_used_ = 0;
  }
  std::size_t whole_blocks = size / kBlockBytes;
  compress(bytes, whole_blocks);
  bytes += whole_blocks * kBlockBytes, size -= whole_blocks * kBlockBytes;
  std::memcpy(block_.data(), bytes, size);
  block_used_ = size;
}

std::string Sha256::hex_digest() {
  // Padding: a 1 bit, zeros up to 56 bytes into a block, then the message length in bits (big-endian).
  std::uint64_t length_bits = total_bytes_ * 8;
  const std::uint8_t one_bit = 0x80, zero = 0;
  update(&one_bit, 1);
  while (block_used_ != 56) update(&zero, 1);
  std::uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::uint8_t>(length_bits >> (56 - 8 * i));
  update(length, sizeof length);

  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (std::uint32_t word : state_) {
    for (int shift = 28; shift >= 0; shift -= 4) hex += digits[(word >> shift) & 0xf];
  }
  return hex;
}

std::string sha256_hex(std::string_view data, Sha256Impl impl) {
  Sha256 hasher(impl);
  hasher.update(data.data(), data.size());
  return hasher.hex_digest();
}

}  // namespace qc
