"""The CUDA toolkit assembled from PyPI wheels, on a fake wheel tree (the real
wheels are 1.1 GB; Dockerfile.cuda builds with them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from liftedstruct.caffebuild import wheel_toolkit as wt

CORE = [
    "cu13/bin/nvcc",
    "cu13/bin/nvcc.profile",
    "cu13/bin/ptxas",
    "cu13/bin/fatbinary",
    "cu13/bin/nvlink",
    "cu13/bin/cudafe++",
    "cu13/bin/crt/link.stub",
    "cu13/nvvm/bin/cicc",
    "cu13/nvvm/libdevice/libdevice.10.bc",
    "cu13/include/cuda_runtime.h",
    "cu13/include/crt/host_config.h",
    "cu13/include/cccl/thrust/version.h",
    "cu13/include/nvvm.h",
    "cu13/lib/libcudart.so.13",
    "cu13/lib/libcudart_static.a",
    "cu13/lib/libcudadevrt.a",
    "cu13/lib/libnvvm.so.4",
    "cu13/lib/libcublas.so.13",
    "cudnn/include/cudnn.h",
    "cudnn/lib/libcudnn.so.9",
    "nccl/include/nccl.h",
    "nccl/lib/libnccl.so.2",
]


def make_wheels(root: Path, files: list[str] = CORE) -> Path:
    for rel in files:
        path = root / "nvidia" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    for name, version in [("nvidia-cuda-nvcc", "13.0.88"), ("nvidia-nccl-cu13", "2.28.9")]:
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def test_layout(tmp_path: Path) -> None:
    wheels = make_wheels(tmp_path / "site")
    dest = wt.assemble_toolkit(wheels, tmp_path / "tk")
    assert dest == (tmp_path / "tk").resolve()
    for rel in [
        "bin/nvcc",
        "bin/crt/link.stub",
        "nvvm/bin/cicc",
        "nvvm/lib64/libnvvm.so",
        "nvvm/include/nvvm.h",
        "include/cudnn.h",
        "include/nccl.h",
        "include/cccl/thrust/version.h",
        "lib64/libcudart.so",
        "lib64/libcublas.so",
        "lib/libnccl.so",
        "targets/x86_64-linux/include/cuda_runtime.h",
        "targets/x86_64-linux/lib/libcudnn.so",
    ]:
        assert (dest / rel).exists(), rel
    # real folders, symlinked files, relative links
    assert not (dest / "bin").is_symlink()
    assert (dest / "bin" / "nvcc").is_symlink()
    assert not os.path.isabs(os.readlink(dest / "bin" / "nvcc"))
    assert os.readlink(dest / "lib64" / "libcudart.so") == "libcudart.so.13"
    versions = json.loads((dest / "version.json").read_text())
    assert versions["cuda_nvcc"]["version"] == "13.0.88"
    assert versions["nccl"]["version"] == "2.28.9"
    assert versions["cuda"]["version"] == "13.0.88"


def test_rebuild_and_refuse_foreign(tmp_path: Path) -> None:
    wheels = make_wheels(tmp_path / "site")
    dest = tmp_path / "tk"
    wt.assemble_toolkit(wheels, dest)
    wt.assemble_toolkit(wheels, dest)  # replaces its own output
    assert (wheels / "nvidia" / "cu13" / "bin" / "nvcc").is_file()  # wheels untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(wt.ToolkitError, match="not empty"):
        wt.assemble_toolkit(wheels, other)


def test_missing_nvvm(tmp_path: Path) -> None:
    files = [f for f in CORE if "/nvvm/" not in f]
    wheels = make_wheels(tmp_path / "site", files)
    with pytest.raises(wt.ToolkitError, match="nvvm/bin/cicc"):
        wt.assemble_toolkit(wheels, tmp_path / "tk")


def test_components_sharing_a_folder_merge(tmp_path: Path, capsys) -> None:
    """Two wheels with the same folder (cu13's include/crt and another's) give
    one real folder holding both; what a build may want but lacks is named."""
    files = [f for f in CORE if "cudnn" not in f] + ["nccl/include/crt/extra.h"]
    wheels = make_wheels(tmp_path / "site", files)
    tk = wt.build_toolkit(wheels, tmp_path / "tk", relative_links=False)
    crt = tk.root / "include" / "crt"
    assert crt.is_dir() and not crt.is_symlink()  # two components: merged folder
    assert (crt / "host_config.h").exists() and (crt / "extra.h").exists()
    assert os.path.isabs(os.readlink(crt / "extra.h"))
    assert "include/cudnn.h" in tk.missing_optional
    wt.assemble_toolkit(wheels, tmp_path / "tk2")
    assert "include/cudnn.h" in capsys.readouterr().out


def test_clash(tmp_path: Path) -> None:
    wheels = make_wheels(tmp_path / "site", [*CORE, "cudnn/include/cuda_runtime.h"])
    (wheels / "nvidia" / "cudnn" / "include" / "cuda_runtime.h").write_text("different")
    with pytest.raises(wt.ToolkitError, match="different"):
        wt.assemble_toolkit(wheels, tmp_path / "tk")


def test_venv_root(tmp_path: Path) -> None:
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    make_wheels(site)
    assert wt.find_nvidia_root(tmp_path / "venv") == (site / "nvidia").resolve()
    assert (wt.assemble_toolkit(tmp_path / "venv", tmp_path / "tk") / "bin" / "nvcc").exists()
    with pytest.raises(wt.ToolkitError, match="no nvidia"):
        wt.assemble_toolkit(tmp_path / "nowhere", tmp_path / "tk2")
