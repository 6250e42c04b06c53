"""A tiny StarSSE run for tests/test_distributed.py, launched with torchrun (or plainly, as one process).

Every process writes `record-<rank>.json` next to the run: per member it trained, the learning rate after each
optimizer step, the samples it saw, whether it started from member 0's saved weights, and its process count. With
`--lora` the members are LoRA adapters over the frozen base.
"""

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, default_data_collator

from hf_starsse import StarSSETrainer
from hf_starsse.adapters.peft import is_peft_model
from hf_starsse.run.directory import RunDirectory
from hf_starsse.training.adapters import load_member_weights

from conftest import load_text_model, make_args, text_dataset, tokenizer


class Recorder(TrainerCallback):
    """Records learning rates, samples and starting weights of each member (by seed) and can kill its process."""

    def __init__(self, run_dir: Path, model_path: str, kill_member: int | None, kill_after: int | None):
        self.run, self.model_path = RunDirectory(run_dir), model_path
        self.kill_member, self.kill_after = kill_member, kill_after
        self.members: dict[int, dict] = {}
        self.current: dict | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        member = args.seed
        self.current = self.members[member] = {"lrs": [], "samples": [], "starts_from_member_0": None}
        if member > 0:
            start = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            member_0 = make_model(self.model_path, is_peft_model(model), seed=None)
            load_member_weights(member_0, self.run.member_dir(0))
            self.current["starts_from_member_0"] = all(
                torch.equal(start[name], tensor)
                for name, tensor in member_0.state_dict().items()
                if not is_peft_model(model)
                or "lora_" in name
                or ".modules_to_save." in name  # a PEFT model's trained part
            )

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self.current["lrs"].append(lr_scheduler.get_last_lr()[0])
        if args.seed == self.kill_member and state.global_step == 5:
            while self.kill_after not in self.run.complete_members():  # let the other process finish its member
                time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)

    def collate(self, features: list[dict]) -> dict:
        self.current["samples"].extend(tuple(feature["input_ids"]) for feature in features)
        return default_data_collator(features)


def make_model(path: str, lora: bool, seed: int | None = 0):
    """The tiny BERT with a new head, wrapped with a LoRA adapter when `lora`."""
    model = load_text_model(path, seed=seed)
    if not lora:
        return model
    import peft

    return peft.get_peft_model(
        model, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query"])
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("model_path")
    parser.add_argument("--num_members", type=int, default=3)
    parser.add_argument("--members_to_train", type=int, nargs="*")
    parser.add_argument("--branch_parallel", action="store_true")
    parser.add_argument("--kill_member", type=int, help="SIGKILL the process training this member at step 5")
    parser.add_argument("--kill_after", type=int, help="... once this member is complete")
    parser.add_argument("--lora", action="store_true", help="LoRA members (peft)")
    options = parser.parse_args()
    args = make_args(
        options.run_dir,
        num_members=options.num_members,
        members_to_train=options.members_to_train,
        branch_parallel=options.branch_parallel,
        cycle_steps=None,
        cycle_epochs=1,
        save_strategy="steps",
        save_steps=4,
    )
    recorder = Recorder(options.run_dir, options.model_path, options.kill_member, options.kill_after)
    trainer = StarSSETrainer(
        model=make_model(options.model_path, options.lora),
        args=args,
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
        data_collator=recorder.collate,
        callbacks=[recorder],
    )
    trainer.train()
    record = {"num_processes": trainer.accelerator.num_processes, "members": recorder.members}
    rank = trainer.accelerator.process_index
    (options.run_dir.parent / f"record-{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # an orderly gloo teardown (an abort at exit was seen without)
