"""`evaluate_ensemble`: one tidy table of metrics for every member, the ensemble of each size 1..K, and soups."""

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

from .members import load_members
from .metrics import classification_metrics, disagreement, ensemble_gain, mean_pairwise_kl
from .run_dir import atomic_write_json, atomic_write_text, run_manifest
from .soups import greedy_soup, make_dataloader, member_model, predict_logits, uniform_soup

logger = logging.get_logger(__name__)

RESULTS_NAME = "evaluation"


@torch.no_grad()
def predict_probs(model, dataset, data_collator=None, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """
    Softmax probabilities `(N, C)` of `model` on `dataset` and its labels `(N,)`.

    Args:
        model (`PreTrainedModel`): A classifier (or an ensemble model: its logits are log-probabilities).
        dataset: Rows with the model's inputs and a label column (`labels` or `label`).
        data_collator (`Callable`, *optional*): Batches rows (default: `default_data_collator`).
        batch_size (`int`, *optional*, defaults to 32): Evaluation batch size.
    """
    logits, labels = predict_logits(model, make_dataloader(model, dataset, data_collator, batch_size))
    return logits.softmax(-1).double().numpy(), labels.numpy()


def _run_info(source, count: int) -> tuple[str, list[int], list]:
    """The method, the members' indices and optimizer steps, from the manifest when `source` is a run directory."""
    manifest = run_manifest(source)
    if manifest is not None:
        if len(manifest["members"]) < manifest["num_members"]:
            logger.warning(
                f"{source} has {len(manifest['members'])} of {manifest['num_members']} members complete; evaluating "
                "those."
            )
        entries = manifest["members"][:count]
        return (
            manifest["ensemble_method"],
            [entry["index"] for entry in entries],
            [entry["steps"] for entry in entries],
        )
    return "members", list(range(count)), [None] * count


def _ensemble_rows(
    method: str, split: str, member_probs: np.ndarray, labels: np.ndarray, indices: list[int], steps: list
) -> list[dict]:
    member_metrics = [classification_metrics(probs, labels) for probs in member_probs]
    rows = [
        {"method": method, "model": "member", "member": index, "size": 1, "split": split, **m, "steps": cost}
        for index, m, cost in zip(indices, member_metrics, steps)
    ]
    for size in range(1, len(member_probs) + 1):
        metrics = classification_metrics(member_probs[:size].mean(0), labels)
        cost = None if None in steps[:size] else sum(steps[:size])
        rows.append(
            {
                "method": method,
                "model": "ensemble",
                "member": None,
                "size": size,
                "split": split,
                **metrics,
                "disagreement": disagreement(member_probs[:size]),
                "mean_pairwise_kl": mean_pairwise_kl(member_probs[:size]),
                "accuracy_gain": ensemble_gain(metrics["accuracy"], [m["accuracy"] for m in member_metrics[:size]]),
                "nll_gain": ensemble_gain(metrics["nll"], [m["nll"] for m in member_metrics[:size]]),
                "steps": cost,
            }
        )
    return rows


def _write_table(rows: list[dict], output_dir: Path) -> None:
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
        `greedy_soup`), `member`, `size`, `split`, the metrics of `classification_metrics`, diversity and gains for
        ensembles, and the training cost `steps` (optimizer steps of the members involved).
    """
    unknown = set(soups) - {"uniform", "greedy"}
    if unknown:
        raise ValueError(f"Unknown soups {sorted(unknown)}; choose from 'uniform' and 'greedy'.")
    if "greedy" in soups and "validation" not in datasets:
        raise ValueError("A greedy soup picks members on held-out data: add a 'validation' split to datasets.")
    member_dirs = load_members(source, allow_pickle)
    method, indices, steps = _run_info(source, len(member_dirs))
    predictions = {split: [] for split in datasets}
    labels = {}
    for member in member_dirs:
        model = member_model(member, device)
        for split, dataset in datasets.items():
            probs, labels[split] = predict_probs(model, dataset, data_collator, batch_size)
            predictions[split].append(probs)
    rows = []
    for split in datasets:
        rows += _ensemble_rows(method, split, np.stack(predictions[split]), labels[split], indices, steps)
    options = dict(
        train_dataset=train_dataset,
        data_collator=data_collator,
        batch_size=batch_size,
        device=device,
        allow_pickle=allow_pickle,
    )
    soup_models = {}
    if "uniform" in soups:
        soup_models["uniform_soup"] = (uniform_soup(member_dirs, **options), len(member_dirs))
    if "greedy" in soups:
        soup, chosen = greedy_soup(member_dirs, datasets["validation"], **options)
        soup_models["greedy_soup"] = (soup, len(chosen))
    total_steps = None if None in steps else sum(steps)
    for name, (model, size) in soup_models.items():
        for split, dataset in datasets.items():
            metrics = classification_metrics(*predict_probs(model, dataset, data_collator, batch_size))
            rows.append(
                {"method": method, "model": name, "member": None, "size": size, "split": split, **metrics}
                | {"steps": total_steps}
            )
    if output_dir is None and isinstance(source, (str, os.PathLike)):
        output_dir = source
    if output_dir is not None:
        _write_table(rows, Path(output_dir))
    return rows
