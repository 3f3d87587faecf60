"""Feature extraction through pycaffe on a tiny generated net and LMDB."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from liftedstruct import features
from liftedstruct.errors import ExtractionError
from liftedstruct.lmdbio import read_labels as read_lmdb_labels
from liftedstruct.paths import REPO_ROOT, caffe_cpu_only

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


class CutOff(Exception):
    pass


def interrupted(source, after: int):
    """The source, failing once `after` images have been read."""
    class Cut:
        def __len__(self):
            return len(source)

        def identity(self):
            return source.identity()

        def read(self, start):
            for count, item in enumerate(source.read(start), start=start):
                if count >= after:
                    raise CutOff
                yield item
    return Cut()


def test_resume_only_with_the_same_weights(caffe, tiny_cub, tiny_net, tmp_path,
                                           monkeypatch):
    deploy, weights = tiny_net
    monkeypatch.setattr(features, "CHUNK", 4)
    source = features.LmdbSource(tiny_cub / "test_lmdb")
    transform = features.Transform(crop=64)

    def run(weights_path, out, src=source):
        net = caffe.Net(str(deploy), str(weights_path), caffe.TEST)
        key = features.run_key(weights_path, deploy, source, ["fc_embedding"], transform)
        return features.extract(net, src, ["fc_embedding"], transform, out, key)

    reference = np.load(run(weights, tmp_path / "a.npz"))["features"]
    # Cut off after the first chunk: that chunk is kept, with its key.
    out = tmp_path / "b.npz"
    with pytest.raises(CutOff):
        run(weights, out, interrupted(source, 5))
    parts = tmp_path / "b.npz.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["chunk_000000000.npz", "key.json"]
    # Mark the kept chunk: a resume with the same weights reuses it.
    kept = dict(np.load(parts / "chunk_000000000.npz"))
    kept["features_fc_embedding"] = np.full_like(kept["features_fc_embedding"], 7.0)
    np.savez(parts / "chunk_000000000.npz", **kept)
    with pytest.raises(CutOff):
        run(weights, out, interrupted(source, 9))
    resumed = np.load(run(weights, out))["features"]
    np.testing.assert_array_equal(resumed[:4], 7.0)
    np.testing.assert_array_equal(resumed[4:], reference[4:])
    assert not parts.exists()
    # Cut off again, then resumed with other weights: nothing of the first
    # model survives (its rows are not mixed into the second model's).
    caffe.set_random_seed(11)
    other = tmp_path / "other.caffemodel"
    caffe.Net(str(deploy), caffe.TEST).save(str(other))
    with pytest.raises(CutOff):
        run(weights, tmp_path / "c.npz", interrupted(source, 5))
    mixed = np.load(run(other, tmp_path / "c.npz"))["features"]
    np.testing.assert_array_equal(mixed, np.load(run(other, tmp_path / "d.npz"))["features"])
    assert not np.allclose(mixed[:4], reference[:4])


def run_cli_ok(*args):
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_weights_that_do_not_fit_are_refused(caffe, tiny_cub, tiny_net, tmp_path):
    deploy, _ = tiny_net
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    other_net = tmp_path / "other.prototxt"
    other_net.write_text(TINY_DEPLOY.replace('"conv"', '"other_conv"').replace(
        '"fc_embedding"', '"other_fc"'))
    unrelated = tmp_path / "unrelated.caffemodel"
    caffe.Net(str(other_net), caffe.TEST).save(str(unrelated))
    for model, message in ((empty, "empty file"),
                           (unrelated, "no weights for 2 of the 2 learnable layers")):
        out = tmp_path / f"{model.stem}.npz"
        result = run_cli("--deploy", str(deploy), "--weights", str(model), "--lmdb",
                         str(tiny_cub / "test_lmdb"), "--out", str(out))
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "conv" in result.stderr or model == empty
        assert not out.exists() and not out.with_name(out.name + ".parts").exists()


def test_a_crop_much_smaller_than_the_images_is_refused(caffe, tiny_cub, tmp_path):
    deploy = tmp_path / "small.prototxt"
    deploy.write_text(TINY_DEPLOY.replace("dim: 64 dim: 64", "dim: 28 dim: 28"))
    weights = tmp_path / "small.caffemodel"
    caffe.Net(str(deploy), caffe.TEST).save(str(weights))
    out = tmp_path / "f.npz"
    refused = run_cli("--deploy", str(deploy), "--weights", str(weights), "--lmdb",
                      str(tiny_cub / "test_lmdb"), "--out", str(out))
    assert refused.returncode == 2
    assert "28x28 inputs but the images are 72x72" in refused.stderr
    assert "--crop 28" in refused.stderr
    assert not out.exists() and not (tmp_path / "f.npz.parts").exists()
    run_cli_ok("--deploy", str(deploy), "--weights", str(weights), "--lmdb",
               str(tiny_cub / "test_lmdb"), "--out", str(out), "--crop", "28")
    assert np.load(out)["features"].shape[1] == 8


def test_check_crop_accepts_the_papers_crop():
    class Source:
        def __len__(self):
            return 1

        def read(self, start):
            yield "0", 0, np.zeros((256, 256, 3), np.uint8)

    features.check_crop(Source(), features.Transform(crop=227), allow_small=False)
    with pytest.raises(ExtractionError, match="centre 128x128"):
        features.check_crop(Source(), features.Transform(crop=128), allow_small=False)


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
    # An --out that is an input would be overwritten: refused, the input kept.
    before = weights.read_bytes()
    onto = run_cli("--deploy", str(deploy), "--weights", str(weights), "--images",
                   str(listing), "--resize", "72", "--out", str(weights))
    assert onto.returncode == 2 and "is also --weights" in onto.stderr, onto.stderr[-2000:]
    assert weights.read_bytes() == before
    # A repeated image (it would count twice in every score), a binary list.
    listing.write_text("im0.jpg 0\nim1.jpg 1\nim0.jpg 0\n")
    repeated = run_cli("--deploy", str(deploy), "--weights", str(weights), "--images",
                       str(listing), "--resize", "72", "--out", str(tmp_path / "r.npz"))
    assert repeated.returncode == 2, repeated.stderr[-2000:]
    assert "list.txt:3: im0.jpg again (first at line 1)" in repeated.stderr
    listing.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not a list")
    binary = run_cli("--deploy", str(deploy), "--weights", str(weights), "--images",
                     str(listing), "--out", str(tmp_path / "b.npz"))
    assert binary.returncode == 2 and "not a text list" in binary.stderr
    assert "Traceback" not in repeated.stderr + binary.stderr


def test_a_kill_while_a_part_is_saved_does_not_block_the_resume(caffe, tiny_cub, tiny_net,
                                                                 tmp_path, monkeypatch):
    """A kill while np.savez writes a part leaves its temporary file, cut
    short, beside the finished parts; the rerun resumes past it."""
    deploy, weights = tiny_net
    monkeypatch.setattr(features, "CHUNK", 4)
    source = features.LmdbSource(tiny_cub / "test_lmdb")
    transform = features.Transform(crop=64)
    key = features.run_key(weights, deploy, source, ["fc_embedding"], transform)

    def run(out, src=source):
        net = caffe.Net(str(deploy), str(weights), caffe.TEST)
        return features.extract(net, src, ["fc_embedding"], transform, out, key)

    reference = np.load(run(tmp_path / "a.npz"))["features"]
    out = tmp_path / "b.npz"
    with pytest.raises(CutOff):
        run(out, interrupted(source, 6))
    parts = tmp_path / "b.npz.parts"
    for name in ("chunk_000000004.npz.tmp", "chunk_000000004.npz.tmp.npz"):
        (parts / name).write_bytes(b"PK\x03\x04\x14\x00 cut short")
    np.testing.assert_array_equal(np.load(run(out))["features"], reference)
    assert not parts.exists()


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder that refuses new files: read-only permissions, or for root
    (whom permissions do not stop) sysfs, which refuses files to anyone."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_output_paths_are_checked_before_the_work(caffe, tiny_cub, tiny_net, tmp_path):
    deploy, weights = tiny_net
    (tmp_path / "taken").mkdir()
    (tmp_path / "file").write_text("in the way")
    for out, message in ((unwritable_folder(tmp_path) / "f.npz", "--out:? .*: cannot write in"),
                         (tmp_path / "taken", "--out:? .*taken: a folder is there"),
                         (tmp_path / "file" / "f.npz", "--out:? .*: .*file is a file")):
        result = run_cli("--deploy", str(deploy), "--weights", str(weights), "--lmdb",
                         str(tiny_cub / "test_lmdb"), "--out", str(out))
        assert result.returncode == 2, result.stderr[-2000:]
        assert re.search(message, result.stderr), result.stderr[-2000:]
        assert f"features {out.name}:" not in result.stderr  # no image read (no progress)
        assert "Traceback" not in result.stderr


def write_lmdb_values(path: Path, values: list[bytes]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for index, value in enumerate(values):
            txn.put(f"{index:09d}".encode(), value)
    env.close()
    return path


def test_lmdbs_of_other_values_are_named(caffe, tiny_net, tmp_path):
    deploy, weights = tiny_net
    from caffe.proto import caffe_pb2

    raw = caffe_pb2.Datum(channels=3, height=72, width=72, data=bytes(72 * 72), label=0)
    floats = caffe_pb2.Datum(channels=3, height=2, width=2, float_data=[0.5] * 12)
    not_lmdb = tmp_path / "not_lmdb"
    not_lmdb.mkdir()
    (not_lmdb / "data.mdb").write_bytes(b"this is not a database" * 300)
    cases = {
        "json": (write_lmdb_values(tmp_path / "json", [b'{"label": 1, "image": "a.jpg"}']),
                 "record 000000000: not a Caffe Datum"),
        "short": (write_lmdb_values(tmp_path / "short", [raw.SerializeToString()]),
                  "record 000000000: undecodable image"),
        "floats": (write_lmdb_values(tmp_path / "floats", [floats.SerializeToString()]),
                   "a Datum without image data"),
        "not_lmdb": (not_lmdb, "not a readable LMDB"),
    }
    for name, (path, message) in cases.items():
        out = tmp_path / f"{name}.npz"
        result = run_cli("--deploy", str(deploy), "--weights", str(weights), "--lmdb",
                         str(path), "--out", str(out), "--crop", "64")
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert message in result.stderr, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, name
        assert not out.exists()


def test_a_gpu_the_build_cannot_use_is_refused_up_front(caffe, tiny_cub, tiny_net, tmp_path):
    """On a CPU-only build --gpu 0 is refused before the net is made (Caffe
    itself would die with a stack dump); on a CUDA build, a GPU that is not
    there."""
    deploy, weights = tiny_net
    assert caffe_cpu_only() is not None
    gpu, why = ("0", "is a CPU-only build of Caffe") if caffe_cpu_only() else (
        "99", "Caffe cannot use this GPU")
    out = tmp_path / "f.npz"
    for value, message in ((gpu, why), ("-1", "a GPU id is 0 or more")):
        result = run_cli("--deploy", str(deploy), "--weights", str(weights), "--lmdb",
                         str(tiny_cub / "test_lmdb"), "--out", str(out), "--gpu", value)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Check failed" not in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()
