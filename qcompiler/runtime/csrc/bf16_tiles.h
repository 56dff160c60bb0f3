// bfloat16 AMX tiles for qcompiler's low-bit kernels at prefill shapes: a kernel decodes its weights, a panel of up
// to 64 columns and a slice of k at a time, into bfloat16 in the VNNI pairs AMX reads, and oneDNN's brgemm (ATen's
// cpublas::brgemm) multiplies the rows by them on tiles (tdpbf16ps), float32 sums written straight into y.
//
//   y[m, n] = row_scale[m] * sum_k a[m, k] * w[n, k]      (a bfloat16 [M, K], row_scale optional)
//
// The decoded panel is reused by every row of a work item (up to kTileRowChunk rows), so decoding costs about
// 1 / kTileRowChunk of a weight's multiplies; the int4 kernel's VNNI path stays faster below a few dozen rows.
// What it measured against oneDNN's own bfloat16 linear: benchmarks/results/int4_tiles.md.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <immintrin.h>

#include "kernel_common.h"

#include <algorithm>
#include <cstdint>

#define QC_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,fma")))

namespace qc {

// Whether oneDNN runs bfloat16 and int8 brgemm on AMX tiles here: the CPU has AMX-BF16 (CPUID.7.0:EDX bit 22),
// and oneDNN, which asks Linux for the tiles (arch_prctl(ARCH_REQ_XCOMP_PERM)) when it detects them, packs for
// AMX-INT8 (could_pack: neither ONEDNN_MAX_CPU_ISA nor torch.backends.mkldnn turned it off).
inline bool amx_bf16_here() {
  unsigned eax, ebx, ecx, edx;
  __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
  return (edx >> 22 & 1) && at::native::cpublas::could_pack(at::kChar) &&
         at::native::cpublas::could_pack(at::kBFloat16);
}

// Rows from which weight-only kernels take bfloat16 tiles for float rows (benchmarks/bench_int4_tiles.py: at 16 rows
// the int4 VNNI path is 1.4x faster, at 32 the tiles 1.15-1.3x).
constexpr int64_t kBf16MinRows = 32;

// Whether `rows` float rows take the tiles in this process: enough of them, AMX here, ATen's capability AVX-512.
inline bool bf16_tiles_for(int64_t rows) {
  return rows >= kBf16MinRows && path_here() == Path::kVnni && amx_bf16_here();
}

// w0's and w1's 16 floats rounded to bfloat16 as 16 pairs (w0[l], w1[l]): a 64-byte stretch of a decoded row of k
// pairs (16 of its columns).
QC_BF16_TARGET __attribute__((always_inline)) inline __m512i bf16_pairs(__m512 w0, __m512 w1) {
  alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(w1, w0));  // w0's 16, then w1's
  return _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), both);
}

constexpr int64_t kTileCols = 64;       // columns per decoded panel

// 16 columns' int8 weights for 4 k (int32 lane l: column l, byte i: k + i) as bfloat16 (exact) in two decoded rows
// 64 columns wide: pairs (k, k + 1) at out, (k + 2, k + 3) at out + 2 * kTileCols.
QC_BF16_TARGET __attribute__((always_inline)) inline void store_int8_quads(__m512i v, uint16_t* out) {
#pragma GCC unroll 2
  for (int pair = 0; pair < 2; ++pair) {  // bytes 2 pair and 2 pair + 1 of each lane, sign-extended
    const __m512 w0 = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 16 * pair), 24));
    const __m512 w1 = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 16 - 16 * pair), 24));
    _mm512_storeu_si512(out + pair * kTileCols * 2, bf16_pairs(w0, w1));
  }
}

constexpr int64_t kTileRowChunk = 256;  // rows per work item: they share one decoded panel
// Rows per brgemm call: a call has a fixed cost (ATen's kernel lookup, oneDNN's dispatch), so over a short K (MiniLM's
// 384) a call takes the chunk's 256 rows at once (2x faster than 64 at a time); over a longer K, 128 rows measured
// up to 1.1x faster than 64 or 256.
constexpr int64_t kTileRows = 128;
constexpr int64_t kShortK = 1024;
// k per decoded slice: whole up to here (a 64-column slice of 8192 k is 1 MB, in L2). Shorter slices, kept in L1,
// measured slower: each brgemm call's fixed cost, and the sums' reloads, outweigh the closer weights.
constexpr int64_t kTileDepth = 8192;

