"""The common shape of a dataset source: items with a class id, split into
train and test, plus the helpers the sources share (archives, list files)."""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from liftedstruct.constants import IMAGE_SIZE
from liftedstruct.errors import DatasetError
from liftedstruct.files import (
    UnsafeArchiveError,
    file_digest,
    inside,
    is_disk_full,
    make_once,
    safe_extract_tar,
    stamp_matches,
)


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
    image_size: ClassVar[int] = IMAGE_SIZE
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


ARCHIVE_STAMP = ".extracted"


def archive_identity(archive: Path) -> dict:
    """What an extraction depends on: the archive's name, size, modification
    time and sha256 (a download replaced under the same name is new)."""
    stat = archive.stat()
    return {"archive": archive.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": file_digest(archive)}


def extract_archive(archive: Path, dest: Path) -> tuple[Path, str]:
    """Extract an archive into dest (via a temporary folder), once per
    archive content; returns dest and the archive's sha256."""
    identity = archive_identity(archive)
    if (dest / ARCHIVE_STAMP).is_file() and not stamp_matches(dest, ARCHIVE_STAMP, identity):
        print(f"{dest}: extracted from another {archive.name} (other content); "
              "extracting again", flush=True)

    def extract(tmp: Path) -> None:
        print(f"extracting {archive} to {dest}", flush=True)
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as handle:
                    handle.extractall(tmp)  # zipfile drops absolute paths and ".."
            else:
                safe_extract_tar(archive, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error,
                UnsafeArchiveError) as error:
            if is_disk_full(error):
                raise
            raise DatasetError(f"{archive}: cannot extract ({error}); a truncated "
                               "download is the usual cause") from error

    make_once(dest, ARCHIVE_STAMP, identity, extract)
    return dest, identity["sha256"]


def find_file(root: Path, name: str, what: str) -> Path:
    """root/name, or the first match below root."""
    if (root / name).is_file():
        return root / name
    found = sorted(root.rglob(name))
    if not found:
        raise DatasetError(f"{root}: no {name} found ({what})")
    return found[0]


@dataclass(frozen=True)
class Row:
    """One line of a list file: where it is (file:line) and its fields, the
    integer columns as int."""

    where: str
    fields: tuple


def read_table(path: Path, columns: int, header: bool = False,
               integers: tuple[int, ...] = ()) -> list[Row]:
    """Whitespace-separated rows of exactly `columns` fields; the fields in
    `integers` must be integers (an error names the file and line)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: unreadable ({error})") from error
    rows = []
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        if not line.strip():
            continue
        parts: list = line.split()
        if len(parts) != columns:
            raise DatasetError(f"{path}:{number}: expected {columns} fields, got "
                               f"{len(parts)}: {line!r}")
        for column in integers:
            try:
                parts[column] = int(parts[column])
            except ValueError:
                raise DatasetError(f"{path}:{number}: field {column + 1} is "
                                   f"{parts[column]!r}, not an integer: {line!r}") from None
        rows.append(Row(f"{path}:{number}", tuple(parts)))
    return rows


def refuse_repeats(rows: Iterable[Row], column: int, what: str) -> None:
    """Each value of the column once over the rows (of one or several files):
    a repeated image id or path would silently replace or duplicate an image."""
    first: dict = {}
    for row in rows:
        value = row.fields[column]
        if value in first:
            raise DatasetError(f"{row.where}: {what} {value} again (first at "
                               f"{first[value]}); each must appear once")
        first[value] = row.where


def check_inside(rows: Iterable[Row], column: int, what: str) -> None:
    """Paths relative to the dataset's folder that stay inside it: an
    absolute path or one through '..' would take an image from elsewhere."""
    for row in rows:
        if not inside(str(row.fields[column])):
            raise DatasetError(f"{row.where}: {what} {row.fields[column]} leaves the "
                               "dataset's folder")


def check_range(rows: Iterable[Row], column: int, low: int, high: int, what: str) -> None:
    """Integer fields within [low, high] (a dataset's class ids)."""
    for row in rows:
        value = row.fields[column]
        if not low <= value <= high:
            raise DatasetError(f"{row.where}: {what} {value} is outside "
                               f"{low}-{high}")


def list_files(root: Path, work: Path, name: str, first: str, second: str,
               what: str) -> tuple[Path, Path, dict[str, str]]:
    """A dataset's two list files (first found anywhere below root, second
    beside it), extracting root first when it is the archive; with the
    archive's sha256 by name ({} for a folder)."""
    archive: dict[str, str] = {}
    if root.is_file():
        extracted, digest = extract_archive(root, work / f"raw-{name}")
        archive, root = {root.name: digest}, extracted
    first_path = find_file(root, first, what)
    second_path = first_path.parent / second
    if not second_path.is_file():
        raise DatasetError(f"{second_path}: missing ({what})")
    return first_path, second_path, archive
