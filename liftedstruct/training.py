"""`caffe train` as a resumable step: from the latest .solverstate if there
is one, with a progress bar fed by the log's loss lines."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tqdm import tqdm

from liftedstruct.constants import LOSS_LINE
from liftedstruct.errors import PipelineError
from liftedstruct.paths import caffe_binary

SNAPSHOT_ITERATION = re.compile(r"_iter_(\d+)\.solverstate$")


def latest_solverstate(folder: Path) -> tuple[Path, int] | None:
    """The solverstate of the highest iteration in folder, with that iteration."""
    found = [(int(m.group(1)), p) for p in folder.glob("*_iter_*.solverstate")
             if (m := SNAPSHOT_ITERATION.search(p.name))]
    if not found:
        return None
    iteration, path = max(found)
    return path, iteration


def caffe_train(solver: Path, final: Path, max_iter: int, log_path: Path, name: str,
                weights: Path | None = None, gpu: int | None = None) -> Path:
    """Train until `final` (the last snapshot) exists; resume from the latest
    solverstate beside it, else start from weights (or from scratch)."""
    cmd = [str(caffe_binary()), "train", f"-solver={solver}"]
    start = 0
    latest = latest_solverstate(final.parent)
    if latest is not None:
        state, start = latest
        cmd.append(f"-snapshot={state}")
        print(f"  {name}: resuming from {state.name}", flush=True)
    elif weights is not None:
        cmd.append(f"-weights={weights}")
    if gpu is not None:
        cmd.append(f"-gpu={gpu}")
    env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
    with open(log_path, "a") as log, tqdm(total=max_iter, initial=start, desc=f"train {name}",
                                          unit="it") as bar:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=env)
        for line in process.stdout:
            log.write(line)
            found = LOSS_LINE.search(line)
            if found:
                bar.n = int(found.group(1))
                bar.set_postfix(loss=found.group(2))
                bar.refresh()
        code = process.wait()
    if code != 0 or not final.exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        what = f"exit {code}" if code else f"exit 0 but no {final.name}"
        raise PipelineError(f"training {name} failed ({what}); log: {log_path}\n{tail}")
    return final


def training_losses(log: Path) -> list[tuple[int, float]]:
    """(iteration, loss) pairs of a caffe train log."""
    return [(int(i), float(v)) for i, v in LOSS_LINE.findall(log.read_text())]
