// Parameters of the tile kernel, shared by the host launcher, the device code, the CPU
// emulation (emulate_tile_kernel.cpp) and build_info() (csrc/ops.cpp). Plain C++: no CUDA or
// ATen headers, so every one of those can include it.
#pragma once

#include <cstdint>

namespace sqsd_fast::gpu {

constexpr int kThreads = 256;   // 16 x 16 threads, each owning a (TM/16) x (TN/16) micro-tile

// Every tile shape (TM, TN) the kernel is compiled for, as an X-macro: X(TM, TN) once per
// shape. The launcher, the tile chooser and the CPU emulation all expand this one list; a
// "left" Gram needs p <= TM (the tile spans all rows), a "right" Gram q <= TN, and the
// chooser takes the thinnest such tile (r = 16: 16 x 256, not 64 x 64), the fewest FMAs on
// padding. TM and TN must be multiples of 16 (the micro-tiles).
#define SQSD_FAST_CUDA_TILE_SHAPES(X) X(16, 256) X(32, 128) X(64, 64) X(128, 32) X(256, 16)

struct TileShape {
  int tm, tn;
};

inline constexpr TileShape kTileShapes[] = {
#define SQSD_FAST_TILE_SHAPE_ENTRY(TM, TN) TileShape{TM, TN},
    SQSD_FAST_CUDA_TILE_SHAPES(SQSD_FAST_TILE_SHAPE_ENTRY)
#undef SQSD_FAST_TILE_SHAPE_ENTRY
};

// The widest Gram side a tile computes in-kernel (LoRA ranks are <= 128). A "left" Gram with
// p > kMaxGramSide (or "right" with q > kMaxGramSide) takes the Gram-form fallback instead.
// The Python side names the same limit sqsd_fast.ops.constants.MAX_GRAM_SIDE (the Triton
// backend's limit too); build_info()["max_gram_side"] reports this one so tests compare them.
inline constexpr int kMaxGramSide = 128;

// The tile for statistics that need no Gram from the kernel: "frobenius", "none", and the
// projections of a Gram that takes the fallback.
inline constexpr TileShape kDefaultTile{64, 64};

constexpr bool tile_shape_supported(int tm, int tn) {
  for (const TileShape& shape : kTileShapes) {
    if (shape.tm == tm && shape.tn == tn) return true;
  }
  return false;
}

namespace tile_checks {
constexpr bool all_multiples_of_16() {
  for (const TileShape& shape : kTileShapes) {
    if (shape.tm % 16 != 0 || shape.tn % 16 != 0) return false;
  }
  return true;
}
constexpr bool spans_gram_side(bool left) {
  for (const TileShape& shape : kTileShapes) {
    if ((left ? shape.tm : shape.tn) == kMaxGramSide) return true;
  }
  return false;
}
}  // namespace tile_checks

static_assert(tile_checks::all_multiples_of_16(), "tile sides must be multiples of 16");
static_assert(tile_shape_supported(kDefaultTile.tm, kDefaultTile.tn),
              "the default tile must be one of SQSD_FAST_CUDA_TILE_SHAPES");
static_assert(tile_checks::spans_gram_side(true) && tile_checks::spans_gram_side(false),
              "some tile must span kMaxGramSide rows and some kMaxGramSide columns");

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
