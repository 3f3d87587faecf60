#!/usr/bin/env python3
"""Benchmark image preparation: images/s of this project's decode-resize-
encode-to-LMDB path beside Caffe's own convert_imageset (from the built Caffe)
on the same generated JPEGs with the same 256x256 resize, in the same run."""

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
from liftedstruct.datasets import Item
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


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_prepare."))
    try:
        names = write_synthetic_jpegs(work, args.count, args.width, args.height)
        caffe_seconds = convert_imageset(work, names, work / "caffe_lmdb")
        our_seconds = ours(work, names, work / "our_lmdb", args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"images": args.count, "size": f"{args.width}x{args.height}",
              "workers": args.workers, "cpus": os.cpu_count(),
              "convert_imageset_images_per_s": args.count / caffe_seconds,
              "ours_images_per_s": args.count / our_seconds,
              "speedup": caffe_seconds / our_seconds}
    print(f"{args.count} JPEGs of {args.width}x{args.height} -> {IMAGE_SIZE}x{IMAGE_SIZE} JPEG "
          "datums in LMDB")
    print(f"convert_imageset: {result['convert_imageset_images_per_s']:.0f} images/s")
    print(f"ours ({args.workers} workers): {result['ours_images_per_s']:.0f} images/s")
    print(f"speedup: {result['speedup']:.2f}x")
    cli.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
