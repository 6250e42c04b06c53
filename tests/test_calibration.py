"""Pool-then-calibrate: temperature fitting, ensembles and soups calibrated, saved, reloaded and run by pipeline()."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    TextClassificationPipeline,
    pipeline,
)

from hf_starsse import build_ensemble, calibrate_ensemble, uniform_soup
from hf_starsse.evaluation.calibration import fit_temperature
from hf_starsse.evaluation.metrics import softmax
from hf_starsse.evaluation.predictions import predict_probs

from conftest import VOCAB, image_dataset, text_dataset


def test_temperature_recovered_from_synthetic_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20000, 4)) * 4
    for true_temperature in (0.5, 2.5):
        probs = softmax(logits / true_temperature)
        labels = (rng.random((len(probs), 1)) > probs.cumsum(1)).sum(1)  # sampled from the tempered softmax
        assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)
    labels = logits.argmax(1)  # always right: the sharper the better, up to the search bound
    assert fit_temperature(logits, labels) == pytest.approx(0.05, rel=1e-3)


def held_out(n: int = 24, seed: int = 41, split: str | None = "validation") -> Dataset:
    data = text_dataset(n=n, seed=seed)
    return Dataset.from_dict(data.to_dict(), split=split)


def test_calibrated_ensemble_saved_reloaded_and_piped(tmp_path, text_run):
    out = tmp_path / "ensemble"
    build_ensemble(text_run.args.output_dir, out)
    before, _ = predict_probs(AutoModelForSequenceClassification.from_pretrained(out), held_out())
    model = calibrate_ensemble(out, held_out())
    record = model.config.calibration
    assert record["split"] == "validation" and record["num_samples"] == 24
    assert record["after"]["nll"] <= record["before"]["nll"] + 1e-9
    config = json.loads((out / "config.json").read_text())
    assert config["temperature"] == pytest.approx(record["temperature"]) and config["temperature"] != 1.0
    assert "## Calibration" in (out / "README.md").read_text()
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    probs, labels = predict_probs(reloaded, held_out())
    expected = softmax(np.log(before) / record["temperature"])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert (probs.argmax(1) == before.argmax(1)).all()  # calibration does not change predictions
    classifier = pipeline("text-classification", model=str(out), top_k=None)
    texts = [" ".join(VOCAB[i] for i in row) for row in [[5, 9, 12], [40, 41, 42]]]
    outputs = classifier(texts)
    encoded = classifier.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        direct = reloaded(**encoded).logits.softmax(-1)
    for row, scores in zip(outputs, direct):
        by_label = {entry["label"]: entry["score"] for entry in row}
        assert [by_label[reloaded.config.id2label[i]] for i in range(3)] == pytest.approx(scores.tolist(), abs=1e-5)
    again = calibrate_ensemble(out, held_out())  # refits from the uncalibrated prediction: same temperature
    assert again.config.temperature == pytest.approx(record["temperature"], rel=1e-4)
    assert (out / "README.md").read_text().count("## Calibration") == 1


def test_per_member_temperatures(text_run):
    model = calibrate_ensemble(build_ensemble(text_run.args.output_dir), held_out(), per_member=True)
    assert len(model.config.member_temperatures) == 3 and all(t > 0 for t in model.config.member_temperatures)
    probs, labels = predict_probs(model, held_out())
    assert model.config.calibration["after"]["nll"] == pytest.approx(
        -np.log(probs[np.arange(len(labels)), labels]).mean(), rel=1e-4
    )


@pytest.mark.parametrize("kind", ["text", "image"])
def test_soup_temperature_folded_into_the_head(tmp_path, kind, request):
    run = request.getfixturevalue(f"{kind}_run")
    auto = AutoModelForSequenceClassification if kind == "text" else AutoModelForImageClassification
    data = held_out() if kind == "text" else Dataset.from_dict(image_dataset(n=16, seed=5).to_dict(), split="val")
    data = data.with_format("torch")
    soup = tmp_path / "soup"
    uniform_soup(run.args.output_dir, soup, train_dataset=image_dataset() if kind == "image" else None)
    before, _ = predict_probs(auto.from_pretrained(soup), data)
    model = calibrate_ensemble(soup, data)
    temperature = model.config.calibration["temperature"]
    reloaded = auto.from_pretrained(soup)  # a plain checkpoint: no hf_starsse class involved
    assert type(reloaded).__name__ == ("BertForSequenceClassification" if kind == "text" else
                                       "MobileNetV2ForImageClassification")  # fmt: skip
    after, _ = predict_probs(reloaded, data)
    np.testing.assert_allclose(after, softmax(np.log(before) / temperature), atol=1e-5)
    assert json.loads((soup / "config.json").read_text())["calibration"]["temperature"] == pytest.approx(temperature)
    assert (soup / "soup.json").is_file()  # the soup's other files are kept


def test_calibration_refuses_test_split_before_reading_it(text_run):
    reads = []
    data = held_out(split="test")
    with pytest.raises(ValueError, match="'test' is a test split"):
        calibrate_ensemble(build_ensemble(text_run.args.output_dir), data.with_transform(lambda b: reads.append(b)))
    with pytest.raises(ValueError, match="'test' is a test split"):
        calibrate_ensemble(build_ensemble(text_run.args.output_dir), held_out(split=None), split="test")
    assert reads == []


def test_calibration_bad_inputs(text_run):
    ensemble = build_ensemble(text_run.args.output_dir)
    with pytest.raises(ValueError, match="is empty"):
        calibrate_ensemble(ensemble, held_out().select([]))
    bad = held_out().map(lambda row, i: {"labels": 7 if i == 3 else row["labels"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"labels \[7\] outside the model's 3 classes"):
        calibrate_ensemble(ensemble, bad)
    with pytest.raises(ValueError, match="not a dict"):
        calibrate_ensemble(ensemble, {"validation": held_out()})
    with pytest.raises(ValueError, match="per_member=True is for ensembles"):
        calibrate_ensemble(uniform_soup(text_run.args.output_dir), held_out(), per_member=True)


def test_head_that_is_not_a_final_linear_is_refused(text_run):
    soup = uniform_soup(text_run.args.output_dir)
    soup.classifier = torch.nn.Sequential(torch.nn.Tanh())
    with pytest.raises(ValueError, match="no final nn.Linear classification layer"):
        calibrate_ensemble(soup, held_out())
    soup = uniform_soup(text_run.args.output_dir)
    linear = soup.classifier
    soup.classifier = torch.nn.Sequential(linear, torch.nn.Softplus())  # a Linear, but not the last operation
    with pytest.raises(ValueError, match="did not divide its logits"):
        calibrate_ensemble(soup, held_out())
    assert torch.equal(soup.classifier[0].weight, linear.weight)  # restored


def test_pipeline_uncertainty_only_for_ensembles(tmp_path, text_run):
    out = tmp_path / "ensemble"
    build_ensemble(text_run.args.output_dir, out)
    classifier = pipeline("text-classification", model=str(out))
    text = " ".join(VOCAB[5:12])
    plain = classifier(text)
    result = classifier(text, return_uncertainty=True)
    assert result[0]["label"] == plain[0]["label"] and set(result[0]) == {
        "label", "score", "predictive_entropy", "expected_entropy", "mutual_information", "disagreement"
    }  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        output = model(**classifier.tokenizer([text], return_tensors="pt"))
    assert result[0]["mutual_information"] == pytest.approx(float(output.mutual_information[0]), abs=1e-6)
    assert result[0]["predictive_entropy"] == pytest.approx(
        result[0]["expected_entropy"] + result[0]["mutual_information"], abs=1e-6
    )
    member = Path(text_run.args.output_dir) / "members" / "member-00"
    stock = pipeline("text-classification", model=str(member))
    assert type(stock) is TextClassificationPipeline  # other models keep the stock pipeline


def test_image_pipeline_uncertainty(tmp_path, image_run):
    out = tmp_path / "ensemble"
    build_ensemble(image_run.args.output_dir, out)
    classifier = pipeline("image-classification", model=str(out), top_k=None)
    image = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype("uint8"))
    results = classifier([image, image], return_uncertainty=True)
    assert len(results) == 2 and all(len(entries) == 3 for entries in results)
    first = results[0]
    assert len({entry["predictive_entropy"] for entry in first}) == 1  # per input, the same on every label
    assert 0 <= first[0]["mutual_information"] <= first[0]["predictive_entropy"] <= np.log(3) + 1e-6
    assert first[0]["disagreement"] in (0.0, 1.0)  # two members: one pair
    assert "predictive_entropy" not in classifier(image)[0]


def test_trainer_save_ensemble_calibrates_in_one_step(tmp_path, text_run):
    with pytest.raises(ValueError, match="'test' is a test split"):
        text_run.save_ensemble(str(tmp_path / "refused"), calibrate_on=held_out(split="test"))
    assert not (tmp_path / "refused").exists()  # refused before anything was built
    model = text_run.save_ensemble(str(tmp_path / "ensemble"), calibrate_on=held_out())
    saved = json.loads((tmp_path / "ensemble/config.json").read_text())
    assert saved["temperature"] == pytest.approx(model.config.temperature) and saved["calibration"]["split"] == (
        "validation"
    )


def test_cli_calibrate_soup_and_evaluate(tmp_path, pretrained_bert, text_data, capsys):
    from hf_starsse.cli.main import main

    run, ensemble, soup = tmp_path / "run", tmp_path / "ensemble", tmp_path / "soup"
    argv = ["train", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--output_dir", str(run),
            "--num_members", "2", "--cycle_steps", "2", "--report_to", "none", "--use_cpu", "true",
            "--save_strategy", "no", "--disable_tqdm", "true", "--num_train_epochs", "1"]  # fmt: skip
    assert main(argv) == 0
    build_ensemble(run, ensemble)
    assert main(["calibrate", "--model_dir", str(ensemble), "--dataset", text_data, "--split", "test"]) == 2
    assert "'test' is a test split" in capsys.readouterr().err
    assert main(["calibrate", "--model_dir", str(ensemble), "--dataset", text_data, "--split", "validation"]) == 0
    assert "Temperature" in capsys.readouterr().out
    config = json.loads((ensemble / "config.json").read_text())
    assert config["calibration"]["split"] == "validation" and config["calibration"]["num_samples"] == 16
    argv = ["soup", "--run_dir", str(run), "--output_dir", str(soup), "--dataset", text_data, "--calibrate"]
    assert main(argv) == 2 and "--eval_split" in capsys.readouterr().err
    assert main([*argv, "--eval_split", "validation"]) == 0
    assert json.loads((soup / "config.json").read_text())["calibration"]["temperature"] > 0
    argv = ["evaluate", "--run_dir", str(run), "--dataset", text_data, "--splits", "test"]
    assert main([*argv, "--calibration_split", "validation"]) == 0
    rows = json.loads((run / "evaluation.json").read_text())
    assert {row["split"] for row in rows} == {"test", "validation"} and all("ece_calibrated" in row for row in rows)
