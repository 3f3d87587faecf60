"""Configure, build and install Caffe with CMake, keyed on everything the
build depends on so that an unchanged tree is not rebuilt."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path

from liftedstruct.caffebuild import cuda, gtests, opencv
from liftedstruct.caffebuild.source import (
    BUILD_DIR,
    CAFFE_SOURCE,
    LAYERS_DIR,
    log,
    prepare_tree,
    pristine_source,
    run,
    tree_hash,
)
from liftedstruct.files import atomic_write_text, read_json
from liftedstruct.paths import caffe_root

# Under the install prefix: the folder Caffe's test binary runs in.
TEST_WORKDIR = Path("share") / "caffe"
STAMP = ".build-stamp.json"


@dataclass
class BuildOptions:
    cuda: bool = False
    cudnn: bool = False
    nccl: bool = False
    cuda_arch: list[str] = field(default_factory=lambda: ["90"])
    cuda_from_wheels: bool = False
    all_tests: bool = False
    # The portable kit's build: the minimal OpenCV of liftedstruct/caffebuild/opencv.py,
    # no pycaffe, and only the libraries that are used linked in.
    kit: bool = False
    jobs: int = os.cpu_count() or 2
    build_type: str = "Release"

    @property
    def variant(self) -> str:
        if self.kit:
            return "kit" if self.cuda else "kit-cpu"
        return ("cudnn" if self.cudnn else "cuda") if self.cuda else "cpu"


# Options that change how fast Caffe builds, not what is built.
NOT_IN_KEY = ("jobs",)


def build_key(source_id: str, options: BuildOptions) -> str:
    """Hash of everything the build depends on that this project controls
    (not the number of parallel jobs: another core count builds the same)."""
    digest = hashlib.sha256()
    digest.update(source_id.encode())
    settings = {k: v for k, v in asdict(options).items() if k not in NOT_IN_KEY}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(tree_hash(LAYERS_DIR).encode())
    digest.update(tree_hash(Path(__file__).parent).encode())
    if options.cuda:
        digest.update(cuda.WHEELS_FILE.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


OPENMP_FLAG = "-fopenmp"


def cmake_arguments(work: Path, prefix: Path, options: BuildOptions) -> list[str]:
    python_lib = Path(sysconfig.get_config_var("LIBDIR") or "") / (
        sysconfig.get_config_var("LDLIBRARY") or "")
    entries = {
        "CMAKE_BUILD_TYPE": options.build_type,
        # Without it GCC keeps a branch wherever one side of a select does
        # arithmetic (it could trap), and on activations, whose signs are as
        # good as random, the branch mispredicts: ReLU's CPU backward pass ran
        # 15x slower. Caffe reads no floating-point exception flags, and the
        # values computed are the same.
        #
        # OpenMP: the CPU convolution's chunks and max pooling's planes run on
        # every core (patches 0015, 0016); OMP_NUM_THREADS=1 makes it serial.
        "CMAKE_CXX_FLAGS": f"-fno-trapping-math {OPENMP_FLAG}",
        "CMAKE_SHARED_LINKER_FLAGS": OPENMP_FLAG,
        "CMAKE_EXE_LINKER_FLAGS": OPENMP_FLAG,
        "CMAKE_INSTALL_PREFIX": str(prefix),
        "BLAS": "Open",
        "BUILD_docs": "OFF",
        "BUILD_matlab": "OFF",
        "BUILD_python": "ON",
        "python_version": "3",
        "PYTHON_EXECUTABLE": sys.executable,
        "PYTHON_INCLUDE_DIR": sysconfig.get_paths()["include"],
        "PYTHON_LIBRARY": str(python_lib),
        "USE_OPENCV": "ON",
        "USE_LMDB": "ON",
        "USE_LEVELDB": "ON",
        "USE_HDF5": "ON",
        "USE_CUDNN": "ON" if options.cudnn else "OFF",
        "USE_NCCL": "ON" if options.nccl else "OFF",
        "CPU_ONLY": "OFF" if options.cuda else "ON",
        "BUILD_only_tests": "" if options.all_tests
        else gtests.cmake_selection(options.cudnn),
    }
    if options.kit:
        entries.update({
            "OpenCV_DIR": str(opencv.config_dir()),
            "BUILD_python": "OFF",
            "CMAKE_SHARED_LINKER_FLAGS": f"-Wl,--as-needed {OPENMP_FLAG}",
            "CMAKE_EXE_LINKER_FLAGS": f"-Wl,--as-needed {OPENMP_FLAG}",
        })
    if options.cuda:
        arch = " ".join(options.cuda_arch)
        entries.update({"CUDA_ARCH_NAME": "Manual", "CUDA_ARCH_BIN": arch,
                        "CUDA_ARCH_PTX": options.cuda_arch[-1]})
        root = cuda.toolkit(options.cuda_from_wheels)
        entries.update(cuda.cmake_entries(root, options.cudnn))
        if options.nccl:
            entries.update({"NCCL_INCLUDE_DIR": str(root / "include"),
                            "NCCL_LIBRARIES": str(root / "lib64" / "libnccl.so")})
    args = ["cmake", "-S", str(work), "-B", str(work / "_b"), "-Wno-dev"]
    args += [f"-D{key}={value}" for key, value in entries.items()]
    return args


def install_extras(work: Path, prefix: Path) -> None:
    """The test binary and its data go into the prefix too. Caffe's tests
    open src/caffe/test/test_data/... relative to the working directory, so
    the data keeps that path under TEST_WORKDIR."""
    testbin = work / "_b" / "test" / "test.testbin"
    shutil.copy2(testbin, prefix / "bin" / "test.testbin")
    rel = Path("src") / "caffe" / "test" / "test_data"
    dest = prefix / TEST_WORKDIR / rel
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(work / rel, dest)


def installed_options(prefix: Path | None = None) -> dict:
    """The options the install at prefix was built with ({} if none)."""
    stamp = (prefix or caffe_root()) / STAMP
    recorded = read_json(stamp, "the Caffe build's record") if stamp.exists() else {}
    return recorded.get("options", {}) if isinstance(recorded, dict) else {}


def build(caffe_src: Path | None, options: BuildOptions, force: bool = False,
          prefix: Path | None = None) -> Path:
    """Build and install Caffe with our layers into prefix (default: the
    project's Caffe install); return the prefix."""
    prefix = prefix or caffe_root()
    pristine, source_id = pristine_source(caffe_src)
    key = build_key(source_id, options)
    stamp = prefix / STAMP
    if not force and stamp.exists():
        try:
            recorded = json.loads(stamp.read_text())
        except (OSError, ValueError):
            recorded = {}  # a damaged record: build again
        if isinstance(recorded, dict) and recorded.get("key") == key:
            log(f"{prefix} is up to date (key {key[:12]})")
            return prefix
    if options.kit:
        opencv.build_opencv(options.jobs)
    work = BUILD_DIR / f"caffe-{options.variant}"
    prepare_tree(pristine, work)
    (work / "_b").mkdir(parents=True, exist_ok=True)
    log_path = BUILD_DIR / f"build-{options.variant}.log"
    log_path.write_text("")
    log(f"full output in {log_path}")
    run(cmake_arguments(work, prefix, options), log_path=log_path)
    run(["cmake", "--build", str(work / "_b"), "--parallel", str(options.jobs),
         "--target", "all", "test.testbin"], log_path=log_path)
    if stamp.exists():
        stamp.unlink()  # a half-updated prefix must not look current
    run(["cmake", "--install", str(work / "_b")], log_path=log_path)
    install_extras(work, prefix)
    record = {"key": key, "source": source_id, "options": asdict(options),
              "debian_package": f"{CAFFE_SOURCE.package} {CAFFE_SOURCE.version}"}
    atomic_write_text(stamp, json.dumps(record, indent=2) + "\n")
    log(f"installed into {prefix}")
    return prefix
