"""The CUDA variant of our layers compiles with nvcc (no GPU needed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cuda_compile import check_cuda_compile
from liftedstruct.caffebuild.source import LAYERS_DIR


@pytest.mark.slow
def test_layers_compile_with_nvcc():
    have_nvcc = shutil.which("nvcc") or Path(
        os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc").exists()
    if not have_nvcc and not os.environ.get("LIFTED_REQUIRE_NVCC"):
        pytest.skip("no CUDA toolkit here (CI sets LIFTED_REQUIRE_NVCC=1)")
    objects = check_cuda_compile()
    sources = list((LAYERS_DIR / "src").rglob("*.cu")) + list(
        (LAYERS_DIR / "src").rglob("*.cpp"))
    assert len(objects) >= len(sources) >= 6
    assert {"data_layer.cpp.o", "data_transformer.cpp.o"} <= {obj.name for obj in objects}
    if Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include", "cudnn.h").exists():
        names = {obj.name for obj in objects}
        assert {"cudnn_conv_layer.cpp.o", "cudnn_conv_layer.cu.o", "cudnn.cpp.o"} <= names
    for obj in objects:
        assert obj.stat().st_size > 0
