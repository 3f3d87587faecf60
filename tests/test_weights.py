"""fetch_weights: checksum, --from, and a clear message when offline."""

from __future__ import annotations

import hashlib

import pytest

from liftedstruct import weights
from liftedstruct.weights import WeightsError


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
