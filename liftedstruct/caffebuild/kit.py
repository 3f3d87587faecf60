"""The portable GPU kit: this Caffe built for CUDA + cuDNN 9 + NCCL with
every non-CUDA library it loads, the check that runs it (gpu-kit/run.sh),
the nets and data fixture that check trains on, and pytorch-metric-learning
for the peer benchmark, in one archive that unpacks to gpu-kit/.

Not carried: glibc and libstdc++ (any newer system has them; the kit is
built against Debian 12's) and the CUDA libraries (cudart, cuBLAS, cuRAND,
cuDNN, NCCL, the driver's libcuda), which gpu-kit/env.sh finds on the
target and gpu-kit/run.sh checks against the versions built for."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

from liftedstruct import __version__
from liftedstruct.caffebuild import gtests
from liftedstruct.caffebuild.cmake import BuildOptions, build, installed_options
from liftedstruct.caffebuild.source import BUILD_DIR, log, run
from liftedstruct.errors import BuildError
from liftedstruct.files import (
    atomic_path,
    check_writable,
    file_digest,
    locked_folder,
    make_once,
    replace_folder,
)
from liftedstruct.paths import REPO_ROOT

SCRIPTS = REPO_ROOT / "gpu-kit"
KIT_NAME = "gpu-kit"
ARCHIVE = "lifted-gpu-kit.tar"
KIT_PREFIX = BUILD_DIR / "kit" / "caffe"
MAX_ARCHIVE_BYTES = 60 << 20

PROGRAMS = ("caffe", "extract_features", "test.testbin", "cuda_versions",
            "time_lifted_layer", "compare_features")
# What every Linux the kit runs on has (glibc, the GCC runtime).
SYSTEM_LIBRARIES = re.compile(
    r"^(linux-vdso\.so\.1|ld-linux-x86-64\.so\.2|lib(c|m|dl|rt|pthread|resolv|util)"
    r"\.so\.\d+|libstdc\+\+\.so\.6|libgcc_s\.so\.1)$")
# What the target's CUDA install provides, found by gpu-kit/env.sh.
CUDA_LIBRARIES = re.compile(
    r"^lib(cuda|cudart|cublas|cublasLt|curand|cudnn\w*|nccl|nvrtc\w*|nvJitLink)\.so\.\d+$")

# The peer benchmark's loss (pure Python; the target has PyTorch).
PML_WHEEL = "pytorch_metric_learning-2.9.0-py3-none-any.whl"
PML_SHA256 = "d51646006dc87168f00cf954785db133a4c5aac81253877248737aa42ef6432a"

# The training fixture: generated pictures in Online Products' format through
# tools/prepare_dataset.py's code path; 256 training classes of 4 images,
# 128 test classes of 4 (512 test images, 4 batches of 128).
FIXTURE = {"train_classes": 256, "test_classes": 128, "per_class": 4, "max_pairs": 768,
           "layout": "unique"}
# Iterations and log interval of the check's training: the committed solver's
# display (20) on the GPU; on the CPU a shorter run logged as often.
TRAIN_ITERATIONS = {"gpu": 100, "cpu": 24}
DISPLAY = {"gpu": 20, "cpu": 8}
ALL_GPUS_ITERATIONS = 20
CPU_CROP = 64  # the --cpu check's input: GoogLeNet in seconds per iteration


def elf_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    files.append(path)
    return files


def dependencies(binary: Path, library_path: str) -> dict[str, str | None]:
    """ldd's closure of binary: soname -> resolved path (None: not found)."""
    env = dict(os.environ, LD_LIBRARY_PATH=library_path)
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise BuildError(f"ldd {binary} failed: {out.stderr.strip()}")
    found: dict[str, str | None] = {}
    for line in out.stdout.splitlines():
        match = re.match(r"\s*(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))", line)
        if match:
            found[match.group(1)] = match.group(3)
        elif (match := re.match(r"\s*(/\S+) \(0x", line)):
            found[Path(match.group(1)).name] = match.group(1)
    return found


def cuda_library_path(options: dict) -> str:
    """Where the build's CUDA libraries are, for ldd."""
    if not options.get("cuda"):
        return ""
    from liftedstruct.caffebuild import cuda

    root = cuda.toolkit(options.get("cuda_from_wheels", False))
    return str(root / "lib64")


