import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_starsse.evaluation import metrics

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
LABELS = np.array([0, 2, 2])


def test_hand_computed_values():
    assert metrics.accuracy(PROBS, LABELS) == pytest.approx(2 / 3)
    assert metrics.mean_per_class_accuracy(PROBS, LABELS) == pytest.approx((1 + 0.5) / 2)
    assert metrics.negative_log_likelihood(PROBS, LABELS) == pytest.approx(
        -(math.log(0.7) + math.log(0.1) + math.log(0.4)) / 3
    )
    # confidences 0.7, 0.8, 0.4 fall in three different bins: gaps |1-0.7|, |0-0.8|, |1-0.4|
    assert metrics.expected_calibration_error(PROBS, LABELS) == pytest.approx((0.3 + 0.8 + 0.6) / 3)
    assert metrics.brier_score(PROBS, LABELS) == pytest.approx((0.14 + 1.46 + 0.54) / 3)
    entropies = [-sum(p * math.log(p) for p in row) for row in PROBS]
    assert metrics.predictive_entropy(PROBS) == pytest.approx(np.mean(entropies))
    assert metrics.predictive_entropy(PROBS, reduction="none") == pytest.approx(entropies)


def test_reliability_diagram_bins():
    diagram = metrics.reliability_diagram(PROBS, LABELS, n_bins=5)
    assert diagram["count"].tolist() == [0, 1, 0, 2, 0]  # 0.4 -> (0.2, 0.4]; 0.7 and 0.8 -> (0.6, 0.8]
    assert diagram["confidence"][3] == pytest.approx(0.75) and diagram["accuracy"][3] == pytest.approx(0.5)
    assert np.isnan(diagram["accuracy"][0]) and len(diagram["bin_edges"]) == 6
    assert metrics.expected_calibration_error(PROBS, LABELS, n_bins=5) == pytest.approx((0.6 + 2 * 0.25) / 3)


def test_perfect_predictions_one_class_and_ties():
    one_hot = np.eye(3)[[0, 1, 2, 1]]
    labels = np.array([0, 1, 2, 1])
    assert metrics.accuracy(one_hot, labels) == 1.0
    assert metrics.negative_log_likelihood(one_hot, labels) == pytest.approx(0.0, abs=1e-9)
    assert metrics.expected_calibration_error(one_hot, labels) == pytest.approx(0.0)
    assert metrics.brier_score(one_hot, labels) == pytest.approx(0.0)
    assert metrics.predictive_entropy(one_hot) == pytest.approx(0.0, abs=1e-9)
    single_class = np.ones((4, 1))
    assert metrics.accuracy(single_class, np.zeros(4, dtype=int)) == 1.0
    assert metrics.mean_per_class_accuracy(PROBS[:2], np.array([0, 0])) == 0.5  # only class 0 present
    tie = np.array([[0.5, 0.5]])
    assert metrics.accuracy(tie, np.array([0])) == 1.0 and metrics.accuracy(tie, np.array([1])) == 0.0


@pytest.mark.parametrize(
    "probs,labels,message",
    [
        (np.array([[0.5, 0.6]]), np.array([0]), "rows must sum to 1"),
        (np.array([[2.0, -1.0]]), np.array([0]), "negative or non-finite"),
        (np.array([[np.nan, 1.0]]), np.array([0]), "negative or non-finite"),
        (np.array([0.5, 0.5]), np.array([0]), r"shape \(N, C\)"),
        (PROBS, np.array([0, 1]), r"labels must have shape \(3,\)"),
        (PROBS, np.array([0, 1, 3]), r"labels must lie in 0..2"),
        (PROBS, np.array([0.0, 1.0, 2.0]), "integer classes"),
    ],
)
def test_bad_inputs(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        metrics.accuracy(probs, labels)


def test_diversity():
    member_probs = np.eye(3)[[[0, 1, 2], [0, 1, 1], [1, 1, 1]]]
    assert metrics.disagreement(member_probs) == pytest.approx((1 / 3 + 2 / 3 + 1 / 3) / 3)
    p, q = [0.5, 0.5], [0.9, 0.1]
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert metrics.mean_pairwise_kl(np.array([[p], [q]])) == pytest.approx((kl_pq + kl_qp) / 2)
    assert math.isnan(metrics.disagreement(member_probs[:1])) and math.isnan(
        metrics.mean_pairwise_kl(member_probs[:1])
    )
    assert metrics.mean_pairwise_kl(np.stack([PROBS, PROBS])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"shape \(K, N, C\)"):
        metrics.disagreement(PROBS)
    assert metrics.ensemble_gain(0.8, [0.7, 0.75]) == pytest.approx(0.075)


def test_ood_auroc():
    probs_in = np.array([[0.9, 0.1], [0.8, 0.2]])
    probs_out = np.array([[0.8, 0.2], [0.5, 0.5]])
    assert metrics.ood_auroc(probs_in, probs_out) == pytest.approx(3.5 / 4)  # the 0.8 tie counts half
    assert metrics.ood_auroc(probs_in, probs_in) == pytest.approx(0.5)
    assert metrics.ood_auroc(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]])) == 1.0


def test_torch_tensors_and_compute_metrics():
    logits = torch.log(torch.tensor(PROBS))
    assert metrics.accuracy(torch.tensor(PROBS), torch.tensor(LABELS)) == pytest.approx(2 / 3)
    result = metrics.compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=LABELS))
    assert result == pytest.approx(metrics.classification_metrics(PROBS, LABELS))
    with_members = metrics.compute_metrics(EvalPrediction(predictions=(logits.numpy(), np.zeros(1)), label_ids=LABELS))
    assert with_members == pytest.approx(result)


def test_evaluate_module_loads_offline(monkeypatch, tmp_path):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(metrics.EVALUATE_MODULE, cache_dir=str(tmp_path))
    result = metric.compute(predictions=PROBS.tolist(), references=LABELS.tolist())
    assert result == pytest.approx(metrics.classification_metrics(PROBS, LABELS))
