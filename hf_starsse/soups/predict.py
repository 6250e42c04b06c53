"""Running a model over a dataset: data loaders that keep the model's inputs and the label column, and the logits
with their labels (what greedy soups, BatchNorm re-estimation, calibration and evaluation share)."""

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import default_data_collator

from ..tasks import family_of_model

LABEL_COLUMNS = ("labels", "label", "label_ids", "start_positions", "end_positions")


def model_inputs(model: nn.Module, batch: dict, device: torch.device) -> dict:
    """The tensors of `batch` that `model.forward` takes, labels left out, on `device`."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v.to(device) for k, v in batch.items() if k in accepted and k not in LABEL_COLUMNS}


def make_dataloader(model: nn.Module, dataset, data_collator: Callable | None = None, batch_size: int = 32):
    """A `DataLoader` over `dataset` that keeps the model's input columns and the label column."""
    if hasattr(dataset, "remove_columns") and dataset.format["type"] != "custom":  # keep set_transform datasets
        keep = set(inspect.signature(model.forward).parameters) | set(LABEL_COLUMNS)
        dataset = dataset.remove_columns([c for c in dataset.column_names if c not in keep])
        dataset = dataset.with_format("torch")
    return DataLoader(dataset, batch_size=batch_size, collate_fn=data_collator or default_data_collator)


def accuracy_metric(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax matches the label (the default greedy-soup metric); for regression (float
    labels), minus the mean squared error, so that higher stays better."""
    if labels.is_floating_point():
        return -(logits.squeeze(-1).float() - labels).pow(2).mean().item()
    return (logits.argmax(-1) == labels).float().mean().item()


def predicts_next_token(model) -> bool:
    """Whether `model` (or its config) is a causal language model (its logits at position t predict the label at
    t + 1)."""
    family = family_of_model(model)
    return family is not None and family.head == "language_modeling"


def output_rows(output, batch: dict, next_token: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    One batch's predictions as rows of a classification (logits `(M, C)`, integer labels `(M,)`) whatever the head,
    and the example (position in the batch) each row belongs to:

    - sequence, image, audio classification and multiple choice: one row per example;
    - token classification (labels `(B, T)`): one row per labelled token (`-100` left out); causal language models
      (`next_token`): one row per labelled next token, the logits at t against the label at t + 1;
    - extractive QA (`start_logits`, `end_logits`): two rows per example, its start then its end over the tokens;
    - multi-label (labels `(B, L)`, the logits' shape): one two-class row `[0, z]` per label (`softmax` of it is
      `sigmoid(z)`);
    - regression (float labels, one output): the outputs `(B, 1)` and the float targets `(B,)`.
    """
    if "start_logits" in output:
        logits = torch.stack([output["start_logits"], output["end_logits"]], 1).flatten(0, 1)
        labels = torch.stack([batch["start_positions"], batch["end_positions"]], 1).flatten()
        return logits.float().cpu(), labels.cpu(), torch.arange(len(labels)) // 2
    label_column = next((name for name in LABEL_COLUMNS if name in batch), None)
    if label_column is None:
        raise ValueError(f"The dataset has no label column (one of {LABEL_COLUMNS}).")
    logits, labels = output["logits"].float().cpu(), batch[label_column].cpu()
    examples = torch.arange(len(labels))
    if labels.shape == logits.shape and logits.shape[-1] > 1:  # multi-label (multi-hot labels, float or int)
        logits = torch.stack([torch.zeros_like(logits), logits], -1)
        examples = examples.repeat_interleave(labels.shape[-1])
        return logits.flatten(0, 1), labels.flatten().long(), examples
    if labels.is_floating_point():  # regression
        return logits, labels.reshape(len(labels)), examples
    if next_token:
        logits, labels = logits[:, :-1], labels[:, 1:]
    if logits.dim() == 3:  # a label per token
        kept = labels != -100
        return logits[kept], labels[kept], examples.view(-1, 1).expand_as(labels)[kept]
    return logits, labels, examples


def _concatenate(rows: list[torch.Tensor]) -> torch.Tensor:
    """Rows of batches padded to different lengths (the token axis of QA rows) padded with `-inf` logits."""
    width = max(row.shape[-1] for row in rows)
    return torch.cat([nn.functional.pad(row, (0, width - row.shape[-1]), value=-math.inf) for row in rows])


@torch.no_grad()
def predict_rows(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float32 logits rows of `model` (eval mode) over the batches of `loader`, their labels and the example
    (index in the loader's order) each row comes from, on CPU (see [`output_rows`])."""
    model.eval()
    device = next(model.parameters()).device
    logits, labels, examples, seen = [], [], [], 0
    next_token = predicts_next_token(model)
    for batch in loader:
        output = model(**model_inputs(model, batch, device), return_dict=True)
        batch_logits, batch_labels, batch_examples = output_rows(output, batch, next_token)
        logits.append(batch_logits)
        labels.append(batch_labels)
        examples.append(batch_examples + seen)
        seen += len(next(iter(batch.values())))
    return _concatenate(logits), torch.cat(labels), torch.cat(examples)


def predict_logits(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 logits rows `(M, C)` of `model` (eval mode) over the batches of `loader` and their labels `(M,)`,
    on CPU: one row per example for classifiers, per labelled token, per label, per answer start and end (see
    [`output_rows`])."""
    logits, labels, _ = predict_rows(model, loader)
    return logits, labels
