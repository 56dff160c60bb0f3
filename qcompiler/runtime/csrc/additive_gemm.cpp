// qcompiler::additive_gemm: float activations x AQLM additive codebooks, the codes decoded inside the GEMM.
//
//   y[m, n] = scale[n] * sum_j sum_c x[m, j*g : (j+1)*g] . codebooks[c, codes[n, j, c]]
//
// x is float32 [M, K] with K = G * g; codebooks float16 [C, E, g]; scale float32 [N]. Codes are uint8 for codebooks
// of at most 256 vectors, or int16 holding 16-bit codes (read as code & 0xFFFF), in panels of 32 rows:
// [ceil(N / 32), G, C, 32], so one group's and codebook's codes of a panel's rows lie together (rows past N are
// padding, computed and dropped).
//
// Paths, by the codes' width and the rows (ATEN_CPU_CAPABILITY caps the instruction set, so tests reach each):
// - lookup (uint8 codes, M < kFewRows): per activation row a float32 table of x_j . codebooks[c, e] for every
//   group j, codebook c and vector e (one at::mm, [G, g] x [g, C * E]), then each output the sum of its G * C
//   table entries: a panel's 32 rows at a time with vgatherdps (AVX-512, AVX2) or plain C++. Groups are taken
//   kGroupBlock at a time so their tables (16 KB for two codebooks of 256) stay in L1.
// - fused (g == 8, 16-bit codes, M < kFewRows): each codeword read (16 bytes of float16), widened (F16C) and
//   multiplied into the activation row, 8 weight rows at a time: no table (65536 vectors would make it 256 KB
//   a group).
// - tiles (AMX, from qc::kBf16MinRows rows, K a multiple of 16): 64 weight rows decoded to float32, rounded to
//   bfloat16 in the pairs AMX reads, multiplied on AMX tiles (bf16_tiles.h), the rows rounded to bfloat16 too.
// - decode (every other case, and from kFewRows rows): two panels of weight rows decoded to float32 and
//   multiplied by at::mm, per work item.
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include "bf16_tiles.h"
#include "kernel_common.h"
#include "ops.h"

#include <cstdint>
#include <vector>

namespace {

using qc::Path;

constexpr int64_t kPanel = 32;       // rows per panel of codes
constexpr int64_t kFewRows = 8;      // from this many activation rows, the decode path
constexpr int64_t kGroupBlock = 8;   // lookup path: groups whose tables a panel's sweep reads
constexpr int64_t kFusedRows = 8;    // fused path: weight rows whose sums stay in registers
constexpr int64_t kDecodePanels = 2; // decode path: panels per at::mm

struct Problem {
  const float* x;      // [M, K]
  const void* codes;   // [panels, G, C, 32], uint8 or int16
  const at::Half* cb;  // [C, E, g]
  const float* scale;  // [N]
  float* y;            // [M, N]
  int64_t M, N, K, G, C, E, g;
  bool wide;           // int16 codes
};

// The code of row r of panel `panel` for group j and codebook c.
inline int64_t code(const Problem& p, int64_t panel, int64_t j, int64_t c, int64_t r) {
  const int64_t i = ((panel * p.G + j) * p.C + c) * kPanel + r;
  return p.wide ? int64_t(static_cast<const uint16_t*>(p.codes)[i]) : int64_t(static_cast<const uint8_t*>(p.codes)[i]);
}

inline const uint8_t* codes8(const Problem& p, int64_t panel, int64_t j, int64_t c) {
  return static_cast<const uint8_t*>(p.codes) + ((panel * p.G + j) * p.C + c) * kPanel;
}

// --- lookup: float tables [M, G, C, E]; each output the sum of its G * C entries ---------------------------

inline const float* table_of(const Problem& p, const float* lut, int64_t m, int64_t j, int64_t c) {
  return lut + ((m * p.G + j) * p.C + c) * p.E;
}

// Groups jb..je of one panel's rows, added into acc[32].
void lookup_panel_scalar(const Problem& p, const float* lut, int64_t m, int64_t panel, int64_t jb, int64_t je,
                         float* acc) {
  for (int64_t j = jb; j < je; ++j)
    for (int64_t c = 0; c < p.C; ++c) {
      const uint8_t* at = codes8(p, panel, j, c);
      const float* table = table_of(p, lut, m, j, c);
      for (int64_t r = 0; r < kPanel; ++r) acc[r] += table[at[r]];
    }
}

__attribute__((target("avx2,fma"))) void lookup_panel_avx2(const Problem& p, const float* lut, int64_t m,
                                                           int64_t panel, int64_t jb, int64_t je, float* acc) {
  for (int64_t half = 0; half < kPanel; half += 16) {  // two gathers in flight: 8 rows each
    __m256 s0 = _mm256_loadu_ps(acc + half), s1 = _mm256_loadu_ps(acc + half + 8);
    for (int64_t j = jb; j < je; ++j)
      for (int64_t c = 0; c < p.C; ++c) {
        const __m128i both = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes8(p, panel, j, c) + half));
        const float* table = table_of(p, lut, m, j, c);
        s0 = _mm256_add_ps(s0, _mm256_i32gather_ps(table, _mm256_cvtepu8_epi32(both), 4));
        s1 = _mm256_add_ps(s1, _mm256_i32gather_ps(table, _mm256_cvtepu8_epi32(_mm_srli_si128(both, 8)), 4));
      }
    _mm256_storeu_ps(acc + half, s0);
    _mm256_storeu_ps(acc + half + 8, s1);
  }
}

