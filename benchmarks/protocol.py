"""The pieces of the quality benchmark's protocol that are decisions, as pure functions (unit-tested on tiny inputs):
when member 0 has converged, when the learning-rate grid must grow, which grid cells show the paper's three
behaviours, paired differences over seeds, and the metrics after pool-then-calibrate."""

import numpy as np

from hf_starsse.evaluation.calibration import calibration_metrics, fit_temperature
from hf_starsse.evaluation.metrics import classification_metrics
from hf_starsse.evaluation.uncertainty import aurc
from hf_starsse.training.sweep import best_cell

CONVERGENCE_TOLERANCE = 0.005  # 0.5 accuracy points


def converged(accuracy: float, doubled_accuracy: float, tolerance: float = CONVERGENCE_TOLERANCE) -> bool:
    """
    The convergence rule: training member 0 twice as long raises its validation accuracy by less than `tolerance`
    (a fraction: 0.005 is half a point). One-sided: when the longer run is worse (overfitting, or the noise of a
    small validation split), more training does not help, and member 0 is not under-trained, which is what the rule
    guards against.
    """
    return doubled_accuracy - accuracy < tolerance


def member0_length(history: dict[float, float], tolerance: float = CONVERGENCE_TOLERANCE) -> tuple[float, bool]:
    """
    Member 0's length from the validation accuracy of lengths tried so far (`{length: accuracy}`, each length twice
    the previous one): the shortest length whose doubling passes `converged`, with `True`; else the longest length
    tried, with `False` (not converged by the rule; double again if the budget allows).
    """
    lengths = sorted(history)
    for short, long in zip(lengths, lengths[1:]):
        if converged(history[short], history[long], tolerance):
            return short, True
    return lengths[-1], False


def trains(cell: dict, member0_accuracy: float, num_classes: int) -> bool:
    """A cell "still trains" when its members keep at least half of member 0's gain over chance (validation)."""
    chance = 1 / num_classes
    return cell["member_accuracy"] >= chance + 0.5 * (member0_accuracy - chance)


def next_lr_ratio(cells: list[dict], member0_accuracy: float, num_classes: int) -> float | None:
    """
    The learning-rate ratio to add so that the best cell becomes interior: twice the largest ratio when the best
    cell has it (and that column still trains), half the smallest when the best cell has the smallest; `None` when
    the best cell is interior.
    """
    ratios = sorted({cell["lr_ratio"] for cell in cells})
    best = best_cell(cells)["lr_ratio"]
    top = [cell for cell in cells if cell["lr_ratio"] == ratios[-1]]
    if best == ratios[-1] and any(trains(cell, member0_accuracy, num_classes) for cell in top):
        return ratios[-1] * 2
    if best == ratios[0]:
        return ratios[0] / 2
    return None


def behaviours(cells: list[dict], member0_accuracy: float, num_classes: int) -> dict[str, dict]:
    """
    The paper's three behaviours from a grid of one method, at the best cell's cycle length: `"more local"` (the
    smallest learning rate), `"optimal"` (the best validation cell) and `"more semi-local"` (the largest learning
    rate that still `trains`; the best cell when no larger one does).
    """
    optimal = best_cell(cells)
    column = sorted(
        (cell for cell in cells if cell["length_ratio"] == optimal["length_ratio"]), key=lambda c: c["lr_ratio"]
    )
    training = [cell for cell in column if trains(cell, member0_accuracy, num_classes)]
    semi_local = max(training + [optimal], key=lambda c: c["lr_ratio"])
    return {"more local": column[0], "optimal": optimal, "more semi-local": semi_local}


def paired_difference(values: dict, baseline: dict) -> tuple[float, float]:
    """Mean and sample std (0 for one seed) over seeds of `values[seed] - baseline[seed]` (the seeds of both)."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        raise ValueError("No seed in common: paired differences need the same seeds for both.")
    diffs = np.array([values[seed] - baseline[seed] for seed in seeds], dtype=np.float64)
    return float(diffs.mean()), float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0


def log_probs(probs) -> np.ndarray:
    """`log(probs)` in float64, zeros clipped to the smallest positive float (a probability that underflowed)."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny))


def temperature(probs, labels) -> float:
    """The temperature of a prediction given as probabilities (e.g. an ensemble's mean), fitted on held-out `labels`
    by the library's `fit_temperature` (minimum NLL of `softmax(log(probs) / T)`)."""
    return fit_temperature(log_probs(probs), labels)


def evaluation_metrics(probs, labels, fitted_temperature: float) -> dict[str, float]:
    """
    `classification_metrics` of `probs`, plus `ece_calibrated` and `nll_calibrated` (after dividing the
    log-probabilities by `fitted_temperature`, fitted on the validation split) and `aurc` (the risk-coverage area of
    the max-probability score; a temperature rarely changes that ranking).
    """
    calibrated = calibration_metrics(log_probs(probs), labels, fitted_temperature)
    return {**classification_metrics(probs, labels), "ece_calibrated": calibrated["ece"],
            "nll_calibrated": calibrated["nll"], "aurc": aurc(probs, labels)}  # fmt: skip


def calibration_goal(ensemble: dict, members: list[dict], others: list[dict]) -> dict:
    """
    The goal of pool-then-calibrate: the calibrated ensemble's ECE at or below the best member's (raw) ECE, while
    its calibrated NLL stays the lowest: at or below every member's and every other model's NLL, raw or calibrated.

    Args:
        ensemble: The ensemble's metrics (`ece_calibrated`, `nll_calibrated`).
        members: Each member's metrics (`ece`, `nll`, `nll_calibrated`).
        others: Other models to beat on NLL (e.g. the uniform soup): `nll`, `nll_calibrated`.

    Returns:
        `dict`: `ece`, `best_member_ece`, `nll`, `lowest_other_nll` and `holds` (`bool`).
    """
    best_member_ece = min(m["ece"] for m in members)
    lowest_other_nll = min(min(m["nll"], m["nll_calibrated"]) for m in members + others)
    ece, nll = ensemble["ece_calibrated"], ensemble["nll_calibrated"]
    return {"ece": ece, "best_member_ece": best_member_ece, "nll": nll, "lowest_other_nll": lowest_other_nll,
            "holds": bool(ece <= best_member_ece and nll <= lowest_other_nll)}  # fmt: skip
