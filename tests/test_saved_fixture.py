"""Ensembles and soups saved by hf_starsse 0.1.0 (the flat layout, `tests/fixtures/saved-0.1.0`) still load, with
the Auto classes and `pipeline()`, and predict what they predicted when saved."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

import hf_starsse  # noqa: F401  (registers the ensemble classes)

FIXTURE = Path(__file__).parent / "fixtures" / "saved-0.1.0"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def fixture_inputs() -> dict:
    input_ids = torch.tensor(EXPECTED["input_ids"])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@pytest.mark.parametrize("saved", ["ensemble", "soup"])
def test_saved_model_loads_and_predicts_the_same(saved):
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURE / saved).eval()
    assert type(model).__name__ == (
        "EnsembleForSequenceClassification" if saved == "ensemble" else "BertForSequenceClassification"
    )
    with torch.no_grad():
        logits = model(**fixture_inputs()).logits
    torch.testing.assert_close(logits, torch.tensor(EXPECTED[f"{saved}_logits"]), rtol=1e-5, atol=1e-6)


def test_saved_ensemble_loads_in_its_pipeline():
    classifier = pipeline("text-classification", model=str(FIXTURE / "ensemble"), device="cpu")
    texts = ["w5 w6 w7 w8", "w45 w55 w65 w75"]  # the tokens of EXPECTED["input_ids"] (w0 is id 5)
    assert classifier.tokenizer(texts)["input_ids"] == EXPECTED["input_ids"]
    for result, logits in zip(classifier(texts, return_uncertainty=True), EXPECTED["ensemble_logits"]):
        assert result["score"] == pytest.approx(torch.tensor(logits).softmax(-1).max().item(), abs=1e-6)
        assert {"predictive_entropy", "mutual_information"} <= set(result)
