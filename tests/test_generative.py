"""Evaluation of causal language models (issue 28, item 5): option scoring against a no-cache reference, token NLL
against the model's own loss and the saved ensemble's, and `evaluate_generative`'s table; the prompt/completion
format they share with training. Tiny Llama and GPT-2 models from config, word-level tokenizer."""

import math
from functools import partial

import datasets
import numpy as np
import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from hf_starsse import StarSSETrainer, build_ensemble, load_members
from hf_starsse.evaluation.generative import evaluate_generative, option_log_likelihoods, token_log_likelihoods
from hf_starsse.soups.average import member_model
from hf_starsse.tasks.text_generation import PromptFormat, option_dataset, pad_completions, prompted_usage
from hf_starsse.training.data import DataArguments, prepare_task

from conftest import make_args
from test_causal_lm import lora, pretrained_lm, token_rows, word_tokenizer

TOPICS = ["w10", "w11 w12", "w13 w14 w15"]  # options of 1, 2 and 3 words (+ the end-of-sequence token)


def topic_rows(count: int = 12) -> datasets.Dataset:
    """`count` rows of a few words (varying lengths) and a `ClassLabel` answer among `TOPICS`."""
    generator = np.random.default_rng(0)
    texts = [
        " ".join(f"w{i}" for i in generator.integers(20, 90, size=int(n))) for n in generator.integers(2, 7, count)
    ]
    label = datasets.ClassLabel(names=TOPICS)
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 3 for i in range(count)]}, features=features)


def reference_scores(model, row: dict) -> list[float]:
    """Each option's log-probability after the prompt from one full forward pass per option, no cache, no padding."""
    scores = []
    for option in row["option_ids"]:
        ids = torch.tensor([row["prompt_ids"] + option])
        with torch.no_grad():
            log_probs = model(ids).logits[0].log_softmax(-1)
        start = len(row["prompt_ids"]) - 1
        scores.append(sum(log_probs[start + i, token].item() for i, token in enumerate(option)))
    return scores


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_option_scores_match_a_reference_without_cache_or_padding(tmp_path, architecture):
    model = pretrained_lm(architecture, tmp_path / "base").eval()
    options = option_dataset(topic_rows(), PromptFormat(word_tokenizer(), template="{text} w5"), "label")
    scores = option_log_likelihoods(model, options, batch_size=5)  # batches of prompts of different lengths
    assert scores.shape == (12, 3)
    expected = [reference_scores(model, row) for row in options]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_token_log_likelihoods_average_to_the_models_loss(tmp_path):
    model = pretrained_lm("llama", tmp_path / "base").eval()
    data, collator = token_rows(), DataCollatorForLanguageModeling(word_tokenizer(), mlm=False)
    scores = token_log_likelihoods(model, data, collator, batch_size=5)
    assert len(scores) == sum(len(ids) - 1 for ids in data["input_ids"])  # every next token, no padding
    batch = collator([data[i] for i in range(len(data))])
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert -scores.mean() == pytest.approx(loss, rel=1e-4)


