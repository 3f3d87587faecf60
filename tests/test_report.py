"""Our scores beside the paper's published ones: data/paper_results.json and
the report's comparison table (which numbers match, which have none)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from liftedstruct.errors import LiftedError
from liftedstruct.paths import REPO_ROOT
from liftedstruct.run_report import (
    PAPER_RESULTS,
    check_result,
    comparison,
    composite,
    markdown_table,
    plot_tsne,
    premultiplied,
    published,
    retrieval_rows,
    thumbnail,
    tsne_map,
    write_report,
)
from liftedstruct.sweep_report import (
    lead_summary,
    leads,
    sweep_figure,
    sweep_markdown,
    sweep_runs,
    sweep_table,
    write_sweep_report,
)

TOOLS = REPO_ROOT / "tools"

# Rolínek et al., CVPR 2020, Tables 2-3: the file must hold exactly these.
ROLINEK = {
    ("sop", "contrastive"): (42.0, 58.2, 73.8, 89.1),
    ("sop", "triplet"): (42.1, 63.5, 82.5, 94.8),
    ("sop", "lifted"): (62.1, 79.8, 91.3, 97.4),
    ("cub", "contrastive"): (26.4, 37.7, 49.8, 62.3),
    ("cub", "triplet"): (36.1, 48.6, 59.3, 70.0),
    ("cub", "lifted"): (47.2, 58.9, 70.2, 80.2),
}
KS = {"sop": (1, 10, 100, 1000), "cub": (1, 2, 4, 8)}


def scores(**values: float) -> dict:
    return {key.replace("_", "@"): value for key, value in values.items()}


def test_every_published_number_has_a_source():
    table = json.loads(PAPER_RESULTS.read_text())
    for part in ("published", "reruns"):
        for dataset, methods in table[part].items():
            for method, sizes in methods.items():
                for size, entry in sizes.items():
                    assert entry["source"] in table["sources"], (part, dataset, method, size)
                    assert size == "unstated" or int(size) in (64, 128, 256, 512)
    for (dataset, method), values in ROLINEK.items():
        entry = table["published"][dataset][method]["512"]
        assert entry["source"] == "rolinek2020"
        assert tuple(entry[f"recall@{k}"] for k in KS[dataset]) == values


def test_ours_beside_the_papers_with_what_is_unpublished():
    results = {"lifted": scores(recall_1=0.5, recall_10=0.7, nmi=0.8),
               "pool5": scores(recall_1=0.3)}
    table = comparison(results, "sop", 512)
    row = table["lifted"]["metrics"]["recall@1"]
    assert row["paper"] == 62.1 and row["diff"] == pytest.approx(50.0 - 62.1)
    assert table["lifted"]["unpublished"] == ["nmi"]
    assert table["pool5"]["paper_source"] is None and table["pool5"]["unpublished"] == [
        "recall@1"]
    text = markdown_table(table, "sop", 512)
    assert "| lifted | 50.0 / 62.1 / -12.1 | 70.0 / 79.8 / -9.8 | 80.0 / – |" in text
    assert "Rolinek" in text
    assert "No published counterpart (–) for: lifted (nmi); pool5 (all)." in text


def test_sizes_and_reruns():
    # CUB is published at 512 only: at 64 nothing compares, and the 2017
    # re-run at 64 (another network) is never taken for the paper's.
    assert published("cub", "lifted", 64) == {}
    assert published("cub", "lifted", 512)["recall@1"] == 47.2
    # CARS196's sources state no size: they count for every size, and say so.
    cars = published("cars196", "triplet", 64)
    assert cars["recall@1"] == 39.1 and "embedding size not stated" in cars["source"]
    table = comparison({"triplet": scores(recall_1=0.4, recall_2=0.5)}, "cars196", 64)
    assert table["triplet"]["unpublished"] == ["recall@2"]
    glyphs = markdown_table(comparison({"lifted": scores(recall_1=0.9)}, "glyphs", 64),
                            "glyphs", 64)
    assert "no published numbers to compare" in glyphs and "| lifted | 90.0 |" in glyphs


def test_retrieval_never_shows_the_query_as_its_own_neighbour():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 6, 40):
        features = rng.normal(size=(n, 8)).astype(np.float32)
        rows = retrieval_rows(features, 6, seed=1)
        assert rows.shape == (min(6, n), 1 + min(5, n - 1)), n
        for row in rows:
            assert row[0] not in row[1:] and len(set(row)) == len(row), (n, row)
    assert retrieval_rows(np.zeros((1, 8), np.float32), 6, seed=1) is None


def test_thumbnails_are_composited_in_order_at_their_centres():
    """'over' in order: a later opaque thumbnail hides an earlier one, a
    half-transparent one mixes with what is below, and the canvas stays
    transparent elsewhere; parts outside the canvas are cut off."""
    red = np.zeros((2, 2, 4), np.float32)
    red[..., 0] = red[..., 3] = 1
    half_blue = np.zeros((2, 2, 4), np.float32)
    half_blue[..., 2] = half_blue[..., 3] = 0.5  # premultiplied
    canvas = composite(np.array([[2.0, 2.0], [3.0, 2.0], [0.0, 0.0], [9.0, 9.0]]),
                       [red, half_blue, red, red], 6, 5)
    assert canvas.shape == (5, 6, 4) and canvas.dtype == np.uint8
    assert canvas[1:3, 1].tolist() == [[255, 0, 0, 255]] * 2  # red alone
    assert canvas[1:3, 2].tolist() == [[128, 0, 128, 255]] * 2  # blue over red
    assert canvas[1:3, 3].tolist() == [[0, 0, 255, 128]] * 2  # blue alone
    assert canvas[0, 0].tolist() == [255, 0, 0, 255]  # a quarter of the corner one
    assert canvas[3:, :].max() == 0 and canvas[:, 4:].max() == 0


def test_thumbnails_scale_their_ink_not_the_paper():
    """Glyphs on white become ink with alpha; scaling one down keeps its ink
    black where it is opaque, and an opaque photo stays opaque."""
    glyph = np.full((8, 8, 3), 255, np.uint8)
    glyph[:, :2] = 0  # a quarter of the columns inked
    small = premultiplied(thumbnail(glyph), 4)
    assert small.shape == (4, 4, 4)
    assert np.allclose(small[:, :1], [0, 0, 0, 1]) and np.allclose(small[:, 1:], 0)
    photo = np.random.default_rng(0).integers(0, 200, size=(6, 12, 3), dtype=np.uint8)
    assert premultiplied(thumbnail(photo), 4).shape == (2, 4, 4)
    assert np.allclose(premultiplied(thumbnail(photo), 4)[..., 3], 1)


def test_tsne_is_seeded_and_its_thumbnails_are_one_image(tmp_path, monkeypatch):
    """The same map twice from one seed; every thumbnail inside the axes,
    drawn as a single image."""
    import matplotlib.pyplot as plt
    from matplotlib.image import AxesImage

    rng = np.random.default_rng(2)
    features = np.vstack([rng.normal(loc=5 * c, size=(20, 6)) for c in range(3)])
    points = tsne_map(features.astype(np.float32), seed=3)
    assert points.shape == (60, 2)
    assert np.array_equal(points, tsne_map(features.astype(np.float32), seed=3))
    glyph = np.full((16, 16, 3), 255, np.uint8)
    glyph[4:12, 4:12] = 0
    drawn = {}
    monkeypatch.setattr(plt, "close", lambda fig: drawn.setdefault("fig", fig))
    plot_tsne(points, np.repeat([0, 1, 2], 20), tmp_path / "t.png", "t", [glyph] * 60)
    assert (tmp_path / "t.png").stat().st_size > 0
    ax = drawn["fig"].axes[0]
    images = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert len(images) == 1 and len(ax.artists) == 0
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < points[:, 0].min() and points[:, 0].max() < x1
    assert y0 < points[:, 1].min() and points[:, 1].max() < y1
    ink = images[0].get_array()[..., 3] > 0
    assert ink[0].sum() == ink[-1].sum() == ink[:, 0].sum() == ink[:, -1].sum() == 0


def test_result_files_must_hold_scores():
    good = {"recall@1": 0.5, "nmi": 0.4, "clustering": "kmeans-faiss", "n": 10,
            "resumes": [{"stage": "train", "iteration": 200}]}
    assert check_result(good, "r.json") is good
    for bad, message in (([0.5, 0.4], "a JSON list, not an object of scores"),
                         ({"nmi": 0.4}, "no recall@K score"),
                         ({"recall@1": "0.5"}, "recall@1 is '0.5'; a score is a number"),
                         ({"recall@1": 50.0}, "recall@1 is 50.0"),
                         ({"recall@1": True}, "recall@1 is True"),
                         ({"recall@1": 0.5, "resumes": "twice"}, "'resumes' must be")):
        with pytest.raises(LiftedError, match=message):
            check_result(bad, "r.json")


def test_resumed_runs_are_named_in_the_report(tmp_path):
    results = {"lifted": scores(recall_1=0.9) | {"resumes": [
                   {"stage": "train", "iteration": 200}]},
               "triplet": scores(recall_1=0.8) | {"resumes": []}}
    write_report(results, "glyphs", 64, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Resumed after an interruption: lifted (train from iteration 200)." in text
    assert "triplet (" not in text
    assert json.loads((tmp_path / "report.json").read_text())["resumes"] == {
        "lifted": [{"stage": "train", "iteration": 200}]}
    write_report({"lifted": scores(recall_1=0.9) | {"resumes": []}}, "glyphs", 64,
                 tmp_path / "plain")
    assert "Resumed" not in (tmp_path / "plain" / "report.md").read_text()


def report_cli(*args):
    return subprocess.run([sys.executable, str(TOOLS / "report.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_report_cli_refuses_bad_inputs_before_drawing(caffe, tiny_cub, tmp_path):
    from liftedstruct.lmdbio import read_labels

    labels = np.array(read_labels(tiny_cub / "test_lmdb"))
    ids = np.array([f"{i:09d}" for i in range(len(labels))])
    features = np.random.default_rng(2).normal(size=(len(labels), 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", features=features, labels=labels, ids=ids)
    np.savez(tmp_path / "no_ids.npz", features=features, labels=labels)
    (tmp_path / "r.json").write_text(json.dumps(scores(recall_1=0.5, nmi=0.3)))
    (tmp_path / "list.json").write_text("[0.5, 0.3]")
    (tmp_path / "strings.json").write_text('{"recall@1": "50.0"}')
    (tmp_path / "a_file").write_text("taken")
    common = ["--embedding", "512", "--images", tiny_cub / "test_lmdb"]
    cases = (
        (["--dataset", "CUB", "--result", "lifted=" + str(tmp_path / "r.json")],
         "invalid choice: 'CUB'"),
        (["--dataset", "cub", "--result", "lifted=" + str(tmp_path / "list.json")],
         "a JSON list, not an object of scores"),
        (["--dataset", "cub", "--result", "lifted=" + str(tmp_path / "strings.json")],
         "recall@1 is '50.0'"),
        (["--dataset", "cub", "--result", "lifted=" + str(tmp_path / "r.json"),
          "--features", "lifted=" + str(tmp_path / "f.npz"),
          "--features", "pool5=" + str(tmp_path / "no_ids.npz")],
         "no_ids.npz: no array 'ids'"),
    )
    for args, message in cases:
        out = tmp_path / "out"
        result = report_cli(*common, *args, "--out", out)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert not list(out.glob("*.png")) and not (out / "report.md").exists()
    for out, message in ((tmp_path / "a_file", "a file is there; give a folder"),
                         (tmp_path / "a_file" / "sub", "a_file is a file")):
        result = report_cli(*common, "--dataset", "cub", "--result",
                            "lifted=" + str(tmp_path / "r.json"), "--out", out)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    good = report_cli(*common, "--dataset", "cub", "--result",
                      "lifted=" + str(tmp_path / "r.json"), "--features",
                      "lifted=" + str(tmp_path / "f.npz"), "--out", tmp_path / "out")
    assert good.returncode == 0, good.stderr[-2000:]
    assert (tmp_path / "out" / "retrieval_lifted.png").stat().st_size > 0


# ---------------------------------------------------------------- sweeps

def sweep_results(dataset: str, values: dict, baseline: str = "pool5",
                  base: float = 0.2) -> dict:
    """results.json of a sweep: values[(method, size)] = Recall@1 per seed;
    NMI and F1 follow from it so that each metric has its own numbers."""
    results = {}
    for (method, size), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            results[f"e{size}_s{seed}/{method}"] = {
                "recall@1": value, "nmi": value / 2, "f1": value / 4, "method": method,
                "embedding": size, "seed": seed, "resumes": []}
    results[baseline] = {"recall@1": base, "nmi": base / 2, "f1": base / 4,
                         "method": baseline, "embedding": None, "seed": 0, "resumes": []}
    return results


def panel_lines(figure, title: str) -> dict[str, object]:
    ax = next(ax for ax in figure.axes if ax.get_title() == title)
    return {line.get_label(): line for line in ax.get_lines()}


def test_sweep_table_spread_over_seeds_and_the_papers_values():
    values = {("lifted", 64): (0.40, 0.42, 0.47), ("lifted", 512): (0.50, 0.52, 0.51),
              ("triplet", 64): (0.30, 0.31, 0.32), ("triplet", 512): (0.35, 0.36, 0.37)}
    results = sweep_results("cub", values)
    table = sweep_table(sweep_runs(results, "pool5"), "cub")
    cell = table["lifted"][64]["recall@1"]
    assert cell["seeds"] == pytest.approx({0: 40.0, 1: 42.0, 2: 47.0})
    assert cell["mean"] == pytest.approx(43.0) and cell["min"] == pytest.approx(40.0)
    assert cell["max"] == pytest.approx(47.0)
    assert cell["std"] == pytest.approx(np.std([40.0, 42.0, 47.0], ddof=1))
    assert table["lifted"][64]["nmi"]["mean"] == pytest.approx(21.5)
    # The paper's CUB numbers are at 512 and only for Recall@K.
    assert cell["paper"] is None
    assert table["lifted"][512]["recall@1"]["paper"] == 47.2
    assert table["triplet"][512]["recall@1"]["paper"] == 36.1
    assert table["lifted"][512]["nmi"]["paper"] is None
    text = sweep_markdown(table, {"pool5": results["pool5"]}, "cub")
    assert "| lifted | 64 | 43.0 (40.0–47.0) | 21.5 (20.0–23.5) |" in text
    assert "| lifted | 512 | 51.0 (50.0–52.0); paper 47.2 | 25.5" in text
    assert "| ImageNet pool5 (untrained) | – | 20.0 | 10.0 | 5.0 |" in text
    assert "Rolinek" in text and "states no embedding size" not in text

    figure = sweep_figure(table, {"pool5": results["pool5"]}, "cub")
    recall = panel_lines(figure, "Recall@1")
    assert list(recall["lifted"].get_xdata()) == [64, 512]
    assert list(recall["lifted"].get_ydata()) == pytest.approx([43.0, 51.0])
    assert list(recall["lifted (paper)"].get_xdata()) == [512]
    assert list(recall["lifted (paper)"].get_ydata()) == [47.2]
    assert list(recall["ImageNet pool5 (untrained)"].get_ydata()) == pytest.approx([20, 20])
    nmi = panel_lines(figure, "NMI")
    assert "lifted (paper)" not in nmi and "lifted" in nmi
    assert list(nmi["ImageNet pool5 (untrained)"].get_ydata()) == pytest.approx([10, 10])
    # The band from the lowest to the highest seed.
    ax = next(ax for ax in figure.axes if ax.get_title() == "Recall@1")
    band = next(c for c in ax.collections if isinstance(c, PolyCollection)
                and np.allclose(c.get_paths()[0].vertices[:, 0].min(), 64))
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(40.0)
    assert band.get_paths()[0].vertices[:, 1].max() == pytest.approx(52.0)


def test_a_source_without_a_size_is_drawn_as_a_line_and_starred():
    values = {("lifted", 64): (0.5, 0.6), ("lifted", 128): (0.55, 0.65)}
    results = sweep_results("cars196", values)
    table = sweep_table(sweep_runs(results, "pool5"), "cars196")
    assert table["lifted"][64]["recall@1"]["paper"] == 49.0
    assert table["lifted"][64]["recall@1"]["paper_size_stated"] is False
    recall = panel_lines(sweep_figure(table, {}, "cars196"), "Recall@1")
    line = recall["lifted (paper, size not stated)"]
    assert list(line.get_ydata()) == [49.0, 49.0]
    assert "lifted (paper)" not in recall
    text = sweep_markdown(table, {}, "cars196")
    assert "55.0 (50.0–60.0); paper 49.0*" in text and "states no embedding size" in text


def test_where_lifted_leads_beyond_the_seed_spread(tmp_path):
    # At 16 lifted's worst seed clears triplet's best; at 32 they overlap.
    values = {("lifted", 16): (0.90, 0.92, 0.91), ("triplet", 16): (0.80, 0.85, 0.82),
              ("contrastive", 16): (0.5, 0.6, 0.55),
              ("lifted", 32): (0.90, 0.94, 0.92), ("triplet", 32): (0.88, 0.91, 0.89),
              ("contrastive", 32): (0.5, 0.6, 0.55)}
    results = sweep_results("glyphs", values, baseline="raw", base=0.7)
    table = sweep_table(sweep_runs(results, "raw"), "glyphs")
    found = {(f["metric"], f["embedding"]): f for f in leads(table)}
    assert found[("recall@1", 16)]["leads"] and found[("recall@1", 16)]["overlapping"] == []
    assert found[("recall@1", 16)]["best_other"] == "triplet"
    assert found[("recall@1", 16)]["margin"] == pytest.approx(91.0 - 82.333333)
    assert not found[("recall@1", 32)]["leads"]
    assert found[("recall@1", 32)]["overlapping"] == ["triplet"]
    summary = lead_summary(table, leads(table))
    assert summary.startswith("lifted leads beyond the spread over 3 seed(s)")
    assert "for Recall@1 at 16; NMI at 16; F1 at 16; not for Recall@1 at 32 (lifted " \
           "90.0–94.0, triplet 88.0–91.0)" in summary
    assert leads({"lifted": table["lifted"]}) == []

    results["e32_s1/triplet"]["resumes"] = [{"stage": "train", "iteration": 500}]
    written = write_sweep_report(results, "raw", "glyphs", tmp_path)
    assert written["sweep"].stat().st_size > 0
    text = (tmp_path / "report.md").read_text()
    assert "| raw pixels (untrained) | – | 70.0 | 35.0 | 17.5 |" in text
    assert "No published numbers to compare at these sizes." in text
    assert summary in text
    assert "Resumed after an interruption: e32_s1/triplet (train from iteration 500)" in text
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["sweep"]["lifted"]["16"]["recall@1"]["mean"] == pytest.approx(91.0)
    assert stored["baseline"] == {"raw": pytest.approx({"recall@1": 70.0, "nmi": 35.0,
                                                        "f1": 17.5})}


def test_sweep_results_must_name_their_cells():
    results = sweep_results("glyphs", {("lifted", 16): (0.9,)}, baseline="raw")
    del results["e16_s0/lifted"]["seed"]
    with pytest.raises(LiftedError, match="no method, embedding and seed"):
        sweep_runs(results, "raw")
    twice = sweep_results("glyphs", {("lifted", 16): (0.9,)}, baseline="raw")
    twice["copy"] = dict(twice["e16_s0/lifted"])
    with pytest.raises(LiftedError, match="lifted at 16 with seed 0 twice"):
        sweep_runs(twice, "raw")
    with pytest.raises(LiftedError, match="no results"):
        sweep_runs({"raw": twice["raw"]}, "raw")
