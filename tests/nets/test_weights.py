"""fetch_weights: checksum, --from, and a clear message when offline."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from liftedstruct import weights
from liftedstruct.errors import WeightsError
from liftedstruct.paths import REPO_ROOT


def test_from_a_local_copy_checks_sha1(tmp_path):
    copy = tmp_path / "model.caffemodel"
    copy.write_bytes(b"weights")
    with pytest.raises(WeightsError, match="SHA1 .* expected 405fc5ac"):
        weights.install_from(copy, tmp_path / "out" / "m.caffemodel")
    sha1 = hashlib.sha1(b"weights").hexdigest()
    dest = weights.install_from(copy, tmp_path / "out" / "m.caffemodel", sha1=sha1)
    assert dest.read_bytes() == b"weights"
    with pytest.raises(WeightsError, match="no such file"):
        weights.install_from(tmp_path / "none", tmp_path / "x")


def test_offline_download_says_what_to_do(tmp_path):
    with pytest.raises(WeightsError, match="--from PATH"):
        weights.download(tmp_path / "m.caffemodel", url="http://127.0.0.1:9/none",
                         timeout=5)
    assert not (tmp_path / "m.caffemodel").exists()


def test_an_out_that_cannot_be_written_is_refused_before_the_download(tmp_path):
    (tmp_path / "a_file").write_text("taken")
    (tmp_path / "copy.caffemodel").write_bytes(b"weights")
    for out, message in ((tmp_path / "a_file" / "w.caffemodel", "a_file is a file"),
                         (tmp_path, "a folder is there")):
        result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "fetch_weights.py"),
                                 "--from", str(tmp_path / "copy.caffemodel"), "--out",
                                 str(out)], capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "SHA1" not in result.stderr and "Traceback" not in result.stderr


DEPLOY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 } } }
"""


def test_weights_must_cover_the_layers_a_blob_needs(caffe, tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    net = caffe.Net(str(deploy), caffe.TEST)
    full = tmp_path / "full.caffemodel"
    net.save(str(full))
    params = weights.net_parameters(net)
    assert params == {"fc1": [12, 4], "fc2": [20, 5]}
    assert weights.upstream_layers(net, ["fc1"]) == {"data", "fc1"}
    weights.check_fit(full, params, "the net")
    # A model of another net (no layer name matches), an empty file, junk.
    other = tmp_path / "other.prototxt"
    other.write_text(DEPLOY.replace('"fc1"', '"a1"').replace('"fc2"', '"a2"'))
    unrelated = tmp_path / "unrelated.caffemodel"
    caffe.Net(str(other), caffe.TEST).save(str(unrelated))
    with pytest.raises(WeightsError, match="no weights for 2 of the 2 .*fc1, fc2"):
        weights.check_fit(unrelated, params, "the net")
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty file"):
        weights.check_fit(empty, params, "the net")
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff\xfe not a protobuf \x00\x01" * 10)
    with pytest.raises(WeightsError, match="not a Caffe model"):
        weights.check_fit(junk, params, "the net")
    # Only the first layer in the file: enough for fc1, not for fc2.
    half = tmp_path / "half.prototxt"
    half.write_text(DEPLOY.split('layer { name: "fc2"')[0])
    partial = tmp_path / "half.caffemodel"
    caffe.Net(str(half), caffe.TEST).save(str(partial))
    weights.check_fit(partial, {"fc1": params["fc1"]}, "fc1")
    with pytest.raises(WeightsError, match="no weights for 1 of the 2 .*fc2"):
        weights.check_fit(partial, params, "the net")
    # Same names, other sizes.
    wide = tmp_path / "wide.prototxt"
    wide.write_text(DEPLOY.replace("num_output: 5", "num_output: 7"))
    resized = tmp_path / "wide.caffemodel"
    caffe.Net(str(wide), caffe.TEST).save(str(resized))
    with pytest.raises(WeightsError, match="other sizes.*fc2"):
        weights.check_fit(resized, params, "the net")


def test_zoo_readme_names_bvlc_googlenet_as_bvlc_does():
    """The committed nets' readme carries the weights' URL and SHA-1 in model-
    zoo front matter, the same as BVLC's own models/bvlc_googlenet/readme.md
    in the Caffe source the build used; fetch_weights reads them from there."""
    found = sorted((weights.REPO_ROOT / "build").glob("src-*/**/models/bvlc_googlenet/readme.md"))
    assert found, "no Caffe source tree under build/: run tools/setup.sh"
    ours = weights.zoo_front_matter()
    bvlc = weights.zoo_front_matter(found[0])
    for key in ("caffemodel", "caffemodel_url", "sha1"):
        assert ours[key] == bvlc[key], key
    assert (weights.GOOGLENET_URL, weights.GOOGLENET_SHA1) == (ours["caffemodel_url"],
                                                               ours["sha1"])
