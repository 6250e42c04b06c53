"""Uncertainty decomposition, selective prediction and OOD scores against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from hf_starsse import build_ensemble
from hf_starsse.evaluation import uncertainty
from hf_starsse.evaluation.metrics import softmax

from conftest import text_dataset


def probs_with_confidence(confidences) -> np.ndarray:
    """Two-class probabilities predicting class 0 with the given max probabilities."""
    confidences = np.asarray(confidences, dtype=float)
    return np.stack([confidences, 1 - confidences], 1)


def test_decomposition_hand_computed():
    member_probs = np.array(
        [
            [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]],
            [[0.0, 1.0], [0.5, 0.5], [0.9, 0.1]],
            [[0.0, 1.0], [0.5, 0.5], [0.2, 0.8]],
        ]
    )
    parts = uncertainty.uncertainty_decomposition(member_probs)
    h = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    mean_last = [(0.9 + 0.9 + 0.2) / 3, (0.1 + 0.1 + 0.8) / 3]
    expected_total = [h([1 / 3, 2 / 3]), math.log(2), h(mean_last)]
    expected_aleatoric = [0.0, math.log(2), (2 * h([0.9, 0.1]) + h([0.2, 0.8])) / 3]
    np.testing.assert_allclose(parts["predictive_entropy"], expected_total, atol=1e-9)
    np.testing.assert_allclose(parts["expected_entropy"], expected_aleatoric, atol=1e-9)
    np.testing.assert_allclose(parts["mutual_information"], np.subtract(expected_total, expected_aleatoric), atol=1e-9)
    np.testing.assert_allclose(parts["disagreement"], [2 / 3, 0.0, 2 / 3])  # 0/1 ties: argmax takes class 0
    assert (parts["mutual_information"] >= 0).all()
    weighted = uncertainty.uncertainty_decomposition(member_probs[:2, :1], member_weights=[3, 1])
    assert weighted["predictive_entropy"][0] == pytest.approx(h([0.75, 0.25]))
    assert uncertainty.uncertainty_decomposition(member_probs[:1])["disagreement"].tolist() == [0, 0, 0]


def test_ensemble_output_matches_the_decomposition(text_run):
    model = build_ensemble(text_run.args.output_dir)
    batch = text_dataset(n=6, seed=3).with_format("torch")[:]
    with torch.no_grad():
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    parts = uncertainty.uncertainty_decomposition(softmax(output.member_logits.numpy()))
    for key, values in parts.items():
        np.testing.assert_allclose(getattr(output, key).numpy(), values, atol=1e-5, err_msg=key)
    total = output.expected_entropy + output.mutual_information
    np.testing.assert_allclose(output.predictive_entropy.numpy(), total.numpy(), atol=1e-6)
    assert (output.mutual_information >= 0).all()


def test_risk_coverage_and_aurc_hand_computed():
    probs = probs_with_confidence([0.6, 0.9, 0.7, 0.8])
    labels = np.array([1, 0, 0, 1])  # correct: 0.9 and 0.7; wrong: 0.8 and 0.6
    curve = uncertainty.risk_coverage_curve(probs, labels)
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["risk"], [0, 1 / 2, 1 / 3, 2 / 4])
    assert uncertainty.aurc(probs, labels) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert uncertainty.accuracy_at_coverage(probs, labels, 0.5) == pytest.approx(0.5)
    assert uncertainty.accuracy_at_coverage(probs, labels, 0.75) == pytest.approx(2 / 3)
    assert uncertainty.accuracy_at_coverage(probs, labels, 0.7) == pytest.approx(2 / 3)  # ceil(2.8) = 3 kept
    selective = uncertainty.selective_metrics(probs, labels)
    assert set(selective) == {"aurc", "accuracy_at_90", "accuracy_at_80"} and selective["accuracy_at_80"] == 0.5
    tied = probs_with_confidence([0.9, 0.9])
    for labels in ([0, 1], [1, 0]):  # ties give the same curve whatever the order
        assert uncertainty.aurc(tied, np.array(labels)) == pytest.approx(0.5)


def test_auroc_and_fpr95_hand_computed():
    scores_in = np.arange(1, 21, dtype=float)
    scores_out = np.array([0.5, 1.5, 2.0, 30.0])
    # 95% of 20 = 19 kept: the threshold is 2, which keeps the OOD scores 2 and 30.
    assert uncertainty.fpr_at_tpr(scores_in, scores_out) == pytest.approx(0.5)
    assert uncertainty.fpr_at_tpr(scores_in, scores_out, tpr=1.0) == pytest.approx(0.75)
    from hf_starsse.evaluation.metrics import auroc

    assert auroc(scores_in, scores_out) == pytest.approx((20 + 19 + 18.5 + 0) / 80)
    with pytest.raises(ValueError, match="at least one in-distribution"):
        uncertainty.fpr_at_tpr(scores_in, [])
    with pytest.raises(ValueError, match="tpr=0"):
        uncertainty.fpr_at_tpr(scores_in, scores_out, tpr=0)


def test_ood_metrics_scores():
    member_in = np.array([[[0.9, 0.1], [0.8, 0.2]], [[0.9, 0.1], [0.7, 0.3]]])
    member_out = np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.1, 0.9], [0.4, 0.6]]])
    result = uncertainty.ood_metrics(member_in.mean(0), member_out.mean(0), member_in, member_out)
    assert set(result) == {f"{m}_{s}" for m in ("auroc", "fpr95") for s in uncertainty.OOD_SCORES}
    assert result["auroc_max_prob"] == 1.0 and result["auroc_mutual_information"] == 1.0
    assert result["fpr95_max_prob"] == 0.0
    single = uncertainty.ood_metrics(member_in[0], member_out[0])
    assert "auroc_mutual_information" not in single


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one sample"):
        uncertainty.aurc(np.zeros((0, 2)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="coverage=0"):
        uncertainty.accuracy_at_coverage(probs_with_confidence([0.9]), np.array([0]), 0)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        uncertainty.risk_coverage_curve(np.array([[2.0, 3.0]]), np.array([0]))
