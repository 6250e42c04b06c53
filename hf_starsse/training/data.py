"""Models and datasets by Hub id or local path, prepared for training by the task family of their data (used by the
CLI, the demo, the examples and the benchmarks)."""

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import (
    AutoConfig,
    PretrainedConfig,
    TrainingArguments,
)
from transformers.utils import logging

from ..cards.model_card import is_hub_id
from ..run.members import check_pickle_weights
from ..soups.batchnorm import fix_batchnorm_momentum
from ..storage.weights import check_weight_files
from ..tasks import TaskFamily, family_for_input

DATA_FILE_TYPES = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class DataArguments:
    """Which model and data to use, and how to read the dataset's columns."""

    model_name_or_path: str = field(
        metadata={"help": "Pre-trained model: a Hub id or a local save_pretrained directory."}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Dataset: a Hub id, a save_to_disk directory, or a .csv/.json/.jsonl/.parquet file."},
    )
    data_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Instead of --dataset, data files per split as split=file, e.g. train=train.csv test=test.csv "
            "(in Python also a dict {split: file}), as datasets.load_dataset(data_files=...) takes them."
        },
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model when model_name_or_path is a local copy (the cards' base_model)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "The dataset's name in the model cards (default: its Hub id)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (Hub datasets)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on (and to re-estimate BatchNorm)."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Held-out split: evaluated during training (each epoch, unless --eval_strategy says otherwise), "
            "and used by greedy soups and calibration."
        },
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Text column (default: 'text' or 'sentence'); ignored for image data."}
    )
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column for sentence pairs."})
    image_column: str | None = field(
        default=None, metadata={"help": "Image column (default: the first column with an Image feature)."}
    )
    label_column: str = field(default="label", metadata={"help": "Column with the class labels."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate texts to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    allow_pickle: bool = field(
        default=False,
        metadata={
            "help": "Accept a model with only pickle weights (pytorch_model.bin), read with torch.load("
            "weights_only=True). Only for checkpoints from a source you trust."
        },
    )

    def __post_init__(self):
        if (self.dataset is None) == (self.data_files is None):
            raise ValueError("Pass the data as --dataset or as --data_files split=file ..., one of the two.")
        if isinstance(self.data_files, dict):
            self.data_files = [f"{split}={file}" for split, file in self.data_files.items()]
        if self.data_files is not None:
            data_files_by_split(self.data_files)  # every problem with the files, before any work
        for option in ("model_name_or_path", "dataset"):
            if getattr(self, option) is not None:
                _check_hub_id(getattr(self, option), option)

    @property
    def source(self) -> str:
        """The data as named in messages: the dataset, or the data files."""
        return self.dataset or "--data_files " + " ".join(self.data_files)

    def card_info(self) -> dict:
        """What the model cards say about the origin (see `save_card_info`): declared names, Hub ids as such."""
        hub_dataset = self.dataset if is_hub_id(self.dataset) and not Path(self.dataset).exists() else None
        return dict(
            base_model=self.base_model_id,
            datasets=[hub_dataset] if hub_dataset else None,
            dataset_name=self.dataset_name,
        )


def data_files_by_split(entries: list[str]) -> dict[str, list[str]]:
    """`split=file` entries as `{split: [file, ...]}`, checked: split names, existing files of one known type."""
    by_split: dict[str, list[str]] = {}
    for entry in entries:
        split, sep, file = entry.partition("=")
        if not sep or not re.fullmatch(r"\w+(\.\w+)*", split) or not file:
            raise ValueError(
                f"--data_files entry {entry!r} is not split=file (a split name of letters, digits and '_', e.g. "
                "train=train.csv test=test.csv)."
            )
        if not Path(file).expanduser().is_file():
            raise FileNotFoundError(f"--data_files {split}={file}: no such file.")
        by_split.setdefault(split, []).append(str(Path(file).expanduser()))
    types = {DATA_FILE_TYPES.get(Path(file).suffix) for files in by_split.values() for file in files}
    if None in types or len(types) != 1:
        raise ValueError(
            f"--data_files must all be of one type among {', '.join(DATA_FILE_TYPES)}; got {' '.join(entries)}."
        )
    return by_split


def _check_hub_id(name: str, option: str) -> None:
    """Refuse a name that is neither an existing path, nor path-like, nor a valid Hub repository id."""
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ValueError(
            f"--{option} {name!r} is neither a local path nor a valid Hub id ({err}). Fix the name or the path."
        ) from None


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


def _check_model(data: DataArguments, family: TaskFamily, column: str | None) -> None:
    """The model must have a head of the task `family` of what the dataset holds, and safetensors weights unless
    pickles are allowed."""
    config = load_model_config(data.model_name_or_path)
    model_type = (getattr(config, "member_config", None) or {}).get("model_type", config.model_type)  # ensembles
    if not family.covers_model_type(model_type):
        message = family.wrong_model.format(
            source=data.source, column=column, model=data.model_name_or_path, model_type=config.model_type
        )
        raise ValueError(message)
    if Path(data.model_name_or_path).is_dir() and not check_weight_files(data.model_name_or_path, "The model"):
        check_pickle_weights(data.model_name_or_path, data.allow_pickle)


def _label_names(dataset: datasets.Dataset, column: str) -> list[str]:
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(value) for value in sorted(set(dataset[column]))]


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
            `id2label`); dataset labels are mapped to these ids by name. Default: the training split's labels.
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
    if data.label_column not in train.column_names:
        raise ValueError(
            f"Dataset {data.source} has no label column {data.label_column!r} (columns: {train.column_names}); "
            "set --label_column."
        )
    if len(train) == 0:
        raise ValueError(f"The {data.train_split!r} split of {data.source} is empty.")
    names = label_names or _label_names(train, data.label_column)
    label2id = {name: index for index, name in enumerate(names)}
    to_ids = _label_converter(train.features[data.label_column], label2id)
    image_column = _image_column(train, data.image_column)
    family = family_for_input("text" if image_column is None else "image")
    _check_model(data, family, image_column)
    data = replace(data, image_column=image_column)
    prepare, processor, collator = family.prepare_data(data, train, to_ids)

    loads = itertools.count()

    def model_init():
        with quiet_logs(next(loads) > 0):  # every member loads the same: its LOAD REPORT (new head) is said once
            model = family.auto_model_class().from_pretrained(
                data.model_name_or_path,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id=label2id,
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
