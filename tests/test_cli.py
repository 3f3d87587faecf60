"""What every tool shares (liftedstruct/cli.py, liftedstruct/files.py): one
test per kind of failure issue 28 found, each at the shared place that
fixes it for every tool (the kit's own check is tests/caffebuild/
test_kit_check.py)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest

from liftedstruct import cli, files
from liftedstruct.caffebuild import kit as kit_module
from liftedstruct.errors import FolderLockedError, LiftedError, OutputError, ScoringError
from liftedstruct.featurefile import check_features
from liftedstruct.paths import REPO_ROOT

TOOLS = REPO_ROOT / "tools"


def tool(name: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / name), *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kwargs)


# 1. A check that ran nothing must not pass ---------------------------------

def test_data_timing_refuses_what_is_no_lmdb_before_writing(caffe, tiny_cub, tmp_path):
    """make_prototxt.py --data-timing writes a net only for an LMDB of image
    Datums (Caffe would die on any other with a stack dump)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "a_file").write_text("x")
    for path, message in ((tmp_path / "missing", "no such folder"),
                          (tmp_path / "a_file", "not a folder"),
                          (empty, "not an LMDB (no data.mdb)")):
        out = tmp_path / "net"
        result = tool("make_prototxt.py", "--data-timing", path, "--out", out)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "--data-timing" in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()
    good = tool("make_prototxt.py", "--data-timing", tiny_cub / "test_lmdb", "--out",
                tmp_path / "net")
    assert good.returncode == 0, good.stderr[-2000:]
    assert (tmp_path / "net" / "data_timing.prototxt").is_file()


# 2. Arguments are checked before any work ----------------------------------

