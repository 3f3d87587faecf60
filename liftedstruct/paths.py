"""Where things live: the repository, the Caffe install, pycaffe."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent


def caffe_root() -> Path:
    """The Caffe install prefix: $CAFFE_ROOT, else build/caffe in the repo."""
    return Path(os.environ.get("CAFFE_ROOT", REPO_ROOT / "build" / "caffe")).resolve()


def caffe_binary(name: str = "caffe") -> Path:
    """A program of the Caffe install (caffe, test.testbin, convert_imageset)."""
    path = caffe_root() / "bin" / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: build Caffe first with tools/setup.sh "
            "(or point CAFFE_ROOT at an install)")
    return path


def import_caffe(quiet: bool = True) -> ModuleType:
    """Import pycaffe from the Caffe install."""
    if quiet:
        os.environ.setdefault("GLOG_minloglevel", "2")
    python_dir = caffe_root() / "python"
    if not (python_dir / "caffe" / "_caffe.so").exists():
        raise FileNotFoundError(
            f"{python_dir}/caffe/_caffe.so not found: build Caffe first with "
            "tools/setup.sh (or point CAFFE_ROOT at an install)")
    if str(python_dir) not in sys.path:
        sys.path.insert(0, str(python_dir))
    import caffe

    return caffe
