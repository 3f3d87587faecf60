#!/usr/bin/env python3
"""Turn a downloaded dataset into the LMDBs the prototxts read.

Writes OUT/test_lmdb (one record per test image, in the dataset's order),
OUT/test_index.tsv (key, label, original path), the training set and
OUT/manifest.json. The training set (docs/BATCHES.md): with --layout unique
(the default) OUT/train_lmdb and OUT/train_index.tsv, each training image once
in the test LMDB's format, from which Caffe's MetricBatchData layer forms the
batches of every loss; with --layout ordered OUT/train_{lifted,contrastive,
triplet}_lmdb, whose record order is the paper's pair- or triplet-structured
batches, for Caffe's Data layer (--seed, --batch-size, --triplet-batch-size
and --max-pairs shape those; with unique they only check that the batches
can be formed, and the nets' metric_batch_param and solver seed shape them).
Finished parts are skipped when rerun with the same inputs
(the same list files, images, and options); a second run into the same OUT at
the same time is refused. A downloaded archive is extracted into OUT/raw-<dataset>/
and kept there, keyed on its content: a rerun with the same archive does not
extract it again (delete the folder to get the space back once the LMDBs are
written).
"""

from __future__ import annotations

import os
import sys

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.constants import BATCH, METHODS
from liftedstruct.datasets import DATASETS, get_source
from liftedstruct.datasets.prepare import LAYOUTS, PrepareOptions, prepare


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", type=cli.input_path,
                        help="the download: CUB_200_2011.tgz or its folder; the folder "
                             "with cars_annos.mat and car_ims.tgz; "
                             "Stanford_Online_Products.zip or its folder; for glyphs, a "
                             "fonts folder instead of /usr/share/fonts")
    parser.add_argument("--out", type=cli.output_folder, required=True)
    parser.add_argument("--size", type=cli.positive_int,
                        help="image side (default: 256; 32 for glyphs and digits)")
    parser.add_argument("--raw", action="store_true",
                        help="uint8 datums instead of JPEG-encoded ones")
    parser.add_argument("--encoding", choices=["jpg", "png"],
                        help="encoding of the datums (default: jpg; png for glyphs)")
    parser.add_argument("--layout", choices=LAYOUTS, default="unique",
                        help="unique: each training image once, for the MetricBatchData "
                             "layer (default); ordered: one batch-ordered LMDB per method")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="the methods to check (unique) or write training sets for "
                             "(ordered) (default: all three)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=BATCH["lifted"],
                        help="batch of the lifted and contrastive nets (default 128)")
    parser.add_argument("--triplet-batch-size", type=cli.positive_int,
                        default=BATCH["triplet"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pairs", type=cli.positive_int,
                        help="cap the pairs (and triplets) of the training sets")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable images (listed in bad_files_*.tsv)")
    parser.add_argument("--no-count-check", action="store_true",
                        help="accept counts that differ from the published split")
    parser.add_argument("--workers", type=cli.positive_int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    source = get_source(args.dataset)
    encoding = "raw" if args.raw else (args.encoding or source.encoding)
    options = PrepareOptions(
        size=args.size or source.image_size, encoding=encoding, seed=args.seed,
        methods=tuple(m for m in args.methods.split(",") if m), max_pairs=args.max_pairs,
        skip_bad=args.skip_bad, count_check=not args.no_count_check, workers=args.workers,
        layout=args.layout,
        batch_size={"lifted": args.batch_size, "contrastive": args.batch_size,
                    "triplet": args.triplet_batch_size})
    manifest = prepare(source, args.root, args.out, options)
    for name, entry in sorted(manifest["outputs"].items()):
        print(f"{args.out / name}: {entry['records']:,} records")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
