"""Ensemble quality: the paper's comparison at our scale, on real data and a real pre-trained model.

The ImageNet MobileNetV2 fine-tuned on Fashion-MNIST (the demo's offline pair). For every seed, one first model
(member 0: the single fine-tuned model) is trained, then shared by three ensembles of K members: Local DE
(independent fine-tunes with fresh heads), SSE (a chain of cycles) and StarSSE (cycles branching from member 0).
Each ensemble and its uniform soup are evaluated on the clean test split and on corrupted copies of it (shift).
The cycle learning rate and length are chosen once, by `sweep_cycle_hyperparameters` on the validation split (carved
from the training file, never the test split), and used for SSE and StarSSE at every seed. Every member's BatchNorm
statistics are re-estimated on the training data after training, as the soups' are, so that all models get the same
treatment.

    python benchmarks/quality.py                       # writes benchmarks/results/quality.md and quality_*.png
    python benchmarks/quality.py --seeds 0 --train-samples 500 --output-dir runs/quality-smoke   # a quick check

Runs resume: complete members, sweep cells and evaluations in `--output-dir` are reused. Seeds can run in parallel
processes once the sweep is done, then a last run writes the report from the saved results:

    python benchmarks/quality.py --run-seeds 0                                                # the sweep, seed 0
    python benchmarks/quality.py --run-seeds 1 & python benchmarks/quality.py --run-seeds 2   # after the sweep
    python benchmarks/quality.py                                                              # the report
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

from hf_starsse import StarSSETrainer, StarSSETrainingArguments, evaluate_ensemble, plots
from hf_starsse.corruptions import CORRUPTIONS, summarize_robustness
from hf_starsse.data import DataArguments, prepare_task
from hf_starsse.demo import TRAINING_DEFAULTS, DemoArguments, fashion_mnist, pretrained_mobilenet_v2
from hf_starsse.demo.run import evaluation_sets, markdown_table, summarize
from hf_starsse.soups import BatchNormRecalibrationCallback
from hf_starsse.sweep import sweep_cycle_hyperparameters

from results_table import write_results

RESULTS = Path(__file__).parent / "results"
METHODS = {"local_de": "Local DE", "sse": "SSE", "starsse": "StarSSE"}
COLUMNS = {"accuracy": "test acc", "nll": "test NLL", "ece": "test ECE", "shift_accuracy": "shift acc",
           "shift_nll": "shift NLL", "shift_ece": "shift ECE"}  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", type=int, default=5, help="K, member 0 included.")
    parser.add_argument("--train-samples", type=int, default=1500)
    parser.add_argument("--validation-samples", type=int, default=500)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--shift-samples", type=int, default=100)
    parser.add_argument("--severities", type=int, nargs="+", default=[3])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2, help="Length of the first model's fine-tune.")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="Peak LR of the first model.")
    parser.add_argument("--lr-ratios", type=float, nargs="+", default=[1, 2, 4], help="Sweep: cycle LR / first LR.")
    parser.add_argument("--length-ratios", type=float, nargs="+", default=[0.5], help="Sweep: cycle / first length.")
    parser.add_argument("--sweep-members", type=int, default=3, help="Ensemble size scored by the sweep.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (1 is fastest on a shared machine).")
    parser.add_argument(
        "--run-seeds",
        type=int,
        nargs="+",
        help="Train and evaluate only these seeds (parallel processes sharing "
        "--output-dir, once the sweep is done); then run without it to write the report from the saved results.",
    )
    parser.add_argument("--note", default="", help="Text added under the header (e.g. how the seeds were run).")
    parser.add_argument("--output-dir", default="runs/quality")
    parser.add_argument("--results", type=Path, default=RESULTS / "quality.md")
    return parser.parse_args()


def training_args(options: argparse.Namespace, output_dir: Path, seed: int, **overrides) -> StarSSETrainingArguments:
    """The demo's recipe (SGD with momentum, batch 32), quieter, without intermediate checkpoints."""
    recipe = {**TRAINING_DEFAULTS, "save_strategy": "no", "logging_steps": 50, "disable_tqdm": True}
    recipe["remove_unused_columns"] = False  # the image transform needs the raw image column
    recipe.update(num_train_epochs=options.epochs, learning_rate=options.learning_rate, num_members=options.members)
    recipe.update(cycle_epochs=None, cycle_learning_rate=None)
    return StarSSETrainingArguments(**{**recipe, "output_dir": str(output_dir), "seed": seed, **overrides})


def first_model(options, task, trainer_kwargs: dict, root: Path, seed: int) -> Path:
    """Member 0 of `seed` (the sweep's own member 0 for the first seed: the same recipe and seed)."""
    run = root / "sweep" / "member0" if seed == options.seeds[0] else root / f"seed{seed}" / "member0"
    StarSSETrainer(args=training_args(options, run, seed, num_members=1), **trainer_kwargs).train()
    return run / "members" / "member-00"


