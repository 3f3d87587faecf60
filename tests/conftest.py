"""Shared fixtures: pycaffe from the project's Caffe build."""

from __future__ import annotations

from pathlib import Path

import pytest

from liftedstruct.paths import import_caffe


@pytest.fixture(scope="session")
def caffe():
    """pycaffe in CPU mode; fails (never skips) when Caffe is not built."""
    module = import_caffe()
    module.set_mode_cpu()
    return module


@pytest.fixture(scope="session")
def tiny_cub(caffe, tmp_path_factory):
    """The CUB fixture prepared at 72x72 with batches of 12 (every method)."""
    from fixtures import make_cub
    from liftedstruct.datasets import get_source
    from liftedstruct.datasets.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("tiny_cub")
    raw = make_cub(root / "raw", classes=(1, 2, 3, 4, 101, 102, 103), per_class=4)
    out = root / "lmdb"
    prepare(get_source("cub"), raw, out, PrepareOptions(
        size=72, count_check=False, workers=1, max_pairs=120,
        batch_size={"lifted": 12, "contrastive": 12, "triplet": 12}))
    return out


@pytest.fixture(scope="session")
def bvlc_googlenet_deploy() -> Path:
    """BVLC's own GoogLeNet deploy net, from the Caffe source the build used."""
    from liftedstruct.paths import REPO_ROOT

    found = sorted((REPO_ROOT / "build").glob("src-*/**/models/bvlc_googlenet/deploy.prototxt"))
    assert found, "no Caffe source tree under build/: run tools/setup.sh"
    return found[0]
