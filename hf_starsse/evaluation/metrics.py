"""Classification metrics on predicted probabilities: accuracy, NLL, calibration, Brier score, diversity, OOD.

Every function takes NumPy arrays or torch tensors: `probs` is `(N, C)` probabilities (rows sum to 1), `member_probs`
is `(K, N, C)`, `labels` is `(N,)` integer classes. Scalars come back as Python floats.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

EVALUATE_MODULE = str(Path(__file__).parent / "evaluate_metric" / "starsse_metrics.py")
"""Path of the `evaluate` metric module shipped with the package: `evaluate.load(EVALUATE_MODULE)` works offline."""

_SUM_TOLERANCE = 1e-3


def as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def check_probs(probs, name: str = "probs", ndim: int = 2) -> np.ndarray:
    probs = as_numpy(probs).astype(np.float64)
    if probs.ndim != ndim:
        shape = "(N, C)" if ndim == 2 else "(K, N, C)"
        raise ValueError(f"{name} must have shape {shape}, got {probs.shape}.")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{name} holds negative or non-finite values: pass probabilities (softmax outputs).")
    sums = probs.sum(-1)
    if np.abs(sums - 1).max(initial=0) > _SUM_TOLERANCE:
        raise ValueError(
            f"{name} rows must sum to 1 (sums range from {sums.min():.4f} to {sums.max():.4f}): pass probabilities "
            "(softmax of the logits), not logits."
        )
    return probs


def check_labels(labels, probs: np.ndarray) -> np.ndarray:
    labels = as_numpy(labels)
    if labels.shape != probs.shape[-2:-1]:
        raise ValueError(f"labels must have shape ({probs.shape[-2]},), got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer classes, got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[-1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[-1] - 1}, got {labels.min()}..{labels.max()}.")
    return labels


def accuracy(probs, labels) -> float:
    """Fraction of samples whose most probable class (the first one on ties) is the label."""
    probs = check_probs(probs)
    return float((probs.argmax(-1) == check_labels(labels, probs)).mean())


def mean_per_class_accuracy(probs, labels) -> float:
    """Accuracy averaged over the classes present in `labels` (balanced accuracy)."""
    probs = check_probs(probs)
    labels = check_labels(labels, probs)
    correct = probs.argmax(-1) == labels
    return float(np.mean([correct[labels == c].mean() for c in np.unique(labels)]))


def negative_log_likelihood(probs, labels, eps: float = 1e-12) -> float:
    """Mean of `-log p(label)`, with probabilities clipped at `eps` so that a confident mistake stays finite."""
    probs = check_probs(probs)
    labels = check_labels(labels, probs)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], eps, None)).mean())


def reliability_diagram(probs, labels, n_bins: int = 15) -> dict[str, np.ndarray]:
    """
    The data of a reliability diagram: samples binned by confidence (max probability) into `n_bins` equal-width
    bins of (0, 1] (bin b holds confidences in (b/n_bins, (b+1)/n_bins]).

    Returns:
        `dict`: `bin_edges` (n_bins + 1), and per bin `confidence` (mean max probability), `accuracy` and `count`
        (`confidence`/`accuracy` are NaN for empty bins).
    """
    probs = check_probs(probs)
    labels = check_labels(labels, probs)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        bin_accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return {
        "bin_edges": np.linspace(0, 1, n_bins + 1),
        "confidence": mean_confidence,
        "accuracy": bin_accuracy,
        "count": count,
    }


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE: the bin-size-weighted mean of |accuracy - confidence| over `n_bins` equal-width confidence bins."""
    diagram = reliability_diagram(probs, labels, n_bins)
    filled = diagram["count"] > 0
    gaps = np.abs(diagram["accuracy"][filled] - diagram["confidence"][filled])
    return float((gaps * diagram["count"][filled]).sum() / diagram["count"].sum())


def brier_score(probs, labels) -> float:
    """Mean over samples of the squared error between `probs` and the one-hot label, summed over classes."""
    probs = check_probs(probs)
    labels = check_labels(labels, probs)
    one_hot = np.eye(probs.shape[-1])[labels]
    return float(((probs - one_hot) ** 2).sum(-1).mean())


