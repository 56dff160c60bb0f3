// qcompiler::cache_attention: the new tokens' queries attend over the filled prefix of a static KV cache, reading
// only the positions in use, the cache as stored (float32, bfloat16, or int8 with a float32 scale per token).
//
//   q [B, H, R, D] float32: rows r = l * groups + j (token l's j-th query head of kv head h, as capture_lm lays them)
//   k, v [B, H, S, D]; k_scale, v_scale [B, H, S, 1] float32 (int8 caches), start [B] int64
//   out[b, h, r] = softmax_p(scale * q_r . k_p) . v_p over p = 0 .. start[b] + r / groups
//
// Work items are (b, h, a block of rows, a split of the positions): a split reads its positions in chunks of 256;
// per chunk (converted to float32 once where it is bfloat16 or int8) the rows' scores q . k (each K row read once
// for every row of the block), each row's chunk maximum, the exponentials and their V sum, folded into the row's
// running maximum, sum and output (online softmax). Where the
// (b, h, row block) items are too few for the threads (decode: one row block per kv head), the positions are split
// across threads too and the splits' partial (max, sum, output) merge at the end (flash-decoding).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "kernel_common.h"
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kChunk = 256;   // positions scored at a time
constexpr int64_t kRowBlock = 32; // query rows sharing each K and V row read

enum class Store { kF32, kBF16, kInt8 };

struct Problem {
  const float* q;
  const void* k;
  const void* v;
  const float* k_scale;  // [B, H, S] or null
  const float* v_scale;
  Store store;
  const int64_t* start;
  float* out;
  int64_t B, H, R, S, D, groups;
  float scale;
};

// The last position row r of sequence b attends (its token's own).
inline int64_t last_position(const Problem& p, int64_t b, int64_t r) { return p.start[b] + r / p.groups; }

#define QC_INLINE __attribute__((always_inline)) inline

// The arithmetic is plain C++ that the compiler vectorizes for the target of the function it is inlined into
// (attend_avx2 or attend_plain below).

// A chunk of a cache (count values) as float32: the cache itself where it is float32, else converted into `buffer`
// once, for all the rows that read it.
template <Store S>
QC_INLINE const float* as_float(const void* rows, int64_t count, float* buffer) {
  if constexpr (S == Store::kF32) {
    return static_cast<const float*>(rows);
  } else if constexpr (S == Store::kBF16) {
    const uint16_t* in = static_cast<const uint16_t*>(rows);
    for (int64_t i = 0; i < count; ++i) {
      const uint32_t bits = uint32_t(in[i]) << 16;
      std::memcpy(buffer + i, &bits, 4);
    }
    return buffer;
  } else {
    const int8_t* in = static_cast<const int8_t*>(rows);
    for (int64_t i = 0; i < count; ++i) buffer[i] = float(in[i]);
    return buffer;
  }
}

template <Store S>
constexpr int64_t element_bytes() { return S == Store::kF32 ? 4 : S == Store::kBF16 ? 2 : 1; }

// q . k over D, in 8 independent sums (one vector register's lanes)
QC_INLINE float dot(const float* q, const float* k, int64_t D) {
  float acc[8] = {};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int l = 0; l < 8; ++l) acc[l] += q[d + l] * k[d + l];
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; d < D; ++d) sum += q[d] * k[d];
  return sum;
}

// A row block's running softmax: the maximum and sum of each row's exponentials so far, and its output (unnormalized).
struct Running {
  std::vector<float> max, sum, acc;
  Running(int64_t rows, int64_t D)
      : max(rows, -std::numeric_limits<float>::infinity()), sum(rows, 0.0f), acc(rows * D, 0.0f) {}
};

