"""Basin diagnostics: accuracy and loss along the straight line between two models' weights, barrier heights, and
L2 distances between weights. Large barriers mean the members left the pre-train basin."""

import copy
import math

import numpy as np
import torch
from torch import nn
from transformers.utils import logging

from ..run.members import load_members
from ..soups.average import member_model
from ..soups.batchnorm import has_batchnorm, recalibrate_batchnorm
from ..soups.predict import predict_logits

logger = logging.get_logger(__name__)


def _evaluate(model: nn.Module, loader) -> dict[str, float]:
    """Accuracy and mean cross-entropy of `model` on the batches of `loader`."""
    logits, labels = predict_logits(model, loader)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    return {"accuracy": accuracy, "loss": nn.functional.cross_entropy(logits, labels).item()}


def _interpolate(state_a: dict, state_b: dict, alpha: float) -> dict:
    return {
        name: torch.lerp(a, state_b[name].to(a.dtype), alpha) if a.is_floating_point() else a
        for name, a in state_a.items()
    }


@torch.no_grad()
def interpolation_curve(
    model_a: nn.Module,
    model_b: nn.Module,
    dataloaders: dict,
    num_points: int = 11,
    batchnorm_dataloader=None,
    num_batchnorm_batches: int | None = None,
) -> dict:
    """
    Metrics of the models `θ(α) = (1 - α) θ_a + α θ_b` for `num_points` values of α evenly spaced in [0, 1].

    Args:
        model_a (`nn.Module`), model_b (`nn.Module`): Two models of one architecture (e.g. member 0 and member k).
        dataloaders (`dict`): Batches with model inputs and labels by split name, e.g. `{"train": ..., "test": ...}`.
        num_points (`int`, *optional*, defaults to 11): Number of values of α, endpoints included.
        batchnorm_dataloader (*optional*): Training batches used to re-estimate BatchNorm statistics at every point
            (endpoints included); needed for models with BatchNorm, whose averaged statistics are meaningless.
        num_batchnorm_batches (`int`, *optional*): Limit each BatchNorm pass to this many batches.

    Returns:
        `dict`: `{"alpha": [...], split: {"accuracy": [...], "loss": [...]}, ...}`.
    """
    if num_points < 2:
        raise ValueError(f"num_points={num_points} must be at least 2 (the two endpoints).")
    state_a = {k: v.detach().clone() for k, v in model_a.state_dict().items()}
    state_b = model_b.state_dict()
    if state_a.keys() != state_b.keys() or any(state_a[k].shape != state_b[k].shape for k in state_a):
        raise ValueError("model_a and model_b must share one architecture (same tensor names and shapes).")
    recalibrate = has_batchnorm(model_a)
    if recalibrate and batchnorm_dataloader is None:
        logger.warning(
            "The models have BatchNorm but no batchnorm_dataloader was given: interpolated models keep averaged "
            "statistics, which exaggerates barriers."
        )
    model = copy.deepcopy(model_a)
    alphas = np.linspace(0, 1, num_points).tolist()
    curve = {"alpha": alphas, **{split: {"accuracy": [], "loss": []} for split in dataloaders}}
    for alpha in alphas:
        model.load_state_dict(_interpolate(state_a, state_b, alpha))
        if recalibrate and batchnorm_dataloader is not None:
            recalibrate_batchnorm(model, batchnorm_dataloader, num_batchnorm_batches)
        for split, loader in dataloaders.items():
            for name, value in _evaluate(model, loader).items():
                curve[split][name].append(value)
    return curve


def barrier_height(values: list[float], higher_is_better: bool = True) -> float:
    """
    The largest drop of a metric along an interpolation curve below the straight line between its endpoints (for
    losses, `higher_is_better=False`: the largest rise above it). 0 when the curve never falls below the line.

    Args:
        values (`list[float]`): The metric at evenly spaced α, endpoints included (one split of `interpolation_curve`).
        higher_is_better (`bool`, *optional*, defaults to `True`): `True` for accuracy, `False` for loss.
    """
    values = np.asarray(values, dtype=np.float64)
    line = np.linspace(values[0], values[-1], len(values))
    gaps = line - values if higher_is_better else values - line
    return float(max(0.0, gaps.max()))


def weight_distance(model_a: nn.Module | dict, model_b: nn.Module | dict) -> float:
    """
    L2 distance between two models' parameters (BatchNorm statistics and other buffers excluded). Parameters are
    matched by name, ignoring a leading base-model prefix (`bert.` in `bert.encoder...`), and only those with equal
    shapes count: a fine-tuned classifier can be compared with its pre-trained backbone (whose head differs or is
    missing).
    """
    params_a = dict(model_a.named_parameters()) if isinstance(model_a, nn.Module) else model_a
    params_b = dict(model_b.named_parameters()) if isinstance(model_b, nn.Module) else model_b
    pairs = []
    for name, a in params_a.items():
        match = name if name in params_b else name.split(".", 1)[-1]
        if match in params_b and params_b[match].shape == a.shape:
            pairs.append((a, params_b[match]))
    if not pairs:
        raise ValueError("The two models share no parameter (same name and shape) to measure a distance over.")
    return math.sqrt(
        sum((a.detach().double().cpu() - b.detach().double().cpu()).pow(2).sum().item() for a, b in pairs)
    )


def member_distances(source, pretrained: nn.Module | None = None) -> list[dict]:
    """
    L2 distance (see `weight_distance`) of every member from member 0 and, when given, from the pre-trained model.
    PEFT adapter members are merged into their base first, so distances between them are those of their weight
    deltas (`||Δ_k - Δ_0||`).

    Args:
        source (`str`, `os.PathLike` or `list`): A run directory or a list of member directories.
        pretrained (`nn.Module`, *optional*): The pre-trained model (its backbone is matched to the members').

    Returns:
        `list[dict]`: `{"member", "to_member_0", "to_pretrained"}` per member (`to_pretrained` is None without
        `pretrained`).
    """
    member_dirs = load_members(source)
    first = member_model(member_dirs[0])
    rows = []
    for index, member_dir in enumerate(member_dirs):
        member = first if index == 0 else member_model(member_dir)
        rows.append(
            {
                "member": index,
                "to_member_0": weight_distance(member, first),
                "to_pretrained": None if pretrained is None else weight_distance(member, pretrained),
            }
        )
    return rows
