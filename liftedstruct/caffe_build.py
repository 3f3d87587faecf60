"""Fetch BVLC Caffe at a pinned version, overlay caffe_layers/, build, install.

Runs with the standard library only, so it works before the project's
virtual environment has anything in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from liftedstruct.files import atomic_write_text, file_digest
from liftedstruct.paths import REPO_ROOT, caffe_root

# Debian 11 source package whose orig tarball is the BVLC tree at 99bd997.
DEBIAN_PACKAGE = "caffe"
DEBIAN_VERSION = "1.0.0+git20180821.99bd997-8"
ORIG_TARBALL = "caffe_1.0.0+git20180821.99bd997.orig.tar.gz"
ORIG_SHA256 = "e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c"
BVLC_COMMIT_PREFIX = "99bd997"
DEB_SRC_LINE = (
    "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    "http://deb.debian.org/debian bullseye main\n"
)

LAYERS_DIR = REPO_ROOT / "caffe_layers"
PATCHES_DIR = LAYERS_DIR / "patches"
BUILD_DIR = REPO_ROOT / "build"

# Caffe's own gtests built beside ours: the layers and solver the nets use.
CAFFE_TESTS = [
    "contrastive_loss_layer",
    "inner_product_layer",
    "slice_layer",
    "concat_layer",
    "pooling_layer",
    "lrn_layer",
    "data_transformer",
    "data_layer",
    "gradient_based_solver",
    "net",
]
# With cuDNN also the tests of the layers it replaces (their CuDNN* cases).
CUDNN_TESTS = ["convolution_layer", "neuron_layer", "softmax_layer"]
OUR_TESTS = [
    "lifted_struct_similarity_softmax_loss_layer",
    "triplet_loss_layer",
]
# gtest filter for the tests above (CPU build: the GPU typed cases do not
# exist; Caffe's own tests of layers we use are included).
GTEST_FILTER = ":".join(
    f"*{name}*"
    for name in [
        "LiftedStructSimilaritySoftmaxLoss",
        "TripletLoss",
        "ContrastiveLoss",
        "InnerProduct",
        "Slice",
        "Concat",
        "Pooling",
        "LRN",
        "DataTransform",
        "DataLayer",
        "SGDSolver",
        "AdamSolver",
        "NetTest",
    ]
)


# Under the install prefix: the folder Caffe's test binary runs in.
TEST_WORKDIR = Path("share") / "caffe"


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


@dataclass
class BuildOptions:
    cuda: bool = False
    cudnn: bool = False
    cuda_arch: list[str] = field(default_factory=lambda: ["90"])
    cuda_libs_from_wheels: bool = False
    all_tests: bool = False
    jobs: int = os.cpu_count() or 2
    build_type: str = "Release"

    @property
    def variant(self) -> str:
        return ("cudnn" if self.cudnn else "cuda") if self.cuda else "cpu"


def log(message: str) -> None:
    print(f"[build_caffe] {message}", flush=True)


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None,
        log_path: Path | None = None) -> None:
    """Run a command; on failure raise with the tail of its output."""
    log(" ".join(str(c) for c in cmd))
    if log_path is None:
        result = subprocess.run(cmd, cwd=cwd, env=env)
        if result.returncode != 0:
            raise BuildError(f"command failed ({result.returncode}): {cmd[0]}")
        return
    with open(log_path, "ab") as out:
        result = subprocess.run(cmd, cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise BuildError(
            f"command failed ({result.returncode}): {' '.join(map(str, cmd))}\n"
            f"last lines of {log_path}:\n" + "\n".join(tail))


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def tree_files(root: Path) -> list[Path]:
    """Files under root, sorted, skipping version-control and build output."""
    skip = {".git", "build", "_b", "__pycache__"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        files.extend(Path(dirpath) / name for name in sorted(filenames))
    return sorted(files)


def tree_hash(root: Path) -> str:
    """sha256 over relative paths and contents: same tree, same hash."""
    digest = hashlib.sha256()
    for path in tree_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def apt_options(apt_dir: Path) -> list[str]:
    """apt-get options that keep the deb-src list and state in apt_dir."""
    return [
        "-o", f"Dir::Etc::SourceList={apt_dir / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={apt_dir / 'sources.list.d'}",
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o", f"Dir::Cache={apt_dir / 'cache'}",
        "-o", "Debug::NoLocking=1",
    ]


def fetch_debian_orig(download_dir: Path) -> Path:
    """apt-get source --download-only the pinned Debian package; verify it."""
    tarball = download_dir / ORIG_TARBALL
    if tarball.exists() and sha256_file(tarball) == ORIG_SHA256:
        return tarball
    apt_dir = BUILD_DIR / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text(DEB_SRC_LINE)
    download_dir.mkdir(parents=True, exist_ok=True)
    options = apt_options(apt_dir)
    run(["apt-get", *options, "update"])
    run(["apt-get", *options, "source", "--download-only",
         f"{DEBIAN_PACKAGE}={DEBIAN_VERSION}"], cwd=download_dir)
    if not tarball.exists():
        raise BuildError(f"apt-get source did not produce {tarball}")
    actual = sha256_file(tarball)
    if actual != ORIG_SHA256:
        raise BuildError(f"{tarball}: sha256 {actual}, expected {ORIG_SHA256}")
    return tarball


def caffe_tree_root(directory: Path) -> Path:
    """The folder holding Caffe's CMakeLists.txt: directory or its one child."""
    candidates = [directory] + sorted(p for p in directory.iterdir() if p.is_dir())
    for candidate in candidates:
        if (candidate / "CMakeLists.txt").exists() and (
                candidate / "src" / "caffe" / "proto" / "caffe.proto").exists():
            return candidate
    raise BuildError(f"{directory}: no Caffe source tree (CMakeLists.txt and "
                     "src/caffe/proto/caffe.proto) found")


