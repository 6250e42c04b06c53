"""Fault injection: a K=4 StarSSE run killed (SIGKILL) at chosen points and resumed ends as an uninterrupted run.

Each kill records where it landed (member, step, phase) and the test checks it, so a kill meant for a branch cannot
silently land in member 0. On CPU the result is bit-identical: a member resumed from a mid-member Trainer checkpoint
gets its RNG states, optimizer, schedule and data position back, and every later member reseeds itself
(seed + index) and starts from its parent's saved weights.
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
from hf_starsse.run.directory import RunDirectory

CHILD = Path(__file__).with_name("fault_child.py")


def child(output_dir: Path, pretrained: str, events: Path, kill: str | None = None) -> subprocess.Popen:
    """Start `fault_child.py` (it keeps PYTHONPATH, so it imports this checkout)."""
    argv = [sys.executable, str(CHILD), str(output_dir), pretrained, str(events)] + ([kill] if kill else [])
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_plan(seed: int = 0) -> list[tuple[str, dict]]:
    """Each attempt's kill and where it must land (member 0 has 6 optimizer steps, each branch 3; checkpoints every
    2 steps; a resumed member restarts from its last checkpoint before its final step)."""
    step = random.Random(seed).randint(1, 5)
    return [
        (f"step:0:{step}", {"member": 0, "step": step, "phase": "step"}),  # inside member 0
        ("checkpoint:0", {"member": 0, "phase": "checkpoint"}),  # while member 0 writes a Trainer checkpoint
        ("snapshot:0", {"member": 0, "step": 6, "phase": "snapshot"}),  # while member 0's snapshot is written
        ("step:1:2", {"member": 1, "step": 2, "phase": "step"}),  # inside branch 1, member 0 finished
        ("manifest:1", {"member": 1, "step": 3, "phase": "manifest"}),  # while branch 1 is recorded
    ]


def finished(run: Path) -> dict[int, tuple[str, int]]:
    """Each complete member's sha256 and the modification time of its weights."""
    return {
        index: (entry["sha256"], (run / entry["path"] / "model.safetensors").stat().st_mtime_ns)
        for index, entry in RunDirectory(run).complete_members().items()
    }


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, pretrained_bert):
    reference = child(tmp_path / "reference", pretrained_bert, tmp_path / "reference-events.jsonl")
    run, seen, checked = tmp_path / "run", {}, []
    for attempt, (kill, landing) in enumerate(kill_plan()):
        log = tmp_path / f"events-{attempt}.jsonl"
        process = child(run, pretrained_bert, log, kill)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, f"{kill} did not happen: {stderr[-2000:]}"
        *trained, landed = events(log)
        assert landed["event"] == "kill" and {key: landed[key] for key in landing} == landing, (kill, landed)
        retrained = [event["member"] for event in trained if event["member"] in seen]
        assert not retrained, f"attempt {attempt} ({kill}) trained finished members {retrained} again"
        now = finished(run)
        assert {index: now[index] for index in seen} == seen  # finished members are never rewritten
        checked += list(seen)
        seen = now
    assert 0 in checked  # the never-retrained check ran with member 0 finished (attempts after the branch kill)
    assert sorted(seen) == [0]  # the torn record left branch 1 unlisted
    final = tmp_path / "events-final.jsonl"
    resumed = child(run, pretrained_bert, final)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    assert [(e["member"], e["step"]) for e in events(final)] == [(1, 2), (2, 0), (3, 0)]  # branch 1 from checkpoint-2

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


def test_kill_between_record_and_checkpoint_cleanup(tmp_path, pretrained_bert):
    """Killed after member 0 is recorded but before its Trainer checkpoints are deleted: the rerun neither
    retrains nor rewrites member 0, deletes its leftover checkpoints, and deletes each later member's once recorded."""
    run, log = tmp_path / "run", tmp_path / "events.jsonl"
    process = child(run, pretrained_bert, log, "recorded:0")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    assert events(log)[-1] == {"event": "kill", "member": 0, "step": 6, "phase": "recorded"}
    before = finished(run)
    assert sorted(before) == [0] and RunDirectory(run).checkpoints_dir(0).is_dir()  # recorded, not cleaned up
    final = tmp_path / "events-final.jsonl"
    resumed = child(run, pretrained_bert, final)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert [event["member"] for event in events(final)] == [1, 2, 3]  # member 0 not retrained
    assert finished(run)[0] == before[0]  # nor rewritten
    assert not list((run / "members").glob("member-*/checkpoints"))  # the leftovers and the new ones are gone
