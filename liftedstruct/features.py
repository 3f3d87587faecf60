"""Test-set features through pycaffe: deterministic preprocessing (centre
crop, no mirror, the training mean and scale), resumable chunked output."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import lmdb
import numpy as np
from google.protobuf import text_format
from tqdm import tqdm

from liftedstruct.datasets import datum_image

CHUNK = 1024  # images per resumable part


class ExtractionError(RuntimeError):
    """Bad input to feature extraction; the message names it."""


def feature_key(blob: str) -> str:
    """npz key of a blob's features when a file holds several."""
    return "features_" + blob.replace("/", "_")


@dataclass(frozen=True)
class Transform:
    crop: int
    mean: tuple[float, ...] = (104.0, 117.0, 123.0)
    scale: float = 1.0

    @classmethod
    def from_train_val(cls, path: Path, caffe_pb2) -> Transform:
        """The TEST-phase Data layer's transform_param of a train_val net."""
        net = caffe_pb2.NetParameter()
        text_format.Merge(path.read_text(), net)
        for layer in net.layer:
            if layer.type == "Data" and any(rule.phase == caffe_pb2.TEST
                                            for rule in layer.include):
                param = layer.transform_param
                return cls(crop=param.crop_size, mean=tuple(param.mean_value),
                           scale=param.scale)
        raise ExtractionError(f"{path}: no TEST-phase Data layer to take the transform from")


def preprocess(images: list[np.ndarray], transform: Transform) -> np.ndarray:
    """BGR uint8 HxWx3 -> N x 3 x crop x crop float32: centre crop, minus mean, x scale."""
    batch = np.empty((len(images), 3, transform.crop, transform.crop), dtype=np.float32)
    for index, image in enumerate(images):
        height, width = image.shape[:2]
        if height < transform.crop or width < transform.crop:
            raise ExtractionError(f"image of {width}x{height} is smaller than the "
                                  f"{transform.crop} crop")
        top, left = (height - transform.crop) // 2, (width - transform.crop) // 2
        crop = image[top:top + transform.crop, left:left + transform.crop].astype(np.float32)
        if transform.mean:
            crop -= np.asarray(transform.mean, dtype=np.float32)
        batch[index] = crop.transpose(2, 0, 1) * transform.scale
    return batch


def _decode_datum(value: bytes, caffe_pb2, where: str) -> tuple[int, np.ndarray]:
    datum = caffe_pb2.Datum.FromString(value)
    image = datum_image(datum)
    if image is None:
        raise ExtractionError(f"{where}: undecodable image")
    return datum.label, image


class LmdbSource:
    """Records of a test LMDB in key order: (id, label, image)."""

    def __init__(self, path: Path, caffe_pb2):
        if not (path / "data.mdb").exists():
            raise ExtractionError(f"{path}: not an LMDB (no data.mdb)")
        self.path, self.caffe_pb2 = path, caffe_pb2
        self.env = lmdb.open(str(path), readonly=True, lock=False)
        self.count = self.env.stat()["entries"]

    def __len__(self) -> int:
        return self.count

    def read(self, start: int) -> Iterator[tuple[str, int, np.ndarray]]:
        with self.env.begin() as txn:
            cursor = txn.cursor()
            cursor.first()
            for _ in range(start):
                cursor.next()
            for key, value in cursor.iternext():
                label, image = _decode_datum(value, self.caffe_pb2,
                                             f"{self.path} record {key.decode()}")
                yield key.decode(), label, image


class ImageListSource:
    """'path label' lines (as Caffe's convert_imageset takes), resized."""

    def __init__(self, listing: Path, root: Path | None, resize: int):
        self.items = []
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ExtractionError(f"{listing}:{number}: expected 'path label', got "
                                      f"{line!r}")
            self.items.append((parts[0], int(parts[1])))
        self.root, self.resize = root or listing.parent, resize

    def __len__(self) -> int:
        return len(self.items)

    def read(self, start: int) -> Iterator[tuple[str, int, np.ndarray]]:
        for path, label in self.items[start:]:
            image = cv2.imread(str(self.root / path), cv2.IMREAD_COLOR)
            if image is None:
                raise ExtractionError(f"{self.root / path}: missing or not an image")
            yield path, label, cv2.resize(image, (self.resize, self.resize),
                                          interpolation=cv2.INTER_LINEAR)


def extract(net, source, blobs: list[str], transform: Transform, out: Path,
            batch: int = 64) -> Path:
    """Run the net over source in chunks (kept in out.parts/ so that an
    interrupted run resumes), then write out via a temporary name."""
    for blob in blobs:
        if blob not in net.blobs:
            raise ExtractionError(f"the net has no blob {blob!r} (blobs: "
                                  f"{', '.join(net.blobs)})")
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    total = len(source)
    if total == 0:
        raise ExtractionError("the source holds no images")
    chunks = range(0, total, CHUNK)
    done = {int(p.stem.split("_")[1]) for p in parts.glob("chunk_*.npz")}
    input_blob = net.inputs[0]
    with tqdm(total=total, desc=f"features {out.name}", unit="img") as bar:
        for start in chunks:
            count = min(CHUNK, total - start)
            if start in done:
                bar.update(count)
                continue
            ids, labels, outputs = [], [], {blob: [] for blob in blobs}
            reader = source.read(start)
            while len(ids) < count:
                items = [next(reader) for _ in range(min(batch, count - len(ids)))]
                data = preprocess([item[2] for item in items], transform)
                net.blobs[input_blob].reshape(*data.shape)
                net.blobs[input_blob].data[...] = data
                net.forward()
                for blob in blobs:
                    outputs[blob].append(net.blobs[blob].data.reshape(len(items), -1).copy())
                ids += [item[0] for item in items]
                labels += [item[1] for item in items]
                bar.update(len(items))
            tmp = parts / f"chunk_{start:09d}.tmp.npz"
            np.savez(tmp, ids=np.array(ids), labels=np.array(labels),
                     **{feature_key(b): np.concatenate(outputs[b]) for b in blobs})
            tmp.replace(parts / f"chunk_{start:09d}.npz")
    pieces = [np.load(parts / f"chunk_{start:09d}.npz") for start in chunks]
    arrays = {"ids": np.concatenate([p["ids"] for p in pieces]),
              "labels": np.concatenate([p["labels"] for p in pieces])}
    for blob in blobs:
        stacked = np.concatenate([p[feature_key(blob)] for p in pieces]).astype(np.float32)
        arrays["features" if len(blobs) == 1 else feature_key(blob)] = stacked
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)
    shutil.rmtree(parts)
    return out