def extract_tarball(tarball: Path, dest: Path) -> Path:
    """Extract into a temporary folder, rename into place, return the tree."""
    if dest.exists():
        shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return caffe_tree_root(dest)


def check_git_commit(source: Path) -> None:
    head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        raise BuildError(f"{source}: cannot read its git HEAD: {head.stderr.strip()}")
    commit = head.stdout.strip()
    if not commit.startswith(BVLC_COMMIT_PREFIX):
        raise BuildError(
            f"{source}: checkout is at {commit[:12]}, but this project pins BVLC "
            f"commit {BVLC_COMMIT_PREFIX}; run git -C {source} checkout "
            f"{BVLC_COMMIT_PREFIX}")


def pristine_source(caffe_src: Path | None) -> tuple[Path, str]:
    """The pristine BVLC tree and a string that identifies it."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    if caffe_src is None:
        tarball = fetch_debian_orig(BUILD_DIR / "download")
        dest = BUILD_DIR / f"src-{BVLC_COMMIT_PREFIX}"
        stamp = dest / ".extracted-from"
        if not (stamp.exists() and stamp.read_text() == ORIG_SHA256):
            extract_tarball(tarball, dest)
            stamp.write_text(ORIG_SHA256)
        return caffe_tree_root(dest), f"debian-orig:{ORIG_SHA256}"
    caffe_src = caffe_src.resolve()
    if not caffe_src.exists():
        raise BuildError(f"--caffe-src {caffe_src}: no such file or folder")
    if caffe_src.is_file():
        digest = sha256_file(caffe_src)
        dest = BUILD_DIR / f"src-local-{digest[:12]}"
        if not dest.exists():
            extract_tarball(caffe_src, dest)
        root = caffe_tree_root(dest)
        if digest != ORIG_SHA256:
            log(f"{caffe_src}: not the Debian orig tarball (sha256 {digest[:12]}); "
                "using it as given")
        return root, f"tarball:{digest}"
    root = caffe_tree_root(caffe_src)
    if (caffe_src / ".git").exists():
        check_git_commit(caffe_src)
    return root, f"tree:{tree_hash(root)}"


def build_key(source_id: str, options: BuildOptions) -> str:
    """Hash of everything the build depends on that this project controls."""
    digest = hashlib.sha256()
    digest.update(source_id.encode())
    digest.update(json.dumps(asdict(options), sort_keys=True).encode())
    digest.update(tree_hash(LAYERS_DIR).encode())
    digest.update(sha256_file(Path(__file__)).encode())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def sync_file(src: Path, dest: Path) -> bool:
    """Copy src to dest only if the content differs (keeps make incremental)."""
    data = src.read_bytes()
    if dest.exists() and dest.read_bytes() == data:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    shutil.copymode(src, tmp)
    tmp.replace(dest)
    return True


def prepare_tree(pristine: Path, work: Path) -> None:
    """work = pristine + patches + caffe_layers overlay, touching only changes."""
    staged = Path(tempfile.mkdtemp(prefix="caffe-staged.", dir=BUILD_DIR))
    try:
        shutil.copytree(pristine, staged, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".extracted-from"))
        for patch in sorted(PATCHES_DIR.glob("*.patch")):
            result = subprocess.run(
                ["patch", "-p1", "--forward", "--batch", "-i", str(patch)],
                cwd=staged, capture_output=True, text=True)
            if result.returncode != 0:
                raise BuildError(f"{patch.name} does not apply:\n{result.stdout}"
                                 f"{result.stderr}")
        for sub in ("include", "src"):
            for path in tree_files(LAYERS_DIR / sub):
                dest = staged / path.relative_to(LAYERS_DIR)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
        wanted = {p.relative_to(staged) for p in tree_files(staged)}
        changed = 0
        for rel in sorted(wanted):
            changed += sync_file(staged / rel, work / rel)
        if work.exists():
            for path in tree_files(work):
                rel = path.relative_to(work)
                if rel not in wanted:
                    path.unlink()
                    changed += 1
        log(f"source tree {work}: {changed} file(s) changed")
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def find_cuda_libraries(options: BuildOptions) -> dict[str, str]:
    """CMake cache entries for cuBLAS/cuRAND: the toolkit's, else PyPI wheels."""
    toolkit = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    nvcc = toolkit / "bin" / "nvcc"
    if not nvcc.exists():
        raise BuildError(f"--cuda: no nvcc at {nvcc} (set CUDA_HOME)")
    entries = {"CUDA_TOOLKIT_ROOT_DIR": str(toolkit)}
    lib64 = toolkit / "lib64"
    have_toolkit_libs = all((lib64 / f"lib{n}.so").exists()
                            for n in ("cublas", "curand"))
    if have_toolkit_libs and not options.cuda_libs_from_wheels:
        return entries
    log("cuBLAS/cuRAND not in the toolkit: using the PyPI wheels")
    wheel_dir = BUILD_DIR / "cuda-wheels"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
         str(wheel_dir), "nvidia-cublas", "nvidia-curand", "nvidia-cuda-runtime"])
    cu13 = wheel_dir / "nvidia" / "cu13"
    link_dir = BUILD_DIR / "cuda-wheels-links"
    link_dir.mkdir(parents=True, exist_ok=True)
    for name in ("cublas", "cublasLt", "curand", "cudart"):
        versioned = sorted((cu13 / "lib").glob(f"lib{name}.so.*"))
        if not versioned:
            raise BuildError(f"{cu13 / 'lib'}: no lib{name}.so.* in the wheels")
        link = link_dir / f"lib{name}.so"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(versioned[0])
    entries.update({
        "CUDA_CUBLAS_LIBRARIES": str(link_dir / "libcublas.so"),
        "CUDA_curand_LIBRARY": str(link_dir / "libcurand.so"),
        "CMAKE_CXX_FLAGS": f"-I{cu13 / 'include'}",
        "CUDA_NVCC_FLAGS": f"-I{cu13 / 'include'}",
    })
    return entries


