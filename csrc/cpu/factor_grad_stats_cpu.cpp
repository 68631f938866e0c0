// CPU kernel of factor_grad_stats (docs/METHOD.md §4): statistics of G_s = a_s^T b_s without ever
// holding more than one tile of G_s per thread.
//
// G_s is formed one tile at a time along the dimension the requested gram does not need
// (q columns for "left", p rows for "right", the larger one otherwise); each tile feeds the
// projections, the gram and the squared norm, then is overwritten. Work items are
// (sample, chunk of consecutive tiles); their partials are summed afterwards in a fixed
// order, and the decomposition depends only on shapes, never on the thread count, so the
// result is bit-identical across calls and thread settings.
#include "../factor_grad_stats.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace sqsd_fast {
namespace {

constexpr int64_t kTileFloats = 32 * 1024;     // a 128 KiB G tile stays in L2 for its statistics
constexpr int64_t kMinTile = 16;
constexpr int64_t kTargetWorkItems = 64;       // enough items to balance threads, few partials
constexpr int64_t kMaxPartialBytes = 256 << 20;  // cap on per-chunk gram partials
constexpr int64_t kMaxGramFormRows = 2048;     // two T x T fp32 Grams: at most 32 MiB a thread

// bf16 inputs on a CPU with native bf16 dot products (AVX512-BF16 or AMX) form each G tile
// with a bf16 GEMM: oneDNN accumulates in fp32 and rounds each entry of the tile once to
// bf16 (relative error <= 2^-9 an entry, ~2e-3 on the statistics; the contract allows 1e-2
// for bf16 inputs), then the tile is widened to fp32 for the statistics. That is 1.7-2.6x
// faster (BENCHMARKS.md §1) than widening both input slices first, the path everywhere else (and for
// fp16, which has no fast CPU GEMM). SQSD_FAST_CPU_BF16_GEMM=0/1 overrides the detection
// (tests run both paths on any machine).
bool cpu_has_native_bf16() {
  static const bool native = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    auto has = [&](const char* name) {
      auto it = caps.find(name);
      return it != caps.end() && it->second.isBool() && it->second.toBool();
    };
    return has("avx512_bf16") || has("amx_bf16");
  }();
  return native;
}

bool use_bf16_gemm(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != at::kBFloat16 || b.scalar_type() != at::kBFloat16) return false;
  const char* forced = std::getenv("SQSD_FAST_CPU_BF16_GEMM");
  if (forced != nullptr && forced[0] != '\0') return std::strcmp(forced, "0") != 0;
  return cpu_has_native_bf16();
}

struct Plan {
  GramMode mode;
  FactorGradShape shape;
  bool tile_rows;           // tile G along p (rows); otherwise along q (columns)
  int64_t tile;             // tile extent along the tiled dimension
  int64_t num_tiles;
  int64_t tiles_per_chunk;
  int64_t chunks;           // work items per sample
  int64_t gram_numel;       // p*p for left, q*q for right, else 0
  bool bf16_gemm;           // form tiles with a bf16 GEMM (see use_bf16_gemm)

  int64_t tiled_extent() const { return tile_rows ? shape.p : shape.q; }

  // Frobenius without projections can skip G entirely:
  // ||G_s||^2 = sum_{t,t'} (a_t.a_t')(b_t.b_t') costs ~T^2 (p+q) instead of ~T p q.
  bool use_gram_form(int64_t T) const {
    return mode == GramMode::kFrobenius && shape.num_dirs == 0 && T <= kMaxGramFormRows &&
           T * (shape.p + shape.q) < shape.p * shape.q;
  }
};

Plan make_plan(const FactorGradShape& shape, GramMode mode, bool bf16_gemm) {
  Plan plan{mode, shape, false, 0, 0, 0, 0, 0, bf16_gemm};
  plan.tile_rows = mode == GramMode::kRight ||
                   ((mode == GramMode::kFrobenius || mode == GramMode::kNone) && shape.p >= shape.q);
  const int64_t extent = plan.tiled_extent();
  const int64_t other = std::max<int64_t>(plan.tile_rows ? shape.q : shape.p, 1);
  plan.tile = std::min(std::max(kTileFloats / other, kMinTile), std::max<int64_t>(extent, 1));
  plan.num_tiles = std::max<int64_t>((extent + plan.tile - 1) / plan.tile, 1);
  plan.gram_numel = mode == GramMode::kLeft ? shape.p * shape.p
                    : mode == GramMode::kRight ? shape.q * shape.q : 0;

  const int64_t S = std::max<int64_t>(shape.num_samples, 1);
  int64_t chunks = std::clamp<int64_t>((kTargetWorkItems + S - 1) / S, 1, plan.num_tiles);
  if (plan.gram_numel > 0) {
    const int64_t bytes_per_chunk = S * plan.gram_numel * static_cast<int64_t>(sizeof(float));
    chunks = std::clamp<int64_t>(kMaxPartialBytes / bytes_per_chunk, 1, chunks);
  }
  plan.tiles_per_chunk = (plan.num_tiles + chunks - 1) / chunks;
  plan.chunks = (plan.num_tiles + plan.tiles_per_chunk - 1) / plan.tiles_per_chunk;
  return plan;
}