// Rows [r0, r0 + rows) of (b, h) over positions [p0, p1), chunk by chunk, into `run`: per chunk the scores q . k
// (each K row read once for all the block's rows), each row's maximum and exponentials, the running sums rescaled,
// and the exponentials times the chunk's V rows added.
template <Store S>
QC_INLINE void attend(const Problem& p, int64_t b, int64_t h, int64_t r0, int64_t rows, int64_t p0, int64_t p1,
                      Running& run) {
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  const int64_t bh = b * p.H + h, D = p.D, bytes = D * element_bytes<S>();
  const float* q = p.q + (bh * p.R + r0) * D;
  std::vector<float> scores(rows * kChunk), k_rows(S == Store::kF32 ? 0 : kChunk * D), v_rows(k_rows.size());
  for (int64_t c0 = p0; c0 < p1; c0 += kChunk) {
    const int64_t n = std::min(kChunk, p1 - c0);
    const float* k = as_float<S>(static_cast<const char*>(p.k) + (bh * p.S + c0) * bytes, n * D, k_rows.data());
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < rows; ++i) scores[i * kChunk + j] = dot(q + i * D, k + j * D, D);
    bool any = false;
    for (int64_t i = 0; i < rows; ++i) {
      float* row = scores.data() + i * kChunk;
      const int64_t last = last_position(p, b, r0 + i) - c0;  // the row's last position in this chunk
      float top = kNone;
      for (int64_t j = 0; j < n; ++j) {
        const float ks = p.k_scale ? p.k_scale[bh * p.S + c0 + j] : 1.0f;
        row[j] = j <= last ? row[j] * ks * p.scale : kNone;
        top = std::max(top, row[j]);
      }
      if (top == kNone) {  // nothing of this chunk for this row
        std::fill(row, row + n, 0.0f);
        continue;
      }
      any = true;
      const float m = std::max(run.max[i], top), rescale = std::exp(run.max[i] - m);  // 0 where nothing ran yet
      run.max[i] = m;
      float sum = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        const float e = std::exp(row[j] - m);
        sum += e;
        row[j] = p.v_scale ? e * p.v_scale[bh * p.S + c0 + j] : e;  // the weight of v_j as stored
      }
      run.sum[i] = run.sum[i] * rescale + sum;
      if (rescale != 1.0f)
        for (int64_t d = 0; d < D; ++d) run.acc[i * D + d] *= rescale;
    }
    if (!any) continue;
    const float* v = as_float<S>(static_cast<const char*>(p.v) + (bh * p.S + c0) * bytes, n * D, v_rows.data());
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < rows; ++i) {
        const float w = scores[i * kChunk + j];
        if (w == 0.0f) continue;  // a position past the row's own
        float* out = run.acc.data() + i * D;
        for (int64_t d = 0; d < D; ++d) out[d] += w * v[j * D + d];
      }
  }
}

template <Store S>
__attribute__((target("avx2,fma"))) void attend_avx2(const Problem& p, int64_t b, int64_t h, int64_t r0, int64_t rows,
                                                     int64_t p0, int64_t p1, Running& run) {
  attend<S>(p, b, h, r0, rows, p0, p1, run);
}

template <Store S>
void attend_plain(const Problem& p, int64_t b, int64_t h, int64_t r0, int64_t rows, int64_t p0, int64_t p1,
                  Running& run) {
  attend<S>(p, b, h, r0, rows, p0, p1, run);
}

using Attend = void (*)(const Problem&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, Running&);

Attend attend_for(Store s, bool avx2) {
  switch (s) {
    case Store::kF32: return avx2 ? attend_avx2<Store::kF32> : attend_plain<Store::kF32>;
    case Store::kBF16: return avx2 ? attend_avx2<Store::kBF16> : attend_plain<Store::kBF16>;
    default: return avx2 ? attend_avx2<Store::kInt8> : attend_plain<Store::kInt8>;
  }
}

void run(const Problem& p, bool avx2) {
  const Attend attend_rows = attend_for(p.store, avx2);
  const int64_t blocks = (p.R + kRowBlock - 1) / kRowBlock;
  int64_t most = 0;  // positions read by the longest sequence
  for (int64_t b = 0; b < p.B; ++b) most = std::max(most, last_position(p, b, p.R - 1) + 1);
  const int64_t items = p.B * p.H * blocks, threads = at::get_num_threads();
  // split the positions where the row blocks alone leave threads idle, no split smaller than a chunk
  const int64_t splits = items >= 2 * threads ? 1 : std::max<int64_t>(1, std::min((2 * threads + items - 1) / items,
                                                                                    (most + kChunk - 1) / kChunk));
  const int64_t span = ((most + splits - 1) / splits + kChunk - 1) / kChunk * kChunk;  // positions per split
  // partial results per (item, split): max and sum per row, output per row
  std::vector<float> part_max(splits > 1 ? items * splits * kRowBlock : 0);
  std::vector<float> part_sum(part_max.size()), part_acc(part_max.size() * p.D);
  at::parallel_for(0, items * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t item = w / splits, split = w % splits;
      const int64_t bh = item / blocks, b = bh / p.H, h = bh % p.H, r0 = (item % blocks) * kRowBlock;
      const int64_t rows = std::min(kRowBlock, p.R - r0);
      const int64_t limit = last_position(p, b, r0 + rows - 1) + 1;  // the block's positions: [0, limit)
      const int64_t p0 = split * span, p1 = std::min(limit, p0 + span);
      Running state(rows, p.D);
      if (p0 < p1) attend_rows(p, b, h, r0, rows, p0, p1, state);
      if (splits == 1) {
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t d = 0; d < p.D; ++d)
            p.out[(bh * p.R + r0 + i) * p.D + d] = state.acc[i * p.D + d] / state.sum[i];
        continue;
      }
      const int64_t at = w * kRowBlock;
      std::copy(state.max.begin(), state.max.end(), part_max.begin() + at);
      std::copy(state.sum.begin(), state.sum.end(), part_sum.begin() + at);
      std::copy(state.acc.begin(), state.acc.end(), part_acc.begin() + at * p.D);
    }
  });
  if (splits == 1) return;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {  // merge the splits of each row
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / blocks, r0 = (item % blocks) * kRowBlock, rows = std::min(kRowBlock, p.R - r0);
      for (int64_t i = 0; i < rows; ++i) {
        float m = -std::numeric_limits<float>::infinity(), sum = 0.0f;
        for (int64_t s = 0; s < splits; ++s) m = std::max(m, part_max[(item * splits + s) * kRowBlock + i]);
        float* out = p.out + (bh * p.R + r0 + i) * p.D;
        std::fill(out, out + p.D, 0.0f);
        for (int64_t s = 0; s < splits; ++s) {
          const int64_t at = (item * splits + s) * kRowBlock + i;
          if (part_max[at] == -std::numeric_limits<float>::infinity()) continue;  // a split past the row's positions
          const float f = std::exp(part_max[at] - m);
          sum += part_sum[at] * f;
          for (int64_t d = 0; d < p.D; ++d) out[d] += part_acc[at * p.D + d] * f;
        }
        for (int64_t d = 0; d < p.D; ++d) out[d] /= sum;
      }
    }
  });
}