def cmake_arguments(work: Path, prefix: Path, options: BuildOptions) -> list[str]:
    import sysconfig

    python_lib = Path(sysconfig.get_config_var("LIBDIR") or "") / (
        sysconfig.get_config_var("LDLIBRARY") or "")
    entries = {
        "CMAKE_BUILD_TYPE": options.build_type,
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
        "USE_NCCL": "OFF",
        "CPU_ONLY": "OFF" if options.cuda else "ON",
        "BUILD_only_tests": "" if options.all_tests
        else ",".join(CAFFE_TESTS + OUR_TESTS + (CUDNN_TESTS if options.cudnn else [])),
    }
    if options.cuda:
        arch = " ".join(options.cuda_arch)
        entries.update({"CUDA_ARCH_NAME": "Manual", "CUDA_ARCH_BIN": arch,
                        "CUDA_ARCH_PTX": options.cuda_arch[-1]})
        entries.update(find_cuda_libraries(options))
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
    test_data = work / rel
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(test_data, dest)


def build(caffe_src: Path | None, options: BuildOptions, force: bool = False) -> Path:
    """Build and install Caffe with our layers; return the install prefix."""
    prefix = caffe_root()
    pristine, source_id = pristine_source(caffe_src)
    key = build_key(source_id, options)
    stamp = prefix / ".build-stamp.json"
    if not force and stamp.exists():
        recorded = json.loads(stamp.read_text())
        if recorded.get("key") == key:
            log(f"{prefix} is up to date (key {key[:12]})")
            return prefix
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
              "debian_package": f"{DEBIAN_PACKAGE} {DEBIAN_VERSION}"}
    atomic_write_text(stamp, json.dumps(record, indent=2) + "\n")
    log(f"installed into {prefix}")
    return prefix


def check_cuda_compile(variant: str = "cpu", arch: str = "90") -> list[Path]:
    """Compile caffe_layers' CUDA sources with nvcc (their .cpp files, and
    Caffe's cuDNN layers through patch 0008, with the host compiler, without
    CPU_ONLY) against the built tree's headers; return the objects made.

    Catches a .cu that does not compile on a machine that cannot build or run
    the whole CUDA Caffe (CI). Needs a finished build for caffe.pb.h.
    """
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
    # Caffe's cuDNN layers with the cuDNN 8+ stand-ins (patch 0008), where
    # the toolkit has cuDNN's headers.
    cudnn = (toolkit / "include" / "cudnn.h").exists()
    if cudnn:
        sources += sorted((work / "src" / "caffe" / "layers").glob("cudnn_*.c*"))
        sources.append(work / "src" / "caffe" / "util" / "cudnn.cpp")
    objects = []
    for source in sources:
        obj = out_dir / (source.name + ".o")
        defines = ["-DUSE_CUDNN"] if cudnn else []
        if source.suffix == ".cu":
            run([nvcc, "-c", f"-arch=sm_{arch}", "-std=c++17", "-Xcompiler", "-fPIC",
                 *defines, *includes, str(source), "-o", str(obj)])
        else:
            # The .cpp files too, with the host compiler as Caffe's build does:
            # their CUDA-only paths (no STUB_GPU, the GPU typed test cases)
            # only compile without CPU_ONLY.
            run([os.environ.get("CXX", "g++"), "-c", "-std=c++17", "-fPIC", *defines,
                 *includes, f"-I{toolkit / 'include' / 'cccl'}", str(source), "-o", str(obj)])
        objects.append(obj)
    return objects
