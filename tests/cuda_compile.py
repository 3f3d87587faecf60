"""Test tooling: compile caffe_layers' CUDA sources with nvcc (their .cpp
files, Caffe's Data layer and transformer as patch 0011 changes them, and
Caffe's cuDNN layers through patch 0008, with the host compiler, without
CPU_ONLY) against the built tree's headers. Catches a .cu that does
not compile on a machine that can neither build nor run the whole CUDA Caffe
(CI). Needs a finished build for caffe.pb.h."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from liftedstruct.caffebuild.source import BUILD_DIR, LAYERS_DIR, run
from liftedstruct.errors import BuildError


def check_cuda_compile(variant: str = "cpu", arch: str = "90") -> list[Path]:
    """Compile each source; return the objects made."""
    toolkit = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    nvcc = shutil.which("nvcc") or str(toolkit / "bin" / "nvcc")
    if not Path(nvcc).exists():
        raise BuildError(f"no nvcc on PATH or at {toolkit / 'bin'}")
    work = BUILD_DIR / f"caffe-{variant}"
    generated = work / "_b" / "include"
    if not (generated / "caffe" / "proto" / "caffe.pb.h").exists():
        raise BuildError(f"{generated}/caffe/proto/caffe.pb.h missing: build first")
    out_dir = BUILD_DIR / "cuda-compile-check"
    out_dir.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{work / 'include'}", f"-I{work / 'src'}", f"-I{generated}",
                f"-I{toolkit / 'include'}"]
    sources = sorted((LAYERS_DIR / "src").rglob("*.cu")) + sorted(
        (LAYERS_DIR / "src").rglob("*.cpp"))
    # Patch 0011: the Data layer's threads take the CUDA device in a GPU build.
    sources += [work / "src" / "caffe" / "layers" / "data_layer.cpp",
                work / "src" / "caffe" / "data_transformer.cpp"]
    # Caffe's cuDNN layers with the cuDNN 8+ stand-ins (patch 0008), where
    # the toolkit has cuDNN's headers.
    cudnn = (toolkit / "include" / "cudnn.h").exists()
    if cudnn:
        sources += sorted((work / "src" / "caffe" / "layers").glob("cudnn_*.c*"))
        sources.append(work / "src" / "caffe" / "util" / "cudnn.cpp")
    objects = []
    defines = ["-DUSE_CUDNN"] if cudnn else []
    for source in sources:
        obj = out_dir / (source.name + ".o")
        if source.suffix == ".cu":
            run([nvcc, "-c", f"-arch=sm_{arch}", "-std=c++17", "-Xcompiler", "-fPIC",
                 *defines, *includes, str(source), "-o", str(obj)])
        else:
            # The .cpp files too, with the host compiler as Caffe's build does:
            # their CUDA-only paths (no STUB_GPU, the GPU typed test cases)
            # only compile without CPU_ONLY.
            # With OpenCV and LMDB, as Caffe's build has them (the data layer
            # tests compile only so).
            run([os.environ.get("CXX", "g++"), "-c", "-std=c++17", "-fPIC", *defines,
                 "-DUSE_OPENCV", "-DUSE_LMDB", "-I/usr/include/opencv4", *includes,
                 f"-I{toolkit / 'include' / 'cccl'}", str(source), "-o", str(obj)])
        objects.append(obj)
    return objects
