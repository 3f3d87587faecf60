"""Assemble a CUDA-toolkit-shaped directory out of NVIDIA's PyPI wheels.

NVIDIA publishes the CUDA 13 compiler and libraries as wheels (``nvidia-cuda-nvcc``,
``nvidia-cuda-crt``, ``nvidia-nvvm``, ``nvidia-cuda-cccl``, ``nvidia-cuda-runtime``,
``nvidia-cublas``, ``nvidia-curand``, ``nvidia-cudnn-cu13``, ``nvidia-nccl-cu13``...).
Installed with ``pip install --target DIR`` (or into a venv) they land in::

    DIR/nvidia/cu13/{bin,include,lib,nvvm}   # nvcc, crt, nvvm, cccl, cudart, cublas, curand
    DIR/nvidia/cudnn/{include,lib}           # cuDNN
    DIR/nvidia/nccl/{include,lib}            # NCCL

That is close to a toolkit but not close enough for nvcc or CMake's FindCUDA: wheels
cannot hold symlinks, so there is no ``libcudart.so`` (only ``libcudart.so.13``), no
``lib64``, and cuDNN/NCCL live outside the tree.  :func:`assemble_toolkit` builds a
``dest`` folder laid out like ``/usr/local/cuda``::

    dest/bin/         nvcc, ptxas, nvlink, fatbinary, cudafe++, bin2c, crt/, nvcc.profile
    dest/nvvm/        bin/cicc, libdevice/libdevice.10.bc, lib64/libnvvm.so
    dest/include/     every header of every component (cccl/ holds thrust, cub, cuda/std)
    dest/lib64/       every library, plus unversioned ``libX.so -> libX.so.N`` links
    dest/lib          -> lib64
    dest/targets/<triplet>/{include,lib} -> ../../include, ../../lib64
    dest/version.json component versions (nvcc reports the CUDA version itself)

Everything in it is a symlink into the installed wheels except the folders themselves,
``version.json`` and the unversioned library links; nothing in the wheel folder is
changed.  This works because nvcc finds ``nvcc.profile`` and its helper tools through
the path it was *invoked* by (``argv[0]`` or the ``PATH`` entry), not through
``/proc/self/exe``: ``dest/bin/nvcc`` being a symlink into the wheel is fine as long as
``dest/bin`` itself is a real directory.  Consequence: call ``dest/bin/nvcc`` (or put
``dest/bin`` on ``PATH``); a symlink to nvcc placed anywhere else (``/usr/local/bin``)
makes nvcc look for ``nvcc.profile`` beside that link and compile without any include
or library paths.

Standard library only.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from liftedstruct.errors import BuildError

#: File written into ``dest`` so that a later run may safely replace it.
MARKER = ".wheel_toolkit.json"

# Component folders under ``nvidia/``: CUDA 13 puts nearly everything in ``cu13``,
# merged first; the others (cudnn, nccl, ...) after it, in name order.
_PREFERRED_ORDER = ("cu13",)

# Sub-folders of a component folder and where they go in the toolkit.
_SUBDIR_MAP = {
    "bin": "bin",
    "include": "include",
    "lib": "lib64",
    "lib64": "lib64",
    "nvvm": "nvvm",
}

# Things nvcc cannot work without, relative to ``dest``.
_REQUIRED = (
    "bin/nvcc",
    "bin/nvcc.profile",
    "bin/ptxas",
    "bin/fatbinary",
    "bin/nvlink",
    "bin/cudafe++",
    "bin/crt/link.stub",
    "nvvm/bin/cicc",
    "nvvm/libdevice",
    "include/cuda_runtime.h",
    "include/crt/host_config.h",
    "lib64/libcudart.so",
    "lib64/libcudart_static.a",
    "lib64/libcudadevrt.a",
)

# Things a CUDA project such as Caffe typically wants; reported, not required.
_OPTIONAL = (
    "include/cccl/thrust/version.h",
    "include/cublas_v2.h",
    "lib64/libcublas.so",
    "lib64/libcublasLt.so",
    "include/curand.h",
    "lib64/libcurand.so",
    "include/cudnn.h",
    "include/cudnn_version.h",
    "lib64/libcudnn.so",
    "include/nccl.h",
    "lib64/libnccl.so",
)

# Wheel project name -> key used in the toolkit's own version.json.
_VERSION_KEYS = {
    "nvidia-cuda-nvcc": "cuda_nvcc",
    "nvidia-cuda-crt": "cuda_crt",
    "nvidia-nvvm": "libnvvm",
    "nvidia-cuda-cccl": "cuda_cccl",
    "nvidia-cuda-runtime": "cuda_cudart",
    "nvidia-cublas": "libcublas",
    "nvidia-curand": "libcurand",
    "nvidia-cudnn": "cudnn",
    "nvidia-nccl": "nccl",
}

_SONAME_RE = re.compile(r"^(?P<base>lib.+?\.so)(?P<ver>(?:\.\d+)+)$")


class ToolkitError(BuildError):
    """The wheels do not make a usable toolkit, or ``dest`` cannot be written."""


@dataclass
class Toolkit:
    """What :func:`assemble_toolkit` built."""

    root: Path
    nvidia_root: Path
    target: str
    versions: dict[str, str] = field(default_factory=dict)
    missing_optional: list[str] = field(default_factory=list)


def find_nvidia_root(wheel_dir: Path) -> Path:
    """Return the ``nvidia`` namespace folder for ``wheel_dir``.

    ``wheel_dir`` may be a ``pip --target`` folder, a ``site-packages`` folder, a venv
    (``lib/python3.*/site-packages`` is searched) or the ``nvidia`` folder itself.
    """
    wheel_dir = Path(wheel_dir)
    candidates = [wheel_dir / "nvidia", wheel_dir]
    candidates += sorted(wheel_dir.glob("lib/python3*/site-packages/nvidia"))
    candidates += sorted(wheel_dir.glob("lib64/python3*/site-packages/nvidia"))
    for cand in candidates:
        if (
            cand.is_dir()
            and cand.name == "nvidia"
            and any(
                (cand / comp / sub).is_dir() for comp in _iter_names(cand) for sub in _SUBDIR_MAP
            )
        ):
            return cand.resolve()
    raise ToolkitError(f"no nvidia/<component>/{{bin,include,lib}} folders under {wheel_dir}")


def _iter_names(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def _component_dirs(nvidia_root: Path) -> list[Path]:
    names = [n for n in _iter_names(nvidia_root) if not n.startswith((".", "__"))]
    ordered = [n for n in _PREFERRED_ORDER if n in names]
    ordered += [n for n in names if n not in ordered]
    return [nvidia_root / n for n in ordered]


def _target_triplet() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64-linux"
    if machine in ("aarch64", "arm64"):
        return "sbsa-linux"
    raise ToolkitError(f"unsupported machine {machine!r} (only x86_64 and aarch64 Linux)")


def _link(target: Path, link: Path, relative: bool) -> None:
    """Create ``link`` pointing at ``target`` (absolute, or relative to ``link``'s folder)."""
    dest = os.path.relpath(target, link.parent) if relative else str(target)
    link.symlink_to(dest)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _merge(src: Path, dst: Path, relative: bool) -> None:
    """Populate ``dst`` with links to ``src``'s entries, merging with what is already there.

    A folder is linked whole while no other component provides the same folder; on a clash
    the link is replaced by a real folder and both sides are merged entry by entry.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        out = dst / entry.name
        if not out.exists() and not out.is_symlink():
            _link(entry, out, relative)
            continue
        if entry.is_dir() and out.is_dir():
            if out.is_symlink():  # split the earlier whole-folder link into a real folder
                previous = out.resolve()
                out.unlink()
                _merge(previous, out, relative)
            _merge(entry, out, relative)
        elif _same_file(entry, out):
            continue
        else:
            raise ToolkitError(f"two wheels provide different {out.name!r}: {entry} and {out}")


def _add_unversioned_links(lib64: Path) -> None:
    """``libfoo.so -> libfoo.so.N`` for every versioned library (highest version wins)."""
    best: dict[str, tuple[tuple[int, ...], str]] = {}
    for entry in lib64.iterdir():
        m = _SONAME_RE.match(entry.name)
        if not m:
            continue
        ver = tuple(int(x) for x in m.group("ver").strip(".").split("."))
        base = m.group("base")
        if base not in best or ver > best[base][0]:
            best[base] = (ver, entry.name)
    for base, (_, name) in sorted(best.items()):
        link = lib64 / base
        if not link.exists() and not link.is_symlink():
            link.symlink_to(name)


def _wheel_versions(nvidia_root: Path) -> dict[str, str]:
    """Map version.json keys to versions, read from the ``*.dist-info`` beside ``nvidia``."""
    versions: dict[str, str] = {}
    for meta in sorted(nvidia_root.parent.glob("nvidia_*.dist-info/METADATA")):
        name = version = ""
        with meta.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                if key == "Name":
                    name = value.strip().lower().replace("_", "-")
                elif key == "Version":
                    version = value.strip()
        if not name or not version:
            continue
        stem = re.sub(r"-cu\d+$", "", name)
        key = _VERSION_KEYS.get(stem, stem.removeprefix("nvidia-").replace("-", "_"))
        versions[key] = version
    return versions


def _write_version_json(dest: Path, versions: dict[str, str]) -> None:
    data: dict[str, dict[str, str]] = {}
    nvcc = versions.get("cuda_nvcc")
    if nvcc:
        # The real file says e.g. "13.0.2" (the toolkit release); the wheels only tell the
        # component versions, so the nvcc version stands in.  CMake's FindCUDA ignores
        # this file (it parses `nvcc --version`); it is here for tools that read it.
        data["cuda"] = {"name": "CUDA SDK", "version": nvcc}
    for key, version in sorted(versions.items()):
        data[key] = {"name": key, "version": version}
    (dest / "version.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _prepare_dest(dest: Path) -> None:
    if dest.is_symlink() or dest.is_file():
        raise ToolkitError(f"{dest} exists and is not a folder")
    if dest.exists():
        if (dest / MARKER).is_file():
            shutil.rmtree(dest)  # only unlinks our symlinks; never follows them
        elif any(dest.iterdir()):
            raise ToolkitError(f"{dest} is not empty and was not made by {__name__}")
    dest.mkdir(parents=True, exist_ok=True)


def check_toolkit(dest: Path) -> tuple[list[str], list[str]]:
    """Return (missing required paths, missing optional paths) of a toolkit folder."""
    dest = Path(dest)
    missing = [p for p in _REQUIRED if not (dest / p).exists()]
    missing_optional = [p for p in _OPTIONAL if not (dest / p).exists()]
    return missing, missing_optional


def build_toolkit(wheel_dir: Path, dest: Path, *, relative_links: bool = True) -> Toolkit:
    """Like :func:`assemble_toolkit` but returns a :class:`Toolkit` with details."""
    nvidia_root = find_nvidia_root(Path(wheel_dir))
    dest = Path(os.path.abspath(dest))
    if dest == nvidia_root or nvidia_root in dest.resolve().parents:
        raise ToolkitError("dest must not be inside the wheel folder's nvidia/ tree")
    _prepare_dest(dest)
    dest = dest.resolve()  # so relative links are computed between real paths
    (dest / MARKER).write_text(
        json.dumps({"nvidia_root": str(nvidia_root)}, indent=2) + "\n", encoding="utf-8"
    )

    for comp in _component_dirs(nvidia_root):
        for sub, out in _SUBDIR_MAP.items():
            if (comp / sub).is_dir():
                _merge(comp / sub, dest / out, relative_links)

    lib64 = dest / "lib64"
    lib64.mkdir(exist_ok=True)
    _add_unversioned_links(lib64)
    (dest / "include").mkdir(exist_ok=True)

    # nvvm/lib64 + nvvm/include as in a real toolkit (libnvvm.so ships in lib/).
    nvvm = dest / "nvvm"
    if nvvm.is_dir() and not nvvm.is_symlink() and (lib64 / "libnvvm.so").exists():
        (nvvm / "lib64").mkdir(exist_ok=True)
        for name in sorted(os.listdir(lib64)):
            if name.startswith("libnvvm.so"):
                _link(lib64 / name, nvvm / "lib64" / name, relative=True)
        if (dest / "include" / "nvvm.h").exists() and not (nvvm / "include").exists():
            (nvvm / "include").mkdir()
            _link(dest / "include" / "nvvm.h", nvvm / "include" / "nvvm.h", relative=True)

    (dest / "lib").symlink_to("lib64")
    target = _target_triplet()
    tdir = dest / "targets" / target
    tdir.mkdir(parents=True)
    (tdir / "include").symlink_to(os.path.join("..", "..", "include"))
    (tdir / "lib").symlink_to(os.path.join("..", "..", "lib64"))

    versions = _wheel_versions(nvidia_root)
    _write_version_json(dest, versions)

    missing, missing_optional = check_toolkit(dest)
    if missing:
        hint = (
            " (nvvm/bin/cicc comes from nvidia-nvvm, include/crt from nvidia-cuda-crt,"
            " libcudart*/libcudadevrt from nvidia-cuda-runtime)"
        )
        raise ToolkitError(f"toolkit in {dest} lacks {', '.join(missing)}{hint}")
    return Toolkit(dest, nvidia_root, target, versions, missing_optional)


def assemble_toolkit(wheel_dir: Path, dest: Path) -> Path:
    """Build a CUDA toolkit folder at ``dest`` from wheels installed in ``wheel_dir``.

    ``dest`` is created (or replaced, if an earlier run made it); links are relative, so
    the wheel folder and ``dest`` may move together.  Returns ``dest`` as an absolute path:
    use it as ``CUDA_TOOLKIT_ROOT_DIR`` / ``CUDA_PATH`` and call ``dest/bin/nvcc``.
    Raises :class:`ToolkitError` if nvcc's own needs (nvcc, crt, nvvm/cicc, cudart) are
    not all there, and prints the optional pieces (cuBLAS, cuRAND, cuDNN, NCCL) it lacks.
    """
    toolkit = build_toolkit(wheel_dir, dest)
    if toolkit.missing_optional:
        print(f"[build_caffe] the CUDA toolkit in {toolkit.root} has no "
              f"{', '.join(toolkit.missing_optional)}", flush=True)
    return toolkit.root
