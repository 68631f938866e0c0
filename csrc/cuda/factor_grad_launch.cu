// Launchers of the factor_grad_stats kernels. Only c10's small Half/BFloat16 headers come in,
// so nvcc does not have to parse ATen (that host logic is in factor_grad_stats_cuda.cpp).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "factor_grad_launch.h"
#include "factor_grad_tile_kernel.cuh"

namespace sqsd_fast::gpu {
namespace {

template <typename scalar_t>
cudaError_t launch_for_dtype(int tm, int tn, dim3 grid, const TileParams& prm,
                             cudaStream_t stream) {
#define SQSD_LAUNCH_TILE(TM, TN)                                                  \
  if (tm == TM && tn == TN) {                                                     \
    factor_grad_tile_kernel<scalar_t, TM, TN><<<grid, kThreads, 0, stream>>>(prm); \
    return cudaGetLastError();                                                    \
  }
  SQSD_FAST_CUDA_TILE_SHAPES(SQSD_LAUNCH_TILE)  // one instantiation per listed tile shape
#undef SQSD_LAUNCH_TILE
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_factor_grad_tiles(InputDtype dtype, int tm, int tn, int64_t num_samples,
                                     const TileParams& prm, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(prm.num_groups), static_cast<unsigned>(num_samples));
  switch (dtype) {
    case InputDtype::kFloat32: return launch_for_dtype<float>(tm, tn, grid, prm, stream);
    case InputDtype::kBFloat16: return launch_for_dtype<c10::BFloat16>(tm, tn, grid, prm, stream);
    case InputDtype::kFloat16: return launch_for_dtype<c10::Half>(tm, tn, grid, prm, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_sum_over_groups(const float* partial, float* out, int64_t num_samples,
                                   int64_t num_groups, int64_t width, cudaStream_t stream) {
  const int64_t total = num_samples * width;
  if (total == 0) return cudaSuccess;
  constexpr int kReduceThreads = 256;
  const auto blocks = static_cast<unsigned>((total + kReduceThreads - 1) / kReduceThreads);
  sum_over_groups_kernel<<<blocks, kReduceThreads, 0, stream>>>(partial, out, num_samples,
                                                                num_groups, width);
  return cudaGetLastError();
}

}  // namespace sqsd_fast::gpu
