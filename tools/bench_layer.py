#!/usr/bin/env python3
"""Benchmark the lifted layer alone through pycaffe: forward + backward time
and float32 accuracy against the float64 reference of Eq. 3-7
(liftedstruct/reference.py), on an ordinary batch (the paper's 64 pairs of
random 512-d features) and on near-duplicate batches (64 positive pairs 1e-3
and 1e-4 apart at feature norm 2.3).

--instructions also counts the instructions of the layer's Forward_cpu and
Backward_cpu (inclusive of the BLAS calls) under valgrind's callgrind, which
unlike wall time does not depend on what else the machine is doing.

Run it against another Caffe install with CAFFE_ROOT=... to compare builds,
e.g. the layer before the near-duplicate handling."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)
import numpy as np

from liftedstruct import cli
from liftedstruct.paths import caffe_root, caffe_root_label, import_caffe
from liftedstruct.reference import lifted_loss_and_gradient

NET = """force_backward: true
layer {{ name: "input" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: {num} dim: {dim} }} shape {{ dim: {num} }} }} }}
layer {{ name: "loss" type: "LiftedStructSimilaritySoftmaxLoss" bottom: "data"
  bottom: "label" top: "loss" lifted_struct_sim_softmax_loss_param {{ margin: 1 }} }}
"""


def batch(kind: str, pairs: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2 * pairs items, item p and p + pairs a positive pair (the paper's layout)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(pairs), np.arange(pairs)]).astype(np.float32)
    if kind == "ordinary":
        return rng.normal(scale=1 / np.sqrt(dim), size=(2 * pairs, dim)).astype(np.float32), \
            labels
    gap = {"near-1e-3": 1e-3, "near-1e-4": 1e-4}[kind]
    first = rng.normal(size=(pairs, dim))
    first *= 2.3 / np.linalg.norm(first, axis=1, keepdims=True)
    step = rng.normal(size=(pairs, dim))
    step *= gap / np.linalg.norm(step, axis=1, keepdims=True)
    return np.concatenate([first, first + step]).astype(np.float32), labels


def measure(caffe, net, x: np.ndarray, labels: np.ndarray, repeats: int) -> dict:
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = labels
    net.forward()
    net.backward()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = float(net.forward()["loss"])
        net.backward()
        times.append(time.perf_counter() - start)
    grad = net.blobs["data"].diff.copy()
    ref_loss, ref_grad = lifted_loss_and_gradient(x, labels)
    return {"ms_median": 1000 * float(np.median(times)),
            "ms_min": 1000 * float(np.min(times)),
            "grad_error": float(np.abs(grad - ref_grad).max() / np.abs(ref_grad).max()),
            "loss_error": abs(loss - ref_loss) / max(1e-12, abs(ref_loss))}


KINDS = ("ordinary", "near-1e-3", "near-1e-4")


def count_instructions(kind: str, args) -> float:
    """Instructions per forward + backward in the layer's CPU code (callgrind)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("bench_layer: --instructions needs valgrind (apt install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        runs = 20
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--child", kind, "--repeats", str(runs),
                        "--pairs", str(args.pairs), "--dim", str(args.dim)],
                       check=True, capture_output=True,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        listing = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out)],
                                 check=True, capture_output=True, text=True).stdout
    total = 0
    for phase in ("Forward_cpu", "Backward_cpu"):
        found = re.search(r"^\s*([\d,]+) .*LiftedStructSimilaritySoftmaxLossLayer<float>::"
                          + phase, listing, re.MULTILINE)
        total += int(found.group(1).replace(",", ""))
    return total / (runs + 1)  # the runs and one warm-up


def layer_net(pairs: int, dim: int):
    """pycaffe (CPU) and a net of the lifted layer alone on 2 * pairs x dim."""
    caffe = import_caffe()
    caffe.set_mode_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        proto = Path(tmp) / "net.prototxt"
        proto.write_text(NET.format(num=2 * pairs, dim=dim))
        return caffe, caffe.Net(str(proto), caffe.TEST)


def child(kind: str, args) -> None:
    """What runs under callgrind: one warm-up and `repeats` forward + backward."""
    _, net = layer_net(args.pairs, args.dim)
    x, labels = batch(kind, args.pairs, args.dim)
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = labels
    for _ in range(args.repeats + 1):
        net.forward()
        net.backward()


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--pairs", type=cli.positive_int, default=64)
    parser.add_argument("--dim", type=cli.positive_int, default=512)
    parser.add_argument("--repeats", type=cli.positive_int, default=200)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions with callgrind (about a minute)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return 0
    caffe, net = layer_net(args.pairs, args.dim)
    results = {kind: measure(caffe, net, *batch(kind, args.pairs, args.dim), args.repeats)
               for kind in KINDS}
    if args.instructions:
        for kind in KINDS:
            results[kind]["instructions"] = count_instructions(kind, args)
    summary = {"caffe_root": caffe_root_label(), "pairs": args.pairs, "dim": args.dim,
               "repeats": args.repeats, "device": "CPU",
               "machine": platform.processor() or platform.machine(), "results": results}
    print(f"lifted layer, batch {2 * args.pairs} x {args.dim}, CPU, {caffe_root()}")
    for kind, r in results.items():
        print(f"  {kind:<10} forward+backward {r['ms_median']:7.3f} ms (median of "
              f"{args.repeats}); gradient off by {r['grad_error']:.2e} of its largest "
              f"entry, loss by {r['loss_error']:.1e}"
              + (f"; {r['instructions'] / 1e6:.2f} M instructions" if "instructions" in r
                 else ""))
    cli.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
