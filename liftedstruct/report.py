"""Side-by-side tables against the paper and the paper's figure types:
Recall@K curves (Fig. 6/7/12), Barnes-Hut t-SNE (Fig. 9/11/15) and
retrieval grids of a query and its 5 nearest neighbours (Fig. 8/10/13/14)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from liftedstruct.datasets import datum_image, read_datums  # noqa: E402
from liftedstruct.paths import REPO_ROOT  # noqa: E402

PAPER_RESULTS = REPO_ROOT / "data" / "paper_results.json"
METRIC_ORDER = ("nmi", "f1", "map@r", "r_precision")


def recall_keys(scores: dict) -> list[str]:
    keys = [k for k in scores if re.fullmatch(r"recall@\d+", k)]
    return sorted(keys, key=lambda k: int(k.split("@")[1]))


def paper_numbers(dataset: str, method: str, embedding: int,
                  path: Path = PAPER_RESULTS) -> dict:
    """Published numbers (percent) for one configuration, or {}."""
    table = json.loads(path.read_text())
    return table.get(dataset, {}).get(method, {}).get(str(embedding), {})


def comparison(results: dict[str, dict], dataset: str, embedding: int) -> dict:
    """{method: {metric: {"ours": %, "paper": % or None, "diff": ...}}}."""
    table = {}
    for method, scores in results.items():
        paper = paper_numbers(dataset, method, embedding)
        rows = {}
        for key in recall_keys(scores) + [k for k in METRIC_ORDER if k in scores]:
            ours = 100 * scores[key]
            theirs = paper.get(key)
            rows[key] = {"ours": ours, "paper": theirs,
                         "diff": None if theirs is None else ours - theirs}
        table[method] = {"metrics": rows, "paper_source": paper.get("source")}
    return table


def markdown_table(table: dict, dataset: str, embedding: int) -> str:
    metrics: list[str] = []
    for entry in table.values():
        metrics += [m for m in entry["metrics"] if m not in metrics]
    lines = [f"### {dataset}, embedding {embedding} (percent; ours / paper / difference)", "",
             "| method | " + " | ".join(metrics) + " |",
             "| --- | " + " | ".join("---" for _ in metrics) + " |"]
    for method, entry in table.items():
        cells = []
        for metric in metrics:
            row = entry["metrics"].get(metric)
            if row is None:
                cells.append("")
            elif row["paper"] is None:
                cells.append(f"{row['ours']:.1f}")
            else:
                cells.append(f"{row['ours']:.1f} / {row['paper']:.1f} / {row['diff']:+.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    sources = {e["paper_source"] for e in table.values() if e["paper_source"]}
    if sources:
        lines += ["", "Paper numbers: " + "; ".join(sorted(sources)) + "."]
    return "\n".join(lines) + "\n"


def plot_recall_curves(results: dict[str, dict], path: Path, title: str,
                       paper: dict[str, dict] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, scores in results.items():
        keys = recall_keys(scores)
        ks = [int(k.split("@")[1]) for k in keys]
        line, = ax.plot(ks, [100 * scores[k] for k in keys], marker="o", label=method)
        theirs = (paper or {}).get(method, {})
        paper_keys = [k for k in keys if k in theirs]
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tsne(features: np.ndarray, labels: np.ndarray, path: Path, title: str,
              images: list[np.ndarray] | None = None, max_points: int = 3000,
              seed: int = 0) -> Path:
    """Barnes-Hut t-SNE of (a sample of) the embedding, coloured by class or,
    with images, drawn with thumbnails as in the paper's figures."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(features), size=min(max_points, len(features)),
                                replace=False))
    perplexity = min(30.0, max(2.0, (len(chosen) - 1) / 3))
    points = TSNE(n_components=2, method="barnes_hut", perplexity=perplexity,
                  init="pca", random_state=seed).fit_transform(features[chosen])
    fig, ax = plt.subplots(figsize=(7, 7))
    if images is None:
        ax.scatter(points[:, 0], points[:, 1], c=labels[chosen], cmap="tab20", s=6)
    else:
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        ax.scatter(points[:, 0], points[:, 1], s=0)
        zoom = 14 / max(images[0].shape[:2])
        for point, index in zip(points, chosen, strict=True):
            thumb = OffsetImage(images[index][:, :, ::-1], zoom=zoom)
            ax.add_artist(AnnotationBbox(thumb, point, frameon=False))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_retrieval(features: np.ndarray, labels: np.ndarray, images: list[np.ndarray],
                   path: Path, title: str, queries: int = 6, seed: int = 0) -> Path:
    """Query images and their 5 nearest neighbours; green frame = same class."""
    from liftedstruct.metrics import nearest_neighbors

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(features), size=min(queries, len(features)), replace=False)
    neighbors = nearest_neighbors(features, 5)[chosen]
    fig, axes = plt.subplots(len(chosen), 6, figsize=(6 * 1.3, len(chosen) * 1.3))
    axes = np.atleast_2d(axes)
    for row, (query, found) in enumerate(zip(chosen, neighbors, strict=True)):
        for col, index in enumerate([query, *found]):
            ax = axes[row, col]
            ax.imshow(images[index][:, :, ::-1])
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_lmdb_images(path: Path, keys: list[str]) -> list[np.ndarray]:
    """The BGR images of the given keys of a test LMDB."""
    wanted = {str(key): index for index, key in enumerate(keys)}
    images: list = [None] * len(keys)
    for key, datum in read_datums(path):
        if key in wanted:
            images[wanted[key]] = datum_image(datum)
    return images


def write_report(results: dict[str, dict], dataset: str, embedding: int, out: Path,
                 features: dict[str, Path] | None = None, images_lmdb: Path | None = None,
                 seed: int = 0, tsne_points: int = 3000) -> dict[str, Path]:
    """report.md, report.json and the figures in out; returns what was written."""
    out.mkdir(parents=True, exist_ok=True)
    table = comparison(results, dataset, embedding)
    written = {}
    markdown = markdown_table(table, dataset, embedding)
    (out / "report.md").write_text(markdown)
    (out / "report.json").write_text(json.dumps(
        {"dataset": dataset, "embedding": embedding, "methods": table}, indent=2) + "\n")
    written["report.md"], written["report.json"] = out / "report.md", out / "report.json"
    paper = {m: paper_numbers(dataset, m, embedding) for m in results}
    written["recall"] = plot_recall_curves(
        results, out / "recall_at_k.png", f"{dataset}: Recall@K, embedding {embedding}", paper)
    for method, path in (features or {}).items():
        data = np.load(path)
        feats, labels = data["features"], data["labels"]
        images = None
        if images_lmdb is not None:
            images = load_lmdb_images(images_lmdb, [str(i) for i in data["ids"]])
        use_thumbnails = images is not None and len(feats) <= 1500
        written[f"tsne_{method}"] = plot_tsne(
            feats, labels, out / f"tsne_{method}.png", f"{dataset} {method}: t-SNE",
            images if use_thumbnails else None, tsne_points, seed)
        if images is not None:
            written[f"retrieval_{method}"] = plot_retrieval(
                feats, labels, images, out / f"retrieval_{method}.png",
                f"{dataset} {method}: query and 5 nearest neighbours", seed=seed)
    return written