def std(values: list[float]) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(summaries: dict, members: int) -> list[dict]:
    """Mean +- std over seeds of each model's metrics; `summaries[method][seed]` are `summarize` rows."""
    wanted = [("Single model (member 0)", "starsse", "member 0")]
    for method, name in METHODS.items():
        wanted += [
            (f"{name} ensemble", method, f"ensemble ({members})"),
            (f"{name} uniform soup", method, "uniform_soup"),
        ]
    table = []
    for label, method, model in wanted:
        entries = [next(row for row in rows if row["model"] == model) for rows in summaries[method].values()]
        row = {"model": label, "steps": f"{np.mean([entry['steps'] for entry in entries]):.0f}"}
        for key, title in COLUMNS.items():
            values = [entry[key] for entry in entries]
            row[title] = f"{np.mean(values):.4f} ± {std(values):.4f}"
        table.append(row)
    return table


def paired_differences(summaries: dict, members: int) -> list[str]:
    """StarSSE minus each other method, per seed (same member 0), as mean +- std: the comparison that matters."""
    lines = []
    for other in ("local_de", "sse"):
        for kind, model in (("ensemble", f"ensemble ({members})"), ("uniform soup", "uniform_soup")):
            parts = []
            for key in ("accuracy", "nll", "shift_accuracy", "shift_nll"):
                diffs = [
                    next(r for r in summaries["starsse"][seed] if r["model"] == model)[key]
                    - next(r for r in summaries[other][seed] if r["model"] == model)[key]
                    for seed in summaries["starsse"]
                ]
                parts.append(f"{COLUMNS[key]} {np.mean(diffs):+.4f} ± {std(diffs):.4f}")
            lines.append(f"- StarSSE {kind} − {METHODS[other]} {kind}: " + ", ".join(parts))
    return lines


def mean_rows(all_rows: list[dict]) -> list[dict]:
    """`evaluate_ensemble` rows averaged over seeds (for the plots)."""
    groups: dict[tuple, list[dict]] = {}
    for row in all_rows:
        groups.setdefault((row["method"], row["model"], row["member"], row["size"], row["split"]), []).append(row)
    return [
        {**group[0], **{k: float(np.mean([r[k] for r in group])) for k in ("accuracy", "nll", "ece")}}
        for group in groups.values()
    ]


def plot(all_rows: list[dict], members: int, prefix: Path) -> list[str]:
    rows = mean_rows(all_rows)
    for metric in ("accuracy", "nll"):
        plots.plot_metric_vs_size(rows, f"{prefix}_{metric}_vs_size.png", metric=metric)
    bars: dict[str, dict[str, float]] = {}
    for method, name in METHODS.items():
        robustness = summarize_robustness([row for row in rows if row["method"] == method])
        for corruption, values in robustness.items():
            bars.setdefault(corruption, {})["single model"] = values["member 0"]
            bars[corruption][f"{name} ensemble"] = values[f"ensemble ({members})"]
            bars[corruption][f"{name} soup"] = values["uniform_soup"]
    plots.plot_corruption_bars(bars, f"{prefix}_corruptions.png")
    return [f"{prefix.name}_{name}.png" for name in ("accuracy_vs_size", "nll_vs_size", "corruptions")]


def evaluation(run: Path, eval_sets: dict, task) -> list[dict]:
    """`evaluate_ensemble` of a run, or the rows saved for the same members (same hashes) by an earlier process."""
    saved, members = run / "quality_evaluation.json", json.loads((run / "ensemble.json").read_text())["members"]
    if saved.is_file() and json.loads(saved.read_text())["members"] == members:
        return json.loads(saved.read_text())["rows"]
    rows = evaluate_ensemble(
        run, eval_sets, train_dataset=task.train_dataset, data_collator=task.data_collator, batch_size=128
    )
    saved.write_text(json.dumps({"members": members, "rows": json.loads((run / "evaluation.json").read_text())}))
    return rows


