"""scikit-learn's 1,797 8x8 handwritten digits (offline): digits 0-4 train,
5-9 test. A fast source for tests; too easy to show the paper's point."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from liftedstruct.datasets.base import Dataset, DatasetSource, Item


class Digits(DatasetSource):
    name = "digits"
    counts = (901, 896, 5, 5)
    image_size = 32
    needs_root = False

    def load(self, root: Path | None, work: Path) -> Dataset:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        train, test = [], []
        for index, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
            item = Item(f"digits/{index:04d}", int(label), pixels=image)
            (train if label <= 4 else test).append(item)
        checksum = hashlib.sha256(pixels.tobytes() + digits.target.tobytes()).hexdigest()
        return Dataset(self.name, train, test, {"sklearn.load_digits": checksum})
