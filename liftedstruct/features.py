"""Test-set features through pycaffe: deterministic preprocessing (centre
crop, no mirror, the training mean and scale), resumable chunked output that
is only ever reused for the same weights, net, images and settings."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from liftedstruct.constants import IMAGENET_MEAN_BGR
from liftedstruct.errors import ExtractionError
from liftedstruct.featurefile import feature_key, save_features
from liftedstruct.files import atomic_write_text, file_digest, locked_file
from liftedstruct.images import datum_image, read_image
from liftedstruct.lmdbio import open_lmdb, parse_datum
from liftedstruct.paths import caffe_pb2, read_prototxt, use_device
from liftedstruct.weights import check_fit, net_parameters, upstream_layers

CHUNK = 1024  # images per resumable part
# A finished part; anything else in the parts folder (a temporary file of an
# interrupted save) is not one.
CHUNK_NAME = re.compile(r"chunk_(\d{9})\.npz")
# A crop under this fraction of the stored image's side is refused unless
# asked for: a deploy net for other inputs would silently see a small centre.
MIN_CROP_FRACTION = 0.75


@dataclass(frozen=True)
class Transform:
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN_BGR
    scale: float = 1.0

    @classmethod
    def from_train_val(cls, path: Path) -> Transform:
        """The TEST-phase Data layer's transform_param of a train_val net."""
        pb2 = caffe_pb2()
        net = read_prototxt(path, "--train-val")
        for layer in net.layer:
            if layer.type == "Data" and any(rule.phase == pb2.TEST for rule in layer.include):
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


class LmdbSource:
    """Records of a test LMDB in key order: (id, label, image). The database
    is open only while it is read (LMDB allows one handle per process)."""

    def __init__(self, path: Path):
        env = open_lmdb(path, "--lmdb")
        try:
            self.count = env.stat()["entries"]
        finally:
            env.close()
        self.path = path

    def __len__(self) -> int:
        return self.count

    def identity(self) -> str:
        stat = (self.path / "data.mdb").stat()
        return f"lmdb:{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{self.count}"

    def read(self, start: int) -> Iterator[tuple[str, int, np.ndarray]]:
        pb2 = caffe_pb2()
        env = open_lmdb(self.path, "--lmdb")
        try:
            with env.begin() as txn:
                cursor = txn.cursor()
                cursor.first()
                for _ in range(start):
                    cursor.next()
                for key, value in cursor.iternext():
                    where = f"{self.path} record {key.decode(errors='replace')}"
                    datum = parse_datum(value, where, pb2)
                    image = datum_image(datum)
                    if image is None:
                        raise ExtractionError(f"{where}: undecodable image")
                    yield key.decode(errors="replace"), datum.label, image
        finally:
            env.close()


class ImageListSource:
    """'path label' lines (as Caffe's convert_imageset takes), resized."""

    def __init__(self, listing: Path, root: Path | None, resize: int):
        self.listing = listing
        self.items = []
        if not listing.is_file():
            raise ExtractionError(f"--images {listing}: no such file")
        try:
            lines = listing.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ExtractionError(f"--images {listing}: not a text list ({error})") from error
        first: dict[str, int] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ExtractionError(f"{listing}:{number}: expected 'path label', got "
                                      f"{line!r}")
            if parts[0] in first:
                raise ExtractionError(f"{listing}:{number}: {parts[0]} again (first at "
                                      f"line {first[parts[0]]}); each image once")
            first[parts[0]] = number
            self.items.append((parts[0], int(parts[1])))
        self.root, self.resize = root or listing.parent, resize

    def __len__(self) -> int:
        return len(self.items)

    def identity(self) -> str:
        return (f"list:{self.listing.resolve()}:{file_digest(self.listing)}:"
                f"{Path(self.root).resolve()}:{self.resize}")

    def read(self, start: int) -> Iterator[tuple[str, int, np.ndarray]]:
        for path, label in self.items[start:]:
            image = read_image(self.root / path, self.resize)
            if image is None:
                raise ExtractionError(f"{self.root / path}: missing or not an image")
            yield path, label, image


def run_key(weights: Path | None, deploy: Path, source, blobs: list[str],
            transform: Transform) -> dict:
    """What the extracted rows depend on; stored beside the resumable parts."""
    return {"weights": file_digest(weights) if weights else None,
            "deploy": file_digest(deploy), "source": source.identity(),
            "blobs": list(blobs), "transform": asdict(transform), "chunk": CHUNK}


def check_crop(source, transform: Transform, allow_small: bool) -> None:
    """Refuse a centre crop much smaller than the stored images unless asked."""
    if len(source) == 0:
        raise ExtractionError("the source holds no images")
    _, _, image = next(source.read(0))
    side = min(image.shape[:2])
    if transform.crop < MIN_CROP_FRACTION * side and not allow_small:
        raise ExtractionError(
            f"the net takes {transform.crop}x{transform.crop} inputs but the images are "
            f"{image.shape[1]}x{image.shape[0]}: each would be cut to its centre "
            f"{transform.crop}x{transform.crop}. Use a deploy net for this image size, "
            f"or pass --crop {transform.crop} to accept the centre crop")


