"""Child process of `test_fault_injection.py`: trains, or resumes, a K=4 StarSSE run of the tiny BERT.

    python tests/fault_child.py OUTPUT_DIR PRETRAINED_DIR EVENTS_FILE [KILL]

Every member it starts training is appended to EVENTS_FILE (`{"event": "train", "member": m, "step": s}`, `s` the
step it resumes from), and so is the kill, just before the process SIGKILLs itself (`{"event": "kill", "member": m,
"step": s, "phase": p}`). KILL names the member and the moment, counting only this process's own work:
    step:M:N      member M, after its optimizer step N;
    checkpoint:M  member M, while writing its first Trainer checkpoint here (trainer_state.json half-written);
    snapshot:M    member M, while writing its snapshot (model.safetensors half-written);
    manifest:M    member M, while recording it in the manifest (a temporary manifest half-written, never renamed);
    recorded:M    member M, once recorded in the manifest, before its Trainer checkpoints are deleted.
The hooks are monkeypatched here; the library has none.
"""

import json
import os
import signal
import sys
from pathlib import Path

import transformers.modeling_utils
from transformers import TrainerCallback, TrainerState

import hf_starsse.storage.atomic_io
from hf_starsse import RunDirectory, StarSSETrainer
from hf_starsse.run.directory import MANIFEST_NAME

from conftest import load_text_model, make_args, text_dataset, tokenizer


class Events(TrainerCallback):
    """Logs each member's start and the kill; `member` and `step` say where training is."""

    def __init__(self, path: str):
        self.path, self.member, self.step = Path(path), None, 0

    def write(self, **event) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def die(self, phase: str, member: int | None = None) -> None:
        self.write(event="kill", member=self.member if member is None else member, step=self.step, phase=phase)
        os.kill(os.getpid(), signal.SIGKILL)

    def on_train_begin(self, args, state, control, **kwargs):
        self.member, self.step = args.seed, state.global_step  # make_args(seed=0): member m has seed m
        self.write(event="train", member=self.member, step=self.step)

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step


class KillAfterStep(TrainerCallback):
    def __init__(self, events: Events, member: int, step: int):
        self.events, self.member, self.step = events, member, step

    def on_step_end(self, args, state, control, **kwargs):
        if args.seed == self.member and state.global_step == self.step:
            self.events.die("step")


def write_half(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def install(kill: str, events: Events) -> list[TrainerCallback]:
    """Patch the write named by `kill` to tear itself and SIGKILL the process; the callbacks the trainer needs."""
    what, _, where = kill.partition(":")
    member = int(where.split(":")[0])
    if what == "step":
        return [KillAfterStep(events, member, int(where.split(":")[1]))]
    if what == "checkpoint":
        save_state = TrainerState.save_to_json

        def torn_state(self, json_path):
            save_state(self, json_path)
            if Path(json_path).parent.name.startswith("checkpoint-") and events.member == member:
                write_half(Path(json_path), Path(json_path).read_bytes())
                events.die("checkpoint")

        TrainerState.save_to_json = torn_state
    elif what == "snapshot":
        save_file = transformers.modeling_utils.safe_save_file

        def torn_weights(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            if Path(filename).parent.name == f"member-{member:02d}":
                write_half(Path(filename), Path(filename).read_bytes())
                events.die("snapshot")

        transformers.modeling_utils.safe_save_file = torn_weights
    elif what == "manifest":
        record, write_text, recording = RunDirectory.record_member, hf_starsse.storage.atomic_io.atomic_write_text, []

        def recorded(self, index, *args, **kwargs):
            recording.append(index)
            return record(self, index, *args, **kwargs)

        def torn_manifest(path, text):
            if Path(path).name == MANIFEST_NAME and recording == [member]:
                write_half(Path(path).parent / f".{Path(path).name}.torn.tmp", text.encode())
                events.die("manifest", member)
            write_text(path, text)

        RunDirectory.record_member = recorded
        hf_starsse.storage.atomic_io.atomic_write_text = torn_manifest
    elif what == "recorded":
        remove = RunDirectory.remove_checkpoints

        def killed_before_removal(self, indices):
            if list(indices) == [member]:
                events.die("recorded", member)
            return remove(self, indices)

        RunDirectory.remove_checkpoints = killed_before_removal
    return []


def main(output_dir: str, pretrained: str, events_file: str, kill: str | None = None) -> None:
    args = make_args(output_dir, num_members=4, cycle_steps=3, save_strategy="steps", save_steps=2, logging_steps=50)
    events = Events(events_file)
    trainer = StarSSETrainer(
        model=load_text_model(pretrained),
        args=args,
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
        callbacks=[events, *(install(kill, events) if kill else [])],
    )
    trainer.train()


if __name__ == "__main__":
    main(*sys.argv[1:])
