"""`hf-starsse` beyond text and image classification: `--task` (or the task of the model's head), the columns of
token classification, multiple choice and extractive QA, and the cards of what the runs make."""

import json
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from huggingface_hub import ModelCard
from transformers import BertForTokenClassification, MobileNetV2Config, MobileNetV2Model

from hf_starsse.cards.model_card import METRIC_NAMES
from hf_starsse.cli.main import main
from hf_starsse.tasks.multiple_choice import MULTIPLE_CHOICE
from hf_starsse.tasks.question_answering import answer_positions
from hf_starsse.training.data import DataArguments, prepare_task

from conftest import tokenizer

TAGS = ["O", "B-THING", "I-THING"]
SHORT = ["--num_members", "2", "--cycle_steps", "1", "--max_steps", "2", "--report_to", "none", "--use_cpu", "true",
         "--save_strategy", "no", "--disable_tqdm", "true", "--per_device_train_batch_size", "4"]  # fmt: skip


def words(row: int, count: int) -> list[str]:
    return [f"w{5 + (row * 7 + i * 3) % 90}" for i in range(count)]


def write_json(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def data_files(tmp_path, rows: list[dict]) -> list[str]:
    """The rows as train.json and test.json (the first 6 rows)."""
    train, test = write_json(tmp_path / "train.json", rows), write_json(tmp_path / "test.json", rows[:6])
    return ["--data_files", f"train={train}", f"test={test}"]


def ner_rows(n: int = 12) -> list[dict]:
    """Words with a string tag each (CoNLL's columns: `tokens`, `ner_tags`)."""
    rows = [words(row, 3 + row % 3) for row in range(n)]
    return [{"tokens": row, "ner_tags": [TAGS[int(word[1:]) % 3] for word in row]} for row in rows]


def swag_rows(n: int = 12) -> list[dict]:
    """SWAG's columns: a context `sent1`, the start of the next sentence `sent2`, its endings and the right one."""
    return [
        {
            "sent1": " ".join(words(row, 4)),
            "sent2": "w9",
            "label": row % 4,
            **{f"ending{i}": " ".join(words(row + i, 2)) for i in range(4)},
        }  # fmt: skip
        for row in range(n)
    ]


def squad_rows(n: int = 12) -> list[dict]:
    """SQuAD's columns: the answer is the third word of the context (row 0: no answer)."""
    rows = []
    for row in range(n):
        context = words(row, 6)
        start = len(" ".join(context[:2])) + 1
        answers = {"text": [context[2]], "answer_start": [start]} if row else {"text": [], "answer_start": []}
        rows.append({"question": " ".join(words(row + 1, 2)), "context": " ".join(context), "answers": answers})
    return rows


def train(tmp_path, model: str, files: list[str], *options: str) -> str:
    run = str(tmp_path / "run")
    assert main(["train", "--model_name_or_path", model, *files, "--output_dir", run, *options, *SHORT]) == 0
    return run


def member_config(run: str) -> dict:
    return json.loads((Path(run) / "members/member-01/config.json").read_text())


def card_metadata(path) -> dict:
    return ModelCard.load(Path(path) / "README.md").data.to_dict()


def test_token_classification_from_words_and_string_tags(tmp_path, pretrained_bert):
    files = data_files(tmp_path, ner_rows())
    run = train(tmp_path, pretrained_bert, files, "--task", "token-classification", "--max_length", "16")
    config = member_config(run)
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {"0": "B-THING", "1": "I-THING", "2": "O"}  # the tags, sorted
    assert main(["ensemble", "--run_dir", run, "--output_dir", str(tmp_path / "ensemble")]) == 0
    metadata = card_metadata(tmp_path / "ensemble")
    assert metadata["pipeline_tag"] == "token-classification" and "token-classification" in metadata["tags"]
    assert main(["soup", "--run_dir", run, "--output_dir", str(tmp_path / "soup"), *files]) == 0
    assert card_metadata(tmp_path / "soup")["pipeline_tag"] == "token-classification"
    assert main(["evaluate", "--run_dir", run, *files, "--splits", "test"]) == 0
    rows = json.loads((Path(run) / "evaluation.json").read_text())
    assert all(0 <= row["entity_f1"] <= 1 and "accuracy" in row for row in rows)  # B-/I- tags: entities


@pytest.fixture
def token_checkpoint(tmp_path, pretrained_bert) -> str:
    """A checkpoint with a token-classification head (the tiny BERT's), with its tokenizer."""
    path = tmp_path / "tagger"
    BertForTokenClassification.from_pretrained(pretrained_bert, num_labels=len(TAGS)).save_pretrained(path)
    tokenizer(path)
    return str(path)


def test_the_task_of_the_models_head_and_class_label_tags(tmp_path, token_checkpoint):
    features = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=TAGS))})
    rows = {key: [row[key] for row in ner_rows()] for key in ("tokens", "ner_tags")}
    rows["ner_tags"] = [[TAGS.index(tag) for tag in row] for row in rows["ner_tags"]]
    DatasetDict({"train": Dataset.from_dict(rows, features=features)}).save_to_disk(tmp_path / "conll")
    run = train(tmp_path, token_checkpoint, ["--dataset", str(tmp_path / "conll")])  # no --task
    config = member_config(run)
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == dict(zip("012", TAGS))  # the ClassLabel's order


