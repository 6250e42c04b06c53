"""`evaluate_ensemble`: one tidy table of metrics for every member, the ensemble of each size 1..K, and soups:
accuracy, NLL, calibration (before and after pool-then-calibrate), selective prediction and OOD detection.

For benchmarks and reports, `predict_run` returns every model's probabilities once and `evaluation_rows` turns them
into the table, so plots (reliability diagrams, risk-coverage curves) reuse the same predictions."""

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..storage.atomic_io import atomic_write_json, atomic_write_text
from .calibration import calibration_metrics, check_calibration_split, fit_temperature
from .heads import HEAD_METRICS, fit_variance_scale, regression_metrics, task_metrics
from .metrics import classification_metrics, disagreement, ensemble_gain, mean_pairwise_kl
from .predictions import RunPredictions, predict_run
from .uncertainty import ood_metrics, selective_metrics

RESULTS_NAME = "evaluation"


def model_cost(predictions: RunPredictions, model: str, member: int | None, size: int) -> int | None:
    """The optimizer steps of one model: a member's own, the first `size` members' for ensembles and soups."""
    steps = [predictions.steps[predictions.indices.index(member)]] if model == "member" else predictions.steps[:size]
    return None if None in steps else sum(steps)


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-12, None))


def _regression_rows(predictions: RunPredictions, model: str, member, size: int, calibration_split) -> list:
    """The rows of one regression model: RMSE, MAE and, for ensembles, the Gaussian NLL and 90% interval coverage
    under the members' variance (and under the variance scaled on `calibration_split`)."""
    scale = None
    if calibration_split is not None and predictions.variance(model, size, calibration_split) is not None:
        values = predictions.probs(model, member, size, calibration_split)
        variance = predictions.variance(model, size, calibration_split)
        scale = fit_variance_scale(values, variance, predictions.labels[calibration_split])
    rows = []
    for split, labels in predictions.labels.items():
        values, variance = predictions.probs(model, member, size, split), predictions.variance(model, size, split)
        row = {"method": predictions.method, "model": model, "member": member, "size": size, "split": split}
        row |= regression_metrics(values, labels, variance)
        if scale is not None:
            calibrated = regression_metrics(values, labels, scale * variance)
            row |= {"variance_scale": scale}
            row |= {f"{key}_calibrated": calibrated[key] for key in ("gaussian_nll", "coverage_90")}
        rows.append(row | {"steps": model_cost(predictions, model, member, size)})
    return rows


def _model_rows(predictions: RunPredictions, model: str, member, size: int, calibration_split: str | None) -> list:
    """The rows of one model: one per in-distribution split."""
    if predictions.head == "regression":
        return _regression_rows(predictions, model, member, size, calibration_split)
    temperature = None
    if calibration_split is not None:
        probs = predictions.probs(model, member, size, calibration_split)
        temperature = fit_temperature(_log(probs), predictions.labels[calibration_split])
    rows = []
    for split, labels in predictions.labels.items():
        if split in predictions.ood_splits:
            continue
        probs = predictions.probs(model, member, size, split)
        row = {"method": predictions.method, "model": model, "member": member, "size": size, "split": split}
        row |= task_metrics(predictions.head, probs, labels, predictions.examples[split], predictions.id2label)
        row |= classification_metrics(probs, labels) | selective_metrics(probs, labels)
        if temperature is not None:
            calibrated = calibration_metrics(_log(probs), labels, temperature)
            row |= {
                "temperature": temperature,
                "nll_calibrated": calibrated["nll"],
                "ece_calibrated": calibrated["ece"],
            }
        for ood in predictions.ood_splits:
            member_probs = (predictions.members[split][:size], predictions.members[ood][:size])
            if model != "ensemble" or size < 2:
                member_probs = (None, None)
            ood_probs = predictions.probs(model, member, size, ood)
            row |= {f"ood_{ood}_{k}": v for k, v in ood_metrics(probs, ood_probs, *member_probs).items()}
        if model == "ensemble":
            row |= _ensemble_columns(predictions, split, size, row)
        rows.append(row | {"steps": model_cost(predictions, model, member, size)})
    return rows


