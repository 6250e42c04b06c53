"""`hf-starsse train/sweep --use_peft ...`: LoRA members from the command line (options or a PEFT config file), the
other subcommands on the adapter run, each bad PEFT input as one line before anything is trained, and the command
line without peft installed."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_cli import COMMON
from transformers import BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification, RobertaModel

from hf_starsse import build_ensemble
from hf_starsse.cli.main import main
from hf_starsse.cli.peft_args import PeftArguments, new_head_modules

requires_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft")
LORA = ["--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "query", "value"]


def train_argv(model: str, data: str, output_dir: Path, *options: str) -> list[str]:
    return ["train", "--model_name_or_path", model, "--dataset", data, "--output_dir", str(output_dir),
            "--num_members", "2", "--cycle_steps", "2", *options, *COMMON]  # fmt: skip


def member_dirs(run: Path) -> list[Path]:
    return sorted((run / "members").glob("member-*"))


def adapter_config(member: Path) -> dict:
    return json.loads((member / "adapter_config.json").read_text())


def assert_adapter_members(run: Path, count: int = 2) -> list[dict]:
    """The run's members are adapters only (no base weights), and their configs."""
    members = member_dirs(run)
    assert len(members) == count
    for member in members:
        assert (member / "adapter_model.safetensors").is_file() and not (member / "model.safetensors").exists()
    return [adapter_config(member) for member in members]


@requires_peft
def test_train_lora_members_and_use_the_run(tmp_path, pretrained_bert, text_data, capsys):
    run = tmp_path / "run"
    hub_base = ["--base_model_id", "google-bert/bert-base-uncased"]  # what Hub users download the base from
    assert main(train_argv(pretrained_bert, text_data, run, "--eval_split", "validation", *hub_base, *LORA)) == 0
    for config in assert_adapter_members(run):
        assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16, 0.05)
        assert sorted(config["target_modules"]) == ["query", "value"] and config["task_type"] == "SEQ_CLS"
        assert "classifier" in config["modules_to_save"] and config["base_model_name_or_path"] == pretrained_bert
    head = [load_file(member / "adapter_model.safetensors") for member in member_dirs(run)]
    assert any(key.startswith("base_model.model.classifier.") for key in head[1])  # each member stores its head
    assert not torch.equal(*(state["base_model.model.classifier.weight"] for state in head))

    soup = ["soup", "--run_dir", str(run), "--output_dir", str(tmp_path / "soup"), "--dataset", text_data]
    assert main([*soup, "--eval_split", "validation", "--calibrate"]) == 0
    assert (tmp_path / "soup/model.safetensors").is_file()
    assert main(["evaluate", "--run_dir", str(run), "--dataset", text_data, "--splits", "test"]) == 0
    rows = json.loads((run / "evaluation.json").read_text())
    assert {(row["model"], row["size"]) for row in rows} >= {("member", 1), ("ensemble", 2), ("uniform_soup", 2)}
    calibrated = tmp_path / "calibrated"
    argv = ["calibrate", "--model_dir", str(tmp_path / "soup"), "--dataset", text_data,
            "--output_dir", str(calibrated)]  # fmt: skip
    assert main(argv) == 0 and json.loads((calibrated / "config.json").read_text())["calibration"]["temperature"] > 0
    capsys.readouterr()
    assert main(["push", "--path", str(run), "--repo_id", "me/lora-ensemble", "--dry_run"]) == 0
    pushed = capsys.readouterr().out
    assert "adapters/member_1/adapter_model.safetensors" in pushed and "\n  model.safetensors" not in pushed
    assert build_ensemble(str(run)).config.id2label == {0: "alpha", 1: "beta", 2: "gamma"}  # the dataset's names


@requires_peft
def test_peft_config_file_in_a_yaml_run_with_local_de(tmp_path, pretrained_bert, text_data):
    import peft

    saved = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["query"], inference_mode=True)
    saved.base_model_name_or_path = "someone/another-base"  # not the base of this run
    saved.save_pretrained(tmp_path / "lora")
    options = {"model_name_or_path": pretrained_bert, "dataset": text_data, "output_dir": str(tmp_path / "run"),
               "ensemble_method": "local_de", "num_members": 2, "max_steps": 3, "use_peft": True,
               "peft_config": str(tmp_path / "lora" / "adapter_config.json"), "report_to": "none", "use_cpu": True,
               "save_strategy": "no", "disable_tqdm": True, "per_device_train_batch_size": 8,
               "learning_rate": 0.01}  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(options))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    for config in assert_adapter_members(tmp_path / "run"):
        assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 4, ["query"])
        assert config["modules_to_save"] == ["classifier"]  # the new head, added: the file has no task type
        assert config["base_model_name_or_path"] == pretrained_bert
    states = [load_file(member / "adapter_model.safetensors") for member in member_dirs(tmp_path / "run")]
    lora_a, lora_b = (f"base_model.model.bert.encoder.layer.0.attention.self.query.lora_{x}.weight" for x in "AB")
    assert not torch.equal(states[0][lora_a], states[1][lora_a])  # each Local DE member drew its own adapter
    assert all(state[lora_b].abs().sum() > 0 for state in states)  # trained, although the file said inference_mode
    assert main(["evaluate", "--run_dir", str(tmp_path / "run"), "--dataset", text_data, "--splits", "test"]) == 0


