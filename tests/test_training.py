"""`caffe train` as a resumable step (liftedstruct.training) on a tiny net:
snapshots cut short by a kill or a full disk are never resumed from, every
resume is reported, and a full disk is named as such."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from liftedstruct import training
from liftedstruct.errors import OutputError
from liftedstruct.training import caffe_train, latest_solverstate, snapshot_problem

PARAMS = {"ip": [6 * 2, 2]}  # InnerProduct 6 -> 2: weights and bias
MAX_ITER, EVERY = 40, 10


def tiny_solver(folder: Path) -> Path:
    net = folder / "net.prototxt"
    net.write_text("""
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 dim: 2 }
    data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
""")
    solver = folder / "solver.prototxt"
    solver.write_text(f"""net: "{net}"
base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: {MAX_ITER} display: 5
snapshot: {EVERY} snapshot_prefix: "{folder / 'snap'}" random_seed: 1 solver_mode: CPU
""")
    return solver


def train(folder: Path, log: Path | None = None, resumes: list | None = None) -> Path:
    return caffe_train(tiny_solver(folder), folder / f"snap_iter_{MAX_ITER}.caffemodel",
                       MAX_ITER, log or folder / "train.log", "tiny", PARAMS, EVERY,
                       on_resume=None if resumes is None else resumes.append)


def cut(path: Path, keep: float = 0.5) -> None:
    """What a kill or a full disk leaves of a file being written."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.slow
def test_cut_snapshots_are_never_resumed_from(caffe, tmp_path, capsys):
    final = train(tmp_path)
    assert snapshot_problem(final, PARAMS) is None
    # Killed while the iteration-30 snapshot was written, after 40's were gone.
    for suffix in (".caffemodel", ".solverstate"):
        (tmp_path / f"snap_iter_40{suffix}").unlink()
    cut(tmp_path / "snap_iter_30.caffemodel")
    resumes: list[int] = []
    assert train(tmp_path, resumes=resumes) == final
    assert resumes == [20]
    out = capsys.readouterr().out
    assert "snapshot snap_iter_30.solverstate is incomplete" in out
    assert "resuming from snap_iter_20.solverstate" in out
    assert snapshot_problem(final, PARAMS) is None
    # The final model cut short (the disk filled while Caffe wrote it, and
    # Caffe exited 0): removed, and trained again from iteration 30.
    cut(final)
    assert snapshot_problem(final, PARAMS) is not None
    resumes.clear()
    assert train(tmp_path, resumes=resumes) == final
    assert resumes == [30] and snapshot_problem(final, PARAMS) is None
    assert f"snap_iter_{MAX_ITER}.caffemodel is incomplete" in capsys.readouterr().out
    # A solverstate cut short (its model complete): not resumed from either.
    for suffix in (".caffemodel", ".solverstate"):
        (tmp_path / f"snap_iter_40{suffix}").unlink()
    cut(tmp_path / "snap_iter_30.solverstate", 0.9)
    assert latest_solverstate(tmp_path, PARAMS) == (tmp_path / "snap_iter_20.solverstate",
                                                    20)
    assert not (tmp_path / "snap_iter_30.caffemodel").exists()


@pytest.mark.slow
def test_a_full_disk_is_named(caffe, tmp_path, monkeypatch):
    # The progress reader's log on a full disk (/dev/full answers every
    # write with ENOSPC): Caffe is stopped, the error names the disk.
    (tmp_path / "a").mkdir()
    with pytest.raises(OutputError, match="disk full: training tiny stopped, /dev/full "
                                          "cannot be written"):
        train(tmp_path / "a", log=Path("/dev/full"))
    for state in (tmp_path / "a").glob("*.solverstate"):  # whatever was written is whole
        assert training.solverstate_problem(
            state, int(state.stem.split("_")[-1]), PARAMS) is None
    # Too little room for the snapshots still to come: refused before Caffe runs.
    (tmp_path / "b").mkdir()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(OutputError, match=r"not enough disk space: training tiny "
                                          r"\(5 snapshot\(s\)\) needs about [\d.]+ [kMG]B "
                                          r"but .*b has 1.00 kB free"):
        train(tmp_path / "b")
    assert not list((tmp_path / "b").glob("snap_*"))


class FakeSolverState:
    """A SolverState whose data_fingerprint is the file's text (empty: unset)."""

    class DESCRIPTOR:  # noqa: N801 (protobuf's name)
        fields_by_name = {"data_fingerprint": None}

    def ParseFromString(self, data: bytes) -> None:  # noqa: N802
        self.data_fingerprint = int(data) if data else None

    def HasField(self, name: str) -> bool:  # noqa: N802
        return self.data_fingerprint is not None


class OldSolverState(FakeSolverState):
    class DESCRIPTOR:  # noqa: N801
        fields_by_name: dict = {}


def test_a_resume_on_a_changed_training_lmdb_is_refused(tmp_path, monkeypatch):
    """Without pycaffe: the check's logic on a stand-in SolverState."""
    from types import SimpleNamespace

    from liftedstruct import lmdbio, paths
    from liftedstruct.errors import PipelineError

    lmdb_path = tmp_path / "train_lmdb"
    lmdbio.write_lmdb(lmdb_path, iter([b"a", b"b"]), 2, "train", 1 << 20)
    state = tmp_path / "snap_iter_10.solverstate"
    pb2 = SimpleNamespace(SolverState=FakeSolverState)
    monkeypatch.setattr(paths, "caffe_pb2", lambda: pb2)
    state.write_text(str(lmdbio.fingerprint(lmdb_path)))
    training.check_data_fingerprint(state, lmdb_path)  # the same LMDB
    state.write_text("")  # a snapshot written before the field existed
    training.check_data_fingerprint(state, lmdb_path)
    state.write_text(str(lmdbio.fingerprint(lmdb_path) ^ 1))
    with pytest.raises(PipelineError, match=f"{state}.*{lmdb_path}.*the training LMDB "
                                            "changed since this snapshot was written"):
        training.check_data_fingerprint(state, lmdb_path)
    pb2.SolverState = OldSolverState  # a pycaffe without the field: no check
    training.check_data_fingerprint(state, lmdb_path)


@pytest.mark.metric_batch
def test_data_fingerprint_in_a_real_solverstate(caffe, tmp_path):
    from liftedstruct import lmdbio, paths
    from liftedstruct.errors import PipelineError

    lmdb_path = tmp_path / "train_lmdb"
    lmdbio.write_lmdb(lmdb_path, iter([b"a", b"b"]), 2, "train", 1 << 20)
    state = paths.caffe_pb2().SolverState()
    assert "data_fingerprint" in state.DESCRIPTOR.fields_by_name, "rebuild Caffe (0014)"
    state.iter = 10
    state.data_fingerprint = lmdbio.fingerprint(lmdb_path)
    path = tmp_path / "snap_iter_10.solverstate"
    path.write_bytes(state.SerializeToString())
    training.check_data_fingerprint(path, lmdb_path)
    lmdbio.write_lmdb(lmdb_path, iter([b"b", b"a"]), 2, "train", 1 << 20)
    with pytest.raises(PipelineError, match="the training LMDB changed"):
        training.check_data_fingerprint(path, lmdb_path)
