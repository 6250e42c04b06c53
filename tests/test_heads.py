"""Evaluation and calibration of every head (issue "every task the Trainer trains", items 3 and 4): the rows of each
head, entity / answer-span / regression metrics, `evaluate_ensemble`'s table and `calibrate_ensemble` for token
classification, multiple choice, extractive QA, multi-label and regression ensembles and soups."""

import numpy as np
import pytest
import torch
from seqeval.metrics import f1_score
from test_task_families import build_family, token_classification
from transformers import BertConfig, DataCollatorWithPadding

from hf_starsse import StarSSETrainer, build_ensemble, calibrate_ensemble, evaluate_ensemble, uniform_soup
from hf_starsse.ensemble.modeling_ensemble import EnsembleForMultipleChoice
from hf_starsse.evaluation.heads import (
    entity_metrics,
    fit_variance_scale,
    head_of,
    regression_metrics,
    span_metrics,
)
from hf_starsse.evaluation.predictions import predict_probs
from hf_starsse.soups.predict import output_rows

from conftest import NUM_LABELS, make_args, tokenizer

TAGS = {0: "O", 1: "B-PER", 2: "I-PER"}


def test_output_rows_of_every_head():
    logits = torch.randn(2, 3, 4)
    rows, labels, examples = output_rows({"logits": logits}, {"labels": torch.tensor([[-100, 1, 2], [3, -100, -100]])})
    assert torch.equal(rows, logits[[0, 0, 1], [1, 2, 0]]) and labels.tolist() == [1, 2, 3]
    assert examples.tolist() == [0, 0, 1]
    start, end = torch.randn(2, 5), torch.randn(2, 5)
    batch = {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 4])}
    rows, labels, examples = output_rows({"start_logits": start, "end_logits": end}, batch)
    assert torch.equal(rows, torch.stack([start[0], end[0], start[1], end[1]])) and labels.tolist() == [1, 3, 2, 4]
    multi = torch.tensor([[2.0, -1.0]])
    rows, labels, _ = output_rows({"logits": multi}, {"labels": torch.tensor([[1.0, 0.0]])})
    assert torch.allclose(rows.softmax(-1)[:, 1], multi.sigmoid().flatten()) and labels.tolist() == [1, 0]
    rows, labels, _ = output_rows({"logits": torch.tensor([[0.5], [1.5]])}, {"labels": torch.tensor([1.0, 2.0])})
    assert rows.shape == (2, 1) and labels.tolist() == [1.0, 2.0]


def test_entity_metrics_are_seqevals_per_sentence():
    labels = np.array([1, 2, 0, 1, 0, 1])  # sentence 0: PER, PER; sentence 1: PER ... PER
    predicted = np.array([1, 2, 0, 0, 0, 1])
    examples = np.array([0, 0, 0, 0, 1, 1])
    probs = np.eye(3)[predicted]
    metrics = entity_metrics(probs, labels, examples, TAGS)
    true = [["B-PER", "I-PER", "O", "B-PER"], ["O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-PER"]]
    assert metrics["entity_f1"] == pytest.approx(f1_score(true, pred)) == pytest.approx(0.8)
    assert metrics["entity_precision"] == 1 and metrics["entity_recall"] == pytest.approx(2 / 3)


