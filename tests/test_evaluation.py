import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_starsse import build_ensemble
from hf_starsse.evaluation.calibration import fit_temperature
from hf_starsse.evaluation.metrics import classification_metrics, expected_calibration_error, softmax
from hf_starsse.evaluation.predictions import RunPredictions, predict_probs, predict_run
from hf_starsse.evaluation.run_evaluation import evaluate_ensemble, evaluation_rows
from hf_starsse.evaluation.uncertainty import aurc, ood_metrics

from conftest import image_dataset, text_dataset


def test_table_of_members_ensembles_and_soups(tmp_path, text_run):
    run = Path(text_run.args.output_dir)
    test, shift = text_dataset(n=24, seed=21), text_dataset(n=16, seed=22, length=6)
    rows = evaluate_ensemble(run, {"test": test, "shift": shift}, output_dir=tmp_path)
    assert len(rows) == 2 * (3 + 3 + 1)  # per split: 3 members, ensembles of size 1..3, the uniform soup
    by_key = {(r["model"], r["size"], r["member"], r["split"]): r for r in rows}
    member0 = by_key[("member", 1, 0, "test")]
    assert by_key[("ensemble", 1, None, "test")]["accuracy"] == member0["accuracy"]
    assert np.isnan(by_key[("ensemble", 1, None, "test")]["disagreement"])
    full = by_key[("ensemble", 3, None, "test")]
    probs, labels = predict_probs(build_ensemble(run), test)
    expected = classification_metrics(probs, labels)
    for name, value in expected.items():
        assert full[name] == pytest.approx(value, abs=1e-6), name
    members_nll = [by_key[("member", 1, k, "test")]["nll"] for k in range(3)]
    assert full["nll_gain"] == pytest.approx(full["nll"] - np.mean(members_nll))
    manifest = json.loads((run / "ensemble.json").read_text())
    assert full["steps"] == sum(m["steps"] for m in manifest["members"]) and full["method"] == "starsse"
    assert by_key[("uniform_soup", 3, None, "shift")]["steps"] == full["steps"]
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert len(saved) == len(rows)
    with open(tmp_path / "evaluation.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and float(table[0]["accuracy"]) == pytest.approx(rows[0]["accuracy"])


def test_greedy_soup_needs_validation_and_unknown_soups(text_run):
    with pytest.raises(ValueError, match="add a 'validation' split"):
        evaluate_ensemble(text_run.args.output_dir, {"test": text_dataset()}, soups=("greedy",))
    with pytest.raises(ValueError, match=r"Unknown soups \['average'\]"):
        evaluate_ensemble(text_run.args.output_dir, {"test": text_dataset()}, soups=("average",))


def test_member_list_and_greedy_soup(tmp_path, text_run):
    members = [Path(text_run.args.output_dir) / f"members/member-0{i}" for i in range(2)]
    data = {"validation": text_dataset(n=16, seed=31), "test": text_dataset(n=16, seed=32)}
    rows = evaluate_ensemble(members, data, soups=("uniform", "greedy"), output_dir=tmp_path)
    assert {r["method"] for r in rows} == {"members"} and all(r["steps"] is None for r in rows)
    greedy = [r for r in rows if r["model"] == "greedy_soup"]
    assert len(greedy) == 2 and 1 <= greedy[0]["size"] <= 2


def test_predict_probs_needs_labels(text_run):
    model = build_ensemble(text_run.args.output_dir, members=[0])
    with pytest.raises(ValueError, match="no label column"):
        predict_probs(model, text_dataset().remove_columns("labels"))
    probs, labels = predict_probs(model, text_dataset(n=8))
    assert probs.shape == (8, 3) and np.allclose(probs.sum(-1), 1) and labels.dtype.kind == "i"


def test_robustness_on_corrupted_test_sets(tmp_path, image_run):
    from hf_starsse.evaluation.corruptions import corrupted_splits, summarize_robustness
    from hf_starsse.evaluation.plots import plot_corruption_bars

    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(12, 3, 16, 16, generator=generator), torch.randint(0, 3, (12,), generator=generator)
    splits = corrupted_splits(images, labels, preprocess=lambda x: (x - 0.5) / 0.5, severities=(1, 3))
    rows = evaluate_ensemble(image_run.args.output_dir, splits, train_dataset=image_dataset(), output_dir=tmp_path)
    assert {row["split"] for row in rows} == set(splits) and len(splits) == 16
    summary = summarize_robustness(rows)
    assert set(summary) == {"gaussian_noise", "shot_noise", "gaussian_blur", "contrast", "brightness", "pixelate",
                            "jpeg", "rotation", "mean"}  # fmt: skip
    assert set(summary["mean"]) == {"member 0", "member 1", "ensemble (1)", "ensemble (2)", "uniform_soup"}
    plot_corruption_bars({k: v for k, v in summary.items() if k != "mean"}, tmp_path / "robustness.png")
    assert (tmp_path / "robustness.png").stat().st_size > 0


def test_calibration_selective_and_ood_columns(tmp_path, text_run):
    run = Path(text_run.args.output_dir)
    data = {"validation": text_dataset(n=24, seed=51), "test": text_dataset(n=24, seed=52)}
    ood = text_dataset(n=12, seed=53, length=3).remove_columns("labels")  # no labels: none needed
    rows = evaluate_ensemble(
        run, data, calibration_split="validation", ood_datasets={"noise": ood}, output_dir=tmp_path
    )
    assert {row["split"] for row in rows} == {"validation", "test"}  # OOD splits get no rows of their own
    predictions = predict_run(run, data, ood_datasets={"noise": ood})
    assert json.dumps(evaluation_rows(predictions, "validation")) == json.dumps(rows)  # NaN-safe comparison
    full = next(r for r in rows if r["model"] == "ensemble" and r["size"] == 3 and r["split"] == "test")
    probs, labels = predictions.probs("ensemble", None, 3, "test"), predictions.labels["test"]
    temperature = fit_temperature(np.log(predictions.probs("ensemble", None, 3, "validation")), data_labels(data))
    assert full["temperature"] == pytest.approx(temperature, rel=1e-4)
    calibrated = softmax(np.log(probs) / temperature)
    assert full["ece_calibrated"] == pytest.approx(expected_calibration_error(calibrated, labels), abs=1e-6)
    assert full["aurc"] == pytest.approx(aurc(probs, labels)) and 0 <= full["accuracy_at_80"] <= 1
    members_ood = predictions.members["noise"]
    assert full["ood_noise_auroc_mutual_information"] == pytest.approx(
        ood_metrics(probs, members_ood.mean(0), predictions.members["test"], members_ood)["auroc_mutual_information"]
    )
    soup = next(r for r in rows if r["model"] == "uniform_soup" and r["split"] == "test")
    assert "ood_noise_auroc_max_prob" in soup and "ood_noise_auroc_mutual_information" not in soup
    with pytest.raises(ValueError, match="'test' is a test split"):
        evaluate_ensemble(run, data, calibration_split="test")
    with pytest.raises(ValueError, match="not one of datasets"):
        evaluate_ensemble(run, data, calibration_split="dev")


def data_labels(data) -> np.ndarray:
    return np.array(data["validation"]["labels"])


def test_each_member_row_costs_its_own_steps():
    probs = np.full((3, 4, 2), 0.5)
    predictions = RunPredictions("starsse", [0, 1, 2], [10, 3, 4], {"test": np.zeros(4, dtype=int)}, {"test": probs},
                                 examples={"test": np.arange(4)})  # fmt: skip
    rows = evaluation_rows(predictions)
    assert [r["steps"] for r in rows if r["model"] == "member"] == [10, 3, 4]
    assert [r["steps"] for r in rows if r["model"] == "ensemble"] == [10, 13, 17]
