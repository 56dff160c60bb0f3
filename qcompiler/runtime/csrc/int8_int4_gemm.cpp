// qcompiler::int8_int4_gemm: int8 activations x int4 weights in groups, exact int32 sums per group.
//
//   y[m, n] = a_scale[m] * ( sum_g ( w_scale[g, n] * sum_{k in g} a[m, k] * q[n, k]
//                                  + w_offset[g, n] * sum_{k in g} a[m, k] )  -  a_zero[m] * w_sums[n] )
//
// for activations x = a_scale * (a - a_zero) (a int8 [M, K]; a_zero optional) and weights
// w = w_scale * q + w_offset (q in [-8, 7], w_offset optional), w_sums[n] = sum_k w[n, k].
// The integer sums run as uint8 u = q + 8 times int8 a (VNNI's u8 x s8 operand order) and take
// 8 * sum_{k in g} a[m, k] off after.
//
// Packed weight: uint8 [N/16][K/8][64] bytes in panels of 4 blocks of 16 rows: within a panel of
// `width` blocks, block j's bytes for k-chunk c lie at ((c * width) + j) * 64, so a panel streams
// as one run. Byte (lane * 4 + i) of a block holds, for row n = 16 * block + lane, u[n, 8c + i] in its
// low nibble and u[n, 8c + 4 + i] in its high nibble: the low (high) nibbles of a block are the
// 16 x 4 byte operand of one VNNI dot product.
//
// Three paths, chosen per call: AVX512-VNNI (vpdpbusd), AVX2 (vpmaddubsw + vpmaddwd; exact here:
// |15 * 128 * 2| fits int16) and plain C++. ATen's CPU capability (ATEN_CPU_CAPABILITY) caps the
// choice, so tests reach every path on any machine.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Problem {
  const int8_t* a;        // [M, K]
  const int32_t* a_sums;  // [M, G]: sum_{k in g} a[m, k]
  const uint8_t* w;       // packed
  const float* w_scale;   // [G, N]
  const float* w_offset;  // [G, N]; null: none
  float* y;               // [M, N], accumulated group by group
  int64_t M, N, K, group;
};

constexpr int kLanes = 16;  // output columns per packed block
constexpr int kChunk = 8;   // k per packed block
constexpr int kPanel = 4;   // blocks per panel

// The packed blocks of the panel holding block nb, and nb's place and the panel's width in blocks.
struct Panel {
  const uint8_t* base;
  int64_t width;
};

inline Panel panel_of(const Problem& p, int64_t first_block) {
  const int64_t blocks = p.N / kLanes, width = std::min<int64_t>(kPanel, blocks - first_block);
  return {p.w + first_block * (p.K / kChunk) * 64, width};
}

// Row m's activations for k-chunk c as two 4-byte words (k = 8c..8c+3 and 8c+4..8c+7), to broadcast.
struct ActivationWords {
  int32_t low, high;
};

inline ActivationWords activation_words(const Problem& p, int64_t m, int64_t c) {
  ActivationWords x;
  const int8_t* a = p.a + m * p.K + c * kChunk;
  std::memcpy(&x.low, a, 4);
  std::memcpy(&x.high, a + 4, 4);
  return x;
}

// sum_{k in g} a[m, k] * q[n, k] from the int32 sum of a * (q + 8) over the group: one row, 16 columns.
inline void epilogue_scalar(const Problem& p, int64_t m, int64_t g, int64_t n0, const int32_t* acc) {
  const int32_t ra = p.a_sums[m * (p.K / p.group) + g];
  float* y = p.y + m * p.N + n0;
  const int64_t gi = g * p.N + n0;
  for (int l = 0; l < kLanes; ++l) {
    float f = p.w_scale[gi + l] * float(acc[l] - 8 * ra);
    if (p.w_offset) f += p.w_offset[gi + l] * float(ra);
    y[l] += f;
  }
}

// ------------------------------------------------------------------ plain C++

