"""The generated nets and solvers: current, parseable, the paper's settings,
and trainable with `caffe train` on CPU at a reduced input size."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from liftedstruct import prototxt
from liftedstruct.paths import REPO_ROOT, caffe_binary

PROTOTXT = REPO_ROOT / "prototxt"
GLOG = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}


def parse(caffe, path: Path, message: str):
    from caffe.proto import caffe_pb2

    proto = getattr(caffe_pb2, message)()
    text_format.Merge(path.read_text(), proto)
    return proto


def test_regenerating_changes_nothing():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "make_prototxt.py"),
                             "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dataset", prototxt.DATASETS)
def test_paper_settings_read_back(caffe, dataset):
    for method in prototxt.METHODS:
        for embedding in prototxt.EMBEDDINGS:
            folder = PROTOTXT / dataset / f"{method}_{embedding}"
            net = parse(caffe, folder / "train_val.prototxt", "NetParameter")
            layers = {layer.name: layer for layer in net.layer}
            data = [layer for layer in net.layer if layer.type == "Data"]
            train, test = sorted(data, key=lambda layer: layer.include[0].phase)
            assert train.data_param.batch_size == (120 if method == "triplet" else 128)
            assert train.transform_param.crop_size == test.transform_param.crop_size == 227
            assert train.transform_param.mirror and not test.transform_param.mirror
            assert list(train.transform_param.mean_value) == [104, 117, 123]
            assert train.data_param.source == f"data/lmdb/{dataset}/train_{method}_lmdb"
            pool5 = layers["pool5/7x7_s1"].pooling_param
            assert pool5.kernel_size == 7 and pool5.stride == 1 and pool5.pool == 1  # AVE
            assert layers["pool5/drop_7x7_s1"].dropout_param.dropout_ratio == pytest.approx(0.4)
            fc = layers["fc_embedding"]
            assert fc.inner_product_param.num_output == embedding
            assert fc.inner_product_param.weight_filler.type == "xavier"
            assert [p.lr_mult for p in fc.param] == [10, 20]
            assert not any(name.startswith(("loss1", "loss2")) for name in layers)
            loss = layers["loss"]
            expected_type = {"lifted": "LiftedStructSimilaritySoftmaxLoss",
                             "contrastive": "ContrastiveLoss", "triplet": "TripletLoss"}
            assert loss.type == expected_type[method]
            if method == "lifted":
                assert loss.lifted_struct_sim_softmax_loss_param.margin == 1.0
            solver = parse(caffe, folder / "solver.prototxt", "SolverParameter")
            assert (solver.base_lr, solver.lr_policy, solver.gamma, solver.stepsize) == (
                pytest.approx(1e-4), "step", pytest.approx(0.96), 32000)
            assert (solver.momentum, solver.weight_decay) == (
                pytest.approx(0.9), pytest.approx(2e-4))
            assert (solver.max_iter, solver.snapshot) == (20000, 10000)
            assert solver.solver_mode == 1 and not solver.test_initialization  # GPU
            assert solver.snapshot_prefix.startswith(f"snapshots/{dataset}/")
    headline = parse(caffe, PROTOTXT / f"solver_{dataset}.prototxt", "SolverParameter")
    size = prototxt.HEADLINE_EMBEDDING[dataset]
    assert headline.net == f"prototxt/{dataset}/lifted_{size}/train_val.prototxt"


def test_deploy_nets_build_and_output_both_blobs(caffe):
    for path in sorted(PROTOTXT.rglob("deploy.prototxt")):
        net = caffe.Net(str(path), caffe.TEST)
        assert "fc_embedding" in net.blobs, path
        if "demo" not in path.parts:
            assert net.blobs["pool5/7x7_s1"].data.shape[1:] == (1024, 1, 1), path


def bvlc_googlenet_random(caffe, deploy: Path, tmp_path) -> Path:
    """A randomly initialised GoogLeNet saved under the BVLC layer names
    (BVLC's own deploy net, its fillers drawing the weights)."""
    caffe.set_random_seed(0)
    net = caffe.Net(str(deploy), caffe.TEST)
    path = tmp_path / "bvlc_googlenet_random.caffemodel"
    net.save(str(path))
    return path


def test_finetuning_copies_every_googlenet_layer(caffe, bvlc_googlenet_deploy, tmp_path):
    weights = bvlc_googlenet_random(caffe, bvlc_googlenet_deploy, tmp_path)
    source = caffe.Net(str(bvlc_googlenet_deploy), str(weights), caffe.TEST)
    ours = caffe.Net(str(PROTOTXT / "cub" / "lifted_64" / "deploy.prototxt"), caffe.TEST)
    before = ours.params["fc_embedding"][0].data.copy()
    ours.copy_from(str(weights))
    trunk = [name for name in ours.params if name != "fc_embedding"]
    assert len(trunk) == 57
    for name in trunk:
        for mine, theirs in zip(ours.params[name], source.params[name], strict=True):
            np.testing.assert_array_equal(mine.data, theirs.data)
    np.testing.assert_array_equal(ours.params["fc_embedding"][0].data, before)


def reduced(method: str, lmdb: Path) -> prototxt.NetConfig:
    config = prototxt.paper_config("cub", method, 64)
    return replace(config, crop=64, batch=12, pool5_global=True,
                   train_source=str(lmdb / f"train_{method}_lmdb"),
                   test_source=str(lmdb / "test_lmdb"))


@pytest.mark.parametrize("method", prototxt.METHODS)
def test_caffe_train_each_method_reduced(caffe, tiny_cub, bvlc_googlenet_deploy, tmp_path,
                                         method):
    net = tmp_path / "train_val.prototxt"
    net.write_text(prototxt.train_val(reduced(method, tiny_cub)))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(prototxt.solver(prototxt.SolverConfig(
        net=str(net), snapshot_prefix=str(tmp_path / "snap"), max_iter=3, snapshot=3,
        display=1, solver_mode="CPU", random_seed=1)))
    weights = bvlc_googlenet_random(caffe, bvlc_googlenet_deploy, tmp_path)
    result = subprocess.run([str(caffe_binary()), "train", f"-solver={solver}",
                             f"-weights={weights}"], capture_output=True, text=True,
                            env=GLOG, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"Iteration \d+.*?, loss = ([-+.\deE]+)",
                                           result.stderr)]
    assert len(losses) >= 3 and np.isfinite(losses).all()
    assert (tmp_path / "snap_iter_3.caffemodel").exists()


def test_caffe_time_full_googlenet_lifted(caffe, tmp_path):
    """One forward-backward of the paper's net (batch 128, 227 crops) on CPU."""
    from fixtures import make_cub
    from liftedstruct.datasets import PrepareOptions, prepare

    raw = make_cub(tmp_path / "raw", classes=(1, 2, 3, 4, 101), per_class=8)
    prepare("cub", raw, tmp_path / "lmdb", PrepareOptions(
        count_check=False, methods=("lifted",), workers=1))
    config = replace(prototxt.paper_config("cub", "lifted", 64),
                     train_source=str(tmp_path / "lmdb" / "train_lifted_lmdb"),
                     test_source=str(tmp_path / "lmdb" / "test_lmdb"))
    net = tmp_path / "train_val.prototxt"
    net.write_text(prototxt.train_val(config))
    result = subprocess.run([str(caffe_binary()), "time", f"-model={net}",
                             "-iterations=1"], capture_output=True, text=True, env=GLOG,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"Average Forward-Backward: ([\d.]+) ms", result.stderr)
    assert match and float(match.group(1)) > 0
