"""The command-line tools as a user starts them: before Caffe is built (a
clear error, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from liftedstruct.paths import REPO_ROOT


def run_without_caffe(tmp_path, *args):
    env_root = tmp_path / "no_caffe"
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "CAFFE_ROOT": str(env_root)})


def test_tools_before_caffe_is_built(tmp_path):
    """The commonest first-run mistake ends in one line naming the fix."""
    np.savez(tmp_path / "f.npz", features=np.zeros((4, 2)), labels=np.array([0, 0, 1, 1]))
    (tmp_path / "deploy.prototxt").write_text("name: 'x'\n")
    (tmp_path / "w.caffemodel").write_bytes(b"x")
    tools = REPO_ROOT / "tools"
    cases = [
        [tools / "prepare_dataset.py", "digits", "--out", tmp_path / "prepared"],
        [tools / "reproduce.py", "--dataset", "digits", "--out", tmp_path / "run"],
        [tools / "extract_features.py", "--deploy", tmp_path / "deploy.prototxt",
         "--weights", tmp_path / "w.caffemodel", "--lmdb", tmp_path, "--out",
         tmp_path / "x.npz"],
        [tools / "run_gtests.py"],
    ]
    for args in cases:
        result = run_without_caffe(tmp_path, *args)
        assert result.returncode == 2, (args[0].name, result.stderr[-2000:])
        assert "build Caffe first with tools/setup.sh" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, args[0].name
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "run").exists()