def copy_programs(prefix: Path, kit: Path) -> list[Path]:
    (kit / "bin").mkdir(parents=True)
    (kit / "lib").mkdir()
    programs = []
    for name in PROGRAMS:
        source = prefix / "bin" / name
        if not source.exists():
            raise BuildError(f"{source} is missing: the Caffe install at {prefix} was not "
                             "built by this project's tools/build_caffe.py")
        shutil.copy2(source, kit / "bin" / name)
        programs.append(kit / "bin" / name)
    return programs


def carry_libraries(prefix: Path, kit: Path, programs: list[Path],
                    cuda_path: str) -> tuple[list[str], list[str]]:
    """Copy into kit/lib every library the programs load but the target's
    system and CUDA install; return (carried, CUDA sonames needed)."""
    library_path = ":".join(p for p in (str(prefix / "lib"), cuda_path,
                                        os.environ.get("LD_LIBRARY_PATH", "")) if p)
    carried, cuda_needed, missing = set(), set(), set()
    for program in programs:
        for name, path in dependencies(program, library_path).items():
            if SYSTEM_LIBRARIES.match(name):
                continue
            if CUDA_LIBRARIES.match(name):
                cuda_needed.add(name)
                continue
            if path is None:
                missing.add(name)
                continue
            if name not in carried:
                shutil.copy2(os.path.realpath(path), kit / "lib" / name)
                carried.add(name)
    if missing:
        raise BuildError(f"libraries not found for the kit: {', '.join(sorted(missing))}")
    return sorted(carried), sorted(cuda_needed - {"libcuda.so.1"})


def relocate(kit: Path) -> None:
    """Strip, and point every ELF at the kit's lib/ (DT_RPATH, which wins
    over LD_LIBRARY_PATH: the kit's own libraries come first)."""
    if not shutil.which("patchelf"):
        raise BuildError("patchelf is missing: apt-get install patchelf (tools/setup.sh "
                         "installs it)")
    for path in elf_files(kit):
        in_bin = path.parent.name == "bin"
        for command in (["strip", "--strip-all" if in_bin else "--strip-unneeded"],
                        ["patchelf", "--force-rpath", "--set-rpath",
                         "$ORIGIN/../lib" if in_bin else "$ORIGIN"]):
            done = subprocess.run([*command, str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                raise BuildError(f"{' '.join(command)} {path}: {done.stderr.strip()}")


def write_nets(kit: Path) -> None:
    """The committed SOP net and solver for the fixture, and their small CPU
    twins: nets/{gpu,cpu}/{train_val,solver,solver_all,time}.prototxt and
    nets/data_layer.prototxt. Paths are relative to the check's work folder."""
    from liftedstruct.nets.template import (
        HEADER,
        SolverConfig,
        data_timing_net,
        paper_config,
        solver,
        time_net,
        train_val,
    )

    header = HEADER.replace("tools/make_prototxt.py", "tools/gpu_kit.py")
    # The committed SOP net (MetricBatchData on the unique layout's train_lmdb);
    # the data-timing net reads the same LMDB through Caffe's Data layer.
    paper = replace(paper_config("sop", "lifted", 512),
                    train_source="fixture/train_lmdb", test_source="fixture/test_lmdb")
    for mode in ("gpu", "cpu"):
        config = paper if mode == "gpu" else replace(paper, crop=CPU_CROP)
        folder = kit / "nets" / mode
        folder.mkdir(parents=True)
        iterations = TRAIN_ITERATIONS[mode]
        base = SolverConfig(net=f"nets/{mode}/train_val.prototxt",
                            snapshot_prefix="snapshots/sop_lifted_512",
                            max_iter=iterations, snapshot=iterations,
                            display=DISPLAY[mode],
                            solver_mode="GPU" if mode == "gpu" else "CPU")
        files = {
            "train_val.prototxt": train_val(config),
            "solver.prototxt": solver(base),
            "solver_all.prototxt": solver(replace(
                base, max_iter=ALL_GPUS_ITERATIONS, snapshot=ALL_GPUS_ITERATIONS,
                snapshot_prefix="snapshots/all_gpus/sop_lifted_512")),
            "time.prototxt": time_net(config),
        }
        for name, text in files.items():
            (folder / name).write_text(text.replace(HEADER, header))
    (kit / "nets" / "data_layer.prototxt").write_text(
        data_timing_net(paper.train_source).replace(HEADER, header))


def fixture_data(work: Path) -> Path:
    """Online Products-format pictures through prepare_dataset's code path
    (the unique training LMDB, test split), in build/kit-fixture (made once)."""
    from liftedstruct.datasets import get_source
    from liftedstruct.datasets.prepare import PrepareOptions, prepare
    from liftedstruct.datasets.synthetic import write_online_products

    out = BUILD_DIR / "kit-fixture"

    def make(folder: Path) -> None:
        root = write_online_products(work / "download", FIXTURE["train_classes"],
                                     FIXTURE["test_classes"], FIXTURE["per_class"])
        options = PrepareOptions(methods=("lifted",), max_pairs=FIXTURE["max_pairs"],
                                 count_check=False,
                                 layout=FIXTURE["layout"])
        prepare(get_source("sop"), root, folder, options)
        shutil.rmtree(folder / "sop", ignore_errors=True)  # the extracted download

    make_once(out, "fixture.json", FIXTURE, make)
    return out


def copy_fixture(prepared: Path, kit: Path) -> None:
    """Compact copies of the LMDBs (the prepared ones are sparse files)."""
    import lmdb

    folder = kit / "fixture"
    folder.mkdir()
    for name in ("train_lmdb", "test_lmdb"):
        (folder / name).mkdir()
        with lmdb.open(str(prepared / name), readonly=True, lock=False) as env:
            env.copy(str(folder / name), compact=True)
            if name == "test_lmdb":
                records = env.stat()["entries"]
    shutil.copy2(prepared / "manifest.json", folder / "manifest.json")
    (folder / "test_batches").write_text(f"{-(-records // 128)}\n")


def pml_wheel() -> Path:
    """pytorch-metric-learning's wheel, downloaded once and checked."""
    folder = BUILD_DIR / "kit-wheels"
    wheel = folder / PML_WHEEL
    if not (wheel.exists() and file_digest(wheel) == PML_SHA256):
        folder.mkdir(parents=True, exist_ok=True)
        version = PML_WHEEL.split("-")[1]
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", str(folder),
             f"pytorch-metric-learning=={version}"])
        if not wheel.exists() or file_digest(wheel) != PML_SHA256:
            raise BuildError(f"{wheel}: missing or not the pinned wheel (sha256 {PML_SHA256})")
    return wheel


