"""Images/s of Caffe's Data layer alone: Caffe's own `caffe time` on the
Data -> Silence net of liftedstruct.nets.template.data_timing_net, with the
layer's thread count from the environment variable CAFFE_DATA_THREADS."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from liftedstruct.errors import LiftedError
from liftedstruct.paths import caffe_binary

# Read by Caffe's Data layer (patch 0011) when data_param sets no threads.
THREADS_ENV = "CAFFE_DATA_THREADS"

# caffe time's summary line; with only the Data layer doing work, one
# forward pass is the wait for the next prefetched batch.
AVERAGE_FORWARD = re.compile(r"Average Forward pass: ([0-9.eE+-]+) ms")
THREADS_LINE = re.compile(r"Decoding and transforming on (\d+) thread")


def time_data_layer(net: Path, batch: int, iterations: int, threads: int | None = None,
                    gpu: int | None = None) -> tuple[float, int]:
    """(images/s, threads the layer used) over `iterations` batches of
    `caffe time -model net`: batch x 1000 / the average forward pass in ms.
    threads: CAFFE_DATA_THREADS (None: unset, so the cores decide)."""
    env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
    env.pop(THREADS_ENV, None)
    if threads is not None:
        env[THREADS_ENV] = str(threads)
    cmd = [str(caffe_binary()), "time", "-model", str(net), "-iterations", str(iterations)]
    if gpu is not None:
        cmd += ["-gpu", str(gpu)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = result.stdout + result.stderr
    forward = AVERAGE_FORWARD.search(log)
    used = THREADS_LINE.search(log)
    if result.returncode != 0 or not forward or not used:
        raise LiftedError(f"{' '.join(cmd)} failed (exit {result.returncode}):\n"
                          + "\n".join(log.splitlines()[-20:]))
    return batch * 1000 / float(forward.group(1)), int(used.group(1))
