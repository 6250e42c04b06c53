"""Wall-time overhead of StarSSETrainer over transformers.Trainer for the same number of optimizer steps.

The same BERT-style model, data and total optimizer steps go through `Trainer` (one run, final model saved) and
through `StarSSETrainer` (K members whose steps add up to the same total, every member snapshot saved, hashed and
listed in the manifest). Runs alternate so that both see the same machine load; the table reports each pair and the
median ratio.

    python benchmarks/trainer_overhead.py            # writes benchmarks/results/trainer_overhead.md
"""

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.utils import logging

from hf_starsse import StarSSETrainer, StarSSETrainingArguments

from results_table import write_results

RESULTS = Path(__file__).parent / "results" / "trainer_overhead.md"


def make_model(hidden_size: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=hidden_size,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=4 * hidden_size,
        num_labels=4,
    )
    return BertForSequenceClassification(config)


def make_data(n: int, length: int) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 1000, (n, length), generator=generator)
    return Dataset.from_dict(
        {
            "input_ids": input_ids.tolist(),
            "labels": (input_ids[:, 0] % 4).tolist(),
            "attention_mask": [[1] * length] * n,
        }
    )


def common_args(output_dir: str, steps: int) -> dict:
    return dict(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=1e-4,
        report_to="none",
        save_strategy="no",
        logging_steps=50,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )


def time_trainer(args: argparse.Namespace, data: Dataset) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            make_model(args.hidden_size), TrainingArguments(**common_args(tmp, args.steps)), train_dataset=data
        )
        start = time.perf_counter()
        trainer.train()
        trainer.save_model(tmp + "/final")
        return time.perf_counter() - start


def time_starsse(args: argparse.Namespace, data: Dataset) -> float:
    per_member = args.steps // args.members
    with tempfile.TemporaryDirectory() as tmp:
        training_args = StarSSETrainingArguments(
            **common_args(tmp, per_member), num_members=args.members, cycle_steps=per_member, cycle_learning_rate=2e-4
        )
        trainer = StarSSETrainer(make_model(args.hidden_size), training_args, train_dataset=data)
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="total optimizer steps of each run")
    parser.add_argument("--members", type=int, default=5, help="ensemble size K (steps are split evenly)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.steps % args.members:
        parser.error("--steps must be a multiple of --members so both runs take the same number of steps")
    logging.set_verbosity_error()
    data = make_data(16 * 20, args.seq_len)
    time_trainer(args, data)  # warm-up: first-call costs (imports, allocator) hit neither side
    rows = []
    for repeat in range(args.repeats):
        trainer_s, starsse_s = time_trainer(args, data), time_starsse(args, data)
        rows.append((repeat + 1, trainer_s, starsse_s, starsse_s / trainer_s))
        print(f"repeat {repeat + 1}: Trainer {trainer_s:.1f}s, StarSSETrainer {starsse_s:.1f}s", file=sys.stderr)
    median = statistics.median(row[3] for row in rows)
    lines = [
        "# StarSSETrainer overhead over transformers.Trainer",
        "",
        f"{date.today()}, `python benchmarks/trainer_overhead.py --steps {args.steps} --members {args.members} "
        f"--hidden-size {args.hidden_size} --seq-len {args.seq_len} --repeats {args.repeats}`",
        f"on {platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}, CPU.",
        "",
        f"Same model (BERT, 4 layers, hidden {args.hidden_size}), data and {args.steps} optimizer steps: `Trainer` in "
        f"one run plus `save_model`, against `StarSSETrainer` with {args.members} StarSSE members of "
        f"{args.steps // args.members} steps each (every snapshot saved, hashed and listed in the manifest).",
        "",
        "| repeat | Trainer (s) | StarSSETrainer (s) | ratio |",
        "|---:|---:|---:|---:|",
        *[f"| {r} | {t:.1f} | {s:.1f} | {ratio:.3f} |" for r, t, s, ratio in rows],
        "",
        f"**Median ratio: {median:.3f}** (target <= 1.05).",
        "",
    ]
    write_results(lines, args.output)


if __name__ == "__main__":
    main()
