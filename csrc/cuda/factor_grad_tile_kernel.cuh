// CUDA kernels of factor_grad_stats: thread blocks over (tile group, sample).
//
// A block walks its tiles of G_s = sum_t a_t b_t^T (tile, tile + groups, ...). For each
// TM x TN tile it accumulates G in registers over the sample's rows (fp32, TK rows per step
// through shared memory), then adds the tile's statistics to the block's own partials:
// <G_tile, dirs[k]_tile> per k, ||G_tile||^2 and, when the tile spans all of p ("left") or
// all of q ("right"), the tile's gram contribution. G never reaches global memory. Each
// partial belongs to one block and is updated in a fixed order, and partials are summed
// over groups afterwards in a fixed order (no atomics), so results are deterministic.
#pragma once

#include <cstdint>

#include "factor_grad_tile_params.h"

namespace sqsd_fast::gpu {

constexpr int kRowsPerStep = 16;

__device__ inline int64_t clamp_index(int64_t value, int64_t low, int64_t high) {
  return value < low ? low : (value > high ? high : value);
}

// Fixed-shape tree reduction over the block: deterministic, unlike atomics.
__device__ inline float block_sum(float value, float* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int offset = kThreads / 2; offset > 0; offset >>= 1) {
    if (static_cast<int>(threadIdx.x) < offset) scratch[threadIdx.x] += scratch[threadIdx.x + offset];
    __syncthreads();
  }
  const float total = scratch[0];
  __syncthreads();
  return total;
}

template <int TM, int TN>
struct TileSmem {
  float a[kRowsPerStep][TM];
  float b[kRowsPerStep][TN];
  float g[TM][TN + 1];  // +1: column reads in the gram step avoid bank conflicts
  float scratch[kThreads];
};

// Adds one tile's statistics to the partials at index `part`; called by the whole block.
template <typename scalar_t, int TM, int TN>
__device__ void accumulate_tile(const TileParams& prm, TileSmem<TM, TN>& smem,
                                int64_t tile, int64_t row_begin, int64_t row_end, int64_t part) {
  constexpr int RM = TM / 16, RN = TN / 16;
  const int64_t m0 = (tile / prm.tiles_n) * TM, n0 = (tile % prm.tiles_n) * TN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const auto* a = static_cast<const scalar_t*>(prm.a);
  const auto* b = static_cast<const scalar_t*>(prm.b);

  float acc[RM][RN];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) acc[i][j] = 0.f;

  for (int64_t t0 = row_begin; t0 < row_end; t0 += kRowsPerStep) {
    // Out-of-range rows and columns load as 0; columns past p or q are masked again below.
    for (int e = threadIdx.x; e < kRowsPerStep * TM; e += kThreads) {
      const int r = e / TM, c = e % TM;
      const int64_t t = t0 + r, col = m0 + c;
      smem.a[r][c] = (t < row_end && col < prm.p)
                         ? static_cast<float>(a[t * prm.a_stride0 + col * prm.a_stride1]) : 0.f;
    }
    for (int e = threadIdx.x; e < kRowsPerStep * TN; e += kThreads) {
      const int r = e / TN, c = e % TN;
      const int64_t t = t0 + r, col = n0 + c;
      smem.b[r][c] = (t < row_end && col < prm.q)
                         ? static_cast<float>(b[t * prm.b_stride0 + col * prm.b_stride1]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) {
      float av[RM], bv[RN];
#pragma unroll
      for (int i = 0; i < RM; ++i) av[i] = smem.a[r][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < RN; ++j) bv[j] = smem.b[r][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

  // Entries outside p x q hold 0 * (maybe NaN) garbage: zero them so they never count.
  float sqnorm = 0.f;
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) {
      const int row = ty + 16 * i, col = tx + 16 * j;
      if (m0 + row >= prm.p || n0 + col >= prm.q) acc[i][j] = 0.f;
      smem.g[row][col] = acc[i][j];
      sqnorm = fmaf(acc[i][j], acc[i][j], sqnorm);
    }
  __syncthreads();

  if (prm.sqnorm_partial != nullptr) {
    const float total = block_sum(sqnorm, smem.scratch);
    if (threadIdx.x == 0) prm.sqnorm_partial[part] += total;
  }
  for (int64_t k = 0; k < prm.num_dirs; ++k) {
    const float* dir = prm.dirs + k * prm.p * prm.q;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) {
        const int64_t row = m0 + ty + 16 * i, col = n0 + tx + 16 * j;
        if (row < prm.p && col < prm.q) dot = fmaf(acc[i][j], dir[row * prm.q + col], dot);
      }
    const float total = block_sum(dot, smem.scratch);
    if (threadIdx.x == 0) prm.proj_partial[part * prm.num_dirs + k] += total;
  }

  // Each thread owns the same gram entries for every tile, so += needs no atomics.
  if (prm.gram == TileGram::kLeft) {  // the launcher guarantees p <= TM: the tile spans all rows
    const int g = static_cast<int>(prm.p);
    for (int e = threadIdx.x; e < g * g; e += kThreads) {
      const int i = e / g, l = e % g;
      float sum = 0.f;
      for (int c = 0; c < TN; ++c) sum = fmaf(smem.g[i][c], smem.g[l][c], sum);
      prm.gram_partial[part * g * g + e] += sum;
    }
  } else if (prm.gram == TileGram::kRight) {  // q <= TN: the tile spans all columns
    const int g = static_cast<int>(prm.q);
    for (int e = threadIdx.x; e < g * g; e += kThreads) {
      const int i = e / g, l = e % g;
      float sum = 0.f;
      for (int r = 0; r < TM; ++r) sum = fmaf(smem.g[r][i], smem.g[r][l], sum);
      prm.gram_partial[part * g * g + e] += sum;
    }
  }
  __syncthreads();  // smem.g is rewritten by the next tile
}

template <typename scalar_t, int TM, int TN>
__global__ void __launch_bounds__(kThreads) factor_grad_tile_kernel(TileParams prm) {
  __shared__ TileSmem<TM, TN> smem;
  const int64_t sample = blockIdx.y;
  // Clamped so a malformed cu_seqlens cannot read out of bounds (Python validates it first).
  const int64_t row_begin = clamp_index(prm.cu_seqlens[sample], 0, prm.num_rows);
  const int64_t row_end = clamp_index(prm.cu_seqlens[sample + 1], row_begin, prm.num_rows);
  if (row_begin == row_end) return;  // empty sample: its partials stay exact zeros
  const int64_t part = sample * prm.num_groups + blockIdx.x;
  for (int64_t tile = blockIdx.x; tile < prm.num_tiles; tile += prm.num_groups) {
    accumulate_tile<scalar_t, TM, TN>(prm, smem, tile, row_begin, row_end, part);
  }
}

// out[s, e] = sum over groups, in group order, of partial[s, group, e].
__global__ void sum_over_groups_kernel(const float* partial, float* out, int64_t num_samples,
                                       int64_t num_groups, int64_t width) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= num_samples * width) return;
  const int64_t sample = idx / width, e = idx % width;
  const float* src = partial + sample * num_groups * width + e;
  float total = 0.f;
  for (int64_t group = 0; group < num_groups; ++group) total += src[group * width];
  out[idx] = total;
}

}  // namespace sqsd_fast::gpu
