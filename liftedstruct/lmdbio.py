"""Caffe Datums in LMDB: write whole databases atomically, read them back."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb
from tqdm import tqdm


def caffe_pb2():
    """pycaffe's protobuf module (Datum, NetParameter, ...)."""
    from liftedstruct.paths import import_caffe

    import_caffe()
    from caffe.proto import caffe_pb2 as module

    return module


def make_datum(payload: bytes, label: int, size: int, encoded: bool) -> bytes:
    datum = caffe_pb2().Datum()
    datum.channels, datum.height, datum.width = 3, size, size
    datum.data = payload
    datum.label = int(label)
    datum.encoded = encoded
    return datum.SerializeToString()


def record_bytes(value_bytes: float) -> float:
    """Disk bytes of one LMDB record: values past about half a 4 KiB page go
    to whole overflow pages; small ones share leaf pages (about 2/3 full)."""
    if value_bytes + 64 > 2000:
        return math.ceil((value_bytes + 16) / 4096) * 4096 + 48
    return (value_bytes + 32) * 1.5


def write_lmdb(path: Path, records: Iterable[bytes], total: int, desc: str,
               map_size: int) -> None:
    """Write records under keys 000000000, 000000001, ... to path.partial,
    then rename to path: the prototxt never sees a half-written LMDB."""
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    env = lmdb.open(str(tmp), map_size=map_size, subdir=True, meminit=False)
    txn = env.begin(write=True)
    try:
        for position, value in enumerate(tqdm(records, total=total, desc=desc,
                                              unit="rec")):
            txn.put(f"{position:09d}".encode(), value)
            if position % 2000 == 1999:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
    except BaseException:
        txn.abort()
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    env.close()
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def read_datums(path: Path, keys: Iterable[str] | None = None) -> Iterator:
    """(key, Datum) of an LMDB in key order, or of the given keys only."""
    pb2 = caffe_pb2()
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            if keys is None:
                for key, value in txn.cursor():
                    yield key.decode(), pb2.Datum.FromString(value)
            else:
                for key in keys:
                    value = txn.get(str(key).encode())
                    yield str(key), None if value is None else pb2.Datum.FromString(value)
    finally:
        env.close()


def read_labels(path: Path) -> list[int]:
    """Labels of every record in key order (for checks and tools)."""
    return [datum.label for _, datum in read_datums(path)]
