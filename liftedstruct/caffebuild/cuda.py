"""The CUDA toolkit a --cuda build compiles with: $CUDA_HOME (default
/usr/local/cuda), or where the machine has none, one assembled from NVIDIA's
PyPI wheels (nvcc, runtime, cuBLAS, cuRAND, cuDNN, NCCL) pinned in
tools/cuda-wheels.txt."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from liftedstruct.caffebuild.source import BUILD_DIR, log, run
from liftedstruct.errors import BuildError
from liftedstruct.paths import REPO_ROOT

WHEELS_FILE = REPO_ROOT / "tools" / "cuda-wheels.txt"
WHEEL_DIR = BUILD_DIR / "cuda-wheels"
WHEEL_TOOLKIT = BUILD_DIR / "cuda-toolkit"


def system_toolkit() -> Path | None:
    toolkit = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    return toolkit if (toolkit / "bin" / "nvcc").exists() else None


def toolkit(from_wheels: bool) -> Path:
    """The toolkit folder to build with (bin/nvcc, include, lib64)."""
    found = None if from_wheels else system_toolkit()
    if found is not None:
        return found
    if not from_wheels:
        log(f"no nvcc under {os.environ.get('CUDA_HOME', '/usr/local/cuda')}: "
            "using the CUDA wheels from PyPI")
    return wheel_toolkit()


def wheel_toolkit() -> Path:
    """pip-install the pinned wheels into build/cuda-wheels and lay them out
    as a toolkit in build/cuda-toolkit."""
    from liftedstruct.caffebuild.wheel_toolkit import assemble_toolkit

    stamp = WHEEL_DIR / ".pins"
    pins = WHEELS_FILE.read_text()
    if not (stamp.exists() and stamp.read_text() == pins):
        # --no-deps: every wheel is pinned; their own dependencies would pull newer
        # CUDA components (nvcc 13.0 with cicc 13.5, a cudart newer than driver 580).
        run([sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--no-deps",
             "--target", str(WHEEL_DIR), "-r", str(WHEELS_FILE)])
        stamp.write_text(pins)
    return assemble_toolkit(WHEEL_DIR, WHEEL_TOOLKIT)


def cmake_entries(root: Path, cudnn: bool) -> dict[str, str]:
    """CMake cache entries that point Caffe's FindCUDA (and cuDNN) at root."""
    if not (root / "bin" / "nvcc").exists():
        raise BuildError(f"--cuda: no nvcc at {root / 'bin' / 'nvcc'} (set CUDA_HOME)")
    entries = {"CUDA_TOOLKIT_ROOT_DIR": str(root)}
    for name in ("cublas", "curand"):
        if not (root / "lib64" / f"lib{name}.so").exists():
            raise BuildError(f"--cuda: {root / 'lib64'} has no lib{name}.so; install the "
                             "toolkit's libraries or build with --cuda-from-wheels")
    if cudnn:
        entries.update({"CUDNN_INCLUDE": str(root / "include"),
                        "CUDNN_LIBRARY": str(root / "lib64" / "libcudnn.so")})
    return entries