def _ensemble_columns(predictions: RunPredictions, split: str, size: int, row: dict) -> dict:
    member_probs, labels = predictions.members[split][:size], predictions.labels[split]
    member_metrics = [classification_metrics(probs, labels) for probs in member_probs]
    return {
        "disagreement": disagreement(member_probs),
        "mean_pairwise_kl": mean_pairwise_kl(member_probs),
        "accuracy_gain": ensemble_gain(row["accuracy"], [m["accuracy"] for m in member_metrics]),
        "nll_gain": ensemble_gain(row["nll"], [m["nll"] for m in member_metrics]),
    }


def evaluation_rows(predictions: RunPredictions, calibration_split: str | None = None) -> list[dict]:
    """
    The table of [`evaluate_ensemble`] from [`predict_run`]'s predictions, split by split for every model.

    Args:
        predictions (`RunPredictions`): The models' probabilities.
        calibration_split (`str`, *optional*): A held-out split (never a test split) on which each model's
            temperature is fitted after pooling (as `calibrate_ensemble` does), adding `temperature`,
            `nll_calibrated` and `ece_calibrated` to every row.
    """
    if calibration_split is not None:
        if calibration_split not in predictions.labels or calibration_split in predictions.ood_splits:
            raise ValueError(f"calibration_split={calibration_split!r} is not one of the labelled datasets.")
        check_calibration_split(predictions.labels[calibration_split], calibration_split)
    rows = []
    for model, member, size in predictions.models():
        rows += _model_rows(predictions, model, member, size, calibration_split)
    order = {split: position for position, split in enumerate(predictions.labels)}
    return sorted(rows, key=lambda row: order[row["split"]])  # split by split, as before


def write_evaluation(rows: list[dict], output_dir: str | os.PathLike) -> None:
    """Write `rows` as `evaluation.csv` and `evaluation.json` (NaN as null) into `output_dir`, atomically."""
    output_dir = Path(output_dir)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output_dir / f"{RESULTS_NAME}.csv", buffer.getvalue())
    strict = [{key: None if isinstance(v, float) and math.isnan(v) else v for key, v in row.items()} for row in rows]
    atomic_write_json(output_dir / f"{RESULTS_NAME}.json", strict)  # NaN (no pairs at size 1) as null


