#!/usr/bin/env python3
"""Benchmark Caffe's CPU path for training: forward + backward of the glyph
demo's net (batch 128, 28x28 crops) and of GoogLeNet with the lifted loss
(batch 128, 227x227 crops), with `caffe time` on synthetic input
(liftedstruct.nets.template.time_net), for stock Caffe's CPU path
(`engine: CAFFE` on every Convolution, Pooling and ReLU: Caffe's
single-threaded loops, with OpenBLAS on every core as stock Caffe runs it)
beside the DEFAULT engine's (patches 0015-0017: the convolution's and the
inner product's chunks, pooling's planes and ReLU on OpenMP's threads,
OpenBLAS on one), in the same run of the same build. The rounds interleave
the two; reported are the median milliseconds an iteration, the median of
the within-round ratios, and the layers that take the most time in each."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _launch  # noqa: F401  (the project's .venv, whatever started the tool)
from tqdm import tqdm

from liftedstruct import cli
from liftedstruct.errors import LiftedError
from liftedstruct.machine import machine
from liftedstruct.nets.template import NetConfig, demo_config, paper_config, time_net
from liftedstruct.paths import caffe_binary, caffe_root_label

ENGINES = ("stock", "batched")
FORWARD_BACKWARD = re.compile(r"Average Forward-Backward: ([0-9.eE+-]+) ms")
LAYER_TIME = re.compile(r"\]\s+(\S+)\s+(forward|backward): ([0-9.eE+-]+) ms")


def nets() -> dict[str, NetConfig]:
    return {"glyphs": demo_config("lifted"),
            "googlenet": paper_config("sop", "lifted", 512)}


def with_engine(text: str, engine: str) -> str:
    """The net with every Convolution, Pooling and ReLU on Caffe's own
    single-threaded loops (stock) or as it is (batched: the DEFAULT engine)."""
    if engine == "batched":
        return text
    for block in ("convolution_param {", "pooling_param {"):
        text = text.replace(block, block + "\n    engine: CAFFE")
    return text.replace('type: "ReLU"', 'type: "ReLU"\n  relu_param { engine: CAFFE }')


def engine_env(engine: str) -> dict[str, str]:
    """Stock Caffe runs OpenBLAS on every core and no OpenMP; this build's
    libcaffe runs OpenBLAS on one thread and the CPU path on OpenMP's (the
    inner product's chunks too, patch 0017, with more than one thread)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if engine == "stock":
        env.update(OPENBLAS_NUM_THREADS=str(os.cpu_count() or 1), OMP_NUM_THREADS="1")
    return env


def caffe_time(net: Path, iterations: int, engine: str) -> tuple[float, dict[str, float]]:
    """(ms of one forward + backward, {layer: forward + backward ms})."""
    env = {**engine_env(engine), "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
    cmd = [str(caffe_binary()), "time", "-model", str(net), "-iterations", str(iterations)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    found = FORWARD_BACKWARD.search(result.stderr)
    if result.returncode != 0 or not found:
        raise LiftedError(f"{' '.join(cmd)} failed (exit {result.returncode}):\n"
                          + "\n".join(result.stderr.splitlines()[-20:]))
    layers: dict[str, float] = {}
    for name, _, ms in LAYER_TIME.findall(result.stderr):
        layers[name] = layers.get(name, 0.0) + float(ms)
    return float(found.group(1)), layers


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--nets", nargs="+", choices=list(nets()), default=list(nets()))
    parser.add_argument("--rounds", type=cli.positive_int, default=3)
    parser.add_argument("--iterations", type=cli.positive_int, default=30,
                        help="forward + backward passes per measurement of the glyph "
                             "net (default 30)")
    parser.add_argument("--googlenet-iterations", type=cli.positive_int, default=2,
                        help="the same for GoogLeNet (default 2; about 10 s each)")
    parser.add_argument("--json", type=cli.output_file, help="write the results here")
    args = parser.parse_args()
    configs = {name: config for name, config in nets().items() if name in args.nets}
    iterations = {name: args.googlenet_iterations if name == "googlenet"
                  else args.iterations for name in configs}
    load_before = os.getloadavg()
    # times[net][engine] = [ms per round]; layers[net][engine] = {layer: [ms]}
    times = {name: {e: [] for e in ENGINES} for name in configs}
    layers: dict[str, dict[str, dict[str, list[float]]]] = {
        name: {e: {} for e in ENGINES} for name in configs}
    with tempfile.TemporaryDirectory(prefix="bench_cpu_path.") as tmp:
        paths = {}
        for name, config in configs.items():
            for engine in ENGINES:
                paths[name, engine] = Path(tmp) / f"{name}_{engine}.prototxt"
                paths[name, engine].write_text(with_engine(time_net(config), engine))
        progress = tqdm(total=args.rounds * len(configs) * len(ENGINES), desc="caffe time",
                        unit="run")
        for _ in range(args.rounds):
            for name in configs:
                for engine in ENGINES:
                    ms, per_layer = caffe_time(paths[name, engine], iterations[name], engine)
                    times[name][engine].append(ms)
                    for layer, layer_ms in per_layer.items():
                        layers[name][engine].setdefault(layer, []).append(layer_ms)
                    progress.update()
        progress.close()
    results = {}
    for name, config in configs.items():
        stock, batched = times[name]["stock"], times[name]["batched"]
        results[name] = {
            "batch": config.batch, "crop": config.crop,
            "iterations_per_measurement": iterations[name],
            "ms_per_iteration": {e: statistics.median(times[name][e]) for e in ENGINES},
            "speedup": statistics.median(s / b for s, b in zip(stock, batched, strict=True)),
            "top_layers_ms": {e: dict(sorted(
                ((layer, statistics.median(v)) for layer, v in layers[name][e].items()),
                key=lambda item: -item[1])[:8]) for e in ENGINES},
            "runs": times[name]}
        print(f"{name}: batch {config.batch} at {config.crop}x{config.crop}: stock "
              f"{results[name]['ms_per_iteration']['stock']:.1f} ms, batched "
              f"{results[name]['ms_per_iteration']['batched']:.1f} ms an iteration "
              f"(forward + backward): {results[name]['speedup']:.2f}x")
        for engine in ENGINES:
            top = ", ".join(f"{layer} {ms:.0f}" for layer, ms in
                            list(results[name]["top_layers_ms"][engine].items())[:4])
            print(f"  {engine}: {top} (ms)")
    summary = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
               "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
               "caffe_root": caffe_root_label(),
               "stock": "engine: CAFFE on every Convolution, Pooling and ReLU (Caffe's "
                        "single-threaded loops), OpenBLAS on every core, "
                        "OMP_NUM_THREADS=1 (Caffe's inner product)",
               "batched": "the DEFAULT engine: patches 0015 (batched convolution, its "
                          "chunks on OpenMP's threads, OpenBLAS on one), 0016 (max "
                          "pooling and ReLU on OpenMP's threads), 0017 (inner product "
                          "in chunks on OpenMP's threads)",
               "rounds": args.rounds,
               "load_average_1_5_15_before_after": [load_before, os.getloadavg()],
               "results": results}
    cli.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
