"""The `hf-starsse` command line: train, ensemble, soup, evaluate, calibrate, sweep, push and demo, built on
`HfArgumentParser`.

    hf-starsse train --model_name_or_path M --dataset D --output_dir runs/x --num_members 5 ...
    hf-starsse train config.yaml                      # the same options from a YAML or JSON file
    hf-starsse train --model_name_or_path M --dataset D --task token-classification ...   # D: tokens, ner_tags
    hf-starsse train --model_name_or_path M --dataset allenai/swag --dataset_config regular --task multiple-choice ...
    hf-starsse train --model_name_or_path M --dataset rajpurkar/squad --task question-answering --max_length 384 ...
    hf-starsse train --model_name_or_path LM --dataset D --completion_column label --chat_template --use_peft ...
    hf-starsse ensemble --run_dir runs/x --output_dir out/ensemble [--members 0 1 2 --calibrate --dataset D ...]
    hf-starsse soup --run_dir runs/x --output_dir out/soup [--method greedy --dataset D --eval_split validation]
    hf-starsse evaluate --run_dir runs/x --dataset D --splits test [--calibration_split validation]
    hf-starsse evaluate --run_dir runs/x --data_files train=train.csv test=test.csv --splits test
    hf-starsse evaluate --run_dir runs/lm --dataset D --splits test ...   # with the run's prompt options
    hf-starsse calibrate --model_dir out/ensemble --dataset D --split validation   # also a soup or single model
    hf-starsse calibrate --model_dir out/soup --data_files train=train.csv validation=val.csv --split validation
    hf-starsse sweep --model_name_or_path M --dataset D --eval_split validation --output_dir runs/sweep ...
    hf-starsse push --path runs/x --repo_id me/x-ensemble [--soup_repo_id me/x-soup --members_as_subfolders --dry_run]
    hf-starsse demo [--model M --dataset D --num_members 5 --output_dir runs/demo ...]   # offline by default

The task (`--task`: text-classification, token-classification, multiple-choice, question-answering,
image-classification or text-generation) is that of the model's head when it has one (a run's members have theirs, so
`evaluate`, `soup`, `ensemble` and `calibrate` need no `--task`), else what the data holds: images, or else text
classification; a model without a head takes `--task` for the other tasks. Their columns: `--text_column` (words:
`tokens`) and `--label_column` (`label`, else `ner_tags`) for token classification; `--context_column` (`sent1`),
`--question_column` (`sent2`) and `--choice_columns` (`ending0 ending1 ...`) for multiple choice, as in SWAG;
`--question_column` (`question`), `--context_column` (`context`) and `--answer_column` (`answers`, as in SQuAD) for
question answering.

Text generation (the task of a causal language model's checkpoint) learns every token of `--text_column` (`text`), or
answers after prompts: `--completion_column` (`completion`; a ClassLabel gives its names) after `--prompt_template`
(e.g. '{text} Topic:', formatted from the row's columns; default: the `prompt` column), both in the tokenizer's chat
template with `--chat_template`, the loss on the answer only; `train` records the prompt options (completion column,
template, chat template, max length) in the run (`card_info.json`) and `evaluate` reuses those it is not given
(`--completion_column '' --prompt_template ''`: none). `evaluate` scores a ClassLabel completion column (or
`--answer_options yes no`) as options: accuracy, NLL, ECE and AURC over them, pooled then calibrated with
`--calibration_split`; else the perplexity of the completions or of the text. Ensembles and soups generate
(`pipeline("text-generation", ...)`); `calibrate` does not apply (use evaluate's `--calibration_split`).

Every `StarSSETrainingArguments` / `TrainingArguments` field is an option of `train` and `sweep`, and so are the PEFT
options (`--use_peft --lora_r 8 --lora_alpha 16 --lora_target_modules query value`, or `--peft_config FILE`: LoRA
members, see `hf_starsse.cli.peft_args`).
"""

import dataclasses
import os
import sys

import huggingface_hub.constants
from transformers import AutoConfig
from transformers.utils import logging

