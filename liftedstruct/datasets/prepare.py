"""A dataset source to the LMDBs the prototxts read: the test LMDB and index,
and one training LMDB per method in the paper's batch order, with a manifest
that makes a rerun skip what is already done from the same inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
from liftedstruct.files import atomic_write_text, check_writable, locked_folder
from liftedstruct.images import ImageFormat, process_images
from liftedstruct.lmdbio import make_datum, record_bytes, write_lmdb
from liftedstruct.paths import caffe_pb2

ENCODINGS = ("jpg", "png", "raw")


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

    def validate(self) -> None:
        """Refuse settings that would fail late or silently mean something else."""
        if self.size < 1:
            raise DatasetError(f"--size {self.size}: the image side must be at least 1")
        if self.encoding not in ENCODINGS:
            raise DatasetError(f"encoding {self.encoding!r}: one of {', '.join(ENCODINGS)}")
        check_methods(self.methods, DatasetError)
        for method in self.methods:
            batch = self.batch_size.get(method, 0)
            option = "--triplet-batch-size" if method == "triplet" else "--batch-size"
            group = 3 if method == "triplet" else 2
            if batch < group or batch % group:
                raise DatasetError(f"{option} {batch}: {method} batches hold whole "
                                   f"{'triplets' if group == 3 else 'pairs'}, so the "
                                   f"batch must be a positive multiple of {group}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise DatasetError(f"--max-pairs {self.max_pairs}: must be at least 1")
        if self.workers < 1:
            raise DatasetError(f"--workers {self.workers}: must be at least 1")


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
        self.manifest = (json.loads(self.manifest_path.read_text())
                         if self.manifest_path.exists() else {})
        self.manifest.setdefault("outputs", {})
        self._fingerprints: dict[str, str] = {}

    def key(self, split: str, what: str) -> str:
        """Everything an output depends on: the source's lists, every image of
        its split (path, label, size and mtime, or pixels), the options."""
        if split not in self._fingerprints:
            self._fingerprints[split] = self.dataset.fingerprint(split)
        options = self.options
        config = {"dataset": self.dataset.name, "checksums": self.dataset.checksums,
                  "images": self._fingerprints[split], "size": options.size,
                  "encoding": options.encoding, "what": what, "seed": options.seed,
                  "batch_size": options.batch_size, "max_pairs": options.max_pairs,
                  "skip_bad": options.skip_bad, "version": __version__}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def _done(self, name: str, key: str) -> bool:
        entry = self.manifest["outputs"].get(name)
        return bool(entry and entry.get("key") == key and (self.out / name).exists())

    def _record(self, name: str, key: str, **info) -> None:
        self.manifest["outputs"][name] = {"key": key, **info}
        self.manifest.update({
            "dataset": self.dataset.name, "tool_version": __version__,
            "image_size": self.options.size, "encoding": self.options.encoding,
            "seed": self.options.seed, "source_checksums": self.dataset.checksums,
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

    def _check_space(self, records: int, mean_bytes: float, name: str) -> int:
        estimate = int(records * record_bytes(mean_bytes)) + (16 << 20)
        free = shutil.disk_usage(self.out).free
        print(f"{name}: {records:,} records, about {estimate / 1e9:.2f} GB "
              f"({free / 1e9:.1f} GB free)", flush=True)
        if estimate > free:
            raise DatasetError(f"{self.out}: {name} needs about {estimate / 1e9:.1f} GB "
                               f"but only {free / 1e9:.1f} GB is free; use --max-pairs")
        return max(4 * estimate, 1 << 30)  # map_size: the file stays sparse

    def _datum(self, payload: bytes, label: int) -> bytes:
        return make_datum(payload, label, self.fmt.size, self.fmt.encoding != "raw")

    def run(self) -> dict:
        test_key = self.key("test", "test")
        if not (self._done("test_lmdb", test_key) and self._done("test_index.tsv", test_key)):
            items, payloads, bad = self._encode_split("test")
            labels = relabel(items)
            map_size = self._check_space(len(items), np.mean([len(p) for p in payloads]),
                                         "test_lmdb")
            write_lmdb(self.out / "test_lmdb",
                       (self._datum(p, y) for p, y in zip(payloads, labels, strict=True)),
                       len(items), "test_lmdb", map_size)
            atomic_write_text(self.out / "test_index.tsv", "key\tlabel\tpath\n" + "".join(
                f"{i:09d}\t{y}\t{item.path}\n"
                for i, (item, y) in enumerate(zip(items, labels, strict=True))))
            info = {"records": len(items), "images": len(items), "bad_images": bad,
                    "classes": int(len(set(labels.tolist())))}
            self._record("test_lmdb", test_key, **info)
            self._record("test_index.tsv", test_key, **info)
        pending = [m for m in self.options.methods
                   if not self._done(f"train_{m}_lmdb", self.key("train", f"train_{m}"))]
        if pending:
            items, payloads, bad = self._encode_split("train")
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
