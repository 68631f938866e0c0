// Shared pieces of the factor_grad_stats op (docs/METHOD.md §4, docs/CONTRACTS.md):
// input checks, output allocation and the gram-mode parsing used by every device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace sqsd_fast {

// Which second-order statistic of G_s = sum_t a_t b_t^T the caller wants.
enum class GramMode { kLeft, kRight, kFrobenius, kNone };

GramMode parse_gram_mode(c10::string_view gram);

// Problem sizes read once from the checked inputs.
struct FactorGradShape {
  int64_t num_samples;  // S
  int64_t num_rows;     // N
  int64_t p;
  int64_t q;
  int64_t num_dirs;     // K, 0 when dirs is None
};

// Second line of defence: Python (sqsd_fast/ops/validation.py) checks inputs first, but a direct
// torch.ops call must still fail with a clear message instead of reading out of bounds.
// Checks cu_seqlens values only on the CPU (on CUDA that would need a host sync).
FactorGradShape check_factor_grad_inputs(const at::Tensor& a, const at::Tensor& b,
                                         const at::Tensor& cu_seqlens,
                                         const std::optional<at::Tensor>& dirs);

// Zero-filled float32 outputs with the contract's shapes on a's device:
// proj (S, K); gram (S, p, p) left, (S, q, q) right, (S,) frobenius, (S, 0) none.
std::tuple<at::Tensor, at::Tensor> allocate_outputs(const FactorGradShape& shape, GramMode mode,
                                                    const at::Tensor& like);

// dirs as a detached, contiguous float32 (K, p, q) tensor; undefined when dirs is None.
// K is small, so one converted copy is cheap and lets kernels assume a single layout.
at::Tensor dirs_as_contiguous_float(const std::optional<at::Tensor>& dirs);

}  // namespace sqsd_fast
