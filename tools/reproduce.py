#!/usr/bin/env python3
"""One experiment end to end: prepare -> train -> extract -> score -> report.

The default, --dataset glyphs, is the paper's protocol in miniature and
offline: classes are characters, images the same character in the machine's
typefaces; half the characters train, the unseen half test; lifted vs
contrastive vs triplet vs raw pixels. --dataset cub|cars196|sop fine-tunes
ImageNet GoogLeNet as the paper did.

Several sizes and seeds make a sweep, the paper's Figs. 6-8 and 12: every
method at every size and seed (a seed's batches, iterations and solver the
same for all), the baseline scored once, and a figure of Recall@1, NMI and F1
against the size. `--embedding all` is the dataset's sizes: 64 128 256 512
for the paper's datasets, 16 32 64 128 for the demos.

Everything is checked before anything is written; a rerun resumes from the
last finished stage (training from its latest .solverstate) and refuses a
folder holding another run."""

from __future__ import annotations

import argparse
import sys

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.constants import METHODS
from liftedstruct.datasets import DATASETS
from liftedstruct.metrics import CLUSTERINGS, KMEANS, KMEANS_BACKEND, KMEANS_BACKENDS
from liftedstruct.pipeline import Pipeline, RunConfig, sweep_sizes


def size_or_all(text: str) -> int | str:
    return text if text == "all" else cli.positive_int(text)


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--dataset", choices=DATASETS, default="glyphs")
    parser.add_argument("--root", type=cli.input_path,
                        help="the downloaded dataset (cub, cars196, sop)")
    parser.add_argument("--out", type=cli.output_folder, default=None,
                        help="run folder (default: runs/<dataset>, runs/<dataset>_sweep "
                        "for several sizes or seeds)")
    parser.add_argument("--embedding", nargs="+", type=size_or_all, metavar="SIZE",
                        help="embedding sizes, or 'all' (default: the headline size: 512 "
                        "for the paper's datasets, 64 for the demos)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--weights", type=cli.input_file,
                        help="bvlc_googlenet.caffemodel (default: data/weights/...)")
    parser.add_argument("--gpu", type=int, help="train and extract on this GPU")
    parser.add_argument("--iterations", type=int,
                        help="override the solver's max_iter")
    parser.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0],
                        metavar="SEED", help="seeds of the batches and solver (default: 0)")
    parser.add_argument("--max-pairs", type=int,
                        help="cap the training pairs (demo default: 30000)")
    parser.add_argument("--cluster", choices=CLUSTERINGS, default=KMEANS)
    parser.add_argument("--kmeans", choices=KMEANS_BACKENDS, default=KMEANS_BACKEND)
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--crop", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-count-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.embedding or []
    if "all" in sizes and len(sizes) > 1:
        parser.error("--embedding: 'all' or sizes, not both")
    config = RunConfig(
        dataset=args.dataset, out=args.out, root=args.root,
        embeddings=sweep_sizes(args.dataset) if sizes == ["all"] else tuple(sizes),
        methods=tuple(m for m in args.methods.split(",") if m), weights=args.weights,
        gpu=args.gpu, iterations=args.iterations, seeds=tuple(args.seeds),
        max_pairs=args.max_pairs,
        cluster=args.cluster, kmeans=args.kmeans, image_size=args.image_size,
        crop=args.crop, batch=args.batch, count_check=not args.no_count_check)
    Pipeline(config).run()
    print(f"results: {config.out / 'results.json'}; report: {config.out / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
