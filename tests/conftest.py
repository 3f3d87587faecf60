"""Shared fixtures: pycaffe from the project's Caffe build."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liftedstruct.paths import import_caffe  # noqa: E402


@pytest.fixture(scope="session")
def caffe():
    """pycaffe in CPU mode; fails (never skips) when Caffe is not built."""
    module = import_caffe()
    module.set_mode_cpu()
    return module
