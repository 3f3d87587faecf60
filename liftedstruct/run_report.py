"""Our scores beside the paper's published ones, and the paper's figure
types: Recall@K curves (Fig. 6/7/12), Barnes-Hut t-SNE (Fig. 9/11/15),
retrieval grids of a query and its 5 nearest neighbours (Fig. 8/10/13/14):
one run's report. A sweep's is sweep_report.py. Only the images a figure
draws are read from the test LMDB."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from liftedstruct.errors import LiftedError  # noqa: E402
from liftedstruct.featurefile import load_features, load_ids  # noqa: E402
from liftedstruct.files import atomic_path, atomic_write_text  # noqa: E402
from liftedstruct.metrics import nearest_neighbors  # noqa: E402
from liftedstruct.paths import REPO_ROOT  # noqa: E402

PAPER_RESULTS = REPO_ROOT / "data" / "paper_results.json"
METRIC_ORDER = ("nmi", "f1", "map@r", "r_precision")
THUMBNAIL_LIMIT = 1500  # t-SNE points drawn as thumbnails up to this many
THUMBNAIL_POINTS = 14  # a thumbnail's longer side, in points (1/72 inch)
TSNE_ITERATIONS = 500  # sklearn's 250 early-exaggerated steps, then 250 more
DPI = 120  # every figure's resolution
TSNE_MIN_POINTS = 3  # t-SNE's perplexity (at least 2) must stay below the points
RETRIEVED = 5  # neighbours per query in the retrieval grids (fewer if N - 1 is less)
SCORE_KEY = re.compile(r"recall@\d+|nmi|f1|map@r|r_precision")


def save_figure(fig, path: Path) -> None:
    """A PNG written under a temporary name and renamed when complete."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")


def check_result(scores, source: str) -> dict:
    """One method's scores as evaluate.py --json writes them: an object with
    at least one recall@K, every score a number in [0, 1]."""
    if not isinstance(scores, dict):
        raise LiftedError(f"{source}: a JSON {type(scores).__name__}, not an object of "
                          "scores (tools/evaluate.py --json writes one)")
    if not recall_keys(scores):
        raise LiftedError(f"{source}: no recall@K score (keys: "
                          f"{', '.join(map(str, scores)) or 'none'})")
    for key, value in scores.items():
        if SCORE_KEY.fullmatch(key) and (
                isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 <= value <= 1):
            raise LiftedError(f"{source}: {key} is {value!r}; a score is a number from 0 "
                              "to 1")
    resumes = scores.get("resumes", [])
    if not isinstance(resumes, list) or not all(
            isinstance(r, dict) and isinstance(r.get("stage"), str)
            and isinstance(r.get("iteration"), int) for r in resumes):
        raise LiftedError(f"{source}: 'resumes' must be a list of {{stage, iteration}}, "
                          f"got {resumes!r}")
    return scores


def resume_note(results: dict[str, dict]) -> str:
    """One line naming every resumed stage of every method ('' when none),
    for information: a training resumed from a solverstate is the run it
    resumes (docs/BATCHES.md: batch k and iteration k's random draws depend
    on the seed and k alone, and the solverstate's fingerprint of the
    training LMDB is checked before the resume)."""
    parts = []
    for method, scores in results.items():
        stages = [f"{r['stage']} from iteration {r['iteration']}"
                  for r in scores.get("resumes", [])]
        if stages:
            parts.append(f"{method} ({', '.join(stages)})")
    if not parts:
        return ""
    return ("Resumed after an interruption: " + "; ".join(parts) + ". A training "
            "resumed from a solverstate forms the same batches and random draws as an "
            "uninterrupted run (docs/BATCHES.md)")


def recall_keys(scores: dict) -> list[str]:
    keys = [k for k in scores if re.fullmatch(r"recall@\d+", k)]
    return sorted(keys, key=lambda k: int(k.split("@")[1]))


def published(dataset: str, method: str, embedding: int,
              path: Path = PAPER_RESULTS) -> dict:
    """The 2016 paper's published numbers (percent) for one configuration,
    with the citation they were taken from and whether it states the size
    (size_stated); {} when none is published. A source that states no
    embedding size counts for every size (and says so)."""
    table = json.loads(path.read_text())
    entries = table["published"].get(dataset, {}).get(method, {})
    entry = entries.get(str(embedding))
    note = ""
    if entry is None and "unstated" in entries:
        entry, note = entries["unstated"], " (embedding size not stated)"
    if not entry:
        return {}
    source = table["sources"][entry["source"]]["citation"] + note
    return {**{k: v for k, v in entry.items() if re.fullmatch(r"recall@\d+|nmi|f1", k)},
            "source": source, "size_stated": not note}