def test_kit_arguments_are_checked_before_the_build(tmp_path, monkeypatch):
    """gpu_kit.py's --out onto a file and a --cuda-arch that is no compute
    capability are refused before the hour-long build starts."""
    def build(*args, **kwargs):
        raise AssertionError("the build started")

    monkeypatch.setattr(kit_module, "build", build)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="a file is there"):
        kit_module.make_kit(tmp_path / "a_file", None, "xz", None, ["90"])
    for arch in ("9O", "sm90x", "35"):
        with pytest.raises(LiftedError, match=f"--cuda-arch {arch}"):
            kit_module.make_kit(tmp_path / "kit", None, "xz", None, [arch])
    with pytest.raises(LiftedError, match="--from-prefix .*no bin/caffe"):
        kit_module.make_kit(tmp_path / "kit", tmp_path, "xz", None, ["90"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    # On the command line, argparse's types refuse them as it parses.
    for value in ("9O", "35", "sm_9"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.cuda_arch(value)
    assert [cli.cuda_arch(v) for v in ("75", "86", "sm_90", "120")] == ["75", "86", "90",
                                                                     "120"]
    with pytest.raises(argparse.ArgumentTypeError, match="a file is there"):
        cli.output_folder(str(tmp_path / "a_file"))


def test_every_tool_checks_its_arguments_as_it_parses(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["make_prototxt.py", "--data-timing", tmp_path, "--out", tmp_path / "a_file"],
         "argument --data-timing"),
        (["reproduce.py", "--iterations", "0", "--out", tmp_path / "run"],
         "--iterations 0: must be at least 1"),
        (["reproduce.py", "--weights", tmp_path / "none.caffemodel", "--out", tmp_path / "r"],
         "argument --weights"),
        (["evaluate.py", tmp_path / "a_file", "--json", tmp_path / "a_file" / "x.json"],
         "argument --json"),
        (["report.py", "--dataset", "cub", "--embedding", "64", "--result",
          "x=" + str(tmp_path / "a_file"), "--out", tmp_path / "a_file"],
         "argument --out: "),
    ]
    for args, message in cases:
        result = tool(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# 3. No Python traceback, no Caffe stack dump --------------------------------

def run_main(main, capsys) -> tuple[int, str]:
    code = cli.run(main)
    return code, capsys.readouterr().err


def test_ctrl_c_and_os_errors_end_in_one_line(capsys, tmp_path):
    def interrupted():
        raise KeyboardInterrupt

    code, err = run_main(interrupted, capsys)
    assert code == 130 and "interrupted" in err and len(err.strip().splitlines()) == 1

    def exists():
        (tmp_path / "f").write_text("x")
        os.mkdir(tmp_path / "f")

    code, err = run_main(exists, capsys)
    assert code == 2 and f"{tmp_path / 'f'}: File exists" in err
    assert len(err.strip().splitlines()) == 1


def test_ctrl_c_in_a_tool_exits_130_without_a_traceback(tmp_path):
    """A real SIGINT to a running tool (report.py drawing its figures)."""
    import signal
    import time

    (tmp_path / "r.json").write_text(json.dumps({"recall@1": 0.5}))
    script = ("import sys, time; sys.argv = ['report']; sys.path.insert(0, 'tools');"
              "from liftedstruct import cli; print('ready', flush=True);"
              "sys.exit(cli.run(lambda: time.sleep(60)))")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in err
    assert "report: interrupted" in err


def test_a_deploy_that_does_not_parse_is_named_with_its_line(caffe, tmp_path):
    from liftedstruct.paths import read_prototxt

    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text('name: "x"\nlayer {\n  name: "data"\n  tpye: "Input"\n}\n')
    with pytest.raises(LiftedError, match=r"--deploy .*deploy.prototxt:4:3: .*tpye"):
        read_prototxt(deploy, "--deploy")
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"x")
    result = tool("extract_features.py", "--deploy", deploy, "--weights", weights,
                  "--images", deploy, "--out", tmp_path / "f.npz")
    assert result.returncode == 2 and "deploy.prototxt:4:3" in result.stderr, result.stderr
    assert "Check failed" not in result.stderr and "Traceback" not in result.stderr


def test_a_damaged_json_file_of_an_earlier_run_is_named(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"outputs": {"test_lmdb": ')
    with pytest.raises(OutputError, match=r"manifest.json: not valid JSON at line 1, "
                                          r"column \d+ .*delete it"):
        files.read_json(path)
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(OutputError, match="not a text file"):
        files.read_json(path)


def test_prepare_names_a_damaged_manifest(caffe, tmp_path):
    out = tmp_path / "digits"
    out.mkdir()
    (out / "manifest.json").write_text('{"outputs": {')
    result = tool("prepare_dataset.py", "digits", "--out", out)
    assert result.returncode == 2 and "manifest.json: not valid JSON" in result.stderr, \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_features_of_a_degenerate_shape_are_refused(tmp_path):
    with pytest.raises(ScoringError, match="0 values"):
        check_features(np.zeros((5, 0)), np.arange(5))
    path = tmp_path / "f.npz"
    np.savez(path, features=np.zeros((5, 0)), labels=np.arange(5) % 2)
    result = tool("evaluate.py", path)
    assert result.returncode == 2 and "0 values" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


# 4. Two runs at once into one output -----------------------------------------

def test_temporary_names_are_each_process_own(tmp_path):
    """Two writers of one file: neither renames the other's temporary file
    away (with one shared name the first rename took the second's file)."""
    path = tmp_path / "report.md"
    with files.atomic_path(path) as first:
        first.write_text("one")
        with files.atomic_path(path) as second:
            assert second != first and str(os.getpid()) in second.name
            second.write_text("two")
        assert first.exists()
    assert path.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_second_writer_is_refused_and_locks_leave_nothing(tmp_path):
    out = tmp_path / "features.npz"
    with files.locked_file(out, "feature extraction"):
        with pytest.raises(FolderLockedError, match="another feature extraction"):
            with files.locked_file(out, "feature extraction"):
                pass
    with files.locked_folder(tmp_path / "report", "tools/report.py"):
        with pytest.raises(FolderLockedError):
            with files.locked_folder(tmp_path / "report", "tools/report.py"):
                pass
    assert list(tmp_path.iterdir()) == []  # no lock file, no empty folder left


def test_a_second_extraction_into_one_out_is_refused(tmp_path):
    """While one extraction writes f.npz (and its f.npz.parts/), another into
    it is refused before it reads anything (it once removed the first's parts)."""
    from liftedstruct.features import Transform, extract

    out = tmp_path / "f.npz"
    with files.locked_file(out, "feature extraction"):
        with pytest.raises(FolderLockedError, match="another feature extraction"):
            extract(None, None, ["fc_embedding"], Transform(crop=8), out, {"k": 1})
    assert list(tmp_path.iterdir()) == []


# 5. Messages that say what is true -------------------------------------------

def test_space_messages_show_units_and_fit_the_output(tmp_path, monkeypatch):
    from liftedstruct.datasets.prepare import PrepareOptions, Preparer

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 2000))
    with pytest.raises(OutputError, match=r"test_lmdb needs about 12.6 MB but .* has "
                                          r"2.00 kB free"):
        files.check_space(tmp_path, 12_600_000, "test_lmdb")
    assert files.human_bytes(512) == "512 bytes"
    assert files.human_bytes(35e9) == "35.0 GB"
    preparer = object.__new__(Preparer)
    preparer.out, preparer.options = tmp_path, PrepareOptions(layout="ordered")
    for name in ("test_lmdb", "train_lmdb"):
        with pytest.raises(OutputError) as refused:
            preparer._check_space(1000, 5000.0, name)
        assert "--max-pairs" not in str(refused.value) and "0.0 GB" not in str(refused.value)
    with pytest.raises(OutputError, match="--max-pairs"):
        preparer._check_space(1000, 5000.0, "train_lifted_lmdb")


def test_a_refused_run_leaves_its_output_folder_as_it_was(tmp_path):
    """reproduce.py refused (a folder holding something else) leaves no lock
    file behind; refused before its folder existed, no folder."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = tool("reproduce.py", "--dataset", "digits", "--out", out)
    assert result.returncode == 2 and "not a run of this tool" in result.stderr, \
        result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
