"""The MetricBatchData layer (caffe_layers/, docs/BATCHES.md) against the
Python layout: batch k of the layer on the unique training LMDB holds the
records of batch k of the ordered LMDB read by Caffe's own Data layer, for
pairs, similarity labels and triplets, across epochs and per solver; the
solver's snapshot carries the LMDB's fingerprint; `caffe train` killed with
SIGKILL and resumed from its last snapshot ends with the weights of an
uninterrupted run; bad LMDBs stop the layer with a message naming them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest

from liftedstruct.datasets import layouts
from liftedstruct.lmdbio import fingerprint
from liftedstruct.paths import caffe_binary, caffe_pb2

# Six classes of 2 to 6 images, interleaved.
LABELS = np.array([3, 0, 1, 5, 2, 4, 5, 3, 0, 1, 2, 4, 5, 2, 3, 4, 5, 5, 4, 2, 3, 4])
SIDE = 4


def datum(pixels: np.ndarray, label: int) -> bytes:
    """A raw Datum of uint8 pixels (channels x height x width)."""
    value = caffe_pb2().Datum()
    value.channels, value.height, value.width = pixels.shape
    value.data = pixels.tobytes()
    value.label = int(label)
    return value.SerializeToString()


def write_lmdb(caffe, path: Path, records: list[int], labels: list[int]) -> Path:
    """Datums of SIDE x SIDE pixels all equal to the record's image index."""
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, (image, label) in enumerate(zip(records, labels, strict=True)):
            pixels = np.full((1, SIDE, SIDE), image, dtype=np.uint8)
            txn.put(f"{key:09d}".encode(), datum(pixels, label))
    env.close()
    return path


def data_net(path: Path, source: Path, batch: int, metric: str = "") -> Path:
    kind = "MetricBatchData" if metric else "Data"
    param = f"metric_batch_param {{ seed: 5 {metric} }}" if metric else ""
    path.write_text(f"""layer {{ name: "data" type: "{kind}" top: "data" top: "label"
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB threads: 2 }}
  {param} }}
layer {{ name: "silence" type: "Silence" bottom: "data" bottom: "label" }}
""")
    return path


def batches(caffe, net: Path, count: int) -> list[tuple[list[int], list[int]]]:
    """(images, labels) of the net's first count batches."""
    model = caffe.Net(str(net), caffe.TRAIN)
    out = []
    for _ in range(count):
        model.forward()
        images = model.blobs["data"].data[:, 0, 0, 0].astype(int).tolist()
        out.append((images, model.blobs["label"].data.astype(int).tolist()))
    return out


@pytest.mark.parametrize("kind", ["lifted", "contrastive", "triplet"])
def test_layer_gives_the_ordered_lmdb_batches(caffe, tmp_path, kind):
    batch = 6
    unique = write_lmdb(caffe, tmp_path / "train_lmdb", list(range(len(LABELS))),
                        LABELS.tolist())
    if kind == "triplet":
        order = layouts.triplet_layout(LABELS, batch, seed=5)
        record_labels = LABELS[order]
        metric = "tuple: TRIPLET"
    else:
        order, similarity = layouts.pair_layout(LABELS, batch, seed=5)
        record_labels = similarity if kind == "contrastive" else LABELS[order]
        metric = "label: SIMILARITY" if kind == "contrastive" else "label: CLASS"
    ordered = write_lmdb(caffe, tmp_path / f"train_{kind}_lmdb", order.tolist(),
                         record_labels.tolist())
    per_epoch = len(order) // batch
    count = 2 * per_epoch + 1  # Caffe's Data layer wraps around; FIXED epochs replay
    theirs = batches(caffe, data_net(tmp_path / "data.prototxt", ordered, batch), count)
    ours = batches(caffe, data_net(tmp_path / "metric.prototxt", unique, batch, metric),
                   count)
    assert ours == theirs
    # And the Python oracle of one batch, without the ones before it.
    for k in (0, per_epoch - 1, per_epoch + 2):
        tuple_kind = "triplet" if kind == "triplet" else "pair"
        records, labels = layouts.batch_records(
            LABELS, tuple_kind, batch, seed=5, k=k,
            label="similarity" if kind == "contrastive" else "class")
        assert (list(records), list(labels)) == ours[k]


def test_solvers_take_shares_of_the_batch(caffe, tmp_path):
    unique = write_lmdb(caffe, tmp_path / "train_lmdb", list(range(len(LABELS))),
                        LABELS.tolist())
    whole = batches(caffe, data_net(tmp_path / "whole.prototxt", unique, 8, "epochs: "
                                    "RESHUFFLE"), 12)
    shares = []
    for rank in range(2):
        caffe.set_solver_count(2)
        caffe.set_solver_rank(rank)
        try:
            shares.append(batches(caffe, data_net(tmp_path / f"rank{rank}.prototxt",
                                                  unique, 4, "epochs: RESHUFFLE"), 12))
        finally:
            caffe.set_solver_count(1)
            caffe.set_solver_rank(0)
    for k in range(12):
        firsts = shares[0][k][0][:2] + shares[1][k][0][:2]
        seconds = shares[0][k][0][2:] + shares[1][k][0][2:]
        assert firsts + seconds == whole[k][0], k
        records, _ = layouts.batch_records(LABELS, "pair", 4, seed=5, k=k,
                                           epochs="reshuffle", ranks=2, rank=1)
        assert list(records) == shares[1][k][0]


