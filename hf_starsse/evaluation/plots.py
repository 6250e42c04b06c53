"""Plots of evaluation results, saved as PNG: ensemble quality vs size, interpolation curves, reliability diagrams
(also before / after calibration), risk-coverage curves, per-corruption robustness. Each function saves the figure
to `path` and returns it."""

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..storage.atomic_io import atomic_write_bytes

METRIC_LABELS = {
    "accuracy": "accuracy",
    "nll": "negative log-likelihood",
    "ece": "expected calibration error",
    "brier": "Brier score",
    "mean_per_class_accuracy": "mean per-class accuracy",
}


def _save(figure: Figure, path: str | os.PathLike) -> Figure:
    """Save `figure` atomically (the format from the file suffix, PNG by default) and close it."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=120, format=Path(path).suffix[1:] or "png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return figure


def plot_metric_vs_size(rows: list[dict], path, metric: str = "accuracy", split: str = "test") -> Figure:
    """
    Ensemble `metric` against ensemble size, one line per method, with the mean member metric as a dashed line.

    Args:
        rows (`list[dict]`): Rows of `evaluate_ensemble` (several runs' rows may be concatenated).
        path (`str` or `os.PathLike`): Where to save the PNG.
        metric (`str`, *optional*, defaults to `"accuracy"`): Column to plot.
        split (`str`, *optional*, defaults to `"test"`): Which split's rows to plot.
    """
    figure, axis = plt.subplots(figsize=(6, 4))
    methods = list(dict.fromkeys(row["method"] for row in rows if row["split"] == split))
    for color, method in zip(plt.cm.tab10.colors, methods):
        ensemble = sorted(
            (row["size"], row[metric])
            for row in rows
            if row["method"] == method and row["split"] == split and row["model"] == "ensemble"
        )
        members = [
            row[metric]
            for row in rows
            if row["method"] == method and row["split"] == split and row["model"] == "member"
        ]
        if ensemble:
            sizes, values = zip(*ensemble)
            axis.plot(sizes, values, marker="o", color=color, label=f"{method} ensemble")
        if members:
            axis.axhline(np.mean(members), color=color, linestyle="--", linewidth=1, label=f"{method} mean member")
    axis.set_xlabel("ensemble size (members)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(METRIC_LABELS.get(metric, metric))
    axis.set_title(f"Ensemble {METRIC_LABELS.get(metric, metric)} vs size ({split})")
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_interpolation(curves: dict[str, dict], path, split: str = "test", metric: str = "accuracy") -> Figure:
    """
    Interpolation curves (see `interpolation_curve`) of one split, e.g. between member 0 and each other member.

    Args:
        curves (`dict`): Curves by label, e.g. `{"member 0 -> 1": curve, ...}`.
        path (`str` or `os.PathLike`): Where to save the PNG.
        split (`str`, *optional*, defaults to `"test"`): Which split of the curves to plot.
        metric (`str`, *optional*, defaults to `"accuracy"`): `"accuracy"` or `"loss"`.
    """
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        axis.plot(curve["alpha"], curve[split][metric], marker="o", label=label)
    axis.set_xlabel("interpolation coefficient α (0: first model, 1: second)")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric.capitalize()} along linear paths between members ({split})")
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_reliability(diagram: dict, path, title: str = "Reliability diagram") -> Figure:
    """
    A reliability diagram from `metrics.reliability_diagram`: accuracy per confidence bin against the diagonal.

    Args:
        diagram (`dict`): `bin_edges`, `confidence`, `accuracy`, `count` per bin.
        path (`str` or `os.PathLike`): Where to save the PNG.
        title (`str`, *optional*): Figure title.
    """
    figure, axis = plt.subplots(figsize=(5, 5))
    edges = np.asarray(diagram["bin_edges"])
    filled = np.asarray(diagram["count"]) > 0
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    axis.bar(centers[filled], np.asarray(diagram["accuracy"])[filled], width=width * 0.9, label="accuracy per bin")
    axis.plot([0, 1], [0, 1], color="black", linestyle="--", label="perfect calibration")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence (max probability)")
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.legend(loc="upper left")
    return _save(figure, path)


def default_models(labels: list[str]) -> list[str]:
    """
    The models a robustness plot shows by default: the single model (`member 0`), the largest ensemble and the soups
    of a `summarize_robustness` table; every label when the table has none of those.
    """
    ensembles = [label for label in labels if label.startswith("ensemble (")]
    largest = max(ensembles, key=lambda label: int(label[len("ensemble (") : -1]), default=None)
    chosen = [label for label in labels if label == "member 0" or label == largest or label.endswith("_soup")]
    return chosen or list(labels)


def _display_name(label: str) -> str:
    if label == "member 0":
        return "single model (member 0)"
    if label.startswith("ensemble (") and label.endswith(")"):
        return f"ensemble of {label[len('ensemble (') : -1]}"
    return label.replace("_", " ")


def plot_corruption_bars(
    results: dict[str, dict[str, float]], path, metric: str = "accuracy", models: list[str] | None = None
) -> Figure:
    """
    Grouped bars of a metric per corruption (averaged over severities), one colour per model; the `"mean"` over
    corruptions, if present, comes last, set apart by a gap and a line.

    Args:
        results (`dict`): `{corruption: {model label: value}}`, e.g. from `corruptions.summarize_robustness`.
        path (`str` or `os.PathLike`): Where to save the PNG.
        metric (`str`, *optional*, defaults to `"accuracy"`): Name of the metric, for the axis label.
        models (`list[str]`, *optional*): The model labels to show, in order (default: `default_models`, i.e. the
            single model, the ensemble of all members and the soups, rather than every ensemble size).
    """
    corruptions = [name for name in results if name != "mean"] + (["mean"] if "mean" in results else [])
    labels = list(dict.fromkeys(model for values in results.values() for model in values))
    models = list(models) if models is not None else default_models(labels)
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(corruptions)) + 2, 4))
    width = 0.8 / max(1, len(models))
    positions = np.arange(len(corruptions)) + np.where(np.array(corruptions) == "mean", 0.6, 0.0)
    for index, (model, color) in enumerate(zip(models, plt.cm.tab10.colors)):
        values = [results[c].get(model, np.nan) for c in corruptions]
        offsets = positions + index * width - 0.4 + width / 2
        axis.bar(offsets, values, width=width, color=color, label=_display_name(model))
    if "mean" in results and len(corruptions) > 1:
        axis.axvline((positions[-1] + positions[-2]) / 2, color="grey", linestyle="--", linewidth=1)
    axis.set_xticks(positions, corruptions, rotation=30, ha="right")
    if "mean" in results:
        axis.get_xticklabels()[-1].set_fontweight("bold")
    axis.set_xlabel("corruption (mean over severities)")
    axis.set_ylabel(METRIC_LABELS.get(metric, metric))
    axis.set_title(f"Robustness: {METRIC_LABELS.get(metric, metric)} per corruption")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1))  # outside the bars
    axis.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def _reliability_panel(axis, diagram: dict, title: str) -> None:
    edges = np.asarray(diagram["bin_edges"])
    filled = np.asarray(diagram["count"]) > 0
    centers = (edges[:-1] + edges[1:]) / 2
    accuracy, confidence = np.asarray(diagram["accuracy"]), np.asarray(diagram["confidence"])
    width = (edges[1] - edges[0]) * 0.9
    axis.bar(centers[filled], accuracy[filled], width=width, color="tab:blue", label="accuracy")
    gap_bottom = np.minimum(accuracy, confidence)[filled]
    gap = np.abs(accuracy - confidence)[filled]
    axis.bar(centers[filled], gap, bottom=gap_bottom, width=width, fill=False, edgecolor="tab:red", hatch="///",
             linewidth=0.8, label="gap to confidence")  # fmt: skip
    axis.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(title, fontsize=10)


def plot_reliability_grid(diagrams: dict[str, dict[str, dict]], path, title: str | None = None) -> Figure:
    """
    Reliability diagrams side by side: one column per model, one row per variant (e.g. before / after calibration).

    Args:
        diagrams (`dict`): `{variant: {model label: diagram}}` (diagrams from `metrics.reliability_diagram`, with an
            optional `"ece"` shown in the panel title), e.g. `{"before calibration": ..., "after calibration": ...}`.
        path (`str` or `os.PathLike`): Where to save the PNG.
        title (`str`, *optional*): Figure title.
    """
    variants = list(diagrams)
    models = list(dict.fromkeys(model for row in diagrams.values() for model in row))
    figure, axes = plt.subplots(
        len(variants), len(models), figsize=(3.2 * len(models), 3.2 * len(variants)), squeeze=False
    )
    for row, variant in enumerate(variants):
        for column, model in enumerate(models):
            axis = axes[row][column]
            diagram = diagrams[variant].get(model)
            if diagram is None:
                axis.set_visible(False)
                continue
            ece = f"\nECE {diagram['ece']:.4f}" if "ece" in diagram else ""
            _reliability_panel(axis, diagram, f"{model}{ece}")
            if row == len(variants) - 1:
                axis.set_xlabel("confidence")
            if column == 0:
                axis.set_ylabel(f"{variant}\n\naccuracy", fontweight="bold")
    axes[0][0].legend(loc="upper left", fontsize=8)
    figure.suptitle(title or "Reliability diagrams (dashed: perfect calibration)")
    return _save(figure, path)


def plot_risk_coverage(curves: dict[str, dict], path, title: str = "Risk-coverage (selective prediction)") -> Figure:
    """
    Risk-coverage curves (`uncertainty.risk_coverage_curve`), one line per model, with each curve's AURC.

    Args:
        curves (`dict`): `{model label: {"coverage": ..., "risk": ...}}`.
        path (`str` or `os.PathLike`): Where to save the PNG.
        title (`str`, *optional*): Figure title.
    """
    figure, axis = plt.subplots(figsize=(6, 4))
    for (label, curve), color in zip(curves.items(), plt.cm.tab10.colors):
        risk = np.asarray(curve["risk"])
        axis.plot(curve["coverage"], risk, color=color, label=f"{label} (AURC {risk.mean():.4f})")
    axis.set_xlabel("coverage (fraction of samples kept, most confident first)")
    axis.set_ylabel("risk (error rate of the kept samples)")
    axis.set_xlim(0, 1)
    axis.set_ylim(bottom=0)
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_sweep_heatmaps(cells: list[dict], path, method: str = "StarSSE") -> Figure:
    """
    Heatmaps over the sweep grid (cycle learning-rate ratio x cycle length ratio) of the ensemble accuracy, the mean
    member accuracy (causal language models: their NLL per token) and the interpolation barrier: where accuracy drops
    and the barrier rises, the cycles leave the pre-train basin.

    Args:
        cells (`list[dict]`): Cells of `sweep_cycle_hyperparameters` (`lr_ratio`, `length_ratio` and the scores).
        path (`str` or `os.PathLike`): Where to save the PNG.
        method (`str`, *optional*, defaults to `"StarSSE"`): The swept method, named in the title.
    """
    lr_ratios = sorted({cell["lr_ratio"] for cell in cells})
    length_ratios = sorted({cell["length_ratio"] for cell in cells})
    scored = ("accuracy", "accuracy") if "ensemble_accuracy" in cells[0] else ("nll", "NLL per token")
    panels = (
        (f"ensemble_{scored[0]}", f"ensemble {scored[1]}"),
        (f"member_{scored[0]}", f"mean member {scored[1]}"),
        ("barrier", "accuracy barrier"),
    )
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, (key, title) in zip(axes, panels):
        grid = np.full((len(length_ratios), len(lr_ratios)), np.nan)
        for cell in cells:
            grid[length_ratios.index(cell["length_ratio"]), lr_ratios.index(cell["lr_ratio"])] = cell[key]
        lower_is_better = key == "barrier" or key.endswith("_nll")
        image = axis.imshow(grid, origin="lower", cmap="viridis_r" if lower_is_better else "viridis")
        for (row, column), value in np.ndenumerate(grid):
            if not np.isnan(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"  # readable on the cell
                axis.text(column, row, f"{value:.3f}", ha="center", va="center", color=ink, fontsize=8)
        axis.set_xticks(range(len(lr_ratios)), [f"{r:g}" for r in lr_ratios])
        axis.set_yticks(range(len(length_ratios)), [f"{r:g}" for r in length_ratios])
        axis.set_xlabel("cycle learning rate / first learning rate")
        axis.set_ylabel("cycle length / first length")
        axis.set_title(title)
        figure.colorbar(image, ax=axis, label=title)
    figure.suptitle(f"{method} cycle-hyperparameter sweep (validation split)")
    return _save(figure, path)