def test_token_log_likelihoods_without_labels_score_the_unmasked_tokens(tmp_path):
    model = pretrained_lm("gpt2", tmp_path / "base").eval()
    rows = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7, 0], [8, 9, 10, 11]],
                                       "attention_mask": [[1, 1, 1, 0], [1, 1, 1, 1]]})  # fmt: skip
    scores = token_log_likelihoods(model, rows)
    with torch.no_grad():
        expected = model(torch.tensor([[8, 9, 10, 11]])).logits[0, :-1].log_softmax(-1)[[0, 1, 2], [9, 10, 11]]
    assert len(scores) == 2 + 3
    np.testing.assert_allclose(scores[2:], expected.numpy(), rtol=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_token_log_likelihoods_do_not_depend_on_the_padding_side(tmp_path, architecture):
    model = pretrained_lm(architecture, tmp_path / "base").eval()
    scores = {}
    for side in ("right", "left"):
        tokenizer = word_tokenizer()
        tokenizer.padding_side = side
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        scores[side] = token_log_likelihoods(model, token_rows(), collator, batch_size=5)
    assert len(scores["left"]) == sum(len(ids) - 1 for ids in token_rows()["input_ids"])
    np.testing.assert_allclose(scores["left"], scores["right"], rtol=1e-4, atol=1e-5)


def test_option_scores_of_an_ensemble_are_its_pooled_next_token_probabilities(tmp_path):
    members = [pretrained_lm("llama", tmp_path / f"member-{k}") for k in range(2)]
    for k, member in enumerate(members):
        with torch.no_grad():
            member.lm_head.weight.mul_(1 + k)  # members that differ
        member.save_pretrained(tmp_path / f"member-{k}")
    ensemble = build_ensemble([tmp_path / "member-0", tmp_path / "member-1"], tmp_path / "ensemble").eval()
    options = option_dataset(topic_rows(5), PromptFormat(word_tokenizer(), template="{text} w5"), "label")
    expected = [reference_scores(ensemble, row) for row in options]
    np.testing.assert_allclose(option_log_likelihoods(ensemble, options, batch_size=2), expected, rtol=1e-4, atol=1e-4)


def test_empty_splits_are_refused(lora_run):
    root, formatter = lora_run
    with pytest.raises(ValueError, match=r"splits \['test'\] are empty"):
        evaluate_generative(root / "run", {"test": option_dataset(topic_rows(3), formatter, "label").select([])})


def test_options_without_tokens_are_refused():
    tokenizer = word_tokenizer()
    tokenizer.eos_token = None  # an empty answer then has no token at all
    formatter = PromptFormat(tokenizer, template="{text}")
    with pytest.raises(ValueError, match="has no tokens"):
        option_dataset(topic_rows(2), formatter, "label", options=["", *TOPICS])


def test_prompt_format_cuts_the_prompts_start_and_ends_answers():
    tokenizer = word_tokenizer()
    formatter = PromptFormat(tokenizer, template="{text} w5", max_length=7)
    prompt, completions = formatter.encode({"text": "w20 w21 w22 w23 w24"}, TOPICS)
    assert tokenizer.convert_ids_to_tokens(prompt) == ["w23", "w24", "w5"]  # 7 - the longest answer (3 + eos)
    assert [tokenizer.convert_ids_to_tokens(ids) for ids in completions] == [
        ["w10", "<eos>"], ["w11", "w12", "<eos>"], ["w13", "w14", "w15", "<eos>"]
    ]  # fmt: skip
    with pytest.raises(ValueError, match="leaves no room for a prompt"):
        PromptFormat(tokenizer, template="{text} w5", max_length=4).encode({"text": "w20"}, TOPICS)
    with pytest.raises(ValueError, match="names column 'body'"):
        PromptFormat(tokenizer, template="{body}").encode({"text": "w20"}, ["w10"])
    with pytest.raises(ValueError, match="not among the options"):
        option_dataset(topic_rows(), formatter, "label", options=["w10"])


def test_chat_prompts_wrap_the_template_and_end_with_the_assistants_turn():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ 'w90 ' if m['role'] == 'user' else 'w91 ' }}{{ m['content'] }} w92 {% endfor %}"
        "{% if add_generation_prompt %}w91 {% endif %}"
    )
    prompt, (completion,) = PromptFormat(tokenizer, template="{text}", chat=True).encode({"text": "w20"}, ["w10"])
    assert tokenizer.convert_ids_to_tokens(prompt) == ["w90", "w20", "w92", "w91"]
    assert tokenizer.convert_ids_to_tokens(completion) == ["w10", "w92"]
    cut = PromptFormat(tokenizer, template="{text} w5", chat=True, max_length=7)  # room for 5 prompt tokens
    prompt, _ = cut.encode({"text": "w20 w21 w22 w23 w24"}, ["w10"])
    assert tokenizer.convert_ids_to_tokens(prompt) == ["w90", "w24", "w5", "w92", "w91"]  # the header stays


