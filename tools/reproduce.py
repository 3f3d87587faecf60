#!/usr/bin/env python3
"""One experiment end to end: prepare -> train -> extract -> score -> report.

The default, --dataset digits, is the paper's protocol in miniature on
scikit-learn's handwritten digits (offline): digits 0-4 train, 5-9 test,
lifted vs contrastive vs triplet vs raw pixels. A rerun resumes from the last
finished stage (training from its latest .solverstate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liftedstruct.datasets import DatasetError  # noqa: E402
from liftedstruct.features import ExtractionError  # noqa: E402
from liftedstruct.metrics import ScoringError  # noqa: E402
from liftedstruct.pipeline import Pipeline, PipelineError, RunConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["digits", "cub", "cars196", "sop"],
                        default="digits")
    parser.add_argument("--root", type=Path, help="the downloaded dataset (not for digits)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default: runs/<dataset>)")
    parser.add_argument("--embedding", type=int,
                        help="64/128/256/512 (default: the paper's headline size)")
    parser.add_argument("--methods", default="lifted,contrastive,triplet")
    parser.add_argument("--weights", type=Path,
                        help="bvlc_googlenet.caffemodel (default: data/weights/...)")
    parser.add_argument("--gpu", type=int, help="train and extract on this GPU")
    parser.add_argument("--iterations", type=int, help="override the solver's max_iter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pairs", type=int,
                        help="cap the training pairs (digits default: 30000)")
    parser.add_argument("--cluster", choices=["kmeans", "ap"], default="kmeans")
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--crop", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-count-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        config = RunConfig(
            dataset=args.dataset, out=args.out or Path("runs") / args.dataset, root=args.root,
            embedding=args.embedding, methods=tuple(args.methods.split(",")),
            weights=args.weights, gpu=args.gpu, iterations=args.iterations, seed=args.seed,
            max_pairs=args.max_pairs, cluster=args.cluster, image_size=args.image_size,
            crop=args.crop, batch=args.batch, count_check=not args.no_count_check)
        Pipeline(config).run()
    except (PipelineError, DatasetError, ExtractionError, ScoringError) as error:
        print(f"reproduce: error: {error}", file=sys.stderr)
        return 2
    print(f"results: {config.out / 'results.json'}; report: {config.out / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
