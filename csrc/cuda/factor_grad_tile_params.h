// Parameters of the tile kernel, shared by the host launcher and the device code.
#pragma once

#include <cstdint>

namespace sqsd_fast::gpu {

constexpr int kThreads = 256;   // 16 x 16 threads, each owning a (TM/16) x (TN/16) micro-tile

enum class TileGram : int { kNone = 0, kLeft = 1, kRight = 2 };

struct TileParams {
  const void* a;  // (N, p) of scalar_t, strides below in elements
  const void* b;  // (N, q)
  int64_t a_stride0, a_stride1, b_stride0, b_stride1;
  const int64_t* cu_seqlens;  // (S + 1,)
  int64_t num_rows, p, q;
  const float* dirs;  // (K, p, q) contiguous, or nullptr when K == 0
  int64_t num_dirs;
  int64_t tiles_n;           // tiles along q; tile index = tile_m * tiles_n + tile_n
  int64_t num_tiles;
  int64_t num_groups;        // gridDim.x; partials are per (sample, group), zero-initialized
  float* proj_partial;       // (S, num_groups, K)
  float* sqnorm_partial;     // (S, num_groups) or nullptr
  float* gram_partial;       // (S, num_groups, g, g) or nullptr
  TileGram gram;
};

}  // namespace sqsd_fast::gpu
