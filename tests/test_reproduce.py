"""tools/reproduce.py end to end: a shortened digits run (resume, refusal of
other settings), a CUB-fixture run with a random GoogLeNet at reduced input
size, and starts that must fail without leaving anything behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures import make_cub
from liftedstruct.constants import DEMO_EMBEDDINGS, EMBEDDINGS, HEADLINE_EMBEDDING, METHODS
from liftedstruct.errors import PipelineError, WeightsError
from liftedstruct.features import stored_key
from liftedstruct.files import file_digest
from liftedstruct.lmdbio import read_labels
from liftedstruct.paths import REPO_ROOT, caffe_cpu_only
from liftedstruct.pipeline import DEMO_MAX_PAIRS, Cell, Pipeline, RunConfig, sweep_sizes
from liftedstruct.training import training_losses

TOOLS = REPO_ROOT / "tools"
RECALL = {"digits": ("recall@1", "recall@2", "recall@4", "recall@8"),
          "cub": ("recall@1", "recall@2", "recall@4", "recall@8")}
OTHER = ("nmi", "f1", "map@r", "r_precision")


def check_results(out, names, dataset):
    """Every method's scores hold every metric, each in [0, 1]."""
    results = json.loads((out / "results.json").read_text())
    assert set(results) == set(names)
    for name, scores in results.items():
        for key in RECALL[dataset] + OTHER:
            assert key in scores, (name, key)
            assert 0.0 <= scores[key] <= 1.0, (name, key, scores[key])
        assert scores["clustering"] == "kmeans-faiss"
    return results


