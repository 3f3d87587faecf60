#!/usr/bin/env python3
"""Our scores beside the paper's published ones: a Markdown and JSON table,
Recall@K curves, t-SNE and retrieval-grid figures. Reads only the test
images the figures draw."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.datasets import DATASETS
from liftedstruct.errors import LiftedError
from liftedstruct.files import check_writable, locked_folder
from liftedstruct.run_report import check_result, write_report


def pairs(values: list[str], what: str) -> dict[str, Path]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name:
            raise LiftedError(f"{what} {value!r}: expected METHOD=PATH")
        if not Path(path).is_file():
            raise LiftedError(f"{what} {value!r}: {path}: no such file")
        if name in out:
            raise LiftedError(f"{what} {value!r}: {name} given twice")
        out[name] = Path(path)
    return out


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--dataset", required=True, choices=DATASETS,
                        help="picks the published numbers to compare with")
    parser.add_argument("--embedding", type=cli.positive_int, required=True)
    parser.add_argument("--result", action="append", default=[], required=True,
                        help="METHOD=evaluation.json (from evaluate.py --json); repeat")
    parser.add_argument("--features", action="append", default=[],
                        help="METHOD=features.npz for the t-SNE and retrieval figures")
    parser.add_argument("--images", type=cli.datum_lmdb, help="the test LMDB, to draw images")
    parser.add_argument("--out", type=cli.output_folder, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    check_writable(args.out, "--out")
    results = {}
    for name, path in pairs(args.result, "--result").items():
        try:
            loaded = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LiftedError(f"--result {path}: not JSON ({error})") from error
        results[name] = check_result(loaded, f"--result {path}")
    features = pairs(args.features, "--features")
    with locked_folder(args.out, "tools/report.py"):
        written = write_report(results, args.dataset, args.embedding, args.out, features,
                               args.images, args.seed)
    print((args.out / "report.md").read_text())
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
