"""The build script's source handling and build key (the build itself is
exercised by tools/setup.sh before the tests run)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from liftedstruct import caffe_build
from liftedstruct.caffe_build import BuildError, BuildOptions

ORIG = caffe_build.BUILD_DIR / "download" / caffe_build.ORIG_TARBALL


def test_debian_orig_tarball_is_the_pinned_one():
    assert ORIG.exists(), "tools/setup.sh downloads it first"
    assert caffe_build.sha256_file(ORIG) == caffe_build.ORIG_SHA256


def test_local_tarball_as_caffe_src(tmp_path, monkeypatch):
    monkeypatch.setattr(caffe_build, "BUILD_DIR", tmp_path / "build")
    root, source_id = caffe_build.pristine_source(ORIG)
    assert (root / "src" / "caffe" / "proto" / "caffe.proto").exists()
    assert source_id == f"tarball:{caffe_build.ORIG_SHA256}"


def test_git_checkout_at_another_commit_is_refused(tmp_path):
    repo = tmp_path / "caffe"
    (repo / "src" / "caffe" / "proto").mkdir(parents=True)
    (repo / "CMakeLists.txt").write_text("project(Caffe)\n")
    (repo / "src" / "caffe" / "proto" / "caffe.proto").write_text("syntax = 'proto2';\n")
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    with pytest.raises(BuildError, match="pins BVLC commit 99bd997"):
        caffe_build.pristine_source(repo)
    with pytest.raises(BuildError, match="no such file"):
        caffe_build.pristine_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="no Caffe source tree"):
        caffe_build.pristine_source(tmp_path / "empty")


def test_build_key_follows_the_inputs(tmp_path, monkeypatch):
    layers = tmp_path / "caffe_layers"
    shutil.copytree(caffe_build.LAYERS_DIR, layers)
    monkeypatch.setattr(caffe_build, "LAYERS_DIR", layers)
    key = caffe_build.build_key("debian-orig:x", BuildOptions())
    assert key == caffe_build.build_key("debian-orig:x", BuildOptions())
    assert key != caffe_build.build_key("debian-orig:x", BuildOptions(cuda=True))
    assert key != caffe_build.build_key("tarball:y", BuildOptions())
    source = next((layers / "src").rglob("*.cu"))
    source.write_text(source.read_text() + "\n// changed\n")
    assert key != caffe_build.build_key("debian-orig:x", BuildOptions())


def test_patches_apply_to_the_pristine_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(caffe_build, "BUILD_DIR", tmp_path)
    pristine, _ = caffe_build.pristine_source(ORIG)
    work = tmp_path / "work"
    caffe_build.prepare_tree(pristine, work)
    proto = (work / "src" / "caffe" / "proto" / "caffe.proto").read_text()
    assert "lifted_struct_sim_softmax_loss_param = 149" in proto
    assert "SetTotalBytesLimit(kProtoReadBytesLimit);" in (
        work / "src" / "caffe" / "util" / "io.cpp").read_text()
    assert (work / "src" / "caffe" / "layers" /
            "lifted_struct_similarity_softmax_loss_layer.cu").exists()
