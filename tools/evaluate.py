#!/usr/bin/env python3
"""Score an embedding as the paper does: Recall@K, NMI, F1, plus MAP@R."""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liftedstruct.features import feature_key  # noqa: E402
from liftedstruct.files import atomic_write_text  # noqa: E402
from liftedstruct.metrics import DEFAULT_K, ScoringError, score  # noqa: E402


def load_features(path: Path, blob: str | None) -> tuple[np.ndarray, np.ndarray]:
    """features (or features_<blob>) and labels from an .npz file."""
    if not path.exists():
        raise ScoringError(f"{path}: no such file")
    try:
        data = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ScoringError(f"{path}: not a readable .npz ({error})") from error
    key = feature_key(blob) if blob else "features"
    if key not in data:
        keys = ", ".join(sorted(data.files)) or "none"
        raise ScoringError(f"{path}: no array {key!r} (arrays: {keys}); "
                           "pick one with --blob")
    if "labels" not in data:
        raise ScoringError(f"{path}: no array 'labels'")
    return data[key], data["labels"]


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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("features", type=Path, help=".npz with features and labels")
    parser.add_argument("--k", type=int, nargs="+", help="Recall@K values")
    parser.add_argument("--dataset", choices=sorted(DEFAULT_K), default="cub",
                        help="picks the default K list (default: cub)")
    parser.add_argument("--cluster", choices=["kmeans", "ap"], default="kmeans",
                        help="kmeans (later literature) or ap (the paper's "
                             "affinity propagation)")
    parser.add_argument("--blob", help="score features_<blob> from a multi-blob file")
    parser.add_argument("--backend", choices=["numpy", "faiss"], default="numpy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the scores here")
    args = parser.parse_args()
    try:
        features, labels = load_features(args.features, args.blob)
        result = score(features, labels, args.k or DEFAULT_K[args.dataset],
                       cluster=args.cluster, seed=args.seed,
                       source=str(args.features), backend=args.backend).to_json()
    except ScoringError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    print_table(result, str(args.features))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
