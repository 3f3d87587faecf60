"""The common shape of a dataset source: items with a class id, split into
train and test, plus the helpers the sources share (archives, list files)."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from liftedstruct.errors import DatasetError
from liftedstruct.files import UnsafeArchiveError, safe_extract_tar


@dataclass
class Item:
    """One image: where it comes from and its original class id."""

    path: str  # the dataset's own relative path (or <source>/<index>)
    label: int
    file: Path | None = None  # on disk; None for in-memory pixels
    pixels: np.ndarray | None = field(default=None, repr=False)

    def identity(self) -> str:
        """What the prepared output depends on: the pixels, or the file's
        size and modification time (a fixed or replaced image changes it)."""
        if self.pixels is not None:
            return f"{self.path}:{hashlib.sha1(self.pixels.tobytes()).hexdigest()}"
        try:
            stat = self.file.stat()
        except OSError:
            return f"{self.path}:missing"
        return f"{self.path}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class Dataset:
    name: str
    train: list[Item]
    test: list[Item]
    checksums: dict[str, str]  # the source's list files (or generator inputs)
    details: dict = field(default_factory=dict)  # recorded in the manifest

    def split(self, name: str) -> list[Item]:
        return {"train": self.train, "test": self.test}[name]

    def fingerprint(self, split: str) -> str:
        """sha256 over every item of a split: its path, label and identity."""
        digest = hashlib.sha256()
        for item in self.split(split):
            digest.update(f"{item.identity()}\t{item.label}\n".encode())
        return digest.hexdigest()


class DatasetSource:
    """A dataset as its users download it; subclasses load() it."""

    name: ClassVar[str]
    # (train images, test images, train classes, test classes) as published.
    counts: ClassVar[tuple[int, int, int, int] | None] = None
    image_size: ClassVar[int] = 256
    encoding: ClassVar[str] = "jpg"  # of the datums: photos as JPEG, line art as PNG
    needs_root: ClassVar[bool] = True
    download: ClassVar[str] = ""  # what to download, for messages

    def load(self, root: Path | None, work: Path) -> Dataset:
        raise NotImplementedError

    def check_counts(self, dataset: Dataset) -> None:
        """Fail loudly when the counts differ from the published split."""
        if self.counts is None:
            return
        actual = (len(dataset.train), len(dataset.test),
                  len({i.label for i in dataset.train}), len({i.label for i in dataset.test}))
        if actual != self.counts:
            names = ("train images", "test images", "train classes", "test classes")
            diffs = [f"{n}: {a} (expected {e})"
                     for n, a, e in zip(names, actual, self.counts, strict=True) if a != e]
            raise DatasetError(f"{self.name}: counts differ from the published split: "
                               + "; ".join(diffs) + ". A truncated download is the usual "
                               "cause (--no-count-check to go on anyway)")


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract an archive once into dest (via a temporary folder)."""
    stamp = dest / ".extracted"
    if stamp.exists() and stamp.read_text() == archive.name:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    print(f"extracting {archive} to {dest}", flush=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(tmp)  # zipfile drops absolute paths and ".."
        else:
            safe_extract_tar(archive, tmp)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError,
            UnsafeArchiveError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"{archive}: cannot extract ({error}); a truncated "
                           "download is the usual cause") from error
    (tmp / ".extracted").write_text(archive.name)
    tmp.rename(dest)
    return dest


def find_file(root: Path, name: str, what: str) -> Path:
    """root/name, or the first match below root."""
    if (root / name).is_file():
        return root / name
    found = sorted(root.rglob(name))
    if not found:
        raise DatasetError(f"{root}: no {name} found ({what})")
    return found[0]


def read_table(path: Path, columns: int, header: bool = False) -> list[list[str]]:
    """Whitespace-separated rows of exactly `columns` fields."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: unreadable ({error})") from error
    rows = []
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != columns:
            raise DatasetError(f"{path}:{number}: expected {columns} fields, got "
                               f"{len(parts)}: {line!r}")
        rows.append(parts)
    return rows


def list_files(root: Path, work: Path, name: str, first: str, second: str,
               what: str) -> tuple[Path, Path]:
    """A dataset's two list files (first found anywhere below root, second
    beside it), extracting root first when it is the archive."""
    if root.is_file():
        root = extract_archive(root, work / f"raw-{name}")
    first_path = find_file(root, first, what)
    second_path = first_path.parent / second
    if not second_path.is_file():
        raise DatasetError(f"{second_path}: missing ({what})")
    return first_path, second_path
