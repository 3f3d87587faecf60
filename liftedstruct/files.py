"""File helpers shared by the tools (standard library only)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import secrets
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


def private_name(path: Path, suffix: str) -> Path:
    """A name beside path that no other process picks: path's name, this
    process's id and a random token, then suffix (so no pattern for finished
    files matches it)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name beside path to write to; renamed to path when the
    block ends, removed if it raises: readers never see half a file. The
    name is this process's own (private_name): two runs writing the same
    path at once each rename a whole file of theirs, the last one wins."""
    tmp = private_name(path, suffix)
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
    with locked_file(dest, "build"):  # a second run at once is refused, not mixed in
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


def _lock(lock: Path, busy: str) -> int:
    """An open descriptor holding an exclusive flock on lock (created if
    need be); FolderLockedError(busy) when another process holds it. The
    lock file is removed by its holder when done, so a lock taken on a file
    that was removed (or replaced) meanwhile is let go and taken again."""
    while True:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(handle)
            raise FolderLockedError(busy) from error
        try:
            same = os.stat(lock).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        os.close(handle)


@contextlib.contextmanager
def _held(lock: Path, busy: str, made: Path | None) -> Iterator[None]:
    """Hold the lock while the block runs; then remove the lock file and
    made (a folder this call created) if it is left empty: a run that was
    refused or did nothing leaves the place as it found it."""
    try:
        handle = _lock(lock, busy)
    except FolderLockedError:
        raise
    except OSError as error:
        _remove_if_empty(made)
        raise OutputError(f"{lock.parent}: cannot write there ({error.strerror or error})") \
            from error
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(handle)
        _remove_if_empty(made)


def _remove_if_empty(folder: Path | None) -> None:
    if folder is not None:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def _make_folder(folder: Path) -> Path | None:
    """mkdir -p folder; the topmost folder it created (None if it existed)."""
    missing = folder.absolute()
    top = None
    while not missing.exists() and not missing.is_symlink():
        top = missing
        missing = missing.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{folder}: cannot write there ({error.strerror or error})") \
            from error
    return top


@contextlib.contextmanager
def locked_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on folder/.lock while writing into folder; a
    second writer is refused at once instead of interleaving with the first.
    The lock file goes when the block ends, and so does the folder if this
    call made it and nothing was written into it."""
    made = _make_folder(folder)
    with _held(folder / ".lock", f"{folder}: another {what} is writing into this folder; "
               "wait for it or use another one", made):
        yield


@contextlib.contextmanager
def locked_file(path: Path, what: str) -> Iterator[None]:
    """locked_folder for one output file: the lock is .NAME.lock beside it
    (its folder is made if need be, and removed again if left empty)."""
    made = _make_folder(path.parent)
    with _held(path.with_name(f".{path.name}.lock"), f"{path}: another {what} is writing "
               "this file; wait for it or use another name", made):
        yield


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


def human_bytes(count: float) -> str:
    """A size in the unit that shows it: 512 bytes, 3.4 kB, 12 MB, 1.50 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= scale:
            value = count / scale
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f} {unit}"
    return f"{int(count)} bytes"


def check_space(folder: Path, needed: int, what: str, advice: str = "") -> int:
    """Refuse (OutputError) when folder's disk has less free space than what
    needs, both sizes in units that show them, with advice for that output
    (default: free some space); returns the free bytes."""
    probe = folder.absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OutputError(f"not enough disk space: {what} needs about "
                          f"{human_bytes(needed)} but {folder} has {human_bytes(free)} "
                          f"free; {advice or 'free some space and run the same command again'}")
    return free


def read_json(path: Path, what: str = "") -> object:
    """A JSON file this project wrote earlier; a file that cannot be read or
    parsed (cut short, edited, another program's) is an OutputError naming
    it, its line and what to do, not a traceback."""
    name = f"{what} {path}".strip()
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise OutputError(f"{name}: not a text file ({error.reason}); it was not written "
                          "by this project: delete it (or give another folder) and run the "
                          "same command again") from error
    try:
        return json.loads(text)
    except ValueError as error:
        where = (f" at line {error.lineno}, column {error.colno}"
                 if isinstance(error, json.JSONDecodeError) else "")
        raise OutputError(f"{name}: not valid JSON{where} ({getattr(error, 'msg', error)}); "
                          "it is damaged (cut short or edited): delete it (or give another "
                          "folder) and run the same command again") from error