from ..cards.model_card import save_card_info
from ..demo import demo_defaults, run_demo
from ..ensemble.build import build_ensemble
from ..errors import HubUnreachableError, StarSSEError, network_error_types
from ..evaluation.calibration import calibrate_ensemble, check_split_name
from ..evaluation.generative import evaluate_generative
from ..evaluation.run_evaluation import evaluate_ensemble
from ..hub.publish import push_ensemble_to_hub
from ..run.members import load_members
from ..soups.average import greedy_soup, uniform_soup
from ..tasks.classification import MULTI_LABEL_METRICS, REGRESSION_METRICS
from ..tasks.text_generation import TEXT_GENERATION, evaluation_data
from ..training.arguments import StarSSETrainingArguments
from ..training.data import DataArguments, PreparedTask, prepare_task
from ..training.sweep import sweep_cycle_hyperparameters
from ..training.trainer import StarSSETrainer
from .arguments import (
    COMMAND_ARGUMENTS,
    CalibrateArguments,
    EnsembleArguments,
    EvaluateArguments,
    PushArguments,
    SoupArguments,
    SweepArguments,
    cli_spelling,
    given_options,
    parse,
)
from .peft_args import PeftArguments, with_peft
from .prompts import generates, run_prompt, with_run_prompt

# One line and exit status 2: hf_starsse's own user-facing errors and bad values or files. Anything else (a
# RuntimeError, a KeyError, ...) is a bug or a failure of the machine and keeps its traceback.
USER_ERRORS = (StarSSEError, ValueError, OSError)


def _data_for_run(command: str, run_dir: str, given: dict, named: dict) -> DataArguments | None:
    """The data options `given` to `command` (`None` without data), with the run's prompt options where the command
    line (`named`) sets none (`with_run_prompt`); their model is the run's first member (its processor files prepare
    the data)."""
    if given.get("dataset") is None and given.get("data_files") is None:
        return None
    member = str(load_members(run_dir)[0])
    return DataArguments(model_name_or_path=member, **with_run_prompt(command, run_dir, member, given, named))


def _prepare_for_run(data: DataArguments, splits: tuple[str, ...] = ()) -> PreparedTask:
    """Prepare data for a trained run: labels are mapped to the members' own class ids (their `id2label`)."""
    config = AutoConfig.from_pretrained(data.model_name_or_path)
    names = [config.id2label[index] for index in range(len(config.id2label))]
    return prepare_task(data, splits=(data.train_split, *splits), label_names=names)


def train(data: DataArguments, args: StarSSETrainingArguments, peft: PeftArguments) -> None:
    task = with_peft(prepare_task(data), peft)
    trainer = StarSSETrainer(args=task.configure(args), **task.trainer_kwargs())
    output = trainer.train()
    if trainer.is_world_process_zero():
        save_card_info(args.output_dir, **data.card_info(), prompt=run_prompt(data, task))
    print(f"Trained {output.metrics.get('train_members', 1)} member(s) into {args.output_dir}.")


def _require_held_out(data: DataArguments | None, what: str, calibrate: bool) -> None:
    """`what` picks or calibrates on the split named by --eval_split: it must exist, and calibration never uses a
    test split."""
    if data is None or data.eval_split is None:
        raise ValueError(f"{what} needs held-out data: pass --dataset (or --data_files) and --eval_split.")
    if calibrate:
        check_split_name(data.eval_split)
        _check_calibrated(data.model_name_or_path)


def _check_calibrated(model: str) -> None:
    """Refuse to calibrate a causal language model (before any work): its temperature belongs to the answer options
    it is scored over, which a saved model does not know; `evaluate` pools then calibrates over them."""
    if generates(model):
        raise ValueError(
            "Causal language models are not calibrated in place (a temperature over answer options, which the saved "
            "model does not know): use hf-starsse evaluate --calibration_split validation with a ClassLabel "
            "--completion_column or --answer_options; its nll_calibrated and ece_calibrated columns pool then "
            "calibrate."
        )


def ensemble(options: EnsembleArguments, data: DataArguments | None, allow_pickle: bool = False) -> None:
    if options.calibrate:
        _require_held_out(data, "A calibrated ensemble", calibrate=True)
    model = build_ensemble(options.run_dir, options.output_dir, members=options.members, overwrite=options.overwrite,
                           allow_pickle=allow_pickle, include_base=options.include_base,
                           base_model=options.base_model)  # fmt: skip
    print(f"Ensemble of {model.config.num_members} members saved to {options.output_dir}.")
    if options.calibrate:
        task = _prepare_for_run(data)
        model = calibrate_ensemble(options.output_dir, task.eval_dataset, split=data.eval_split,
                                   per_member=options.per_member, data_collator=task.data_collator,
                                   batch_size=options.batch_size)  # fmt: skip
        _report_calibration(model, options.output_dir)


