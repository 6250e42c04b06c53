import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from transformers import AutoModelForSequenceClassification

from hub_server import LocalHub

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), *args, "--disable_tqdm", "true"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quickstart_trains_then_resumes(tmp_path):
    run = tmp_path / "run"
    out = run_example("--output_dir", str(run), "--num_members", "3", "--members_to_train", "0", "1")
    assert "member 1: parent 0, seed 43" in out
    out = run_example("--output_dir", str(run), "--num_members", "3")  # resumes: only member 2 is trained
    manifest = json.loads((run / "ensemble.json").read_text())
    assert [entry["index"] for entry in manifest["members"]] == [0, 1, 2]
    state = json.loads((run / "members/member-02/trainer_state.json").read_text())
    assert state["global_step"] == 16 and "member 2: parent 0" in out


TRAINING = ["--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--disable_tqdm", "true",
            "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--learning_rate", "0.001",
            "--cycle_steps", "2"]  # fmt: skip
CPU_LAUNCH = ["--config_file", str(EXAMPLES / "accelerate_configs/cpu.yaml"), "--num_processes", "1"]


def launch(script: str, *args: str, env: dict | None = None) -> str:
    """`accelerate launch` an example on one CPU process, as CI does."""
    accelerate = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [str(accelerate), "launch", *CPU_LAUNCH, str(EXAMPLES / script), *args, *TRAINING],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_text_classification_example_trains_evaluates_and_pushes(tmp_path, pretrained_bert, text_data):
    run = tmp_path / "run"
    with LocalHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_FAKEexampleTOKEN0123456789abcdef"}
        out = launch(
            "text_classification.py", "--model_name_or_path", pretrained_bert, "--dataset", text_data,
            "--eval_split", "validation", "--test_split", "test", "--output_dir", str(run), "--num_members", "3",
            "--push_to_hub", "true", "--hub_model_id", "team/text-example", env=env,
        )  # fmt: skip
    assert "test: ensemble of 3 accuracy" in out and f"Pushed the ensemble: {hub.url}/team/text-example/commit/" in out
    rows = json.loads((run / "evaluation.json").read_text())
    assert {row["model"] for row in rows} == {"member", "ensemble", "uniform_soup"}
    ensemble = AutoModelForSequenceClassification.from_pretrained(run / "ensemble")
    assert ensemble.config.num_members == 3 and (run / "soup/soup.json").is_file()
    pushed = hub.files("team/text-example")
    assert pushed["config.json"] and "evaluation.json" in pushed and b"accuracy" in pushed["README.md"]


def test_image_classification_example_reports_robustness(tmp_path, image_data):
    model_dir, data_dir = image_data
    out = launch(
        "image_classification.py", "--model_name_or_path", model_dir, "--dataset", data_dir, "--eval_split", "test",
        "--output_dir", str(tmp_path / "run"), "--num_members", "2", "--corruptions", "contrast", "gaussian_noise",
        "--severities", "1", "5",
    )  # fmt: skip
    assert "mean accuracy under corruption, ensemble (2):" in out
    splits = {row["split"] for row in json.loads((tmp_path / "run/evaluation.json").read_text())}
    assert splits == {"test", "contrast/1", "contrast/5", "gaussian_noise/1", "gaussian_noise/5"}
    assert json.loads((tmp_path / "run/soup/soup.json").read_text())["batchnorm_recalibrated"] is True


def slurm_env(**settings) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **settings}


def test_slurm_script_runs_its_phases_locally(tmp_path, pretrained_bert, text_data):
    env = slurm_env(
        PHASE="local", MODEL=pretrained_bert, DATASET=text_data, OUTPUT_DIR=str(tmp_path / "run"),
        NUM_MEMBERS="2", TRAIN_ARGS=" ".join(TRAINING), ACCELERATE_ARGS=" ".join(CPU_LAUNCH), REPO_ID="team/slurm",
        PUSH_ARGS="--dry_run",
    )  # fmt: skip
    result = subprocess.run(["bash", str(EXAMPLES / "slurm_starsse.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "run/ensemble.json").read_text())
    assert [(m["index"], m["parent"]) for m in manifest["members"]] == [(0, None), (1, 0)]
    assert (tmp_path / "run/evaluation.json").is_file() and (tmp_path / "run-soup/soup.json").is_file()
    assert "Would push to team/slurm (revision main" in result.stdout
    assert "Would push to team/slurm-soup" in result.stdout


def test_slurm_script_submits_a_dependency_chain(tmp_path):
    fake = tmp_path / "bin/sbatch"  # records its arguments, answers job ids 101, 102, 103
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\necho $((100 + $(wc -l < {tmp_path}/calls)))\n')
    fake.chmod(0o755)
    env = slurm_env(MODEL="m", DATASET="d", OUTPUT_DIR="runs/x", NUM_MEMBERS="4", SBATCH_ARGS="-p gpu")
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    result = subprocess.run(["bash", str(EXAMPLES / "slurm_starsse.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    first, branches, publish = (tmp_path / "calls").read_text().splitlines()
    script = str(EXAMPLES / "slurm_starsse.sh")
    assert first == f"--parsable -p gpu --export=ALL,PHASE=first {script}"
    assert branches == f"--parsable -p gpu --dependency=afterok:101 --array=1-3 --export=ALL,PHASE=branch {script}"
    assert publish == f"--parsable -p gpu --dependency=afterok:102 --export=ALL,PHASE=publish {script}"
    assert "branches 1-3 (array 102), publish (103)" in result.stdout


@pytest.mark.parametrize(
    "name,kind,processes",
    [("cpu", "NO", 1), ("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 8), ("multi_node", "MULTI_GPU", 16)],
)
def test_accelerate_configs_load(name, kind, processes):
    config = load_config_from_file(str(EXAMPLES / f"accelerate_configs/{name}.yaml"))
    assert (config.distributed_type.value, config.num_processes, config.use_cpu) == (kind, processes, name == "cpu")
