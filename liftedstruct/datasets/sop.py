"""Stanford Online Products: Ebay_train.txt (59,551 images, 11,318 classes)
and Ebay_test.txt (60,502 images, 11,316 classes)."""

from __future__ import annotations

from pathlib import Path

from liftedstruct.datasets.base import (
    Dataset,
    DatasetSource,
    Item,
    check_inside,
    list_files,
    read_table,
    refuse_repeats,
)
from liftedstruct.errors import DatasetError
from liftedstruct.files import file_digest

HEADER = ["image_id", "class_id", "super_class_id", "path"]


class Sop(DatasetSource):
    name = "sop"
    counts = (59551, 60502, 11318, 11316)
    download = "Stanford_Online_Products.zip (Stanford Online Products)"

    def load(self, root: Path | None, work: Path) -> Dataset:
        """Stanford_Online_Products.zip or its folder."""
        train_txt, test_txt, archive = list_files(
            root, work, "sop", "Ebay_train.txt", "Ebay_test.txt",
            "Online Products' split lists")
        base = train_txt.parent
        tables = []
        for path in (train_txt, test_txt):
            header = path.read_text().splitlines()[:1]
            if not header or header[0].split() != HEADER:
                raise DatasetError(f"{path}: expected the header '{' '.join(HEADER)}', "
                                   f"got {header[:1]}")
            tables.append(read_table(path, 4, header=True, integers=(0, 1, 2)))
        every = tables[0] + tables[1]
        refuse_repeats(every, 0, "image_id")
        refuse_repeats(every, 3, "path")
        check_inside(every, 3, "path")
        train_classes = {row.fields[1]: row.where for row in tables[0]}
        for row in tables[1]:
            if row.fields[1] in train_classes:
                raise DatasetError(f"{row.where}: class_id {row.fields[1]} is also a "
                                   f"training class ({train_classes[row.fields[1]]}); the "
                                   "split must be class-disjoint")
        splits = [[Item(row.fields[3], row.fields[1], base / row.fields[3]) for row in table]
                  for table in tables]
        checksums = {p.name: file_digest(p) for p in (train_txt, test_txt)}
        return Dataset(self.name, splits[0], splits[1], {**checksums, **archive})
