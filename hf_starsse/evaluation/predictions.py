"""Every model's predictions on every split, once: `predict_run` runs each member and soup of a run over the
datasets (ensembles are averaged from the members' probabilities), for `evaluate_ensemble`'s table, reports and
plots."""

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.utils import logging

from ..run.directory import run_manifest
from ..run.members import load_members
from ..soups.average import greedy_soup, member_model, uniform_soup
from ..soups.predict import LABEL_COLUMNS, make_dataloader, predict_rows
from .heads import check_head_support, head_of, head_outputs

logger = logging.get_logger(__name__)


def predict_probs(model, dataset, data_collator=None, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """
    Softmax probabilities `(N, C)` of `model` on `dataset` and its labels `(N,)`: one row per example for classifiers,
    per labelled token, per label or per answer start and end for other heads (see `soups.predict.output_rows`);
    regression models give their values `(N,)` and float labels.

    Args:
        model (`PreTrainedModel`): A transformers model (or an ensemble model: its logits are log-probabilities).
        dataset: Rows with the model's inputs and labels (`labels`, `label`, or `start_positions` and
            `end_positions`).
        data_collator (`Callable`, *optional*): Batches rows (default: `default_data_collator`).
        batch_size (`int`, *optional*, defaults to 32): Evaluation batch size.
    """
    return _predict(model, dataset, data_collator, batch_size)[:2]


def _predict(model, dataset, data_collator, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`predict_probs` and the example each row comes from."""
    logits, labels, examples = predict_rows(model, make_dataloader(model, dataset, data_collator, batch_size))
    return head_outputs(head_of(model), logits), labels.numpy(), examples.numpy()


def run_info(source, count: int) -> tuple[str, list[int], list]:
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


@dataclass
class RunPredictions:
    """
    Every model's probabilities on every split, from [`predict_run`]: the input of [`evaluation_rows`], of
    reliability diagrams and risk-coverage curves.

    Args:
        method (`str`): The run's method (`"members"` for member directories).
        indices (`list[int]`): Each member's index; `steps` (`list`): its optimizer steps (or `None`).
        labels (`dict`): `(N,)` labels by split (`-1` for out-of-distribution splits).
        members (`dict`): `(K, N, C)` member probabilities by split (`(K, N)` values for regression).
        soups (`dict`): By soup name (`"uniform_soup"`, `"greedy_soup"`), its size and `(N, C)` probabilities by split.
        ood_splits (`tuple[str]`): Splits that are out-of-distribution (no metrics of their own).
        head (`str`): The members' head (see `evaluation.heads`): the rows are examples, tokens, labels or answer
            starts and ends.
        examples (`dict`): `(N,)` by split: the example each row comes from.
        id2label (`dict`): The members' label names (entity metrics of token classifiers).
    """

    method: str
    indices: list[int]
    steps: list
    labels: dict[str, np.ndarray]
    members: dict[str, np.ndarray]
    soups: dict[str, tuple[int, dict[str, np.ndarray]]] = field(default_factory=dict)
    ood_splits: tuple[str, ...] = ()
    head: str = "classification"
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    id2label: dict = field(default_factory=dict)

    def models(self) -> list[tuple[str, int | None, int]]:
        """`(model, member, size)` of every evaluated model: members, ensembles of size 1..K, soups."""
        count = len(self.indices)
        return (
            [("member", index, 1) for index in self.indices]
            + [("ensemble", None, size) for size in range(1, count + 1)]
            + [(name, None, size) for name, (size, _) in self.soups.items()]
        )

    def probs(self, model: str, member: int | None, size: int, split: str) -> np.ndarray:
        """`(N, C)` probabilities of one model (as named by [`models`]) on `split`."""
        if model == "member":
            return self.members[split][self.indices.index(member)]
        if model == "ensemble":
            return self.members[split][:size].mean(0)
        return self.soups[model][1][split]

    def variance(self, model: str, size: int, split: str) -> np.ndarray | None:
        """Regression: the variance of the first `size` members' values, for ensembles of 2 or more (else `None`)."""
        return self.members[split][:size].var(0) if model == "ensemble" and size > 1 else None


def _with_labels(dataset):
    """An out-of-distribution dataset with a placeholder label column (-1) when it has none."""
    columns = getattr(dataset, "column_names", None)
    if columns is None or any(name in columns for name in LABEL_COLUMNS) or dataset.format["type"] == "custom":
        return dataset
    return dataset.add_column("labels", [-1] * len(dataset))


def _set_head(predictions: RunPredictions, model) -> None:
    """The members' head and label names, checked against what the evaluation asks of them."""
    predictions.head, predictions.id2label = head_of(model), dict(model.config.id2label or {})
    if predictions.ood_splits and predictions.head != "classification":
        raise ValueError(
            f"Out-of-distribution detection scores one prediction per example; these members' head is "
            f"{predictions.head!r}: leave ood_datasets out."
        )
    check_head_support(predictions.head, predictions.id2label)


def predict_run(
    source,
    datasets: dict,
    *,
    soups: tuple[str, ...] = ("uniform",),
    ood_datasets: dict | None = None,
    train_dataset=None,
    data_collator=None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
) -> RunPredictions:
    """
    The probabilities of every member and soup on every split (arguments as in [`evaluate_ensemble`]): one pass per
    member and soup; ensembles are averaged from the members' probabilities.
    """
    unknown = set(soups) - {"uniform", "greedy"}
    if unknown:
        raise ValueError(f"Unknown soups {sorted(unknown)}; choose from 'uniform' and 'greedy'.")
    if "greedy" in soups and "validation" not in datasets:
        raise ValueError("A greedy soup picks members on held-out data: add a 'validation' split to datasets.")
    overlap = set(datasets) & set(ood_datasets or {})
    if overlap:
        raise ValueError(f"Splits {sorted(overlap)} are both in datasets and ood_datasets; rename one.")
    every = {**datasets, **{name: _with_labels(data) for name, data in (ood_datasets or {}).items()}}
    member_dirs = load_members(source, allow_pickle)
    method, indices, steps = run_info(source, len(member_dirs))
    predictions = RunPredictions(
        method, indices, steps, {}, {split: [] for split in every}, {}, tuple(ood_datasets or ())
    )
    for position, member in enumerate(member_dirs):
        model = member_model(member, device)
        if position == 0:
            _set_head(predictions, model)
        for split, dataset in every.items():
            probs, predictions.labels[split], predictions.examples[split] = _predict(
                model, dataset, data_collator, batch_size
            )
            predictions.members[split].append(probs)
    predictions.members = {split: np.stack(probs) for split, probs in predictions.members.items()}
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
    for name, (model, size) in soup_models.items():
        by_split = {split: predict_probs(model, data, data_collator, batch_size)[0] for split, data in every.items()}
        predictions.soups[name] = (size, by_split)
    return predictions