def stored_key(out: Path) -> dict | None:
    """The run key a features file was extracted with (None if it has none
    or cannot be read)."""
    if not out.is_file():
        return None
    try:
        with np.load(out, allow_pickle=False) as data:
            return json.loads(str(data["run_key"])) if "run_key" in data.files else None
    except (OSError, ValueError, KeyError, EOFError):
        return None


def check_blobs(net, blobs: list[str]) -> None:
    for blob in blobs:
        if blob not in net.blobs:
            raise ExtractionError(f"the net has no blob {blob!r} (blobs: "
                                  f"{', '.join(net.blobs)})")


def open_net(caffe, deploy: Path, weights: Path, blobs: list[str], gpu: int | None):
    """The deploy net on the CPU or the given GPU with the weights copied in,
    once they are known to hold every learnable layer that computes the
    blobs (Caffe would silently leave the others at their random start)."""
    read_prototxt(deploy, "--deploy")  # Caffe would die on a bad one with a stack dump
    use_device(caffe, gpu)
    net = caffe.Net(str(deploy), caffe.TEST)
    check_blobs(net, blobs)
    needed = upstream_layers(net, blobs)
    check_fit(weights, {k: v for k, v in net_parameters(net).items() if k in needed},
              f"{deploy} to compute {', '.join(blobs)}")
    net.copy_from(str(weights))
    return net


def extract_checked(net, deploy: Path, weights: Path, source, blobs: list[str],
                    transform: Transform, out: Path, allow_small: bool = False,
                    batch: int = 64) -> Path:
    """extract() for a net from open_net: the crop checked against the images
    (check_crop), the run keyed by the weights, net, images and transform."""
    check_crop(source, transform, allow_small)
    out.parent.mkdir(parents=True, exist_ok=True)
    return extract(net, source, blobs, transform, out,
                   run_key(weights, deploy, source, blobs, transform), batch)


def extract(net, source, blobs: list[str], transform: Transform, out: Path,
            key: dict, batch: int = 64) -> Path:
    """_extract under a lock on out: a second extraction into the same file
    while one runs is refused (they would share and remove its parts)."""
    with locked_file(out, "feature extraction"):
        return _extract(net, source, blobs, transform, out, key, batch)


def _extract(net, source, blobs: list[str], transform: Transform, out: Path,
             key: dict, batch: int = 64) -> Path:
    """Run the net over source in chunks kept in out.parts/ so that an
    interrupted run resumes, then write out via a temporary name, with the
    key (weights, net, images, blobs, transform) as its `run_key`. Parts left
    by a run with another key are discarded, never mixed in; an out written
    with the same key is kept as it is."""
    check_blobs(net, blobs)
    total = len(source)
    if total == 0:
        raise ExtractionError("the source holds no images")
    parts = out.with_name(out.name + ".parts")
    key_file = parts / "key.json"
    key = json.loads(json.dumps(key))  # as stored: tuples become lists
    if stored_key(out) == key:
        print(f"{out}: extracted earlier with the same weights, net, images and settings",
              flush=True)
        return out
    if parts.exists():
        try:
            stored = json.loads(key_file.read_text())
        except (OSError, ValueError):
            stored = None
        if stored != key:
            print(f"{parts}: left by an extraction with other weights, net, images or "
                  "settings; starting over", flush=True)
            shutil.rmtree(parts)
    chunks = range(0, total, CHUNK)
    done = set()
    if parts.exists():
        for path in parts.iterdir():
            found = CHUNK_NAME.fullmatch(path.name)
            if found:
                done.add(int(found.group(1)))
            elif path != key_file:
                path.unlink()  # a part whose save was interrupted
    input_blob = net.inputs[0]
    try:
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
                        outputs[blob].append(
                            net.blobs[blob].data.reshape(len(items), -1).copy())
                    ids += [item[0] for item in items]
                    labels += [item[1] for item in items]
                    bar.update(len(items))
                if not parts.exists():
                    parts.mkdir(parents=True)
                    atomic_write_text(key_file, json.dumps(key, indent=2) + "\n")
                save_features(parts / f"chunk_{start:09d}.npz", ids=np.array(ids),
                              labels=np.array(labels),
                              **{feature_key(b): np.concatenate(outputs[b]) for b in blobs})
    except BaseException:
        if parts.exists() and not any(CHUNK_NAME.fullmatch(p.name)
                                      for p in parts.iterdir()):
            shutil.rmtree(parts)  # nothing worth resuming
        raise
    pieces = [np.load(parts / f"chunk_{start:09d}.npz") for start in chunks]
    arrays = {"ids": np.concatenate([p["ids"] for p in pieces]),
              "labels": np.concatenate([p["labels"] for p in pieces])}
    for blob in blobs:
        stacked = np.concatenate([p[feature_key(blob)] for p in pieces]).astype(np.float32)
        arrays["features" if len(blobs) == 1 else feature_key(blob)] = stacked
    save_features(out, **arrays, run_key=np.array(json.dumps(key, sort_keys=True)))
    shutil.rmtree(parts)
    return out
