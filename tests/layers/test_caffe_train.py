"""`caffe train` with the lifted loss on a tiny LMDB: the loss goes down."""

from __future__ import annotations

import os
import re
import subprocess

import lmdb
import numpy as np
import pytest

from liftedstruct.paths import caffe_binary
from liftedstruct.training import training_losses


def write_points_lmdb(caffe, path, points, labels):
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for index, (point, label) in enumerate(zip(points, labels, strict=True)):
            datum = caffe.io.array_to_datum(point.reshape(-1, 1, 1), int(label))
            txn.put(f"{index:08d}".encode(), datum.SerializeToString())
    env.close()


@pytest.mark.slow
def test_lifted_net_trains_and_loss_decreases(caffe, tmp_path):
    rng = np.random.default_rng(0)
    classes, per_class, dim = 8, 4, 16
    centres = rng.normal(size=(classes, dim))
    # Each batch of 32 holds 4 items of each of the 8 classes.
    batches = 16
    labels = np.tile(np.repeat(np.arange(classes), per_class), batches)
    points = centres[labels] + 0.8 * rng.normal(size=(len(labels), dim))
    write_points_lmdb(caffe, tmp_path / "train_lmdb", points, labels)
    net = tmp_path / "net.prototxt"
    net.write_text(f"""
layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{tmp_path / 'train_lmdb'}" batch_size: 32 backend: LMDB }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
  inner_product_param {{ num_output: 32 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }}
layer {{ name: "fc_embedding" type: "InnerProduct" bottom: "fc1" top: "fc_embedding"
  inner_product_param {{ num_output: 8 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "LiftedStructSimilaritySoftmaxLoss"
  bottom: "fc_embedding" bottom: "label" top: "loss"
  lifted_struct_sim_softmax_loss_param {{ margin: 1 }} }}
""")
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f"""net: "{net}"
base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" weight_decay: 0.0002
max_iter: 120 display: 1 random_seed: 1 solver_mode: CPU
snapshot: 60 snapshot_prefix: "{tmp_path / 'new' / 'folder' / 'snap'}"
""")
    env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
    result = subprocess.run([str(caffe_binary()), "train", f"-solver={solver}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [loss for _, loss in training_losses(result.stderr)]
    assert len(losses) >= 100, result.stderr[-3000:]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert np.isfinite(losses).all()
    assert last < 0.5 * first, (first, last)
    # Caffe made the snapshot prefix's folder itself (patch 0009).
    assert (tmp_path / "new" / "folder" / "snap_iter_120.caffemodel").exists()


def test_caffe_binary_and_pycaffe_know_the_layers(caffe, tmp_path):
    """bin/caffe's layer registry (printed for an unknown type) and pycaffe's."""
    net = tmp_path / "unknown.prototxt"
    net.write_text('layer { name: "x" type: "NoSuchLayerType" }\n')
    probe = subprocess.run([str(caffe_binary()), "time", f"-model={net}"],
                           capture_output=True, text=True)
    known = re.search(r"known types: (.*)", probe.stderr)
    assert known, probe.stderr[-2000:]
    types = {t.strip() for t in known.group(1).split(",")}
    assert {"LiftedStructSimilaritySoftmaxLoss", "TripletLoss",
            "ContrastiveLoss"} <= types
    assert {"LiftedStructSimilaritySoftmaxLoss", "TripletLoss"} <= set(
        caffe.layer_type_list())
