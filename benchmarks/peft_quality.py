"""Item (d) of the LoRA benchmark: quality after training, LoRA members against full-model members.

On the text demo's task and sizes (`hf-starsse demo --task text`: all-MiniLM-L6-v2 on four 20 Newsgroups families,
320 training posts, 400 test posts, 400 posts of held-out sibling newsgroups as the shift), for each seed, two
StarSSE-5 runs from the same pre-trained model, data and seed: full fine-tuning with the demo's recipe, and LoRA
(r=8, alpha=16 on query/value; the pooler and classifier trained in full) with a learning rate 5x the full
recipe's (LoRA's usual larger step; not tuned). Member 0 of each run is its single model. Reported: accuracy and
NLL of the single model, the StarSSE ensemble of 5 and the uniform soup, on test and shift (mean and range over
seeds), with the members' disk size.

Runs resume from `--work-dir` (keep it outside the repository).

    python benchmarks/peft_quality.py    # writes benchmarks/results/peft_quality.md
"""

import argparse
import copy
import os
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import torch
from transformers.utils import logging

from hf_starsse import StarSSETrainer, StarSSETrainingArguments, evaluate_ensemble
from hf_starsse.demo.run import TRAINING_DEFAULTS
from hf_starsse.demo.text import (
    SHIFT_SPLIT,
    TEXT_DEMO_DEFAULTS,
    TEXT_TRAINING_DEFAULTS,
    text_data_arguments,
    text_evaluation_sets,
)
from hf_starsse.training.data import prepare_task

from results_table import write_results

RESULTS = Path(__file__).parent / "results" / "peft_quality.md"
# MiniLM's pooler is loaded but was never trained for classification (it "starts poor", see demo/text.py): trained in
# full with the classifier, as in the full fine-tune, so that LoRA is not handicapped by a frozen random-ish pooler.
LORA = dict(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["pooler"])
LORA_LR_FACTOR = 5
MAX_LENGTH = 64
MODELS = (("member", 1, "single model (member 0)"), ("ensemble", 5, "StarSSE ensemble of 5"),
          ("uniform_soup", 5, "StarSSE uniform soup"))  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/work/bench-cache/peft-quality"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def run_args(output_dir: Path, seed: int, lora: bool) -> StarSSETrainingArguments:
    """The text demo's StarSSE-5 recipe; LoRA with `LORA_LR_FACTOR` times its learning rates."""
    recipe = {**TRAINING_DEFAULTS, **TEXT_TRAINING_DEFAULTS, "output_dir": str(output_dir), "seed": seed}
    if lora:
        recipe["learning_rate"] *= LORA_LR_FACTOR
        recipe["cycle_learning_rate"] *= LORA_LR_FACTOR
    recipe.update(report_to="none", disable_tqdm=True, save_strategy="no", use_cpu=True, logging_steps=50)
    return StarSSETrainingArguments(**recipe)


def train_and_evaluate(task, eval_sets: dict, root: Path, seed: int, lora: bool) -> dict:
    """Train (or resume) one run and return its metrics by (model, split), and its member size in MB."""
    args = task.configure(run_args(root / f"seed{seed}" / ("lora" if lora else "full"), seed, lora))
    kwargs = task.trainer_kwargs()
    if lora:
        import peft

        build = kwargs["model_init"]
        # a fresh copy of the lists for every member: PEFT adds the classifier to modules_to_save in place
        kwargs["model_init"] = lambda: peft.get_peft_model(build(), peft.LoraConfig(**copy.deepcopy(LORA)))
    StarSSETrainer(args=args, **kwargs).train()
    rows = evaluate_ensemble(args.output_dir, eval_sets, data_collator=task.data_collator, batch_size=64)
    metrics = {
        (model, row["split"]): {"accuracy": row["accuracy"], "nll": row["nll"]}
        for model, size, _ in MODELS
        for row in rows
        if row["model"] == model and row["size"] == size and (model != "member" or row["member"] == 0)
    }
    member = Path(args.output_dir) / "members" / "member-00"
    size = sum(file.stat().st_size for file in member.glob("*.safetensors")) / 1e6
    return {"metrics": metrics, "member_mb": size}


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def report(results: dict, seeds: list[int], command: str, threads: int) -> list[str]:
    lines = [
        "# LoRA members after training: quality (item d)",
        "",
        f"{date.today()}, `{command}` on {platform.machine()}, {os.cpu_count()} cores, {threads} torch thread(s), "
        f"torch {torch.__version__}. " + __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Seeds {', '.join(map(str, seeds))}: mean (min-max). Disk per member: full "
        f"{results['full'][seeds[0]]['member_mb']:.1f} MB, LoRA {results['lora'][seeds[0]]['member_mb']:.2f} MB.",
        "",
        "| members | model | test acc | test NLL | shift acc | shift NLL |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kind, label in (("lora", "LoRA"), ("full", "full fine-tune")):
        for model, _, name in MODELS:
            cells = [
                summary([results[kind][seed]["metrics"][(model, split)][metric] for seed in seeds])
                for split in ("test", SHIFT_SPLIT)
                for metric in ("accuracy", "nll")
            ]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> None:
    options = parse_args(argv)
    torch.set_num_threads(options.threads)
    logging.set_verbosity_error()
    demo = TEXT_DEMO_DEFAULTS
    data = text_data_arguments(None, None, demo["train_samples"], MAX_LENGTH)
    task = prepare_task(data, splits=(data.train_split, "test"))
    eval_sets = text_evaluation_sets(task, "test", demo["test_samples"], demo["shift_samples"])
    results = {
        kind: {
            seed: train_and_evaluate(task, eval_sets, options.work_dir, seed, kind == "lora") for seed in options.seeds
        }
        for kind in ("lora", "full")
    }
    command = " ".join(["python benchmarks/peft_quality.py", *(sys.argv[1:] if argv is None else argv)])
    write_results(report(results, options.seeds, command, options.threads), options.results)


if __name__ == "__main__":
    main()
