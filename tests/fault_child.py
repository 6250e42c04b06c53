"""Child process of `test_fault_injection.py`: trains, or resumes, a K=4 StarSSE run of the tiny BERT.

    python tests/fault_child.py OUTPUT_DIR PRETRAINED_DIR [KILL]

KILL makes the process SIGKILL itself, counting only its own work:
    step:N        after its N-th optimizer step;
    checkpoint:N  while writing its N-th Trainer checkpoint (weights written, trainer_state.json half-written);
    snapshot      while writing its first member snapshot (model.safetensors half-written);
    manifest      while recording its first finished member (a temporary manifest half-written, never renamed).
The hooks are monkeypatched here; the library has none.
"""

import os
import signal
import sys
from pathlib import Path

import transformers.modeling_utils
from transformers import TrainerCallback, TrainerState

import hf_starsse.run_dir
from hf_starsse import StarSSETrainer

from conftest import load_text_model, make_args, text_dataset, tokenizer


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def write_half(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


class KillAfterStep(TrainerCallback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        self.steps -= 1
        if self.steps == 0:
            die()


def install(kill: str) -> list[TrainerCallback]:
    """Patch the write named by `kill` to tear itself and SIGKILL the process; the callbacks the trainer needs."""
    what, _, count = kill.partition(":")
    if what == "step":
        return [KillAfterStep(int(count))]
    calls = []
    if what == "checkpoint":
        save_state = TrainerState.save_to_json

        def torn_state(self, json_path):
            if Path(json_path).parent.name.startswith("checkpoint-"):
                calls.append(json_path)
                if len(calls) == int(count):
                    save_state(self, json_path)
                    write_half(Path(json_path), Path(json_path).read_bytes())
                    die()
            save_state(self, json_path)

        TrainerState.save_to_json = torn_state
    elif what == "snapshot":
        save_file = transformers.modeling_utils.safe_save_file

        def torn_weights(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            if Path(filename).parent.name.startswith("member-"):
                write_half(Path(filename), Path(filename).read_bytes())
                die()

        transformers.modeling_utils.safe_save_file = torn_weights
    elif what == "manifest":
        write_text = hf_starsse.run_dir.atomic_write_text

        def torn_manifest(path, text):
            calls.append(path)
            if Path(path).name == hf_starsse.run_dir.MANIFEST_NAME and len(calls) == 2:  # 1: claim, 2: a member
                write_half(Path(path).parent / f".{Path(path).name}.torn.tmp", text.encode())
                die()
            write_text(path, text)

        hf_starsse.run_dir.atomic_write_text = torn_manifest
    return []


def main(output_dir: str, pretrained: str, kill: str | None = None) -> None:
    args = make_args(output_dir, num_members=4, cycle_steps=3, save_strategy="steps", save_steps=2, logging_steps=50)
    trainer = StarSSETrainer(
        model=load_text_model(pretrained),
        args=args,
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
        callbacks=install(kill) if kill else None,
    )
    trainer.train()


if __name__ == "__main__":
    main(*sys.argv[1:])
