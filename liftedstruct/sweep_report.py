"""A sweep's report: Recall@1, NMI and F1 against the embedding size (the
paper's Fig. 6-8/12), one curve per method with the spread over seeds, the
baselines as flat lines, and the table and the sizes where lifted leads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from liftedstruct.constants import METHODS
from liftedstruct.errors import LiftedError
from liftedstruct.files import atomic_write_text

# pyplot with the Agg backend that run_report selects before importing it.
from liftedstruct.run_report import plt, published, resume_note, save_figure

# A sweep's figure and table: the paper's Fig. 6-8/12 panels.
SWEEP_METRICS = {"recall@1": "Recall@1", "nmi": "NMI", "f1": "F1"}
BASELINE_NAMES = {"raw": "raw pixels", "pool5": "ImageNet pool5"}


def sweep_runs(results: dict[str, dict], baseline: str) -> dict[str, dict[int, dict[int, dict]]]:
    """{method: {embedding size: {seed: scores}}} of a sweep's results.json
    entries (each names its method, size and seed), the baseline left out."""
    runs: dict[str, dict[int, dict[int, dict]]] = {}
    for name, scores in results.items():
        if name == baseline:
            continue
        method, size, seed = (scores.get(k) for k in ("method", "embedding", "seed"))
        if not isinstance(method, str) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in (size, seed)):
            raise LiftedError(f"results {name!r}: no method, embedding and seed (got "
                              f"{method!r}, {size!r}, {seed!r})")
        seeds = runs.setdefault(method, {}).setdefault(size, {})
        if seed in seeds:
            raise LiftedError(f"results {name!r}: {method} at {size} with seed {seed} twice")
        seeds[seed] = scores
    if not runs:
        raise LiftedError("no results to draw beside the baseline")
    return runs


def seed_spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max."""
    array = np.array(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1
            else 0.0, "min": float(array.min()), "max": float(array.max())}


def sweep_table(runs: dict[str, dict[int, dict[int, dict]]], dataset: str) -> dict:
    """{method: {size: {metric: {"seeds": {seed: value}, "mean", "std", "min",
    "max", "paper", "paper_size_stated"}}}} in percent for the figure's
    metrics; "paper" is the published value at that size (None when none)."""
    table: dict = {}
    for method, sizes in runs.items():
        for size, seeds in sorted(sizes.items()):
            paper = published(dataset, method, size)
            row = {}
            for metric in SWEEP_METRICS:
                values = {seed: 100 * scores[metric] for seed, scores in sorted(seeds.items())}
                row[metric] = {"seeds": values, **seed_spread(list(values.values())),
                               "paper": paper.get(metric),
                               "paper_size_stated": paper.get("size_stated")}
            table.setdefault(method, {})[size] = row
    return table


def leads(table: dict, method: str = "lifted") -> list[dict]:
    """For each metric and size: whether `method`'s lowest seed lies above
    every other method's highest seed (a lead beyond the seed spread), with
    the methods it does not clear and the mean margin to the best other."""
    others = [m for m in table if m != method]
    if method not in table or not others:
        return []
    found = []
    for metric in SWEEP_METRICS:
        for size, row in table[method].items():
            ours = row[metric]
            rivals = {m: table[m][size][metric] for m in others if size in table[m]}
            if not rivals:
                continue
            best = max(rivals, key=lambda m: rivals[m]["mean"])
            overlapping = [m for m, r in rivals.items() if r["max"] >= ours["min"]]
            found.append({"metric": metric, "embedding": size, "leads": not overlapping,
                          "overlapping": overlapping, "best_other": best,
                          "margin": ours["mean"] - rivals[best]["mean"]})
    return found


def lead_summary(table: dict, found: list[dict], method: str = "lifted") -> str:
    """One paragraph on where `method` leads beyond the seed spread."""
    if not found:
        return ""
    seeds = len(next(iter(next(iter(table[method].values())).values()))["seeds"])
    parts = {True: [], False: []}
    for metric, label in SWEEP_METRICS.items():
        for leading in (True, False):
            rows = [f for f in found if f["metric"] == metric and f["leads"] == leading]
            if not rows:
                continue
            if leading:
                parts[True].append(f"{label} at {', '.join(str(f['embedding']) for f in rows)}")
                continue
            for f in rows:
                ours = table[method][f["embedding"]][metric]
                theirs = ", ".join(
                    f"{m} {table[m][f['embedding']][metric]['min']:.1f}–"
                    f"{table[m][f['embedding']][metric]['max']:.1f}" for m in f["overlapping"])
                parts[False].append(f"{label} at {f['embedding']} ({method} "
                                    f"{ours['min']:.1f}–{ours['max']:.1f}, {theirs})")
    text = (f"{method} leads beyond the spread over {seeds} seed(s) (its lowest seed above "
            "every other method's highest) ")
    text += f"for {'; '.join(parts[True])}" if parts[True] else "nowhere"
    if parts[False]:
        text += f"; not for {'; '.join(parts[False])}"
    return text + "."


