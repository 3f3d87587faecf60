"""Datasets as their users download them (one module per source, all with
the shape of base.DatasetSource), and the preparer that turns any of them
into the LMDBs the prototxts read."""

from __future__ import annotations

from liftedstruct.datasets.base import Dataset, DatasetSource, Item
from liftedstruct.datasets.cars196 import Cars196
from liftedstruct.datasets.cub import Cub
from liftedstruct.datasets.digits import Digits
from liftedstruct.datasets.glyphs import Glyphs
from liftedstruct.datasets.sop import Sop
from liftedstruct.errors import DatasetError

SOURCES: dict[str, DatasetSource] = {source.name: source for source in (
    Glyphs(), Cub(), Cars196(), Sop(), Digits())}
DATASETS = tuple(SOURCES)


def get_source(name: str) -> DatasetSource:
    if name not in SOURCES:
        raise DatasetError(f"unknown dataset {name!r} ({', '.join(DATASETS)})")
    return SOURCES[name]


__all__ = ["DATASETS", "SOURCES", "Dataset", "DatasetSource", "Item", "get_source"]
