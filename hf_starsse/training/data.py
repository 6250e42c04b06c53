"""Models and datasets by Hub id or local path, prepared for training by their task family (`--task`, else the model's
head or what the data holds; used by the CLI, the demo, the examples and the benchmarks). Their options are
`DataArguments` (`data_arguments.py`)."""

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import torch
from transformers import (
    AutoConfig,
    PretrainedConfig,
    TrainingArguments,
)
from transformers.utils import logging

from ..run.members import check_pickle_weights
from ..soups.batchnorm import fix_batchnorm_momentum
from ..storage.weights import check_weight_files
from ..tasks import TaskFamily, family_for_model, family_for_task, family_of_architecture
from .data_arguments import DATA_FILE_TYPES, DataArguments, data_files_by_split


def load_dataset_dict(
    path: str | None, config: str | None = None, data_files: list[str] | None = None
) -> datasets.DatasetDict:
    """
    A `DatasetDict` from a save_to_disk directory, a data file, the Hub (clear error when offline), or data files
    per split (`["train=train.csv", "test=test.csv"]`, see `data_files_by_split`).
    """
    if data_files is not None:
        by_split = data_files_by_split(data_files)
        loader = DATA_FILE_TYPES[Path(next(iter(by_split.values()))[0]).suffix]
        try:
            return datasets.load_dataset(loader, data_files=by_split)
        except ValueError as err:
            raise ValueError(
                f"Could not read --data_files ({err}). Check that they hold rows with a label column."
            ) from err
    local = Path(path).expanduser()
    if local.is_dir() and any((local / name).exists() for name in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(local))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    if local.is_file():
        if local.suffix not in DATA_FILE_TYPES:
            raise ValueError(f"{path}: unsupported data file; use one of {', '.join(DATA_FILE_TYPES)}.")
        try:
            return datasets.load_dataset(DATA_FILE_TYPES[local.suffix], data_files={"train": str(local)})
        except ValueError as err:
            raise ValueError(f"Could not read {path} ({err}). Check that it holds rows with a label column.") from err
    if local.exists() or path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{path} is neither a save_to_disk directory nor a data file.")
    try:
        return datasets.load_dataset(path, config)
    except Exception as err:  # offline, unknown id, ...: one clear message
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"Could not load dataset {path!r} from the Hub ({reason}). Without network access, pass a local dataset "
            "(a save_to_disk directory or a data file)."
        ) from err


def load_model_config(name: str) -> PretrainedConfig:
    """The config of a model by Hub id or local path (clear error when offline or missing)."""
    try:
        return AutoConfig.from_pretrained(name)
    except OSError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"Could not load model {name!r} ({reason}). Without network access (HF_HUB_OFFLINE=1), pass a local "
            "save_pretrained directory or a model already in the Hub cache."
        ) from err


def _task_family(data: DataArguments, config: PretrainedConfig, image_column: str | None) -> TaskFamily:
    """The task: `--task` (refused when it is not the model's head's), else the model's head or what the data holds
    (`family_for_model`)."""
    architecture = next(iter(config.architectures or ()), None)
    if data.task is None:
        return family_for_model(architecture, images=image_column is not None)
    head = family_of_architecture(architecture)
    if head is not None and head.head != "language_modeling" and head.name != data.task:  # a causal LM: a base
        raise ValueError(
            f"--task {data.task} contradicts the model {data.model_name_or_path}, a {architecture} (a {head.name} "
            f"head): drop --task, or start from a model without a head or with a {data.task} one."
        )
    return family_for_task(data.task)


def _check_model(data: DataArguments, config: PretrainedConfig, family: TaskFamily, column: str | None) -> None:
    """The model (`config`) must have a head of the task `family` of what the dataset holds, and safetensors weights
    unless pickles are allowed."""
    model_type = (getattr(config, "member_config", None) or {}).get("model_type", config.model_type)  # ensembles
    if not family.covers_model_type(model_type):
        message = family.wrong_model.format(
            source=data.source, column=column, model=data.model_name_or_path, model_type=config.model_type
        )
        raise ValueError(message)
    if Path(data.model_name_or_path).is_dir() and not check_weight_files(data.model_name_or_path, "The model"):
        check_pickle_weights(data.model_name_or_path, data.allow_pickle)


def _label_column(data: DataArguments, family: TaskFamily, train: datasets.Dataset) -> str | None:
    """The column of the labels: `--label_column`, else the first of the family's own present (`None`: the family
    makes its labels from other columns)."""
    if not family.label_columns and data.label_column is None:
        return None
    defaults = [name for name in family.label_columns if name in train.column_names] or family.label_columns[:1]
    column = data.label_column or defaults[0]
    if column not in train.column_names:
        raise ValueError(
            f"Dataset {data.source} has no label column {column!r} (columns: {train.column_names}); set "
            "--label_column."
        )
    return column


def _holds_label_lists(dataset: datasets.Dataset, column: str) -> bool:
    """Whether each row of `column` holds a list of labels (one a word: token classification)."""
    return isinstance(dataset.features[column], (datasets.Sequence, datasets.List))


def _label_feature(dataset: datasets.Dataset, column: str):
    """The feature of one label of `column` (of each word's, for lists of labels)."""
    feature = dataset.features[column]
    return feature.feature if _holds_label_lists(dataset, column) else feature


