"""Token classification end to end: StarSSE members, their ensemble (probabilities pooled per token, uncertainty per
token), `from_pretrained`, the stock `token-classification` pipeline with every aggregation strategy, the soup, and
the training data check (per-token labels)."""

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForTokenClassification,
    BertForTokenClassification,
    DataCollatorForTokenClassification,
    pipeline,
)

from hf_starsse import EnsembleForTokenClassification, StarSSETrainer, build_ensemble, load_members, uniform_soup
from hf_starsse.tasks import family_of_architecture

from conftest import NUM_LABELS, make_args, tokenizer

LABELS = ["O", "B-THING", "I-THING"]


def word_dataset(n: int = 24, seed: int = 0) -> Dataset:
    """Rows of words `w5..w98` whose tag comes from the word: per-token labels, -100 on the special tokens."""
    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for length in torch.randint(3, 7, (n,), generator=generator).tolist():
        words = torch.randint(5, 99, (length,), generator=generator).tolist()
        rows["input_ids"].append([2, *words, 3])
        rows["attention_mask"].append([1] * (length + 2))
        rows["labels"].append([-100, *(word % NUM_LABELS for word in words), -100])
    return Dataset.from_dict(rows)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory, pretrained_bert) -> str:
    run = tmp_path_factory.mktemp("token") / "run"
    labels = dict(id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})
    model = BertForTokenClassification.from_pretrained(pretrained_bert, num_labels=NUM_LABELS, **labels)
    trainer = StarSSETrainer(
        model=model, args=make_args(run, learning_rate=5e-3, cycle_learning_rate=1e-2), train_dataset=word_dataset(),
        processing_class=tokenizer(), data_collator=DataCollatorForTokenClassification(tokenizer()),
    )  # fmt: skip
    trainer.train()
    return str(run)


def test_the_ensemble_pools_each_tokens_probabilities(token_run, tmp_path):
    ensemble = build_ensemble(token_run, tmp_path / "ensemble")
    assert type(ensemble) is EnsembleForTokenClassification
    batch = DataCollatorForTokenClassification(tokenizer())(list(word_dataset(4, seed=1)))
    members = [BertForTokenClassification.from_pretrained(m).eval() for m in load_members(token_run)]
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        probs = torch.stack([m(**inputs).logits.softmax(-1) for m in members]).mean(0)
        output = ensemble(**inputs, labels=batch["labels"])
    torch.testing.assert_close(output.logits, probs.log(), rtol=1e-5, atol=1e-6)
    assert output.mutual_information.shape == batch["input_ids"].shape  # the uncertainty of each token
    kept = batch["labels"] != -100
    expected = -probs.log()[kept].gather(-1, batch["labels"][kept].unsqueeze(-1)).mean()
    torch.testing.assert_close(output.loss, expected, rtol=1e-5, atol=1e-6)  # -100: padding and special tokens
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "ensemble").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, output.logits)
    assert family_of_architecture(type(loaded).__name__).name == "token-classification"


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_the_token_classification_pipeline_with_uncertainty(token_run, tmp_path, strategy):
    build_ensemble(token_run, tmp_path / "ensemble")
    tagger = pipeline("token-classification", model=str(tmp_path / "ensemble"), aggregation_strategy=strategy)
    entities = tagger("w1 w2 w4 w5 w7 w8", return_uncertainty=True, ignore_labels=[])
    assert entities and all(e["mutual_information"] >= 0 and 0 <= e["disagreement"] <= 1 for e in entities)
    label_key = "entity" if strategy == "none" else "entity_group"
    names = {e[label_key].removeprefix("B-").removeprefix("I-") for e in entities}
    assert names <= {"O", "THING"}
    assert "mutual_information" not in tagger("w1 w2", ignore_labels=[])[0]


def test_the_soup_of_token_classifiers(token_run, tmp_path):
    soup = uniform_soup(token_run, tmp_path / "soup")
    assert type(soup) is BertForTokenClassification
    assert type(AutoModelForTokenClassification.from_pretrained(tmp_path / "soup")) is BertForTokenClassification


def test_token_labels_outside_the_classes_are_refused(pretrained_bert, tmp_path):
    data = word_dataset().map(lambda row: {"labels": [7 if label == 1 else label for label in row["labels"]]})
    model = BertForTokenClassification.from_pretrained(pretrained_bert, num_labels=NUM_LABELS)
    trainer = StarSSETrainer(model=model, args=make_args(tmp_path / "run"), train_dataset=data,
                             data_collator=DataCollatorForTokenClassification(tokenizer()))  # fmt: skip
    with pytest.raises(ValueError, match=r"column 'labels' holds token labels \[7\] outside the model's 3 classes"):
        trainer.train()
    assert not (tmp_path / "run" / "members").exists()


def test_lora_members_make_an_adapter_ensemble(pretrained_bert, tmp_path):
    peft = pytest.importorskip("peft")
    from hf_starsse import AdapterEnsembleForTokenClassification

    config = dict(task_type="TOKEN_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    model = peft.get_peft_model(
        BertForTokenClassification.from_pretrained(pretrained_bert, num_labels=NUM_LABELS), peft.LoraConfig(**config)
    )
    run = tmp_path / "run"
    collator = DataCollatorForTokenClassification(tokenizer())
    args = make_args(run, num_members=2, cycle_steps=2)
    trainer = StarSSETrainer(
        model=model, args=args, train_dataset=word_dataset(), processing_class=tokenizer(), data_collator=collator
    )
    trainer.train()
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    assert type(ensemble) is AdapterEnsembleForTokenClassification
    batch = DataCollatorForTokenClassification(tokenizer())(list(word_dataset(2, seed=1)))
    with torch.no_grad():
        output = ensemble(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert output.logits.shape == (*batch["input_ids"].shape, NUM_LABELS)
    assert type(AutoModelForTokenClassification.from_pretrained(tmp_path / "ensemble")) is type(ensemble)


def test_words_are_tokenized_with_labels_on_first_sub_words(pretrained_bert):
    from types import SimpleNamespace

    from hf_starsse.tasks.token_classification import prepare_tokens

    words = Dataset.from_dict({"tokens": [["w5", "w6", "w7"], ["w8"]], "tags": [["O", "B", "I"], ["B"]]})
    data = SimpleNamespace(text_column=None, label_column="tags", model_name_or_path=pretrained_bert, max_length=16)
    prepare, _, collator = prepare_tokens(data, words, lambda tags: [{"O": 0, "B": 1, "I": 2}[tag] for tag in tags])
    prepared = prepare(words)
    assert prepared["labels"] == [[-100, 0, 1, 2, -100], [-100, 1, -100]]  # [CLS] ... [SEP]
    assert collator(list(prepared))["labels"].tolist()[1] == [-100, 1, -100, -100, -100]
    with pytest.raises(ValueError, match="No word column 'tokens'"):
        prepare_tokens(data, words.rename_column("tokens", "words"), None)
