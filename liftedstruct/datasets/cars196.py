"""CARS196 (Stanford Cars): classes 1-98 train (8,054 images), 99-196 test
(8,131); the annotations' own train/test flag is ignored, as in the paper."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from liftedstruct.datasets.base import (
    Dataset,
    DatasetSource,
    Item,
    Row,
    check_inside,
    check_range,
    extract_archive,
    find_file,
    refuse_repeats,
)
from liftedstruct.errors import DatasetError
from liftedstruct.files import file_digest

# The first bytes of a MATLAB v5/v7 file (what scipy reads and what Stanford
# publishes); v7.3 files are HDF5 with "MATLAB 7.3 MAT-file" there.
MAT5_HEADER = b"MATLAB 5.0 MAT-file"


def check_mat_header(path: Path) -> None:
    """Refuse what is not a MATLAB v5 file before scipy trips over it: an
    HTML page saved under the .mat name, a v7.3 (HDF5) file, anything else."""
    with path.open("rb") as handle:
        head = handle.read(128)
    if head.startswith(MAT5_HEADER):
        return
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head")):
        raise DatasetError(f"{path}: an HTML page, not a MATLAB file (a failed or "
                           "redirected download); download cars_annos.mat again")
    if head.startswith(b"MATLAB 7.3"):
        raise DatasetError(f"{path}: a MATLAB v7.3 (HDF5) file; the published "
                           "cars_annos.mat is v5: download it again, or save it in "
                           "MATLAB/Octave with save(..., '-v7')")
    raise DatasetError(f"{path}: not a MATLAB v5 file (it starts with {head[:24]!r}); "
                       "download cars_annos.mat again")


def annotation_rows(mat_path: Path) -> list[Row]:
    """(relative_im_path, class) of each annotation, checked: a path string
    and an integer class per record."""
    from scipy.io import loadmat

    check_mat_header(mat_path)
    try:
        annotations = loadmat(mat_path, squeeze_me=True)["annotations"]
    except (KeyError, ValueError, TypeError, IndexError, NotImplementedError, OSError,
            EOFError, zlib.error) as error:
        raise DatasetError(f"{mat_path}: no readable 'annotations' ({error!r})") from error
    names = annotations.dtype.names or ()
    for needed in ("relative_im_path", "class"):
        if needed not in names:
            raise DatasetError(f"{mat_path}: annotations lack field {needed!r} "
                               f"(fields: {', '.join(names)})")
    rows = []
    for number, record in enumerate(np.atleast_1d(annotations), start=1):
        where = f"{mat_path}: annotation {number}"
        rel, label = record["relative_im_path"], np.asarray(record["class"])
        if not isinstance(rel, str) or not rel:
            raise DatasetError(f"{where}: relative_im_path {rel!r} is not a file path")
        if label.size != 1 or label.dtype.kind not in "iuf" or label.item() != int(
                label.item()):
            raise DatasetError(f"{where}: class {label.tolist()!r} is not an integer")
        rows.append(Row(where, (rel, int(label.item()))))
    return rows


class Cars196(DatasetSource):
    name = "cars196"
    counts = (8054, 8131, 98, 98)
    classes = 196
    download = "car_ims.tgz and cars_annos.mat (Stanford Cars, the 196-class set)"

    def load(self, root: Path | None, work: Path) -> Dataset:
        """The folder holding cars_annos.mat and car_ims.tgz (or car_ims/)."""
        if root.is_file():
            raise DatasetError(f"{root}: give the folder holding cars_annos.mat and "
                               "car_ims.tgz (or car_ims/)")
        mat_path = find_file(root, "cars_annos.mat", "CARS196 annotations")
        rows = annotation_rows(mat_path)
        refuse_repeats(rows, 0, "relative_im_path")
        check_inside(rows, 0, "relative_im_path")
        check_range(rows, 1, 1, self.classes, "class")
        base = mat_path.parent
        checksums = {mat_path.name: file_digest(mat_path)}
        if not (base / "car_ims").is_dir():
            archive = base / "car_ims.tgz"
            if not archive.is_file():
                raise DatasetError(f"{base}: neither car_ims/ nor car_ims.tgz")
            base, checksums[archive.name] = extract_archive(archive, work / "raw-cars196")
        train, test = [], []
        for row in rows:
            rel, label = row.fields
            item = Item(rel, label, base / rel)
            (train if label <= 98 else test).append(item)
        return Dataset(self.name, train, test, checksums)