def bad_lmdb_error(caffe, tmp_path, labels, metric="label: CLASS", batch=4) -> str:
    source = write_lmdb(caffe, tmp_path / "bad_lmdb", list(range(len(labels))), labels)
    net = data_net(tmp_path / "net.prototxt", source, batch, metric)
    result = subprocess.run([str(caffe_binary()), "time", f"-model={net}",
                             "-iterations=1"], capture_output=True, text=True,
                            env={**os.environ, "GLOG_minloglevel": "0"})
    assert result.returncode != 0
    return result.stderr


def test_layer_refuses_a_class_of_one_image(caffe, tmp_path):
    log = bad_lmdb_error(caffe, tmp_path, [0, 0, 1, 2, 2])
    assert "bad_lmdb: class 1 has a single image" in log


def test_layer_refuses_a_batch_it_cannot_fill(caffe, tmp_path):
    assert "pairs need an even batch" in bad_lmdb_error(caffe, tmp_path, [0, 0, 1, 1],
                                                        batch=5)
    log = bad_lmdb_error(caffe, tmp_path, [0, 0, 1, 1], "max_tuples: 3", batch=8)
    assert "fewer pairs than one batch of 4" in log


# ---------------------------------------------------------------- exact resume

NET = """layer {{ name: "data" type: "MetricBatchData" top: "data" top: "label"
  transform_param {{ crop_size: 28 mirror: true scale: 0.0039 }}
  data_param {{ source: "{source}" batch_size: 24 backend: LMDB threads: 2 }}
  metric_batch_param {{ epochs: RESHUFFLE }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 16 kernel_size: 5 stride: 2
                       weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1"
  inner_product_param {{ num_output: 32 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "drop" type: "Dropout" bottom: "fc1" top: "fc1"
  dropout_param {{ dropout_ratio: 0.3 }} }}
layer {{ name: "fc_embedding" type: "InnerProduct" bottom: "fc1" top: "fc_embedding"
  inner_product_param {{ num_output: 8 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "LiftedStructSimilaritySoftmaxLoss"
  bottom: "fc_embedding" bottom: "label" top: "loss" }}
"""


def photos_lmdb(caffe, path: Path, classes: int = 6, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key in range(classes * per_class):
            pixels = rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
            txn.put(f"{key:09d}".encode(), datum(pixels, key % classes))
    env.close()
    return path


def solver(folder: Path, source: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.prototxt").write_text(NET.format(source=source))
    path = folder / "solver.prototxt"
    path.write_text(f'net: "{folder / "net.prototxt"}"\nbase_lr: 0.01\nmomentum: 0.9\n'
                    'lr_policy: "step"\ngamma: 0.5\nstepsize: 200\nweight_decay: 0.0002\n'
                    f'max_iter: 600\ndisplay: 0\nsnapshot: 150\nsnapshot_prefix: '
                    f'"{folder / "snap"}"\nrandom_seed: 3\nsolver_mode: CPU\n')
    return path


def train(path: Path, resume: Path | None = None) -> subprocess.Popen:
    command = [str(caffe_binary()), "train", f"-solver={path}"]
    if resume is not None:
        command.append(f"-snapshot={resume}")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "GLOG_minloglevel": "0"})


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_weights(caffe, tmp_path):
    source = photos_lmdb(caffe, tmp_path / "train_lmdb")
    straight = train(solver(tmp_path / "straight", source))
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-3000:]
    want = (tmp_path / "straight" / "snap_iter_600.caffemodel").read_bytes()

    folder = tmp_path / "killed"
    path = solver(folder, source)
    resume, kills = None, []
    # Killed after the snapshots of 150 and 300 have appeared, a moment later
    # each time, then left to finish; each resume starts from the last one.
    for after in (150, 300):
        run = train(path, resume)
        deadline = time.monotonic() + 300
        while not (folder / f"snap_iter_{after}.solverstate").exists():
            assert run.poll() is None, run.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05 * len(kills))
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL, "finished before it was killed"
        assert not (folder / "snap_iter_600.caffemodel").exists()
        kills.append(after)
        states = sorted(folder.glob("snap_iter_*.solverstate"),
                        key=lambda p: int(p.stem.split("_")[-1]))
        resume = states[-1]
    final = train(path, resume)
    log = final.communicate(timeout=600)[1]
    assert final.returncode == 0, log[-3000:]
    assert f"starting at batch {resume.stem.split('_')[-1]}" in log
    assert (folder / "snap_iter_600.caffemodel").read_bytes() == want


def test_snapshot_records_the_data_fingerprint_and_a_resume_checks_it(caffe, tmp_path):
    source = photos_lmdb(caffe, tmp_path / "train_lmdb")
    path = solver(tmp_path / "run", source)
    text = path.read_text().replace("max_iter: 600", "max_iter: 150")
    path.write_text(text)
    run = train(path)
    assert run.wait(timeout=300) == 0, run.stderr.read()[-3000:]
    state_path = tmp_path / "run" / "snap_iter_150.solverstate"
    state = caffe_pb2().SolverState()
    state.ParseFromString(state_path.read_bytes())
    assert state.data_fingerprint == fingerprint(source)
    # The same images, one label changed: refused, naming the LMDB and snapshot.
    env = lmdb.open(str(source), map_size=1 << 26)
    with env.begin(write=True) as txn:
        record = caffe_pb2().Datum()
        record.ParseFromString(txn.get(b"000000000"))
        record.label = 5
        txn.put(b"000000000", record.SerializeToString())
    env.close()
    path.write_text(text.replace("max_iter: 150", "max_iter: 300"))
    resumed = train(path, state_path)
    log = resumed.communicate(timeout=300)[1]
    assert resumed.returncode != 0
    assert f"{state_path}: {source} changed since this snapshot was written" in log
