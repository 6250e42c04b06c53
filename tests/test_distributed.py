"""Real multi-process runs (CPU, gloo, 2 processes) of tests/distributed_script.py: data-parallel members,
branch-parallel StarSSE, concurrent members_to_train jobs and a killed branch process."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_starsse.run.directory import RunDirectory
from hf_starsse.storage.atomic_io import atomic_write_json
from hf_starsse.training.schedule import cycle_lr_factor

from conftest import text_dataset

SCRIPT = Path(__file__).parent / "distributed_script.py"
DATASET = {tuple(ids) for ids in text_dataset()["input_ids"]}  # 48 samples: 6 steps of 8, or 3 per process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(run_dir: Path, model: str, *options: str, processes: int = 2, launcher: str = "torchrun"):
    """Start the script in `processes` processes (one: plainly), one intra-op thread each, as torchrun does."""
    for record in run_dir.parent.glob("record-*.json"):
        record.unlink()
    if processes == 1:
        command = [sys.executable]
    elif launcher == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
        command += ["--num_processes", str(processes), "--main_process_port", str(free_port())]
        command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.Popen(
        [*command, str(SCRIPT), str(run_dir), model, *options],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, succeed: bool = True) -> str:
    output, _ = process.communicate(timeout=300)
    assert (process.returncode == 0) == succeed, output[-4000:]
    return output


def run_script(run_dir: Path, model: str, *options: str, **kwargs) -> dict[int, dict]:
    """Run the script to completion; the records of its processes by rank, members by index."""
    finish(launch(run_dir, model, *options, **kwargs))
    records = {}
    for path in run_dir.parent.glob("record-*.json"):
        record = json.loads(path.read_text())
        records[int(path.stem.split("-")[1])] = {int(member): data for member, data in record["members"].items()}
    return records


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "ensemble.json").read_text())


def weights(run_dir: Path, member: int) -> dict[str, torch.Tensor]:
    return load_file(RunDirectory(run_dir).member_dir(member) / "model.safetensors")


def cycle_lrs(steps: int, peak: float = 2e-3) -> list:
    """The learning rate after each optimizer step of a cycle of `steps` steps."""
    return [
        pytest.approx(peak * cycle_lr_factor(s, num_cycle_steps=steps, num_warmup_steps=0))
        for s in range(1, steps + 1)
    ]


def keep_member_0(source: Path, target: Path) -> Path:
    """A copy of run `source` that holds only its member 0, as if the branches had not been trained yet."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("member-0[1-9]"))
    data = manifest(target)
    data["members"] = data["members"][:1]
    atomic_write_json(target / "ensemble.json", data)
    return target


def test_data_parallel_members_and_resume(tmp_path, pretrained_bert):
    run = tmp_path / "run"
    records = run_script(run, pretrained_bert, "--members_to_train", "0", "1", launcher="accelerate")
    assert set(records) == {0, 1}
    for record in records.values():
        assert record[0]["lrs"] == [pytest.approx(1e-3 * (1 - s / 3)) for s in (1, 2, 3)]  # the user's linear schedule
        assert record[1]["lrs"] == cycle_lrs(3)  # one scheduler step per optimizer step, whatever the process count
        assert record[1]["starts_from_member_0"]
    for member in (0, 1):  # each process sees its half of the data
        halves = [set(map(tuple, records[rank][member]["samples"])) for rank in (0, 1)]
        assert len(halves[0]) == len(halves[1]) == 24 and halves[0] | halves[1] == DATASET
    before = {
        member: (run / entry["path"] / "model.safetensors").stat().st_mtime_ns
        for member, entry in enumerate(manifest(run)["members"])
    }

    records = run_script(run, pretrained_bert, launcher="accelerate")  # resumes: only member 2 is left
    assert [set(record) for record in records.values()] == [{2}, {2}]
    assert records[0][2]["lrs"] == cycle_lrs(3)
    entries = manifest(run)["members"]
    assert [(e["index"], e["parent"], e["seed"], e["steps"]) for e in entries] == [
        (0, None, 0, 3),
        (1, 0, 1, 3),
        (2, 0, 2, 3),
    ]
    assert all(e["processes"] == {"mode": "data_parallel", "num_processes": 2} for e in entries)
    assert all((run / e["path"] / "model.safetensors").stat().st_mtime_ns == before[e["index"]] for e in entries[:2])
    assert RunDirectory(run).complete_members().keys() == {0, 1, 2}


@pytest.fixture(scope="module")
def branch_parallel_run(tmp_path_factory, pretrained_bert):
    """A 4-member StarSSE run trained by 2 processes with branch_parallel=True, and the records of its processes."""
    run = tmp_path_factory.mktemp("branch_parallel") / "run"
    records = run_script(run, pretrained_bert, "--num_members", "4", "--branch_parallel")
    return run, records


