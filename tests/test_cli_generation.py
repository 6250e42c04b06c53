"""`hf-starsse` with causal language models (issue 28, item 8): train (plain text; prompt and completion, in a chat
template; LoRA), ensemble, soup, evaluate (answer options, perplexity; the run's prompt options, `cli/prompts.py`),
sweep and push, and their cards. A tiny Llama saved to a directory with a word-level tokenizer, runs of two members
and two steps."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from hf_starsse import load_members
from hf_starsse.cards.model_card import card_info, save_card_info
from hf_starsse.cli.main import main
from hf_starsse.evaluation.generative import option_log_likelihoods
from hf_starsse.soups.average import member_model
from hf_starsse.tasks.text_generation import PromptFormat, option_dataset
from hf_starsse.training.data import DataArguments, prepare_task

from test_causal_lm import PROMPT, pretrained_lm, word_tokenizer
from test_cli_tasks import SHORT, card_metadata, data_files
from test_generative import TOPICS, topic_rows
from test_hub import FAKE_TOKEN

HUB_BASE = "org/tiny-llama"  # the Hub id declared for the base model, which the runs know by a local path
CHAT = (
    "{% for m in messages %}{{ 'w90 ' if m['role'] == 'user' else 'w91 ' }}{{ m['content'] }} w92 {% endfor %}"
    "{% if add_generation_prompt %}w91 {% endif %}"
)  # a user turn w90 ... w92, the assistant's w91 ... w92
ANSWERS = ["--completion_column", "label", "--prompt_template", "{text} w5"]
LORA = ["--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny Llama with a chat template (`base/`) and topic data with a `ClassLabel` answer (`topics/`)."""
    root = tmp_path_factory.mktemp("generation")
    pretrained_lm("llama", root / "base")
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(root / "base")
    splits = {"train": topic_rows(12), "validation": topic_rows(6), "test": topic_rows(9)}
    DatasetDict(splits).save_to_disk(root / "topics")
    return root


def train(root: Path, name: str, *options: str) -> str:
    run = str(root / name)
    argv = ["train", "--model_name_or_path", str(root / "base"), "--dataset", str(root / "topics"), "--output_dir",
            run, "--base_model_id", HUB_BASE, *options, *SHORT]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def chat_run(root) -> str:
    """Prompt and completion in the chat template; the task from the causal-LM checkpoint (no --task)."""
    return train(root, "chat", *ANSWERS, "--chat_template")


@pytest.fixture(scope="module")
def text_run(root) -> str:
    """Plain language modelling of the text column."""
    return train(root, "text", "--task", "text-generation")


@pytest.fixture(scope="module")
def lora_run(root) -> str:
    """LoRA members, prompt and completion."""
    pytest.importorskip("peft")
    return train(root, "lora", *ANSWERS, *LORA)