def cut_short(path):
    """What a kill or a full disk leaves of a file Caffe was writing."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def reproduce(*args, timeout=900):
    return subprocess.run([sys.executable, str(TOOLS / "reproduce.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.metric_batch
@pytest.mark.slow
def test_digits_run_end_to_end_and_resume(caffe, tmp_path):
    out = tmp_path / "digits"
    args = ["--dataset", "digits", "--out", out, "--iterations", "40", "--max-pairs", "3000"]
    result = reproduce(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    results = check_results(out, ["lifted", "contrastive", "triplet", "raw"], "digits")
    assert results["raw"]["n"] == 896 and results["raw"]["classes"] == 5
    for name in ("lifted", "contrastive", "triplet", "raw"):
        assert (out / "features" / f"{name}.npz").exists()
        assert (out / "scores" / f"{name}.json").exists()
    for figure in ("recall_at_k.png", "tsne_lifted.png", "retrieval_lifted.png",
                   "retrieval_raw.png", "report.md", "report.json"):
        assert (out / "report" / figure).stat().st_size > 0
    losses = [loss for _, loss in training_losses((out / "logs" / "train_lifted.log").read_text())]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    # Interrupted twice: after the lifted net's iteration-20 snapshot, while
    # its iteration-30 one was written, and while the contrastive net's final
    # model was written (the disk full: it looks finished but is cut short).
    # Training resumes from the latest complete solverstate, each resume is
    # recorded with the scores and in the report, and the embeddings are
    # extracted again from the new snapshots.
    state = json.loads((out / "state.json").read_text())
    state["done"] = ["prepare"]
    (out / "state.json").write_text(json.dumps(state))
    train = out / "train" / "lifted"
    uninterrupted = {method: (out / "train" / method / "snap_iter_40.caffemodel").read_bytes()
                     for method in ("lifted", "contrastive")}
    for path in train.glob("snap_iter_40.*"):
        path.unlink()
    cut_short(train / "snap_iter_30.solverstate")
    cut_short(out / "train" / "contrastive" / "snap_iter_40.caffemodel")
    again = reproduce(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "lifted: snapshot snap_iter_30.solverstate is incomplete" in again.stdout
    assert "lifted: resuming from snap_iter_20.solverstate" in again.stdout
    assert "contrastive: snap_iter_40.caffemodel is incomplete" in again.stdout
    assert "contrastive: resuming from snap_iter_30.solverstate" in again.stdout
    assert "triplet: trained earlier" in again.stdout
    # Resumed training is the uninterrupted run: the same final weights.
    for method, weights in uninterrupted.items():
        assert (out / "train" / method / "snap_iter_40.caffemodel").read_bytes() == weights
    results = check_results(out, ["lifted", "contrastive", "triplet", "raw"], "digits")
    assert results["lifted"]["resumes"] == [{"stage": "train", "iteration": 20}]
    assert results["contrastive"]["resumes"] == [{"stage": "train", "iteration": 30}]
    assert results["triplet"]["resumes"] == [] and results["raw"]["resumes"] == []
    assert ("Resumed after an interruption: lifted (train from iteration 20); contrastive "
            "(train from iteration 30)") in (out / "report" / "report.md").read_text()
    for method in ("lifted", "contrastive", "triplet"):
        key = stored_key(out / "features" / f"{method}.npz")
        snapshot = out / "train" / method / "snap_iter_40.caffemodel"
        assert key["weights"] == file_digest(snapshot), method

    # The scores deleted, and the triplet net's final snapshot: the rerun
    # trains what is missing and runs every later stage again.
    (out / "results.json").unlink()
    for path in (out / "train" / "triplet").glob("snap_iter_40.*"):
        path.unlink()
    third = reproduce(*args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "triplet: resuming from snap_iter_30.solverstate" in third.stdout
    assert "[extract] done earlier, skipped" not in third.stdout
    results = check_results(out, ["lifted", "contrastive", "triplet", "raw"], "digits")
    assert results["triplet"]["resumes"] == [{"stage": "train", "iteration": 30}]
    assert stored_key(out / "features" / "triplet.npz")["weights"] == file_digest(
        out / "train" / "triplet" / "snap_iter_40.caffemodel")
    fourth = reproduce(*args)  # nothing left to do
    assert fourth.returncode == 0 and "trained earlier" in fourth.stdout
    for stage in ("prepare", "extract", "score", "report"):
        assert f"[{stage}] done earlier, skipped" in fourth.stdout, fourth.stdout

    # Other settings into the same folder: refused, nothing overwritten.
    other = reproduce(*args[:-2], "--max-pairs", "2000")
    assert other.returncode == 2 and "other settings" in other.stderr
    assert "max_pairs 3000 there, 2000 now" in other.stderr, other.stderr


@pytest.mark.metric_batch
@pytest.mark.slow
def test_cub_fixture_random_googlenet_all_stages(caffe, bvlc_googlenet_deploy, tmp_path):
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 3, 4, 101, 102, 103), per_class=5)
    caffe.set_random_seed(0)
    weights = tmp_path / "random_googlenet.caffemodel"
    caffe.Net(str(bvlc_googlenet_deploy), caffe.TEST).save(str(weights))
    config = RunConfig(dataset="cub", out=tmp_path / "cub", root=raw, weights=weights,
                       iterations=2, image_size=72, crop=64, batch=12,
                       count_check=False, max_pairs=120)
    Pipeline(config).run()
    check_results(tmp_path / "cub", ["lifted", "contrastive", "triplet", "pool5"], "cub")
    pool5 = np.load(tmp_path / "cub" / "features" / "pool5.npz")["features"]
    assert pool5.shape == (15, 1024)
    lifted = np.load(tmp_path / "cub" / "features" / "lifted.npz")["features"]
    assert lifted.shape == (15, HEADLINE_EMBEDDING["cub"])
    assert (tmp_path / "cub" / "report" / "recall_at_k.png").exists()
    # The same folder with other weights (same path, new content): refused.
    caffe.set_random_seed(1)
    caffe.Net(str(bvlc_googlenet_deploy), caffe.TEST).save(str(weights))
    with pytest.raises(PipelineError, match="other settings or weights \\(weights_sha256 "):
        Pipeline(config).run()


def test_failed_starts_leave_nothing_behind(caffe, tmp_path):
    """Missing data, missing or unfitting weights, bad numbers: refused before
    any file is written, so the corrected rerun is not taken for another run."""
    out = tmp_path / "run"
    result = reproduce("--dataset", "cub", "--out", out)
    assert result.returncode == 2 and "CUB_200_2011.tgz" in result.stderr
    assert not out.exists()
    raw = make_cub(tmp_path / "raw", classes=(1, 2, 101), per_class=8)
    common = ["--dataset", "cub", "--out", out, "--root", raw, "--image-size", "72",
              "--crop", "64", "--batch", "12", "--no-count-check", "--methods", "lifted",
              "--max-pairs", "60"]
    missing = reproduce(*common, "--weights", tmp_path / "missing.caffemodel")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unrelated = tmp_path / "unrelated.caffemodel"
    net = tmp_path / "other.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape '
                   '{ dim: 1 dim: 3 } } }\nlayer { name: "ip" type: "InnerProduct" '
                   'bottom: "data" top: "ip" inner_product_param { num_output: 2 } }\n')
    caffe.Net(str(net), caffe.TEST).save(str(unrelated))
    wrong = reproduce(*common, "--weights", unrelated)
    assert wrong.returncode == 2 and "no weights for 57 of the 57" in wrong.stderr
    assert "conv1/7x7_s2" in wrong.stderr
    # A GPU the build cannot use, an --out that cannot be written: refused
    # before the data is prepared.
    assert caffe_cpu_only() is not None
    gpu, why = ("0", "is a CPU-only build of Caffe") if caffe_cpu_only() else (
        "99", "Caffe cannot use this GPU")
    refused = reproduce(*common, "--gpu", gpu)
    assert refused.returncode == 2 and why in refused.stderr, refused.stderr[-2000:]
    (tmp_path / "a_file").write_text("taken")
    for where, message in ((tmp_path / "a_file", "a file is there"),
                           (tmp_path / "a_file" / "run", "a_file is a file")):
        refused = reproduce(*[where if arg == out else arg for arg in common])
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    for bad, message in ((["--iterations", "0"], "--iterations 0: must be at least 1"),
                         (["--iterations", "-5"], "--iterations -5: must be at least 1"),
                         (["--batch", "8"], "--batch 8: must divide by 2")):
        refused = reproduce(*common, *bad)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert not out.exists()
    with pytest.raises(PipelineError, match="fetch_weights.py"):
        Pipeline(RunConfig(dataset="cub", out=out, root=raw,
                           weights=None, image_size=72, crop=64, batch=12,
                           count_check=False, methods=("lifted",), max_pairs=60))
    with pytest.raises(WeightsError):
        Pipeline(RunConfig(dataset="cub", out=out, root=raw, weights=unrelated))
    assert not out.exists()


def test_unknown_method_or_size_is_refused(tmp_path):
    result = reproduce("--out", tmp_path / "x", "--methods", "lifted,npair")
    assert result.returncode == 2 and "unknown npair" in result.stderr
    with pytest.raises(PipelineError, match="--embedding 100: the nets for cub have 64"):
        RunConfig(dataset="cub", embeddings=(64, 100))
    for bad, message in (({"embeddings": (16, 32, 16)}, "--embedding: 16 given twice"),
                         ({"seeds": (0, 1, 1, 0)}, "--seeds: 0 1 given twice"),
                         ({"seeds": (0, -1)}, "--seeds -1: a seed is at least 0"),
                         ({"seeds": ()}, "--seeds: none given"),
                         ({"embeddings": (0,)}, "--embedding 0: must be at least 1")):
        with pytest.raises(PipelineError, match=message):
            RunConfig(**bad)
    result = reproduce("--out", tmp_path / "x", "--embedding", "all", "16")
    assert result.returncode == 2 and "'all' or sizes, not both" in result.stderr
    assert not (tmp_path / "x").exists()


def test_sizes_and_seeds_make_the_cells_of_a_sweep():
    one = RunConfig()
    assert not one.sweep and one.out == Path("runs/glyphs")
    assert one.cells() == [Cell(64, 0, "")] and one.cells()[0].name("lifted") == "lifted"
    # The main job's identity: its sizes and seeds written as they are in the
    # state.json of every run folder of one size and one seed.
    assert one.settings() == {
        "dataset": "glyphs", "root": "None", "embedding": "64",
        "methods": "('lifted', 'contrastive', 'triplet')", "weights": "None",
        "iterations": "None", "seed": "0", "max_pairs": str(DEMO_MAX_PAIRS),
        "cluster": "kmeans", "kmeans": "faiss", "image_size": "None", "crop": "None",
        "batch": "None", "count_check": "True"}
    sweep = RunConfig(embeddings=(128, 16, 64, 32), seeds=(2, 0, 1))
    assert sweep.sweep and sweep.out == Path("runs/glyphs_sweep")
    assert sweep.embeddings == DEMO_EMBEDDINGS == sweep_sizes("glyphs")
    assert sweep.settings()["embedding"] == "16 32 64 128"
    assert sweep.settings()["seed"] == "0 1 2"
    cells = sweep.cells()
    assert len(cells) == 12 and cells[0] == Cell(16, 0, "e16_s0")
    assert cells[4] == Cell(16, 1, "e16_s1") and cells[-1] == Cell(128, 2, "e128_s2")
    assert cells[5].name("triplet") == "e32_s1/triplet"
    assert RunConfig(seeds=(3, 4)).cells() == [Cell(64, 3, "e64_s3"), Cell(64, 4, "e64_s4")]
    paper = RunConfig(dataset="sop", embeddings=sweep_sizes("sop"), seeds=(0,))
    assert paper.embeddings == EMBEDDINGS and paper.out == Path("runs/sop_sweep")
    assert not RunConfig(dataset="cub").sweep and RunConfig(dataset="cub").embeddings == (512,)


def prototxt_field(path: Path, field: str) -> list[str]:
    return [line.split(":", 1)[1].strip().strip('"') for line in path.read_text().splitlines()
            if line.strip().startswith(f"{field}:")]


@pytest.mark.metric_batch
@pytest.mark.slow
def test_digits_sweep_every_method_at_every_size_and_seed(caffe, tmp_path):
    out = tmp_path / "sweep"
    common = ["--dataset", "digits", "--iterations", "40", "--max-pairs", "3000"]
    args = [*common, "--out", out, "--embedding", "16", "8", "--seeds", "0", "1"]
    result = reproduce(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = [(size, seed) for seed in (0, 1) for size in (8, 16)]
    names = [f"e{size}_s{seed}/{m}" for size, seed in cells for m in METHODS]
    results = check_results(out, [*names, "raw"], "digits")
    for size, seed in cells:
        for method in METHODS:
            name = f"e{size}_s{seed}/{method}"
            assert (results[name]["method"], results[name]["embedding"],
                    results[name]["seed"]) == (method, size, seed)
            features = np.load(out / "features" / f"{name}.npz")["features"]
            assert features.shape == (896, size), name
            assert (out / "scores" / f"{name}.json").is_file()
            assert (out / "logs" / f"train_e{size}_s{seed}_{method}.log").is_file()
            # A seed's batches and solver, the same at every size: one
            # train_lmdb, the batches from the solver's random_seed.
            folder = out / "train" / f"e{size}_s{seed}" / method
            assert prototxt_field(folder / "train_val.prototxt", "source")[0] == str(
                out / "data" / "train_lmdb")
            assert prototxt_field(folder / "train_val.prototxt", "max_tuples") == ["3000"]
            assert prototxt_field(folder / "solver.prototxt", "random_seed") == [str(seed)]
            assert prototxt_field(folder / "solver.prototxt", "max_iter") == ["40"]
            assert prototxt_field(folder / "train_val.prototxt", "num_output")[-1] == str(size)
    # Every seed reads the one prepared data/, each image once; the baseline
    # is extracted and scored once.
    assert not list((out / "data").glob("s[0-9]*")) and not list(
        (out / "data").glob("train_*_lmdb"))
    assert len(read_labels(out / "data" / "train_lmdb")) == len(
        (out / "data" / "train_index.tsv").read_text().splitlines()) - 1
    assert [p.name for p in (out / "features").glob("**/raw.npz")] == ["raw.npz"]
    assert results["raw"]["embedding"] is None and results["raw"]["seed"] == 0
    report = (out / "report" / "report.md").read_text()
    assert (out / "report" / "sweep.png").stat().st_size > 0
    assert "| lifted | 8 |" in report and "| triplet | 16 |" in report
    assert "| raw pixels (untrained) | – |" in report
    assert "lifted leads beyond the spread over 2 seed(s)" in report

    # A cell of the sweep is the run of that size and seed alone: the same
    # batches, solver and numbers.
    single = tmp_path / "single"
    alone = reproduce(*common, "--out", single, "--embedding", "16", "--seed", "1")
    assert alone.returncode == 0, alone.stderr[-3000:]
    ones = json.loads((single / "results.json").read_text())
    for method in METHODS:
        assert np.array_equal(np.load(single / "features" / f"{method}.npz")["features"],
                              np.load(out / "features" / "e16_s1" / f"{method}.npz")[
                                  "features"]), method
        for key in RECALL["digits"] + OTHER:
            assert ones[method][key] == results[f"e16_s1/{method}"][key], (method, key)

    # One cell's net cut short: it alone trains again, and the resume is named.
    cut_short(out / "train" / "e16_s1" / "contrastive" / "snap_iter_40.caffemodel")
    again = reproduce(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "e16_s1/contrastive: snap_iter_40.caffemodel is incomplete" in again.stdout
    assert "e16_s1/contrastive: resuming from snap_iter_30.solverstate" in again.stdout
    assert again.stdout.count("trained earlier") == len(names) - 1
    results = check_results(out, [*names, "raw"], "digits")
    assert results["e16_s1/contrastive"]["resumes"] == [{"stage": "train", "iteration": 30}]
    assert ("Resumed after an interruption: e16_s1/contrastive (train from iteration 30)"
            in (out / "report" / "report.md").read_text())

    # Other sizes or seeds into the same folder: refused, naming what differs.
    other = reproduce(*args[:-3], "--seeds", "0", "1", "2")
    assert other.returncode == 2 and "seed 0 1 there, 0 1 2 now" in other.stderr
    assert "embedding" not in other.stderr.split("settings or weights")[1]


def test_training_lmdb_must_match_its_index(caffe, tmp_path):
    """Before training: train_lmdb against train_index.tsv, both named."""
    from types import SimpleNamespace

    from liftedstruct.lmdbio import make_datum, write_lmdb

    data = tmp_path / "data"
    data.mkdir()
    labels = [0, 0, 1, 1, 2, 2]
    write_lmdb(data / "train_lmdb", (make_datum(b"x", y, 4, True) for y in labels),
               len(labels), "train_lmdb", 1 << 22)
    run = SimpleNamespace(data_dir=lambda: data)

    def index(rows: list[int]) -> None:
        (data / "train_index.tsv").write_text("key\tlabel\tpath\n" + "".join(
            f"{i:09d}\t{y}\timage{i}.jpg\n" for i, y in enumerate(rows)))

    index(labels)
    Pipeline.check_training_data(run)
    index(labels[:-1])
    with pytest.raises(PipelineError, match="train_lmdb holds 6 records but .*"
                                            "train_index.tsv lists 5"):
        Pipeline.check_training_data(run)
    index([0, 0, 1, 2, 2, 2])
    with pytest.raises(PipelineError, match="train_lmdb record 000000003 has label 1 but "
                                            ".*train_index.tsv lists 2"):
        Pipeline.check_training_data(run)
