"""Fault injection: a K=4 StarSSE run killed (SIGKILL) at random points and resumed ends as an uninterrupted run.

On CPU the result is bit-identical: a member resumed from a mid-member Trainer checkpoint gets its RNG states,
optimizer, schedule and data position back, and every later member reseeds itself (seed + index) and starts from its
parent's saved weights.
"""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from hf_starsse import build_ensemble
from hf_starsse.run_dir import RunDirectory

CHILD = Path(__file__).with_name("fault_child.py")


def child(output_dir: Path, pretrained: str, kill: str | None = None) -> subprocess.Popen:
    """Start `fault_child.py` (it keeps PYTHONPATH, so it imports this checkout)."""
    argv = [sys.executable, str(CHILD), str(output_dir), pretrained] + ([kill] if kill else [])
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_plan(seed: int = 0) -> list[str]:
    """Where each attempt dies, in this order (member 0 has 6 optimizer steps, each later member 3)."""
    rng = random.Random(seed)
    return [
        f"step:{rng.randint(1, 5)}",  # during member 0
        "checkpoint:1",  # during a Trainer checkpoint write of member 0
        "snapshot",  # during the snapshot of member 0
        f"step:{rng.randint(1, 3)}",  # during branch 1 (the resumed member 0 has no step left)
        "manifest",  # while recording a finished branch
    ]


def finished(run: Path) -> dict[int, tuple[str, int]]:
    """Each complete member's sha256 and the modification time of its weights."""
    return {
        index: (entry["sha256"], (run / entry["path"] / "model.safetensors").stat().st_mtime_ns)
        for index, entry in RunDirectory(run).complete_members().items()
    }


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, pretrained_bert):
    reference = child(tmp_path / "reference", pretrained_bert)
    run, seen = tmp_path / "run", {}
    for kill in kill_plan():
        process = child(run, pretrained_bert, kill)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, f"{kill} did not happen: {stderr[-2000:]}"
        now = finished(run)
        assert {index: now[index] for index in seen} == seen  # finished members are never retrained or rewritten
        seen = now
    resumed = child(run, pretrained_bert)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]

    assert sorted(finished(run)) == [0, 1, 2, 3]  # every member present, its sha256 verified
    assert {index: finished(run)[index] for index in seen} == seen
    manifest = json.loads((run / "ensemble.json").read_text())
    assert [(m["index"], m["parent"], m["steps"]) for m in manifest["members"]] == [
        (0, None, 6),
        (1, 0, 3),
        (2, 0, 3),
        (3, 0, 3),
    ]
    for index in range(4):
        name = f"members/member-{index:02d}/model.safetensors"
        ours, theirs = load_file(run / name), load_file(tmp_path / "reference" / name)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), f"member {index} differs"
    ours, theirs = build_ensemble(run).state_dict(), build_ensemble(tmp_path / "reference").state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert not [path for path in run.rglob("*.tmp") if path.name != ".ensemble.json.torn.tmp"]
    assert sorted(os.listdir(run / "members")) == sorted(os.listdir(tmp_path / "reference/members"))
