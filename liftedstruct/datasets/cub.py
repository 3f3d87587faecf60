"""CUB-200-2011: classes 1-100 train (5,864 images), 101-200 test (5,924)."""

from __future__ import annotations

from pathlib import Path

from liftedstruct.datasets.base import (
    Dataset,
    DatasetSource,
    Item,
    check_inside,
    check_range,
    list_files,
    read_table,
    refuse_repeats,
)
from liftedstruct.errors import DatasetError
from liftedstruct.files import file_digest


class Cub(DatasetSource):
    name = "cub"
    counts = (5864, 5924, 100, 100)
    classes = 200
    download = "CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/)"

    def load(self, root: Path | None, work: Path) -> Dataset:
        """CUB_200_2011.tgz or its folder."""
        images_txt, labels_txt, archive = list_files(
            root, work, "cub", "images.txt", "image_class_labels.txt",
            "CUB-200-2011's image list and class labels")
        base = images_txt.parent
        image_rows = read_table(images_txt, 2, integers=(0,))
        label_rows = read_table(labels_txt, 2, integers=(0, 1))
        refuse_repeats(image_rows, 0, "image id")
        refuse_repeats(image_rows, 1, "image path")
        check_inside(image_rows, 1, "image path")
        refuse_repeats(label_rows, 0, "image id")
        check_range(label_rows, 1, 1, self.classes, "class id")
        images = {row.fields[0]: row.fields[1] for row in image_rows}
        labels = {row.fields[0]: row.fields[1] for row in label_rows}
        if images.keys() != labels.keys():
            only = sorted(set(images) ^ set(labels))
            raise DatasetError(f"{labels_txt} does not match {images_txt}: image ids "
                               f"{', '.join(map(str, only[:5]))} are in one file only")
        train, test = [], []
        for image_id in sorted(images):
            label = labels[image_id]
            item = Item(images[image_id], label, base / "images" / images[image_id])
            (train if label <= 100 else test).append(item)
        checksums = {p.name: file_digest(p) for p in (images_txt, labels_txt)}
        return Dataset(self.name, train, test, {**checksums, **archive})
