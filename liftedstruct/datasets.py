"""Datasets as their users download them, to the LMDBs the prototxts read.

CUB-200-2011, CARS196 and Stanford Online Products with the paper's
class-disjoint splits, and scikit-learn's digits for the offline demo.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from liftedstruct import __version__, layouts
from liftedstruct.files import atomic_write_text, file_digest

# (train images, test images, train classes, test classes) of the real sets.
EXPECTED_COUNTS = {
    "cub": (5864, 5924, 100, 100),
    "cars196": (8054, 8131, 98, 98),
    "sop": (59551, 60502, 11318, 11316),
    "digits": (901, 896, 5, 5),
}
DATASETS = tuple(EXPECTED_COUNTS)
DEFAULT_SIZE = {"cub": 256, "cars196": 256, "sop": 256, "digits": 32}
METHODS = ("lifted", "contrastive", "triplet")
DEFAULT_BATCH = {"lifted": 128, "contrastive": 128, "triplet": 120}


class DatasetError(RuntimeError):
    """Input that cannot be turned into LMDBs; the message names the file."""


@dataclass
class Item:
    """One image: where it comes from and its original class id."""

    path: str  # the dataset's own relative path (or digits/<index>)
    label: int
    file: Path | None = None  # on disk; None for in-memory pixels
    pixels: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Dataset:
    name: str
    train: list[Item]
    test: list[Item]
    checksums: dict[str, str]


# ---------------------------------------------------------------- sources

def _extract(archive: Path, dest: Path) -> Path:
    """Extract an archive once into dest (via a temporary folder)."""
    stamp = dest / ".extracted"
    if stamp.exists() and stamp.read_text() == archive.name:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    print(f"extracting {archive} to {dest}", flush=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(tmp)
        else:
            with tarfile.open(archive) as handle:
                handle.extractall(tmp, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"{archive}: cannot extract ({error}); a truncated "
                           "download is the usual cause") from error
    (tmp / ".extracted").write_text(archive.name)
    tmp.rename(dest)
    return dest


def _find_file(root: Path, name: str, what: str) -> Path:
    """root/name, or the one match below root."""
    if (root / name).is_file():
        return root / name
    found = sorted(root.rglob(name))
    if not found:
        raise DatasetError(f"{root}: no {name} found ({what})")
    return found[0]


def _read_table(path: Path, columns: int, header: bool = False) -> list[list[str]]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: unreadable ({error})") from error
    rows = []
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != columns:
            raise DatasetError(f"{path}:{number}: expected {columns} fields, got "
                               f"{len(parts)}: {line!r}")
        rows.append(parts)
    return rows


def _dataset_files(root: Path, work: Path, name: str, first: str, second: str,
                   what: str) -> tuple[Path, Path]:
    """The dataset's two list files (first found anywhere below root, second
    beside it), extracting root first when it is the archive."""
    if root.is_file():
        root = _extract(root, work / f"raw-{name}")
    first_path = _find_file(root, first, what)
    second_path = first_path.parent / second
    if not second_path.is_file():
        raise DatasetError(f"{second_path}: missing ({what})")
    return first_path, second_path


def load_cub(root: Path, work: Path) -> Dataset:
    """CUB_200_2011.tgz or its folder: classes 1-100 train, 101-200 test."""
    images_txt, labels_txt = _dataset_files(root, work, "cub", "images.txt",
                                            "image_class_labels.txt",
                                            "CUB-200-2011's image list and class labels")
    base = images_txt.parent
    images = {row[0]: row[1] for row in _read_table(images_txt, 2)}
    labels = {row[0]: row[1] for row in _read_table(labels_txt, 2)}
    if images.keys() != labels.keys():
        only = sorted(set(images) ^ set(labels), key=lambda s: int(s) if s.isdigit() else 0)
        raise DatasetError(f"{labels_txt} does not match {images_txt}: image ids "
                           f"{', '.join(only[:5])} are in one file only")
    train, test = [], []
    for image_id in sorted(images, key=int):
        label = int(labels[image_id])
        item = Item(images[image_id], label, base / "images" / images[image_id])
        (train if label <= 100 else test).append(item)
    checksums = {p.name: file_digest(p) for p in (images_txt, labels_txt)}
    return Dataset("cub", train, test, checksums)


def load_cars196(root: Path, work: Path) -> Dataset:
    """cars_annos.mat + car_ims.tgz (or car_ims/): classes 1-98 train, 99-196
    test; the .mat's own test flag is ignored, as in the paper."""
    from scipy.io import loadmat

    if root.is_file():
        raise DatasetError(f"{root}: give the folder holding cars_annos.mat and "
                           "car_ims.tgz (or car_ims/)")
    mat_path = _find_file(root, "cars_annos.mat", "CARS196 annotations")
    base = mat_path.parent
    if not (base / "car_ims").is_dir():
        archive = base / "car_ims.tgz"
        if not archive.is_file():
            raise DatasetError(f"{base}: neither car_ims/ nor car_ims.tgz")
        base = _extract(archive, work / "raw-cars196")
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
    return Dataset("cars196", train, test, {mat_path.name: file_digest(mat_path)})


