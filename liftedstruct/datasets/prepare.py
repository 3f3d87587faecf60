"""A dataset source to the LMDBs the prototxts read: the test LMDB and index,
the training set (docs/BATCHES.md) and a manifest that makes a rerun skip
what is already done from the same inputs.

Two layouts of the training set: "unique" (the default) writes each training
image once, train_lmdb and train_index.tsv in the test LMDB's format, from
which Caffe's MetricBatchData layer forms every loss's batches; "ordered"
writes one LMDB per method, train_<method>_lmdb, whose record order is the
batches (layouts.py), for Caffe's own Data layer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liftedstruct import __version__
from liftedstruct.choices import check_methods
from liftedstruct.constants import BATCH, IMAGE_SIZE, METHODS
from liftedstruct.datasets import layouts
from liftedstruct.datasets.base import Dataset, DatasetSource, Item
from liftedstruct.errors import DatasetError
from liftedstruct.files import (
    atomic_write_text,
    check_space,
    check_writable,
    human_bytes,
    locked_folder,
    read_json,
)
from liftedstruct.images import ImageFormat, process_images
from liftedstruct.lmdbio import make_datum, record_bytes, write_lmdb
from liftedstruct.paths import caffe_pb2

ENCODINGS = ("jpg", "png", "raw")
LAYOUTS = ("unique", "ordered")


@dataclass
class PrepareOptions:
    size: int = IMAGE_SIZE
    encoding: str = "jpg"
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    batch_size: dict[str, int] = field(default_factory=lambda: dict(BATCH))
    max_pairs: int | None = None
    skip_bad: bool = False
    count_check: bool = True
    workers: int = os.cpu_count() or 1
    layout: str = "unique"

    def validate(self) -> None:
        """Refuse settings that would fail late or silently mean something else."""
        if self.size < 1:
            raise DatasetError(f"--size {self.size}: the image side must be at least 1")
        if self.encoding not in ENCODINGS:
            raise DatasetError(f"encoding {self.encoding!r}: one of {', '.join(ENCODINGS)}")
        if self.layout not in LAYOUTS:
            raise DatasetError(f"--layout {self.layout}: one of {', '.join(LAYOUTS)}")
        check_methods(self.methods, DatasetError)
        for method in self.methods:
            batch = self.batch_size.get(method, 0)
            option = batch_option(method)
            group = 3 if method == "triplet" else 2
            if batch < group or batch % group:
                raise DatasetError(f"{option} {batch}: {method} batches hold whole "
                                   f"{'triplets' if group == 3 else 'pairs'}, so the "
                                   f"batch must be a positive multiple of {group}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise DatasetError(f"--max-pairs {self.max_pairs}: must be at least 1")
        if self.workers < 1:
            raise DatasetError(f"--workers {self.workers}: must be at least 1")


def batch_option(method: str) -> str:
    return "--triplet-batch-size" if method == "triplet" else "--batch-size"


def check_train_labels(items: list[Item], options: PrepareOptions, where: str) -> None:
    """Refuse a training split the batches cannot be formed from, as the
    MetricBatchData layer would (docs/BATCHES.md): a class of one image, a
    single class, or a method whose batch cannot be filled (given
    --max-pairs, which caps the pairs and the triplets)."""
    counts: dict[int, list[Item]] = {}
    for item in items:
        counts.setdefault(item.label, []).append(item)
    single = sorted(label for label, members in counts.items() if len(members) == 1)
    if single:
        label = single[0]
        raise DatasetError(f"{where}: class {label} has one image "
                           f"({counts[label][0].path}; {len(single)} such class(es): "
                           f"{', '.join(map(str, single[:10]))}); a class needs two images "
                           "for a positive pair (the authors' generator refuses it too)")
    if len(counts) < 2:
        raise DatasetError(f"{where}: one class only (class {next(iter(counts))}); the "
                           "negatives need at least two classes")
    labels = relabel(items)
    for method in options.methods:
        kind = layouts.TRIPLET if method == "triplet" else layouts.PAIR
        batch = options.batch_size[method]
        total = layouts.tuple_count(labels, kind)
        usable = min(total, options.max_pairs or total)
        per_batch = batch // layouts.TUPLE_SIZE[kind]
        if usable < per_batch:
            what = "triplets" if kind == layouts.TRIPLET else "pairs"
            capped = (f", capped by --max-pairs {options.max_pairs}"
                      if usable < total else "")
            raise DatasetError(f"{where}: {usable} {what} from {len(items)} images"
                               f"{capped}: fewer than one {method} batch "
                               f"({batch_option(method)} {batch} holds {per_batch})")


def relabel(items: list[Item]) -> np.ndarray:
    """0-based labels, contiguous within the split, in class-id order."""
    classes = {label: index for index, label in
               enumerate(sorted({item.label for item in items}))}
    return np.array([classes[item.label] for item in items], dtype=np.int64)


class Preparer:
    """Writes one dataset's LMDBs into out, resuming finished parts."""

    def __init__(self, dataset: Dataset, out: Path, options: PrepareOptions):
        self.dataset, self.out, self.options = dataset, out, options
        self.fmt = ImageFormat(options.size, options.encoding)
        self.manifest_path = out / "manifest.json"
        self.manifest = (read_json(self.manifest_path)
                         if self.manifest_path.exists() else {})
        if not isinstance(self.manifest, dict) or not isinstance(
                self.manifest.get("outputs", {}), dict):
            raise DatasetError(f"{self.manifest_path}: not a manifest of this tool; delete "
                               "it (or give another --out) and run the same command again")
        self.manifest.setdefault("outputs", {})
        self._fingerprints: dict[str, str] = {}
        self.pb2 = caffe_pb2()

    def key(self, split: str, what: str) -> str:
        """Everything an output depends on: the source's lists, every image of
        its split (path, label, size and mtime, or pixels), the options; for
        the training set its layout, and for the ordered one the seed, batch
        and cap that make its order (the test set and the unique training
        set hold each image once, whatever they are)."""
        if split not in self._fingerprints:
            self._fingerprints[split] = self.dataset.fingerprint(split)
        options = self.options
        config = {"dataset": self.dataset.name, "checksums": self.dataset.checksums,
                  "images": self._fingerprints[split], "size": options.size,
                  "encoding": options.encoding, "what": what,
                  "skip_bad": options.skip_bad, "version": __version__}
        if split == "train":
            config["layout"] = options.layout
            if options.layout == "ordered":
                config.update(seed=options.seed, batch_size=options.batch_size,
                              max_pairs=options.max_pairs)
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def _done(self, name: str, key: str) -> bool:
        entry = self.manifest["outputs"].get(name)
        return bool(entry and entry.get("key") == key and (self.out / name).exists())

    def _record(self, name: str, key: str, **info) -> None:
        self.manifest["outputs"][name] = {"key": key, **info}
        self.manifest.update({
            "dataset": self.dataset.name, "tool_version": __version__,
            "image_size": self.options.size, "encoding": self.options.encoding,
            "seed": self.options.seed, "layout": self.options.layout,
            "source_checksums": self.dataset.checksums,
            **self.dataset.details,
        })
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2) + "\n")

    def _encode_split(self, split: str) -> tuple[list[Item], list[bytes], int]:
        """The split's images encoded; bad ones stop the run or, with
        skip_bad, are left out and listed in bad_files_<split>.tsv."""
        items = self.dataset.split(split)
        if not items:
            raise DatasetError(f"{self.dataset.name}: the {split} split has no images")
        results = process_images(items, self.fmt, self.options.workers,
                                 f"{self.dataset.name} {split} images")
        bad = [(item, reason) for item, (_, reason) in zip(items, results, strict=True)
               if reason]
        report = self.out / f"bad_files_{split}.tsv"
        if bad:
            atomic_write_text(report, "".join(f"{item.file or item.path}\t{reason}\n"
                                              for item, reason in bad))
            if not self.options.skip_bad:
                listed = "; ".join(f"{item.file or item.path}: {reason}"
                                   for item, reason in bad[:5])
                raise DatasetError(f"{len(bad)} bad image(s) in the {split} split "
                                   f"(all in {report}): {listed}. --skip-bad leaves "
                                   "them out")
            print(f"skipping {len(bad)} bad image(s) of the {split} split: see {report}")
        elif report.exists():
            report.unlink()  # from an earlier run whose bad images are fixed now
        kept = [(item, payload) for item, (payload, reason) in
                zip(items, results, strict=True) if not reason]
        if not kept:
            raise DatasetError(f"{self.dataset.name}: no image of the {split} split is "
                               f"left after skipping {len(bad)} bad one(s) (see {report})")
        return [k[0] for k in kept], [k[1] for k in kept], len(bad)

    def _space_advice(self, name: str) -> str:
        """What shrinks this output, besides freeing space: only the ordered
        layout's training LMDBs hold pairs (--max-pairs); raw datums take
        about five times JPEG's space."""
        advice = ["free some space or give another --out"]
        if name.startswith("train_") and name != "train_lmdb":
            advice.append("a smaller --max-pairs shrinks it")
        if self.options.encoding == "raw":
            advice.append("JPEG datums (without --raw) take about a fifth of the space")
        return "; ".join(advice) + ", and run again (finished outputs are kept)"

    def _check_space(self, records: int, mean_bytes: float, name: str) -> int:
        estimate = int(records * record_bytes(mean_bytes)) + (16 << 20)
        free = check_space(self.out, estimate, f"{name} ({records:,} records)",
                           self._space_advice(name))
        print(f"{name}: {records:,} records, about {human_bytes(estimate)} "
              f"({human_bytes(free)} free)", flush=True)
        return max(4 * estimate, 1 << 30)  # map_size: the file stays sparse

    def _datum(self, payload: bytes, label: int) -> bytes:
        return make_datum(payload, label, self.fmt.size, self.fmt.encoding != "raw", self.pb2)

    def _write_index(self, name: str, items: list[Item], labels: np.ndarray) -> None:
        atomic_write_text(self.out / name, "key\tlabel\tpath\n" + "".join(
            f"{i:09d}\t{y}\t{item.path}\n"
            for i, (item, y) in enumerate(zip(items, labels, strict=True))))

    def _write_images(self, name: str, payloads: list[bytes], labels: np.ndarray) -> None:
        """Each image once, keys in image order, its class label in the Datum."""
        map_size = self._check_space(len(payloads), np.mean([len(p) for p in payloads]),
                                     name)
        write_lmdb(self.out / name,
                   (self._datum(p, y) for p, y in zip(payloads, labels, strict=True)),
                   len(payloads), name, map_size)

    def _write_once(self, split: str, key: str, where: str = "") -> None:
        """The split's images once, in <split>_lmdb with the index
        <split>_index.tsv; the training images left after --skip-bad must
        still make the batches."""
        items, payloads, bad = self._encode_split(split)
        if bad and split == "train":
            check_train_labels(items, self.options, f"{where} without its bad images")
        labels = relabel(items)
        self._write_images(f"{split}_lmdb", payloads, labels)
        self._write_index(f"{split}_index.tsv", items, labels)
        info = {"records": len(items), "images": len(items), "bad_images": bad,
                "classes": int(len(set(labels.tolist())))}
        self._record(f"{split}_lmdb", key, **info)
        self._record(f"{split}_index.tsv", key, **info)

    def run(self) -> dict:
        where = f"{self.dataset.name} train split"
        train_key = self.key("train", "train")
        unique = self.options.layout == "unique"
        if unique:
            train_done = (self._done("train_lmdb", train_key)
                          and self._done("train_index.tsv", train_key))
            pending = [] if train_done else list(self.options.methods)
        else:
            pending = [m for m in self.options.methods if not self._done(
                f"train_{m}_lmdb", self.key("train", f"train_{m}"))]
        if pending or unique:  # before any image is decoded, whatever is done
            check_train_labels(self.dataset.split("train"), self.options, where)
        test_key = self.key("test", "test")
        if not (self._done("test_lmdb", test_key) and self._done("test_index.tsv", test_key)):
            self._write_once("test", test_key)
        if not pending:
            return self.manifest
        if unique:
            self._write_once("train", train_key, where)
            return self.manifest
        items, payloads, bad = self._encode_split("train")
        if bad:
            check_train_labels(items, self.options, f"{where} without its bad images")
        labels = relabel(items)
        for method in pending:
            self._write_train(method, payloads, labels, bad)
        return self.manifest

    def _write_train(self, method: str, payloads: list[bytes], labels: np.ndarray,
                     bad: int) -> None:
        batch = self.options.batch_size[method]
        name = f"train_{method}_lmdb"
        cache: dict[tuple[int, int], bytes] = {}

        def datum(index: int, label: int) -> bytes:
            if (index, label) not in cache:
                cache[(index, label)] = self._datum(payloads[index], label)
            return cache[(index, label)]

        try:
            if method == "triplet":
                order = layouts.triplet_layout(labels, batch, self.options.seed,
                                               self.options.max_pairs)
            else:
                order, similarity = layouts.pair_layout(labels, batch, self.options.seed,
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
        self._record(name, self.key("train", f"train_{method}"), records=len(order),
                     batch_size=batch, images=len(labels), bad_images=bad,
                     classes=int(len(set(labels.tolist()))), **info)


def prepare(source: DatasetSource, root: Path | None, out: Path,
            options: PrepareOptions) -> dict:
    """Validate everything that can be checked up front, then write out
    under an exclusive lock (a second run into the same folder is refused)."""
    options.validate()
    if source.needs_root and root is None:
        raise DatasetError(f"{source.name}: --root is required (the download: "
                           f"{source.download})")
    if root is not None and not root.exists():
        raise DatasetError(f"--root {root}: no such file or folder")
    check_writable(out, "--out")
    caffe_pb2()  # Datums need pycaffe's protobuf: a missing build is named up front
    with locked_folder(out, "prepare_dataset.py"):
        dataset = source.load(root, out)
        if options.count_check:
            source.check_counts(dataset)
        return Preparer(dataset, out, options).run()
