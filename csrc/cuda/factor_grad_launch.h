// Host-side entry points of the CUDA kernels. Kept free of ATen so that the .cu file that
// defines them compiles in seconds; the ATen logic lives in factor_grad_stats_cuda.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "factor_grad_tile_params.h"

namespace sqsd_fast::gpu {

enum class InputDtype { kFloat32, kBFloat16, kFloat16 };

// Launches the tile kernel over grid (num_groups, samples); returns the launch error. (tm, tn)
// must be one of SQSD_FAST_CUDA_TILE_SHAPES (factor_grad_tile_params.h: tile_shape_supported).
cudaError_t launch_factor_grad_tiles(InputDtype dtype, int tm, int tn, int64_t num_samples,
                                     const TileParams& prm, cudaStream_t stream);

// out[s, e] = sum over g of partial[s, g, e], in order; returns the launch error.
cudaError_t launch_sum_over_groups(const float* partial, float* out, int64_t num_samples,
                                   int64_t num_groups, int64_t width, cudaStream_t stream);

}  // namespace sqsd_fast::gpu
