#!/usr/bin/env python3
"""Benchmark the scoring at Online Products size (60,502 x 512 float32,
11,316 classes): Recall@{1,10,100,1000} through the project's one exact kNN
(metrics.nearest_neighbors: duplicates grouped, faiss-cpu IndexFlatL2) beside
a bare IndexFlatL2 search of the same array, the machine's float32 gemm rate
and the floor it gives for the 2 N^2 D kNN product, and k-means NMI + F1.
Each part runs in its own process so that its peak memory is its own."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)
import numpy as np

from liftedstruct import cli

PARTS = ("gemm", "knn", "faiss", "kmeans")


def make_data(n: int, dim: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    x = centres[labels] + rng.normal(scale=1.5, size=(n, dim)).astype(np.float32)
    return x.astype(np.float32), labels


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_part(part: str, n: int, dim: int, classes: int, ks: list[int]) -> dict:
    from liftedstruct import metrics

    x, labels = make_data(n, dim, classes)
    base = peak_rss_bytes()
    start = time.perf_counter()
    out: dict = {}
    if part == "gemm":
        a = np.random.default_rng(1).normal(size=(4096, 4096)).astype(np.float32)
        a @ a  # warm up
        start = time.perf_counter()
        repeats = 5
        for _ in range(repeats):
            a @ a
        seconds = time.perf_counter() - start
        out["gflops"] = repeats * 2 * 4096**3 / seconds / 1e9
    elif part == "knn":
        neighbors = metrics.nearest_neighbors(x, max(ks))
        out["recall"] = metrics.recall_at_k(neighbors, labels, ks)
    elif part == "faiss":
        import faiss

        index = faiss.IndexFlatL2(dim)
        index.add(x)
        found = index.search(x, max(ks) + 1)[1]
        others = np.argsort(found == np.arange(n)[:, None], axis=1, kind="stable")
        neighbors = np.take_along_axis(found, others[:, :max(ks)], axis=1)
        out["recall"] = metrics.recall_at_k(neighbors, labels, ks)
    elif part == "kmeans":
        clusters = metrics.kmeans_clusters(x, classes, seed=0, backend="faiss")
        out["nmi"] = metrics.nmi(clusters, labels)
        out["f1"] = metrics.pairwise_f1(clusters, labels)["f1"]
    out["seconds"] = time.perf_counter() - start
    out["peak_extra_gb"] = (peak_rss_bytes() - base) / 1e9
    out["peak_rss_gb"] = peak_rss_bytes() / 1e9
    return out


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--n", type=int, default=60502)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, args.n, args.dim, args.classes, args.k)))
        return 0
    results = {}
    for part in args.parts:
        cmd = [sys.executable, __file__, "--part", part, "--n", str(args.n), "--dim",
               str(args.dim), "--classes", str(args.classes), "--k", *map(str, args.k)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{part}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results[part] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{part}: {results[part]}", flush=True)
    flops = 2 * args.n**2 * args.dim
    summary = {"n": args.n, "dim": args.dim, "classes": args.classes, "k": args.k,
               "knn_tflop": flops / 1e12, "machine": platform.processor() or platform.machine(),
               "parts": results}
    if "gemm" in results:
        summary["gemm_floor_seconds"] = flops / (results["gemm"]["gflops"] * 1e9)
    print(f"\nN = {args.n}, D = {args.dim}, classes = {args.classes}; "
          f"kNN product {flops / 1e12:.2f} TFLOP")
    print(f"{'part':<8} {'seconds':>9} {'peak GB':>8}  notes")
    for part, r in results.items():
        note = ""
        if part == "gemm":
            note = (f"{r['gflops']:.0f} GFLOP/s float32 -> kNN floor "
                    f"{summary['gemm_floor_seconds']:.1f} s")
        elif part in ("knn", "faiss"):
            note = " ".join(f"R@{k}={100 * v:.2f}" for k, v in r["recall"].items())
        elif part == "kmeans":
            note = f"NMI={100 * r['nmi']:.2f} F1={100 * r['f1']:.2f}"
        print(f"{part:<8} {r['seconds']:9.1f} {r['peak_extra_gb']:8.2f}  {note}")
    if "knn" in results and "faiss" in results:
        summary["knn_over_faiss"] = results["knn"]["seconds"] / results["faiss"]["seconds"]
        print(f"nearest_neighbors / bare IndexFlatL2: {summary['knn_over_faiss']:.2f}x")
    if "knn" in results and "gemm_floor_seconds" in summary:
        summary["knn_over_floor"] = results["knn"]["seconds"] / summary["gemm_floor_seconds"]
        print(f"nearest_neighbors / gemm floor: {summary['knn_over_floor']:.2f}x")
    cli.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
