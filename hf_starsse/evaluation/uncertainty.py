"""Per-sample uncertainty, selective prediction and out-of-distribution detection, on predicted probabilities.

Inputs follow `hf_starsse.metrics`: `probs` is `(N, C)`, `member_probs` is `(K, N, C)`, `labels` is `(N,)`; scores
are `(N,)` arrays where higher means "more confident / more in-distribution". Scalars come back as Python floats.

- `uncertainty_decomposition`: total (predictive entropy) = aleatoric (expected member entropy) + epistemic (mutual
  information), and member disagreement, per sample.
- `risk_coverage_curve`, `aurc`, `accuracy_at_coverage`: abstain on the least confident samples.
- `auroc`, `fpr_at_tpr`, `ood_metrics`: tell in-distribution from out-of-distribution samples by a confidence score.
"""

import math

import numpy as np

from .metrics import as_numpy, auroc, check_labels, check_probs, check_scores

OOD_SCORES = ("max_prob", "entropy", "mutual_information")
"""Confidence scores of `ood_metrics` (entropy and mutual information enter negated: low uncertainty = in-dist)."""


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)


def uncertainty_decomposition(member_probs, member_weights=None) -> dict[str, np.ndarray]:
    """
    The decomposition of an ensemble's predictive uncertainty per sample, in nats:

    - `predictive_entropy` (total): entropy of the (weighted) mean of the members' probabilities;
    - `expected_entropy` (aleatoric): (weighted) mean of the members' entropies;
    - `mutual_information` (epistemic): their difference, non-negative (Jensen; clamped at 0 only for rounding);
    - `disagreement`: fraction of member pairs whose predicted classes differ (0 for one member).

    Args:
        member_probs: `(K, N, C)` member probabilities.
        member_weights (*optional*): `(K,)` non-negative weights of the members (default: uniform).

    Returns:
        `dict`: The four `(N,)` arrays.
    """
    member_probs = check_probs(member_probs, "member_probs", ndim=3)
    count = len(member_probs)
    weights = np.full(count, 1 / count) if member_weights is None else as_numpy(member_weights).astype(np.float64)
    weights = weights / weights.sum()
    total = _entropy(np.einsum("k,knc->nc", weights, member_probs))
    aleatoric = np.einsum("k,kn->n", weights, _entropy(member_probs))
    predictions = member_probs.argmax(-1)
    pairs = [(a, b) for a in range(count) for b in range(a + 1, count)]
    disagree = np.mean([predictions[a] != predictions[b] for a, b in pairs], 0) if pairs else np.zeros(total.shape)
    return {
        "predictive_entropy": total,
        "expected_entropy": aleatoric,
        "mutual_information": np.clip(total - aleatoric, 0, None),
        "disagreement": disagree.astype(np.float64),
    }


def _tie_averaged_errors(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Errors sorted by decreasing confidence, each replaced by its tie group's mean (ties have no order)."""
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence, errors = confidence[order], 1.0 - correct[order]
    _, group, counts = np.unique(-sorted_confidence, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=errors) / counts)[group]


def _selective_inputs(probs, labels, confidence) -> tuple[np.ndarray, np.ndarray]:
    probs = check_probs(probs)
    labels = check_labels(labels, probs)
    if not len(labels):
        raise ValueError("Selective prediction needs at least one sample.")
    confidence = probs.max(-1) if confidence is None else as_numpy(confidence).astype(np.float64)
    if confidence.shape != labels.shape:
        raise ValueError(f"confidence must have shape {labels.shape}, got {confidence.shape}.")
    return confidence, (probs.argmax(-1) == labels).astype(np.float64)