void panel_scalar(const Problem& p, int64_t m0, int64_t m1, int64_t first_block) {
  const Panel panel = panel_of(p, first_block);
  int32_t acc[kLanes];
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* a = p.a + m * p.K;
    for (int64_t j = 0; j < panel.width; ++j)
      for (int64_t g = 0; g < p.K / p.group; ++g) {
        std::fill(acc, acc + kLanes, 0);
        for (int64_t c = g * p.group / kChunk; c < (g + 1) * p.group / kChunk; ++c) {
          const uint8_t* b = panel.base + (c * panel.width + j) * 64;
          for (int l = 0; l < kLanes; ++l)
            for (int i = 0; i < 4; ++i) {
              const uint8_t byte = b[l * 4 + i];
              acc[l] += int32_t(a[c * kChunk + i]) * int32_t(byte & 0xF) +
                        int32_t(a[c * kChunk + 4 + i]) * int32_t(byte >> 4);
            }
        }
        epilogue_scalar(p, m, g, (first_block + j) * kLanes, acc);
      }
  }
}

// ------------------------------------------------------------------ AVX2

template <int ROWS>
__attribute__((target("avx2,fma"))) void tile_avx2(const Problem& p, int64_t m0, const Panel& panel, int64_t j,
                                                   int64_t n0) {
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  alignas(32) int32_t acc_out[kLanes];
  for (int64_t g = 0; g < p.K / p.group; ++g) {
    __m256i acc[ROWS][2];
    for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t c = g * p.group / kChunk; c < (g + 1) * p.group / kChunk; ++c) {
      const uint8_t* b = panel.base + (c * panel.width + j) * 64;
      __m256i lo[2], hi[2];
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32 * h));
        lo[h] = _mm256_and_si256(v, low);
        hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      }
      for (int r = 0; r < ROWS; ++r) {
        const ActivationWords x = activation_words(p, m0 + r, c);
        const __m256i x0 = _mm256_set1_epi32(x.low), x1 = _mm256_set1_epi32(x.high);
        for (int h = 0; h < 2; ++h) {  // |15 * 128 * 2| per int16 pair: no saturation
          const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], x0), _mm256_maddubs_epi16(hi[h], x1));
          acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(s, ones));
        }
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(acc_out), acc[r][0]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(acc_out + 8), acc[r][1]);
      epilogue_scalar(p, m0 + r, g, n0, acc_out);
    }
  }
}

__attribute__((target("avx2,fma"))) void panel_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t first_block) {
  const Panel panel = panel_of(p, first_block);
  for (int64_t j = 0; j < panel.width; ++j) {
    const int64_t n0 = (first_block + j) * kLanes;
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) tile_avx2<4>(p, m, panel, j, n0);
    switch (m1 - m) {
      case 3: tile_avx2<3>(p, m, panel, j, n0); break;
      case 2: tile_avx2<2>(p, m, panel, j, n0); break;
      case 1: tile_avx2<1>(p, m, panel, j, n0); break;
      default: break;
    }
  }
}

// ------------------------------------------------------------------ AVX-512 VNNI

#define QC_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

// acc += u8 u x s8 s, four bytes per int32 lane. In asm: GCC copies every accumulator before each
// _mm512_dpbusd_epi32 in the unrolled tiles (a move per product; 1.6x slower tiles).
QC_VNNI_TARGET inline __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
}

// ROWS rows x COLS blocks (from block j of the panel), every group: the int32 sums stay in registers
// within a group; the float results accumulate in y (which stays in L1 across the groups).
template <int ROWS, int COLS>
QC_VNNI_TARGET void tile_vnni(const Problem& p, int64_t m0, const Panel& panel, int64_t j0, int64_t n0) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const int64_t groups = p.K / p.group, stride = panel.width * 64;
  const uint8_t* b = panel.base + j0 * 64;
  for (int64_t g = 0; g < groups; ++g) {
    __m512i acc[ROWS][COLS];
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < COLS; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t c = g * p.group / kChunk; c < (g + 1) * p.group / kChunk; ++c) {
      __m512i lo[COLS], hi[COLS];
      const uint8_t* bc = b + c * stride;
#pragma GCC unroll 4
      for (int j = 0; j < COLS; ++j) {
        const __m512i v = _mm512_loadu_si512(bc + j * 64);
        lo[j] = _mm512_and_si512(v, low);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      }
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r) {
        const ActivationWords x = activation_words(p, m0 + r, c);
        const __m512i x0 = _mm512_set1_epi32(x.low), x1 = _mm512_set1_epi32(x.high);
#pragma GCC unroll 4
        for (int j = 0; j < COLS; ++j) {
          acc[r][j] = dpbusd(acc[r][j], lo[j], x0);
          acc[r][j] = dpbusd(acc[r][j], hi[j], x1);
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const int32_t ra = p.a_sums[(m0 + r) * groups + g];
      const __m512i shift = _mm512_set1_epi32(8 * ra);
      const __m512 sum = _mm512_set1_ps(float(ra));
      float* y = p.y + (m0 + r) * p.N + n0;
#pragma GCC unroll 4
      for (int j = 0; j < COLS; ++j) {
        const int64_t gi = g * p.N + n0 + j * kLanes;
        __m512 f = _mm512_loadu_ps(y + j * kLanes);
        f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], shift)), _mm512_loadu_ps(p.w_scale + gi), f);
        if (p.w_offset) f = _mm512_fmadd_ps(_mm512_loadu_ps(p.w_offset + gi), sum, f);
        _mm512_storeu_ps(y + j * kLanes, f);
      }
    }
  }
}