def load_sop(root: Path, work: Path) -> Dataset:
    """Stanford_Online_Products.zip or its folder: Ebay_train / Ebay_test."""
    train_txt, test_txt = _dataset_files(root, work, "sop", "Ebay_train.txt",
                                         "Ebay_test.txt", "Online Products' split lists")
    base = train_txt.parent
    splits = []
    for path in (train_txt, test_txt):
        header = path.read_text().splitlines()[:1]
        if not header or header[0].split() != ["image_id", "class_id", "super_class_id",
                                               "path"]:
            raise DatasetError(f"{path}: expected the header 'image_id class_id "
                               f"super_class_id path', got {header[:1]}")
        splits.append([Item(row[3], int(row[1]), base / row[3])
                       for row in _read_table(path, 4, header=True)])
    checksums = {p.name: file_digest(p) for p in (train_txt, test_txt)}
    return Dataset("sop", splits[0], splits[1], checksums)


def load_digits_dataset(root: Path | None, work: Path) -> Dataset:
    """scikit-learn's 1,797 8x8 digits: classes 0-4 train, 5-9 test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train, test = [], []
    for index, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        item = Item(f"digits/{index:04d}", int(label), pixels=image)
        (train if label <= 4 else test).append(item)
    checksum = hashlib.sha256(pixels.tobytes() + digits.target.tobytes()).hexdigest()
    return Dataset("digits", train, test, {"sklearn.load_digits": checksum})


LOADERS = {"cub": load_cub, "cars196": load_cars196, "sop": load_sop,
           "digits": load_digits_dataset}


def check_counts(dataset: Dataset) -> None:
    """The real sets' published counts; fail loudly when they differ."""
    expected = EXPECTED_COUNTS[dataset.name]
    actual = (len(dataset.train), len(dataset.test),
              len({i.label for i in dataset.train}), len({i.label for i in dataset.test}))
    if actual != expected:
        names = ("train images", "test images", "train classes", "test classes")
        diffs = [f"{n}: {a} (expected {e})"
                 for n, a, e in zip(names, actual, expected, strict=True) if a != e]
        raise DatasetError(f"{dataset.name}: counts differ from the published split: "
                           + "; ".join(diffs) + ". A truncated download is the usual "
                           "cause (--no-count-check to go on anyway)")


# ---------------------------------------------------------------- images

@dataclass(frozen=True)
class ImageFormat:
    size: int = 256
    encoding: str = "jpg"  # "jpg", "png", or "raw" for uint8 datums
    quality: int = 95


def process_image(item: Item, fmt: ImageFormat) -> tuple[bytes | None, str | None]:
    """Decode (grayscale, CMYK and alpha become 3-channel BGR), resize to
    size x size, encode. Returns (payload, None) or (None, reason)."""
    if item.pixels is not None:
        image = item.pixels
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    else:
        try:
            data = np.fromfile(item.file, dtype=np.uint8)
        except OSError as error:
            return None, f"unreadable: {error.strerror or error}"
        if data.size == 0:
            return None, "empty file"
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if image is None:
            return None, "not a decodable image"
    image = cv2.resize(image, (fmt.size, fmt.size), interpolation=cv2.INTER_LINEAR)
    if fmt.encoding == "raw":
        return np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes(), None
    params = [cv2.IMWRITE_JPEG_QUALITY, fmt.quality] if fmt.encoding == "jpg" else []
    ok, buffer = cv2.imencode("." + fmt.encoding, image, params)
    if not ok:
        return None, f"cannot encode as {fmt.encoding}"
    return buffer.tobytes(), None


def _process_job(job: tuple[Item, ImageFormat]) -> tuple[bytes | None, str | None]:
    return process_image(*job)