def soup(options: SoupArguments, data: DataArguments | None, allow_pickle: bool = False) -> None:
    if options.method == "greedy" or options.calibrate:
        _require_held_out(data, "A greedy or calibrated soup", options.calibrate)
    task = _prepare_for_run(data) if data is not None else None
    common = dict(
        out_dir=options.output_dir,
        train_dataset=task.train_dataset if task else None,
        data_collator=task.data_collator if task else None,
        batch_size=options.batch_size,
        overwrite=options.overwrite,
        allow_pickle=allow_pickle,
    )
    if options.method == "greedy":
        _, chosen = greedy_soup(options.run_dir, task.eval_dataset, **common)
        print(f"Greedy soup of members {chosen} saved to {options.output_dir}.")
    else:
        uniform_soup(options.run_dir, **common)
        print(f"Uniform soup saved to {options.output_dir}.")
    if options.calibrate:
        _report_calibration(calibrate_ensemble(options.output_dir, task.eval_dataset, split=data.eval_split, **{
            key: common[key] for key in ("data_collator", "batch_size")}), options.output_dir)  # fmt: skip


def _report_calibration(model, path: str) -> None:
    record = model.config.calibration
    before, after = record["before"], record["after"]
    print(
        f"Temperature {record['temperature']:.4f} fitted on {record['split']!r} ({record['num_samples']} samples): "
        f"NLL {before['nll']:.4f} -> {after['nll']:.4f}, ECE {before['ece']:.4f} -> {after['ece']:.4f}; saved in "
        f"{path}."
    )


def calibrate(options: CalibrateArguments, given: dict) -> None:
    if given.get("dataset") is None and given.get("data_files") is None:
        raise ValueError("calibrate needs --dataset or --data_files (and --split, a held-out split).")
    check_split_name(options.split)  # before loading anything
    _check_calibrated(options.model_dir)
    data = DataArguments(model_name_or_path=options.model_dir, **given)
    config = AutoConfig.from_pretrained(options.model_dir)
    names = [config.id2label[index] for index in range(len(config.id2label))]
    task = prepare_task(data, splits=(options.split,), label_names=names)
    model = calibrate_ensemble(
        options.model_dir,
        task.prepare(task.splits[options.split]),
        out_dir=options.output_dir,
        split=options.split,
        per_member=options.per_member,
        data_collator=task.data_collator,
        batch_size=options.batch_size,
        overwrite=options.overwrite,
    )
    _report_calibration(model, options.output_dir or options.model_dir)


def _evaluate_generation(options: EvaluateArguments, data: DataArguments, task: PreparedTask, splits: list) -> list:
    """`evaluate` of causal language models: answer options (a ClassLabel completion column, or --answer_options)
    scored and calibrated over, else the perplexity of the completions or of the text."""
    raw = {split: task.splits[split] for split in splits}
    train = task.splits[data.train_split]
    option_data, text_data = evaluation_data(
        data, train, raw, task.prepare, task.processing_class, options.answer_options
    )
    if options.calibration_split is not None and not option_data:
        raise ValueError(
            "--calibration_split fits a temperature over answer options: evaluate a ClassLabel --completion_column, "
            "or pass --answer_options."
        )
    return evaluate_generative(
        options.run_dir,
        option_data,
        text_data,
        soups=tuple(options.soups),
        calibration_split=options.calibration_split,
        data_collator=task.data_collator,
        batch_size=options.batch_size,
        allow_pickle=data.allow_pickle,
    )


def _evaluate_classifiers(options: EvaluateArguments, data: DataArguments, task: PreparedTask, splits: list) -> list:
    """`evaluate` of classifiers (every head but causal language models), with the greedy soup's validation split."""
    if options.answer_options:
        raise ValueError("--answer_options are the answers of a text-generation run; this run's members classify.")
    datasets = {split: task.prepare(task.splits[split]) for split in splits}
    if "greedy" in options.soups:
        datasets["validation"] = task.eval_dataset
    return evaluate_ensemble(
        options.run_dir,
        datasets,
        soups=tuple(options.soups),
        calibration_split=options.calibration_split,
        train_dataset=task.train_dataset,
        data_collator=task.data_collator,
        batch_size=options.batch_size,
        allow_pickle=data.allow_pickle,
    )


