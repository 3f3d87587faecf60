"""The portable GPU kit packaged from the CPU build (the CUDA build it is made
from for GPUs is packaged the same way): what the archive holds, the nets it
trains, the check `gpu-kit/run.sh --cpu` end to end, and its CUDA library
search."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import lmdb
import numpy as np
import pytest

from liftedstruct import metrics
from liftedstruct.caffebuild import kit as kit_module
from liftedstruct.files import safe_extract_tar
from liftedstruct.paths import REPO_ROOT, caffe_root

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kit-archive")
    return kit_module.make_kit(out, caffe_root(), "gz", None, ["90"])


@pytest.fixture(scope="module")
def kit(archive, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("kit-unpacked")
    safe_extract_tar(archive, dest)
    return dest / "gpu-kit"


def run_check(kit: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(kit / "run.sh"), *args], capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=900)


def test_archive_holds_the_kit(archive):
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for name in ("run.sh", "steps.sh", "env.sh", "peers.py", "kit.env", "manifest.json",
                 "nets/gpu/train_val.prototxt", "nets/gpu/solver.prototxt",
                 "nets/gpu/time.prototxt", "nets/cpu/solver.prototxt",
                 "nets/data_layer.prototxt", "fixture/train_lmdb/data.mdb",
                 "fixture/test_lmdb/data.mdb", "fixture/test_batches",
                 f"wheels/{kit_module.PML_WHEEL}", "share/caffe/src/caffe/test/test_data"):
        assert f"gpu-kit/{name}" in names, name
    for program in kit_module.PROGRAMS:
        assert f"gpu-kit/bin/{program}" in names, program
    assert any(re.match(r"gpu-kit/lib/libcaffe\.so", n) for n in names)


def test_every_library_comes_from_the_kit_or_the_system(kit):
    """With no LD_LIBRARY_PATH, each program resolves every library it needs
    inside the kit, except glibc and the GCC runtime (the CPU build needs no
    CUDA libraries)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    for program in kit_module.PROGRAMS:
        out = subprocess.run(["ldd", str(kit / "bin" / program)], capture_output=True,
                             text=True, env=env, check=True).stdout
        for line in out.splitlines():
            match = re.match(r"\s*(\S+) => (\S+)", line)
            if not match:
                continue
            name, path = match.groups()
            assert path != "not", f"{program}: {name} not found"
            if kit_module.SYSTEM_LIBRARIES.match(name):
                continue
            assert Path(path).resolve().parent == (kit / "lib").resolve(), (program, name)
    manifest = json.loads((kit / "manifest.json").read_text())
    listed = {name for name in manifest["files"]}
    assert "bin/caffe" in listed and "run.sh" in listed


def test_kit_nets_are_the_committed_ones(kit):
    """The GPU check trains the committed SOP net and solver, changed only in
    the LMDB paths, the iterations, the snapshots and the net's path."""
    def lines(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if not line.startswith("#")]

    committed = lines(REPO_ROOT / "prototxt" / "sop" / "train_val.prototxt")
    derived = lines(kit / "nets" / "gpu" / "train_val.prototxt")
    changed = [(a, b) for a, b in zip(committed, derived, strict=True) if a != b]
    assert [b.strip() for _, b in changed] == ['source: "fixture/train_lmdb"',
                                               'source: "fixture/test_lmdb"']
    committed = lines(REPO_ROOT / "prototxt" / "solver_sop.prototxt")
    derived = lines(kit / "nets" / "gpu" / "solver.prototxt")
    changed = {b.split(":")[0] for a, b in zip(committed, derived, strict=True) if a != b}
    assert changed == {"net", "max_iter", "snapshot", "snapshot_prefix"}


