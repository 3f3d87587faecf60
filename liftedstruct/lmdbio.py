"""Caffe Datums in LMDB: write whole databases atomically, read them back
checked (a folder that is not an LMDB, or values that are not Datums, are
named as such)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import lmdb
from tqdm import tqdm

from liftedstruct.errors import LmdbError, OutputError
from liftedstruct.files import atomic_folder
from liftedstruct.paths import caffe_pb2


def make_datum(payload: bytes, label: int, size: int, encoded: bool,
               pb2: ModuleType | None = None) -> bytes:
    """A serialized Caffe Datum (pb2: pycaffe's caffe_pb2, looked up when not
    given; a caller writing many datums passes it once looked up)."""
    datum = (pb2 or caffe_pb2()).Datum()
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
    with atomic_folder(path) as tmp:
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
        except BaseException as error:
            txn.abort()
            if isinstance(error, lmdb.DiskError):
                raise OutputError(f"disk full writing {tmp} ({error}); free some space "
                                  "and run the same command again") from error
            raise
        finally:
            env.close()


def open_lmdb(path: Path, what: str = "") -> lmdb.Environment:
    """An existing LMDB, read-only; an error naming it when it is none."""
    name = f"{what} {path}".strip()
    if not (path / "data.mdb").is_file():
        raise LmdbError(f"{name}: not an LMDB (no data.mdb)")
    try:
        return lmdb.open(str(path), readonly=True, lock=False)
    except (lmdb.Error, OSError) as error:
        raise LmdbError(f"{name}: not a readable LMDB ({error})") from error


def parse_datum(value: bytes, where: str, pb2=None):
    """A Caffe Datum from an LMDB value; where names the LMDB and key."""
    from google.protobuf.message import DecodeError

    pb2 = pb2 or caffe_pb2()
    try:
        datum = pb2.Datum.FromString(value)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise LmdbError(f"{where}: not a Caffe Datum ({error}); give an LMDB written "
                        "by tools/prepare_dataset.py or convert_imageset") from error
    if not datum.data:
        raise LmdbError(f"{where}: a Datum without image data (float_data or another "
                        "message); give an LMDB of image Datums")
    return datum


def check_datum_lmdb(path: Path, what: str = "") -> int:
    """An LMDB of Caffe image Datums (its first record read and parsed), or
    an LmdbError naming it: what Caffe's Data layers and the tools read,
    checked before anything is written for it. Returns the record count."""
    name = f"{what} {path}".strip()
    pb2 = caffe_pb2()  # a missing Caffe build is named first
    if not path.is_dir():
        raise LmdbError(f"{name}: {'not a folder' if path.exists() else 'no such folder'}; "
                        "give an LMDB folder (with data.mdb)")
    env = open_lmdb(path, what)
    try:
        with env.begin() as txn:
            count = txn.stat()["entries"]
            first = next(txn.cursor().iternext(), None)
    except lmdb.Error as error:
        raise LmdbError(f"{name}: not a readable LMDB ({error})") from error
    finally:
        env.close()
    if not count or first is None:
        raise LmdbError(f"{name}: an LMDB without records; give one written by "
                        "tools/prepare_dataset.py or convert_imageset")
    parse_datum(first[1], f"{name} record {first[0].decode(errors='replace')}", pb2)
    return count


def read_datums(path: Path, keys: Iterable[str] | None = None) -> Iterator:
    """(key, Datum) of an LMDB in key order, or of the given keys only (None
    for a key it does not hold)."""
    pb2 = caffe_pb2()
    env = open_lmdb(path)
    try:
        with env.begin() as txn:
            if keys is None:
                for key, value in txn.cursor():
                    yield key.decode(), parse_datum(value, f"{path} record {key!r}", pb2)
            else:
                for key in keys:
                    value = txn.get(str(key).encode())
                    yield str(key), None if value is None else parse_datum(
                        value, f"{path} record {key!r}", pb2)
    finally:
        env.close()


def read_labels(path: Path) -> list[int]:
    """Labels of every record in key order."""
    return [datum.label for _, datum in read_datums(path)]


def fingerprint(path: Path) -> int:
    """The training LMDB's fingerprint of docs/BATCHES.md, which a snapshot's
    .solverstate records: h = mix(n) for n records, then h = mix(h ^ crc32)
    of each serialized value in key order (zlib's CRC-32)."""
    from liftedstruct.datasets.layouts import mix

    env = open_lmdb(path, "training LMDB")
    try:
        with env.begin() as txn:
            h = mix(txn.stat()["entries"])
            for value in txn.cursor().iternext(keys=False, values=True):
                h = mix(h ^ zlib.crc32(value))
    finally:
        env.close()
    return h
