"""Recall@K, NMI, F1, MAP@R against hand-computed cases and brute force."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from liftedstruct import metrics
from liftedstruct.errors import ScoringError
from liftedstruct.featurefile import standardize
from liftedstruct.paths import REPO_ROOT

TOOLS = REPO_ROOT / "tools"


def test_recall_hand_computed():
    # 1-D points: 0, 1 (class 0); 3 (class 1); 10, 12 (class 2)
    x = np.array([[0.0], [1.0], [3.0], [10.0], [12.0]])
    y = np.array([0, 0, 1, 2, 2])
    nn = metrics.nearest_neighbors(x, 4)
    np.testing.assert_array_equal(nn[:, 0], [1, 0, 1, 4, 3])
    recall = metrics.recall_at_k(nn, y, [1, 2, 4])
    # item 2 (class 1) has no other member of its class: never a hit.
    assert recall == {1: 0.8, 2: 0.8, 4: 0.8}


def brute_force_neighbors(x, k, rows=None):
    """The documented order by brute force in float64: exact duplicates of
    the query first, then (distance, index)."""
    x = np.asarray(x)
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    out = []
    for i in range(len(x)) if rows is None else rows:
        same = [j for j in range(len(x)) if j != i and (x[j] == x[i]).all()]
        rest = sorted((j for j in range(len(x)) if (x[j] != x[i]).any()),
                      key=lambda j: (d[i, j], j))
        out.append((same + rest)[:k])
    return np.array(out)


@pytest.mark.parametrize("block", [metrics.SEARCH_BLOCK, 7])
def test_knn_ties_go_to_the_lower_index(monkeypatch, block):
    monkeypatch.setattr(metrics, "SEARCH_BLOCK", block)  # 7: many search blocks
    rng = np.random.default_rng(0)
    for n, dim in ((57, 2), (200, 3), (9, 1)):
        x = rng.integers(0, 3, size=(n, dim)).astype(np.float32)  # ties, duplicates
        x[::7] += rng.normal(size=(len(x[::7]), dim)).astype(np.float32)  # and neither
        for k in (1, 5, n - 1):
            np.testing.assert_array_equal(metrics.nearest_neighbors(x, k),
                                          brute_force_neighbors(x, k))
            rows = rng.integers(0, n, size=6)  # a row may be asked twice
            np.testing.assert_array_equal(metrics.nearest_neighbors(x, k, rows),
                                          brute_force_neighbors(x, k, rows))


def test_knn_exact_duplicates_in_many_dimensions():
    """Copies of a row lie at one distance from every query and come first,
    in index order, for the copies themselves, although float32's matrix
    product gives copies of a 512-d row slightly different distances."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 512)).astype(np.float32)
    x[[100, 150, 399]] = x[5]
    x[[20, 300]] = x[7]
    nn = metrics.nearest_neighbors(x, 10)
    np.testing.assert_array_equal(nn[5, :3], [100, 150, 399])
    np.testing.assert_array_equal(nn[150, :3], [5, 100, 399])
    np.testing.assert_array_equal(nn[300, :2], [7, 20])
    np.testing.assert_array_equal(nn, brute_force_neighbors(x, 10))
    # -0.0 and 0.0 are one value: rows that differ only there are copies.
    signed = np.array([[-0.0, 1.0], [5.0, 5.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(metrics.nearest_neighbors(signed, 2), [[2, 1], [0, 2],
                                                                          [0, 1]])


def test_knn_refuses_k_outside_1_to_n_minus_1():
    x = np.zeros((4, 2), dtype=np.float32)
    for k in (0, 4):
        with pytest.raises(ScoringError, match=f"K = {k}: must be between 1 and N - 1 = 3"):
            metrics.nearest_neighbors(x, k)


def test_pairwise_f1_equals_pair_enumeration():
    rng = np.random.default_rng(1)
    clusters = rng.integers(0, 6, size=80)
    labels = rng.integers(0, 5, size=80)
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(80), 2):
        same_cluster, same_class = clusters[i] == clusters[j], labels[i] == labels[j]
        tp += same_cluster and same_class
        fp += same_cluster and not same_class
        fn += same_class and not same_cluster
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    result = metrics.pairwise_f1(clusters, labels)
    assert result["precision"] == pytest.approx(precision)
    assert result["recall"] == pytest.approx(recall)
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_nmi_hand_computed():
    clusters = np.array([0, 0, 1, 1])
    labels = np.array([0, 0, 0, 1])
    # I = H(labels) - H(labels | clusters); entropies in nats.
    h_labels = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    h_clusters = np.log(2)
    h_cond = 0.5 * np.log(2)  # cluster 1 holds one of each class
    expected = (h_labels - h_cond) / ((h_labels + h_clusters) / 2)
    assert metrics.nmi(clusters, labels) == pytest.approx(expected)
    assert metrics.nmi(labels, labels) == pytest.approx(1.0)


def test_map_at_r_hand_computed():
    # Query 0 (class 0, R = 2): neighbours 1 (hit), 3 (miss): AP = (1/1)/2.
    x = np.array([[0.0], [1.0], [2.5], [1.2], [9.0]])
    y = np.array([0, 0, 0, 1, 1])
    map_r, r_prec = metrics.map_at_r(x, y)
    nn = brute_force_neighbors(x, 4)
    per_query = []
    per_r = []
    for i in range(5):
        r = (y == y[i]).sum() - 1
        hits = y[nn[i, :r]] == y[i]
        precisions = np.cumsum(hits) / np.arange(1, r + 1)
        per_query.append((precisions * hits).sum() / r)
        per_r.append(hits.mean())
    assert per_query[0] == pytest.approx(0.5)
    assert map_r == pytest.approx(np.mean(per_query))
    assert r_prec == pytest.approx(np.mean(per_r))


def test_affinity_propagation_reaches_the_class_count():
    centres = [[0, 0], [10, 0], [0, 10], [10, 10], [20, 0], [20, 10]]
    x, y = make_blobs(n_samples=150, centers=centres, cluster_std=1.0, random_state=3)
    clusters = metrics.affinity_propagation_clusters(x, 6)
    assert len(np.unique(clusters)) == 6
    assert metrics.nmi(clusters, y) > 0.95


def test_affinity_propagation_refuses_when_too_large():
    with pytest.raises(ScoringError, match="kmeans"):
        metrics.affinity_propagation_clusters(np.zeros((100, 2)), 3, memory_limit=1000)


def test_score_on_separable_blobs_is_perfect():
    x, y = make_blobs(n_samples=200, centers=5, cluster_std=0.2, random_state=0)
    # k-means++ (scikit-learn) finds separable blobs; faiss's random start
    # (the default, as pytorch-metric-learning) may merge two of them.
    result = metrics.score(x, y, [1, 2, 4], kmeans="sklearn").to_json()
    for key in ("recall@1", "recall@4", "nmi", "f1", "map@r", "r_precision"):
        assert result[key] == pytest.approx(1.0), key
    assert result["n"] == 200 and result["classes"] == 5


@pytest.mark.parametrize("features,labels,ks,message", [
    (np.array([[0.0, np.nan], [1, 1], [2, 2]]), np.array([0, 1, 1]), [1], "NaN or inf"),
    (np.array([[0.0, np.inf], [1, 1], [2, 2]]), np.array([0, 1, 1]), [1], "NaN or inf"),
    (np.zeros((4, 2)), np.array([0, 1, 1]), [1], "3 labels for 4 features"),
    (np.zeros((4, 2)), np.zeros(4), [1], "single class"),
    (np.zeros((0, 2)), np.zeros(0), [1], "is empty"),
    (np.array([["a", "b"], ["c", "d"]]), np.array([0, 1]), [1], "dtype <U1; expected numbers"),
    (np.zeros((3, 2)), np.array([0.0, np.nan, 1.0]), [1], "1 label.* NaN"),
    (np.random.default_rng(0).normal(size=(5, 2)), np.array([0, 0, 1, 1, 1]), [5],
     "larger than N - 1"),
])
def test_bad_inputs_name_the_problem(features, labels, ks, message):
    with pytest.raises(ScoringError, match=message):
        metrics.score(features, labels, ks)


def test_evaluate_cli_json_and_errors(tmp_path):
    x, y = make_blobs(n_samples=60, centers=3, random_state=0)
    np.savez(tmp_path / "f.npz", features=x.astype(np.float32), labels=y,
             ids=np.arange(60))
    out = tmp_path / "scores.json"
    result = subprocess.run([sys.executable, str(TOOLS / "evaluate.py"),
                             str(tmp_path / "f.npz"), "--k", "1", "2", "4",
                             "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())
    assert set(scores) >= {"recall@1", "recall@2", "recall@4", "nmi", "f1", "map@r",
                           "r_precision", "clustering", "n", "classes"}
    assert all(0 <= scores[k] <= 1 for k in ("recall@1", "nmi", "f1", "map@r"))
    np.savez(tmp_path / "bad.npz", features=x, labels=y[:-1])
    bad = subprocess.run([sys.executable, str(TOOLS / "evaluate.py"),
                          str(tmp_path / "bad.npz")], capture_output=True, text=True)
    assert bad.returncode == 2 and "59 labels for 60 features" in bad.stderr


def evaluate(*args):
    return subprocess.run([sys.executable, str(TOOLS / "evaluate.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_evaluate_cli_bad_files_get_clear_messages(tmp_path):
    x, y = make_blobs(n_samples=30, centers=3, random_state=1)
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("features,labels\n1,2\n")
    np.savez(tmp_path / "cut.npz", features=x, labels=y)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:100])
    np.save(tmp_path / "array.npy", x)
    np.savez(tmp_path / "objects.npz", features=np.array([object()] * 30), labels=y)
    np.savez(tmp_path / "strings.npz", features=np.array([["a"]] * 30), labels=y)
    np.savez(tmp_path / "nan_labels.npz", features=x, labels=np.where(y == 1, np.nan, y))
    np.savez(tmp_path / "nolabels.npz", features=x)
    cases = {
        "empty.npz": "not a readable .npz (empty file;",
        "text.npz": "not a readable .npz (not a zip archive;",
        "cut.npz": "not a readable .npz (",
        "array.npy": "a single array (.npy), not an .npz",
        "objects.npz": "holds Python objects",
        "strings.npz": "expected numbers",
        "nan_labels.npz": "label(s) are NaN",
        "nolabels.npz": "no array 'labels'",
        "missing.npz": "no such file",
    }
    for name, message in cases.items():
        result = evaluate(tmp_path / name)
        assert result.returncode == 2, (name, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr, name


def test_evaluate_cli_never_writes_over_its_input_and_names_the_file(tmp_path):
    x, y = make_blobs(n_samples=40, centers=4, random_state=2)
    np.savez(tmp_path / "f.npz", features=x, labels=y)
    before = (tmp_path / "f.npz").read_bytes()
    result = evaluate(tmp_path / "f.npz", "--json", tmp_path / "f.npz")
    assert result.returncode == 2 and "is also the features file" in result.stderr
    assert (tmp_path / "f.npz").read_bytes() == before
    os.mkfifo(tmp_path / "pipe")  # a rename would replace it, not write to it
    result = evaluate(tmp_path / "f.npz", "--json", tmp_path / "pipe")
    assert result.returncode == 2 and "not a regular file" in result.stderr
    assert (tmp_path / "pipe").is_fifo()
    np.savez(tmp_path / "single.npz", features=x[:4], labels=np.arange(4))
    result = evaluate(tmp_path / "single.npz", "--k", "1")
    assert result.returncode == 2, result.stderr
    assert "single.npz: every class has a single item" in result.stderr


def test_evaluate_cli_writes_json_into_a_new_folder(tmp_path):
    x, y = make_blobs(n_samples=40, centers=4, random_state=2)
    np.savez(tmp_path / "f.npz", features=x, labels=y)
    out = tmp_path / "new" / "folder" / "scores.json"
    result = evaluate(tmp_path / "f.npz", "--k", "1", "--json", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["clustering"] == "kmeans-faiss"


def test_scores_do_not_depend_on_a_common_shift_or_scale(tmp_path):
    """A clean embedding (unit-sized, as a trained one) scores the same moved
    by 3000 in every coordinate, where float32 distances of the raw
    coordinates lose every gap to |x|^2; and 512-d values near 1e18, whose
    float32 squares overflow, score as at ordinary scale, through the CLI
    with either k-means (faiss aborted on them)."""
    x, y = make_blobs(n_samples=300, n_features=64, centers=10, cluster_std=0.05,
                      center_box=(-1, 1), random_state=7)
    x = x.astype(np.float32)
    clean = metrics.score(x, y, [1, 2], kmeans="sklearn").to_json()
    assert clean["recall@1"] == 1.0 and clean["nmi"] == pytest.approx(1.0)
    shifted = metrics.score(x + np.float32(3000), y, [1, 2], kmeans="sklearn").to_json()
    for key in ("recall@1", "recall@2", "map@r", "r_precision", "nmi", "f1"):
        assert shifted[key] == pytest.approx(clean[key]), key
    dense, labels = make_blobs(n_samples=200, n_features=512, centers=5, cluster_std=0.05,
                               center_box=(-1, 1), random_state=8)
    huge = ((0.8 + 0.1 * dense) * 1e18).astype(np.float32)  # all in (5e17, 1.1e18)
    np.savez(tmp_path / "huge.npz", features=huge, labels=labels)
    for kmeans in ("faiss", "sklearn"):
        out = tmp_path / f"huge_{kmeans}.json"
        result = evaluate(tmp_path / "huge.npz", "--k", "1", "--kmeans", kmeans,
                          "--json", out)
        assert result.returncode == 0, (kmeans, result.returncode, result.stderr[-2000:])
        scores = json.loads(out.read_text())
        assert scores["recall@1"] == 1.0 and scores["map@r"] == 1.0, (kmeans, scores)
    assert json.loads((tmp_path / "huge_sklearn.json").read_text())["nmi"] == \
        pytest.approx(1.0)


def test_scores_do_not_depend_on_a_common_scale(tmp_path):
    """float64 features far beyond float32's range (or far below its
    smallest normal) score as the same features at ordinary scale."""
    x, y = make_blobs(n_samples=60, centers=3, cluster_std=2.0, random_state=3)
    ordinary = metrics.score(x, y, [1, 2]).to_json()
    for scale in (1e60, 1e-60):
        scaled = metrics.score(x * scale, y, [1, 2]).to_json()
        for key in ("recall@1", "recall@2", "map@r", "nmi"):
            assert scaled[key] == pytest.approx(ordinary[key]), (scale, key)
    np.savez(tmp_path / "huge.npz", features=x * 1e60, labels=y)
    result = evaluate(tmp_path / "huge.npz", "--k", "1")
    assert result.returncode == 0 and "NaN or inf" not in result.stderr, result.stderr


def test_kmeans_backend_is_explicit_and_recorded():
    x, y = make_blobs(n_samples=90, centers=3, cluster_std=0.3, random_state=4)
    for backend in metrics.KMEANS_BACKENDS:
        result = metrics.score(x, y, [1], kmeans=backend).to_json()
        assert result["clustering"] == f"kmeans-{backend}"
        assert result["nmi"] > 0.5
        again = metrics.score(x, y, [1], kmeans=backend).to_json()
        assert again["nmi"] == result["nmi"]  # seeded
    with pytest.raises(ScoringError, match="k-means backend 'other'"):
        metrics.score(x, y, [1], kmeans="other")


def test_scoring_an_npz_needs_neither_opencv_nor_lmdb_nor_caffe(tmp_path):
    x, y = make_blobs(n_samples=40, centers=4, random_state=5)
    np.savez(tmp_path / "f.npz", features=x, labels=y)
    probe = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('cv2', 'lmdb', 'caffe'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.argv = ['evaluate.py', '{tmp_path / 'f.npz'}', '--k', '1']\n"
        f"sys.path.insert(0, '{TOOLS}')\n"  # as for `python tools/evaluate.py`
        f"runpy.run_path('{TOOLS / 'evaluate.py'}', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "recall@1" in result.stdout


def test_standardize_is_its_definition_bit_for_bit():
    """The in-place standardize gives the bits of its definition written with
    a new array at every step, for every dtype and at extreme scales, and
    leaves its input alone."""
    def defined(features):
        def unit(x):
            largest = float(np.abs(x).max())
            return np.ldexp(x, -np.frexp(largest)[1]) if largest > 0 else x
        x = unit(np.asarray(features, dtype=np.float64))
        return unit(x - x.mean(axis=0)).astype(np.float32)

    rng = np.random.default_rng(11)
    cases = [rng.normal(size=(97, 13)) * scale + 5 * scale
             for scale in (1e-300, 1e-30, 1.0, 1e30, 1e300)]
    cases += [rng.normal(size=(50, 8)).astype(np.float32),
              rng.integers(0, 256, size=(40, 6)).astype(np.uint8),
              rng.integers(-5, 5, size=(30, 4)).astype(np.int64),
              np.zeros((5, 3)), -np.zeros((5, 3), dtype=np.float32),
              np.full((4, 2), 7.0)]
    for features in cases:
        before = features.copy()
        result = standardize(features)
        assert result.dtype == np.float32
        assert result.tobytes() == defined(features).tobytes(), features.dtype
        assert np.array_equal(features, before)