def kit_env(options: dict, cuda_needed: list[str]) -> str:
    """kit.env: what run.sh and env.sh need to know about this build."""
    cudnn = bool(options.get("cudnn"))
    values = {
        "KIT_VERSION": __version__,
        "KIT_VARIANT": "cuda+cudnn+nccl" if options.get("nccl") else
                       ("cuda" if options.get("cuda") else "cpu"),
        "KIT_GPU": "1" if options.get("cuda") else "0",
        "KIT_CUDA_ARCH": ",".join(f"sm_{a}" for a in options.get("cuda_arch", []))
                         if options.get("cuda") else "",
        "KIT_CUDA_LIBS": " ".join(cuda_needed),
        "KIT_GTEST_GPU_FILTER": gtests.device_filter(cudnn, gpu=True),
        "KIT_GTEST_CPU_FILTER": gtests.device_filter(cudnn, gpu=False, ours_only=True),
        "KIT_GTEST_DEVICES_FILTER": gtests.GPU_EQUALS_CPU + "*",
    }
    lines = ["# Generated by tools/gpu_kit.py: this kit's build."]
    lines += [f"{key}='{value}'" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def manifest(kit: Path, options: dict, carried: list[str], cuda_needed: list[str]) -> dict:
    files = {str(p.relative_to(kit)): {"bytes": p.stat().st_size,
                                       "sha256": file_digest(p)}
             for p in sorted(kit.rglob("*")) if p.is_file()}
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"version": __version__, "commit": commit or None, "build_options": options,
            "carried_libraries": carried, "cuda_libraries_needed": cuda_needed,
            "fixture": FIXTURE, "files": files}