def sweep_markdown(table: dict, baseline: dict[str, dict], dataset: str) -> str:
    seeds = sorted({s for rows in table.values() for row in rows.values()
                    for s in row["recall@1"]["seeds"]})
    lines = [f"### {dataset}: every method at every embedding size (percent; mean and "
             f"min–max over seeds {', '.join(map(str, seeds))})", "",
             "| method | embedding | " + " | ".join(SWEEP_METRICS.values()) + " |",
             "| --- | --- | " + " | ".join("---" for _ in SWEEP_METRICS) + " |"]
    unstated = False
    for method, rows in table.items():
        for size, row in rows.items():
            cells = []
            for metric in SWEEP_METRICS:
                entry = row[metric]
                text = f"{entry['mean']:.1f} ({entry['min']:.1f}–{entry['max']:.1f})"
                if entry["paper"] is not None:
                    mark = "" if entry["paper_size_stated"] else "*"
                    unstated = unstated or bool(mark)
                    text += f"; paper {entry['paper']:.1f}{mark}"
                cells.append(text)
            lines.append(f"| {method} | {size} | " + " | ".join(cells) + " |")
    for name, scores in baseline.items():
        cells = [f"{100 * scores[metric]:.1f}" for metric in SWEEP_METRICS]
        lines.append(f"| {BASELINE_NAMES.get(name, name)} (untrained) | – | "
                     + " | ".join(cells) + " |")
    lines.append("")
    sources = sorted({published(dataset, method, size)["source"]
                      for method, rows in table.items() for size, row in rows.items()
                      if any(row[m]["paper"] is not None for m in SWEEP_METRICS)})
    if sources:
        lines.append("Paper numbers (Song et al., CVPR 2016, as tabulated in): "
                     + "; ".join(sources) + "." + (" *: the source states no embedding "
                                                   "size." if unstated else ""))
    else:
        lines.append("No published numbers to compare at these sizes.")
    return "\n".join(lines) + "\n"


def sweep_figure(table: dict, baseline: dict[str, dict], dataset: str):
    """Recall@1, NMI and F1 against the embedding size: a line per method
    through its mean over seeds, a band from its lowest to its highest seed,
    the baseline as a horizontal line, the paper's values as stars (at their
    size) or dotted lines (a source that states no size)."""
    sizes = sorted({size for rows in table.values() for size in rows})
    seeds = sorted({s for rows in table.values() for row in rows.values()
                    for s in row["recall@1"]["seeds"]})
    fig, axes = plt.subplots(1, len(SWEEP_METRICS), figsize=(4.3 * len(SWEEP_METRICS), 4.2))
    for ax, (metric, label) in zip(axes, SWEEP_METRICS.items(), strict=True):
        for index, (method, rows) in enumerate(table.items()):
            color = f"C{METHODS.index(method) if method in METHODS else index}"
            xs = sorted(rows)
            entries = [rows[size][metric] for size in xs]
            means = np.array([e["mean"] for e in entries])
            low, high = (np.array([e[k] for e in entries]) for k in ("min", "max"))
            ax.plot(xs, means, marker="o", color=color, label=method)
            ax.fill_between(xs, low, high, color=color, alpha=0.2, lw=0)
            ax.errorbar(xs, means, yerr=[means - low, high - means], fmt="none",
                        ecolor=color, capsize=3, lw=1)
            stated = [(x, e["paper"]) for x, e in zip(xs, entries, strict=True)
                      if e["paper"] is not None and e["paper_size_stated"]]
            if stated:
                ax.plot(*zip(*stated, strict=True), ls="none", marker="*", ms=13,
                        mfc="none", mec=color, mew=1.5, label=f"{method} (paper)")
            unstated = [e["paper"] for e in entries
                        if e["paper"] is not None and not e["paper_size_stated"]]
            if unstated:
                ax.axhline(unstated[0], color=color, ls=":", lw=1.5,
                           label=f"{method} (paper, size not stated)")
        for name, scores in baseline.items():
            ax.axhline(100 * scores[metric], color="black", ls="--", lw=1.2,
                       label=f"{BASELINE_NAMES.get(name, name)} (untrained)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlabel("embedding size")
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(text, handle)
    fig.legend(list(entries.values()), list(entries), loc="lower center",
               ncol=min(len(entries), 6), fontsize=9, frameon=False)
    fig.suptitle(f"{dataset}: test-set scores against embedding size (line: mean over "
                 f"seeds {', '.join(map(str, seeds))}; band: lowest to highest seed)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.07 * (1 + (len(entries) - 1) // 6), 1, 1))
    return fig


def write_sweep_report(results: dict[str, dict], baseline: str, dataset: str, out: Path,
                       note: str = "") -> dict[str, Path]:
    """A sweep's figure (sweep.png), report.json and, last, report.md in out;
    returns what was written. results: results.json, every entry naming its
    method, embedding size and seed but the baseline's."""
    table = sweep_table(sweep_runs(results, baseline), dataset)
    base = {baseline: results[baseline]} if baseline in results else {}
    out.mkdir(parents=True, exist_ok=True)
    figure = sweep_figure(table, base, dataset)
    save_figure(figure, out / "sweep.png")
    plt.close(figure)
    found = leads(table)
    summary = lead_summary(table, found)
    resumed = resume_note(results)
    atomic_write_text(out / "report.json", json.dumps(
        {"dataset": dataset, "sweep": table, "leads": found,
         "baseline": {name: {m: 100 * s[m] for m in SWEEP_METRICS} for name, s in base.items()},
         "data": note,
         "resumes": {m: r["resumes"] for m, r in results.items() if r.get("resumes")}},
        indent=2) + "\n")
    atomic_write_text(out / "report.md", sweep_markdown(table, base, dataset)
                      + (f"\n{summary}\n" if summary else "")
                      + (f"\nData: {note}.\n" if note else "")
                      + (f"\n{resumed}.\n" if resumed else ""))
    return {"sweep": out / "sweep.png", "report.json": out / "report.json",
            "report.md": out / "report.md"}