struct Bf16Tiles {
  const at::BFloat16* a;   // [M, lda]: the rows, each padded (see bf16_rows)
  int64_t lda;
  const float* row_scale;  // [M]; null: 1
  const float* col_scale;  // [N]; null: 1
  float* y;                // [M, N]
  int64_t M, N, K;         // K: even, at most lda
};

// Elements each bfloat16 row is padded with: rows a multiple of 4 KB apart would map a tile's 16 rows onto one set
// of L1 (and C's likewise), which the tile loads thrash.
constexpr int64_t kRowPad = 32;

inline void scale_block(const Bf16Tiles& p, int64_t m0, int64_t m1, int64_t n0, int64_t width) {
  for (int64_t m = m0; m < m1; ++m) {
    const float row = p.row_scale ? p.row_scale[m] : 1.0f;
    float* y = p.y + m * p.N + n0;
    if (p.col_scale)
      for (int64_t l = 0; l < width; ++l) y[l] *= row * p.col_scale[n0 + l];
    else
      for (int64_t l = 0; l < width; ++l) y[l] *= row;
  }
}

// `a` as the tiles' rows ([M, K + kRowPad], the padding zero, so a kernel may run K up to a multiple of 4): float32
// rounded to bfloat16 (to nearest even); int8 a - a_zero[m] exactly (|a - z| <= 255).
inline at::Tensor bf16_rows(const at::Tensor& a, const std::optional<at::Tensor>& a_zero) {
  at::Tensor rows = at::empty({a.size(0), a.size(1) + kRowPad}, a.options().dtype(at::kBFloat16));
  rows.narrow(1, a.size(1), kRowPad).zero_();
  auto view = rows.narrow(1, 0, a.size(1));
  if (!a_zero) view.copy_(a);
  else view.copy_(a.to(at::kFloat).sub(a_zero->reshape({-1, 1})));
  return rows;
}

// Runs the product, work items (kTileRowChunk rows, one panel) ordered chunk by chunk, so a thread keeps a chunk's
// rows in L2 across its panels. decode(panel, k0, kc, out) writes panel `panel`'s weights for k in [k0, k0 + kc) as
// out[(k - k0) / 2][n][2] (bfloat16 bits, n < its width; rows kTileCols pairs apart) and returns the width (columns,
// at most kTileCols). brgemm adds each call's sums into y itself; the row and column scales multiply y's block after.
template <typename Decode>
void bf16_tile_gemm(const Bf16Tiles& p, Decode decode) {
  const int64_t rows_per_call = p.K > kShortK ? kTileRows : kTileRowChunk;
  const int64_t panels = (p.N + kTileCols - 1) / kTileCols, chunks = (p.M + kTileRowChunk - 1) / kTileRowChunk;
  at::parallel_for(0, chunks * panels, 1, [&](int64_t begin, int64_t end) {
    // 64-byte aligned: a tile row that straddles two cache lines loads at half speed (1.8x slower brgemm measured
    // with malloc's 16-byte alignment).
    const at::Tensor slice = at::empty({std::min(kTileDepth, p.K) * kTileCols}, at::TensorOptions().dtype(at::kShort));
    TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(slice.data_ptr()) % 64 == 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t panel = item % panels, m0 = (item / panels) * kTileRowChunk,
                    m1 = std::min(p.M, m0 + kTileRowChunk), n0 = panel * kTileCols;
      int64_t width = 0;
      for (int64_t k0 = 0; k0 < p.K; k0 += kTileDepth) {
        const int64_t kc = std::min(kTileDepth, p.K - k0);
        width = decode(panel, k0, kc, static_cast<uint16_t*>(slice.data_ptr()));
        const auto* b = static_cast<const at::BFloat16*>(slice.data_ptr());
        for (int64_t m = m0; m < m1; m += rows_per_call)
          at::native::cpublas::brgemm(std::min(rows_per_call, m1 - m), width, kc, /*ld_a=*/p.lda, /*ld_b=*/kTileCols,
                                      /*ld_c=*/p.N, /*add_C=*/k0 > 0, p.a + m * p.lda + k0, b, p.y + m * p.N + n0,
                                      /*is_vnni=*/true);
      }
      if (p.row_scale || p.col_scale) scale_block(p, m0, m1, n0, width);
    }
    at::native::cpublas::brgemm_release();  // the thread's tiles, as torch's callers do
  });
}

}  // namespace qc