def test_multiple_choice_with_swag_columns(tmp_path, pretrained_bert, capsys):
    files = data_files(tmp_path, swag_rows())
    run = train(tmp_path, pretrained_bert, files, "--task", "multiple-choice")
    assert member_config(run)["architectures"] == ["BertForMultipleChoice"]
    data = DataArguments(model_name_or_path=pretrained_bert, data_files=files[1:], task="multiple-choice")
    task = prepare_task(data)
    first = task.train_dataset[0]
    assert len(first["input_ids"]) == 4 and first["labels"] == 0
    assert tokenizer().decode(first["input_ids"][1]).split(" [SEP] ")[1:] == ["w9 w12 w15 [SEP]"]  # sent2 ending1
    assert task.data_collator([first, task.train_dataset[1]])["input_ids"].shape[:2] == (2, 4)
    assert main(["evaluate", "--run_dir", run, *files, "--splits", "test"]) == 0  # the task from the members' head
    printed = capsys.readouterr().out
    assert all(f"{metric} " in printed for metric in MULTIPLE_CHOICE.metrics)
    assert main(["ensemble", "--run_dir", run, "--output_dir", str(tmp_path / "ensemble")]) == 0
    metadata = card_metadata(tmp_path / "ensemble")
    assert metadata["pipeline_tag"] == "multiple-choice"
    (result,) = metadata["model-index"][0]["results"]
    assert [metric["type"] for metric in result["metrics"]] == [MULTIPLE_CHOICE.metrics[0]]
    text = (tmp_path / "ensemble/README.md").read_text()
    header = "| evaluation set | model | " + " | ".join(METRIC_NAMES.get(m, m) for m in MULTIPLE_CHOICE.metrics) + " |"
    assert header + "\n" in text  # the family's metrics, no other
    assert "pipeline(" not in text  # transformers has no multiple-choice pipeline
    assert main(["soup", "--run_dir", run, "--output_dir", str(tmp_path / "soup")]) == 0
    assert card_metadata(tmp_path / "soup")["pipeline_tag"] == "multiple-choice"


def test_question_answering_with_squad_columns(tmp_path, pretrained_bert):
    files = data_files(tmp_path, squad_rows())
    run = train(tmp_path, pretrained_bert, files, "--task", "question-answering", "--max_length", "24")
    assert member_config(run)["architectures"] == ["BertForQuestionAnswering"]
    assert main(["evaluate", "--run_dir", run, *files, "--splits", "test"]) == 0
    rows = json.loads((Path(run) / "evaluation.json").read_text())
    assert all(0 <= row["exact_match"] <= row["f1"] <= 1 for row in rows)
    assert main(["ensemble", "--run_dir", run, "--output_dir", str(tmp_path / "ensemble")]) == 0
    metadata = card_metadata(tmp_path / "ensemble")
    assert metadata["pipeline_tag"] == "question-answering"
    (result,) = metadata["model-index"][0]["results"]
    assert [metric["type"] for metric in result["metrics"]] == ["exact_match"]  # the card reports the evaluation
    data = DataArguments(model_name_or_path=run + "/members/member-00", data_files=files[1:], max_length=24)
    prepared = prepare_task(data).train_dataset  # the task from the members' head
    assert len(prepared[0]["input_ids"]) == 24  # padded: the default collator stacks the rows
    assert prepared["start_positions"][:3] == prepared["end_positions"][:3] == [0, 6, 6]  # [CLS] q q [SEP] c c ANSWER


