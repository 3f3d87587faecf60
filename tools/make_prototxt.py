#!/usr/bin/env python3
"""Nets and solvers from the one template (liftedstruct/nets/template.py).

Without options: (re)write the committed set under prototxt/ (the headline
train_val and solver per dataset, one deploy per embedding size, the demo).
--check: fail if the committed files differ from the template.
--dataset D --method M --embedding E --out DIR: write DIR/train_val.prototxt,
solver.prototxt and deploy.prototxt for any of the paper's configurations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.constants import EMBEDDINGS, METHODS, PAPER_DATASETS
from liftedstruct.files import check_writable
from liftedstruct.nets.zoo import check_committed, committed_files, net_files, write_files
from liftedstruct.paths import REPO_ROOT

COMMITTED = REPO_ROOT / "prototxt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare prototxt/ with the template instead of writing")
    parser.add_argument("--dataset", choices=PAPER_DATASETS)
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--embedding", type=int, choices=EMBEDDINGS)
    parser.add_argument("--out", type=Path, help="folder for one configuration's files")
    args = parser.parse_args()
    one = [args.dataset, args.method, args.embedding, args.out]
    if any(v is not None for v in one):
        if any(v is None for v in one) or args.check:
            parser.error("--dataset, --method, --embedding and --out go together "
                         "(and without --check)")
        check_writable(args.out, "--out")
        written = write_files(args.out, net_files(args.dataset, args.method, args.embedding,
                                                  args.out.as_posix()))
        for path in written:
            print(path)
        print(f"train with: caffe train -solver {args.out / 'solver.prototxt'} "
              "-weights data/weights/bvlc_googlenet.caffemodel")
        return 0
    if args.check:
        problems = check_committed(COMMITTED)
        print("\n".join(problems) or f"{COMMITTED}: matches the template")
        return 1 if problems else 0
    files = committed_files()
    write_files(COMMITTED, files)
    stale = {p for p in COMMITTED.rglob("*.prototxt")} - {COMMITTED / n for n in files}
    for path in sorted(stale):
        path.unlink()
    for folder in sorted({p.parent for p in stale}, reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    print(f"{len(files)} files in {COMMITTED} ({len(stale)} stale ones removed)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
