"""Training works for whatever `Trainer` trains: K=3 StarSSE members of every task family the registry knows of or
not, with tiny models built from config and the family's usual data and collator (issue "every task the Trainer
trains", item 1)."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import (
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    DataCollatorForTokenClassification,
    Wav2Vec2Config,
    Wav2Vec2ForSequenceClassification,
    pipeline,
)

from hf_starsse import StarSSETrainer

from conftest import NUM_LABELS, image_dataset, load_image_model, make_args, text_dataset, tokenizer

N, LENGTH = 24, 8


def token_ids(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(5, 99, shape, generator=generator)


def sequence_classification(pretrained_bert: str, generator: torch.Generator, problem: str):
    if problem == "single_label_classification":
        return BertForSequenceClassification.from_pretrained(pretrained_bert, num_labels=NUM_LABELS), text_dataset(N)
    ids = token_ids(generator, N, LENGTH)
    if problem == "regression":
        labels = ids.float().mean(1, keepdim=True) / 50
    else:
        labels = (ids[:, :NUM_LABELS] % 2).float()  # several labels at once
    model = BertForSequenceClassification.from_pretrained(
        pretrained_bert, num_labels=1 if problem == "regression" else NUM_LABELS, problem_type=problem
    )
    rows = {"input_ids": ids.tolist(), "attention_mask": [[1] * LENGTH] * N, "labels": labels.squeeze(-1).tolist()}
    return model, Dataset.from_dict(rows)


def token_classification(pretrained_bert: str, generator: torch.Generator):
    """Word-level labels of different lengths, padded by `DataCollatorForTokenClassification` with -100."""
    lengths = torch.randint(4, LENGTH + 1, (N,), generator=generator).tolist()
    ids = [token_ids(generator, n).tolist() for n in lengths]
    labels = [[token % NUM_LABELS for token in row] for row in ids]
    labels = [[-100] + row[1:] for row in labels]  # e.g. a special token, ignored
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids], "labels": labels})
    model = BertForTokenClassification.from_pretrained(pretrained_bert, num_labels=NUM_LABELS)
    return model, data, DataCollatorForTokenClassification(tokenizer())


def multiple_choice(pretrained_bert: str, generator: torch.Generator):
    ids = token_ids(generator, N, 4, LENGTH)
    rows = {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
            "labels": (ids[:, :, 0] % 4).argmax(1).tolist()}  # fmt: skip
    return BertForMultipleChoice.from_pretrained(pretrained_bert), Dataset.from_dict(rows)


def question_answering(pretrained_bert: str, generator: torch.Generator):
    ids = token_ids(generator, N, LENGTH)
    start = torch.randint(1, LENGTH - 2, (N,), generator=generator)
    rows = {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
            "start_positions": start.tolist(), "end_positions": (start + 1).tolist()}  # fmt: skip
    return BertForQuestionAnswering.from_pretrained(pretrained_bert), Dataset.from_dict(rows)


def audio_classification(generator: torch.Generator):
    """A tiny wav2vec2 from config on synthetic waveforms (a tone whose pitch gives the class)."""
    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        num_labels=NUM_LABELS, vocab_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Wav2Vec2ForSequenceClassification(config)
    labels = torch.randint(0, NUM_LABELS, (N,), generator=generator)
    time = torch.arange(400) / 400
    waves = torch.sin(2 * torch.pi * (labels.view(-1, 1) + 1) * 20 * time) + 0.1 * torch.randn(
        N, 400, generator=generator
    )
    return model, Dataset.from_dict({"input_values": waves.tolist(), "labels": labels.tolist()})


FAMILIES = ["single_label", "multi_label", "regression", "token", "multiple_choice", "question_answering", "audio",
            "image"]  # fmt: skip


def build_family(family: str, pretrained_bert: str, pretrained_mobilenet: str | None = None) -> tuple:
    """A tiny model of `family` (one of `FAMILIES`), its training data and its collator (`None`: the default)."""
    generator, collator = torch.Generator().manual_seed(0), None
    if family in ("single_label", "multi_label", "regression"):
        problem = {"single_label": "single_label_classification", "multi_label": "multi_label_classification"}
        model, data = sequence_classification(pretrained_bert, generator, problem.get(family, "regression"))
    elif family == "token":
        model, data, collator = token_classification(pretrained_bert, generator)
    elif family == "multiple_choice":
        model, data = multiple_choice(pretrained_bert, generator)
    elif family == "question_answering":
        model, data = question_answering(pretrained_bert, generator)
    elif family == "audio":
        model, data = audio_classification(generator)
    else:
        model, data = load_image_model(pretrained_mobilenet), image_dataset(N)
    return model, data, collator


@pytest.mark.parametrize("family", FAMILIES)
def test_starsse_trains_every_family(tmp_path, pretrained_bert, pretrained_mobilenet, family):
    model, data, collator = build_family(family, pretrained_bert, pretrained_mobilenet)
    run = tmp_path / "run"
    trainer = StarSSETrainer(
        model=model, args=make_args(run, cycle_steps=2), train_dataset=data, data_collator=collator
    )
    output = trainer.train()
    manifest = json.loads((run / "ensemble.json").read_text())
    assert [(m["index"], m["parent"], m["steps"]) for m in manifest["members"]] == [(0, None, 3), (1, 0, 2), (2, 0, 2)]
    assert output.metrics["train_members"] == 3 and all(
        log.get("member") is not None for log in trainer.state.log_history
    )


@pytest.mark.parametrize("family", ["multiple_choice", "audio"])
def test_ensembles_of_more_families_pool_the_members_probabilities(tmp_path, pretrained_bert, family):
    from transformers import AutoModelForAudioClassification, AutoModelForMultipleChoice, Wav2Vec2FeatureExtractor

    from hf_starsse import EnsembleForAudioClassification, EnsembleForMultipleChoice, build_ensemble, load_members

    generator = torch.Generator().manual_seed(0)
    if family == "audio":
        (model, data), processor = (
            audio_classification(generator),
            Wav2Vec2FeatureExtractor(return_attention_mask=False),
        )
        auto, expected = AutoModelForAudioClassification, EnsembleForAudioClassification
    else:
        (model, data), processor = multiple_choice(pretrained_bert, generator), tokenizer()
        auto, expected = AutoModelForMultipleChoice, EnsembleForMultipleChoice
    run = tmp_path / "run"
    StarSSETrainer(
        model=model, args=make_args(run, cycle_steps=2), train_dataset=data, processing_class=processor
    ).train()
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    assert type(ensemble) is expected and type(auto.from_pretrained(tmp_path / "ensemble")) is expected
    batch = {key: torch.tensor(value) for key, value in data[:4].items() if key != "labels"}
    with torch.no_grad():
        members = [type(model).from_pretrained(member).eval() for member in load_members(run)]
        probs = torch.stack([member(**batch).logits.softmax(-1) for member in members]).mean(0)
        output = ensemble(**batch, labels=torch.tensor(data[:4]["labels"]))
    torch.testing.assert_close(output.logits, probs.log(), rtol=1e-5, atol=1e-6)
    assert output.loss is not None and output.mutual_information.shape == (4,)
    if family == "audio":
        classifier = pipeline("audio-classification", model=str(tmp_path / "ensemble"))
        results = classifier(torch.tensor(data[0]["input_values"]).numpy(), return_uncertainty=True)
        assert len(results) == NUM_LABELS and all(result["mutual_information"] >= 0 for result in results)


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_regression_and_multi_label_ensembles(tmp_path, pretrained_bert, problem):
    """Regression: the members' mean and their variance (epistemic uncertainty per sample); multi-label: the mean of
    the members' per-label sigmoid probabilities, with per-label uncertainty; both through `pipeline()`."""
    from hf_starsse import build_ensemble, load_members

    model, data = sequence_classification(pretrained_bert, torch.Generator().manual_seed(0), problem)
    run = tmp_path / "run"
    StarSSETrainer(
        model=model, args=make_args(run, cycle_steps=2), train_dataset=data, processing_class=tokenizer()
    ).train()
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    batch = {key: torch.tensor(value) for key, value in data[:4].items() if key != "labels"}
    with torch.no_grad():
        members = torch.stack(
            [BertForSequenceClassification.from_pretrained(m)(**batch).logits for m in load_members(run)]
        )
        output = ensemble(**batch, labels=torch.tensor(data[:4]["labels"]))
    assert output.loss is not None
    classifier = pipeline("text-classification", model=str(tmp_path / "ensemble"))
    if problem == "regression":
        torch.testing.assert_close(output.logits, members.mean(0))
        torch.testing.assert_close(output.variance, members.var(0, unbiased=False))
        result = classifier("w5 w6 w7", function_to_apply="none", return_uncertainty=True)[0]
        assert result["variance"] >= 0 and "mutual_information" not in result
    else:
        torch.testing.assert_close(output.logits.sigmoid(), members.sigmoid().mean(0), rtol=1e-5, atol=1e-6)
        assert output.mutual_information.shape == (4, NUM_LABELS) and (output.mutual_information >= 0).all()
        results = classifier("w5 w6 w7", top_k=None, return_uncertainty=True)
        assert len(results) == NUM_LABELS and all(r["mutual_information"] >= 0 for r in results)
        with torch.no_grad():  # the pipeline applies the sigmoid (the config carries the members' problem_type)
            pooled = ensemble(**tokenizer()("w5 w6 w7", return_tensors="pt")).logits.sigmoid()[0]
        assert sorted(r["score"] for r in results) == pytest.approx(sorted(pooled.tolist()), rel=1e-5)


