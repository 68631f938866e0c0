// Runs the CUDA tile kernel of factor_grad_tile_kernel.cuh on the CPU, so that its indexing,
// masking and fixed-order reductions are tested where there is no GPU (tests/test_cpp_backend.py
// compiles this file with the host compiler). Each thread block runs as 256 std::threads
// that share the block's __shared__ memory and meet at a std::barrier for __syncthreads().
// It checks the kernel's logic, not CUDA-specific behaviour (memory model, occupancy).
//
//   emulate_tile_kernel P Q K GRAM TM TN DTYPE
//     GRAM: 0 none, 1 left, 2 right, 3 frobenius;  DTYPE: 0 float32, 1 bfloat16, 2 float16
//   prints "rel_err=<||out - ref|| / ||ref||> empty_zero=<1 if empty samples gave exact 0>"
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <thread>
#include <vector>

struct EmulatedDim3 {
  unsigned x = 0, y = 0, z = 0;
};
thread_local EmulatedDim3 threadIdx;
EmulatedDim3 blockIdx, blockDim;
std::barrier<>* block_barrier = nullptr;

#define __global__
#define __device__
#define __launch_bounds__(threads)
#define __shared__ static  // blocks run one after another, so one copy serves them all
#define __syncthreads() block_barrier->arrive_and_wait()
using std::fmaf;

#include "factor_grad_tile_kernel.cuh"

using namespace sqsd_fast::gpu;

namespace {

void run_grid(unsigned grid_x, unsigned grid_y, unsigned threads,
              const std::function<void()>& kernel) {
  std::barrier<> barrier(threads);
  block_barrier = &barrier;
  blockDim = {threads};
  for (unsigned y = 0; y < grid_y; ++y) {
    for (unsigned x = 0; x < grid_x; ++x) {
      blockIdx = {x, y};
      std::vector<std::thread> block;
      for (unsigned t = 0; t < threads; ++t) {
        block.emplace_back([&, t] { threadIdx = {t}; kernel(); });
      }
      for (auto& thread : block) thread.join();
    }
  }
}

template <typename scalar_t>
void launch_tiles(int tm, int tn, const TileParams& prm, unsigned samples) {
#define EMULATE_TILE(TM, TN)                                                          \
  if (tm == TM && tn == TN) {                                                         \
    run_grid(unsigned(prm.num_groups), samples, kThreads,                             \
             [&] { factor_grad_tile_kernel<scalar_t, TM, TN>(prm); });                \
    return;                                                                           \
  }
  SQSD_FAST_CUDA_TILE_SHAPES(EMULATE_TILE)  // the launcher's list (factor_grad_tile_params.h)
#undef EMULATE_TILE
  std::fprintf(stderr, "no tile %dx%d\n", tm, tn);
  std::exit(2);
}

std::vector<float> sum_over_groups(const std::vector<float>& partial, int64_t samples,
                                   int64_t groups, int64_t width) {
  std::vector<float> out(samples * width);
  const unsigned threads = 256, blocks = unsigned((samples * width + threads - 1) / threads);
  std::barrier<> barrier(1);
  block_barrier = &barrier;
  blockDim = {threads};
  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned t = 0; t < threads; ++t) {  // no __syncthreads in this kernel: run in turn
      blockIdx = {b};
      threadIdx = {t};
      sum_over_groups_kernel(partial.data(), out.data(), samples, groups, width);
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s P Q K GRAM TM TN DTYPE\n", argv[0]);
    return 2;
  }
  const int p = std::atoi(argv[1]), q = std::atoi(argv[2]), K = std::atoi(argv[3]);
  const int gram = std::atoi(argv[4]), tm = std::atoi(argv[5]), tn = std::atoi(argv[6]);
  const int dtype = std::atoi(argv[7]);
  const std::vector<int64_t> lengths = {37, 0, 5, 20};  // one sample empty
  std::vector<int64_t> cu = {0};
  for (int64_t length : lengths) cu.push_back(cu.back() + length);
  const int64_t S = int64_t(lengths.size()), N = cu.back();

