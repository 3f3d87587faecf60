"""`caffe train` as a resumable step: from the latest complete .solverstate if
there is one, with a progress bar fed by the log's loss lines. Snapshots are
checked before they are trusted (a kill or a full disk while Caffe writes one
leaves it truncated): an incomplete one is removed, never resumed from, and a
full disk is named as such. A resume is the run it resumes (docs/BATCHES.md:
batch k and iteration k's random draws depend on the seed and k alone) as
long as the training LMDB is the one the snapshot was trained on: a
solverstate that records its fingerprint (data_fingerprint, patch 0014) is
not resumed on an LMDB whose fingerprint differs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from liftedstruct import files
from liftedstruct.errors import OutputError, PipelineError, WeightsError
from liftedstruct.files import is_disk_full
from liftedstruct.paths import caffe_binary
from liftedstruct.weights import check_fit, trained_layers

SNAPSHOT_ITERATION = re.compile(r"_iter_(\d+)\.solverstate$")
# A snapshot pair (.caffemodel and .solverstate) takes about this many bytes
# per learnable value (float weights plus momentum history), with this slack.
SNAPSHOT_BYTES_PER_VALUE = 8
SNAPSHOT_SLACK = 1 << 20

# "Iteration 10 (9.2 iter/s, 1.09s/10 iters), loss = 9.9" in caffe train's log.
LOSS_LINE = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = ([-+.\deEnaif]+)")


def snapshot_problem(model: Path, params: dict[str, list[int]]) -> str | None:
    """Why a .caffemodel cannot be used (truncated, or missing some of the
    learnable layers `params` names with their blob sizes), or None."""
    if not model.is_file():
        return "missing or not a file"
    try:
        check_fit(model, params, "the net")
    except WeightsError as error:
        return str(error)
    return None


def solverstate_problem(state_path: Path, iteration: int,
                        params: dict[str, list[int]]) -> str | None:
    """Why a .solverstate cannot be resumed from, or None: it must parse, hold
    its iteration, a history blob of the right size for every blob of its
    .caffemodel, and that .caffemodel must be complete."""
    from google.protobuf.message import DecodeError

    from liftedstruct.paths import caffe_pb2

    state = caffe_pb2().SolverState()
    try:
        data = state_path.read_bytes()
        state.ParseFromString(data)
    except (OSError, DecodeError) as error:
        return f"unreadable ({error})"
    if not data or state.iter != iteration:
        return f"holds iteration {state.iter if data else 'none'}, not {iteration}"
    model = state_path.parent / Path(state.learned_net).name
    problem = snapshot_problem(model, params)
    if problem is not None:
        return f"{model.name}: {problem}"
    blobs = [size for sizes in trained_layers(model).values() for size in sizes]
    history = [len(h.data) or len(h.double_data) for h in state.history]
    if not history or len(history) % len(blobs) or any(
            size != blobs[index % len(blobs)] for index, size in enumerate(history)):
        return "its history does not match the model's blobs (cut short)"
    return None


def check_data_fingerprint(state_path: Path, train_lmdb: Path) -> None:
    """PipelineError when the solverstate records the fingerprint of the
    training LMDB it was trained on (data_fingerprint) and train_lmdb's
    differs; a solverstate without it (or a Caffe whose SolverState has no
    such field) is not checked."""
    from liftedstruct.lmdbio import fingerprint
    from liftedstruct.paths import caffe_pb2

    state = caffe_pb2().SolverState()
    if "data_fingerprint" not in state.DESCRIPTOR.fields_by_name:
        return
    state.ParseFromString(state_path.read_bytes())
    if not state.HasField("data_fingerprint"):
        return
    found = fingerprint(train_lmdb)
    if state.data_fingerprint != found:
        raise PipelineError(f"{state_path} was trained on another training LMDB than "
                            f"{train_lmdb} (fingerprint {state.data_fingerprint:#018x} "
                            f"there, {found:#018x} now): the training LMDB changed since "
                            "this snapshot was written; restore that LMDB, or delete the "
                            f"snapshots in {state_path.parent} to train from the start")


def remove_snapshot(model_or_state: Path) -> None:
    """Both files of one snapshot."""
    stem = model_or_state.with_suffix("")
    for suffix in (".caffemodel", ".solverstate"):
        stem.with_suffix(suffix).unlink(missing_ok=True)


def latest_solverstate(folder: Path, params: dict[str, list[int]],
                       name: str = "") -> tuple[Path, int] | None:
    """The complete solverstate of the highest iteration in folder, with that
    iteration; incomplete ones above it are removed (with a note)."""
    found = sorted(((int(m.group(1)), p) for p in folder.glob("*_iter_*.solverstate")
                    if (m := SNAPSHOT_ITERATION.search(p.name))), reverse=True)
    for iteration, path in found:
        problem = solverstate_problem(path, iteration, params)
        if problem is None:
            return path, iteration
        print(f"  {name}: snapshot {path.name} is incomplete ({problem}); removed",
              flush=True)
        remove_snapshot(path)
    return None


def snapshot_bytes(params: dict[str, list[int]]) -> int:
    """About what one snapshot pair takes on disk."""
    values = sum(sum(sizes) for sizes in params.values())
    return values * SNAPSHOT_BYTES_PER_VALUE + SNAPSHOT_SLACK


def check_space(folder: Path, needed: int, what: str) -> None:
    files.check_space(folder, needed, what)


def caffe_train(solver: Path, final: Path, max_iter: int, log_path: Path, name: str,
                params: dict[str, list[int]], snapshot_every: int,
                weights: Path | None = None, gpu: int | None = None,
                on_resume: Callable[[int], None] | None = None,
                train_lmdb: Path | None = None) -> Path:
    """Train until `final` (the last snapshot) exists and is complete; resume
    from the latest complete solverstate beside it (telling on_resume its
    iteration first), else start from weights (or from scratch). `params`:
    the net's learnable layers and blob sizes, to check snapshots with;
    train_lmdb: the net's training LMDB, checked against the fingerprint a
    solverstate records before resuming from it."""
    folder = final.parent
    if final.exists():
        problem = snapshot_problem(final, params)
        if problem is None:
            return final
        print(f"  {name}: {final.name} is incomplete ({problem}); removed", flush=True)
        remove_snapshot(final)
    cmd = [str(caffe_binary()), "train", f"-solver={solver}"]
    start = 0
    latest = latest_solverstate(folder, params, name)
    if latest is not None:
        state, start = latest
        if train_lmdb is not None:
            check_data_fingerprint(state, train_lmdb)
        cmd.append(f"-snapshot={state}")
        print(f"  {name}: resuming from {state.name}", flush=True)
        if on_resume is not None:
            on_resume(start)
    elif weights is not None:
        cmd.append(f"-weights={weights}")
    if gpu is not None:
        cmd.append(f"-gpu={gpu}")
    snapshots = (max_iter - start) // snapshot_every + 1
    check_space(folder, snapshots * snapshot_bytes(params),
                f"training {name} ({snapshots} snapshot(s))")
    env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
    try:
        with open(log_path, "a") as log, tqdm(total=max_iter, initial=start,
                                              desc=f"train {name}", unit="it") as bar:
            process = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, env=env)
            try:
                for line in process.stdout:
                    log.write(line)
                    found = LOSS_LINE.search(line)
                    if found:
                        bar.n = int(found.group(1))
                        bar.set_postfix(loss=found.group(2))
                        bar.refresh()
            except BaseException:
                process.kill()
                process.wait()
                raise
            code = process.wait()
    except OSError as error:
        if not is_disk_full(error):
            raise
        latest_solverstate(folder, params, name)  # no truncated snapshot stays
        raise OutputError(f"disk full: training {name} stopped, {log_path} cannot be "
                          f"written ({error.strerror}); free some space and run the same "
                          "command again (it resumes from the last complete snapshot)") \
            from error
    problem = snapshot_problem(final, params) if code == 0 else None
    if code == 0 and problem is None:
        return final
    if final.exists():
        remove_snapshot(final)
    latest_solverstate(folder, params, name)  # no truncated snapshot stays
    if shutil.disk_usage(folder).free < snapshot_bytes(params):
        raise OutputError(f"disk full: training {name} could not write its snapshots in "
                          f"{folder}; free some space and run the same command again (it "
                          "resumes from the last complete snapshot)")
    tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
    what = f"exit {code}" if code else f"exit 0 but {final.name}: {problem}"
    raise PipelineError(f"training {name} failed ({what}); log: {log_path}\n{tail}")


def training_losses(log: str) -> list[tuple[int, float]]:
    """(iteration, loss) pairs of a caffe train log's text."""
    return [(int(i), float(v)) for i, v in LOSS_LINE.findall(log)]
