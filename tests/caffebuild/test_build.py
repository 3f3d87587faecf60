"""The build's source handling, archive safety and build key (the build
itself is exercised by tools/setup.sh before the tests run)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from liftedstruct.caffebuild import cmake, gtests, source
from liftedstruct.caffebuild.cmake import BuildOptions
from liftedstruct.errors import BuildError
from liftedstruct.files import UnsafeArchiveError, file_digest, safe_extract_tar

ORIG = source.BUILD_DIR / "download" / source.CAFFE_SOURCE.orig


def test_debian_orig_tarball_is_the_pinned_one():
    assert ORIG.exists(), "tools/setup.sh downloads it first"
    assert file_digest(ORIG) == source.CAFFE_SOURCE.sha256


def test_local_tarball_as_caffe_src(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "BUILD_DIR", tmp_path / "build")
    root, source_id = source.pristine_source(ORIG)
    assert (root / "src" / "caffe" / "proto" / "caffe.proto").exists()
    assert source_id == f"tarball:{source.CAFFE_SOURCE.sha256}"


def test_extraction_without_python_filters(tmp_path, monkeypatch):
    """Debian 12's Python 3.11.2 has no tarfile filters (3.11.4 added them):
    the Caffe tarball still unpacks, through our own member checks."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.setattr(source, "BUILD_DIR", tmp_path / "build")
    root, _ = source.pristine_source(ORIG)
    assert (root / "CMakeLists.txt").exists()


def make_tar(path: Path, members: list[tuple[str, str, str]]) -> Path:
    """(name, kind, link target or content) -> a tar file."""
    with tarfile.open(path, "w") as archive:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = extra.encode()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "device": tarfile.CHRTYPE}[kind]
            info.linkname = extra
            archive.addfile(info)
    return path


@pytest.mark.parametrize("with_filters", [True, False])
@pytest.mark.parametrize("member", [
    ("/etc/evil", "file", "x"),
    ("a/../../evil", "file", "x"),
    ("link", "symlink", "/etc/passwd"),
    ("a/link", "symlink", "../../outside"),
    ("hard", "hardlink", "../outside"),
    ("dev", "device", ""),
])
def test_unsafe_archives_are_refused(tmp_path, monkeypatch, with_filters, member):
    if not with_filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = make_tar(tmp_path / "bad.tar", [("ok.txt", "file", "fine"), member])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="bad.tar"):
        safe_extract_tar(archive, dest)
    assert not any(dest.iterdir())  # checked before anything is written
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()


def test_safe_links_inside_the_tree_extract(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = make_tar(tmp_path / "ok.tar", [("a/file.txt", "file", "data"),
                                             ("a/b/link", "symlink", "../file.txt")])
    safe_extract_tar(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "a" / "b" / "link").read_text() == "data"


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
        source.pristine_source(repo)
    with pytest.raises(BuildError, match="no such file"):
        source.pristine_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="no Caffe source tree"):
        source.pristine_source(tmp_path / "empty")


def test_build_key_follows_the_inputs(tmp_path, monkeypatch):
    layers = tmp_path / "caffe_layers"
    shutil.copytree(source.LAYERS_DIR, layers)
    monkeypatch.setattr(cmake, "LAYERS_DIR", layers)
    key = cmake.build_key("debian-orig:x", BuildOptions())
    assert key == cmake.build_key("debian-orig:x", BuildOptions())
    # The number of parallel jobs changes how fast, not what, is built.
    for jobs in (1, 3, 64):
        assert key == cmake.build_key("debian-orig:x", BuildOptions(jobs=jobs))
    assert key != cmake.build_key("debian-orig:x", BuildOptions(cuda=True))
    assert key != cmake.build_key("tarball:y", BuildOptions())
    cu = next((layers / "src").rglob("*.cu"))
    cu.write_text(cu.read_text() + "\n// changed\n")
    assert key != cmake.build_key("debian-orig:x", BuildOptions())


def test_another_core_count_does_not_rebuild(tmp_path, monkeypatch):
    """An install stamped by a build with --jobs 2 is up to date for --jobs 7:
    nothing is configured, compiled or installed again."""
    monkeypatch.setenv("CAFFE_ROOT", str(tmp_path / "prefix"))
    monkeypatch.setattr(cmake, "pristine_source", lambda src: (tmp_path, "debian-orig:x"))

    def no_build(*args, **kwargs):
        raise AssertionError(f"rebuilt: {args}")

    monkeypatch.setattr(cmake, "run", no_build)
    monkeypatch.setattr(cmake, "prepare_tree", no_build)
    (tmp_path / "prefix").mkdir()
    key = cmake.build_key("debian-orig:x", BuildOptions(jobs=2))
    (tmp_path / "prefix" / cmake.STAMP).write_text(json.dumps({"key": key}))
    assert cmake.build(None, BuildOptions(jobs=7)) == tmp_path / "prefix"
    with pytest.raises(AssertionError, match="rebuilt"):
        cmake.build(None, BuildOptions(jobs=7, cuda=True))


def test_patches_apply_to_the_pristine_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "BUILD_DIR", tmp_path)
    pristine, _ = source.pristine_source(ORIG)
    work = tmp_path / "work"
    source.prepare_tree(pristine, work)
    proto = (work / "src" / "caffe" / "proto" / "caffe.proto").read_text()
    assert "lifted_struct_sim_softmax_loss_param = 149" in proto
    assert "SetTotalBytesLimit(kProtoReadBytesLimit);" in (
        work / "src" / "caffe" / "util" / "io.cpp").read_text()
    assert "create_directories" in (work / "src" / "caffe" / "solver.cpp").read_text()
    assert "optional uint32 threads = 11" in proto
    assert "load_batch_parallel" in (work / "src" / "caffe" / "layers" /
                                     "data_layer.cpp").read_text()
    assert (work / "src" / "caffe" / "layers" /
            "lifted_struct_similarity_softmax_loss_layer.cu").exists()
    assert (work / "include" / "caffe" / "util" / "lifted_struct.hpp").exists()


def test_one_test_table_gives_sources_and_filter():
    cpu, cudnn = gtests.cmake_selection(False).split(","), gtests.cmake_selection(True)
    assert "lifted_struct_similarity_softmax_loss_layer" in cpu
    # Caffe's convolution tests run through the batched CPU path (patch 0015),
    # its ReLU tests through patch 0016's threads.
    assert "convolution_layer" in cpu and "batched_convolution" in cpu
    assert "cpu_threads" in cpu and "neuron_layer" in cpu
    assert "softmax_layer" not in cpu and "softmax_layer" in cudnn  # its CuDNN* cases
    for test in gtests.selected(False):
        assert (source.BUILD_DIR / f"src-{source.BVLC_COMMIT_PREFIX}" / "src" / "caffe" /
                "test" / f"test_{test.source}.cpp").exists() or (
            source.LAYERS_DIR / "src" / "caffe" / "test" / f"test_{test.source}.cpp").exists()
    assert "*LiftedStructSimilaritySoftmaxLoss*" in gtests.gtest_filter(False)
    assert "*Convolution*" in gtests.gtest_filter(True)


@pytest.mark.skipif(not os.environ.get("LIFTED_REQUIRE_DEBIAN_PYTHON"),
                    reason="CI runs the tests with Debian's own interpreter")
def test_environment_uses_debians_python():
    """The .venv (and so pycaffe) is built on /usr/bin/python3, what the
    Dockerfile and a fresh Debian 12 machine have; a newer python3 first on
    the PATH must not hide a version gap again."""
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    assert base == Path("/usr/bin/python3").resolve(), base