__attribute__((target("avx512f"))) void lookup_panel_avx512(const Problem& p, const float* lut, int64_t m,
                                                             int64_t panel, int64_t jb, int64_t je, float* acc) {
  __m512 s0 = _mm512_loadu_ps(acc), s1 = _mm512_loadu_ps(acc + 16);  // the panel's 32 rows: two gathers in flight
  for (int64_t j = jb; j < je; ++j)
    for (int64_t c = 0; c < p.C; ++c) {
      const uint8_t* at = codes8(p, panel, j, c);
      const float* table = table_of(p, lut, m, j, c);
      const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at)));
      const __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at + 16)));
      s0 = _mm512_add_ps(s0, _mm512_i32gather_ps(i0, table, 4));
      s1 = _mm512_add_ps(s1, _mm512_i32gather_ps(i1, table, 4));
    }
  _mm512_storeu_ps(acc, s0);
  _mm512_storeu_ps(acc + 16, s1);
}

void lookup(const Problem& p, Path path) {
  // tables[m, j, c, e] = x[m, j*g : (j+1)*g] . codebooks[c, e]
  const at::Tensor x = at::from_blob(const_cast<float*>(p.x), {p.M * p.G, p.g}, at::kFloat);
  const at::Tensor cb = at::from_blob(const_cast<at::Half*>(p.cb), {p.C * p.E, p.g}, at::kHalf).to(at::kFloat);
  const at::Tensor tables = at::mm(x, cb.t()).contiguous();
  const float* lut = tables.data_ptr<float>();
  at::parallel_for(0, (p.N + kPanel - 1) / kPanel, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc((end - begin) * kPanel);  // the range's sums: each block of groups swept over all of it
    for (int64_t m = 0; m < p.M; ++m) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t jb = 0; jb < p.G; jb += kGroupBlock) {
        const int64_t je = std::min(p.G, jb + kGroupBlock);
        for (int64_t panel = begin; panel < end; ++panel) {
          float* sums = acc.data() + (panel - begin) * kPanel;
          if (path == Path::kVnni) lookup_panel_avx512(p, lut, m, panel, jb, je, sums);
          else if (path == Path::kAvx2) lookup_panel_avx2(p, lut, m, panel, jb, je, sums);
          else lookup_panel_scalar(p, lut, m, panel, jb, je, sums);
        }
      }
      for (int64_t n = begin * kPanel; n < std::min(p.N, end * kPanel); ++n)
        p.y[m * p.N + n] = acc[n - begin * kPanel] * p.scale[n];
    }
  });
}

// --- one weight row (unscaled) from its codes ------------------------------------------------------------

// Any group size, the codebooks in float32 [C, E, g].
void decode_row_scalar(const Problem& p, const float* cb, int64_t panel, int64_t r, float* w) {
  for (int64_t j = 0; j < p.G; ++j) {
    float* out = w + j * p.g;
    std::fill(out, out + p.g, 0.f);
    for (int64_t c = 0; c < p.C; ++c) {
      const float* v = cb + (c * p.E + code(p, panel, j, c, r)) * p.g;
      for (int64_t t = 0; t < p.g; ++t) out[t] += v[t];
    }
  }
}

// Groups of 8: the sum of a group's codewords, read as float16 and widened (F16C).
__attribute__((target("avx2,fma,f16c"))) inline __m256 codeword8(const Problem& p, int64_t panel, int64_t j,
                                                                  int64_t r) {
  __m256 w = _mm256_setzero_ps();
  for (int64_t c = 0; c < p.C; ++c) {
    const at::Half* v = p.cb + (c * p.E + code(p, panel, j, c, r)) * 8;
    w = _mm256_add_ps(w, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))));
  }
  return w;
}

__attribute__((target("avx2,fma,f16c"))) void decode_row8_avx2(const Problem& p, int64_t panel, int64_t r, float* w) {
  for (int64_t j = 0; j < p.G; ++j) _mm256_storeu_ps(w + j * 8, codeword8(p, panel, j, r));
}

// --- fused: groups of 8, each codeword widened and multiplied into the activation row -------------------------