@requires_peft
def test_image_members_keep_the_models_new_head(tmp_path, image_data):
    model_dir, data_dir = image_data
    model_dir = shutil.copytree(model_dir, tmp_path / "mobilenet")
    config = json.loads((model_dir / "config.json").read_text())
    # transformers' TF-style padding reads the convolution's stride, which a LoRA wrapper hides
    (model_dir / "config.json").write_text(json.dumps({**config, "tf_padding": False}))
    targets = ["--lora_target_modules", "expand_1x1.convolution", "reduce_1x1.convolution"]
    run = tmp_path / "run"
    assert main(train_argv(str(model_dir), data_dir, run, "--use_peft", "--lora_r", "2", *targets)) == 0
    for config in assert_adapter_members(run):
        assert config["modules_to_save"] == ["classifier"] and config["task_type"] is None
    assert main(["evaluate", "--run_dir", str(run), "--dataset", data_dir, "--splits", "test"]) == 0
    rows = json.loads((run / "evaluation.json").read_text())
    assert {row["model"] for row in rows} == {"member", "ensemble", "uniform_soup"}


@requires_peft
def test_sweep_trains_lora_cells(tmp_path, pretrained_bert, text_data):
    argv = ["sweep", "--model_name_or_path", pretrained_bert, "--dataset", text_data, "--eval_split", "validation",
            "--output_dir", str(tmp_path / "sweep"), "--num_members", "2", "--lr_ratios", "2",
            "--length_ratios", "0.5", *LORA, *COMMON]  # fmt: skip
    assert main(argv) == 0
    assert len(json.loads((tmp_path / "sweep/sweep.json").read_text())["cells"]) == 1
    assert adapter_config(tmp_path / "sweep/member0/members/member-00")["r"] == 8
    assert_adapter_members(tmp_path / "sweep/cells/lr2-len0.5")
    cell = ["evaluate", "--run_dir", str(tmp_path / "sweep/cells/lr2-len0.5"), "--dataset", text_data]
    assert main([*cell, "--splits", "test"]) == 0  # the cells' members name their classes


def bad_inputs(tmp_path: Path, pretrained_bert: str) -> dict[str, Path]:
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora/adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    return {"BROKEN": tmp_path / "broken.json", "MODEL_CONFIG": Path(pretrained_bert) / "config.json",
            "LORA": tmp_path / "lora"}  # fmt: skip


@pytest.mark.parametrize(
    "options,message",
    [
        (
            ["--lora_r", "8", "--lora_target_modules", "query"],
            "--lora_r, --lora_target_modules given without --use_peft",
        ),
        (["--peft_config", "LORA"], "--peft_config given without --use_peft"),
        (["--use_peft", "--peft_config", "LORA", "--lora_alpha", "8"], "so --lora_alpha would be ignored"),
        (["--use_peft", "--peft_config", "/nonexistent/adapter_config.json"], "no such file"),
        (["--use_peft", "--peft_config", "BROKEN"], "broken.json is not a JSON file"),
        (["--use_peft", "--peft_config", "MODEL_CONFIG"], "is not a PEFT config: it has no known peft_type"),
        (["--use_peft", "--lora_task_type", "FOO"], "PEFT refuses the LoRA options (Invalid task type: 'FOO'"),
        (["--use_peft", "--lora_r", "0"], "--lora_r 0: the LoRA rank must be a positive integer"),
        (["--use_peft", "--lora_target_modules", "nowhere"], "PEFT cannot adapt BertForSequenceClassification"),
    ],
)
def test_bad_peft_inputs_are_one_line_before_training(tmp_path, pretrained_bert, text_data, capsys, options, message):
    if importlib.util.find_spec("peft") is None and "--use_peft" in options:
        pytest.skip("needs peft")
    files = bad_inputs(tmp_path, pretrained_bert)
    options = [str(files.get(option, option)) for option in options]
    assert main(train_argv(pretrained_bert, text_data, tmp_path / "run", *options)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hf-starsse")]  # not the progress bars
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "run/ensemble.json").exists()


def test_use_peft_without_peft_is_one_line(tmp_path, pretrained_bert, text_data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    assert main(train_argv(pretrained_bert, text_data, tmp_path / "run", *LORA)) == 2
    err = capsys.readouterr().err.strip()
    assert "--use_peft: Adapter (PEFT) members need the peft package: pip install 'hf_starsse[peft]'" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_command_line_works_without_peft(tmp_path, pretrained_bert, text_data):
    script = """
import sys
sys.modules["peft"] = None  # as if not installed
from hf_starsse import build_ensemble
from hf_starsse.cli.main import main
from hf_starsse.cli.peft_args import PeftArguments, get_peft_config
assert get_peft_config(PeftArguments(), model=None) is None
sys.exit(main(sys.argv[1:]))
"""
    argv = train_argv(pretrained_bert, text_data, tmp_path / "run", "--max_steps", "1")
    argv[argv.index("--cycle_steps") + 1] = "1"
    result = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run/members/member-01/model.safetensors").is_file()


def test_new_head_modules(tmp_path, pretrained_bert):
    assert new_head_modules(BertForSequenceClassification.from_pretrained(pretrained_bert, num_labels=3)) == [
        "classifier"
    ]
    config = RobertaConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37
    )
    RobertaModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "roberta")
    nested = RobertaForSequenceClassification.from_pretrained(tmp_path / "roberta", num_labels=3)
    assert new_head_modules(nested) == ["classifier"]  # classifier.dense and classifier.out_proj: one head
    assert new_head_modules(RobertaForSequenceClassification(config)) == []  # nothing loaded: no head to tell


@requires_peft
def test_all_linear_is_peft_shorthand():
    assert PeftArguments(use_peft=True, lora_target_modules=["all-linear"]).lora_target_modules == "all-linear"
    assert PeftArguments(use_peft=True, lora_target_modules=["query"]).lora_target_modules == ["query"]
