import json
import os
import re
import shutil
import socket
import subprocess
import sys

import huggingface_hub.constants
import pytest
import yaml
from datasets import Dataset, DatasetDict

from hf_starsse.cli.main import main
from hf_starsse.errors import MemberLockedError
from hf_starsse.training.data import DataArguments, prepare_task

from hub_server import LocalHub

COMMON = ["--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true",
          "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--learning_rate", "0.001"]  # fmt: skip


def test_train_soup_evaluate_and_yaml(tmp_path, pretrained_bert, text_data):
    run = tmp_path / "run"
    base = ["--model_name_or_path", pretrained_bert, "--dataset", text_data, "--eval_split", "validation"]
    assert main(["train", *base, "--output_dir", str(run), "--num_members", "2", "--cycle_steps", "2", *COMMON]) == 0
    manifest = json.loads((run / "ensemble.json").read_text())
    assert [m["index"] for m in manifest["members"]] == [0, 1]
    config = json.loads((run / "members/member-01/config.json").read_text())
    assert config["id2label"] == {"0": "alpha", "1": "beta", "2": "gamma"}

    assert main(["soup", "--run_dir", str(run), "--output_dir", str(tmp_path / "soup")]) == 0
    assert (tmp_path / "soup/soup.json").is_file() and (tmp_path / "soup/tokenizer.json").is_file()
    assert main(["evaluate", "--run_dir", str(run), "--dataset", text_data, "--splits", "test", "validation"]) == 0
    rows = json.loads((run / "evaluation.json").read_text())
    assert {row["split"] for row in rows} == {"test", "validation"}

    config = {"model_name_or_path": pretrained_bert, "dataset": text_data, "output_dir": str(tmp_path / "yaml_run"),
              "num_members": 2, "cycle_steps": 2, "ensemble_method": "sse", "report_to": "none", "use_cpu": True,
              "save_strategy": "no", "disable_tqdm": True, "per_device_train_batch_size": 8,
              "num_train_epochs": 1, "learning_rate": 0.001}  # fmt: skip
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["train", str(config_file)]) == 0
    assert json.loads((tmp_path / "yaml_run/ensemble.json").read_text())["ensemble_method"] == "sse"


def test_sweep_command(tmp_path, pretrained_bert, text_data):
    argv = ["sweep", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--eval_split", "validation",
            "--output_dir", str(tmp_path / "sweep"), "--num_members", "2", "--lr_ratios", "1", "2",
            "--length_ratios", "0.5", *COMMON]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "sweep/sweep.json").read_text())
    assert len(results["cells"]) == 2 and results["best"]["lr_ratio"] in (1, 2)


def test_image_classification_train_and_sweep(tmp_path, image_data):
    model_dir, data_dir = image_data
    argv = ["train", "--model_name_or_path", model_dir, "--dataset", data_dir, "--output_dir", str(tmp_path / "run"),
            "--num_members", "2", "--cycle_steps", "1", *COMMON]  # fmt: skip
    assert main(argv) == 0
    assert len(json.loads((tmp_path / "run/ensemble.json").read_text())["members"]) == 2
    argv = ["sweep", "--model_name_or_path", model_dir, "--dataset", data_dir, "--eval_split", "train",
            "--output_dir", str(tmp_path / "sweep"), "--num_members", "2", "--lr_ratios", "1", "--length_ratios", "1",
            *COMMON]  # fmt: skip
    assert main(argv) == 0 and (tmp_path / "sweep/sweep_heatmaps.png").is_file()


