"""Temperature scaling after pooling (pool-then-calibrate) for ensembles, and for soups and single models.

Averaging well-calibrated members makes an ensemble under-confident; one temperature fitted on held-out data to the
*pooled* prediction fixes that without changing its predicted classes. `calibrate_ensemble` fits it (by minimising
the negative log-likelihood with a bounded 1-D search) and stores it so that `from_pretrained` and `pipeline()` give
calibrated probabilities:

- ensembles: `temperature` (and optionally `member_temperatures`) in the `EnsembleConfig`, applied in the forward;
- soups and single models (plain checkpoints that must stay loadable without this library): the final classification
  `nn.Linear`'s weight and bias are divided by the temperature, which gives exactly `logits / T`, and the temperature
  is recorded in `config.calibration` as metadata.
"""

import itertools
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    PreTrainedModel,
)

from ..ensemble.modeling_ensemble import EnsemblePreTrainedModel
from ..soups.predict import make_dataloader, predict_logits
from ..storage.saving import replace_model_dir, save_model_dir
from ..tasks import family_of_architecture, family_of_model
from ..tasks.sequence_classification import SEQUENCE_CLASSIFICATION
from .heads import check_head_support, fit_variance_scale, head_of, regression_metrics
from .metrics import expected_calibration_error, negative_log_likelihood, softmax

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The search interval of `fit_temperature`."""
CARD_SECTION = "## Calibration"
_HEAD_NAMES = ("classifier", "score", "fc", "head", "classification_head", "qa_outputs")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return float(-_log_softmax(logits / temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS, tol: float = 1e-6) -> float:
    """
    The temperature `T` minimising the NLL of `softmax(logits / T)` on `labels`: a golden-section search on `log T`
    within `bounds` (the NLL is convex in `1 / T`, so the minimum found is the global one inside the bounds).

    Args:
        logits: `(N, C)` logits or log-probabilities (e.g. an ensemble's `log(mean_k p_k)`).
        labels: `(N,)` integer classes.
        bounds (`tuple[float, float]`, *optional*): The search interval of `T`.
        tol (`float`, *optional*): Stop when the interval of `log T` is narrower than this.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    low, high = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    f_a, f_b = _nll(logits, labels, math.exp(a)), _nll(logits, labels, math.exp(b))
    while high - low > tol:
        if f_a <= f_b:
            high, b, f_b = b, a, f_a
            a = high - ratio * (high - low)
            f_a = _nll(logits, labels, math.exp(a))
        else:
            low, a, f_a = a, b, f_b
            b = low + ratio * (high - low)
            f_b = _nll(logits, labels, math.exp(b))
    return math.exp((low + high) / 2)


def calibration_metrics(logits, labels, temperature: float = 1.0) -> dict[str, float]:
    """NLL and ECE of `softmax(logits / temperature)`."""
    probs = softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return {"nll": negative_log_likelihood(probs, labels), "ece": expected_calibration_error(probs, labels)}


def check_split_name(name: str) -> None:
    """Refuse a test split (`test`, `test_*`, `*_test`) as calibration data: its results would become optimistic."""
    if re.fullmatch(r"test.*|.*[_\-/]test", name.lower()):
        raise ValueError(
            f"Calibration fits the temperature on its data: {name!r} is a test split, whose results would then be "
            "optimistic. Use a validation split (or hold out part of the training data)."
        )


def check_calibration_split(dataset, split: str | None = None) -> str:
    """
    Refuse a calibration split that is a test split (by the name given or the dataset's own `split`), a whole
    `DatasetDict`, or an empty one; returns the split's name (`"held-out"` when unknown).
    """
    if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):
        raise ValueError(f"Pass one held-out split (e.g. dataset['validation']), not a dict of {sorted(dataset)}.")
    name = split or str(getattr(dataset, "split", None) or "held-out")
    check_split_name(name)
    if len(dataset) == 0:
        raise ValueError(f"The calibration split {name!r} is empty.")
    return name


