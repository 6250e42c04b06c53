"""The demo report's uncertainty part: pool-then-calibrate, selective prediction and far-OOD detection.

- `calibration_set`: the held-out split the temperatures are fitted on (the dataset's `validation` split, else training
  images the run did not use); never the test split.
- `digits_ood`: a far out-of-distribution set, scikit-learn's handwritten digits (shipped inside the package, no
  download) upscaled to the demo's image size; `None` without scikit-learn (an optional extra).
- `write_uncertainty_report`: reliability diagrams before / after calibration, risk-coverage curves, and a Markdown
  table, for the single model, the ensemble of all members and the soup.
"""

from pathlib import Path

import numpy as np
import torch

from ..evaluation import plots
from ..evaluation.metrics import expected_calibration_error, reliability_diagram, softmax
from ..evaluation.predictions import RunPredictions
from ..evaluation.uncertainty import risk_coverage_curve
from .tasks import digit_images

CALIBRATION_SPLIT = "validation"


def calibration_set(task, train_samples: int, samples: int):
    """The first `samples` images of the dataset's `validation` split, or the `samples` training images after the
    first `train_samples` (which training did not use), prepared like the training data."""
    if CALIBRATION_SPLIT in task.splits:
        held_out = task.splits[CALIBRATION_SPLIT]
        return task.prepare(held_out.select(range(min(samples, len(held_out))))), f"{CALIBRATION_SPLIT} split"
    train = task.splits["train"]
    stop = min(train_samples + samples, len(train))
    if stop <= train_samples:
        raise ValueError(f"No held-out images for calibration: the training split has only {len(train)} images.")
    return task.prepare(train.select(range(train_samples, stop))), f"training images {train_samples}-{stop - 1}"


def digits_ood(processor, image_size: int, samples: int):
    """scikit-learn's 8x8 handwritten digits upscaled to `image_size` (`digit_images`) and prepared by `processor`
    (labels `-1`), or `None` when scikit-learn is not installed (`pip install hf_starsse[demo]`)."""
    digits = digit_images(image_size)
    if digits is None:
        return None

    def transform(batch):
        pixels = processor([picture.convert("RGB") for picture in batch["image"]], return_tensors="pt")
        return {"pixel_values": pixels["pixel_values"], "labels": torch.full((len(batch["image"]),), -1)}

    return digits.select(range(min(samples, len(digits)))).with_transform(transform)


def _models(predictions: RunPredictions) -> dict[str, tuple]:
    size = len(predictions.indices)
    models = {"single model (member 0)": ("member", predictions.indices[0], 1), f"ensemble of {size}": (
        "ensemble", None, size)}  # fmt: skip
    models.update(
        {name.replace("_", " "): (name, None, soup_size) for name, (soup_size, _) in predictions.soups.items()}
    )
    return models


def _calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.log(np.clip(probs, 1e-12, None)) / temperature)


def _table(rows: list[dict], models: dict, test_split: str, ood: str | None) -> list[str]:
    columns = [
        "model",
        "ece",
        "ece_calibrated",
        "nll",
        "nll_calibrated",
        "temperature",
        "aurc",
        "accuracy_at_90",
        "accuracy_at_80",
    ]
    if ood is not None:
        columns += [f"ood_{ood}_auroc_max_prob", f"ood_{ood}_auroc_entropy", f"ood_{ood}_auroc_mutual_information",
                    f"ood_{ood}_fpr95_max_prob"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for label, (model, member, size) in models.items():
        row = next(
            r for r in rows if (r["model"], r["member"], r["size"], r["split"]) == (model, member, size, test_split)
        )
        cells = [label] + [f"{row[c]:.4f}" if isinstance(row.get(c), float) else "" for c in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_uncertainty_report(
    predictions: RunPredictions,
    rows: list[dict],
    report_dir: Path,
    test_split: str = "test",
    ood_description: str = "a far-OOD set",
) -> list[str]:
    """
    Save `reliability.png` (before / after calibration, on the test split) and `risk_coverage.png` for the single
    model, the ensemble of all members and the soups, and return the report's Markdown section.

    Args:
        predictions (`RunPredictions`): From `predict_run` (with the calibration split and, optionally, the OOD set).
        rows (`list[dict]`): `evaluation_rows(predictions, calibration_split="validation")`.
        report_dir (`Path`): Where the plots go.
        test_split (`str`, *optional*, defaults to `"test"`): The split the plots and the table show.
        ood_description (`str`, *optional*): What the OOD set of `predictions` is, for the report's text.
    """
    models = _models(predictions)
    labels = predictions.labels[test_split]
    before, after, curves = {}, {}, {}
    for label, (model, member, size) in models.items():
        probs = predictions.probs(model, member, size, test_split)
        row = next(r for r in rows if (r["model"], r["member"], r["size"], r["split"]) == (model, member, size,
                   test_split))  # fmt: skip
        calibrated = _calibrated(probs, row["temperature"])
        before[label] = reliability_diagram(probs, labels) | {"ece": expected_calibration_error(probs, labels)}
        after[label] = reliability_diagram(calibrated, labels) | {
            "ece": expected_calibration_error(calibrated, labels)
        }
        curves[label] = risk_coverage_curve(probs, labels)
    title = f"Reliability on the {test_split} split (temperatures fitted on the {CALIBRATION_SPLIT} split)"
    plots.plot_reliability_grid(
        {"before calibration": before, "after calibration": after},
        report_dir / "reliability.png",
        title,
    )
    plots.plot_risk_coverage(curves, report_dir / "risk_coverage.png", f"Risk-coverage on the {test_split} split")
    ood = predictions.ood_splits[0] if predictions.ood_splits else None
    ood_text = (
        f"`{ood}`: {ood_description}" if ood else "none (the image demo's needs scikit-learn: `hf_starsse[demo]`)"
    )
    return [
        "",
        "## Calibration, selective prediction and OOD detection",
        "",
        f"On the {test_split} split. `*_calibrated`: after one temperature per model fitted on the "
        f"`{CALIBRATION_SPLIT}` split (for the ensemble: after pooling). `accuracy_at_90/80`: accuracy on the 90% / "
        f"80% most confident examples. OOD: {ood_text}; AUROC by max probability, entropy and (ensemble) mutual "
        "information, FPR at 95% TPR by max probability. Plots: `reliability.png`, `risk_coverage.png`.",
        "",
        *_table(rows, models, test_split, ood),
    ]


__all__ = ["calibration_set", "digits_ood", "write_uncertainty_report"]
