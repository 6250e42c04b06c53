"""The demo's report: one row per model (members, their mean, the ensemble, soups) with its metrics in distribution
and under shift, its comparison with member 0, `results.csv`, `results.md` and plots."""

from pathlib import Path

import numpy as np

from ..evaluation import plots
from ..evaluation.corruptions import summarize_robustness
from ..storage.atomic_io import atomic_write_text
from .uncertainty_report import CALIBRATION_SPLIT

SUMMARY_METRICS = ("accuracy", "nll", "ece", "brier")


def summarize(rows: list[dict]) -> list[dict]:
    """
    One row per model (each member, the mean member, the full ensemble, soups) with its clean test metrics, its
    metrics averaged over the corrupted splits (`shift_*`) and its training cost in optimizer steps.
    """
    size = max(row["size"] for row in rows if row["model"] == "ensemble")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["model"] == "member":
            groups.setdefault(f"member {row['member']}", []).append(row)
        elif row["model"] != "ensemble" or row["size"] == size:
            label = f"ensemble ({size})" if row["model"] == "ensemble" else row["model"]
            groups.setdefault(label, []).append(row)
    members = [label for label in groups if label.startswith("member ")]
    groups = {
        **{label: groups[label] for label in members},
        "members (mean)": [row for label in members for row in groups[label]],
        **{label: group for label, group in groups.items() if label not in members},
    }
    summary = []
    for label, group in groups.items():
        clean = [row for row in group if "/" not in row["split"]]
        shift = [row for row in group if "/" in row["split"]]
        entry = {"model": label, "steps": clean[0]["steps"] if label != "members (mean)" else None}
        for prefix, part in (("", clean), ("shift_", shift)):
            for metric in SUMMARY_METRICS:
                entry[prefix + metric] = float(np.mean([row[metric] for row in part])) if part else None
        summary.append(entry)
    return summary


def versus_member0(summary: list[dict]) -> list[str]:
    """How the ensemble and the soup compare with member 0, the single fine-tune a user would otherwise ship: their
    differences in accuracy and NLL, in distribution and under the shift, and a sentence saying which win."""
    first = next(row for row in summary if row["model"] == "member 0")
    compared = [row for row in summary if row["model"].startswith(("ensemble", "uniform_soup"))]
    metrics = ("accuracy", "nll", "shift_accuracy", "shift_nll")
    lines = ["", "**Against member 0** (the single fine-tune; accuracy higher and NLL lower is better):", "",
             "| model | Δ accuracy | Δ NLL | Δ shift accuracy | Δ shift NLL |", "|---|---|---|---|---|"]  # fmt: skip
    verdicts = []
    for row in compared:
        deltas = {m: row[m] - first[m] for m in metrics if row[m] is not None and first[m] is not None}
        cells = [f"{deltas[m]:+.4f}" if m in deltas else "" for m in metrics]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
        for where, (accuracy, nll) in (("in distribution", metrics[:2]), ("under shift", metrics[2:])):
            if accuracy in deltas:
                wins = deltas[accuracy] > 0 and deltas[nll] < 0
                verdicts.append(f"{row['model']} {'beats' if wins else 'does not beat'} member 0 {where}")
    return lines + ["", "; ".join(verdicts) + "."]


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    """A Markdown table of `rows` (floats with 4 decimals, `None` as an empty cell)."""

    def cell(value) -> str:
        if value is None:
            return ""
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]


def _csv(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = [",".join(columns)]
    lines += [",".join("" if row[c] is None else str(row[c]) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], report_dir: Path, notes: list[str], sections: list[str] = ()) -> list[dict]:
    """Write `results.csv`, `results.md` (with `sections` at the end) and the plots of an evaluation into
    `report_dir`; returns the summary of the test and shift splits."""
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize([row for row in rows if row["split"] != CALIBRATION_SPLIT])
    atomic_write_text(report_dir / "results.csv", _csv(summary))
    columns = ["model", *SUMMARY_METRICS, *(f"shift_{m}" for m in SUMMARY_METRICS), "steps"]
    atomic_write_text(report_dir / "results.md", "\n".join(["# Demo results", "", *notes, "", *markdown_table(
        summary, columns), *versus_member0(summary), *sections]) + "\n")  # fmt: skip
    for metric in ("accuracy", "nll"):
        plots.plot_metric_vs_size(rows, report_dir / f"{metric}_vs_size.png", metric=metric)
    robustness = summarize_robustness(rows)
    if robustness:
        plots.plot_corruption_bars(robustness, report_dir / "corruptions.png")
    return summary