def _collect(model: PreTrainedModel, dataset, collator, batch_size: int, num_batches: int | None = None) -> tuple:
    """Float64 logits of `model` over `dataset` (member logits `(K, N, C)` for an ensemble) and the labels."""

    def logits_of(module):
        batches = make_dataloader(module, dataset, collator, batch_size)
        return predict_logits(module, itertools.islice(batches, num_batches))

    if isinstance(model, EnsemblePreTrainedModel):
        outputs = [logits_of(member) for member in model.members]
        return torch.stack([logits for logits, _ in outputs]).double().numpy(), outputs[0][1].numpy()
    logits, labels = logits_of(model)
    return logits.double().numpy(), labels.numpy()


def _check_labels(labels: np.ndarray, logits: np.ndarray, config) -> None:
    """Refuse labels that are not classes of the rows `logits` (the model's labels, or its choices)."""
    count = logits.shape[-1]
    outside = sorted({int(label) for label in labels if not 0 <= label < count})
    if outside:
        names = f": {list(config.id2label.values())[:10]}" if len(config.id2label) == count else ""
        raise ValueError(
            f"The calibration split has labels {outside[:5]} outside the model's {count} classes{names}: map the "
            "labels to the model's class ids (the CLI does it by name)."
        )


def _pooled(member_logits: np.ndarray, log_weights: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    log_probs = _log_softmax(member_logits / temperatures.reshape(-1, 1, 1))
    stacked = log_probs + log_weights.reshape(-1, 1, 1)
    top = stacked.max(0)
    top = np.where(np.isfinite(top), top, 0)  # padded tokens of QA rows: -inf for every member
    return top + np.log(np.exp(stacked - top).sum(0))


def _member_weights(config) -> np.ndarray:
    """An ensemble's member weights `(K,)`, normalised (uniform unless `member_weights`)."""
    weights = np.ones(config.num_members) if config.member_weights is None else np.array(config.member_weights)
    return weights / weights.sum()


def _calibrate_ensemble_model(model: EnsemblePreTrainedModel, member_logits, labels, per_member: bool) -> dict:
    config = model.config
    log_weights = np.log(_member_weights(config))
    ones = np.ones(config.num_members)
    member_temperatures = (
        np.array([fit_temperature(logits, labels) for logits in member_logits]) if per_member else ones
    )
    pooled = _pooled(member_logits, log_weights, member_temperatures)
    temperature = fit_temperature(pooled, labels)
    config.temperature = temperature
    config.member_temperatures = member_temperatures.tolist() if per_member else None
    return {
        "temperature": temperature,
        "member_temperatures": config.member_temperatures,
        "before": calibration_metrics(_pooled(member_logits, log_weights, ones), labels),
        "after": calibration_metrics(pooled, labels, temperature),
    }


def _check_regression(model: PreTrainedModel, per_member: bool) -> None:
    if not isinstance(model, EnsemblePreTrainedModel) or model.config.num_members < 2 or per_member:
        raise ValueError(
            "A regression model is calibrated by scaling the variance of its members' outputs: calibrate an ensemble "
            "of 2 or more members, without per_member (a single model or a soup has no variance to scale)."
        )


def _calibrate_regression(model: EnsemblePreTrainedModel, member_values: np.ndarray, labels: np.ndarray) -> dict:
    """Fit `config.variance_scale` of a regression ensemble: the Gaussian likelihood of `labels` under the members'
    weighted mean and scaled variance is maximal."""
    weights = _member_weights(model.config).reshape(-1, 1)
    values = member_values.reshape(len(member_values), -1)
    mean = (weights * values).sum(0)
    variance = (weights * (values - mean) ** 2).sum(0)
    scale = fit_variance_scale(mean, variance, labels)
    model.config.variance_scale = scale
    return {
        "variance_scale": scale,
        "before": regression_metrics(mean, labels, variance),
        "after": regression_metrics(mean, labels, scale * variance),
    }


def final_linear(model: nn.Module) -> nn.Linear:
    """
    The final layer of a transformers classifier: its `classifier` / `score` / `fc` / `head` / `qa_outputs` module
    if that is an `nn.Linear` with `num_labels` outputs (one per choice for multiple choice), else the last such
    `nn.Linear` inside it.
    """
    family = family_of_model(model)
    num_labels = 1 if family is not None and family.name == "multiple-choice" else model.config.num_labels
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
            if linears:
                return linears[-1]
    raise ValueError(
        f"{type(model).__name__} has no final nn.Linear classification layer with {num_labels} outputs (looked in "
        f"{', '.join(_HEAD_NAMES)}): its temperature cannot be folded into the weights. "
        "Calibrate an ensemble of it instead (build_ensemble, then calibrate_ensemble)."
    )


@torch.no_grad()
def _fold_temperature(model: PreTrainedModel, dataset, collator, logits: np.ndarray, temperature: float) -> None:
    """Divide the final layer by `temperature`, checking on the first batch that the logits become `logits / T`."""
    layer = final_linear(model)
    original = [p.detach().clone() for p in layer.parameters()]
    for parameter in layer.parameters():
        parameter.div_(temperature)
    probe = _collect(model, dataset, collator, 8, num_batches=1)[0]
    expected = logits[: len(probe), ..., : probe.shape[-1]] / temperature  # QA rows: the probe's padded width
    scale = np.abs(expected[np.isfinite(expected)]).max(initial=0)  # padded tokens of QA rows are -inf
    if not np.allclose(probe, expected, rtol=1e-4, atol=1e-4 * (1 + scale)):
        for parameter, value in zip(layer.parameters(), original):
            parameter.copy_(value)
        raise ValueError(
            f"Dividing the last classification layer of {type(model).__name__} by the temperature did not divide its "
            "logits (the head is not a final linear layer): calibrate an ensemble of it instead."
        )


def _calibrate_plain_model(model: PreTrainedModel, dataset, collator, logits, labels) -> dict:
    previous = float((getattr(model.config, "calibration", None) or {}).get("temperature", 1.0))
    temperature = fit_temperature(logits, labels)
    _fold_temperature(model, dataset, collator, logits, temperature)
    return {
        "temperature": previous * temperature,
        "applied_to": "final classification layer (weight and bias divided by the temperature)",
        "before": calibration_metrics(logits * previous, labels),
        "after": calibration_metrics(logits, labels, temperature),
    }


def load_model(model_dir: str | os.PathLike) -> PreTrainedModel:
    """A saved ensemble, soup or single model from `model_dir`, with the Auto class of its task family."""
    config = AutoConfig.from_pretrained(model_dir)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    family = family_of_architecture(architecture) or SEQUENCE_CLASSIFICATION  # e.g. a config without architectures
    return family.auto_model_class().from_pretrained(model_dir)


def card_section(calibration: dict) -> str:
    """The model card's calibration section: the temperature (or the variance scale of a regression ensemble) and
    the metrics before and after on the split."""
    before, after, where = calibration["before"], calibration["after"], calibration["split"]
    samples = f"on the `{where}` split ({calibration['num_samples']} samples)"
    if "variance_scale" in calibration:
        text = (
            f"Variance scale {calibration['variance_scale']:.4f} of the members' variance fitted {samples} by "
            "maximising the Gaussian likelihood; predictions are unchanged."
        )
        keys, names = ("gaussian_nll", "coverage_90"), "Gaussian NLL | 90% interval coverage"
    else:
        text = (
            f"Temperature {calibration['temperature']:.4f} fitted after pooling {samples} by minimising the NLL; "
            "predicted classes are unchanged."
        )
        keys, names = ("nll", "ece"), "NLL | ECE"
    rows = [f"| {label} | {values[keys[0]]:.4f} | {values[keys[1]]:.4f} |" for label, values in
            (("before", before), ("after", after))]  # fmt: skip
    table = [f"| on the calibration split | {names} |", "|---|---:|---:|", *rows]
    return "\n".join([CARD_SECTION, "", text, "", *table, ""])


def _with_card_section(card: str, calibration: dict) -> str:
    """`card` with its calibration section replaced, or inserted before "## How to use" (else appended)."""
    section = card_section(calibration)
    if CARD_SECTION in card:
        start = card.index(CARD_SECTION)
        end = card.find("\n## ", start + len(CARD_SECTION))
        return card[:start] + section + (card[end + 1 :] if end != -1 else "")
    anchor = card.find("## How to use")
    return card + "\n" + section if anchor == -1 else card[:anchor] + section + "\n" + card[anchor:]


def calibrate_ensemble(
    model_or_dir,
    dataset,
    *,
    out_dir: str | os.PathLike | None = None,
    split: str | None = None,
    per_member: bool = False,
    data_collator: Callable | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    overwrite: bool = False,
) -> PreTrainedModel:
    """
    Pool-then-calibrate: fit the temperature of a model's prediction on held-out data by minimising its NLL, and
    store it in the model, so that `from_pretrained` and `pipeline()` give calibrated probabilities.

    For an ensemble, one temperature is fitted to the pooled prediction `log(mean_k p_k)` (with `per_member=True`,
    each member's own temperature first, then the pooled one) and stored in its config. For a soup or a single
    model, the temperature is folded into the final classification `nn.Linear` (weight and bias divided by it: the
    logits become exactly `logits / T`) and recorded in `config.calibration`; the checkpoint stays loadable by plain
    `from_pretrained`. Calibrating again refits from the uncalibrated prediction. The NLL and ECE on the split
    before and after go to `config.calibration` and to the model card's "Calibration" section.

    Args:
        model_or_dir (`PreTrainedModel`, `str` or `os.PathLike`): A model, or a saved ensemble / soup / model
            directory (updated in place, atomically, unless `out_dir` is given).
        dataset (`datasets.Dataset`): The held-out split, with the model's inputs and a label column of the model's
            class ids. Never a test split: a split named `test` is refused.
        out_dir (`str` or `os.PathLike`, *optional*): Save the calibrated model here instead (with the processor
            files and card of `model_or_dir` when it is a directory).
        split (`str`, *optional*): The split's name, recorded and checked (default: `dataset.split`).
        per_member (`bool`, *optional*, defaults to `False`): Ensembles: also fit one temperature per member before
            pooling.
        data_collator (`Callable`, *optional*): Batches rows (default: `default_data_collator`).
        batch_size (`int`, *optional*, defaults to 32): Batch size of the pass over `dataset`.
        device (`str` or `torch.device`, *optional*): Where the model runs (default: CPU, or the model's device).
        overwrite (`bool`, *optional*, defaults to `False`): Replace a non-empty `out_dir`.

    Returns:
        [`~transformers.PreTrainedModel`]: The calibrated model, in eval mode; `model.config.calibration` holds the
        temperature, the split and the metrics before and after.

    Example:
    ```python
    from hf_starsse import calibrate_ensemble

    calibrate_ensemble("out/ensemble", validation_dataset)  # in place; pipeline(model="out/ensemble") is calibrated
    ```
    """
    source = Path(model_or_dir) if isinstance(model_or_dir, (str, os.PathLike)) else None
    model = load_model(source) if source is not None else model_or_dir
    if device is not None or source is not None:
        model.to(device or "cpu")
    name = check_calibration_split(dataset, split)
    if out_dir is not None and source is None:
        raise ValueError("out_dir needs model_or_dir to be a saved model directory (its processor files are copied).")
    head = head_of(model)
    check_head_support(head, {})
    if head == "regression":
        _check_regression(model, per_member)
    values, labels = _collect(model, dataset, data_collator, batch_size)
    if head in ("classification", "token"):
        _check_labels(labels, values, model.config)
    if head == "regression":
        record = _calibrate_regression(model, values, labels)
    elif isinstance(model, EnsemblePreTrainedModel):
        record = _calibrate_ensemble_model(model, values, labels, per_member)
    elif per_member:
        raise ValueError("per_member=True is for ensembles; a soup or single model has one temperature.")
    else:
        record = _calibrate_plain_model(model, dataset, data_collator, values, labels)
    model.config.calibration = {**record, "split": name, "num_samples": len(labels)}
    if source is not None or out_dir is not None:
        _save(model, source, out_dir, overwrite)
    return model.eval()


def _save(model: PreTrainedModel, source: Path | None, out_dir, overwrite: bool) -> None:
    card_file = source / "README.md" if source is not None else None
    card = card_file.read_text() if card_file is not None and card_file.is_file() else None
    files = {"README.md": _with_card_section(card, model.config.calibration)} if card is not None else {}
    if out_dir is None:
        replace_model_dir(model, source, files)
    else:
        save_model_dir(model, out_dir, source, files, overwrite=overwrite)


__all__ = [
    "calibrate_ensemble",
    "calibration_metrics",
    "card_section",
    "check_calibration_split",
    "check_split_name",
    "final_linear",
    "fit_temperature",
]
