"""Feature extraction through pycaffe on a tiny generated net and LMDB."""

from __future__ import annotations

import subprocess
import sys

import cv2
import lmdb
import numpy as np
import pytest

from liftedstruct import features
from liftedstruct.datasets import read_lmdb_labels
from liftedstruct.paths import REPO_ROOT

TOOLS = REPO_ROOT / "tools"
TINY_DEPLOY = """
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 4 dim: 3 dim: 64 dim: 64 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 5 stride: 4
    weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc_embedding" type: "InnerProduct" bottom: "conv" top: "fc_embedding"
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.01 } } }
"""


@pytest.fixture
def tiny_net(caffe, tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(TINY_DEPLOY)
    caffe.set_random_seed(3)
    net = caffe.Net(str(deploy), caffe.TEST)
    weights = tmp_path / "tiny.caffemodel"
    net.save(str(weights))
    return deploy, weights


def run_cli(*args):
    return subprocess.run([sys.executable, str(TOOLS / "extract_features.py"), *args],
                          capture_output=True, text=True)


def test_lmdb_extraction_matches_manual_forward(caffe, tiny_cub, tiny_net, tmp_path):
    deploy, weights = tiny_net
    out = tmp_path / "features.npz"
    result = run_cli("--deploy", str(deploy), "--weights", str(weights), "--lmdb",
                     str(tiny_cub / "test_lmdb"), "--blobs", "fc_embedding", "pool",
                     "--out", str(out), "--batch", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    data = np.load(out)
    labels = read_lmdb_labels(tiny_cub / "test_lmdb")
    assert data["features_fc_embedding"].shape == (len(labels), 8)
    assert data["features_pool"].shape == (len(labels), 4)
    assert data["features_fc_embedding"].dtype == np.float32
    assert data["labels"].tolist() == labels
    assert data["ids"][0] == "000000000"
    # The first image by hand: centre 64 crop of the 72x72 datum, minus mean.
    from caffe.proto import caffe_pb2

    env = lmdb.open(str(tiny_cub / "test_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        datum = caffe_pb2.Datum.FromString(txn.get(b"000000000"))
    image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
    crop = image[4:68, 4:68].astype(np.float32) - np.array([104, 117, 123], np.float32)
    net = caffe.Net(str(deploy), str(weights), caffe.TEST)
    net.blobs["data"].reshape(1, 3, 64, 64)
    net.blobs["data"].data[0] = crop.transpose(2, 0, 1)
    net.forward()
    np.testing.assert_allclose(data["features_fc_embedding"][0],
                               net.blobs["fc_embedding"].data[0], rtol=1e-5, atol=1e-7)


def test_resume_uses_finished_chunks(caffe, tiny_cub, tiny_net, tmp_path, monkeypatch):
    deploy, weights = tiny_net
    from caffe.proto import caffe_pb2

    monkeypatch.setattr(features, "CHUNK", 4)
    net = caffe.Net(str(deploy), str(weights), caffe.TEST)
    source = features.LmdbSource(tiny_cub / "test_lmdb", caffe_pb2)
    transform = features.Transform(crop=64)
    full = features.extract(net, source, ["fc_embedding"], transform, tmp_path / "a.npz")
    reference = np.load(full)["features"]
    # A run cut off after its first chunk: that chunk is kept and reused.
    parts = tmp_path / "b.npz.parts"
    parts.mkdir()
    marker = np.full((4, 8), 7.0, dtype=np.float32)
    np.savez(parts / "chunk_000000000.npz", ids=np.array(["a"] * 4),
             labels=np.zeros(4, int), features_fc_embedding=marker)
    resumed = np.load(features.extract(net, source, ["fc_embedding"], transform,
                                       tmp_path / "b.npz"))["features"]
    np.testing.assert_array_equal(resumed[:4], marker)
    np.testing.assert_array_equal(resumed[4:], reference[4:])
    assert not parts.exists()


def test_image_list_and_bad_inputs(caffe, tiny_net, tmp_path):
    deploy, weights = tiny_net
    for index in range(3):
        cv2.imwrite(str(tmp_path / f"im{index}.jpg"),
                    np.full((50, 80, 3), 40 * index, dtype=np.uint8))
    listing = tmp_path / "list.txt"
    listing.write_text("im0.jpg 0\nim1.jpg 1\nim2.jpg 1\n")
    result = run_cli("--deploy", str(deploy), "--weights", str(weights), "--images",
                     str(listing), "--resize", "72", "--out", str(tmp_path / "f.npz"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(tmp_path / "f.npz")["features"].shape == (3, 8)
    bad = run_cli("--deploy", str(deploy), "--weights", str(weights), "--images",
                  str(listing), "--blobs", "nope", "--out", str(tmp_path / "g.npz"))
    assert bad.returncode == 2 and "no blob 'nope'" in bad.stderr
    missing = run_cli("--deploy", str(deploy), "--weights", str(tmp_path / "none"),
                      "--images", str(listing), "--out", str(tmp_path / "h.npz"))
    assert missing.returncode == 2 and "--weights" in missing.stderr
