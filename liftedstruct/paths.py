"""Where things live: the repository, the Caffe install, pycaffe; and what
that install can do (a GPU needs a CUDA build)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from liftedstruct.errors import CaffeMissingError

REPO_ROOT = Path(__file__).resolve().parent.parent
NOT_BUILT = "build Caffe first with tools/setup.sh (or point CAFFE_ROOT at an install)"


def caffe_root() -> Path:
    """The Caffe install prefix: $CAFFE_ROOT, else build/caffe in the repo."""
    return Path(os.environ.get("CAFFE_ROOT", REPO_ROOT / "build" / "caffe")).resolve()


def caffe_root_label() -> str:
    """The Caffe install as a result file records it: its path inside this
    checkout (build/caffe), else $CAFFE_ROOT; never a machine's folder."""
    root = caffe_root()
    return str(root.relative_to(REPO_ROOT)) if root.is_relative_to(REPO_ROOT) \
        else "$CAFFE_ROOT"


def caffe_binary(name: str = "caffe") -> Path:
    """A program of the Caffe install (caffe, test.testbin, convert_imageset)."""
    path = caffe_root() / "bin" / name
    if not path.is_file():
        raise CaffeMissingError(f"{path} not found: {NOT_BUILT}")
    return path


def import_caffe(quiet: bool = True) -> ModuleType:
    """Import pycaffe from the Caffe install."""
    if quiet:
        os.environ.setdefault("GLOG_minloglevel", "2")
    python_dir = caffe_root() / "python"
    if not (python_dir / "caffe" / "_caffe.so").is_file():
        raise CaffeMissingError(f"{python_dir}/caffe/_caffe.so not found: {NOT_BUILT}")
    if str(python_dir) not in sys.path:
        sys.path.insert(0, str(python_dir))
    try:
        import caffe
    except ImportError as error:
        raise CaffeMissingError(f"{python_dir}: pycaffe does not import ({error}); "
                                "rebuild with tools/setup.sh") from error
    return caffe


def caffe_pb2() -> ModuleType:
    """pycaffe's protobuf module (Datum, NetParameter, SolverState, ...)."""
    import_caffe()
    from caffe.proto import caffe_pb2 as module

    return module


def read_prototxt(path: Path, what: str = "", message: str = "NetParameter"):
    """A Caffe text-format file (a net by default, "SolverParameter" for a
    solver) parsed in Python, so that a file Caffe would die on with a stack
    dump is a LiftedError naming it, its line and
    column, and what is wrong there."""
    from google.protobuf import text_format

    from liftedstruct.errors import LiftedError

    name = f"{what} {path}".strip()
    parsed = getattr(caffe_pb2(), message)()
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise LiftedError(f"{name}: not a text file ({error.reason}); give a .prototxt") \
            from error
    try:
        text_format.Merge(text, parsed)
    except text_format.ParseError as error:
        line, column = error.GetLine(), error.GetColumn()
        where = f"{name}:{line}:{column}" if line is not None else name
        detail = str(error).split(" : ", 1)[-1] if " : " in str(error) else str(error)
        raise LiftedError(f"{where}: not a valid Caffe {message} ({detail})") from error
    return parsed


def caffe_cpu_only() -> bool | None:
    """Whether the install is a CPU-only build, from the CaffeConfig.cmake
    that Caffe's CMake install writes (None when there is none)."""
    config = caffe_root() / "share" / "Caffe" / "CaffeConfig.cmake"
    if not config.is_file():
        return None
    found = re.search(r"set\(Caffe_CPU_ONLY\s+(\w+)\)", config.read_text())
    return None if found is None else found.group(1).upper() in ("ON", "TRUE", "1")


def use_device(caffe, gpu: int | None) -> None:
    """pycaffe on the CPU (gpu None) or on that GPU (checked by check_gpu)."""
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(gpu)
        caffe.set_mode_gpu()


def check_gpu(gpu: int | None, option: str = "--gpu") -> None:
    """Refuse a GPU the install cannot use, before any work: a negative id, a
    CPU-only build, or (on a CUDA build) a device `caffe device_query` fails on."""
    if gpu is None:
        return
    if gpu < 0:
        raise CaffeMissingError(f"{option} {gpu}: a GPU id is 0 or more (leave out "
                                f"{option} to run on the CPU)")
    if caffe_cpu_only():
        raise CaffeMissingError(
            f"{option} {gpu}: {caffe_root()} is a CPU-only build of Caffe; leave out "
            f"{option} to run on the CPU, or build with CUDA (tools/setup.sh --cuda)")
    try:
        query = subprocess.run([str(caffe_binary()), "device_query", f"-gpu={gpu}"],
                               capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as error:
        raise CaffeMissingError(f"{option} {gpu}: `caffe device_query` did not answer in "
                                "5 minutes; is the GPU driver working (nvidia-smi)?") from error
    if query.returncode != 0:
        lines = [line for line in (query.stderr + query.stdout).splitlines()
                 if "Check failed" in line or "error" in line.lower()]
        reason = lines[0].split("] ")[-1] if lines else f"exit {query.returncode}"
        raise CaffeMissingError(f"{option} {gpu}: Caffe cannot use this GPU ({reason})")