  // a is stored transposed (p, N) and b with a doubled row stride: both non-contiguous.
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> a(p * N), b(N * 2 * q), dirs(K * p * q);
  for (auto* values : {&a, &b, &dirs}) for (float& v : *values) v = normal(rng);
  auto round_to_dtype = [&](float v) {
    return dtype == 1 ? float(c10::BFloat16(v)) : dtype == 2 ? float(c10::Half(v)) : v;
  };
  for (float& v : a) v = round_to_dtype(v);
  for (float& v : b) v = round_to_dtype(v);
  std::vector<c10::BFloat16> a_bf16(a.begin(), a.end()), b_bf16(b.begin(), b.end());
  std::vector<c10::Half> a_f16(a.begin(), a.end()), b_f16(b.begin(), b.end());

  const int64_t tiles_m = (p + tm - 1) / tm, tiles_n = (q + tn - 1) / tn;
  const int64_t tiles = tiles_m * tiles_n, groups = std::min<int64_t>(tiles, 3);  // 3: groups walk several tiles
  const int64_t gram_width = gram == 1 ? p * p : gram == 2 ? q * q : 0;
  std::vector<float> proj_part(S * groups * K), sq_part(S * groups), gram_part(S * groups * gram_width);

  TileParams prm{};
  prm.a = dtype == 1 ? (const void*)a_bf16.data() : dtype == 2 ? (const void*)a_f16.data() : a.data();
  prm.b = dtype == 1 ? (const void*)b_bf16.data() : dtype == 2 ? (const void*)b_f16.data() : b.data();
  prm.a_stride0 = 1, prm.a_stride1 = N, prm.b_stride0 = 2 * q, prm.b_stride1 = 1;
  prm.cu_seqlens = cu.data(), prm.num_rows = N, prm.p = p, prm.q = q;
  prm.dirs = K ? dirs.data() : nullptr, prm.num_dirs = K;
  prm.tiles_n = tiles_n, prm.num_tiles = tiles, prm.num_groups = groups;
  prm.proj_partial = proj_part.data();
  prm.sqnorm_partial = gram == 3 ? sq_part.data() : nullptr;
  prm.gram_partial = gram_width ? gram_part.data() : nullptr;
  prm.gram = gram == 1 ? TileGram::kLeft : gram == 2 ? TileGram::kRight : TileGram::kNone;
  if (dtype == 1) launch_tiles<c10::BFloat16>(tm, tn, prm, unsigned(S));
  else if (dtype == 2) launch_tiles<c10::Half>(tm, tn, prm, unsigned(S));
  else launch_tiles<float>(tm, tn, prm, unsigned(S));
  const auto proj = sum_over_groups(proj_part, S, groups, K);
  const auto sqnorm = sum_over_groups(sq_part, S, groups, 1);
  const auto gram_out = sum_over_groups(gram_part, S, groups, gram_width);

  double err = 0, norm = 0;
  bool empty_zero = true;
  auto compare = [&](float out, double ref) { err += (out - ref) * (out - ref); norm += ref * ref; };
  for (int64_t s = 0; s < S; ++s) {
    std::vector<double> G(p * q, 0.0);  // float64 reference
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
      for (int i = 0; i < p; ++i)
        for (int j = 0; j < q; ++j) G[i * q + j] += double(a[i * N + t]) * b[t * 2 * q + j];
    for (int k = 0; k < K; ++k) {
      double ref = 0;
      for (int e = 0; e < p * q; ++e) ref += G[e] * dirs[k * p * q + e];
      compare(proj[s * K + k], ref);
      empty_zero &= lengths[s] != 0 || proj[s * K + k] == 0.f;
    }
    if (gram == 3) {
      double ref = 0;
      for (double g : G) ref += g * g;
      compare(sqnorm[s], ref);
    }
    const int g = gram == 1 ? p : q, inner = gram == 1 ? q : p;
    for (int i = 0; gram_width && i < g; ++i)
      for (int l = 0; l < g; ++l) {
        double ref = 0;
        for (int c = 0; c < inner; ++c)
          ref += gram == 1 ? G[i * q + c] * G[l * q + c] : G[c * q + i] * G[c * q + l];
        compare(gram_out[s * gram_width + i * g + l], ref);
        empty_zero &= lengths[s] != 0 || gram_out[s * gram_width + i * g + l] == 0.f;
      }
  }
  std::printf("rel_err=%.3e empty_zero=%d\n", std::sqrt(err / (norm > 0 ? norm : 1.0)), int(empty_zero));
  return 0;
}
