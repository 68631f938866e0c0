// CUDA implementation of factor_grad_stats (docs/METHOD.md §4), host side: plans the tiles,
// launches the kernels of factor_grad_launch.cu on the current stream, reduces their
// per-group partials in a fixed order, and falls back to the Gram form through cuBLAS for a
// "left" gram with p > kMaxGramSide (or "right" with q > kMaxGramSide), which one tile
// cannot span (factor_grad_tile_params.h).
#include "../factor_grad_stats.h"
#include "factor_grad_launch.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

namespace sqsd_fast::gpu {
namespace {

constexpr int64_t kTargetBlocks = 2048;             // a few waves on a large GPU
constexpr int64_t kMaxGramPartialBytes = 64 << 20;  // cap on per-group gram partials
constexpr int64_t kMaxGridY = 65535;

struct TileChoice {
  int tm, tn;
  TileGram gram;  // which gram the kernel computes itself (kNone: fallback or not wanted)
};

// The kernel can take a "left" gram only when one tile spans all p rows (p <= TM), and a
// "right" gram when it spans all q columns, up to kMaxGramSide (LoRA ranks fit). Among the
// tiles of SQSD_FAST_CUDA_TILE_SHAPES the thinnest that spans the rank wastes the fewest FMAs
// on padding (r = 16: 16 x 256, not 64 x 64); anything else runs on kDefaultTile.
TileChoice choose_tile(GramMode mode, int64_t p, int64_t q) {
  if (mode == GramMode::kLeft || mode == GramMode::kRight) {
    const bool left = mode == GramMode::kLeft;
    const int64_t side = left ? p : q;
    const TileShape* best = nullptr;
    for (const TileShape& shape : kTileShapes) {
      const int span = left ? shape.tm : shape.tn;
      if (side <= span && span <= kMaxGramSide &&
          (best == nullptr || span < (left ? best->tm : best->tn))) {
        best = &shape;
      }
    }
    if (best != nullptr) return {best->tm, best->tn, left ? TileGram::kLeft : TileGram::kRight};
  }
  return {kDefaultTile.tm, kDefaultTile.tn, TileGram::kNone};
}

// out (S, width...) = partial (S, groups, width) summed over groups in order.
void sum_over_groups(const at::Tensor& partial, at::Tensor& out, cudaStream_t stream) {
  C10_CUDA_CHECK(launch_sum_over_groups(partial.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                        partial.size(0), partial.size(1), partial.size(2), stream));
}

InputDtype input_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return InputDtype::kFloat32;
    case at::kBFloat16: return InputDtype::kBFloat16;
    case at::kHalf: return InputDtype::kFloat16;
    default: TORCH_CHECK(false, "factor_grad_stats (CUDA): unsupported dtype ", type);
  }
}

