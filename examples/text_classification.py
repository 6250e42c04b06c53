"""Text classification with a StarSSE ensemble: the `Trainer` drop-in, launched with accelerate.

    accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml examples/text_classification.py \\
        --model_name_or_path google-bert/bert-base-uncased --dataset nyu-mll/glue --dataset_config sst2 \\
        --text_column sentence --eval_split validation --output_dir runs/sst2 \\
        --num_members 5 --num_train_epochs 2 --learning_rate 2e-5 --cycle_epochs 1 --cycle_learning_rate 4e-5 \\
        --per_device_train_batch_size 32 --eval_strategy epoch --bf16 true

Trains every member into `output_dir` (re-running resumes), saves the ensemble and a soup in `output_dir/ensemble`
and `output_dir/soup`, evaluates members, ensembles and soups on `--test_split` (written to
`output_dir/evaluation.csv`), and with `--push_to_hub true --hub_model_id you/name` publishes the ensemble.
`--members_to_train 2` trains one StarSSE branch only (a job of a job array, see slurm_starsse.sh). Every
`StarSSETrainingArguments` / `TrainingArguments` field and `hf_starsse.training.data.DataArguments` field is an option.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_starsse import StarSSETrainer, StarSSETrainingArguments, evaluate_ensemble
from hf_starsse.evaluation.metrics import compute_metrics
from hf_starsse.training.data import DataArguments, PreparedTask, prepare_task


@dataclass
class ExampleArguments:
    test_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate members, ensembles and soups on (default: eval_split)."}
    )
    soup_method: str = field(
        default="uniform", metadata={"help": "Soup to save: uniform, or greedy (picks members on eval_split)."}
    )


def parse_args(*dataclass_types) -> tuple:
    parser = HfArgumentParser((DataArguments, StarSSETrainingArguments, ExampleArguments, *dataclass_types))
    parser.set_defaults(hub_strategy="end")  # ensembles are pushed once trained (trainer.push_to_hub)
    return parser.parse_args_into_dataclasses()


def run(
    data: DataArguments,
    args: StarSSETrainingArguments,
    options: ExampleArguments,
    extra_splits: Callable[[PreparedTask, str], dict] | None = None,
) -> list[dict] | None:
    """
    Train the ensemble, save it and its soup, evaluate, push. Returns the evaluation rows (on the main process of a
    run that trained every member; `None` otherwise).

    Args:
        extra_splits (`Callable`, *optional*): More evaluation splits from the prepared task and the test split name.
    """
    test_split = options.test_split or data.eval_split
    needed = tuple(dict.fromkeys(split for split in (data.train_split, data.eval_split, test_split) if split))
    task = prepare_task(data, splits=needed)
    task.configure(args)  # e.g. image data keeps its raw column for the transform
    trainer = StarSSETrainer(
        model_init=task.model_init,
        args=args,
        train_dataset=task.train_dataset,
        eval_dataset=task.eval_dataset,
        processing_class=task.processing_class,
        data_collator=task.data_collator,
        compute_metrics=compute_metrics if task.eval_dataset is not None else None,
    )
    trainer.train()
    if args.members_to_train is not None:
        return None  # one job of several: the ensemble is built once every member is trained
    run_dir = Path(args.output_dir)
    trainer.save_ensemble(str(run_dir / "ensemble"), overwrite=True)
    trainer.save_soup(str(run_dir / "soup"), method=options.soup_method, overwrite=True)
    rows = None
    if test_split is not None and trainer.is_world_process_zero():
        splits = {test_split: task.prepare(task.splits[test_split])}
        splits.update(extra_splits(task, test_split) if extra_splits else {})
        rows = evaluate_ensemble(
            run_dir,
            splits,
            train_dataset=task.train_dataset,
            data_collator=task.data_collator,
            batch_size=args.per_device_eval_batch_size,
            device=args.device,
        )
        full = next(r for r in rows if r["model"] == "ensemble" and r["size"] == args.num_members)
        print(f"{test_split}: ensemble of {args.num_members} accuracy {full['accuracy']:.4f} (all rows in "
              f"{run_dir}/evaluation.csv)")  # fmt: skip
    if args.push_to_hub:
        commit = trainer.push_to_hub()
        if commit is not None:
            print(f"Pushed the ensemble: {commit.commit_url}")
    return rows


if __name__ == "__main__":
    run(*parse_args())
