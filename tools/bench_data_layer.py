#!/usr/bin/env python3
"""Benchmark the training data layers alone: images/s with the paper's
transform (random 227x227 crops, mirrors, mean 104/117/123) on 256x256
datums, for stock Caffe's loop (CAFFE_DATA_THREADS=1: the patch's code path
disabled) beside the parallel decode and transform of patch 0011 with 2, 3,
... threads, in the same run; each for Caffe's Data layer reading the LMDB
in order (the ordered layout) and for MetricBatchData forming pairs from it
by random reads (the unique layout; the LMDB's classes hold 4 images each).

The datums are made the way tools/prepare_dataset.py makes them (quality-95
JPEG, or --raw uint8) from synthetic photos (500x375 quality-90 JPEGs, about
37 KB as 256x256 datums), one LMDB per encoding. Each measurement is
`caffe time` on the Data -> Silence net of tools/make_prototxt.py
--data-timing; the rounds interleave the settings, so that the machine's
drift falls on all of them. Each round waits for the cores to be free of
other processes' work, and only rounds during which they stayed so count
(all, flagged, if none did): reported are the median and the best of those
rounds, and the median of their speedups over stock. Also
written: the datums' sizes, and what they come to on disk for Online
Products."""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)
from tqdm import tqdm

from liftedstruct import cli
from liftedstruct.constants import BATCH, IMAGE_SIZE
from liftedstruct.data_timing import THREADS_ENV, time_data_layer
from liftedstruct.datasets import Item
from liftedstruct.datasets.sop import Sop
from liftedstruct.images import ImageFormat, process_images, write_synthetic_jpegs
from liftedstruct.lmdbio import make_datum, write_lmdb
from liftedstruct.machine import machine
from liftedstruct.nets.template import data_timing_net
from liftedstruct.paths import caffe_root_label

ENCODINGS = ("jpg", "raw")
LAYOUTS = ("ordered", "unique")


def default_threads() -> list[int]:
    """1 (stock), then powers of two up to the cores, and the cores."""
    cores = len(os.sched_getaffinity(0))
    counts = {1, cores}
    counts.update(2 ** k for k in range(1, cores.bit_length()) if 2 ** k <= cores)
    return sorted(counts)


def thread_list(text: str) -> list[int]:
    counts = sorted({cli.positive_int(part) for part in text.split(",") if part})
    if not counts or counts[0] != 1:
        raise argparse.ArgumentTypeError("the list must hold 1 (stock Caffe's loop)")
    return counts


