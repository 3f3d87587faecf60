#!/usr/bin/env python3
"""Benchmark image preparation: images/s of this project's decode-resize-
encode-to-LMDB path beside Caffe's own convert_imageset (from the built Caffe)
on the same generated JPEGs with the same 256x256 resize, in the same run.

Then the two training layouts: tools/prepare_dataset.py's own code on a
synthetic Online Products of --classes training and as many test classes of
5 images each (Online Products has 5.26 a class), once with the unique layout
(train_lmdb, each training image once) and once with the ordered one (one
pair- or triplet-ordered LMDB per loss): the time and the disk of each, and
both extrapolated to Online Products' 59,551 training images at the records
per training image measured here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.constants import IMAGE_SIZE
from liftedstruct.datasets import Item, get_source
from liftedstruct.datasets.prepare import PrepareOptions, prepare
from liftedstruct.datasets.sop import Sop
from liftedstruct.datasets.synthetic import write_online_products
from liftedstruct.images import ImageFormat, process_images, write_synthetic_jpegs
from liftedstruct.lmdbio import make_datum, write_lmdb
from liftedstruct.paths import caffe_binary


def ours(folder: Path, names: list[str], out: Path, workers: int) -> float:
    fmt = ImageFormat(size=IMAGE_SIZE, encoding="jpg")
    start = time.perf_counter()
    items = [Item(name, 0, folder / name) for name in names]
    results = process_images(items, fmt, workers, "ours")
    write_lmdb(out, (make_datum(payload, 0, fmt.size, True) for payload, _ in results), len(items),
               "ours lmdb", 1 << 32)
    return time.perf_counter() - start


def convert_imageset(folder: Path, names: list[str], out: Path) -> float:
    listing = folder / "list.txt"
    listing.write_text("".join(f"{name} 0\n" for name in names))
    cmd = [str(caffe_binary("convert_imageset")), f"--resize_height={IMAGE_SIZE}",
           f"--resize_width={IMAGE_SIZE}", "--encoded", "--encode_type=jpg", "--backend=lmdb",
           f"{folder}/", str(listing), str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ,
                                                             "GLOG_minloglevel": "2"})
    return time.perf_counter() - start


def disk_bytes(folder: Path) -> int:
    """What a folder takes on disk (an LMDB's data file is sparse)."""
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def layouts(work: Path, classes: int, workers: int) -> dict:
    """Time and disk of preparing the synthetic Online Products in each
    layout, and their extrapolation to the real one."""
    root = write_online_products(work / "download", classes, classes, 5)
    measured = {}
    for layout in ("unique", "ordered"):
        out = work / f"prepared_{layout}"
        start = time.perf_counter()
        manifest = prepare(get_source("sop"), root, out, PrepareOptions(
            layout=layout, count_check=False, workers=workers))
        seconds = time.perf_counter() - start
        train = {name: {"records": entry["records"], "disk_bytes": disk_bytes(out / name)}
                 for name, entry in manifest["outputs"].items()
                 if name.startswith("train") and name.endswith("_lmdb")}
        measured[layout] = {"seconds": seconds, "train_lmdbs": train,
                            "training_images": classes * 5,
                            "test_lmdb_disk_bytes": disk_bytes(out / "test_lmdb")}
        shutil.rmtree(out)
    images = classes * 5
    sop_train = Sop.counts[0]
    extrapolated = {}
    for layout, result in measured.items():
        records = sum(t["records"] for t in result["train_lmdbs"].values())
        disk = sum(t["disk_bytes"] for t in result["train_lmdbs"].values())
        extrapolated[layout] = {
            "records_per_training_image": records / images,
            "sop_train_records": round(records / images * sop_train),
            "sop_train_disk_gb": disk / images * sop_train / 1e9}
    return {"classes": classes, "images_per_class": 5, "measured": measured,
            "online_products": extrapolated,
            "ordered_over_unique_disk": extrapolated["ordered"]["sop_train_disk_gb"]
            / extrapolated["unique"]["sop_train_disk_gb"]}


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--classes", type=cli.positive_int, default=200,
                        help="training (and test) classes of the synthetic Online "
                             "Products for the layouts (default 200: 1,000 + 1,000 images)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_prepare."))
    try:
        names = write_synthetic_jpegs(work, args.count, args.width, args.height)
        caffe_seconds = convert_imageset(work, names, work / "caffe_lmdb")
        our_seconds = ours(work, names, work / "our_lmdb", args.workers)
        layout_result = layouts(work, args.classes, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"images": args.count, "size": f"{args.width}x{args.height}",
              "workers": args.workers, "cpus": os.cpu_count(),
              "convert_imageset_images_per_s": args.count / caffe_seconds,
              "ours_images_per_s": args.count / our_seconds,
              "speedup": caffe_seconds / our_seconds, "layouts": layout_result}
    print(f"{args.count} JPEGs of {args.width}x{args.height} -> {IMAGE_SIZE}x{IMAGE_SIZE} JPEG "
          "datums in LMDB")
    print(f"convert_imageset: {result['convert_imageset_images_per_s']:.0f} images/s")
    print(f"ours ({args.workers} workers): {result['ours_images_per_s']:.0f} images/s")
    print(f"speedup: {result['speedup']:.2f}x")
    for layout, measured in layout_result["measured"].items():
        sop = layout_result["online_products"][layout]
        lmdbs = ", ".join(f"{name} {t['records']:,} records {t['disk_bytes'] / 1e6:.1f} MB"
                          for name, t in measured["train_lmdbs"].items())
        print(f"{layout}: prepared in {measured['seconds']:.1f} s: {lmdbs}; Online Products: "
              f"{sop['records_per_training_image']:.1f} records a training image, "
              f"{sop['sop_train_disk_gb']:.1f} GB of training LMDBs")
    cli.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
