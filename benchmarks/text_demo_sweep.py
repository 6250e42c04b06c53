"""The text demo's cycle settings, chosen from evidence: the library's cycle sweep at the demo's size.

On the text demo's task and sizes (`hf-starsse demo --task text`: all-MiniLM-L6-v2 on four 20 Newsgroups families,
320 training posts, 64 tokens, member 0 with the demo's recipe: AdamW, peak lr 1.5e-4, 3 epochs), a StarSSE-5
ensemble for every cycle learning rate x cycle length of the grid (`sweep_cycle_hyperparameters`, member 0 trained
once and shared), scored on the first 500 posts of the validation split (never the test split). Each cell's
ensemble is compared with member 0 itself (the single fine-tune a user would otherwise ship), on accuracy and NLL.
The demo takes the best cell that keeps it under 5 minutes on 2 cores (`hf_starsse/demo/text.py`): cycles of 0.5
epochs; the 1.5-epoch cells take the demo to 6.4 minutes.

Runs resume from `--work-dir` (keep it outside the repository).

    python benchmarks/text_demo_sweep.py    # writes benchmarks/results/text_demo_sweep.md
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
from transformers.utils import logging

from hf_starsse import StarSSETrainingArguments, evaluate_ensemble
from hf_starsse.demo.run import TRAINING_DEFAULTS
from hf_starsse.demo.text import TEXT_DEMO_DEFAULTS, TEXT_TRAINING_DEFAULTS, text_data_arguments
from hf_starsse.training.data import prepare_task
from hf_starsse.training.sweep import sweep_cycle_hyperparameters

from results_table import write_results

RESULTS = Path(__file__).parent / "results" / "text_demo_sweep.md"
VALIDATION_SAMPLES = 500
DEMO_CELL = (TEXT_TRAINING_DEFAULTS["cycle_learning_rate"] / TEXT_TRAINING_DEFAULTS["learning_rate"],
             TEXT_TRAINING_DEFAULTS["cycle_epochs"])  # fmt: skip
MAX_LENGTH = 64


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/work/bench-cache/text-demo-sweep"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--lr-ratios", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--length-ratios", type=float, nargs="+", default=[1 / 6, 0.5])
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def member0_scores(work_dir: Path, task) -> dict:
    """Member 0's validation accuracy and NLL (the run every cell adopts)."""
    rows = evaluate_ensemble(work_dir / "member0", {"validation": task.eval_dataset}, soups=(),
                             data_collator=task.data_collator, batch_size=64)  # fmt: skip
    return next(row for row in rows if row["model"] == "member" and row["member"] == 0)


def report(result: dict, member0: dict, command: str, threads: int, minutes: float) -> list[str]:
    epochs = TEXT_TRAINING_DEFAULTS["num_train_epochs"]
    lines = [
        "# The text demo's cycle settings: a sweep at the demo's size",
        "",
        f"{date.today()}, `{command}` on {platform.machine()}, {os.cpu_count()} cores, {threads} torch thread(s), "
        f"torch {torch.__version__}, {minutes:.0f} min. " + __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Member 0 (the single fine-tune): validation accuracy {member0['accuracy']:.4f}, NLL {member0['nll']:.4f}.",
        "",
        "| cycle LR ratio | cycle epochs | ensemble (5) acc | vs member 0 | ensemble NLL | vs member 0 | "
        "mean member acc | barrier 0→1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in sorted(result["cells"], key=lambda c: (c["length_ratio"], c["lr_ratio"])):
        lines.append(
            f"| {cell['lr_ratio']:g} | {cell['length_ratio'] * epochs:g} | {cell['ensemble_accuracy']:.4f} | "
            f"{cell['ensemble_accuracy'] - member0['accuracy']:+.4f} | {cell['ensemble_nll']:.4f} | "
            f"{cell['ensemble_nll'] - member0['nll']:+.4f} | {cell['member_accuracy']:.4f} | "
            f"{cell['barrier']:.4f} |"
        )
    best = result["best"]
    beats = best["ensemble_accuracy"] > member0["accuracy"] and best["ensemble_nll"] < member0["nll"]
    lines += [
        "",
        f"**Best cell** (highest ensemble accuracy, then lowest NLL): cycle LR x{best['lr_ratio']:g} "
        f"({best['lr_ratio'] * TEXT_TRAINING_DEFAULTS['learning_rate']:g}), cycles of "
        f"{best['length_ratio'] * epochs:g} epochs: the ensemble "
        + ("beats member 0 on both accuracy and NLL." if beats else "does NOT beat member 0 on both accuracy and NLL.")
        + " One seed and 500 validation posts: an accuracy has a standard error of about 1.6 points here.",
        "",
        f"**The demo's cell** (within its 5 minutes): cycle LR x{DEMO_CELL[0]:g}, cycles of {DEMO_CELL[1]:g} epochs.",
        "",
    ]
    return lines


def main(argv=None) -> None:
    options = parse_args(argv)
    torch.set_num_threads(options.threads)
    logging.set_verbosity_error()
    start = time.time()
    data = text_data_arguments(None, None, TEXT_DEMO_DEFAULTS["train_samples"], MAX_LENGTH)
    data.eval_split, data.max_eval_samples = "validation", VALIDATION_SAMPLES
    task = prepare_task(data)
    recipe = {**TRAINING_DEFAULTS, **TEXT_TRAINING_DEFAULTS, "output_dir": str(options.work_dir)}
    recipe.update(report_to="none", disable_tqdm=True, save_strategy="no", use_cpu=True, logging_steps=50)
    args = task.configure(StarSSETrainingArguments(**recipe))
    result = sweep_cycle_hyperparameters(
        task.model_init, args, task.train_dataset, task.eval_dataset, lr_ratios=tuple(options.lr_ratios),
        length_ratios=tuple(options.length_ratios), trainer_kwargs=task.trainer_kwargs(),
    )  # fmt: skip
    member0 = member0_scores(options.work_dir, task)
    (options.work_dir / "member0_scores.json").write_text(json.dumps(member0, indent=1))
    command = " ".join(["python benchmarks/text_demo_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    minutes = (time.time() - start) / 60
    write_results(report(result, member0, command, options.threads, minutes), options.results)


if __name__ == "__main__":
    main()
