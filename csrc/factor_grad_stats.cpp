#include "factor_grad_stats.h"

#include <ATen/ATen.h>

namespace sqsd_fast {

GramMode parse_gram_mode(c10::string_view gram) {
  if (gram == "left") return GramMode::kLeft;
  if (gram == "right") return GramMode::kRight;
  if (gram == "frobenius") return GramMode::kFrobenius;
  if (gram == "none") return GramMode::kNone;
  TORCH_CHECK(false, "factor_grad_stats: gram must be one of 'left', 'right', 'frobenius', "
              "'none', got '", std::string(gram), "'");
}

FactorGradShape check_factor_grad_inputs(const at::Tensor& a, const at::Tensor& b,
                                         const at::Tensor& cu_seqlens,
                                         const std::optional<at::Tensor>& dirs) {
  TORCH_CHECK(a.dim() == 2, "factor_grad_stats: a must be 2-D (N, p), got shape ", a.sizes());
  TORCH_CHECK(b.dim() == 2, "factor_grad_stats: b must be 2-D (N, q), got shape ", b.sizes());
  TORCH_CHECK(a.size(0) == b.size(0), "factor_grad_stats: a and b must have the same number of "
              "rows N, got a ", a.sizes(), " and b ", b.sizes());
  const auto dtype = a.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "factor_grad_stats: a must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(b.scalar_type() == dtype, "factor_grad_stats: b must have a's dtype ", dtype,
              ", got ", b.scalar_type());
  TORCH_CHECK(b.device() == a.device() && cu_seqlens.device() == a.device(),
              "factor_grad_stats: a, b and cu_seqlens must be on one device, got ", a.device(),
              ", ", b.device(), ", ", cu_seqlens.device());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1,
              "factor_grad_stats: cu_seqlens must be 1-D (S + 1,), got shape ", cu_seqlens.sizes());
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kLong && cu_seqlens.is_contiguous(),
              "factor_grad_stats: cu_seqlens must be contiguous int64, got ",
              cu_seqlens.scalar_type());

  FactorGradShape shape{cu_seqlens.size(0) - 1, a.size(0), a.size(1), b.size(1), 0};
  if (dirs.has_value()) {
    const at::Tensor& d = *dirs;
    TORCH_CHECK(d.dim() == 3 && d.size(0) >= 1 && d.size(1) == shape.p && d.size(2) == shape.q,
                "factor_grad_stats: dirs must be (K >= 1, p=", shape.p, ", q=", shape.q,
                "), got shape ", d.sizes());
    TORCH_CHECK(at::isFloatingType(d.scalar_type()),
                "factor_grad_stats: dirs must be a floating dtype, got ", d.scalar_type());
    TORCH_CHECK(d.device() == a.device(), "factor_grad_stats: dirs must be on ", a.device(),
                ", got ", d.device());
    shape.num_dirs = d.size(0);
  }

  if (cu_seqlens.is_cpu()) {
    const int64_t* cu = cu_seqlens.const_data_ptr<int64_t>();
    TORCH_CHECK(cu[0] == 0 && cu[shape.num_samples] == shape.num_rows,
                "factor_grad_stats: cu_seqlens must start at 0 and end at N=", shape.num_rows,
                ", got ", cu[0], " and ", cu[shape.num_samples]);
    for (int64_t s = 0; s < shape.num_samples; ++s) {
      TORCH_CHECK(cu[s] <= cu[s + 1], "factor_grad_stats: cu_seqlens must be non-decreasing, "
                  "got cu_seqlens[", s, "]=", cu[s], " > cu_seqlens[", s + 1, "]=", cu[s + 1]);
    }
  }
  return shape;
}

std::tuple<at::Tensor, at::Tensor> allocate_outputs(const FactorGradShape& shape, GramMode mode,
                                                    const at::Tensor& like) {
  const auto options = like.options().dtype(at::kFloat);
  const int64_t S = shape.num_samples;
  at::Tensor proj = at::zeros({S, shape.num_dirs}, options);
  at::Tensor gram;
  switch (mode) {
    case GramMode::kLeft: gram = at::zeros({S, shape.p, shape.p}, options); break;
    case GramMode::kRight: gram = at::zeros({S, shape.q, shape.q}, options); break;
    case GramMode::kFrobenius: gram = at::zeros({S}, options); break;
    case GramMode::kNone: gram = at::zeros({S, 0}, options); break;
  }
  return {proj, gram};
}

at::Tensor dirs_as_contiguous_float(const std::optional<at::Tensor>& dirs) {
  if (!dirs.has_value()) return at::Tensor();
  return dirs->detach().to(at::kFloat).contiguous();
}

}  // namespace sqsd_fast
