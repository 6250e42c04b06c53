"""Running a model over a dataset: data loaders that keep the model's inputs and the label column, and the logits
with their labels (what greedy soups, BatchNorm re-estimation, calibration and evaluation share)."""

import inspect
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import default_data_collator

LABEL_COLUMNS = ("labels", "label", "label_ids")


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
    """Fraction of samples whose argmax matches the label (the default greedy-soup metric)."""
    return (logits.argmax(-1) == labels).float().mean().item()


@torch.no_grad()
def predict_logits(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits `(N, C)` of `model` (eval mode) over the batches of `loader`, and the labels `(N,)`, on CPU."""
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in loader:
        label_column = next((name for name in LABEL_COLUMNS if name in batch), None)
        if label_column is None:
            raise ValueError(f"The dataset has no label column (one of {LABEL_COLUMNS}).")
        logits.append(model(**model_inputs(model, batch, device)).logits.float().cpu())
        labels.append(batch[label_column].cpu())
    return torch.cat(logits), torch.cat(labels)