def test_data_files_per_split(tmp_path, pretrained_bert, text_data, capsys):
    """Two CSV files named as splits: train on `train`, evaluate on `test`; an unknown split is one clear error."""
    splits = DatasetDict.load_from_disk(text_data)
    splits["test"] = splits["test"].select(range(7))  # 7 rows: accuracies on it are multiples of 1/7, not 1/32
    for split in ("train", "test"):
        named = splits[split].map(lambda row: {"label": ["alpha", "beta", "gamma"][row["label"]]})
        named.to_csv(tmp_path / f"{split}.csv")
    files = ["--data_files", f"train={tmp_path / 'train.csv'}", f"test={tmp_path / 'test.csv'}"]
    run = tmp_path / "run"
    argv = ["train", "--model_name_or_path", pretrained_bert, *files, "--output_dir", str(run), "--num_members", "2",
            "--cycle_steps", "1", "--base_model_id", "google-bert/bert-base-uncased", "--dataset_name", "Tiny words",
            *COMMON]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((run / "card_info.json").read_text()) == {
        "base_model": "google-bert/bert-base-uncased", "dataset_name": "Tiny words"
    }  # fmt: skip
    assert main(["evaluate", "--run_dir", str(run), *files, "--splits", "test"]) == 0
    rows = json.loads((run / "evaluation.json").read_text())
    assert {row["split"] for row in rows} == {"test"}
    assert all(row["accuracy"] * 7 == pytest.approx(round(row["accuracy"] * 7)) for row in rows)
    assert any(0 < row["accuracy"] < 1 for row in rows)  # so not the 32 training rows
    capsys.readouterr()
    assert main(["evaluate", "--run_dir", str(run), *files, "--splits", "validation"]) == 2
    err = capsys.readouterr().err
    assert "has no split 'validation'; it has 'test', 'train': add validation=FILE to --data_files" in err
    assert main(["evaluate", "--run_dir", str(run), "--data_files", str(tmp_path / "test.csv")]) == 2
    assert "is not split=file" in capsys.readouterr().err

    data_files = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}  # the same in Python
    task = prepare_task(DataArguments(model_name_or_path=pretrained_bert, data_files=data_files), splits=("test",))
    assert {split: len(rows) for split, rows in task.splits.items()} == {"train": 32, "test": 7}
    with pytest.raises(ValueError, match="Pass the data as --dataset or as --data_files"):
        DataArguments(model_name_or_path=pretrained_bert, dataset=text_data, data_files=data_files)