def test_question_answering_ensembles_pool_starts_and_ends(tmp_path, pretrained_bert):
    from transformers import AutoModelForQuestionAnswering

    from hf_starsse import EnsembleForQuestionAnswering, build_ensemble, load_members

    model, data = question_answering(pretrained_bert, torch.Generator().manual_seed(0))
    run = tmp_path / "run"
    StarSSETrainer(
        model=model, args=make_args(run, cycle_steps=2), train_dataset=data, processing_class=tokenizer()
    ).train()
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    assert type(ensemble) is EnsembleForQuestionAnswering
    assert type(AutoModelForQuestionAnswering.from_pretrained(tmp_path / "ensemble")) is EnsembleForQuestionAnswering
    batch = {key: torch.tensor(data[:4][key]) for key in ("input_ids", "attention_mask")}
    positions = {key: torch.tensor(data[:4][key]) for key in ("start_positions", "end_positions")}
    with torch.no_grad():
        members = [BertForQuestionAnswering.from_pretrained(m).eval()(**batch) for m in load_members(run)]
        output = ensemble(**batch, **positions)
    for side in ("start", "end"):
        probs = torch.stack([getattr(m, f"{side}_logits").softmax(-1) for m in members]).mean(0)
        torch.testing.assert_close(getattr(output, f"{side}_logits"), probs.log(), rtol=1e-5, atol=1e-6)
        assert getattr(output, f"{side}_mutual_information").shape == (4,)
    expected = (
        sum(
            -getattr(output, f"{side}_logits").gather(1, positions[f"{side}_positions"].view(-1, 1)).mean()
            for side in ("start", "end")
        )
        / 2
    )
    torch.testing.assert_close(output.loss, expected)


def test_answer_positions_outside_the_rows_are_refused(tmp_path, pretrained_bert):
    model, data = question_answering(pretrained_bert, torch.Generator().manual_seed(0))
    data = data.map(lambda row: {"end_positions": row["end_positions"] + LENGTH})
    trainer = StarSSETrainer(model=model, args=make_args(tmp_path / "run"), train_dataset=data)
    with pytest.raises(ValueError, match=r"column 'end_positions' holds positions \[.*outside the 8 tokens of a row"):
        trainer.train()
