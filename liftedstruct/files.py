"""File helpers shared by the tools (standard library only)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from liftedstruct.errors import FolderLockedError, OutputError, UnsafeArchiveError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name beside path to write to; renamed to path when the
    block ends, removed if it raises: readers never see half a file. The
    name ends in suffix, so no pattern for finished files matches it."""
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def replace_folder(finished: Path, dest: Path) -> None:
    """Put the finished folder in dest's place (what was there is removed)."""
    if dest.exists():
        shutil.rmtree(dest)
    finished.rename(dest)


@contextlib.contextmanager
def atomic_folder(dest: Path, suffix: str = ".partial") -> Iterator[Path]:
    """An empty folder beside dest (dest's name + suffix) to write into;
    it replaces dest when the block ends and is removed if the block raises:
    readers never see half a folder."""
    tmp = dest.with_name(dest.name + suffix)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, dest)


def stamp_matches(dest: Path, stamp: str, key: str | dict) -> bool:
    """Whether dest/stamp records key: the text itself for a string key,
    JSON for a dict."""
    try:
        text = (dest / stamp).read_text()
    except (OSError, UnicodeDecodeError):
        return False
    if isinstance(key, str):
        return text == key
    try:
        return json.loads(text) == key
    except ValueError:
        return False


def make_once(dest: Path, stamp: str, key: str | dict,
              make: Callable[[Path], None]) -> bool:
    """dest made by make(folder) once per key: nothing is done when
    dest/stamp records key; otherwise what was at dest is removed first, make
    fills a temporary folder, the stamp is written into it and the folder
    renamed to dest (atomic_folder). Returns whether dest was made."""
    if stamp_matches(dest, stamp, key):
        return False
    if dest.exists():
        shutil.rmtree(dest)
    with atomic_folder(dest) as tmp:
        make(tmp)
        (tmp / stamp).write_text(key if isinstance(key, str) else
                                 json.dumps(key, indent=2) + "\n")
    return True


def inside(name: str) -> bool:
    """A relative POSIX path that stays below its folder."""
    normal = posixpath.normpath(name)
    return not (posixpath.isabs(name) or normal == ".." or normal.startswith("../"))


def check_tar_members(archive: tarfile.TarFile, where: str) -> list[tarfile.TarInfo]:
    """The members, after checking each is a file, folder or link that stays
    inside the destination (what Python >= 3.11.4 calls the "data" filter;
    Debian 12's own Python 3.11.2 has no extraction filters)."""
    members = archive.getmembers()
    for member in members:
        name = member.name
        if not inside(name) or "\0" in name:
            raise UnsafeArchiveError(f"{where}: member {name!r} leaves the folder")
        if member.issym():
            target = posixpath.join(posixpath.dirname(name), member.linkname)
            if posixpath.isabs(member.linkname) or not inside(target):
                raise UnsafeArchiveError(f"{where}: link {name!r} -> {member.linkname!r} "
                                         "points outside the folder")
        elif member.islnk():
            if not inside(member.linkname):
                raise UnsafeArchiveError(f"{where}: hard link {name!r} -> "
                                         f"{member.linkname!r} points outside the folder")
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{where}: member {name!r} is a device or fifo")
    return members


def safe_extract_tar(path: Path, dest: Path) -> None:
    """Extract a tar archive into dest, refusing members that would escape it."""
    with tarfile.open(path) as archive:
        members = check_tar_members(archive, str(path))
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, members=members, filter="data")
        else:
            for member in members:  # no setuid/setgid/sticky bits, as "data" does
                member.mode &= 0o777
            archive.extractall(dest, members=members)


@contextlib.contextmanager
def locked_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on folder/.lock while writing into folder; a
    second writer is refused at once instead of interleaving with the first."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputError(f"{folder}: cannot write there ({error.strerror or error})") \
            from error
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise FolderLockedError(f"{folder}: another {what} is writing into this "
                                    "folder; wait for it or use another one") from error
        yield
    finally:
        os.close(handle)


def check_writable(path: Path, option: str, kind: str = "folder") -> None:
    """Fail before any work, naming the option, when path cannot be written:
    a file where a folder is wanted (or the reverse), a file in the way of
    the folders to be made, or a folder that refuses a new file (probed with
    a temporary file, so read-only mounts count too). Creates nothing."""
    if kind not in ("folder", "file"):
        raise ValueError(kind)
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise OutputError(f"{option} {path}: a file is there; give a folder")
        if kind == "file" and path.is_dir():
            raise OutputError(f"{option} {path}: a folder is there; give a file name")
        if kind == "file" and not path.is_file():
            # Written via a temporary file and a rename, a device or pipe
            # (/dev/stdout) would be replaced by a plain file, not written to.
            raise OutputError(f"{option} {path}: not a regular file (a device or pipe); "
                              "give a file name")
    folder = path if kind == "folder" else path.parent
    existing = folder.absolute()
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {path}: {existing} is a file, so no folder can be "
                          "made there")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"{option} {path}: cannot write in {existing} "
                          f"({error.strerror or error})") from error


def check_not_input(output: Path, option: str, inputs: dict[str, Path | None]) -> None:
    """Refuse an output path that is one of the inputs (it would be
    overwritten, the input lost): inputs maps their options to paths."""
    for name, path in inputs.items():
        if path is not None and output.exists() and path.exists() and \
                output.resolve() == path.resolve():
            raise OutputError(f"{option} {output} is also {name}; writing it would destroy "
                              "that input: give another name")


def is_disk_full(error: BaseException) -> bool:
    """An OSError that says the disk (or the quota) is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL
