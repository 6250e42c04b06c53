"""What evaluation makes of each kind of head: its predictions as probabilities (or values), and the metrics of its
task beyond the classification metrics of its rows (see `soups.predict.output_rows`).

Heads: `classification` (sequence, image, audio classification and multiple choice), `token` (a prediction per
token), `question_answering` (the answer's start and end over the tokens), `multi_label` (a sigmoid per label) and
`regression` (values, their spread over the members as the uncertainty).
"""

import math

import numpy as np
import torch

from ..ensemble.modeling_ensemble import EnsemblePreTrainedModel
from ..tasks import family_of_model
from ..tasks.classification import CLASSIFICATION_METRICS, MULTI_LABEL_METRICS, REGRESSION_METRICS
from ..tasks.question_answering import QUESTION_ANSWERING
from ..tasks.token_classification import TOKEN_CLASSIFICATION
from .metrics import softmax

HEAD_METRICS = {
    "classification": CLASSIFICATION_METRICS,
    "token": TOKEN_CLASSIFICATION.metrics,
    "question_answering": QUESTION_ANSWERING.metrics,
    "multi_label": MULTI_LABEL_METRICS,
    "regression": REGRESSION_METRICS,
}
"""The headline metrics of each head, as `StarSSETrainer.evaluate_ensemble` reports them."""

MAX_ANSWER_TOKENS = 30
"""The longest answer span (in tokens) considered, as transformers' question-answering examples do."""

_Z_90 = 1.6448536269514722  # the 95% quantile of the standard normal: a central 90% interval is mean +- z sigma


def head_of(model) -> str:
    """The head of `model` (a transformers model or an ensemble of them, or its config): one of `HEAD_METRICS`, or
    `"language_modeling"`. The problem type (regression, multi-label) matters for families of class labels only."""
    config = getattr(model, "config", model)
    family = family_of_model(model)
    if family is not None and (family.head != "classification" or not family.class_labels):
        return family.head  # e.g. multiple choice: a distribution over the choices whatever num_labels says
    problem = model.problem_type if isinstance(model, EnsemblePreTrainedModel) else config.problem_type
    if problem == "regression" or (problem is None and config.num_labels == 1):
        return "regression"
    return "multi_label" if problem == "multi_label_classification" else "classification"


def head_outputs(head: str, logits: torch.Tensor) -> np.ndarray:
    """Probabilities of the logits rows (regression: the values `(N,)`) in float64."""
    values = logits.double().numpy()
    return values.reshape(len(values)) if head == "regression" else softmax(values)


def regression_metrics(mean, labels, variance=None) -> dict[str, float]:
    """
    RMSE and MAE of the predictions `mean` `(N,)` of float `labels` `(N,)`; with a predictive `variance` `(N,)`, the
    Gaussian NLL of the labels under `N(mean, variance)` and the coverage of its central 90% intervals.
    """
    residuals = np.asarray(labels, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    metrics = {"rmse": float(np.sqrt((residuals**2).mean())), "mae": float(np.abs(residuals).mean())}
    if variance is not None:
        variance = np.clip(np.asarray(variance, dtype=np.float64), 1e-12, None)
        nll = 0.5 * (np.log(2 * math.pi * variance) + residuals**2 / variance)
        metrics |= {
            "gaussian_nll": float(nll.mean()),
            "coverage_90": float((np.abs(residuals) <= _Z_90 * np.sqrt(variance)).mean()),
        }
    return metrics


def fit_variance_scale(mean, variance, labels) -> float:
    """The scale `s` of the predictive variance `s * variance` that maximises the Gaussian likelihood of `labels`
    (closed form: the mean of `residual**2 / variance`), so that nominal intervals cover what they claim."""
    residuals = np.asarray(labels, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    return float(np.mean(residuals**2 / np.clip(np.asarray(variance, dtype=np.float64), 1e-12, None)))


def _spans(probs: np.ndarray) -> np.ndarray:
    """The most probable answer span `(start, end)` of each example from its start and end rows `(2N, T)`: start <=
    end < start + `MAX_ANSWER_TOKENS` (each start against the ends it allows, `T x MAX_ANSWER_TOKENS` per example)."""
    starts, ends = probs[0::2], probs[1::2]
    width = starts.shape[-1]
    offsets = np.arange(width)[:, None] + np.arange(MAX_ANSWER_TOKENS)  # (start, length - 1) -> end
    scores = np.where(offsets < width, starts[:, :, None] * ends[:, np.minimum(offsets, width - 1)], -1.0)
    best = scores.reshape(len(starts), -1).argmax(-1)
    start, length = np.unravel_index(best, (width, MAX_ANSWER_TOKENS))
    return np.stack([start, start + length], -1)


def span_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Exact match and F1 of the most probable answer spans against the gold ones, over token positions (SQuAD's
    definitions on the model's tokens, without text normalisation): rows as in `output_rows`."""
    predicted, gold = _spans(probs), np.asarray(labels).reshape(-1, 2)
    overlap = np.clip(np.minimum(predicted[:, 1], gold[:, 1]) - np.maximum(predicted[:, 0], gold[:, 0]) + 1, 0, None)
    precision = overlap / (predicted[:, 1] - predicted[:, 0] + 1)
    recall = overlap / (gold[:, 1] - gold[:, 0] + 1)
    f1 = np.where(overlap > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {"exact_match": float((predicted == gold).all(-1).mean()), "f1": float(f1.mean())}


def is_bio(id2label: dict) -> bool:
    """Whether the label names are IOB / BIO tags (`B-PER`, `I-PER`, `O`, ...), which make entities."""
    return any(str(name)[:2] in ("B-", "I-") for name in id2label.values())


def entity_metrics(probs: np.ndarray, labels: np.ndarray, examples: np.ndarray, id2label: dict) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval's default, CoNLL-style, micro-averaged) of the most probable
    tags of labelled tokens, grouped into sentences by `examples`."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    names = {int(key): str(value) for key, value in id2label.items()}
    boundaries = np.flatnonzero(np.diff(examples)) + 1
    true = [[names[int(i)] for i in part] for part in np.split(labels, boundaries)]
    pred = [[names[int(i)] for i in part] for part in np.split(probs.argmax(-1), boundaries)]
    return {
        "entity_precision": float(precision_score(true, pred, zero_division=0)),
        "entity_recall": float(recall_score(true, pred, zero_division=0)),
        "entity_f1": float(f1_score(true, pred, zero_division=0)),
    }


def is_evaluated(model) -> bool:
    """Whether evaluation and calibration know the head of `model` (not yet causal language models)."""
    return head_of(model) in HEAD_METRICS


def check_head_support(head: str, id2label: dict) -> None:
    """Refuse, before any work, what a head's evaluation cannot do here (a head it does not know; entity metrics
    without seqeval)."""
    if head not in HEAD_METRICS:
        raise ValueError(
            f"Members with a {head!r} head (causal language models) cannot be evaluated or calibrated yet; "
            f"evaluate_ensemble and calibrate_ensemble support the heads {', '.join(HEAD_METRICS)}."
        )
    if head == "token" and is_bio(id2label):
        try:
            import seqeval  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "Entity-level metrics of token classifiers use seqeval: pip install 'hf_starsse[token]' (or seqeval)."
            ) from error


def task_metrics(head: str, probs: np.ndarray, labels: np.ndarray, examples: np.ndarray, id2label: dict) -> dict:
    """The metrics of a head's task beyond its rows' classification metrics: entities (token classification with BIO
    tags), exact match and F1 of answer spans, exact match of all labels at once (multi-label)."""
    if head == "token" and is_bio(id2label):
        return entity_metrics(probs, labels, examples, id2label)
    if head == "question_answering":
        return span_metrics(probs, labels)
    if head == "multi_label":
        correct = (probs.argmax(-1) == labels).reshape(len(np.unique(examples)), -1)
        return {"exact_match": float(correct.all(-1).mean())}
    return {}