// Rows [m0, m1) in tiles of ROWS rows x COLS blocks; the last rows in a smaller tile.
template <int ROWS, int COLS>
QC_VNNI_TARGET void rows_vnni(const Problem& p, int64_t m0, int64_t m1, const Panel& panel, int64_t j, int64_t n0) {
  if constexpr (ROWS > 1) {
    if (m1 - m0 < ROWS) return rows_vnni<ROWS - 1, COLS>(p, m0, m1, panel, j, n0);
  }
  for (; m0 + ROWS <= m1; m0 += ROWS) tile_vnni<ROWS, COLS>(p, m0, panel, j, n0);
  if constexpr (ROWS > 1) {
    if (m0 < m1) rows_vnni<ROWS - 1, COLS>(p, m0, m1, panel, j, n0);
  }
}

// Few rows: one tile spans the panel (4 blocks); more rows: tiles of 8 rows x 2 blocks.
QC_VNNI_TARGET void panel_vnni(const Problem& p, int64_t m0, int64_t m1, int64_t first_block) {
  const Panel panel = panel_of(p, first_block);
  const int64_t n0 = first_block * kLanes;
  if (m1 - m0 < 8) {
    switch (panel.width) {
      case 4: return rows_vnni<4, 4>(p, m0, m1, panel, 0, n0);
      case 3: return rows_vnni<4, 3>(p, m0, m1, panel, 0, n0);
      case 2: return rows_vnni<4, 2>(p, m0, m1, panel, 0, n0);
      default: return rows_vnni<4, 1>(p, m0, m1, panel, 0, n0);
    }
  }
  int64_t j = 0;
  for (; j + 2 <= panel.width; j += 2) rows_vnni<8, 2>(p, m0, m1, panel, j, n0 + j * kLanes);
  if (j < panel.width) rows_vnni<8, 1>(p, m0, m1, panel, j, n0 + j * kLanes);
}

// ------------------------------------------------------------------ dispatch

enum class Path { kScalar, kAvx2, kVnni };