def comparison(results: dict[str, dict], dataset: str, embedding: int) -> dict:
    """{method: {"metrics": {metric: {"ours", "paper", "diff"}}, "paper_source",
    "unpublished": [metrics with no published counterpart]}}."""
    table = {}
    for method, scores in results.items():
        paper = published(dataset, method, embedding)
        rows = {}
        for key in recall_keys(scores) + [k for k in METRIC_ORDER if k in scores]:
            ours = 100 * scores[key]
            theirs = paper.get(key)
            rows[key] = {"ours": ours, "paper": theirs,
                         "diff": None if theirs is None else ours - theirs}
        unpublished = [k for k, row in rows.items() if row["paper"] is None]
        table[method] = {"metrics": rows, "paper_source": paper.get("source"),
                         "unpublished": unpublished}
    return table


def markdown_table(table: dict, dataset: str, embedding: int) -> str:
    metrics: list[str] = []
    for entry in table.values():
        metrics += [m for m in entry["metrics"] if m not in metrics]
    compared = any(entry["paper_source"] for entry in table.values())
    what = "ours / paper / difference" if compared else "no published numbers to compare"
    lines = [f"### {dataset}, embedding {embedding} (percent; {what})", "",
             "| method | " + " | ".join(metrics) + " |",
             "| --- | " + " | ".join("---" for _ in metrics) + " |"]
    for method, entry in table.items():
        cells = []
        for metric in metrics:
            row = entry["metrics"].get(metric)
            if row is None:
                cells.append("")
            elif row["paper"] is None:
                cells.append(f"{row['ours']:.1f} / –" if compared else f"{row['ours']:.1f}")
            else:
                cells.append(f"{row['ours']:.1f} / {row['paper']:.1f} / {row['diff']:+.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    sources = sorted({e["paper_source"] for e in table.values() if e["paper_source"]})
    if sources:
        lines.append("Paper numbers (Song et al., CVPR 2016, as tabulated in): "
                     + "; ".join(sources) + ".")
        missing = [f"{method} ({', '.join(e['unpublished'])})" if e["paper_source"]
                   else f"{method} (all)" for method, e in table.items() if e["unpublished"]]
        if missing:
            lines.append("No published counterpart (–) for: " + "; ".join(missing) + ".")
    return "\n".join(lines) + "\n"


def plot_recall_curves(results: dict[str, dict], path: Path, title: str,
                       paper: dict[str, dict] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, scores in results.items():
        keys = recall_keys(scores)
        ks = [int(k.split("@")[1]) for k in keys]
        line, = ax.plot(ks, [100 * scores[k] for k in keys], marker="o", label=method)
        theirs = (paper or {}).get(method, {})
        paper_keys = [k for k in recall_keys(theirs)]
        if paper_keys:
            ax.plot([int(k.split("@")[1]) for k in paper_keys],
                    [theirs[k] for k in paper_keys], ls="--", marker="x",
                    color=line.get_color(), label=f"{method} (paper)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def sample_points(n: int, max_points: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(max_points, n), replace=False))


def tsne_map(features: np.ndarray, seed: int) -> np.ndarray:
    """Barnes-Hut t-SNE (2-d) of the rows, seeded, on one thread (the order
    of its sums, hence the map, depends on the threads): the same map on
    any machine."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
    with threadpool_limits(limits=1):
        return TSNE(n_components=2, method="barnes_hut", perplexity=perplexity,
                    init="pca", max_iter=TSNE_ITERATIONS,
                    random_state=seed).fit_transform(features)


def tsne_pool(jobs: int) -> ProcessPoolExecutor:
    """Workers for the t-SNE maps, one a core (each map runs on one thread).
    Forked: a spawned worker would import the caller's __main__ again; a
    forked one inherits the OpenMP and BLAS libraries as they are, which is
    safe on the one thread tsne_map limits them to."""
    workers = max(1, min(jobs, len(os.sched_getaffinity(0))))
    return ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context("fork"))


def plot_tsne(points: np.ndarray, labels: np.ndarray, path: Path, title: str,
              images: list[np.ndarray] | None = None) -> Path:
    """A t-SNE map (tsne_map) of some rows, coloured by their class or, with
    their images, drawn with thumbnails as in the paper's figures."""
    fig, ax = plt.subplots(figsize=(7, 7), dpi=DPI)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    if images is None:
        _, classes = np.unique(labels, return_inverse=True)
        ax.scatter(points[:, 0], points[:, 1], c=classes % 20, cmap="tab20", s=6)
    else:
        draw_thumbnails(ax, points, images)
    save_figure(fig, path)
    plt.close(fig)
    return path


def draw_thumbnails(ax, points: np.ndarray, images: list[np.ndarray]) -> None:
    """Each image as a thumbnail (THUMBNAIL_POINTS on its longer side)
    centred on its point, later ones over earlier ones, all composited into
    one RGBA image of the axes' size in pixels at DPI and drawn with a
    single imshow; the limits keep every thumbnail inside the axes."""
    box = ax.get_window_extent()
    width, height = round(box.width), round(box.height)
    side = max(2, round(THUMBNAIL_POINTS * DPI / 72))
    thumbs = [premultiplied(thumbnail(image), side) for image in images]
    margin = side / 2 + 1
    limits = []
    for axis, size in ((0, width), (1, height)):
        low, high = float(points[:, axis].min()), float(points[:, axis].max())
        span = high - low or 1.0
        per_pixel = span / max(size - 2 * margin, 1.0)
        limits.append((low - margin * per_pixel, low + span + margin * per_pixel))
    (x0, x1), (y0, y1) = limits
    centres = np.column_stack([(points[:, 0] - x0) / (x1 - x0) * width,
                               (y1 - points[:, 1]) / (y1 - y0) * height])  # rows down
    ax.imshow(composite(centres, thumbs, width, height), extent=(x0, x1, y0, y1),
              interpolation="nearest", aspect="auto")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def premultiplied(image: np.ndarray, side: int) -> np.ndarray:
    """An RGB(A) uint8 image scaled (area averaging) to `side` pixels on its
    longer side, as float32 RGBA in [0, 1] with the colour premultiplied by
    the alpha (so that scaling mixes ink, not the colour of empty pixels)."""
    import cv2

    rgba = image.astype(np.float32) / 255
    if rgba.shape[2] == 3:
        rgba = np.dstack([rgba, np.ones(rgba.shape[:2], dtype=np.float32)])
    rgba[:, :, :3] *= rgba[:, :, 3:]
    scale = side / max(rgba.shape[:2])
    size = (max(1, round(rgba.shape[1] * scale)), max(1, round(rgba.shape[0] * scale)))
    return cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)


def composite(centres: np.ndarray, thumbs: list[np.ndarray], width: int,
              height: int) -> np.ndarray:
    """Premultiplied RGBA thumbnails laid over one another ('over', in
    order) at the given centres (x, y pixels, y from the top) on a
    transparent height x width canvas; uint8 RGBA, parts outside cut off."""
    canvas = np.zeros((height, width, 4), dtype=np.float32)
    for (x, y), thumb in zip(centres, thumbs, strict=True):
        h, w = thumb.shape[:2]
        top, left = int(np.floor(y - h / 2 + 0.5)), int(np.floor(x - w / 2 + 0.5))
        rows = slice(max(top, 0), min(top + h, height))
        cols = slice(max(left, 0), min(left + w, width))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        source = thumb[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left]
        target = canvas[rows, cols]
        target *= 1 - source[:, :, 3:]
        target += source
    alpha = canvas[:, :, 3:]
    rgb = np.divide(canvas[:, :, :3], alpha, out=np.zeros_like(canvas[:, :, :3]),
                    where=alpha > 0)
    return np.round(np.dstack([rgb, alpha]) * 255).clip(0, 255).astype(np.uint8)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """RGB(A) for drawing: line art on white (glyphs) gets its ink as alpha,
    so that overlapping thumbnails do not hide each other behind white."""
    rgb = image[:, :, ::-1]
    if np.median(image) < 240:
        return rgb
    alpha = 255 - image.min(axis=2)
    return np.dstack([rgb, alpha]).astype(np.uint8)


def retrieval_rows(features: np.ndarray, queries: int, seed: int) -> np.ndarray | None:
    """Rows of (query, its nearest neighbours: 5, or N - 1 when fewer), the
    queries drawn with the seed; None when there is no other image."""
    if len(features) < 2:
        return None
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(features), size=min(queries, len(features)), replace=False)
    neighbours = nearest_neighbors(features, min(RETRIEVED, len(features) - 1), chosen)
    return np.column_stack([chosen, neighbours])


def plot_retrieval(rows: np.ndarray, labels: np.ndarray, images: dict[int, np.ndarray],
                   path: Path, title: str) -> Path:
    """Query images and their 5 nearest neighbours; green frame = same class."""
    fig, axes = plt.subplots(len(rows), rows.shape[1],
                             figsize=(rows.shape[1] * 1.3, len(rows) * 1.3))
    axes = np.atleast_2d(axes)
    for row, indices in enumerate(rows):
        query = indices[0]
        for col, index in enumerate(indices):
            ax = axes[row, col]
            ax.imshow(images[int(index)][:, :, ::-1])
            ax.set_xticks([])
            ax.set_yticks([])
            color = "black" if col == 0 else ("green" if labels[index] == labels[query]
                                              else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
        axes[row, 0].set_ylabel("query", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def load_images(lmdb_path: Path, ids: np.ndarray, rows) -> dict[int, np.ndarray]:
    """The BGR images of the given rows (by their LMDB keys), and only those."""
    from liftedstruct.images import datum_image
    from liftedstruct.lmdbio import read_datums

    wanted = sorted({int(r) for r in rows})
    images = {}
    for row, (key, datum) in zip(wanted, read_datums(lmdb_path, [str(ids[r]) for r in wanted]),
                                 strict=True):
        if datum is None:
            raise LiftedError(f"{lmdb_path}: no record {key!r} (row {row} of the "
                                    "features): features and LMDB do not belong together")
        images[row] = datum_image(datum)
    return images


def write_report(results: dict[str, dict], dataset: str, embedding: int, out: Path,
                 features: dict[str, Path] | None = None, images_lmdb: Path | None = None,
                 seed: int = 0, tsne_points: int = THUMBNAIL_LIMIT, queries: int = 6,
                 note: str = "") -> dict[str, Path]:
    """The figures, report.json and, last, report.md in out; returns what was
    written. Every features file is checked before anything is written."""
    loaded = {}
    for method, path in (features or {}).items():
        feats, labels = load_features(path)
        ids = load_ids(path, len(feats)) if images_lmdb is not None else None
        loaded[method] = feats, labels, ids
    out.mkdir(parents=True, exist_ok=True)
    table = comparison(results, dataset, embedding)
    written = {}
    paper = {m: published(dataset, m, embedding) for m in results}
    written["recall"] = plot_recall_curves(
        results, out / "recall_at_k.png", f"{dataset}: Recall@K, embedding {embedding}", paper)
    chosen = {method: sample_points(len(feats), tsne_points, seed)
              for method, (feats, _, _) in loaded.items()}
    mapped = [method for method in loaded if len(chosen[method]) >= TSNE_MIN_POINTS]
    with tsne_pool(len(mapped)) as pool:
        # Every map under way at once; the figures are drawn meanwhile.
        maps = {method: pool.submit(tsne_map, loaded[method][0][chosen[method]], seed)
                for method in mapped}
        for method, (feats, labels, ids) in tqdm(loaded.items(), desc="report",
                                                 unit="embedding"):
            picked = chosen[method]
            thumbnails = images_lmdb is not None and len(picked) <= THUMBNAIL_LIMIT
            rows = retrieval_rows(feats, queries, seed) if images_lmdb is not None else None
            needed = list(picked if thumbnails else []) + list(
                rows.ravel() if rows is not None else [])
            images = load_images(images_lmdb, ids, needed) if needed else {}
            if rows is not None:
                written[f"retrieval_{method}"] = plot_retrieval(
                    rows, labels, images, out / f"retrieval_{method}.png",
                    f"{dataset} {method}: query and {rows.shape[1] - 1} nearest neighbours")
            if method in maps:
                written[f"tsne_{method}"] = plot_tsne(
                    maps[method].result(), labels[picked], out / f"tsne_{method}.png",
                    f"{dataset} {method}: t-SNE",
                    [images[int(i)] for i in picked] if thumbnails else None)
    resumed = resume_note(results)
    atomic_write_text(out / "report.json", json.dumps(
        {"dataset": dataset, "embedding": embedding, "methods": table, "data": note,
         "resumes": {m: r["resumes"] for m, r in results.items() if r.get("resumes")}},
        indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown_table(table, dataset, embedding)
                      + (f"\nData: {note}.\n" if note else "")
                      + (f"\n{resumed}.\n" if resumed else ""))
    written["report.json"], written["report.md"] = out / "report.json", out / "report.md"
    return written


# ---------------------------------------------------------------- sweeps