def test_span_metrics_exact_match_and_overlap():
    probs = np.zeros((4, 6))
    probs[0, 1] = probs[1, 3] = 1  # example 0 predicts tokens 1..3
    probs[2, 4], probs[3, 2] = 0.6, 0.7  # example 1: 4..2 (0.42) ends before it starts, not a span
    probs[2, 2], probs[3, 4] = 0.4, 0.3  # 2..2 (0.28) beats 4..4 (0.18) and 2..4 (0.12)
    metrics = span_metrics(probs, np.array([1, 3, 2, 3]))
    assert metrics["exact_match"] == 0.5  # example 1 predicts 2..2 against 2..3: precision 1, recall 1/2
    assert metrics["f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_regression_metrics_and_the_variance_scale():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=20000)
    variance = np.full_like(labels, 0.25)  # the members claim a spread of 0.5 for a noise of 1
    before = regression_metrics(np.zeros_like(labels), labels, variance)
    assert before["coverage_90"] < 0.7
    scale = fit_variance_scale(np.zeros_like(labels), variance, labels)
    assert scale == pytest.approx(4, rel=0.05)
    after = regression_metrics(np.zeros_like(labels), labels, scale * variance)
    assert after["coverage_90"] == pytest.approx(0.9, abs=0.01) and after["gaussian_nll"] < before["gaussian_nll"]
    assert regression_metrics([1.0, 3.0], [2.0, 2.0]) == {"rmse": 1.0, "mae": 1.0}


def train_run(tmp_path, model, data, collator=None):
    run = tmp_path / "run"
    args = make_args(run, num_members=3, cycle_steps=2, learning_rate=5e-3, cycle_learning_rate=1e-2)
    StarSSETrainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    return run


def family_run(tmp_path, pretrained_bert, family):
    model, data, collator = build_family(family, pretrained_bert)
    if family == "token":
        model.config.id2label, model.config.label2id = TAGS, {tag: i for i, tag in TAGS.items()}
    return train_run(tmp_path, model, data, collator), data, collator


HEADS = {
    "token": "token",
    "multiple_choice": "classification",
    "question_answering": "question_answering",
    "multi_label": "multi_label",
    "regression": "regression",
    "audio": "classification",
}


@pytest.mark.parametrize("family", list(HEADS))
def test_evaluate_and_calibrate_every_head(tmp_path, pretrained_bert, family):
    run, data, collator = family_run(tmp_path, pretrained_bert, family)
    split = data.train_test_split(test_size=0.5, seed=0)
    datasets = {"validation": split["train"], "test": split["test"]}
    rows = evaluate_ensemble(run, datasets, calibration_split="validation", data_collator=collator)
    table = {(row["model"], row["size"], row["split"]): row for row in rows}
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    assert head_of(ensemble) == HEADS[family]
    test = table["ensemble", 3, "test"]
    if family == "regression":
        # the ensemble's mean and the members' variance, as the saved ensemble returns them
        values, labels = predict_probs(ensemble, datasets["test"], collator)
        assert test["rmse"] == pytest.approx(np.sqrt(((values - labels) ** 2).mean()), rel=1e-5)
        assert {"gaussian_nll", "coverage_90", "variance_scale", "coverage_90_calibrated"} <= set(test)
        assert "gaussian_nll" not in table["member", 1, "test"]  # a single member has no variance
    else:
        # the table's ensemble is the saved ensemble's pooled prediction, row by row
        probs, labels = predict_probs(ensemble, datasets["test"], collator)
        assert test["nll"] == pytest.approx(-np.log(probs[np.arange(len(labels)), labels]).mean(), rel=1e-4)
        assert {"temperature", "nll_calibrated", "ece_calibrated"} <= set(test)
        expected = {"token": "entity_f1", "question_answering": "f1", "multi_label": "exact_match"}
        assert expected.get(family, "accuracy") in test
    card = (tmp_path / "ensemble" / "README.md").read_text()  # the card's table shows the head's own metrics
    shown = {"token": "entity F1", "question_answering": "exact match", "multi_label": "exact match"}
    assert f"| {shown.get(family, 'rmse' if family == 'regression' else 'accuracy')} |" in card
    calibrated = calibrate_ensemble(tmp_path / "ensemble", datasets["validation"], data_collator=collator)
    record = calibrated.config.calibration
    metric = "gaussian_nll" if family == "regression" else "nll"
    assert record["after"][metric] <= record["before"][metric] + 1e-9
    assert "## Calibration" in (tmp_path / "ensemble" / "README.md").read_text()


@pytest.mark.parametrize("family", ["token", "multiple_choice", "question_answering", "multi_label", "audio"])
def test_soups_of_every_head_calibrate_by_their_last_layer(tmp_path, pretrained_bert, family):
    run, data, collator = family_run(tmp_path, pretrained_bert, family)
    soup = uniform_soup(run, tmp_path / "soup", data_collator=collator)
    before, labels = predict_probs(soup, data, collator)
    calibrated = calibrate_ensemble(tmp_path / "soup", data, split="validation", data_collator=collator)
    after, _ = predict_probs(calibrated, data, collator)
    temperature = calibrated.config.calibration["temperature"]
    expected = torch.tensor(np.log(np.clip(before, 1e-30, None)) / temperature).softmax(-1).numpy()
    assert temperature != pytest.approx(1) and np.allclose(after, expected, atol=1e-5)


def test_regression_calibration_scales_the_ensembles_variance(tmp_path, pretrained_bert):
    run, data, _ = family_run(tmp_path, pretrained_bert, "regression")
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    batch = {key: torch.tensor(data[key][:4]) for key in ("input_ids", "attention_mask")}
    raw = ensemble(**batch).variance
    calibrated = calibrate_ensemble(tmp_path / "ensemble", data, split="validation")
    scale = calibrated.config.variance_scale
    assert scale != pytest.approx(1) and torch.allclose(calibrated(**batch).variance, raw * scale, rtol=1e-4)
    with pytest.raises(ValueError, match="calibrate an ensemble of 2 or more members"):
        calibrate_ensemble(uniform_soup(run), data, split="validation")


def test_trainer_evaluate_ensemble_reports_entities(tmp_path, pretrained_bert):
    model, data, collator = token_classification(pretrained_bert, torch.Generator().manual_seed(0))
    model.config.id2label, model.config.label2id = TAGS, {tag: i for i, tag in TAGS.items()}
    args = make_args(tmp_path / "run", num_members=2, cycle_steps=2)
    trainer = StarSSETrainer(model=model, args=args, train_dataset=data, eval_dataset=data, data_collator=collator)
    trainer.train()
    metrics = trainer.evaluate_ensemble()
    assert {"eval_ensemble_entity_f1", "eval_soup_entity_f1", "eval_member_mean_accuracy"} <= set(metrics)
    assert 0 <= metrics["eval_ensemble_entity_f1"] <= 1 and metrics["eval_ensemble_size"] == 2
    assert NUM_LABELS == len(TAGS)


def test_the_head_comes_from_the_family_before_num_labels():
    assert head_of(BertConfig(num_labels=1, architectures=["BertForMultipleChoice"])) == "classification"
    assert head_of(BertConfig(num_labels=1, architectures=["BertForQuestionAnswering"])) == "question_answering"
    assert head_of(BertConfig(num_labels=1, architectures=["BertForSequenceClassification"])) == "regression"
    assert EnsembleForMultipleChoice.problem_type == "single_label_classification"  # not regression for 1 output
    rows, labels, _ = output_rows({"logits": torch.zeros(2, 3)}, {"labels": torch.tensor([[1, 0, 1], [0, 0, 1]])})
    assert rows.shape == (6, 2) and labels.tolist() == [1, 0, 1, 0, 0, 1]  # integer multi-hot labels


def test_question_answering_calibration_with_batches_padded_to_different_widths(tmp_path, pretrained_bert):
    """Rows of batches of different widths are padded with -inf logits: every member's, so pooling must not make
    NaN (the temperature would run to its bound)."""
    run, data, _ = family_run(tmp_path, pretrained_bert, "question_answering")
    lengths = [7 if row < 4 else 8 for row in range(len(data))]  # the first batch of 4 is one token narrower
    ragged = data.map(lambda row, i: {key: row[key][: lengths[i]] for key in ("input_ids", "attention_mask")},
                      with_indices=True)  # fmt: skip
    collator = DataCollatorWithPadding(tokenizer())
    ensemble = calibrate_ensemble(build_ensemble(run), ragged, split="validation", data_collator=collator,
                                  batch_size=4)  # fmt: skip
    record = ensemble.config.calibration
    assert 0.05 < record["temperature"] < 19.9 and np.isfinite(record["after"]["nll"])
    assert record["after"]["nll"] <= record["before"]["nll"] + 1e-9
