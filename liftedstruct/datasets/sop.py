"""Stanford Online Products: Ebay_train.txt (59,551 images, 11,318 classes)
and Ebay_test.txt (60,502 images, 11,316 classes)."""

from __future__ import annotations

from pathlib import Path

from liftedstruct.datasets.base import Dataset, DatasetSource, Item, list_files, read_table
from liftedstruct.errors import DatasetError
from liftedstruct.files import file_digest

HEADER = ["image_id", "class_id", "super_class_id", "path"]


class Sop(DatasetSource):
    name = "sop"
    counts = (59551, 60502, 11318, 11316)
    download = "Stanford_Online_Products.zip (Stanford Online Products)"

    def load(self, root: Path | None, work: Path) -> Dataset:
        """Stanford_Online_Products.zip or its folder."""
        train_txt, test_txt = list_files(root, work, "sop", "Ebay_train.txt",
                                         "Ebay_test.txt", "Online Products' split lists")
        base = train_txt.parent
        splits = []
        for path in (train_txt, test_txt):
            header = path.read_text().splitlines()[:1]
            if not header or header[0].split() != HEADER:
                raise DatasetError(f"{path}: expected the header '{' '.join(HEADER)}', "
                                   f"got {header[:1]}")
            splits.append([Item(row[3], int(row[1]), base / row[3])
                           for row in read_table(path, 4, header=True)])
        checksums = {p.name: file_digest(p) for p in (train_txt, test_txt)}
        return Dataset(self.name, splits[0], splits[1], checksums)