def evaluate(options: EvaluateArguments, data: DataArguments) -> None:
    if "greedy" in options.soups and generates(data.model_name_or_path):
        raise ValueError("Text-generation runs are evaluated with --soups uniform (the default), not a greedy soup.")
    if "greedy" in options.soups and data.eval_split is None:
        raise ValueError("A greedy soup picks members on held-out data: pass --eval_split.")
    held_out = tuple(s for s in (data.eval_split, options.calibration_split) if s)
    task = _prepare_for_run(data, tuple(options.splits) + held_out)
    evaluated = list(
        dict.fromkeys(options.splits + ([options.calibration_split] if options.calibration_split else []))
    )
    by_family = _evaluate_generation if task.family is TEXT_GENERATION else _evaluate_classifiers
    rows = by_family(options, data, task, evaluated)
    shown = dict.fromkeys(task.family.metrics + REGRESSION_METRICS + MULTI_LABEL_METRICS)  # the members' problem's
    for row in rows:
        if row["model"] != "member":
            scores = " ".join(f"{metric} {row[metric]:.4f}" for metric in shown if metric in row)
            print(f"{row['split']:>12} {row['model']:>13} size {row['size']}: {scores}")
    print(f"Wrote {options.run_dir}/evaluation.csv and evaluation.json.")


def sweep(data: DataArguments, args: StarSSETrainingArguments, options: SweepArguments, peft: PeftArguments) -> None:
    if data.eval_split is None:
        raise ValueError("The sweep scores cells on held-out data: pass --eval_split (a validation split).")
    task = with_peft(prepare_task(data), peft)
    results = sweep_cycle_hyperparameters(
        task.model_init,
        task.configure(args),
        task.train_dataset,
        task.eval_dataset,
        lr_ratios=tuple(options.lr_ratios),
        length_ratios=tuple(options.length_ratios),
        trainer_kwargs=task.trainer_kwargs(),
    )
    best = results["best"]
    score, key = ("accuracy", "ensemble_accuracy") if "ensemble_accuracy" in best else ("NLL/token", "ensemble_nll")
    print(
        f"Best cell: cycle LR x{best['lr_ratio']:g}, length x{best['length_ratio']:g} (ensemble {score} "
        f"{best[key]:.4f}). Results in {args.output_dir}/sweep.json and sweep_heatmaps.png."
    )


def push(options: PushArguments) -> None:
    try:
        uploads = push_ensemble_to_hub(**dataclasses.asdict(options))
    except network_error_types() as err:
        raise HubUnreachableError(
            f"Could not reach the Hub at {huggingface_hub.constants.ENDPOINT} ({err or type(err).__name__}). Check "
            "the network connection (and HF_ENDPOINT), or use --dry_run to see what would be uploaded."
        ) from err
    for upload in uploads:
        if upload.commit is None:
            print(f"Would push to {upload.describe()}")
        else:
            print(f"Pushed {len(upload.files)} files to {upload.repo_id}: {upload.commit.commit_url}")


def demo(argv: list[str]) -> None:
    """The demo's options: `DemoArguments` and every training option, with the demo's recipe as defaults."""
    given = given_options(argv)
    defaults = dict(demo_defaults(given.get("task") or "image"))
    if "cycle_steps" in given:
        defaults["cycle_epochs"] = None  # the given cycle length replaces the demo's
    options = parse("demo", argv, defaults)
    logging.set_verbosity_error()  # progress bars and the demo's lines, not the fresh-head load reports
    run_demo(*options)


COMMANDS = tuple(COMMAND_ARGUMENTS)


def _run(command: str, argv: list[str]) -> None:
    if command == "demo":
        demo(argv)
        return
    options = parse(command, argv)
    if command in ("train", "sweep", "push"):
        {"train": train, "sweep": sweep, "push": push}[command](*options)
        return
    own, data_options = options
    given = {key: value for key, value in dataclasses.asdict(data_options).items() if value is not None}
    if command == "calibrate":
        calibrate(own, given)
        return
    data = _data_for_run(command, own.run_dir, given, given_options(argv))
    if command == "evaluate" and data is None:
        raise ValueError("evaluate needs --dataset or --data_files (and --splits to evaluate).")
    if command == "evaluate":
        evaluate(own, data)
    else:
        {"ensemble": ensemble, "soup": soup}[command](own, data, bool(given.get("allow_pickle")))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `hf-starsse`; returns the exit status (user errors: one line on stderr, status 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"\nhf-starsse: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}.",
                file=sys.stderr,
            )
            return 2
        return 0
    try:
        _run(argv[0], argv[1:])
    except USER_ERRORS as err:
        if os.environ.get("HF_STARSSE_DEBUG"):
            raise  # full traceback, as asked
        message = cli_spelling(str(err), argv[0])
        print(f"hf-starsse {argv[0]}: error: {message} (HF_STARSSE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