// G G^T = a_s^T (b_s b_s^T) a_s and G^T G = b_s^T (a_s a_s^T) b_s: correct for any p, q,
// and cheap when samples are short. Reads cu_seqlens on the host (one sync per call).
void gram_by_gram_form(const at::Tensor& a, const at::Tensor& b, const at::Tensor& cu_seqlens,
                       GramMode mode, at::Tensor& gram) {
  const at::Tensor cu = cu_seqlens.to(at::kCPU);
  const int64_t* offsets = cu.const_data_ptr<int64_t>();
  for (int64_t s = 0; s + 1 < cu.size(0); ++s) {
    const int64_t T = offsets[s + 1] - offsets[s];
    if (T <= 0) continue;
    const at::Tensor a_s = a.narrow(0, offsets[s], T).to(at::kFloat);
    const at::Tensor b_s = b.narrow(0, offsets[s], T).to(at::kFloat);
    if (mode == GramMode::kLeft) {
      gram[s].copy_(at::mm(a_s.t(), at::mm(at::mm(b_s, b_s.t()), a_s)));
    } else {
      gram[s].copy_(at::mm(b_s.t(), at::mm(at::mm(a_s, a_s.t()), b_s)));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> factor_grad_stats_cuda(
    const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& cu_seqlens,
    const std::optional<at::Tensor>& dirs, c10::string_view gram) {
  const GramMode mode = parse_gram_mode(gram);
  const FactorGradShape shape = check_factor_grad_inputs(a_in, b_in, cu_seqlens, dirs);
  TORCH_CHECK(a_in.is_cuda(), "factor_grad_stats (CUDA): a must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(a_in.device());
  auto [proj, gram_out] = allocate_outputs(shape, mode, a_in);
  const int64_t S = shape.num_samples, K = shape.num_dirs, p = shape.p, q = shape.q;
  if (S == 0 || p == 0 || q == 0) return {proj, gram_out};

  const at::Tensor a = a_in.detach(), b = b_in.detach();
  const TileChoice choice = choose_tile(mode, p, q);
  TORCH_CHECK(tile_shape_supported(choice.tm, choice.tn), "factor_grad_stats (CUDA): no kernel "
              "for tile ", choice.tm, "x", choice.tn);
  const InputDtype dtype = input_dtype(a.scalar_type());
  const bool want_sqnorm = mode == GramMode::kFrobenius;
  const bool gram_fallback = (mode == GramMode::kLeft || mode == GramMode::kRight) &&
                             choice.gram == TileGram::kNone;
  if (gram_fallback) gram_by_gram_form(a, b, cu_seqlens, mode, gram_out);
  if (K == 0 && !want_sqnorm && choice.gram == TileGram::kNone) return {proj, gram_out};

  const int64_t tiles_m = (p + choice.tm - 1) / choice.tm, tiles_n = (q + choice.tn - 1) / choice.tn;
  const int64_t num_tiles = tiles_m * tiles_n;
  const int64_t gram_width = choice.gram == TileGram::kLeft ? p * p
                             : choice.gram == TileGram::kRight ? q * q : 0;
  // Groups per sample depend only on shapes (not on the GPU), so results are reproducible.
  int64_t groups = std::clamp<int64_t>((kTargetBlocks + S - 1) / S, 1, num_tiles);
  if (gram_width > 0) {
    const int64_t bytes_per_group = S * gram_width * static_cast<int64_t>(sizeof(float));
    groups = std::clamp<int64_t>(kMaxGramPartialBytes / bytes_per_group, 1, groups);
  }

  const auto f32 = a.options().dtype(at::kFloat);
  const at::Tensor dirs_f = dirs_as_contiguous_float(dirs);
  at::Tensor proj_partial = at::zeros({S, groups, K}, f32);
  at::Tensor sqnorm_partial = want_sqnorm ? at::zeros({S, groups, 1}, f32) : at::Tensor();
  at::Tensor gram_partial = gram_width > 0 ? at::zeros({S, groups, gram_width}, f32) : at::Tensor();

  TileParams prm{};
  prm.a = a.const_data_ptr();
  prm.b = b.const_data_ptr();
  prm.a_stride0 = a.stride(0);
  prm.a_stride1 = a.stride(1);
  prm.b_stride0 = b.stride(0);
  prm.b_stride1 = b.stride(1);
  prm.num_rows = shape.num_rows;
  prm.p = p;
  prm.q = q;
  prm.dirs = K > 0 ? dirs_f.const_data_ptr<float>() : nullptr;
  prm.num_dirs = K;
  prm.tiles_n = tiles_n;
  prm.num_tiles = num_tiles;
  prm.num_groups = groups;
  prm.gram = choice.gram;

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // gridDim.y is limited to 65535 samples per launch.
  for (int64_t s0 = 0; s0 < S; s0 += kMaxGridY) {
    const int64_t count = std::min(kMaxGridY, S - s0);
    prm.cu_seqlens = cu_seqlens.const_data_ptr<int64_t>() + s0;
    prm.proj_partial = proj_partial.mutable_data_ptr<float>() + s0 * groups * K;
    prm.sqnorm_partial = want_sqnorm ? sqnorm_partial.mutable_data_ptr<float>() + s0 * groups : nullptr;
    prm.gram_partial = gram_width > 0
                           ? gram_partial.mutable_data_ptr<float>() + s0 * groups * gram_width
                           : nullptr;
    C10_CUDA_CHECK(launch_factor_grad_tiles(dtype, choice.tm, choice.tn, count, prm, stream));
  }

  sum_over_groups(proj_partial, proj, stream);
  if (want_sqnorm) sum_over_groups(sqnorm_partial, gram_out, stream);
  if (gram_width > 0) sum_over_groups(gram_partial, gram_out, stream);
  return {proj, gram_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(sqsd_fast, CUDA, m) {
  m.impl("factor_grad_stats", &factor_grad_stats_cuda);
}

}  // namespace sqsd_fast::gpu