def make_lmdbs(work: Path, images: int, workers: int) -> dict[str, dict]:
    """One LMDB per encoding from the same synthetic photos, and sizes."""
    sources = work / "photos"
    sources.mkdir()
    names = write_synthetic_jpegs(sources, images, 500, 375, detail=10)
    items = [Item(name, index // 4, sources / name) for index, name in enumerate(names)]
    made = {}
    for encoding in ENCODINGS:
        fmt = ImageFormat(size=IMAGE_SIZE, encoding=encoding)
        payloads = [payload for payload, _ in process_images(items, fmt, workers, encoding)]
        path = work / f"{encoding}_lmdb"
        write_lmdb(path, (make_datum(p, item.label, fmt.size, encoding != "raw")
                          for p, item in zip(payloads, items, strict=True)),
                   len(items), f"{encoding} lmdb", 1 << 32)
        disk = sum(f.stat().st_blocks * 512 for f in path.iterdir())
        made[encoding] = {"lmdb": path, "records": len(items),
                          "payload_bytes_mean": statistics.fmean(map(len, payloads)),
                          "lmdb_disk_bytes_per_record": disk / len(items)}
    return made


def sop_disk(per_record: float) -> dict[str, float]:
    """Online Products on disk at per_record bytes a record: the training
    images once; the test LMDB; a pair-ordered training LMDB (lifted or
    contrastive), which holds an image of a class of n about 2 (n + 1) times
    (n + 1 records of its positive pairs, its pair with itself counted twice,
    and as many of negative pairs), so on average at least 2 (n_mean + 1)
    times, n_mean = 59,551 / 11,318 = 5.26 images a class (estimated: the
    class sizes vary, which only adds)."""
    train, test, train_classes, _ = Sop.counts
    per_image = 2 * (train / train_classes + 1)
    return {"train_images_once_gb": train * per_record / 1e9,
            "test_lmdb_gb": test * per_record / 1e9,
            "records_per_train_image_at_least": per_image,
            "train_pairs_lmdb_gb_at_least": train * per_image * per_record / 1e9}


# A round counts when other processes used less than this share of the
# cores during each of its runs: on a shared machine their work slows the
# threaded settings most, and a speedup measured beside it says little.
QUIET = 0.10


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this
    process's finished children): their changes over a run tell this run's
    work from other processes'."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, children.ru_utime + children.ru_stime


def others_share(before: tuple[float, float], after: tuple[float, float],
                 seconds: float) -> float:
    """The share of the cores other processes used between two cpu_seconds()."""
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others) / (seconds * len(os.sched_getaffinity(0)))


def wait_quiet(limit: float) -> float:
    """Wait, at most limit seconds, for 5 s in which other processes use less
    than QUIET of the cores; return the last 5 s's share."""
    deadline = time.monotonic() + limit
    while True:
        before = cpu_seconds()
        time.sleep(5)
        share = others_share(before, cpu_seconds(), 5)
        if share < QUIET or time.monotonic() > deadline:
            return share


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--threads", type=thread_list, default=default_threads(),
                        help="comma-separated thread counts, 1 (stock) among them "
                             "(default: 1, powers of two up to the cores, the cores)")
    parser.add_argument("--images", type=cli.positive_int, default=1024,
                        help="records per LMDB (default 1024; the layer wraps around)")
    parser.add_argument("--iterations", type=cli.positive_int, default=100,
                        help="batches of 128 per measurement (default 100)")
    parser.add_argument("--rounds", type=cli.positive_int, default=3)
    parser.add_argument("--quiet-wait", type=float, default=600, metavar="SECONDS",
                        help="before each round, wait up to this long for other "
                             "processes to leave the cores (default 600)")
    parser.add_argument("--gpu", type=int, help="time in GPU mode on this device "
                                                "(the batches are copied to it)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    batch = BATCH["lifted"]
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_data_layer."))
    try:
        made = make_lmdbs(work, args.images, len(os.sched_getaffinity(0)))
        nets = {}
        for encoding, info in made.items():
            for layout in LAYOUTS:
                net = nets[encoding, layout] = work / f"{encoding}_{layout}_net.prototxt"
                net.write_text(data_timing_net(str(info["lmdb"]), batch, layout=layout))
        settings = [(e, layout) for e in ENCODINGS for layout in LAYOUTS]
        # rounds[r][setting][threads] = (images/s, others' share of the cores)
        rounds: list[dict[tuple[str, str], dict[int, tuple[float, float]]]] = []
        progress = tqdm(total=args.rounds * len(settings) * len(args.threads),
                        desc="caffe time", unit="run")
        for _ in range(args.rounds):
            wait_quiet(args.quiet_wait)
            rounds.append({setting: {} for setting in settings})
            for setting in settings:
                for threads in args.threads:
                    before, start = cpu_seconds(), time.monotonic()
                    rate, used = time_data_layer(nets[setting], batch, args.iterations,
                                                 threads, args.gpu)
                    share = others_share(before, cpu_seconds(), time.monotonic() - start)
                    if used != threads:
                        raise SystemExit(f"bench_data_layer: asked for {threads} threads, "
                                         f"the layer used {used}")
                    rounds[-1][setting][threads] = (rate, share)
                    progress.update()
        progress.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    quiet = [r for r in rounds if max(share for setting in settings
                                      for _, share in r[setting].values()) < QUIET]
    counted = quiet or rounds  # all of them, flagged, if none was quiet
    results = {}
    for encoding in ENCODINGS:
        results[encoding] = {
            "datum_bytes_mean": made[encoding]["payload_bytes_mean"],
            "lmdb_disk_bytes_per_record": made[encoding]["lmdb_disk_bytes_per_record"],
            "sop_disk": sop_disk(made[encoding]["lmdb_disk_bytes_per_record"])}
        ordered = {t: [r[encoding, "ordered"][t][0] for r in counted] for t in args.threads}
        for layout in LAYOUTS:
            rates = {t: [r[encoding, layout][t][0] for r in counted] for t in args.threads}
            # Ratios within each round (measured a minute apart at most), then
            # their median: over stock (one thread, same layout), and of the
            # unique layout's random reads over the ordered layout's.
            results[encoding][layout] = {
                str(t): {"images_per_s": statistics.median(rates[t]),
                         "best_images_per_s": max(rates[t]),
                         "speedup_over_stock": statistics.median(
                             r / s for r, s in zip(rates[t], rates[1], strict=True)),
                         "ratio_to_ordered": statistics.median(
                             r / s for r, s in zip(rates[t], ordered[t], strict=True))}
                for t in args.threads}
    summary = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
               "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
               "caffe_root": caffe_root_label(),
               "mode": "GPU" if args.gpu is not None else "CPU",
               "stock": f"{THREADS_ENV}=1: Caffe's own loop in the prefetch thread",
               "transform": "TRAIN: crop 227, mirror, mean 104/117/123",
               "batch": batch, "images": args.images, "iterations": args.iterations,
               "rounds": args.rounds, "quiet_rounds": len(quiet),
               "quiet": f"other processes under {QUIET:.0%} of the cores in every run",
               "load_average_1_5_15_before_after": [load_before, os.getloadavg()],
               "results": results,
               "runs": [{f"{e}/{layout}": {str(t): {"images_per_s": rate,
                                                    "others_share": share}
                                           for t, (rate, share) in r[e, layout].items()}
                         for e, layout in settings} for r in rounds]}
    print(f"Data layer alone, batch {batch}, {summary['transform']}, {summary['mode']}; "
          f"{len(quiet)} of {args.rounds} rounds of {args.iterations} batches quiet ("
          f"{summary['quiet']})" + ("" if quiet else ": ALL ROUNDS COUNTED, NONE QUIET"))
    for encoding, result in results.items():
        disk = result["sop_disk"]
        print(f"{encoding}: datums {result['datum_bytes_mean'] / 1e3:.1f} kB, "
              f"{result['lmdb_disk_bytes_per_record'] / 1e3:.1f} kB a record in LMDB; "
              f"Online Products' 59,551 training images once: "
              f"{disk['train_images_once_gb']:.2f} GB")
        for layout in LAYOUTS:
            for threads, row in result[layout].items():
                name = "stock (1)" if threads == "1" else f"{threads} threads"
                print(f"  {layout:<8} {name:<11} {row['images_per_s']:8.0f} images/s (best "
                      f"{row['best_images_per_s']:.0f})  {row['speedup_over_stock']:.2f}x "
                      f"stock, {row['ratio_to_ordered']:.2f}x ordered")
    cli.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