def test_evaluation_maps_labels_to_the_models_ids(tmp_path, pretrained_bert):
    rows = {"text": ["w5 w6", "w7 w8", "w9 w10"], "label": ["neg", "neu", "pos"]}
    DatasetDict(
        {"train": Dataset.from_dict(rows), "test": Dataset.from_dict({"text": ["w5", "w6"], "label": ["pos", "neu"]}),
         "odd": Dataset.from_dict({"text": ["w5"], "label": ["xyz"]})}
    ).save_to_disk(tmp_path / "data")  # fmt: skip
    data = DataArguments(model_name_or_path=pretrained_bert, dataset=str(tmp_path / "data"))
    task = prepare_task(data, label_names=["neg", "neu", "pos"])
    assert task.prepare(task.splits["test"])["labels"] == [2, 1]  # by name, not by the test split's own order
    with pytest.raises(ValueError, match="Label 'xyz' is not among the model's labels"):
        task.prepare(task.splits["odd"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--dataset", "/nonexistent/data"], "is neither a save_to_disk directory nor a data file"),
        (["train", "--label_column", "category"], "no label column 'category'"),
        (["train", "--text_column", "body"], "No text column 'body'"),
        (["train", "--eval_split", "dev"], "has no split 'dev'"),
        (["train", "--cycle_epochs", "1", "--cycle_steps", "3"], "cycle_epochs or cycle_steps, not both"),
        (["sweep"], "pass --eval_split"),
        (["evaluate", "--run_dir", "/nonexistent/run"], "needs --dataset"),
        (["soup", "--run_dir", "/nonexistent/run", "--output_dir", "x", "--dataset", "d"], "has no ensemble.json"),
    ],
)
def test_user_errors_are_one_line(tmp_path, pretrained_bert, text_data, capsys, argv, message):
    command, *rest = argv
    if command in ("train", "sweep"):
        defaults = {"--model_name_or_path": pretrained_bert, "--dataset": text_data, "--output_dir": str(tmp_path)}
        for key, value in defaults.items():
            if key not in rest:
                rest += [key, value]
        rest += COMMON
    assert main([command, *rest]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_help_and_console_script(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--ensemble_method", "--cycle_learning_rate", "--dataset", "--label_column", "--learning_rate"):
        assert option in help_text
    assert main(["frobnicate"]) == 2
    result = subprocess.run([sys.executable, "-m", "hf_starsse.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "hf-starsse train" in result.stdout
    script = shutil.which("hf-starsse", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert script is not None and subprocess.run([script, "--help"], capture_output=True).returncode == 0


def test_push_dry_run_and_bad_repo_id(text_run, capsys):
    run = text_run.args.output_dir
    assert main(["push", "--path", run, "--repo_id", "me/ens", "--members_as_subfolders", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Would push to me/ens (revision main, visibility by default): 'Upload ensemble with hf_st")
    assert re.search(r"members/member-02/model\.safetensors +<- " + re.escape(f"{run}/members/member-02/"), out)
    assert main(["push", "--path", run, "--repo_id", "me/bad id", "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--repo_id 'me/bad id' is not a valid Hub repository id" in err and len(err.splitlines()) == 1


def test_push_command_uploads_through_hf_endpoint(text_run, tmp_path):
    token = "hf_FAKEcliTOKEN0123456789abcdefghij"
    with LocalHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HOME": str(tmp_path / "hf_home")}
        argv = ["push", "--path", text_run.args.output_dir, "--repo_id", "cli-ensemble", "--private", "true",
                "--commit_message", "From the CLI"]  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "hf_starsse.cli", *argv], capture_output=True, text=True, env=env, timeout=300
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.repos["tester/cli-ensemble"].private and hub.commits[0].message == "From the CLI"
    assert "model.safetensors" in hub.files("tester/cli-ensemble")
    assert f"files to tester/cli-ensemble: {hub.url}/tester/cli-ensemble/commit/" in result.stdout
    assert token not in result.stdout + result.stderr
    assert {auth for method, _, auth in hub.requests if method == "POST"} == {f"Bearer {token}"}


def test_push_with_the_hub_unreachable_is_one_line(text_run, capsys, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed)
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEunreachable0123456789abcdefgh")
    assert main(["push", "--path", text_run.args.output_dir, "--repo_id", "me/ens"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hf-starsse")]  # not the progress bars
    assert "Traceback" not in err and len(lines) == 1
    assert lines[0].startswith(f"hf-starsse push: error: Could not reach the Hub at {closed}")


def test_only_user_errors_are_one_line(text_run, capsys, monkeypatch):
    import hf_starsse.cli.main

    def bug(**kwargs):
        raise RuntimeError("a bug in the library")

    monkeypatch.setattr(hf_starsse.cli.main, "push_ensemble_to_hub", bug)
    with pytest.raises(RuntimeError, match="a bug in the library"):  # keeps its traceback
        main(["push", "--path", text_run.args.output_dir, "--repo_id", "me/ens", "--dry_run"])

    def locked(**kwargs):
        raise MemberLockedError("Member 1 in runs/x is being trained by another job.")

    monkeypatch.setattr(hf_starsse.cli.main, "push_ensemble_to_hub", locked)
    assert main(["push", "--path", text_run.args.output_dir, "--repo_id", "me/ens", "--dry_run"]) == 2
    assert "error: Member 1 in runs/x is being trained by another job." in capsys.readouterr().err


def test_cpu_only_training_does_not_warn_about_pin_memory(tmp_path, pretrained_bert, text_data):
    import warnings

    from hf_starsse.training.data import has_accelerator

    assert not has_accelerator()  # this test is about CPU-only machines (CI)
    options = COMMON[: COMMON.index("--use_cpu")] + COMMON[COMMON.index("--use_cpu") + 2 :]  # defaults, as users run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        argv = ["train", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--output_dir",
                str(tmp_path / "run"), "--num_members", "2", "--max_steps", "2", "--cycle_steps", "1",
                *options]  # fmt: skip
        assert main(argv) == 0
    assert [str(w.message) for w in caught if "pin_memory" in str(w.message)] == []


def test_ensemble_command_builds_and_calibrates(tmp_path, pretrained_bert, text_data, capsys):
    run, out = str(tmp_path / "run"), tmp_path / "ensemble"
    argv = ["train", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--output_dir", run,
            "--num_members", "3", "--cycle_steps", "2", *COMMON]  # fmt: skip
    assert main(argv) == 0
    assert main(["ensemble", "--run_dir", run, "--output_dir", str(out), "--members", "0", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_members"] == 2 and config["calibration"] is None
    assert "Ensemble of 2 members saved" in capsys.readouterr().out
    argv = ["ensemble", "--run_dir", run, "--output_dir", str(out), "--calibrate", "--dataset", text_data]
    assert main(argv) == 2 and "pass --dataset (or --data_files) and --eval_split" in capsys.readouterr().err
    assert main([*argv, "--eval_split", "validation"]) == 2  # out is not empty
    assert "is not empty; choose another directory or pass --overwrite." in capsys.readouterr().err
    assert main(["soup", "--run_dir", run, "--output_dir", str(out)]) == 2  # the same words from soup
    assert "is not empty; choose another directory or pass --overwrite." in capsys.readouterr().err
    assert main([*argv, "--eval_split", "validation", "--overwrite"]) == 0
    assert "Temperature" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["num_members"] == 3 and config["calibration"]["split"] == "validation"


def test_calibrate_takes_data_files(tmp_path, text_run, text_data, capsys):
    splits = DatasetDict.load_from_disk(text_data)
    for split in ("train", "validation", "test"):
        rows = splits[split].select(range(9 if split == "validation" else 16)).to_pandas()
        rows["label"] = "LABEL_" + rows["label"].astype(str)  # the run's label names
        rows.to_csv(tmp_path / f"{split}.csv", index=False)
    ensemble = tmp_path / "ensemble"
    assert main(["ensemble", "--run_dir", text_run.args.output_dir, "--output_dir", str(ensemble)]) == 0
    files = ["--data_files", *(f"{split}={tmp_path / split}.csv" for split in ("train", "validation", "test"))]
    assert main(["calibrate", "--model_dir", str(ensemble), *files, "--split", "test"]) == 2
    assert "'test' is a test split" in capsys.readouterr().err
    assert main(["calibrate", "--model_dir", str(ensemble), *files, "--split", "validation"]) == 0
    calibration = json.loads((ensemble / "config.json").read_text())["calibration"]
    assert calibration["split"] == "validation" and calibration["num_samples"] == 9  # the validation file's rows


@pytest.mark.parametrize(
    "argv, message",
    [
        (["soup", "--run_dir", "r", "--output_dir", "o", "--overwrit"], "--overwrit: did you mean --overwrite?"),
        (["ensemble", "--run_dir", "r", "--output_dir", "o", "--member", "0"], "--member: did you mean --members?"),
        (["evaluate", "--run_dir", "r", "--split", "test"], "--split: did you mean --splits?"),
    ],
)
def test_mistyped_and_abbreviated_flags_are_refused_with_a_suggestion(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"unknown option(s) {message.split(':')[0]} ({message}); see hf-starsse {argv[0]} --help." in err


def test_train_refuses_a_prefix_of_a_flag(tmp_path, pretrained_bert, text_data, capsys):
    argv = ["train", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--output_dir",
            str(tmp_path / "run"), "--num_member", "2", *COMMON]  # fmt: skip
    assert main(argv) == 2 and not (tmp_path / "run").exists()
    assert "--num_member: did you mean --num_members?" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", [None, "no"])
def test_eval_split_alone_evaluates_each_epoch(tmp_path, pretrained_bert, text_data, strategy):
    run = tmp_path / "run"
    argv = ["train", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--eval_split", "validation",
            "--output_dir", str(run), "--num_members", "2", "--cycle_steps", "2", *COMMON]  # fmt: skip
    assert main(argv + (["--eval_strategy", strategy] if strategy else [])) == 0
    logs = [json.loads((run / f"members/member-{m:02d}/trainer_state.json").read_text()) for m in (0, 1)]
    evaluations = [[log for log in state["log_history"] if "eval_loss" in log] for state in logs]
    running = [
        [log["eval_ensemble_size"] for log in state["log_history"] if "eval_ensemble_size" in log] for state in logs
    ]
    if strategy == "no":  # the user's choice stands
        assert evaluations == [[], []] and running == [[], []]
    else:
        assert [len(found) for found in evaluations] == [1, 1] and running == [[1], [2]]


def test_the_load_report_of_a_fresh_head_is_printed_once(tmp_path, pretrained_bert, text_data):
    import logging as std_logging

    from transformers.utils import logging

    argv = ["train", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--output_dir",
            str(tmp_path / "run"), "--num_members", "3", "--cycle_steps", "2", *COMMON]  # fmt: skip
    reports, handler = [], std_logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage()) if "LOAD REPORT" in record.getMessage() else None
    verbosity, logger = logging.get_verbosity(), logging.get_logger("transformers.modeling_utils")
    logging.set_verbosity_warning()  # as for a user (the tests run at error level)
    logger.addHandler(handler)
    try:
        assert main(argv) == 0
    finally:
        logger.removeHandler(handler)
        logging.set_verbosity(verbosity)
    assert len(reports) == 1 and "classifier.weight" in reports[0]  # member 0's load, not every member's
