import copy
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, BertModel

from hf_starsse.evaluation.diagnostics import _evaluate, barrier_height, interpolation_curve, weight_distance
from hf_starsse.soups.batchnorm import recalibrate_batchnorm
from hf_starsse.soups.predict import make_dataloader

from conftest import image_dataset, text_dataset


def members(trainer, auto_class, count=2):
    return [
        auto_class.from_pretrained(Path(trainer.args.output_dir) / f"members/member-{i:02d}") for i in range(count)
    ]


def test_endpoints_match_the_models_and_self_barrier_is_zero(text_run):
    model_a, model_b = members(text_run, AutoModelForSequenceClassification)
    loaders = {"test": make_dataloader(model_a, text_dataset(n=24, seed=4), batch_size=8)}
    curve = interpolation_curve(model_a, model_b, loaders, num_points=5)
    assert curve["alpha"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for index, model in ((0, model_a), (-1, model_b)):
        expected = _evaluate(model, loaders["test"])
        assert curve["test"]["accuracy"][index] == pytest.approx(expected["accuracy"])
        assert curve["test"]["loss"][index] == pytest.approx(expected["loss"], abs=1e-6)
    flat = interpolation_curve(model_a, copy.deepcopy(model_a), loaders, num_points=4)
    assert barrier_height(flat["test"]["accuracy"]) == 0.0
    assert barrier_height(flat["test"]["loss"], higher_is_better=False) == pytest.approx(0.0, abs=1e-6)


def test_batchnorm_models_are_recalibrated_at_every_point(image_run, caplog):
    model_a, model_b = members(image_run, AutoModelForImageClassification)
    data = image_dataset(n=16, seed=2)
    loader = make_dataloader(model_a, data, batch_size=8)
    curve = interpolation_curve(model_a, model_b, {"train": loader}, num_points=3, batchnorm_dataloader=loader)
    expected = _evaluate(recalibrate_batchnorm(copy.deepcopy(model_b), loader), loader)
    assert curve["train"]["loss"][-1] == pytest.approx(expected["loss"], abs=1e-5)
    with caplog.at_level(logging.WARNING):
        interpolation_curve(model_a, model_b, {"train": loader}, num_points=2)
    assert "no batchnorm_dataloader" in caplog.text


def test_barrier_height_by_hand():
    assert barrier_height([1.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert barrier_height([0.8, 0.7, 0.6]) == pytest.approx(0.0)  # on the line
    assert barrier_height([0.6, 0.9, 0.8]) == 0.0  # above the line: no barrier
    assert barrier_height([1.0, 2.0, 1.5], higher_is_better=False) == pytest.approx(0.75)


def test_weight_distance(text_run, pretrained_bert):
    model, _ = members(text_run, AutoModelForSequenceClassification)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.classifier.bias[0] += 3.0
        shifted.bert.pooler.dense.bias[1] -= 4.0
    assert weight_distance(model, model) == 0.0
    assert weight_distance(model, shifted) == pytest.approx(5.0)
    backbone = BertModel.from_pretrained(pretrained_bert)
    assert weight_distance(model, backbone) > 0  # matched through the `bert.` prefix, the head left out
    with pytest.raises(ValueError, match="share no parameter"):
        weight_distance(model, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="share one architecture"):
        interpolation_curve(model, torch.nn.Linear(2, 2), {})


def test_member_distances(text_run, pretrained_bert):
    from hf_starsse.evaluation.diagnostics import member_distances

    rows = member_distances(text_run.args.output_dir, BertModel.from_pretrained(pretrained_bert))
    assert [row["member"] for row in rows] == [0, 1, 2] and rows[0]["to_member_0"] == 0.0
    assert all(row["to_member_0"] > 0 for row in rows[1:]) and all(row["to_pretrained"] > 0 for row in rows)
    model_1 = members(text_run, AutoModelForSequenceClassification, 2)
    assert rows[1]["to_member_0"] == pytest.approx(weight_distance(model_1[1], model_1[0]))