Store store_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Store::kF32;
    case at::kBFloat16: return Store::kBF16;
    default: return Store::kInt8;
  }
}

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& k_scale,
           const std::optional<at::Tensor>& v_scale, const at::Tensor& start, int64_t groups) {
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == at::kFloat, "cache_attention: q must be float32 [B, H, R, D], got ",
              q.scalar_type(), " ", q.sizes());
  TORCH_CHECK(groups >= 1 && q.size(2) % groups == 0, "cache_attention: groups = ", groups,
              " must be >= 1 and divide q's rows (", q.size(2), ")");
  const auto kind = k.scalar_type();
  TORCH_CHECK(kind == at::kFloat || kind == at::kBFloat16 || kind == at::kChar,
              "cache_attention: k and v must be float32, bfloat16 or int8, got ", kind);
  for (const at::Tensor* t : {&k, &v})
    TORCH_CHECK(t->dim() == 4 && t->scalar_type() == kind && t->size(0) == q.size(0) && t->size(1) == q.size(1) &&
                    t->size(3) == q.size(3) && t->sizes() == k.sizes(),
                "cache_attention: k and v must be [B, H, S, D] = [", q.size(0), ", ", q.size(1), ", S, ", q.size(3),
                "] of one dtype, got ", k.scalar_type(), " ", k.sizes(), " and ", v.scalar_type(), " ", v.sizes());
  const bool int8 = kind == at::kChar;
  TORCH_CHECK(k_scale.has_value() == int8 && v_scale.has_value() == int8,
              "cache_attention: k_scale and v_scale go with an int8 cache, and only with one");
  for (const auto* s : {&k_scale, &v_scale})
    TORCH_CHECK(!s->has_value() || ((*s)->scalar_type() == at::kFloat && (*s)->numel() == k.numel() / k.size(3)),
                "cache_attention: k_scale and v_scale must be float32 [B, H, S, 1]");
  TORCH_CHECK(start.dim() == 1 && start.scalar_type() == at::kLong && start.size(0) == q.size(0),
              "cache_attention: start must be int64 [B] (each sequence's first new position)");
}

}  // namespace

namespace qc {

at::Tensor cache_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                           const std::optional<at::Tensor>& k_scale_in, const std::optional<at::Tensor>& v_scale_in,
                           const at::Tensor& start_in, int64_t groups, double scale) {
  check(q_in, k_in, v_in, k_scale_in, v_scale_in, start_in, groups);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), start = start_in.contiguous();
  const std::optional<at::Tensor> k_scale = qc::contiguous(k_scale_in), v_scale = qc::contiguous(v_scale_in);
  const int64_t B = q.size(0), H = q.size(1), R = q.size(2), D = q.size(3), S = k.size(2);
  const int64_t* first = start.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(first[b] >= 0 && first[b] + R / groups <= S, "cache_attention: sequence ", b, " starts at ", first[b],
                " with ", R / groups, " new positions; the cache holds ", S);
  at::Tensor out = at::empty({B, H, R, D}, q.options());
  if (out.numel() == 0) return out;
  const Problem p{q.data_ptr<float>(), k.data_ptr(), v.data_ptr(), k_scale ? k_scale->data_ptr<float>() : nullptr,
                  v_scale ? v_scale->data_ptr<float>() : nullptr, store_of(k), first, out.data_ptr<float>(),
                  B, H, R, S, D, groups, float(scale)};
  run(p, qc::path_here() != qc::Path::kScalar);
  return out;
}

}  // namespace qc