def test_the_cards_usage_prompt_is_made_as_in_training():
    template, row = "Post: {text}\nAbout {topic-name} ({text})?", {"text": "w20 w21", "topic-name": "w7"}
    usage = prompted_usage("org/lm", {"prompt_template": template, "chat_template": False})
    (line,) = [line for line in usage.splitlines() if line.startswith("prompt = ")]
    assert line.endswith('.format_map({"text": "...", "topic-name": "..."})  # made as in training')
    namespace = {}
    exec(
        line.replace('"text": "..."', '"text": "w20 w21"').replace('"topic-name": "..."', '"topic-name": "w7"'),
        namespace,
    )
    assert namespace["prompt"] == PromptFormat(word_tokenizer(), template=template).text(row)  # any column name
    assert "return_full_text=False" in usage and "messages" not in usage  # plain text: no chat turn
    bare = prompted_usage("org/lm", {"prompt_template": None, "chat_template": True})
    assert 'prompt = "..."  # as the training rows\' prompt column\nmessages = [' in bare


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A K=3 StarSSE run of LoRA members of a tiny Llama, trained on prompt/completion rows of `topic_rows`."""
    root = tmp_path_factory.mktemp("generative")
    model = lora(pretrained_lm("llama", root / "base"))
    formatter = PromptFormat(word_tokenizer(), template="{text} w5")
    rows = []
    for row in topic_rows(24):
        prompt, (completion,) = formatter.encode(row, [TOPICS[row["label"]]])
        rows.append({"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion})
    args = make_args(root / "run", cycle_steps=2, learning_rate=5e-2)
    collator = partial(pad_completions, pad_token_id=0)
    StarSSETrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), data_collator=collator
    ).train()
    return root, formatter


def test_evaluate_generative_pools_options_and_text_like_the_saved_ensemble(lora_run):
    root, formatter = lora_run
    options = {split: option_dataset(topic_rows(9), formatter, "label") for split in ("validation", "test")}
    text = {"held_out": token_rows()}
    collator = DataCollatorForLanguageModeling(word_tokenizer(), mlm=False)
    rows = evaluate_generative(
        root / "run", options, text, calibration_split="validation", data_collator=collator, batch_size=4
    )
    test = {(r["model"], r["member"], r["size"]): r for r in rows if r["split"] == "test"}
    members = [member_model(path).eval() for path in load_members(root / "run")]
    member_probs = [torch.softmax(torch.from_numpy(option_log_likelihoods(m, options["test"])), -1) for m in members]
    pooled = torch.stack(member_probs).mean(0).numpy()
    labels = np.asarray(options["test"]["label"])
    assert test[("ensemble", None, 3)]["nll"] == pytest.approx(-np.log(pooled[np.arange(9), labels]).mean())
    assert test[("ensemble", None, 3)]["accuracy"] == pytest.approx((pooled.argmax(1) == labels).mean())
    for key in ("aurc", "ece", "nll_calibrated", "temperature", "disagreement"):
        assert key in test[("ensemble", None, 3)]
    assert ("uniform_soup", None, 3) in test
    assert [test[("member", k, 1)]["steps"] for k in range(3)] == [3, 2, 2]

    held_out = {(r["model"], r["size"]): r for r in rows if r["split"] == "held_out"}
    ensemble = build_ensemble(root / "run", root / "ensemble")
    batch = collator([text["held_out"][i] for i in range(len(text["held_out"]))])
    with torch.no_grad():
        loss = ensemble(**batch).loss.item()  # the saved ensemble's NLL of the pooled next-token distribution
    assert held_out[("ensemble", 3)]["token_nll"] == pytest.approx(loss, rel=1e-4)
    assert held_out[("ensemble", 3)]["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert held_out[("uniform_soup", 3)]["tokens"] == (batch["labels"][:, 1:] != -100).sum().item()
    card = (root / "ensemble" / "README.md").read_text()  # option rows and text rows: each shows its metrics
    assert "| evaluation set | model | accuracy | NLL | ECE | AURC | perplexity | NLL per token |" in card
    test_row = next(line for line in card.splitlines() if line.startswith("| test | ensemble of 3 |"))
    assert f"{test[('ensemble', None, 3)]['accuracy']:.4f}" in test_row and test_row.endswith("|  |  |")
    assert (root / "run" / "evaluation.csv").exists()


def test_evaluate_generative_refuses_what_it_cannot_do(lora_run):
    root, formatter = lora_run
    options = {"test": option_dataset(topic_rows(3), formatter, "label")}
    with pytest.raises(ValueError, match="no greedy soup"):
        evaluate_generative(root / "run", options, soups=("greedy",))
    with pytest.raises(ValueError, match="calibration_split='validation'"):
        evaluate_generative(root / "run", options, calibration_split="validation")
    with pytest.raises(ValueError, match="option_datasets"):
        evaluate_generative(root / "run")


def test_prompt_completion_rows_batch_without_a_pad_token(tmp_path):
    pretrained_lm("llama", tmp_path / "lm")
    word_tokenizer(pad=False).save_pretrained(tmp_path / "lm")  # as GPT-2's and Llama's tokenizers
    topic_rows(4).save_to_disk(str(tmp_path / "data"))
    data = DataArguments(model_name_or_path=str(tmp_path / "lm"), dataset=str(tmp_path / "data"),
                         completion_column="label", prompt_template="{text} w5")  # fmt: skip
    task = prepare_task(data)
    batch = task.data_collator([task.train_dataset[i] for i in range(4)])
    assert (batch["attention_mask"] == 0).any() and (batch["labels"][batch["attention_mask"] == 0] == -100).all()
