"""Build driver: runs CMake (CMakeLists.txt describes the native code) and copies the built
sqsd_fast._C library into the package.

    pip install --no-build-isolation -e .

Environment:
    SQSD_FAST_NO_CUDA=1       skip the CUDA kernels even where nvcc and a CUDA torch exist
    MAX_JOBS=N                parallel compile jobs (default: all cores)
    TORCH_CUDA_ARCH_LIST      e.g. "8.0;9.0" (default: the visible GPUs, else torch's list)
    SQSD_FAST_BUILD_TYPE      CMake build type (default Release)
    SQSD_FAST_BUILD_DIR       CMake build folder (default build/cmake)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources CMake knows; setuptools only names its output."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


def _cuda_wanted(torch) -> bool:
    """CUDA kernels need nvcc and a CUDA build of torch (to link against), unless opted out."""
    if os.environ.get("SQSD_FAST_NO_CUDA", "0") not in ("", "0"):
        return False
    nvcc = _find_nvcc()
    if torch.version.cuda is None or nvcc is None:
        return False
    # Kernels built by one CUDA major version next to a torch built for another would load
    # two CUDA runtimes into the process; build the CPU kernels only and say so.
    nvcc_version = _nvcc_version(nvcc)
    if nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
        print(f"sqsd_fast: skipping the CUDA kernels: nvcc {nvcc_version} ({nvcc}) does not match "
              f"torch's CUDA {torch.version.cuda}; point CUDA_HOME at a matching toolkit.",
              file=sys.stderr)
        return False
    return True


def _cuda_architectures(torch) -> str:
    """CMake's CUDA_ARCHITECTURES ("80;90") from TORCH_CUDA_ARCH_LIST, the GPUs, or torch."""
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if arch_list:
        archs = arch_list.replace(" ", ";").split(";")
    elif torch.cuda.is_available():
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i)
                        for i in range(torch.cuda.device_count())})
    else:
        archs = [a.split("_")[1] for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
        archs = [f"{a[:-1]}.{a[-1]}" for a in archs]
    archs = [a.replace("+PTX", "").replace(".", "") for a in archs if a]
    return ";".join(archs) or "native"


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # a build requirement; imported late so `setup.py --help` works without it

        # A fixed folder (not setuptools' temporary one) keeps rebuilds incremental.
        build_dir = Path(os.environ.get("SQSD_FAST_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        with_cuda = _cuda_wanted(torch)
        args = [
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('SQSD_FAST_BUILD_TYPE', 'Release')}",
            f"-DSQSD_FAST_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        env = dict(os.environ)
        if with_cuda:
            archs = _cuda_architectures(torch)
            args += [f"-DCMAKE_CUDA_COMPILER={_find_nvcc()}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}"]
            # torch's own CMake adds -gencode flags from this list; keep both in agreement.
            if archs != "native":
                env.setdefault("TORCH_CUDA_ARCH_LIST",
                               ";".join(f"{a[:-1]}.{a[-1]}" for a in archs.split(";")))
        if shutil.which("ninja"):
            args.append("-GNinja")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True, env=env)

        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_C", "-j", jobs],
                       check=True)

        built = build_dir / "_C.so"  # CMakeLists.txt names the module library exactly this
        if not built.exists():
            raise RuntimeError(f"CMake finished but no _C library is in {build_dir}")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, target)


setup(
    ext_modules=[CMakeExtension("sqsd_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
)