__attribute__((target("avx2,fma,f16c"))) inline float sum8(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

// Rows r0..r0+7 of a panel for every activation row: each codeword widened once.
__attribute__((target("avx2,fma,f16c"))) void fused_rows_avx2(const Problem& p, int64_t panel, int64_t r0,
                                                              float* out) {
  __m256 acc[kFewRows][kFusedRows];
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t r = 0; r < kFusedRows; ++r) acc[m][r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < p.G; ++j) {
    __m256 w[kFusedRows];
    for (int64_t r = 0; r < kFusedRows; ++r) w[r] = codeword8(p, panel, j, r0 + r);
    for (int64_t m = 0; m < p.M; ++m) {
      const __m256 xj = _mm256_loadu_ps(p.x + m * p.K + j * 8);
      for (int64_t r = 0; r < kFusedRows; ++r) acc[m][r] = _mm256_fmadd_ps(w[r], xj, acc[m][r]);
    }
  }
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t r = 0; r < kFusedRows; ++r) out[m * kFusedRows + r] = sum8(acc[m][r]);
}

void fused_rows_scalar(const Problem& p, const float* cb, int64_t panel, int64_t r0, float* out) {
  std::vector<float> w(p.K);
  for (int64_t r = 0; r < kFusedRows; ++r) {
    decode_row_scalar(p, cb, panel, r0 + r, w.data());
    for (int64_t m = 0; m < p.M; ++m) {
      float s = 0.f;
      for (int64_t k = 0; k < p.K; ++k) s += p.x[m * p.K + k] * w[k];
      out[m * kFusedRows + r] = s;
    }
  }
}

void fused(const Problem& p, Path path) {
  const at::Tensor cb_t = path == Path::kScalar ? at::from_blob(const_cast<at::Half*>(p.cb), {p.C, p.E, p.g},
                                                                at::kHalf).to(at::kFloat) : at::Tensor();
  at::parallel_for(0, (p.N + kPanel - 1) / kPanel, 1, [&](int64_t begin, int64_t end) {
    float out[kFewRows * kFusedRows];
    for (int64_t panel = begin; panel < end; ++panel)
      for (int64_t r0 = 0; r0 < kPanel && panel * kPanel + r0 < p.N; r0 += kFusedRows) {
        if (path == Path::kScalar) fused_rows_scalar(p, cb_t.data_ptr<float>(), panel, r0, out);
        else fused_rows_avx2(p, panel, r0, out);
        for (int64_t m = 0; m < p.M; ++m)
          for (int64_t r = 0, n = panel * kPanel + r0; r < kFusedRows && n < p.N; ++r, ++n)
            p.y[m * p.N + n] = out[m * kFusedRows + r] * p.scale[n];
      }
  });
}

// --- decode: panels of weight rows to float32, then at::mm -----------------------------------------------

void decode(const Problem& p, Path path) {
  const bool widen8 = path != Path::kScalar && p.g == 8;
  const at::Tensor cb_t = widen8 ? at::Tensor() : at::from_blob(const_cast<at::Half*>(p.cb), {p.C, p.E, p.g},
                                                                at::kHalf).to(at::kFloat);
  const at::Tensor x = at::from_blob(const_cast<float*>(p.x), {p.M, p.K}, at::kFloat);
  const int64_t panels = (p.N + kPanel - 1) / kPanel;
  at::parallel_for(0, (panels + kDecodePanels - 1) / kDecodePanels, 1, [&](int64_t begin, int64_t end) {
    at::Tensor block = at::empty({kDecodePanels * kPanel, p.K}, at::kFloat);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n0 = item * kDecodePanels * kPanel, rows = std::min(kDecodePanels * kPanel, p.N - n0);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t panel = (n0 + i) / kPanel, r = (n0 + i) % kPanel;
        float* w = block.data_ptr<float>() + i * p.K;
        if (widen8) decode_row8_avx2(p, panel, r, w);
        else decode_row_scalar(p, cb_t.data_ptr<float>(), panel, r, w);
      }
      const at::Tensor part = at::mm(x, block.narrow(0, 0, rows).t());  // [M, rows]
      const float* src = part.data_ptr<float>();
      for (int64_t m = 0; m < p.M; ++m)
        for (int64_t i = 0; i < rows; ++i) p.y[m * p.N + n0 + i] = src[m * rows + i] * p.scale[n0 + i];
    }
  });
}

// --- tiles (AMX, from qc::kBf16MinRows rows): 64 weight rows decoded to bfloat16, multiplied on AMX tiles ---------