@pytest.fixture(scope="module")
def cpu_check(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("check")
    # A caller that quiets Caffe (as pycaffe users do) must not blind the
    # steps that read Caffe's log.
    result = run_check(kit, "--cpu", str(out), env={**os.environ, "GLOG_minloglevel": "2"})
    return result, out


def failed_steps(out: Path) -> str:
    """Each failed step's reason and the end of its log, for the assertion."""
    report = json.loads((out / "gpu_check.json").read_text())
    text = []
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for step in report["steps"]:
            if step["status"] != "failed":
                continue
            text.append(f"== {step['name']}: {step.get('reason', '')}")
            member = logs.get(f"{step['name']}.log")
            if member is not None:
                lines = tar.extractfile(member).read().decode(errors="replace").splitlines()
                text.extend(lines[-40:])
    return "\n".join(text)


@pytest.mark.metric_batch
def test_cpu_check_passes(cpu_check):
    result, out = cpu_check
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:] + (
        failed_steps(out) if (out / "logs.tar.gz").is_file() else "")
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] is True and report["mode"] == "cpu"
    steps = {step["name"]: step for step in report["steps"]}
    for name in ("lifted_gpu_equals_cpu", "train_all_gpus", "speed_caffe", "speed_torch"):
        assert steps[name]["status"] == "skipped", name
    for name in ("environment", "gtest", "train", "features", "layer_speed", "data_layer"):
        assert steps[name]["status"] == "passed", name
    assert steps["gtest"]["tests_passed"] > 10
    train = steps["train"]
    assert train["loss_last"] < train["loss_first"]
    assert train["snapshot_bytes"] > 1_000_000
    recall = steps["features"]["features"]["recall_at"]
    assert steps["features"]["features"]["n"] == 512 and 0 <= recall["1"] <= 100
    assert {(row["m"], row["c"]) for row in steps["layer_speed"]["caffe"]} == {(128, 64),
                                                                              (128, 512)}
    rates = steps["data_layer"]["images_per_s_by_threads"]
    assert set(rates) == {"1", str(os.cpu_count())} and min(rates.values()) > 0
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "logs.tar.gz",
                                                     "summary.txt"]


def test_check_refuses_bad_arguments(kit, tmp_path):
    assert run_check(kit).returncode == 2
    assert run_check(kit, "--fast", str(tmp_path)).returncode == 2
    gpu_run = run_check(kit, str(tmp_path / "out"))  # a CPU build has no GPU mode
    assert gpu_run.returncode == 2 and "--cpu" in gpu_run.stderr