def test_answer_positions_are_the_tokens_of_the_answer():
    tok = tokenizer()
    encoded = tok("w5 w6", "w7 w8 w9 w10", return_offsets_mapping=True)
    in_context = [side == 1 for side in encoded.sequence_ids()]
    answer = {"text": ["w8 w9"], "answer_start": [3]}
    assert answer_positions(in_context, encoded["offset_mapping"], answer) == (5, 6)  # [CLS] w5 w6 [SEP] w7 w8 w9
    assert answer_positions(in_context, encoded["offset_mapping"], {"text": [], "answer_start": []}) == (0, 0)
    cut = tok("w5 w6", "w7 w8 w9 w10", truncation="only_second", max_length=6, return_offsets_mapping=True)
    assert answer_positions([s == 1 for s in cut.sequence_ids()], cut["offset_mapping"], answer) == (0, 0)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--task", "ner"], "--task 'ner' is not a task family; choose one of text-classification, token-class"),
        (["--task", "audio-classification"], "--task 'audio-classification' has no data preparation in the CLI"),
        (["--task", "multiple-choice"], "Multiple-choice data needs a context and two or more choice columns"),
        (["--task", "question-answering"], "No question-answering column(s) ['question', 'context', 'answers']"),
        (["--task", "token-classification"], "No word column 'tokens' in ['text', 'label']; set --text_column."),
    ],
)
def test_task_errors_are_one_line(tmp_path, pretrained_bert, text_data, capsys, options, message):
    argv = ["train", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--output_dir",
            str(tmp_path / "run"), *options, *SHORT]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_model_type_without_the_tasks_head_is_refused(tmp_path, text_data, capsys):
    MobileNetV2Model(MobileNetV2Config(image_size=16, depth_multiplier=0.25)).save_pretrained(tmp_path / "backbone")
    argv = ["train", "--model_name_or_path", str(tmp_path / "backbone"), "--dataset", text_data, "--output_dir",
            str(tmp_path / "run"), "--task", "token-classification", *SHORT]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "holds words but" in err and "is a 'mobilenet_v2' model, which does not classify tokens" in err


def test_a_task_contradicting_the_models_head_is_refused(tmp_path, token_checkpoint, text_data, capsys):
    argv = ["train", "--model_name_or_path", token_checkpoint, "--dataset", text_data, "--output_dir",
            str(tmp_path / "run"), "--task", "text-classification", *SHORT]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--task text-classification contradicts the model" in err and "(a token-classification head)" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "soup"])
def test_help_names_the_task_and_its_columns(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    for option in ("--task", "--label_column", "--context_column", "--question_column", "--choice_columns"):
        assert option in text
    assert "--answer_column" in text and "token-classification" in text


def test_a_causal_lm_checkpoint_is_a_base_for_classification(tmp_path):
    """A causal LM's head is not a task head the CLI prepares data for: --task picks the task (no contradiction)."""
    from test_causal_lm import pretrained_lm, word_tokenizer

    pretrained_lm("gpt2", tmp_path / "gpt2")
    word_tokenizer().save_pretrained(tmp_path / "gpt2")
    files = data_files(tmp_path, [{"text": f"w{5 + i} w9", "label": i % 2} for i in range(8)])
    data = DataArguments(model_name_or_path=str(tmp_path / "gpt2"), data_files=files[1:], task="text-classification")
    assert prepare_task(data).family.name == "text-classification"
