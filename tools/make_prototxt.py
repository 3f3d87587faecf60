#!/usr/bin/env python3
"""Nets and solvers from the one template (liftedstruct/nets/template.py).

Without options: (re)write the committed set under prototxt/ (the headline
train_val and solver per dataset, one deploy per embedding size, the demo).
--check: fail if the committed files differ from the template.
--dataset D --method M --embedding E --out DIR: write DIR/train_val.prototxt,
solver.prototxt and deploy.prototxt for any of the paper's configurations
(--layout unique, the default: the MetricBatchData layer on train_lmdb;
--layout ordered: Caffe's Data layer on train_<method>_lmdb).
--data-timing LMDB --out DIR: write DIR/data_timing.prototxt, the training
Data layer alone on LMDB (into a Silence layer), for timing the data path
with `caffe time` (threads from CAFFE_DATA_THREADS, or the cores).
"""

from __future__ import annotations

import sys

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)

from liftedstruct import cli
from liftedstruct.constants import BATCH, EMBEDDINGS, METHODS, PAPER_DATASETS
from liftedstruct.files import check_writable
from liftedstruct.nets.template import LAYOUTS, data_timing_net
from liftedstruct.nets.zoo import check_committed, committed_files, net_files, write_files
from liftedstruct.paths import REPO_ROOT

COMMITTED = REPO_ROOT / "prototxt"


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--check", action="store_true",
                        help="compare prototxt/ with the template instead of writing")
    parser.add_argument("--dataset", choices=PAPER_DATASETS)
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--embedding", type=int, choices=EMBEDDINGS)
    parser.add_argument("--out", type=cli.output_folder,
                        help="folder for one configuration's files")
    parser.add_argument("--layout", choices=LAYOUTS, default="unique",
                        help="the training set of --dataset ... --out: unique (train_lmdb, "
                             "the MetricBatchData layer; default) or ordered "
                             "(train_<method>_lmdb, Caffe's Data layer)")
    parser.add_argument("--data-timing", type=cli.datum_lmdb, metavar="LMDB",
                        help="write OUT/data_timing.prototxt: the Data layer alone on LMDB")
    parser.add_argument("--batch-size", type=cli.positive_int, default=BATCH["lifted"],
                        help=f"batch of the --data-timing net (default {BATCH['lifted']})")
    args = parser.parse_args()
    if args.data_timing:
        if args.out is None or args.check or args.dataset or args.method or args.embedding:
            parser.error("--data-timing goes with --out only")
        net = args.out / "data_timing.prototxt"
        write_files(args.out, {net.name: data_timing_net(str(args.data_timing.resolve()),
                                                         args.batch_size)})
        print(net)
        print(f"time it with: CAFFE_DATA_THREADS=N caffe time -model {net} -iterations 200 "
              f"(images/s = {args.batch_size} x 1000 / the average forward pass in ms)")
        return 0
    one = [args.dataset, args.method, args.embedding, args.out]
    if args.layout != "unique" and any(v is None for v in one):
        parser.error("--layout goes with --dataset, --method, --embedding and --out")
    if any(v is not None for v in one):
        if any(v is None for v in one) or args.check:
            parser.error("--dataset, --method, --embedding and --out go together "
                         "(and without --check)")
        check_writable(args.out, "--out")
        written = write_files(args.out, net_files(args.dataset, args.method, args.embedding,
                                                  args.out.as_posix(), args.layout))
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