def process_images(items: list[Item], fmt: ImageFormat, workers: int,
                   desc: str) -> list[tuple[bytes | None, str | None]]:
    """process_image over items in parallel processes, in order."""
    jobs = [(item, fmt) for item in items]
    if workers <= 1 or len(items) < 64:
        return [_process_job(job) for job in tqdm(jobs, desc=desc, unit="img")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_process_job, jobs, chunksize=32), total=len(jobs),
                         desc=desc, unit="img"))


# ---------------------------------------------------------------- LMDB

def caffe_pb2():
    from liftedstruct.paths import import_caffe

    import_caffe()
    from caffe.proto import caffe_pb2 as module

    return module


def make_datum(payload: bytes, label: int, fmt: ImageFormat) -> bytes:
    datum = caffe_pb2().Datum()
    datum.channels, datum.height, datum.width = 3, fmt.size, fmt.size
    datum.data = payload
    datum.label = int(label)
    datum.encoded = fmt.encoding != "raw"
    return datum.SerializeToString()


def lmdb_record_bytes(value_bytes: float) -> float:
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


def read_datums(path: Path) -> Iterator:
    """Every Datum of an LMDB in key order, with its key."""
    pb2 = caffe_pb2()
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                yield key.decode(), pb2.Datum.FromString(value)
    finally:
        env.close()


def read_lmdb_labels(path: Path) -> list[int]:
    """Labels of every record in key order (for checks and tools)."""
    return [datum.label for _, datum in read_datums(path)]


def datum_image(datum) -> np.ndarray | None:
    """A Datum's image as BGR uint8 H x W x 3 (None if it does not decode)."""
    if datum.encoded:
        return cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
    image = np.frombuffer(datum.data, np.uint8).reshape(
        datum.channels, datum.height, datum.width).transpose(1, 2, 0)
    if datum.channels == 1:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    return image


# ---------------------------------------------------------------- prepare

@dataclass
class PrepareOptions:
    size: int = 256
    encoding: str = "jpg"
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    batch_size: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH))
    max_pairs: int | None = None
    skip_bad: bool = False
    count_check: bool = True
    workers: int = os.cpu_count() or 1


def _relabel(items: list[Item]) -> np.ndarray:
    """0-based labels, contiguous within the split, in class-id order."""
    classes = {label: index for index, label in
               enumerate(sorted({item.label for item in items}))}
    return np.array([classes[item.label] for item in items], dtype=np.int64)


def _config_key(dataset: Dataset, options: PrepareOptions, what: str) -> str:
    config = {"dataset": dataset.name, "checksums": dataset.checksums,
              "size": options.size, "encoding": options.encoding, "what": what,
              "seed": options.seed, "batch_size": options.batch_size,
              "max_pairs": options.max_pairs, "skip_bad": options.skip_bad,
              "version": __version__}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