// Double accumulators: these sums run over up to a whole tile; the products are fp32.
double dot_tile_with_dirs(const float* tile, int64_t rows, int64_t cols, const float* dir,
                          int64_t dir_row_stride) {
  double acc = 0.0;
  for (int64_t i = 0; i < rows; ++i) {
    const float* g = tile + i * cols;
    const float* d = dir + i * dir_row_stride;
    for (int64_t j = 0; j < cols; ++j) acc += static_cast<double>(g[j] * d[j]);
  }
  return acc;
}

double sum_of_squares(const float* x, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i] * x[i]);
  return acc;
}

double sum_of_products(const float* x, const float* y, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i] * y[i]);
  return acc;
}

struct Buffers {
  const int64_t* cu;
  at::Tensor a, b;          // detached inputs, original dtype and strides
  at::Tensor dirs;          // (K, p, q) contiguous float32, or undefined
  double* proj_partial;     // (S, chunks, K)
  double* sqnorm_partial;   // (S, chunks)
  at::Tensor gram_partial;  // (S, chunks, g, g) float32, or the gram output when chunks == 1
};

void run_work_item(const Plan& plan, const Buffers& buf, int64_t s, int64_t chunk) {
  const int64_t row0 = buf.cu[s], T = buf.cu[s + 1] - row0;
  if (T == 0) return;  // partials stay exact zeros for an empty sample
  const int64_t p = plan.shape.p, q = plan.shape.q, K = plan.shape.num_dirs;
  const int64_t item = s * plan.chunks + chunk;
  at::Tensor a_s = buf.a.narrow(0, row0, T), b_s = buf.b.narrow(0, row0, T);

  if (plan.use_gram_form(T)) {
    if (chunk != 0) return;  // one item per sample computes the Gram form
    at::Tensor a_f = a_s.to(at::kFloat), b_f = b_s.to(at::kFloat);
    at::Tensor ka = at::mm(a_f, a_f.t()).contiguous(), kb = at::mm(b_f, b_f.t()).contiguous();
    buf.sqnorm_partial[item] =
        sum_of_products(ka.const_data_ptr<float>(), kb.const_data_ptr<float>(), T * T);
    return;
  }

  // Only this chunk's slice of the tiled factor is read. Without the bf16 GEMM it is
  // converted to fp32 once (bf16/fp16 -> fp32; a no-op for fp32).
  const int64_t tile_begin = chunk * plan.tiles_per_chunk;
  const int64_t tile_end = std::min(plan.num_tiles, tile_begin + plan.tiles_per_chunk);
  const int64_t off0 = tile_begin * plan.tile;
  const int64_t span = std::min(plan.tiled_extent(), tile_end * plan.tile) - off0;
  const at::ScalarType gemm_dtype = plan.bf16_gemm ? at::kBFloat16 : at::kFloat;
  at::Tensor a_f = (plan.tile_rows ? a_s.narrow(1, off0, span) : a_s).to(gemm_dtype);
  at::Tensor b_f = (plan.tile_rows ? b_s : b_s.narrow(1, off0, span)).to(gemm_dtype);
  const int64_t tile_numel = plan.tile * (plan.tile_rows ? q : p);
  at::Tensor g_buffer = at::empty({tile_numel}, a_f.options().dtype(at::kFloat));
  at::Tensor g_low = plan.bf16_gemm ? at::empty({tile_numel}, a_f.options()) : at::Tensor();
  at::Tensor gram = plan.gram_numel == 0 ? at::Tensor()
      : plan.chunks == 1 ? buf.gram_partial[s] : buf.gram_partial[s][chunk];

  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t off = t * plan.tile;
    const int64_t len = std::min(plan.tile, plan.tiled_extent() - off);
    const int64_t rows = plan.tile_rows ? len : p, cols = plan.tile_rows ? q : len;
    at::Tensor g = g_buffer.narrow(0, 0, rows * cols).view({rows, cols});
    at::Tensor g_gemm = plan.bf16_gemm ? g_low.narrow(0, 0, rows * cols).view({rows, cols}) : g;
    if (plan.tile_rows) {
      at::mm_out(g_gemm, a_f.narrow(1, off - off0, len).t(), b_f);
    } else {
      at::mm_out(g_gemm, a_f.t(), b_f.narrow(1, off - off0, len));
    }
    if (plan.bf16_gemm) g.copy_(g_gemm);
    const float* g_ptr = g.const_data_ptr<float>();

    for (int64_t k = 0; k < K; ++k) {
      const float* dir = buf.dirs.const_data_ptr<float>() + k * p * q +
                         (plan.tile_rows ? off * q : off);
      buf.proj_partial[item * K + k] += dot_tile_with_dirs(g_ptr, rows, cols, dir, q);
    }
    if (plan.mode == GramMode::kLeft) gram.addmm_(g, g.t());   // tiles span all p rows
    if (plan.mode == GramMode::kRight) gram.addmm_(g.t(), g);  // tiles span all q columns
    if (plan.mode == GramMode::kFrobenius) {
      buf.sqnorm_partial[item] += sum_of_squares(g_ptr, rows * cols);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> factor_grad_stats_cpu(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& cu_seqlens,
    const std::optional<at::Tensor>& dirs, c10::string_view gram) {
  const GramMode mode = parse_gram_mode(gram);
  const FactorGradShape shape = check_factor_grad_inputs(a, b, cu_seqlens, dirs);
  auto [proj, gram_out] = allocate_outputs(shape, mode, a);
  const int64_t S = shape.num_samples, K = shape.num_dirs;
  if (S == 0 || (K == 0 && mode == GramMode::kNone)) return {proj, gram_out};

  const Plan plan = make_plan(shape, mode, use_bf16_gemm(a, b));
  // Detached inputs keep autograd out of the ATen calls made on worker threads.
  Buffers buf{cu_seqlens.const_data_ptr<int64_t>(), a.detach(), b.detach(),
              dirs_as_contiguous_float(dirs), nullptr, nullptr, gram_out};
  std::vector<double> proj_partial(S * plan.chunks * K, 0.0), sqnorm_partial(S * plan.chunks, 0.0);
  buf.proj_partial = proj_partial.data();
  buf.sqnorm_partial = sqnorm_partial.data();
  if (plan.gram_numel > 0 && plan.chunks > 1) {
    buf.gram_partial = at::zeros({S, plan.chunks, plan.gram_numel}, a.options().dtype(at::kFloat))
                           .view({S, plan.chunks, gram_out.size(1), gram_out.size(2)});
  }

  at::parallel_for(0, S * plan.chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      run_work_item(plan, buf, item / plan.chunks, item % plan.chunks);
    }
  });

  // Fixed-order reduction over chunks: the result does not depend on scheduling.
  float* proj_ptr = proj.mutable_data_ptr<float>();
  float* gram_ptr = gram_out.mutable_data_ptr<float>();
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t k = 0; k < K; ++k) {
      double acc = 0.0;
      for (int64_t c = 0; c < plan.chunks; ++c) acc += proj_partial[(s * plan.chunks + c) * K + k];
      proj_ptr[s * K + k] = static_cast<float>(acc);
    }
    if (mode == GramMode::kFrobenius) {
      double acc = 0.0;
      for (int64_t c = 0; c < plan.chunks; ++c) acc += sqnorm_partial[s * plan.chunks + c];
      gram_ptr[s] = static_cast<float>(acc);
    }
  }
  if (plan.gram_numel > 0 && plan.chunks > 1) {
    const float* part = buf.gram_partial.const_data_ptr<float>();
    const int64_t g = plan.gram_numel;
    at::parallel_for(0, S, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        float* out = gram_ptr + s * g;
        for (int64_t c = 0; c < plan.chunks; ++c) {
          const float* src = part + (s * plan.chunks + c) * g;
          for (int64_t e = 0; e < g; ++e) out[e] += src[e];
        }
      }
    });
  }
  return {proj, gram_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(sqsd_fast, CPU, m) {
  m.impl("factor_grad_stats", &factor_grad_stats_cpu);
}

}  // namespace sqsd_fast