def _label_names(dataset: datasets.Dataset, column: str) -> list[str]:
    feature = _label_feature(dataset, column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = dataset[column]
    if _holds_label_lists(dataset, column):
        values = [value for row in values for value in row]
    return [str(value) for value in sorted(set(values))]


def _image_column(dataset: datasets.Dataset, requested: str | None) -> str | None:
    if requested is not None:
        return requested
    return next((name for name, f in dataset.features.items() if isinstance(f, datasets.Image)), None)


@dataclass
class PreparedTask:
    """Everything a trainer needs: a model factory, the processor, prepared splits and a collator."""

    model_init: object
    processing_class: object
    train_dataset: datasets.Dataset
    eval_dataset: datasets.Dataset | None
    data_collator: object
    family: TaskFamily
    label_names: list[str]
    prepare: object  # prepares another split (e.g. the test split) like the training split
    splits: datasets.DatasetDict  # every split of the dataset, unprepared

    def trainer_kwargs(self) -> dict:
        """The `StarSSETrainer` (or `Trainer`) arguments of this task: model factory, data, processor, collator."""
        return dict(
            model_init=self.model_init,
            train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset,
            processing_class=self.processing_class,
            data_collator=self.data_collator,
        )

    def configure(self, args: TrainingArguments) -> TrainingArguments:
        """
        Adapt training arguments to this task, in place: image data keeps its raw column for the transform
        (`remove_unused_columns=False`), and without a GPU or other accelerator the dataloaders do not pin memory
        (which would only warn).
        """
        if self.family.keeps_raw_columns:
            args.remove_unused_columns = False
        if args.use_cpu or not has_accelerator():
            args.dataloader_pin_memory = False
        return args


@contextmanager
def quiet_logs(quiet: bool = True) -> Iterator[None]:
    """transformers' warnings off (errors only) inside the block when `quiet`, restored after it."""
    verbosity = logging.get_verbosity()
    if quiet:
        logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def prepare_task(
    data: DataArguments, splits: tuple[str, ...] | None = None, label_names: list[str] | None = None
) -> PreparedTask:
    """
    Load the model's processor and the dataset, check the columns, and prepare the splits for training.

    Args:
        data (`DataArguments`): Model, dataset and column options.
        splits (`tuple[str]`, *optional*): Splits that must exist (default: the training split); the evaluation
            split, when `data` names one, must too.
        label_names (`list[str]`, *optional*): The label of each class id of an already trained model (its
            `id2label`); dataset labels are mapped to these ids by name. Default: the training split's labels. Not
            used by tasks whose labels are no classes (multiple choice, question answering).
    """
    dataset_dict = load_dataset_dict(data.dataset, data.dataset_config, data.data_files)
    required = (*(splits or (data.train_split,)), data.eval_split)  # the evaluation split whenever one is named
    for split in dict.fromkeys(split for split in required if split):
        if split not in dataset_dict:
            hint = f"add {split}=FILE to --data_files or " if data.data_files else ""
            raise ValueError(
                f"Dataset {data.source} has no split {split!r}; it has {', '.join(map(repr, sorted(dataset_dict)))}: "
                f"{hint}choose one of those."
            )
    train = dataset_dict[data.train_split] if data.train_split in dataset_dict else next(iter(dataset_dict.values()))
    config = load_model_config(data.model_name_or_path)
    image_column = _image_column(train, data.image_column)
    family = _task_family(data, config, image_column)
    data = replace(data, image_column=image_column, label_column=_label_column(data, family, train))
    if len(train) == 0:
        raise ValueError(f"The {data.train_split!r} split of {data.source} is empty.")
    _check_model(data, config, family, image_column)
    names = (label_names or _label_names(train, data.label_column)) if family.class_labels else []
    label2id = {name: index for index, name in enumerate(names)}
    to_ids = _label_converter(_label_feature(train, data.label_column), label2id) if names else None
    prepare, processor, collator = family.prepare_data(data, train, to_ids)
    # classes: the head sized and named by them; positions (choices, answers): the model's own head
    classes = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id) if names else {}
    loads = itertools.count()

    def model_init():
        with quiet_logs(next(loads) > 0):  # every member loads the same: its LOAD REPORT (new head) is said once
            model = family.auto_model_class().from_pretrained(
                data.model_name_or_path,
                **classes,
                ignore_mismatched_sizes=True,
                use_safetensors=None if data.allow_pickle else True,
            )
        fix_batchnorm_momentum(model)  # e.g. MobileNetV2's TF decay 0.997 would track the last batch only
        return model

    def select(dataset, limit):
        return dataset.select(range(min(limit, len(dataset)))) if limit else dataset

    eval_split = dataset_dict[data.eval_split] if data.eval_split else None
    task = PreparedTask(
        model_init=model_init,
        processing_class=processor,
        train_dataset=prepare(select(train, data.max_train_samples)),
        eval_dataset=prepare(select(eval_split, data.max_eval_samples)) if eval_split is not None else None,
        data_collator=collator,
        family=family,
        label_names=names,
        prepare=prepare,
        splits=dataset_dict,
    )
    return task


def _label_converter(feature, label2id: dict):
    """A function from a batch of dataset labels to the model's class ids, matching labels by name."""
    if isinstance(feature, datasets.ClassLabel):
        unknown = [name for name in feature.names if name not in label2id]
        if unknown:
            raise ValueError(f"Dataset labels {unknown} are not among the model's labels {list(label2id)}.")
        lookup = [label2id[name] for name in feature.names]
        return lambda values: [lookup[value] for value in values]

    def convert(values):
        try:
            return [label2id[str(value)] for value in values]
        except KeyError as err:
            raise ValueError(f"Label {err.args[0]!r} is not among the model's labels {list(label2id)}.") from None

    return convert