def stage(prefix: Path, options: dict, dest: Path) -> Path:
    """Lay the kit out in dest/gpu-kit and return that folder."""
    kit = dest / KIT_NAME
    programs = copy_programs(prefix, kit)
    cuda_path = cuda_library_path(options)
    carried, cuda_needed = carry_libraries(prefix, kit, programs, cuda_path)
    relocate(kit)
    shutil.copytree(prefix / "share" / "caffe", kit / "share" / "caffe")
    for script in sorted(SCRIPTS.iterdir()):
        shutil.copy2(script, kit / script.name)
    (kit / "kit.env").write_text(kit_env(options, cuda_needed))
    write_nets(kit)
    copy_fixture(fixture_data(dest), kit)
    (kit / "wheels").mkdir()
    shutil.copy2(pml_wheel(), kit / "wheels" / PML_WHEEL)
    (kit / "manifest.json").write_text(
        json.dumps(manifest(kit, options, carried, cuda_needed), indent=2) + "\n")
    return kit


def write_archive(kit: Path, archive: Path, compression: str) -> None:
    """tar (xz -9 or gzip) of kit, written under a temporary name: members
    sorted, owners and times cleared, so the same kit gives the same bytes."""
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    mode = "w:xz" if compression == "xz" else "w:gz"
    kwargs = {"preset": 9} if compression == "xz" else {"compresslevel": 6}
    with atomic_path(archive) as tmp, tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT,
                                                   **kwargs) as tar:
        paths = [kit] + sorted(kit.rglob("*"))
        for path in paths:
            tar.add(path, arcname=str(path.relative_to(kit.parent)), recursive=False,
                    filter=clean)


def make_kit(out: Path, from_prefix: Path | None, compression: str, jobs: int | None,
             cuda_arch: list[str]) -> Path:
    """Build (or take) the Caffe install, stage the kit, write the archive
    (or, with compression "none", the gpu-kit folder) into out; every
    argument is checked before the build starts, and a second run into the
    same out while one runs is refused."""
    check_kit_arguments(out, from_prefix, compression, cuda_arch)
    with locked_folder(out, "tools/gpu_kit.py"):
        return _make_kit(out, from_prefix, compression, jobs, cuda_arch)


def check_kit_arguments(out: Path, from_prefix: Path | None, compression: str,
                        cuda_arch: list[str]) -> None:
    """What make_kit would fail on, at the start rather than after the hour
    of building OpenCV and CUDA Caffe."""
    from liftedstruct.cli import CUDA_ARCH, OLDEST_CUDA_ARCH

    check_writable(out, "--out")
    if compression == "none":
        check_writable(out / KIT_NAME, "--out", "folder")
    else:
        check_writable(out / f"{ARCHIVE}.{compression}", "--out", "file")
    if from_prefix is not None:
        if not (from_prefix / "bin" / "caffe").is_file():
            raise BuildError(f"--from-prefix {from_prefix}: no bin/caffe there (give a "
                             "Caffe install made by tools/build_caffe.py, e.g. build/caffe)")
        return
    if not cuda_arch:
        raise BuildError("--cuda-arch: give at least one compute capability")
    for arch in cuda_arch:
        if not CUDA_ARCH.fullmatch(str(arch)) or int(arch) < OLDEST_CUDA_ARCH:
            raise BuildError(f"--cuda-arch {arch}: not a CUDA compute capability CUDA 13 "
                             f"builds for ({OLDEST_CUDA_ARCH} or newer, e.g. 80, 86, 90)")


def _make_kit(out: Path, from_prefix: Path | None, compression: str, jobs: int | None,
              cuda_arch: list[str]) -> Path:
    if from_prefix is None:
        options = BuildOptions(cuda=True, cudnn=True, nccl=True, cuda_arch=cuda_arch,
                               kit=True)
        if jobs:
            options.jobs = jobs
        prefix = build(None, options, prefix=KIT_PREFIX)
    else:
        prefix = from_prefix.resolve()
    recorded = installed_options(prefix)
    with tempfile.TemporaryDirectory(prefix="kit-stage.", dir=out) as tmp:
        kit = stage(prefix, recorded, Path(tmp))
        if compression == "none":
            dest = out / KIT_NAME
            replace_folder(kit, dest)
            log(f"kit folder {dest}")
            return dest
        archive = out / f"{ARCHIVE}.{compression}"
        write_archive(kit, archive, compression)
    size = archive.stat().st_size
    log(f"{archive}: {size / 2**20:.1f} MiB")
    if recorded.get("cuda") and size > MAX_ARCHIVE_BYTES:
        raise BuildError(f"{archive} is {size / 2**20:.1f} MiB, over the "
                         f"{MAX_ARCHIVE_BYTES >> 20} MiB a GPU machine takes in one call")
    return archive

