#!/usr/bin/env python3
"""Benchmark tools/report.py at Online Products size: four feature files of
60,502 x 512 (11,316 classes, as the test split), their scores, and a test
LMDB of 60,502 small JPEG datums; times the report (tables, Recall@K plot,
t-SNE and retrieval figures per method) and its peak memory in a subprocess.
The features are synthetic (class centres plus noise): this measures the
report's cost, not a result."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)
import cv2
import numpy as np

from liftedstruct import cli, metrics
from liftedstruct.constants import METHODS
from liftedstruct.lmdbio import make_datum, write_lmdb
from liftedstruct.paths import REPO_ROOT

SCORED = (*METHODS, "pool5")  # the three losses and the untrained baseline


def make_features(folder: Path, n: int, dim: int, classes: int) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(0)
    # Every class at least once, as in the test split; the rest at random.
    labels = np.sort(np.concatenate([np.arange(classes),
                                     rng.integers(0, classes, size=n - classes)]))
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    ids = np.array([f"{i:09d}" for i in range(n)])
    paths = []
    for index, method in enumerate(SCORED):
        noise = rng.normal(scale=1.0 + 0.3 * index, size=(n, dim)).astype(np.float32)
        path = folder / f"{method}.npz"
        np.savez(path, features=centres[labels] + noise, labels=labels, ids=ids)
        paths.append(path)
    return paths, labels


def make_lmdb(path: Path, labels: np.ndarray, side: int) -> None:
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, size=(labels.max() + 1, 3))

    def records():
        for label in labels:
            image = np.empty((side, side, 3), np.uint8)
            image[...] = palette[label]
            cv2.circle(image, (side // 2, side // 2), side // 3, (255, 255, 255), 2)
            yield make_datum(cv2.imencode(".jpg", image)[1].tobytes(), int(label), side, True)

    write_lmdb(path, records(), len(labels), "test_lmdb", 1 << 32)


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--n", type=cli.positive_int, default=60502)
    parser.add_argument("--dim", type=cli.positive_int, default=512)
    parser.add_argument("--classes", type=cli.positive_int, default=11316)
    parser.add_argument("--side", type=cli.positive_int, default=64, help="image side")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths, labels = make_features(folder, args.n, args.dim, args.classes)
        make_lmdb(folder / "test_lmdb", labels, args.side)
        data = np.load(paths[0])
        scores = metrics.score(data["features"], data["labels"], [1, 10, 100, 1000],
                               source="synthetic").to_json()
        (folder / "scores.json").write_text(json.dumps(scores))
        cmd = [sys.executable, str(REPO_ROOT / "tools" / "report.py"), "--dataset", "sop",
               "--embedding", str(args.dim), "--images", str(folder / "test_lmdb"),
               "--out", str(folder / "report")]
        for method, path in zip(SCORED, paths, strict=True):
            cmd += ["--result", f"{method}={folder / 'scores.json'}",
                    "--features", f"{method}={path}"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        figures = sorted(p.name for p in (folder / "report").glob("*.png"))
    summary = {"n": args.n, "dim": args.dim, "classes": args.classes, "methods": len(SCORED),
               "report_seconds": seconds, "report_peak_rss_gb": peak / 1e9,
               "figures": figures,
               "machine": platform.processor() or platform.machine()}
    print(f"report at N = {args.n}, D = {args.dim}, {args.classes} classes, "
          f"{len(SCORED)} methods: {seconds:.1f} s, peak RSS {peak / 1e9:.2f} GB; "
          f"{len(figures)} figures")
    cli.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