def predictive_entropy(probs, reduction: str = "mean"):
    """
    Entropy (nats) of each predictive distribution.

    Args:
        probs: `(N, C)` probabilities.
        reduction (`str`, *optional*, defaults to `"mean"`): `"mean"` returns the mean over samples (a float),
            `"none"` the `(N,)` array.
    """
    probs = check_probs(probs)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)
    if reduction == "none":
        return entropy
    if reduction != "mean":
        raise ValueError(f"reduction={reduction!r} must be 'mean' or 'none'.")
    return float(entropy.mean())


def disagreement(member_probs) -> float:
    """Mean over member pairs of the fraction of samples whose predicted classes differ (NaN for one member)."""
    member_probs = check_probs(member_probs, "member_probs", ndim=3)
    predictions = member_probs.argmax(-1)
    pairs = [(a, b) for a in range(len(predictions)) for b in range(a + 1, len(predictions))]
    if not pairs:
        return float("nan")
    return float(np.mean([(predictions[a] != predictions[b]).mean() for a, b in pairs]))


def mean_pairwise_kl(member_probs, eps: float = 1e-12) -> float:
    """Mean over ordered member pairs (a != b) of the mean KL(p_a || p_b) over samples (NaN for one member)."""
    member_probs = np.clip(check_probs(member_probs, "member_probs", ndim=3), eps, None)
    logs = np.log(member_probs)
    count = len(member_probs)
    if count < 2:
        return float("nan")
    kls = [
        (member_probs[a] * (logs[a] - logs[b])).sum(-1).mean() for a in range(count) for b in range(count) if a != b
    ]
    return float(np.mean(kls))


def ensemble_gain(ensemble_metric: float, member_metrics: Sequence[float]) -> float:
    """The ensemble's metric minus the mean of its members' (positive is better for accuracy, negative for NLL)."""
    return float(ensemble_metric - np.mean(member_metrics))


def check_scores(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray]:
    """In- and out-of-distribution scores as flat float64 arrays, refused when empty or not finite."""
    scores_in = as_numpy(scores_in).astype(np.float64).ravel()
    scores_out = as_numpy(scores_out).astype(np.float64).ravel()
    if not len(scores_in) or not len(scores_out):
        raise ValueError("OOD detection needs at least one in-distribution and one out-of-distribution sample.")
    if not (np.isfinite(scores_in).all() and np.isfinite(scores_out).all()):
        raise ValueError("OOD scores must be finite.")
    return scores_in, scores_out


def auroc(scores_in, scores_out) -> float:
    """
    AUROC of telling in-distribution samples (positives, expected to score higher) from out-of-distribution ones by
    a `(N,)` score: the probability that a random in-distribution sample scores higher than a random OOD one (ties
    count half).
    """
    scores_in, scores_out = check_scores(scores_in, scores_out)
    scores = np.concatenate([scores_in, scores_out])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based ranks, ties averaged
    u_statistic = average_rank[: len(scores_in)].sum() - len(scores_in) * (len(scores_in) + 1) / 2
    return float(u_statistic / (len(scores_in) * len(scores_out)))


def ood_auroc(probs_in, probs_out) -> float:
    """[`auroc`] of in-distribution against out-of-distribution samples scored by their max probability."""
    return auroc(check_probs(probs_in, "probs_in").max(-1), check_probs(probs_out, "probs_out").max(-1))


def classification_metrics(probs, labels, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, mean per-class accuracy, NLL, ECE, Brier score and mean predictive entropy of `probs`."""
    return {
        "accuracy": accuracy(probs, labels),
        "mean_per_class_accuracy": mean_per_class_accuracy(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "brier": brier_score(probs, labels),
        "entropy": predictive_entropy(probs),
    }


def softmax(logits) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64."""
    logits = as_numpy(logits).astype(np.float64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def compute_metrics(eval_prediction) -> dict[str, float]:
    """
    A `compute_metrics` for [`~transformers.Trainer`]: `classification_metrics` of the softmax of the predicted
    logits (for an ensemble model, exactly the ensemble's probabilities).

    Example:
    ```python
    trainer = StarSSETrainer(..., compute_metrics=hf_starsse.evaluation.metrics.compute_metrics)
    ```
    """
    logits = eval_prediction.predictions
    if isinstance(logits, tuple):  # models returning more than logits (e.g. member_logits) give a tuple
        logits = logits[0]
    return classification_metrics(softmax(logits), eval_prediction.label_ids)