def main() -> None:
    options = parse_args()
    torch.set_num_threads(options.threads)
    logging.set_verbosity_error()
    start = time.perf_counter()
    root = Path(options.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "started").is_file():
        (root / "started").write_text(str(time.time()))  # the wall time covers resumed and parallel processes
    data = DataArguments(
        model_name_or_path=str(pretrained_mobilenet_v2(options.image_size)),
        dataset=str(fashion_mnist()),
        eval_split="validation",
        max_train_samples=options.train_samples,
        max_eval_samples=options.validation_samples,
    )
    task = prepare_task(data, splits=("train", "validation", "test"))
    trainer_kwargs = dict(
        model_init=task.model_init,
        train_dataset=task.train_dataset,
        processing_class=task.processing_class,
        data_collator=task.data_collator,
        callbacks=[BatchNormRecalibrationCallback()],
    )
    sweep_args = training_args(options, root / "sweep", options.seeds[0], num_members=options.sweep_members)
    print(f"[quality] sweep of the cycle hyperparameters on the validation split ({root / 'sweep'})", flush=True)
    sweep = sweep_cycle_hyperparameters(
        task.model_init,
        sweep_args,
        task.train_dataset,
        task.eval_dataset,
        lr_ratios=tuple(options.lr_ratios),
        length_ratios=tuple(options.length_ratios),
        trainer_kwargs={key: trainer_kwargs[key] for key in ("processing_class", "data_collator", "callbacks")},
        num_interpolation_points=3,
    )
    best = sweep["best"]
    cycles = dict(cycle_learning_rate=best["cycle_learning_rate"], cycle_epochs=best["cycle_epochs"])
    demo = DemoArguments(
        test_samples=options.test_samples, shift_samples=options.shift_samples, severities=options.severities
    )
    eval_sets = evaluation_sets(task, demo)
    summaries = {method: {} for method in METHODS}
    all_rows = []
    for seed in options.run_seeds or options.seeds:
        print(f"[quality] seed {seed}: first model", flush=True)
        member0 = first_model(options, task, trainer_kwargs, root, seed)
        for method in METHODS:
            print(f"[quality] seed {seed}: {METHODS[method]} ({time.perf_counter() - start:.0f} s)", flush=True)
            run = root / f"seed{seed}" / method
            overrides = cycles if method != "local_de" else {}
            args = training_args(options, run, seed, ensemble_method=method, **overrides)
            trainer = StarSSETrainer(args=args, **trainer_kwargs)
            trainer.adopt_member(member0)
            trainer.train()
            rows = evaluation(run, eval_sets, task)
            summaries[method][seed] = summarize(rows)
            all_rows += rows
    if options.run_seeds:
        return
    elapsed = time.time() - float((root / "started").read_text())
    write_results(report(options, sweep, summaries, all_rows, elapsed), options.results)


def report(options, sweep: dict, summaries: dict, all_rows: list[dict], elapsed: float) -> list[str]:
    best, members = sweep["best"], options.members
    options.results.parent.mkdir(parents=True, exist_ok=True)
    images = plot(all_rows, members, options.results.with_suffix(""))
    sweep_rows = [
        {"cycle LR ratio": c["lr_ratio"], "cycle length ratio": c["length_ratio"],
         "ensemble acc": c["ensemble_accuracy"], "ensemble NLL": c["ensemble_nll"],
         "mean member acc": c["member_accuracy"], "barrier": c["barrier"]}
        for c in sweep["cells"]
    ]  # fmt: skip
    load = os.getloadavg()
    argv = sys.argv[:]
    if "--note" in argv:  # the note is shown below, not in the command
        del argv[argv.index("--note") : argv.index("--note") + 2]
    command = " ".join(argv)
    return [
        "# Ensemble quality: single model, Local DE, SSE and StarSSE",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, `python {command}`, {elapsed / 60:.0f} min "
        f"wall time on {platform.machine()} (2 cores) with {torch.get_num_threads()} torch thread(s) (load average at "
        f"the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}: the machine was shared), torch {torch.__version__}.",
        "",
        f"ImageNet MobileNetV2 (torchvision weights) fine-tuned on Fashion-MNIST at {options.image_size} px: "
        f"{options.train_samples} training images, {options.validation_samples} validation images (the sweep "
        f"only), {options.test_samples} test images; shift: the first {options.shift_samples} test images under "
        f"{len(CORRUPTIONS)} corruptions ({', '.join(CORRUPTIONS)}) at severity "
        f"{', '.join(map(str, options.severities))}, metrics averaged over them. K = {members}, seeds "
        f"{', '.join(map(str, options.seeds))} (mean ± sample std over seeds). First model: SGD (momentum 0.9), lr "
        f"{options.learning_rate}, {options.epochs:g} epochs, batch 32, linear decay; Local DE members repeat it "
        f"with fresh heads. SSE/StarSSE cycles: lr {best['cycle_learning_rate']:g}, {best['cycle_epochs']:g} epoch(s) "
        "each, cosine, chosen on the validation split by the sweep below (best ensemble accuracy). Every "
        "member of every method (hence every ensemble) and every soup had its BatchNorm statistics re-estimated on "
        "the training data. `steps`: optimizer steps of all the models involved.",
        "",
        *([options.note, ""] if options.note else []),
        *markdown_table(aggregate(summaries, members), ["model", *COLUMNS.values(), "steps"]),
        "",
        "Paired differences (same seed, same member 0):",
        "",
        *paired_differences(summaries, members),
        "",
        f"Sweep (seed {options.seeds[0]}, StarSSE with {options.sweep_members} members, validation split):",
        "",
        *markdown_table(sweep_rows, list(sweep_rows[0])),
        "",
        *(f"![{name}]({name})" for name in images),
        "",
    ]


if __name__ == "__main__":
    main()