// Weight rows n0.. (64, or to N) for k in [k0, k0 + kc), unscaled, as bfloat16 pairs out[(k - k0) / 2][i][2]: each row
// decoded to float32 (as the decode path does), rounded 16 at a time, its 8 pairs stored down the columns.
QC_BF16_TARGET int64_t decode_rows_bf16(const Problem& p, const float* cb, bool widen8, int64_t tile_panel, int64_t k0,
                                        int64_t kc, uint16_t* out) {
  const int64_t n0 = tile_panel * qc::kTileCols, rows = std::min(qc::kTileCols, p.N - n0);
  thread_local std::vector<float> w;  // one decoded row
  w.resize(p.K);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t panel = (n0 + i) / kPanel, r = (n0 + i) % kPanel;
    if (widen8) decode_row8_avx2(p, panel, r, w.data());
    else decode_row_scalar(p, cb, panel, r, w.data());
    uint32_t* column = reinterpret_cast<uint32_t*>(out) + i;  // pair (k, k + 1) of row i: one 32-bit word
    for (int64_t k = k0; k < k0 + kc; k += 16) {
      alignas(32) uint32_t pairs[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(pairs),
                         reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(w.data() + k))));
      for (int t = 0; t < 8; ++t) column[((k - k0) / 2 + t) * qc::kTileCols] = pairs[t];
    }
  }
  return rows;
}

void tiles(const Problem& p, const at::Tensor& a, Path path) {
  const bool widen8 = path != Path::kScalar && p.g == 8;
  const at::Tensor cb_t = widen8 ? at::Tensor() : at::from_blob(const_cast<at::Half*>(p.cb), {p.C, p.E, p.g},
                                                                at::kHalf).to(at::kFloat);
  const float* cb = widen8 ? nullptr : cb_t.data_ptr<float>();
  const at::Tensor rows = qc::bf16_rows(a, std::nullopt);
  const qc::Bf16Tiles t{rows.data_ptr<at::BFloat16>(), rows.size(1), nullptr, p.scale, p.y, p.M, p.N, p.K};
  qc::bf16_tile_gemm(t, [&](int64_t panel, int64_t k0, int64_t kc, uint16_t* out) {
    return decode_rows_bf16(p, cb, widen8, panel, k0, kc, out);
  });
}

void check_inputs(const at::Tensor& a, const at::Tensor& codes, const at::Tensor& codebooks, const at::Tensor& scale) {
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kFloat, "additive_gemm: a must be float32 [M, K], got ",
              a.scalar_type(), " ", a.sizes());
  TORCH_CHECK(codebooks.dim() == 3 && codebooks.scalar_type() == at::kHalf,
              "additive_gemm: codebooks must be float16 [C, E, g], got ", codebooks.scalar_type(), " ",
              codebooks.sizes());
  const int64_t C = codebooks.size(0), E = codebooks.size(1), g = codebooks.size(2), N = scale.numel();
  TORCH_CHECK(codes.dim() == 4 && codes.size(2) == C && codes.size(3) == kPanel &&
                  codes.size(0) == (N + kPanel - 1) / kPanel &&
                  (codes.scalar_type() == at::kByte && E <= 256 || codes.scalar_type() == at::kShort && E <= 65536),
              "additive_gemm: codes must be [ceil(N / 32), G, C, 32] with N = ", N, ", C = ", C, ", uint8 for at "
              "most 256 vectors a codebook or int16 for at most 65536 (E = ", E, "), got ", codes.scalar_type(), " ",
              codes.sizes());
  TORCH_CHECK(codes.size(1) * g == a.size(1), "additive_gemm: G * g = ", codes.size(1), " * ", g,
              " must equal K = ", a.size(1));
  TORCH_CHECK(scale.scalar_type() == at::kFloat, "additive_gemm: scale must be float32 [N], got ",
              scale.scalar_type());
}

}  // namespace

namespace qc {

at::Tensor additive_gemm(const at::Tensor& a_in, const at::Tensor& codes_in, const at::Tensor& codebooks_in,
                         const at::Tensor& scale_in) {
  check_inputs(a_in, codes_in, codebooks_in, scale_in);
  const at::Tensor a = a_in.contiguous(), codes = codes_in.contiguous(), codebooks = codebooks_in.contiguous(),
                   scale = scale_in.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = scale.numel();
  at::Tensor y = at::empty({M, N}, a.options());
  if (M == 0 || N == 0) return y;
  const bool wide = codes.scalar_type() == at::kShort;
  const Problem p{a.data_ptr<float>(), codes.data_ptr(), codebooks.data_ptr<at::Half>(), scale.data_ptr<float>(),
                  y.data_ptr<float>(), M, N, K, codes.size(1), codebooks.size(0), codebooks.size(1),
                  codebooks.size(2), wide};
  const Path path = qc::path_here();
  if (M < kFewRows && !wide) lookup(p, path);
  else if (M < kFewRows && p.g == 8) fused(p, path);
  else if (qc::bf16_tiles_for(M) && K % 16 == 0) tiles(p, a, path);
  else decode(p, path);
  return y;
}

}  // namespace qc