class Preparer:
    """Writes one dataset's LMDBs into out, resuming finished parts."""

    def __init__(self, dataset: Dataset, out: Path, options: PrepareOptions):
        self.dataset, self.out, self.options = dataset, out, options
        self.fmt = ImageFormat(options.size, options.encoding)
        self.manifest_path = out / "manifest.json"
        self.manifest = (json.loads(self.manifest_path.read_text())
                         if self.manifest_path.exists() else {})
        self.manifest.setdefault("outputs", {})

    def _done(self, name: str, key: str) -> bool:
        entry = self.manifest["outputs"].get(name)
        return bool(entry and entry.get("key") == key and (self.out / name).exists())

    def _record(self, name: str, key: str, **info) -> None:
        self.manifest["outputs"][name] = {"key": key, **info}
        self.manifest.update({
            "dataset": self.dataset.name, "tool_version": __version__,
            "image_size": self.options.size, "encoding": self.options.encoding,
            "seed": self.options.seed, "source_checksums": self.dataset.checksums,
        })
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2) + "\n")

    def _encode_split(self, items: list[Item], split: str) -> tuple[list[Item], list[bytes]]:
        results = process_images(items, self.fmt, self.options.workers,
                                 f"{self.dataset.name} {split} images")
        bad = [(item, reason) for item, (_, reason) in zip(items, results, strict=True)
               if reason]
        if bad:
            report = self.out / f"bad_files_{split}.tsv"
            atomic_write_text(report, "".join(f"{item.file or item.path}\t{reason}\n"
                                          for item, reason in bad))
            if not self.options.skip_bad:
                listed = "; ".join(f"{item.file or item.path}: {reason}"
                                   for item, reason in bad[:5])
                raise DatasetError(f"{len(bad)} bad image(s) in the {split} split "
                                   f"(all in {report}): {listed}. --skip-bad leaves "
                                   "them out")
            print(f"skipping {len(bad)} bad image(s) of the {split} split: see {report}")
        kept = [(item, payload) for item, (payload, reason) in
                zip(items, results, strict=True) if not reason]
        return [k[0] for k in kept], [k[1] for k in kept]

    def _check_space(self, records: int, mean_bytes: float, name: str) -> int:
        estimate = int(records * lmdb_record_bytes(mean_bytes)) + (16 << 20)
        free = shutil.disk_usage(self.out).free
        print(f"{name}: {records:,} records, about {estimate / 1e9:.2f} GB "
              f"({free / 1e9:.1f} GB free)", flush=True)
        if estimate > free:
            raise DatasetError(f"{self.out}: {name} needs about {estimate / 1e9:.1f} GB "
                               f"but only {free / 1e9:.1f} GB is free; use --max-pairs")
        return max(4 * estimate, 1 << 30)  # map_size: the file stays sparse

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.options.count_check:
            check_counts(self.dataset)
        test_key = _config_key(self.dataset, self.options, "test")
        if not (self._done("test_lmdb", test_key) and self._done("test_index.tsv", test_key)):
            items, payloads = self._encode_split(self.dataset.test, "test")
            labels = _relabel(items)
            map_size = self._check_space(len(items), np.mean([len(p) for p in payloads]),
                                         "test_lmdb")
            write_lmdb(self.out / "test_lmdb",
                       (make_datum(p, y, self.fmt) for p, y in
                        zip(payloads, labels, strict=True)),
                       len(items), "test_lmdb", map_size)
            atomic_write_text(self.out / "test_index.tsv", "key\tlabel\tpath\n" + "".join(
                f"{i:09d}\t{y}\t{item.path}\n"
                for i, (item, y) in enumerate(zip(items, labels, strict=True))))
            info = {"records": len(items), "images": len(items),
                    "classes": int(len(set(labels.tolist())))}
            self._record("test_lmdb", test_key, **info)
            self._record("test_index.tsv", test_key, **info)
        pending = [m for m in self.options.methods
                   if not self._done(f"train_{m}_lmdb",
                                     _config_key(self.dataset, self.options, f"train_{m}"))]
        if pending:
            items, payloads = self._encode_split(self.dataset.train, "train")
            labels = _relabel(items)
            for method in pending:
                self._write_train(method, payloads, labels)
        return self.manifest

    def _write_train(self, method: str, payloads: list[bytes], labels: np.ndarray) -> None:
        batch = self.options.batch_size[method]
        name = f"train_{method}_lmdb"
        cache: dict[tuple[int, int], bytes] = {}

        def datum(index: int, label: int) -> bytes:
            if (index, label) not in cache:
                cache[(index, label)] = make_datum(payloads[index], label, self.fmt)
            return cache[(index, label)]

        try:
            if method == "triplet":
                order = layouts.triplet_order(labels, batch, self.options.seed,
                                              self.options.max_pairs)
            else:
                order, similarity = layouts.pair_order(labels, batch, self.options.seed,
                                                       self.options.max_pairs)
        except ValueError as error:
            raise DatasetError(f"{name}: {error}") from error
        if method == "triplet":
            records: Iterator[bytes] = (datum(i, labels[i]) for i in order)
            info = {"triplets": len(order) // 3}
        else:
            if method == "lifted":
                records = (datum(i, labels[i]) for i in order)
            else:  # contrastive: the label is the pair's similarity
                records = (datum(i, s) for i, s in zip(order, similarity, strict=True))
            info = {"pairs": len(order) // 2,
                    "positive_pairs": int(similarity.sum()) // 2}
        mean_bytes = float(np.mean([len(payloads[i]) for i in order[:2000]]))
        map_size = self._check_space(len(order), mean_bytes, name)
        write_lmdb(self.out / name, records, len(order), name, map_size)
        self._record(name, _config_key(self.dataset, self.options, f"train_{method}"),
                     records=len(order), batch_size=batch, images=len(labels),
                     classes=int(len(set(labels.tolist()))), **info)


def prepare(name: str, root: Path | None, out: Path, options: PrepareOptions) -> dict:
    if name not in LOADERS:
        raise DatasetError(f"unknown dataset {name!r} ({', '.join(DATASETS)})")
    if name != "digits":
        if root is None:
            raise DatasetError(f"{name}: --root is required (the downloaded archive or "
                               "its folder)")
        if not root.exists():
            raise DatasetError(f"{root}: no such file or folder")
    out.mkdir(parents=True, exist_ok=True)
    dataset = LOADERS[name](root, out)
    return Preparer(dataset, out, options).run()