def generates(path) -> None:
    """The saved model loads with `AutoModelForCausalLM` and generates."""
    model = AutoModelForCausalLM.from_pretrained(path)
    output = model.generate(PROMPT, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.shape == (2, PROMPT.shape[1] + 3) and torch.equal(output[:, : PROMPT.shape[1]], PROMPT)


def rows_of(run: str, split: str) -> dict:
    rows = json.loads((Path(run) / "evaluation.json").read_text())
    return {(row["model"], row["size"]): row for row in rows if row["split"] == split and row["model"] != "member"}


def test_chat_prompts_train_on_the_completion_and_evaluate_over_the_options(root, chat_run, capsys):
    assert json.loads((Path(chat_run) / "members/member-01/config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]
    data = DataArguments(model_name_or_path=str(root / "base"), dataset=str(root / "topics"),
                         completion_column="label", prompt_template="{text} w5", chat_template=True)  # fmt: skip
    first, tokenizer = prepare_task(data).train_dataset[0], AutoTokenizer.from_pretrained(root / "base")
    prompt = [token for token, label in zip(first["input_ids"], first["labels"]) if label == -100]
    assert tokenizer.convert_ids_to_tokens(prompt)[:1] + tokenizer.convert_ids_to_tokens(prompt)[-3:] == [
        "w90", "w5", "w92", "w91"
    ]  # fmt: skip
    answer = [label for label in first["labels"] if label != -100]
    assert tokenizer.convert_ids_to_tokens(answer) == [*TOPICS[0].split(), "w92"]  # the answer, then the turn's end

    files = ["--dataset", str(root / "topics"), *ANSWERS, "--chat_template"]
    argv = ["evaluate", "--run_dir", chat_run, *files, "--splits", "test", "--calibration_split", "validation"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "test      ensemble size 2: accuracy" in printed and " aurc " in printed
    test = rows_of(chat_run, "test")
    assert {"nll_calibrated", "ece_calibrated", "temperature"} <= set(test[("ensemble", 2)])
    # the same pooled option probabilities from the members, with the prompts in the chat template
    chat = PromptFormat(tokenizer, template="{text} w5", chat=True)
    options = option_dataset(topic_rows(9), chat, "label")
    members = [member_model(member).eval() for member in load_members(chat_run)]
    pooled = torch.stack([torch.from_numpy(option_log_likelihoods(m, options)).softmax(-1) for m in members]).mean(0)
    pooled = pooled.numpy()
    labels = np.asarray(options["label"])
    assert test[("ensemble", 2)]["nll"] == pytest.approx(-np.log(pooled[np.arange(9), labels]).mean(), rel=1e-5)
    assert test[("ensemble", 2)]["accuracy"] == pytest.approx((pooled.argmax(1) == labels).mean())


def test_ensemble_and_soup_of_a_prompted_run_generate_with_their_cards(root, chat_run):
    data = ["--dataset", str(root / "topics"), *ANSWERS, "--chat_template"]
    assert main(["evaluate", "--run_dir", chat_run, *data]) == 0
    for kind, command in (("ensemble", "ensemble"), ("soup", "soup")):
        path = root / f"chat-{kind}"
        assert main([command, "--run_dir", chat_run, "--output_dir", str(path)]) == 0
        generates(path)
        metadata = card_metadata(path)
        assert metadata["pipeline_tag"] == "text-generation" and metadata["base_model"] == HUB_BASE
        (result,) = metadata["model-index"][0]["results"]
        assert [metric["type"] for metric in result["metrics"]] == ["accuracy"]  # over the answer options
        text = (path / "README.md").read_text()
        assert "| evaluation set | model | accuracy | NLL | ECE | AURC |\n" in text
        assert isinstance(run_usage(text, path), str)  # the assistant's answer
    assert "ensemble of 2 | " in (root / "chat-ensemble/README.md").read_text()


def run_usage(card: str, path: Path) -> str:
    """Run a card's `pipeline` example on the saved model (the placeholder id replaced by its path): its output."""
    code = card[card.index("generator = pipeline(") : card.index("```", card.index("generator = pipeline("))]
    assert 'prompt = \'{text} w5\'.format_map({"text": "..."})  # made as in training\n' in code  # as trained
    assert 'messages = [{"role": "user", "content": prompt}]\n' in code  # in the chat template, as trained
    code = code.replace(f"path/to/{path.name.split('-')[1]}", str(path)).replace("print(", "output = (")
    namespace = {"pipeline": pipeline}
    exec(code.replace('"..."', '"w7 w8"'), namespace)
    return namespace["output"]


def test_evaluate_reuses_the_prompt_the_run_was_trained_with(root, chat_run, text_run, capsys):
    trained = {"completion_column": "label", "prompt_template": "{text} w5", "chat_template": True, "max_length": None}
    assert json.loads((Path(chat_run) / "card_info.json").read_text())["prompt"] == trained
    assert json.loads((Path(text_run) / "card_info.json").read_text())["prompt"] == {}  # plain text: no prompt
    data = ["--dataset", str(root / "topics"), "--splits", "test"]
    assert main(["evaluate", "--run_dir", chat_run, *data, *ANSWERS, "--chat_template"]) == 0
    given = rows_of(chat_run, "test")[("ensemble", 2)]
    capsys.readouterr()
    assert main(["evaluate", "--run_dir", chat_run, *data]) == 0  # options left out: the trained ones, said
    assert rows_of(chat_run, "test")[("ensemble", 2)]["nll"] == pytest.approx(given["nll"])
    error = capsys.readouterr().err
    assert (
        "prompt options (" in error
        and "--completion_column 'label' --prompt_template '{text} w5' --chat_template" in error
    )
    assert main(["evaluate", "--run_dir", chat_run, *data, "--prompt_template", "{text}"]) == 0
    error = capsys.readouterr().err
    assert "--prompt_template '{text}' is not what the run was trained with ('{text} w5')" in error
    assert rows_of(chat_run, "test")[("ensemble", 2)]["nll"] != pytest.approx(given["nll"])  # scored as given
    assert main(["evaluate", "--run_dir", chat_run, *data, "--completion_column", "", "--prompt_template", ""]) == 0
    assert "perplexity" in rows_of(chat_run, "test")[("ensemble", 2)]  # '' unsets: the text's perplexity
    capsys.readouterr()
    assert main(["evaluate", "--run_dir", text_run, *data]) == 0
    assert "prompt" not in capsys.readouterr().err  # a plain-text run: nothing to reuse or ask for


def test_a_greedy_soup_picks_members_on_prompts_made_as_in_training(root, chat_run, capsys):
    out = root / "chat-greedy-soup"
    argv = ["soup", "--run_dir", chat_run, "--output_dir", str(out), "--method", "greedy", "--dataset",
            str(root / "topics"), "--eval_split", "validation"]  # fmt: skip
    assert main(argv) == 0
    assert "hf-starsse soup: the run's prompt options (" in capsys.readouterr().err
    generates(out)


def test_evaluate_asks_for_the_prompt_of_a_run_that_records_none(root, chat_run, capsys):
    (Path(chat_run) / "card_info.json").write_text(json.dumps({"base_model": HUB_BASE}))  # as Python API runs
    try:
        assert main(["evaluate", "--run_dir", chat_run, "--dataset", str(root / "topics"), "--splits", "test"]) == 0
        assert "records no prompt options: pass --completion_column" in capsys.readouterr().err
        save_card_info(chat_run, prompt={"prompt_template": "{text} w5"})  # recorded later; base_model kept
        assert card_info(chat_run)["base_model"] == HUB_BASE and card_info(chat_run)["prompt"]
        with pytest.raises(ValueError, match=r"prompt names \['template'\], which are no prompt options"):
            save_card_info(chat_run, prompt={"template": "{text}"})
    finally:
        save_card_info(chat_run, prompt={"completion_column": "label", "prompt_template": "{text} w5",
                                         "chat_template": True, "max_length": None})  # fmt: skip


def test_plain_text_is_scored_by_perplexity(root, text_run, capsys):
    assert main(["evaluate", "--run_dir", text_run, "--dataset", str(root / "topics"), "--splits", "test"]) == 0
    assert "test      ensemble size 2: perplexity " in capsys.readouterr().out
    test = rows_of(text_run, "test")
    tokens = sum(len(text.split()) - 1 for text in topic_rows(9)["text"])  # every next token of the test texts
    for row in test.values():
        assert row["tokens"] == tokens and row["perplexity"] == pytest.approx(math.exp(row["token_nll"]))
    assert set(test) == {("ensemble", 1), ("ensemble", 2), ("uniform_soup", 2)}
    assert main(["ensemble", "--run_dir", text_run, "--output_dir", str(root / "text-ensemble")]) == 0
    text = (root / "text-ensemble/README.md").read_text()
    assert "| evaluation set | model | perplexity | NLL per token |\n" in text
    (result,) = card_metadata(root / "text-ensemble")["model-index"][0]["results"]
    assert result["metrics"][0]["type"] == "perplexity"


def test_answer_options_of_a_text_column_and_completion_perplexity(tmp_path, chat_run):
    rows = [{"text": row["text"], "answer": TOPICS[row["label"]]} for row in topic_rows(9)]
    files = data_files(tmp_path, rows)
    argv = ["evaluate", "--run_dir", chat_run, *files, "--completion_column", "answer", "--prompt_template",
            "{text} w5", "--chat_template", "--splits", "test"]  # fmt: skip
    assert main([*argv, "--answer_options", *reversed(TOPICS)]) == 0
    assert "accuracy" in rows_of(chat_run, "test")[("ensemble", 2)]  # a text column: the given answers are scored
    assert main(argv) == 0
    completions = rows_of(chat_run, "test")[("ensemble", 2)]  # without options: the completions' perplexity
    assert "accuracy" not in completions
    assert completions["tokens"] == sum(len(row["answer"].split()) + 1 for row in rows[:6])  # + the turn's end


def test_lora_members_ensemble_soup_and_push(root, lora_run, local_hub, capsys):
    assert main(["ensemble", "--run_dir", lora_run, "--output_dir", str(root / "lora-ensemble")]) == 0
    generates(root / "lora-ensemble")
    metadata, text = card_metadata(root / "lora-ensemble"), (root / "lora-ensemble/README.md").read_text()
    assert metadata["pipeline_tag"] == "text-generation" and {"peft", "lora"} <= set(metadata["tags"])
    assert metadata["base_model"] == HUB_BASE and metadata["base_model_relation"] == "adapter"
    assert "Each member is a LORA adapter of rank 4" in text
    assert f'base = AutoModelForCausalLM.from_pretrained("{HUB_BASE}")\n' in text  # no classification head options
    assert main(["soup", "--run_dir", lora_run, "--output_dir", str(root / "lora-soup")]) == 0
    generates(root / "lora-soup")
    assert "The members were LORA adapters of rank 4 (PEFT)" in (root / "lora-soup/README.md").read_text()

    repos = ["--repo_id", "team/lm", "--soup_repo_id", "team/lm-soup"]
    assert main(["push", "--path", lora_run, *repos, "--token", FAKE_TOKEN]) == 0
    assert "Pushed" in capsys.readouterr().out
    files = local_hub.files("team/lm")
    assert {"adapters/member_0/adapter_model.safetensors", "adapters/member_1/adapter_config.json"} <= set(files)
    for repo in ("team/lm", "team/lm-soup"):
        card = local_hub.files(repo)["README.md"].decode()
        assert "pipeline_tag: text-generation" in card and f"base_model: {HUB_BASE}" in card
        assert f'pipeline("text-generation", model="{repo}")' in card


def test_sweep_of_a_language_model_scores_cells_by_nll_per_token(root, capsys):
    sweep = root / "sweep"
    grid = ["--lr_ratios", "1", "--length_ratios", "1"]
    argv = ["sweep", "--model_name_or_path", str(root / "base"), "--dataset", str(root / "topics"), "--output_dir",
            str(sweep), "--eval_split", "validation", *ANSWERS, *grid, *SHORT]  # fmt: skip
    assert main(argv) == 0
    assert "(ensemble NLL/token " in capsys.readouterr().out
    (cell,) = json.loads((sweep / "sweep.json").read_text())["cells"]
    assert cell["ensemble_nll"] > 0 and cell["member_nll"] > 0 and 0 <= cell["barrier"] <= 1
    assert (sweep / "sweep_heatmaps.png").is_file()


@pytest.mark.parametrize(
    "command, message",
    [
        ("calibrate --model_dir {run}/members/member-00 --dataset {topics}", "not calibrated in place"),
        ("ensemble --run_dir {run} --output_dir {root}/x --calibrate --dataset {topics} --eval_split validation",
         "not calibrated in place"),
        ("evaluate --run_dir {run} --dataset {topics} --calibration_split validation",
         "--calibration_split fits a temperature over answer options"),
        ("evaluate --run_dir {run} --dataset {topics} --soups greedy", "not a greedy soup"),
        ("evaluate --run_dir {run} --dataset {topics} --answer_options w10", "set --completion_column"),
    ],
)  # fmt: skip
def test_what_cannot_work_is_one_line(root, text_run, capsys, command, message):
    argv = command.format(run=text_run, topics=root / "topics", root=root).split()
    assert main(argv) == 2
    *progress, error = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"hf-starsse {argv[0]}: error: ") and message in error
    assert all(line.startswith("Map") for line in progress)  # the data's progress bars, nothing else
    assert not (root / "x").exists()


def test_help_names_text_generation_and_its_options(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "text-generation" in text and "--completion_column" in text and "`calibrate` does not apply" in text
    for command in ("train", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(option in text for option in ("--completion_column", "--prompt_template", "--chat_template"))
    assert "--answer_options" in text  # evaluate's
