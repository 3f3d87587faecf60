"""The nets and solvers: the committed set is the template's, every one of
the paper's configurations has the paper's settings, and `caffe train` runs
them (the README's own command included) on CPU."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from liftedstruct.constants import (
    EMBEDDINGS,
    HEADLINE_EMBEDDING,
    METHODS,
    PAPER_DATASETS,
)
from liftedstruct.errors import NetError
from liftedstruct.nets import template, zoo
from liftedstruct.nets.derive import RunNet
from liftedstruct.paths import REPO_ROOT, caffe_binary
from liftedstruct.training import training_losses

PROTOTXT = REPO_ROOT / "prototxt"
GLOG = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
MAKE = [sys.executable, str(REPO_ROOT / "tools" / "make_prototxt.py")]


def parse(text: str, message: str):
    from caffe.proto import caffe_pb2

    proto = getattr(caffe_pb2, message)()
    text_format.Merge(text, proto)
    return proto


def test_committed_files_are_the_templates(tmp_path):
    result = subprocess.run([*MAKE, "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check notices an edit and a stray file.
    copy = tmp_path / "prototxt"
    shutil.copytree(PROTOTXT, copy)
    (copy / "cub" / "train_val.prototxt").write_text("name: 'edited'\n")
    (copy / "extra.prototxt").write_text("name: 'stray'\n")
    problems = zoo.check_committed(copy)
    assert any("differs" in p and "cub/train_val" in p for p in problems)
    assert any("not generated" in p and "extra.prototxt" in p for p in problems)


def check_paper_settings(dataset, method, embedding, net, solver, layout="unique"):
    layers = {layer.name: layer for layer in net.layer}
    data = [layer for layer in net.layer if layer.type in ("Data", "MetricBatchData")]
    train, test = sorted(data, key=lambda layer: layer.include[0].phase)
    assert test.type == "Data"
    if layout == "unique":
        assert train.type == "MetricBatchData"
        assert train.data_param.source == f"data/lmdb/{dataset}/train_lmdb"
        param = train.metric_batch_param
        assert param.tuple == (param.TRIPLET if method == "triplet" else param.PAIR)
        assert param.label == (param.SIMILARITY if method == "contrastive" else param.CLASS)
        assert param.epochs == param.FIXED and param.max_tuples == 0
        assert not param.HasField("seed")  # the solver's random_seed
    else:
        assert train.type == "Data"
        assert "metric_batch_param" not in {field.name for field, _ in train.ListFields()}
        assert train.data_param.source == f"data/lmdb/{dataset}/train_{method}_lmdb"
    assert train.data_param.batch_size == (120 if method == "triplet" else 128)
    assert train.transform_param.crop_size == test.transform_param.crop_size == 227
    assert train.transform_param.mirror and not test.transform_param.mirror
    assert list(train.transform_param.mean_value) == [104, 117, 123]
    assert test.data_param.source == f"data/lmdb/{dataset}/test_lmdb"
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
    if method == "contrastive":
        assert layers["slice_embedding"].slice_param.slice_point == [64]
    assert (solver.base_lr, solver.lr_policy, solver.gamma, solver.stepsize) == (
        pytest.approx(1e-4), "step", pytest.approx(0.96), 32000)
    assert (solver.momentum, solver.weight_decay) == (pytest.approx(0.9), pytest.approx(2e-4))
    assert (solver.max_iter, solver.snapshot) == (20000, 10000)
    assert solver.solver_mode == 1 and not solver.test_initialization  # GPU
    assert solver.snapshot_prefix == (f"snapshots/{dataset}/{method}_{embedding}/"
                                      f"{dataset}_{method}_{embedding}")


@pytest.mark.metric_batch
@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_every_configuration_has_the_papers_settings(caffe, dataset):
    for method in METHODS:
        for embedding in EMBEDDINGS:
            files = zoo.net_files(dataset, method, embedding, "out")
            check_paper_settings(dataset, method, embedding,
                                 parse(files["train_val.prototxt"], "NetParameter"),
                                 parse(files["solver.prototxt"], "SolverParameter"))
    size = HEADLINE_EMBEDDING[dataset]
    committed = parse((PROTOTXT / f"solver_{dataset}.prototxt").read_text(), "SolverParameter")
    assert committed.net == f"prototxt/{dataset}/train_val.prototxt"
    check_paper_settings(dataset, "lifted", size,
                         parse((PROTOTXT / dataset / "train_val.prototxt").read_text(),
                               "NetParameter"), committed)


def test_make_prototxt_writes_one_configuration(caffe, tmp_path):
    out = tmp_path / "cars_triplet_256"
    result = subprocess.run([*MAKE, "--dataset", "cars196", "--method", "triplet",
                             "--embedding", "256", "--out", str(out), "--layout", "ordered"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "deploy.prototxt", "solver.prototxt", "train_val.prototxt"]
    solver = parse((out / "solver.prototxt").read_text(), "SolverParameter")
    assert solver.net == f"{out}/train_val.prototxt"
    check_paper_settings("cars196", "triplet", 256,
                         parse((out / "train_val.prototxt").read_text(), "NetParameter"),
                         solver, layout="ordered")
    caffe.Net(str(out / "deploy.prototxt"), caffe.TEST)
    bad = subprocess.run([*MAKE, "--dataset", "cub", "--method", "lifted", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "go together" in bad.stderr
    alone = subprocess.run([*MAKE, "--check", "--layout", "ordered"], capture_output=True,
                           text=True)
    assert alone.returncode == 2 and "--layout goes with --dataset" in alone.stderr


def train_layer(config) -> str:
    text = template.data_layer(config, "TRAIN")
    return " ".join(line.strip() for line in text.splitlines())


@pytest.mark.parametrize("method,tuple_kind,label", [("lifted", "PAIR", "CLASS"),
                                                     ("contrastive", "PAIR", "SIMILARITY"),
                                                     ("triplet", "TRIPLET", "CLASS")])
def test_unique_layout_trains_through_metric_batch_data(method, tuple_kind, label):
    """The text of the TRAIN data layer (the proto fields the C++ layer reads)."""
    config = template.paper_config("sop", method, 512)
    batch = 120 if method == "triplet" else 128
    assert train_layer(config) == (
        'layer { name: "data" type: "MetricBatchData" top: "data" top: "label" '
        "include { phase: TRAIN } transform_param { mirror: true crop_size: 227 "
        "mean_value: 104 mean_value: 117 mean_value: 123 } data_param { "
        f'source: "data/lmdb/sop/train_lmdb" batch_size: {batch} backend: LMDB }} '
        f"metric_batch_param {{ tuple: {tuple_kind} label: {label} }} }}")
    capped = train_layer(replace(config, max_tuples=30000, epochs="reshuffle"))
    assert capped.endswith(f"metric_batch_param {{ tuple: {tuple_kind} label: {label} "
                           "epochs: RESHUFFLE max_tuples: 30000 } }")
    test = template.data_layer(config, "TEST")
    assert 'type: "Data"' in test and "test_lmdb" in test and "metric_batch" not in test
    ordered = train_layer(template.paper_config("sop", method, 512, layout="ordered"))
    assert 'type: "Data"' in ordered and f"train_{method}_lmdb" in ordered
    assert "metric_batch_param" not in ordered
    demo = train_layer(template.demo_config(method, "digits"))
    assert 'type: "MetricBatchData"' in demo and "data/lmdb/digits/train_lmdb" in demo


@pytest.mark.parametrize("field,value,message", [
    ("layout", "sorted", "layout 'sorted': one of unique, ordered"),
    ("epochs", "random", "epochs 'random': one of fixed, reshuffle"),
    ("max_tuples", 0, "max_tuples 0: at least 1"),
])
def test_bad_net_settings_are_refused(field, value, message):
    with pytest.raises(NetError, match=message):
        replace(template.paper_config("cub", "lifted", 64), **{field: value})


def test_deploy_nets_build_and_output_both_blobs(caffe):
    deploys = sorted(PROTOTXT.rglob("deploy*.prototxt")) + sorted(
        (PROTOTXT / "deploy").glob("*.prototxt"))
    assert len(deploys) == len(EMBEDDINGS) + 1
    for path in deploys:
        net = caffe.Net(str(path), caffe.TEST)
        assert "fc_embedding" in net.blobs, path
        if "demo" not in path.parts:
            assert net.blobs["pool5/7x7_s1"].data.shape[1:] == (1024, 1, 1), path
            size = int(path.stem.split("_")[1])
            assert net.blobs["fc_embedding"].data.shape[1] == size


def random_googlenet(caffe, deploy: Path, tmp_path) -> Path:
    """A randomly initialised GoogLeNet saved under the BVLC layer names
    (BVLC's own deploy net, its fillers drawing the weights)."""
    caffe.set_random_seed(0)
    net = caffe.Net(str(deploy), caffe.TEST)
    path = tmp_path / "bvlc_googlenet_random.caffemodel"
    net.save(str(path))
    return path


def test_finetuning_copies_every_googlenet_layer(caffe, bvlc_googlenet_deploy, tmp_path):
    weights = random_googlenet(caffe, bvlc_googlenet_deploy, tmp_path)
    source = caffe.Net(str(bvlc_googlenet_deploy), str(weights), caffe.TEST)
    ours = caffe.Net(str(PROTOTXT / "deploy" / "embedding_64.prototxt"), caffe.TEST)
    before = ours.params["fc_embedding"][0].data.copy()
    ours.copy_from(str(weights))
    trunk = [name for name in ours.params if name != "fc_embedding"]
    assert len(trunk) == 57
    for name in trunk:
        for mine, theirs in zip(ours.params[name], source.params[name], strict=True):
            np.testing.assert_array_equal(mine.data, theirs.data)
    np.testing.assert_array_equal(ours.params["fc_embedding"][0].data, before)


@pytest.mark.metric_batch
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_caffe_train_each_method_reduced(caffe, tiny_cub, bvlc_googlenet_deploy, tmp_path,
                                         method):
    """A run's derived nets (crop 64, batch 12) train and snapshot."""
    net = RunNet(dataset="cub", method=method, embedding=64, data_dir=tiny_cub,
                 folder=tmp_path / "train", seed=1, iterations=3, crop=64, batch=12)
    paths = net.write()
    weights = random_googlenet(caffe, bvlc_googlenet_deploy, tmp_path)
    result = subprocess.run([str(caffe_binary()), "train", f"-solver={paths['solver']}",
                             f"-weights={weights}"], capture_output=True, text=True,
                            env=GLOG, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [loss for _, loss in training_losses(result.stderr)]
    assert len(losses) >= 3 and np.isfinite(losses).all()
    assert net.final_snapshot.exists()


@pytest.mark.metric_batch
@pytest.mark.slow
def test_readme_training_command_in_a_fresh_clone(caffe, bvlc_googlenet_deploy, tmp_path):
    """`caffe train -solver prototxt/solver_cub.prototxt` as the README says,
    from a checkout without snapshots/, with the caffe that setup links into
    .venv/bin, on this CPU build: the committed GPU solver trains on the CPU
    and snapshots into the folder it names. Only max_iter is lowered (and the
    snapshot with it), in a copy; the net is the committed one at full size."""
    caffe_program = REPO_ROOT / ".venv" / "bin" / "caffe"
    assert caffe_program.is_symlink() and os.access(caffe_program, os.X_OK), \
        "tools/setup.sh links Caffe's programs into .venv/bin"
    from fixtures import make_cub
    from liftedstruct.datasets import get_source
    from liftedstruct.datasets.prepare import PrepareOptions, prepare

    clone = tmp_path / "clone"
    (clone / "prototxt").mkdir(parents=True)
    (clone / "prototxt" / "cub").symlink_to(PROTOTXT / "cub")
    solver = (PROTOTXT / "solver_cub.prototxt").read_text()
    solver = re.sub(r"max_iter: \d+", "max_iter: 1", solver)
    solver = re.sub(r"snapshot: \d+", "snapshot: 1", solver)
    (clone / "prototxt" / "solver_cub.prototxt").write_text(solver)
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 3, 4, 101), per_class=8)
    prepare(get_source("cub"), raw, clone / "data" / "lmdb" / "cub", PrepareOptions(
        count_check=False, methods=("lifted",), workers=1))
    weights = random_googlenet(caffe, bvlc_googlenet_deploy, tmp_path)
    result = subprocess.run([str(caffe_program), "train",
                             "-solver", "prototxt/solver_cub.prototxt", "-weights",
                             str(weights)], cwd=clone, capture_output=True, text=True,
                            env=GLOG, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CPU-only build: training on the CPU" in result.stderr
    size = HEADLINE_EMBEDDING["cub"]
    assert (clone / "snapshots" / "cub" / f"lifted_{size}" /
            f"cub_lifted_{size}_iter_1.caffemodel").exists()
    losses = [loss for _, loss in training_losses(result.stderr)]
    assert losses and np.isfinite(losses).all()
    # An explicit -gpu on a CPU build still fails loudly.
    gpu = subprocess.run([str(caffe_program), "train", "-solver",
                          "prototxt/solver_cub.prototxt", "-gpu", "0"], cwd=clone,
                         capture_output=True, text=True, env=GLOG, timeout=300)
    assert gpu.returncode != 0 and "CPU-only" in gpu.stderr


def test_demo_readme_describes_the_demo_net():
    """prototxt/demo/README.md gives the widths the template builds."""
    from liftedstruct.constants import DEMO_EMBEDDING
    from liftedstruct.nets.template import DEMO_WIDTHS

    text = (REPO_ROOT / "prototxt" / "demo" / "README.md").read_text()
    conv1, conv2, fc = DEMO_WIDTHS
    assert (f"conv 3×3 ×{conv1}, ReLU, max-pool 2 → conv 3×3 ×{conv2}, ReLU, max-pool 2 → "
            f"fc {fc}") in text
    assert f"`fc_embedding` ({DEMO_EMBEDDING})" in text
