#!/usr/bin/env python3
"""Turn a downloaded dataset into the LMDBs the prototxts read.

Writes OUT/test_lmdb (one record per test image, in the dataset's order),
OUT/test_index.tsv (key, label, original path), OUT/train_{lifted,contrastive,
triplet}_lmdb in the paper's pair- or triplet-structured batch order, and
OUT/manifest.json. Finished parts are skipped when rerun with the same inputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liftedstruct.datasets import (  # noqa: E402
    DATASETS,
    DEFAULT_BATCH,
    DEFAULT_SIZE,
    METHODS,
    DatasetError,
    PrepareOptions,
    prepare,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", type=Path,
                        help="the download: CUB_200_2011.tgz or its folder; the folder "
                             "with cars_annos.mat and car_ims.tgz; "
                             "Stanford_Online_Products.zip or its folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, help="image side (default: 256; digits 32)")
    parser.add_argument("--raw", action="store_true",
                        help="uint8 datums instead of JPEG-encoded ones")
    parser.add_argument("--encoding", choices=["jpg", "png"],
                        help="encoding of the datums (default: jpg)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="training sets to write (default: all three)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH["lifted"],
                        help="batch of the lifted and contrastive nets (default 128)")
    parser.add_argument("--triplet-batch-size", type=int, default=DEFAULT_BATCH["triplet"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pairs", type=int,
                        help="cap the pairs (and triplets) of the training sets")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable images (listed in bad_files_*.tsv)")
    parser.add_argument("--no-count-check", action="store_true",
                        help="accept counts that differ from the published split")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}")
    encoding = "raw" if args.raw else (args.encoding or "jpg")
    options = PrepareOptions(
        size=args.size or DEFAULT_SIZE[args.dataset], encoding=encoding, seed=args.seed,
        methods=methods, max_pairs=args.max_pairs, skip_bad=args.skip_bad,
        count_check=not args.no_count_check, workers=args.workers,
        batch_size={"lifted": args.batch_size, "contrastive": args.batch_size,
                    "triplet": args.triplet_batch_size})
    try:
        manifest = prepare(args.dataset, args.root, args.out, options)
    except DatasetError as error:
        print(f"prepare_dataset: error: {error}", file=sys.stderr)
        return 2
    for name, entry in sorted(manifest["outputs"].items()):
        print(f"{args.out / name}: {entry['records']:,} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
