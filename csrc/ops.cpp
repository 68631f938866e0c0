// The one place the op is declared, plus the Python module sqsd_fast._C that carries it.
// Importing sqsd_fast._C loads this library, whose static initializers register the op
// schema here and its CPU/CUDA kernels in cpu/ and cuda/.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/version.h>

#include <pybind11/pybind11.h>

#include "cuda/factor_grad_tile_params.h"  // plain C++: the CUDA tile list and Gram limit

#ifndef SQSD_FAST_VERSION
#define SQSD_FAST_VERSION "unknown"
#endif

TORCH_LIBRARY(sqsd_fast, m) {
  m.def("factor_grad_stats(Tensor a, Tensor b, Tensor cu_seqlens, Tensor? dirs, str gram) "
        "-> (Tensor, Tensor)");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = SQSD_FAST_VERSION;
  info["torch_version"] = TORCH_VERSION;
#ifdef SQSD_FAST_WITH_CUDA
  info["cuda_compiled"] = true;
  info["cuda_version"] = SQSD_FAST_CUDA_VERSION;
#else
  info["cuda_compiled"] = false;
  info["cuda_version"] = pybind11::none();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["num_threads"] = at::get_num_threads();
  info["parallel_info"] = at::get_parallel_info();
  // The CUDA kernel's one definition of these (csrc/cuda/factor_grad_tile_params.h), reported
  // whether or not CUDA is compiled in, so Python and the tests read them, not copies.
  info["max_gram_side"] = sqsd_fast::gpu::kMaxGramSide;
  pybind11::list tile_shapes;
  for (const auto& shape : sqsd_fast::gpu::kTileShapes) {
    tile_shapes.append(pybind11::make_tuple(shape.tm, shape.tn));
  }
  info["cuda_tile_shapes"] = tile_shapes;
  info["cuda_default_tile"] =
      pybind11::make_tuple(sqsd_fast::gpu::kDefaultTile.tm, sqsd_fast::gpu::kDefaultTile.tn);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled kernels of sqsd_fast (ops live under torch.ops.sqsd_fast).";
  m.def("build_info", &build_info,
        "How this extension was built: version, torch version, CUDA, OpenMP and threads, "
        "and the CUDA kernel's tile shapes and widest in-kernel Gram side.");
}