def test_branch_parallel_splits_the_branches(branch_parallel_run):
    run, records = branch_parallel_run
    assert {rank: sorted(record) for rank, record in records.items()} == {0: [0, 1, 2], 1: [0, 3]}
    for record in records.values():
        assert len(record[0]["samples"]) == 24  # member 0: data-parallel
        for member in set(record) - {0}:
            assert record[member]["starts_from_member_0"]
            assert len(record[member]["samples"]) == 48 and set(map(tuple, record[member]["samples"])) == DATASET
            assert record[member]["lrs"] == cycle_lrs(6)
    entries = manifest(run)["members"]
    assert [(e["index"], e["parent"], e["seed"], e["steps"]) for e in entries] == [
        (0, None, 0, 3),
        (1, 0, 1, 6),
        (2, 0, 2, 6),
        (3, 0, 3, 6),
    ]
    assert [e["processes"].get("process") for e in entries] == [None, 0, 0, 1]
    assert {e["processes"]["mode"] for e in entries[1:]} == {"branch_parallel"}
    heads = [weights(run, member)["classifier.weight"] for member in range(4)]
    assert all(not torch.equal(heads[a], heads[b]) for a in range(4) for b in range(a))
    assert not RunDirectory(run).checkpoints_dir(3).exists()  # deleted once member 3 was recorded
    assert not (run / ".processes").exists()


def test_branch_parallel_equals_sequential(branch_parallel_run, tmp_path, pretrained_bert):
    run, _ = branch_parallel_run
    sequential = keep_member_0(run, tmp_path / "run")
    records = run_script(sequential, pretrained_bert, "--num_members", "4", processes=1)
    assert sorted(records[0]) == [1, 2, 3]
    for member in (1, 2, 3):
        parallel, alone = weights(run, member), weights(sequential, member)
        assert parallel.keys() == alone.keys()
        assert all(torch.equal(parallel[name], alone[name]) for name in parallel), member


def test_concurrent_members_to_train_jobs(branch_parallel_run, tmp_path, pretrained_bert):
    run = keep_member_0(branch_parallel_run[0], tmp_path / "run")
    jobs = [
        launch(run, pretrained_bert, "--num_members", "4", "--members_to_train", *members, processes=1)
        for members in (["1", "3"], ["2"])
    ]
    for job in jobs:
        finish(job)
    entries = manifest(run)["members"]
    assert [e["index"] for e in entries] == [0, 1, 2, 3]
    assert RunDirectory(run).complete_members().keys() == {0, 1, 2, 3}
    assert all("processes" not in e for e in entries[1:])


def test_killed_branch_process_is_resumed_alone(tmp_path, pretrained_bert):
    run = tmp_path / "run"
    options = ("--branch_parallel", "--kill_member", "2", "--kill_after", "1")
    output = finish(launch(run, pretrained_bert, *options), succeed=False)
    assert "Signals.SIGKILL" in output or "-9" in output
    assert [e["index"] for e in manifest(run)["members"]] == [0, 1]
    assert (RunDirectory(run).checkpoints_dir(2) / "checkpoint-4").is_dir()
    kept = {member: weights(run, member) for member in (0, 1)}

    records = run_script(run, pretrained_bert, "--branch_parallel")
    assert {rank: sorted(record) for rank, record in records.items()} == {0: [2], 1: []}
    assert records[0][2]["lrs"] == cycle_lrs(6)[4:]  # resumed from checkpoint-4
    assert [e["index"] for e in manifest(run)["members"]] == [0, 1, 2]
    for member, state in kept.items():
        assert all(torch.equal(state[name], tensor) for name, tensor in weights(run, member).items())
    assert RunDirectory(run).complete_members().keys() == {0, 1, 2}


def test_lora_members_data_parallel_then_branch_parallel(tmp_path, pretrained_bert):
    pytest.importorskip("peft")
    run = tmp_path / "run"
    records = run_script(run, pretrained_bert, "--lora", "--branch_parallel")
    assert {rank: sorted(record) for rank, record in records.items()} == {0: [0, 1], 1: [0, 2]}
    for record in records.values():
        assert len(record[0]["samples"]) == 24  # member 0: data-parallel
        branch = next(member for member in record if member > 0)
        assert record[branch]["starts_from_member_0"] and record[branch]["lrs"] == cycle_lrs(6)
        assert len(record[branch]["samples"]) == 48
    entries = manifest(run)["members"]
    assert [(e["index"], e["parent"], e["processes"]["mode"]) for e in entries] == [
        (0, None, "data_parallel"),
        (1, 0, "branch_parallel"),
        (2, 0, "branch_parallel"),
    ]
    for member in range(3):
        files = {path.name for path in RunDirectory(run).member_dir(member).iterdir()}
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    adapters = [load_file(RunDirectory(run).member_dir(m) / "adapter_model.safetensors") for m in range(3)]
    assert not torch.equal(
        adapters[1]["base_model.model.classifier.weight"], adapters[2]["base_model.model.classifier.weight"]
    )
    assert RunDirectory(run).complete_members().keys() == {0, 1, 2}