Path path_here() {
  // ATen's capability as torch.backends.cpu.get_cpu_capability() names it: "AVX512", "AVX2", "DEFAULT", ...
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512" && __builtin_cpu_supports("avx512vnni") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return Path::kVnni;
  if ((cap == "AVX512" || cap == "AVX2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Path::kAvx2;
  return Path::kScalar;
}

const char* path_name(Path path) {
  switch (path) {
    case Path::kVnni: return "avx512_vnni";
    case Path::kAvx2: return "avx2";
    default: return "scalar";
  }
}

void check_inputs(const at::Tensor& a, const at::Tensor& a_scale, const std::optional<at::Tensor>& a_zero,
                  const at::Tensor& w, const at::Tensor& w_scale, const std::optional<at::Tensor>& w_offset,
                  const std::optional<at::Tensor>& w_sums, int64_t group) {
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kChar, "int8_int4_gemm: a must be int8 [M, K], got ",
              a.scalar_type(), " ", a.sizes());
  TORCH_CHECK(w_scale.dim() == 2, "int8_int4_gemm: w_scale must be float32 [K / group, N], got ", w_scale.sizes());
  const int64_t M = a.size(0), K = a.size(1), N = w_scale.size(1);
  TORCH_CHECK(group > 0 && group % kChunk == 0 && K % group == 0, "int8_int4_gemm: group ", group,
              " must be a multiple of 8 dividing K = ", K);
  TORCH_CHECK(N % kLanes == 0, "int8_int4_gemm: N = ", N, " must be a multiple of 16");
  TORCH_CHECK(w.scalar_type() == at::kByte && w.numel() == N * K / 2, "int8_int4_gemm: w must be uint8 with N*K/2 = ",
              N * K / 2, " bytes, got ", w.scalar_type(), " ", w.sizes());
  TORCH_CHECK(a_scale.scalar_type() == at::kFloat && a_scale.numel() == M,
              "int8_int4_gemm: a_scale must be float32 with M = ", M, " elements");
  TORCH_CHECK(!a_zero || (a_zero->scalar_type() == at::kFloat && a_zero->numel() == M),
              "int8_int4_gemm: a_zero must be float32 with M = ", M, " elements");
  TORCH_CHECK(!a_zero || w_sums, "int8_int4_gemm: an a_zero needs w_sums");
  TORCH_CHECK(!w_sums || (w_sums->scalar_type() == at::kFloat && w_sums->numel() == N),
              "int8_int4_gemm: w_sums must be float32 with N = ", N, " elements");
  const int64_t G = K / group;
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.size(0) == G, "int8_int4_gemm: w_scale must be float32 [",
              G, ", ", N, "]");
  TORCH_CHECK(!w_offset || (w_offset->scalar_type() == at::kFloat && w_offset->numel() == G * N),
              "int8_int4_gemm: w_offset must be float32 [", G, ", ", N, "]");
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

at::Tensor int8_int4_gemm(const at::Tensor& a_in, const at::Tensor& a_scale, const std::optional<at::Tensor>& a_zero,
                          const at::Tensor& w_in, const at::Tensor& w_scale_in,
                          const std::optional<at::Tensor>& w_offset_in, const std::optional<at::Tensor>& w_sums,
                          int64_t group) {
  check_inputs(a_in, a_scale, a_zero, w_in, w_scale_in, w_offset_in, w_sums, group);
  const at::Tensor a = a_in.contiguous(), w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  const std::optional<at::Tensor> w_offset = contiguous(w_offset_in);
  const int64_t M = a.size(0), K = a.size(1), N = w_scale.size(1), G = K / group;
  at::Tensor y = at::zeros({M, N}, a.options().dtype(at::kFloat));
  const at::Tensor a_sums = a.view({M, G, group}).sum(-1, /*keepdim=*/false, at::kInt).contiguous();
  const Problem p{a.data_ptr<int8_t>(), a_sums.data_ptr<int32_t>(), w.data_ptr<uint8_t>(), w_scale.data_ptr<float>(),
                  w_offset ? w_offset->data_ptr<float>() : nullptr, y.data_ptr<float>(), M, N, K, group};
  const Path path = path_here();
  // Work items: (up to 64 rows, one panel of 64 columns); a panel's weights stay in cache across its rows.
  const int64_t panels = (N / kLanes + kPanel - 1) / kPanel, row_chunk = 64;
  const int64_t row_items = (M + row_chunk - 1) / row_chunk;
  at::parallel_for(0, row_items * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t m0 = (item / panels) * row_chunk, m1 = std::min(M, m0 + row_chunk);
      const int64_t first_block = (item % panels) * kPanel;
      if (path == Path::kVnni) panel_vnni(p, m0, m1, first_block);
      else if (path == Path::kAvx2) panel_avx2(p, m0, m1, first_block);
      else panel_scalar(p, m0, m1, first_block);
    }
  });
  if (a_zero) y.addr_(a_zero->reshape({M}), w_sums->reshape({N}), /*beta=*/1, /*alpha=*/-1);  // in place
  return y.mul_(a_scale.reshape({M, 1}));
}

std::string int8_int4_gemm_path() { return path_name(path_here()); }

}  // namespace

TORCH_LIBRARY_IMPL(qcompiler, CPU, m) { m.impl("int8_int4_gemm", &int8_int4_gemm); }

TORCH_LIBRARY_FRAGMENT(qcompiler_native, m) { m.def("int8_int4_gemm_path() -> str", &int8_int4_gemm_path); }
