"""Build driver: runs CMake (CMakeLists.txt describes the native code) and copies the built
sqsd_fast._C library into the package.

    pip install .                          # builds against torch==2.13.0 (pyproject.toml)
    pip install --no-build-isolation .     # builds against the torch already installed

The wheel requires the torch minor release it was built with (a C++ extension is tied to
torch's ABI), and its library carries no RUNPATH: `import torch` loads the libraries first.

Environment:
    SQSD_FAST_NO_CUDA=1       skip the CUDA kernels even where nvcc and a CUDA torch exist
    MAX_JOBS=N                parallel compile jobs (default: all cores)
    TORCH_CUDA_ARCH_LIST      e.g. "8.0;9.0" (default: the visible GPUs, else torch's list)
    SQSD_FAST_BUILD_TYPE      CMake build type (default Release)
    SQSD_FAST_BUILD_DIR       CMake build folder (default build/cmake-<python>-<torch>-<hash>)
"""

from __future__ import annotations

import hashlib
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


def _toolkit_gap(nvcc: str) -> str | None:
    """What the CUDA toolkit beside nvcc lacks for linking against torch, or None.

    torch's CMake config links the runtime and NVRTC; an nvcc-only install (enough for
    `make cuda-check`) cannot link the extension.
    """
    home = Path(nvcc).resolve().parent.parent
    libs = [home / "lib64", home / "lib", *home.glob("targets/*/lib")]
    for needed in ("cudart", "nvrtc"):
        if not any(next(folder.glob(f"lib{needed}.so*"), None) for folder in libs):
            return f"no lib{needed}.so under {home}"
    if not (home / "include" / "cuda_runtime.h").exists():
        return f"no cuda_runtime.h under {home / 'include'}"
    return None


def _cuda_wanted(torch) -> bool:
    """CUDA kernels need nvcc and a CUDA build of torch (to link against), unless opted out."""
    if os.environ.get("SQSD_FAST_NO_CUDA", "0") not in ("", "0"):
        return False
    nvcc = _find_nvcc()
    if torch.version.cuda is None or nvcc is None:
        return False
    # Kernels built by one CUDA major version next to a torch built for another would load
    # two CUDA runtimes into the process; build the CPU kernels only and say so.
    gap = _toolkit_gap(nvcc)
    if gap:
        print(f"sqsd_fast: skipping the CUDA kernels: the CUDA toolkit is incomplete ({gap}); "
              "point CUDA_HOME at a full toolkit.", file=sys.stderr)
        return False
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


def _torch_requirement() -> str:
    """The torch this build links against, as a requirement: same minor release, not older.

    A build without torch importable (`setup.py --help`, a metadata query) asks for any torch.
    """
    try:
        import torch
    except ImportError:
        return "torch"
    release = torch.__version__.split("+")[0]
    major, minor = (int(part) for part in release.split(".")[:2])
    return f"torch>={release},<{major}.{minor + 1}"


_BUILD_KEY_FILE = "sqsd_fast_build_key.txt"


def _build_key(torch) -> str:
    """What a CMake cache depends on: the interpreter, the torch it finds and where it is."""
    return "\n".join([sys.executable, sys.version, torch.__version__,
                      str(Path(torch.__file__).resolve().parent)]) + "\n"


def _build_dir(torch) -> Path:
    """A CMake folder per interpreter and torch, kept between builds for quick rebuilds.

    A CMake cache records absolute paths: reused by another interpreter or torch (a second
    venv, pip's isolated build environment) it mixes two installs. Folders whose torch is
    gone (pip removes its isolated environments) are deleted here.
    """
    if os.environ.get("SQSD_FAST_BUILD_DIR"):
        return Path(os.environ["SQSD_FAST_BUILD_DIR"]).resolve()
    key = _build_key(torch)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    release = torch.__version__.replace("+", "-")
    root = ROOT / "build"
    for stale in root.glob("cmake-*"):
        recorded = stale / _BUILD_KEY_FILE
        torch_dir = recorded.read_text().splitlines()[-1] if recorded.exists() else ""
        if stale.is_dir() and not Path(torch_dir).is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    build_dir = root / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}-torch{release}-{digest}"
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / _BUILD_KEY_FILE).write_text(key)
    return build_dir


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # a build requirement; imported late so `setup.py --help` works without it

        # A kept folder (not setuptools' temporary one) keeps rebuilds incremental.
        build_dir = _build_dir(torch)
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
            nvcc = Path(_find_nvcc()).resolve()
            # torch's CMake config looks for the toolkit with CMake's old FindCUDA, which
            # guesses its root from PATH; name the root of the nvcc chosen here instead.
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
                     f"-DCUDA_TOOLKIT_ROOT_DIR={nvcc.parent.parent}"]
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
    install_requires=[_torch_requirement(), "numpy", "transformers", "peft", "accelerate", "gguf",
                      "datasets", "tqdm", "pyarrow", "matplotlib"],
    ext_modules=[CMakeExtension("sqsd_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
)
