#!/usr/bin/env python3
"""Score an embedding as the paper does: Recall@K, NMI, F1, plus MAP@R.

Reads an .npz with `features` (N x C) and `labels` (N), as written by
tools/extract_features.py. Needs only NumPy, SciPy, scikit-learn (and faiss
for the default k-means)."""

from __future__ import annotations

import sys
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.constants import RECALL_K
from liftedstruct.featurefile import load_features
from liftedstruct.files import check_not_input, check_writable
from liftedstruct.metrics import CLUSTERINGS, KMEANS, KMEANS_BACKEND, KMEANS_BACKENDS, score


def print_table(scores: dict, source: str) -> None:
    print(f"{source}: N = {scores['n']}, classes = {scores['classes']}, "
          f"clustering = {scores['clustering']}")
    for key, value in scores.items():
        if isinstance(value, float):
            print(f"  {key:<14} {100 * value:6.2f}")
    if scores["singleton_classes"]:
        print(f"  note: {scores['singleton_classes']} class(es) have a single item; "
              "they count in Recall@K but can never score there")


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("features", type=Path, help=".npz with features and labels")
    parser.add_argument("--k", type=cli.positive_int, nargs="+", help="Recall@K values")
    parser.add_argument("--dataset", choices=sorted(RECALL_K), default="cub",
                        help="picks the default K list (default: cub)")
    parser.add_argument("--cluster", choices=CLUSTERINGS, default=KMEANS,
                        help="kmeans (later literature) or ap (the paper's "
                             "affinity propagation)")
    parser.add_argument("--kmeans", choices=KMEANS_BACKENDS, default=KMEANS_BACKEND,
                        help="k-means algorithm, the same at every size (default: "
                             f"{KMEANS_BACKEND})")
    parser.add_argument("--blob", help="score features_<blob> from a multi-blob file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=cli.output_file, help="write the scores here")
    args = parser.parse_args()
    if args.json:
        check_writable(args.json, "--json", kind="file")
        check_not_input(args.json, "--json", {"the features file": args.features})
    features, labels = load_features(args.features, args.blob)
    result = score(features, labels, args.k or RECALL_K[args.dataset],
                   cluster=args.cluster, seed=args.seed, source=str(args.features),
                   kmeans=args.kmeans).to_json()
    print_table(result, str(args.features))
    cli.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
