"""CARS196 (Stanford Cars): classes 1-98 train (8,054 images), 99-196 test
(8,131); the annotations' own train/test flag is ignored, as in the paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liftedstruct.datasets.base import Dataset, DatasetSource, Item, extract_archive, find_file
from liftedstruct.errors import DatasetError
from liftedstruct.files import file_digest


class Cars196(DatasetSource):
    name = "cars196"
    counts = (8054, 8131, 98, 98)
    download = "car_ims.tgz and cars_annos.mat (Stanford Cars, the 196-class set)"

    def load(self, root: Path | None, work: Path) -> Dataset:
        """The folder holding cars_annos.mat and car_ims.tgz (or car_ims/)."""
        from scipy.io import loadmat

        if root.is_file():
            raise DatasetError(f"{root}: give the folder holding cars_annos.mat and "
                               "car_ims.tgz (or car_ims/)")
        mat_path = find_file(root, "cars_annos.mat", "CARS196 annotations")
        base = mat_path.parent
        if not (base / "car_ims").is_dir():
            archive = base / "car_ims.tgz"
            if not archive.is_file():
                raise DatasetError(f"{base}: neither car_ims/ nor car_ims.tgz")
            base = extract_archive(archive, work / "raw-cars196")
        try:
            annotations = loadmat(mat_path, squeeze_me=True)["annotations"]
        except (KeyError, ValueError, OSError) as error:
            raise DatasetError(f"{mat_path}: no readable 'annotations' ({error})") from error
        names = annotations.dtype.names or ()
        for needed in ("relative_im_path", "class"):
            if needed not in names:
                raise DatasetError(f"{mat_path}: annotations lack field {needed!r} "
                                   f"(fields: {', '.join(names)})")
        train, test = [], []
        for record in np.atleast_1d(annotations):
            rel = str(record["relative_im_path"])
            label = int(record["class"])
            item = Item(rel, label, base / rel)
            (train if label <= 98 else test).append(item)
        return Dataset(self.name, train, test, {mat_path.name: file_digest(mat_path)})
