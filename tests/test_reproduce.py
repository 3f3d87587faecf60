"""tools/reproduce.py end to end: a shortened digits run and a CUB-fixture
run with a random GoogLeNet at reduced input size."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fixtures import make_cub
from liftedstruct.paths import REPO_ROOT
from liftedstruct.pipeline import Pipeline, PipelineError, RunConfig, training_losses

TOOLS = REPO_ROOT / "tools"
METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "map@r")


def check_results(out, names):
    results = json.loads((out / "results.json").read_text())
    assert set(results) == set(names)
    for scores in results.values():
        for key in METRIC_KEYS:
            if key in scores:
                assert 0.0 <= scores[key] <= 1.0, (key, scores[key])
    return results


def test_digits_run_end_to_end_and_resume(caffe, tmp_path):
    out = tmp_path / "digits"
    cmd = [sys.executable, str(TOOLS / "reproduce.py"), "--out", str(out),
           "--iterations", "40", "--max-pairs", "3000"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = check_results(out, ["lifted", "contrastive", "triplet", "raw"])
    assert results["raw"]["n"] == 896 and results["raw"]["classes"] == 5
    for name in ("lifted", "contrastive", "triplet", "raw"):
        assert (out / "features" / f"{name}.npz").exists()
        assert (out / "scores" / f"{name}.json").exists()
    for figure in ("recall_at_k.png", "tsne_lifted.png", "retrieval_lifted.png",
                   "report.md", "report.json"):
        assert (out / "report" / figure).stat().st_size > 0
    losses = [loss for _, loss in training_losses(out / "logs" / "train_lifted.log")]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    # Interrupted after the lifted net's 20th iteration: training resumes
    # from the latest solverstate and the later stages run again.
    state = json.loads((out / "state.json").read_text())
    state["done"] = ["prepare"]
    (out / "state.json").write_text(json.dumps(state))
    train = out / "train" / "lifted"
    for path in list(train.glob("snap_iter_30.*")) + list(train.glob("snap_iter_40.*")):
        path.unlink()
    (out / "features" / "lifted.npz").unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "lifted: resuming from snap_iter_20.solverstate" in again.stdout
    assert "contrastive: trained earlier" in again.stdout
    assert (train / "snap_iter_40.caffemodel").exists()
    check_results(out, ["lifted", "contrastive", "triplet", "raw"])

    # Other settings into the same folder: refused, nothing overwritten.
    other = subprocess.run(cmd[:-2] + ["--max-pairs", "2000"], capture_output=True,
                           text=True)
    assert other.returncode == 2 and "other settings" in other.stderr


def test_cub_fixture_random_googlenet_all_stages(caffe, bvlc_googlenet_deploy, tmp_path):
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 3, 4, 101, 102, 103), per_class=5)
    caffe.set_random_seed(0)
    weights = tmp_path / "random_googlenet.caffemodel"
    caffe.Net(str(bvlc_googlenet_deploy), caffe.TEST).save(str(weights))
    config = RunConfig(dataset="cub", out=tmp_path / "cub", root=raw, weights=weights,
                       iterations=2, image_size=72, crop=64, batch=12,
                       count_check=False, max_pairs=120)
    results = Pipeline(config).run()
    assert set(results) == {"lifted", "contrastive", "triplet", "pool5"}
    pool5 = np.load(tmp_path / "cub" / "features" / "pool5.npz")["features"]
    assert pool5.shape == (15, 1024)
    lifted = np.load(tmp_path / "cub" / "features" / "lifted.npz")["features"]
    assert lifted.shape == (15, 64)
    assert (tmp_path / "cub" / "report" / "recall_at_k.png").exists()


def test_real_dataset_without_data_or_weights_says_what_to_get(caffe, tmp_path):
    with pytest.raises(PipelineError, match="CUB_200_2011.tgz"):
        Pipeline(RunConfig(dataset="cub", out=tmp_path / "a")).run()
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 101), per_class=8)
    config = RunConfig(dataset="cub", out=tmp_path / "b", root=raw,
                       weights=tmp_path / "missing.caffemodel", image_size=72, crop=64,
                       batch=12, count_check=False, methods=("lifted",), max_pairs=60)
    with pytest.raises(PipelineError, match="fetch_weights.py"):
        Pipeline(config).run()


def test_unknown_method_or_size_is_refused(tmp_path):
    result = subprocess.run([sys.executable, str(TOOLS / "reproduce.py"), "--out",
                             str(tmp_path / "x"), "--methods", "lifted,npair"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown npair" in result.stderr
    with pytest.raises(PipelineError, match="--embedding 100"):
        RunConfig(dataset="cub", embedding=100)
    assert not (tmp_path / "x").exists()