def evaluate_ensemble(
    source,
    datasets: dict,
    *,
    soups: tuple[str, ...] = ("uniform",),
    calibration_split: str | None = None,
    ood_datasets: dict | None = None,
    train_dataset=None,
    data_collator=None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    output_dir: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> list[dict]:
    """
    Evaluate every member, the ensemble of the first `size` members for `size` in 1..K, and soups, on every split.

    Args:
        source (`str`, `os.PathLike` or `list`): A run directory (hashes verified) or a list of member directories.
        datasets (`dict`): Evaluation datasets by split name, e.g. `{"test": ..., "shift": ...}`; each has the
            model's inputs and a label column. Shifted or corrupted test sets are evaluated the same way.
        soups (`tuple[str]`, *optional*, defaults to `("uniform",)`): Soups to build and evaluate: `"uniform"`,
            and `"greedy"` (picks members on `datasets["validation"]`).
        calibration_split (`str`, *optional*): A split of `datasets` (held out, never a test split) on which every
            model's temperature is fitted after pooling: adds `temperature`, `nll_calibrated`, `ece_calibrated`.
        ood_datasets (`dict`, *optional*): Out-of-distribution datasets by name (the model's inputs; labels, if
            any, are ignored): adds `ood_<name>_auroc_<score>` and `ood_<name>_fpr95_<score>` for the scores
            `max_prob`, `entropy` and (ensembles of 2 or more) `mutual_information`, each split being the
            in-distribution set.
        train_dataset (*optional*): Training data for the soups' BatchNorm re-estimation.
        data_collator (`Callable`, *optional*): Batches rows (default: `default_data_collator`).
        batch_size (`int`, *optional*, defaults to 32): Evaluation batch size.
        device (`str` or `torch.device`, *optional*): Where models run (default: CPU).
        output_dir (`str` or `os.PathLike`, *optional*): Where `evaluation.csv` and `evaluation.json` are written
            (default: the run directory, when `source` is one).
        allow_pickle (`bool`, *optional*, defaults to `False`): Accept members with only pickle weights (see
            `load_members`).

    Returns:
        `list[dict]`: One row per (model, size, split) with `method`, `model` (`member`, `ensemble`, `uniform_soup`,
        `greedy_soup`), `member`, `size`, `split`, the metrics of `classification_metrics`, selective prediction
        (`aurc`, `accuracy_at_90`, `accuracy_at_80`: accuracy on the 90% / 80% most confident samples), diversity
        and gains for ensembles, the calibration and OOD columns above, and the training cost `steps` (optimizer
        steps of the members involved). [`predict_run`] + [`evaluation_rows`] give the same rows and keep the
        probabilities (for reliability diagrams and risk-coverage curves).

        Heads other than one class per example (see `evaluation.heads`): the classification metrics are those of
        their rows (labelled tokens, answer starts and ends, each label of multi-label members), plus entity-level
        `entity_precision`, `entity_recall`, `entity_f1` for token classifiers with BIO tags (seqeval), answer-span
        `exact_match` and `f1` for extractive QA, `exact_match` of all labels for multi-label members. Regression
        rows hold `rmse`, `mae` and, for ensembles of 2 or more, `gaussian_nll` and `coverage_90` under the members'
        variance (`variance_scale`, `gaussian_nll_calibrated`, `coverage_90_calibrated` with `calibration_split`).
    """
    if calibration_split is not None:
        if calibration_split not in datasets:
            raise ValueError(f"calibration_split={calibration_split!r} is not one of datasets ({sorted(datasets)}).")
        check_calibration_split(datasets[calibration_split], calibration_split)
    predictions = predict_run(
        source,
        datasets,
        soups=soups,
        ood_datasets=ood_datasets,
        train_dataset=train_dataset,
        data_collator=data_collator,
        batch_size=batch_size,
        device=device,
        allow_pickle=allow_pickle,
    )
    rows = evaluation_rows(predictions, calibration_split)
    if output_dir is None and isinstance(source, (str, os.PathLike)):
        output_dir = source
    if output_dir is not None:
        write_evaluation(rows, output_dir)
    return rows


def trainer_metrics(source, eval_dataset, *, soup: bool = True, metric_key_prefix: str = "eval", **options) -> dict:
    """
    A run's metrics on `eval_dataset` named the way `Trainer.evaluate` names them: `<prefix>_ensemble_<metric>` (the
    ensemble of every complete member), `<prefix>_soup_<metric>` (their uniform soup, with `soup`) and
    `<prefix>_member_mean_<metric>` (the members' mean), for the headline metrics of the members' head
    (`evaluation.heads.HEAD_METRICS`: accuracy, NLL, ECE and Brier score for classifiers; entity F1 and token
    accuracy, NLL and ECE for token classifiers; exact match and F1 of answers; RMSE, MAE and, for the ensemble, the
    Gaussian NLL and 90% interval coverage for regression), and `<prefix>_ensemble_size`. Nothing is written to the
    run directory.

    Args:
        source: A run directory (or a list of member directories).
        eval_dataset: Held-out data with the model's inputs and a label column.
        soup (`bool`, *optional*, defaults to `True`): Also build and evaluate the uniform soup.
        metric_key_prefix (`str`, *optional*, defaults to `"eval"`): The prefix of every key.
        options: `train_dataset`, `data_collator`, `batch_size`, `device`, as in [`evaluate_ensemble`].
    """
    predictions = predict_run(source, {"eval": eval_dataset}, soups=("uniform",) if soup else (), **options)
    rows = evaluation_rows(predictions)
    size = max(row["size"] for row in rows if row["model"] == "ensemble")
    groups = {
        "ensemble": [row for row in rows if row["model"] == "ensemble" and row["size"] == size],
        "soup": [row for row in rows if row["model"] == "uniform_soup"],
        "member_mean": [row for row in rows if row["model"] == "member"],
    }
    metrics = {
        f"{metric_key_prefix}_{name}_{metric}": float(np.mean([row[metric] for row in group]))
        for name, group in groups.items()
        if group
        for metric in HEAD_METRICS[predictions.head]
        if metric in group[0]
    }
    return metrics | {f"{metric_key_prefix}_ensemble_size": size}