def risk_coverage_curve(probs, labels, confidence=None) -> dict[str, np.ndarray]:
    """
    The risk-coverage curve of selective prediction: keep the `k` most confident samples (`k = 1..N`) and measure
    the error rate among them. Samples with equal confidence are kept or dropped together, so a tie group's errors
    are spread evenly over its positions (the expected curve under random tie-breaking).

    Args:
        probs: `(N, C)` probabilities; the prediction is the argmax.
        labels: `(N,)` integer classes.
        confidence (*optional*): `(N,)` scores to rank by (default: the max probability).

    Returns:
        `dict`: `coverage` (`k / N`) and `risk` (error rate of the `k` kept samples), both `(N,)`.
    """
    confidence, correct = _selective_inputs(probs, labels, confidence)
    kept = np.arange(1, len(correct) + 1)
    return {"coverage": kept / len(correct), "risk": np.cumsum(_tie_averaged_errors(confidence, correct)) / kept}


def aurc(probs, labels, confidence=None) -> float:
    """Area under the risk-coverage curve (Geifman et al., 2019): the mean risk over coverages 1/N..1; lower is
    better. Arguments as in [`risk_coverage_curve`]."""
    return float(risk_coverage_curve(probs, labels, confidence)["risk"].mean())


def accuracy_at_coverage(probs, labels, coverage: float, confidence=None) -> float:
    """Accuracy on the `ceil(coverage * N)` most confident samples (the rest abstained on)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage={coverage} must lie in (0, 1].")
    curve = risk_coverage_curve(probs, labels, confidence)
    kept = max(1, math.ceil(round(coverage * len(curve["risk"]), 9)))
    return float(1 - curve["risk"][kept - 1])


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """
    False-positive rate at a true-positive rate: with the highest threshold `t` that keeps at least `tpr` of the
    in-distribution samples (`score >= t`), the fraction of out-of-distribution samples kept too; lower is better.
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr={tpr} must lie in (0, 1].")
    scores_in, scores_out = check_scores(scores_in, scores_out)
    needed = math.ceil(round(tpr * len(scores_in), 9))
    threshold = np.sort(scores_in)[len(scores_in) - needed]
    return float((scores_out >= threshold).mean())


def confidence_scores(probs, member_probs=None) -> dict[str, np.ndarray]:
    """
    Per-sample confidence scores (higher: more in-distribution): `max_prob`, `entropy` (negated predictive entropy)
    and, given `(K, N, C)` member probabilities of K >= 2 members, `mutual_information` (negated).
    """
    probs = check_probs(probs)
    scores = {"max_prob": probs.max(-1), "entropy": -_entropy(probs)}
    if member_probs is not None and len(member_probs) > 1:
        scores["mutual_information"] = -uncertainty_decomposition(member_probs)["mutual_information"]
    return scores


def ood_metrics(probs_in, probs_out, member_probs_in=None, member_probs_out=None) -> dict[str, float]:
    """
    `auroc_<score>` and `fpr95_<score>` (FPR at 95% TPR) for each score of `confidence_scores`: mutual information
    needs the members' probabilities (K >= 2) on both sets.

    Example:
    ```python
    ood_metrics(ensemble_probs_test, ensemble_probs_ood, member_probs_test, member_probs_ood)["auroc_max_prob"]
    ```
    """
    scores_in = confidence_scores(probs_in, member_probs_in)
    scores_out = confidence_scores(probs_out, member_probs_out)
    result = {}
    for name in (name for name in OOD_SCORES if name in scores_in and name in scores_out):
        result[f"auroc_{name}"] = auroc(scores_in[name], scores_out[name])
        result[f"fpr95_{name}"] = fpr_at_tpr(scores_in[name], scores_out[name])
    return result


def selective_metrics(probs, labels, coverages: tuple[float, ...] = (0.9, 0.8)) -> dict[str, float]:
    """`aurc` and `accuracy_at_<percent>` (e.g. `accuracy_at_90`) for each coverage, ranking by max probability."""
    result = {"aurc": aurc(probs, labels)}
    for coverage in coverages:
        result[f"accuracy_at_{round(coverage * 100)}"] = accuracy_at_coverage(probs, labels, coverage)
    return result


__all__ = [
    "OOD_SCORES",
    "accuracy_at_coverage",
    "aurc",
    "confidence_scores",
    "fpr_at_tpr",
    "ood_metrics",
    "risk_coverage_curve",
    "selective_metrics",
    "uncertainty_decomposition",
]