def test_check_records_skipped_and_failed_steps(kit, tmp_path):
    """A time limit too short for any step is refused before anything runs
    (a check that ran nothing never passes); a step that fails (features
    without a trained snapshot) is recorded with its reason, the report is
    complete, and run.sh exits 1."""
    result = run_check(kit, "--cpu", str(tmp_path / "a"),
                       env=dict(os.environ, KIT_TIME_LIMIT="5"))
    assert result.returncode == 2 and "KIT_TIME_LIMIT=5" in result.stderr
    assert not (tmp_path / "a").exists()
    result = run_check(kit, "--cpu", str(tmp_path / "b"),
                       env=dict(os.environ, KIT_STEPS="environment features"))
    report = json.loads((tmp_path / "b" / "gpu_check.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert result.returncode == 1 and report["passed"] is False
    assert steps["environment"]["status"] == "passed"
    assert steps["features"]["status"] == "failed"
    assert "no trained snapshot" in steps["features"]["reason"]
    assert steps["train"]["status"] == "skipped"


def test_train_without_losses_is_a_failure_in_valid_json(kit, tmp_path):
    """A training run whose log shows no loss (the solver displays none) is
    a failed step with its reason, and the report stays valid JSON."""
    copy = tmp_path / "gpu-kit"
    copy.mkdir()
    for entry in kit.iterdir():
        if entry.name != "nets":
            (copy / entry.name).symlink_to(entry)
    shutil.copytree(kit / "nets", copy / "nets")
    solver = copy / "nets" / "cpu" / "solver.prototxt"
    text = re.sub(r"(?m)^display: .*$", "display: 0", solver.read_text())
    solver.write_text(re.sub(r"(?m)^(max_iter|snapshot): .*$", r"\1: 2", text))
    result = run_check(copy, "--cpu", str(tmp_path / "out"),
                       env=dict(os.environ, KIT_STEPS="train"))
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    train = {step["name"]: step for step in report["steps"]}["train"]
    assert result.returncode == 1 and train["status"] == "failed"
    assert train["losses"] == [] and "fewer than 3 losses" in train["reason"]


def write_features(path: Path, rows: np.ndarray) -> None:
    """Datums of float_data in extract_features' key format."""
    from liftedstruct.paths import caffe_pb2

    pb2 = caffe_pb2()
    with lmdb.open(str(path), map_size=1 << 26) as env, env.begin(write=True) as txn:
        for index, row in enumerate(rows):
            datum = pb2.Datum(channels=len(row), height=1, width=1)
            datum.float_data.extend(float(v) for v in row)
            txn.put(f"{index:010d}".encode(), datum.SerializeToString())


def test_compare_features_agrees_with_the_scorer(kit, tmp_path):
    """The kit's C++ Recall@K equals liftedstruct.metrics on the same
    features, and its device comparison catches a difference."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(40), 4)
    features = rng.normal(size=(160, 16)) + labels[:, None] * 0.15
    write_features(tmp_path / "a", features)
    write_features(tmp_path / "labels", labels[:, None].astype(float))
    nudged = features.copy()
    nudged[7, 3] += 0.05 * np.abs(features).max()
    write_features(tmp_path / "b", nudged)
    tool = str(kit / "bin" / "compare_features")
    same = subprocess.run([tool, "-features", str(tmp_path / "a"), "-other", str(tmp_path / "a"),
                           "-labels", str(tmp_path / "labels")],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    result = json.loads(same.stdout)
    expected = metrics.recall_at_k(metrics.nearest_neighbors(features, 8), labels,
                                   (1, 2, 4, 8))
    for k, value in expected.items():
        assert result["recall_at"][str(k)] == pytest.approx(100 * value)
    assert result["other"]["max_abs_diff"] == 0
    differ = subprocess.run([tool, "-features", str(tmp_path / "a"), "-other",
                             str(tmp_path / "b"), "-labels", str(tmp_path / "labels")],
                            capture_output=True, text=True)
    assert differ.returncode == 3
    assert json.loads(differ.stdout)["other"]["relative"] == pytest.approx(0.05, rel=1e-6)


def test_env_finds_cuda_libraries_in_python_wheels(kit, tmp_path):
    """Libraries in a site-packages' nvidia/*/lib (where PyTorch's CUDA wheels
    put them) are found and put on LD_LIBRARY_PATH; what is missing is named."""
    site = tmp_path / "site-packages"
    for folder, name in (("cu13", "libkit_test_a.so.13"), ("cudnn", "libkit_test_b.so.9")):
        (site / "nvidia" / folder / "lib").mkdir(parents=True)
        (site / "nvidia" / folder / "lib" / name).write_bytes(b"")
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\necho {site}\n")
    python.chmod(0o755)
    script = (f"KIT={kit}; KIT_QUIET=1; . {kit}/env.sh; "
              'KIT_CUDA_LIBS="libkit_test_a.so.13 libkit_test_b.so.9 libkit_test_c.so.2"; '
              'kit_cuda_env; echo "rc=$? missing=$KIT_MISSING"; '
              'echo "path=$LD_LIBRARY_PATH"')
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env=env).stdout
    assert "rc=1 missing=libkit_test_c.so.2" in out
    path = out.split("path=")[1].strip().split(":")
    assert path[:2] == [str(site / "nvidia" / "cu13" / "lib"),
                        str(site / "nvidia" / "cudnn" / "lib")]
