"""BVLC Caffe's source at the pinned commit, and the tree we build: the
pristine tree plus our patches plus the caffe_layers/ overlay."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from liftedstruct.errors import BuildError
from liftedstruct.files import atomic_folder, atomic_path, file_digest, make_once, safe_extract_tar
from liftedstruct.paths import REPO_ROOT


@dataclass(frozen=True)
class DebianSource:
    """A Debian source package whose orig tarball is pinned by sha256."""

    package: str
    version: str
    orig: str  # the orig tarball's file name
    sha256: str
    suite: str  # the Debian release whose deb-src list carries it

    def deb_src_line(self) -> str:
        return ("deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                f"http://deb.debian.org/debian {self.suite} main\n")


# Debian 11's caffe: its orig tarball is the BVLC tree at 99bd997.
CAFFE_SOURCE = DebianSource(
    package="caffe", version="1.0.0+git20180821.99bd997-8",
    orig="caffe_1.0.0+git20180821.99bd997.orig.tar.gz",
    sha256="e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c",
    suite="bullseye")
BVLC_COMMIT_PREFIX = "99bd997"

LAYERS_DIR = REPO_ROOT / "caffe_layers"
PATCHES_DIR = LAYERS_DIR / "patches"
# The folders of caffe_layers/ copied over Caffe's tree (docs/BUILD.md names them).
OVERLAY = ("include", "src", "tools")
BUILD_DIR = REPO_ROOT / "build"


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
        digest.update(file_digest(path).encode() + b"\n")
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


def fetch_debian_orig(source: DebianSource, download_dir: Path) -> Path:
    """apt-get source --download-only a pinned Debian package (deb-src list and
    apt state under build/, the machine's apt setup untouched); verify its
    orig tarball."""
    tarball = download_dir / source.orig
    if tarball.exists() and file_digest(tarball) == source.sha256:
        return tarball
    apt_dir = BUILD_DIR / ("apt" if source.suite == "bullseye" else f"apt-{source.suite}")
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text(source.deb_src_line())
    download_dir.mkdir(parents=True, exist_ok=True)
    options = apt_options(apt_dir)
    run(["apt-get", *options, "update"])
    run(["apt-get", *options, "source", "--download-only",
         f"{source.package}={source.version}"], cwd=download_dir)
    if not tarball.exists():
        raise BuildError(f"apt-get source did not produce {tarball}")
    actual = file_digest(tarball)
    if actual != source.sha256:
        raise BuildError(f"{tarball}: sha256 {actual}, expected {source.sha256}")
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
    """Extract into a temporary folder, rename into place, return dest."""
    with atomic_folder(dest) as tmp:
        safe_extract_tar(tarball, tmp)
    return dest


def extract_once(tarball: Path, sha256: str, dest: Path) -> Path:
    """dest holds tarball (whose digest is sha256) extracted; done once."""
    make_once(dest, ".extracted-from", sha256, lambda tmp: safe_extract_tar(tarball, tmp))
    return dest


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
        tarball = fetch_debian_orig(CAFFE_SOURCE, BUILD_DIR / "download")
        dest = extract_once(tarball, CAFFE_SOURCE.sha256,
                            BUILD_DIR / f"src-{BVLC_COMMIT_PREFIX}")
        return caffe_tree_root(dest), f"debian-orig:{CAFFE_SOURCE.sha256}"
    caffe_src = caffe_src.resolve()
    if not caffe_src.exists():
        raise BuildError(f"--caffe-src {caffe_src}: no such file or folder")
    if caffe_src.is_file():
        digest = file_digest(caffe_src)
        dest = BUILD_DIR / f"src-local-{digest[:12]}"
        if not dest.exists():
            extract_tarball(caffe_src, dest)
        root = caffe_tree_root(dest)
        if digest != CAFFE_SOURCE.sha256:
            log(f"{caffe_src}: not the Debian orig tarball (sha256 {digest[:12]}); "
                "using it as given")
        return root, f"tarball:{digest}"
    root = caffe_tree_root(caffe_src)
    if (caffe_src / ".git").exists():
        check_git_commit(caffe_src)
    return root, f"tree:{tree_hash(root)}"


def sync_file(src: Path, dest: Path) -> bool:
    """Copy src to dest only if the content differs (keeps make incremental)."""
    data = src.read_bytes()
    if dest.exists() and dest.read_bytes() == data:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
        shutil.copymode(src, tmp)
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
        for sub in OVERLAY:
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
