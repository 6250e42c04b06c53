"""Models and datasets by Hub id or local path, prepared for text or image classification (used by the CLI)."""

from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    default_data_collator,
)

from .soups import fix_batchnorm_momentum

DATA_FILE_TYPES = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class DataArguments:
    """Which model and data to use, and how to read the dataset's columns."""

    model_name_or_path: str = field(
        metadata={"help": "Pre-trained model: a Hub id or a local save_pretrained directory."}
    )
    dataset: str = field(
        metadata={"help": "Dataset: a Hub id, a save_to_disk directory, or a .csv/.json/.jsonl/.parquet file."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (Hub datasets)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on (and to re-estimate BatchNorm)."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Held-out split for evaluation during training and greedy soups."}
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


def load_dataset_dict(path: str, config: str | None = None) -> datasets.DatasetDict:
    """A `DatasetDict` from a save_to_disk directory, a data file, or the Hub (clear error when offline)."""
    local = Path(path).expanduser()
    if local.is_dir() and any((local / name).exists() for name in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(local))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    if local.is_file():
        if local.suffix not in DATA_FILE_TYPES:
            raise ValueError(f"{path}: unsupported data file; use one of {', '.join(DATA_FILE_TYPES)}.")
        return datasets.load_dataset(DATA_FILE_TYPES[local.suffix], data_files={"train": str(local)})
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
    is_image: bool
    label_names: list[str]
    prepare: object  # prepares another split (e.g. the test split) like the training split
    splits: datasets.DatasetDict  # every split of the dataset, unprepared


def prepare_task(
    data: DataArguments, splits: tuple[str, ...] | None = None, label_names: list[str] | None = None
) -> PreparedTask:
    """
    Load the model's processor and the dataset, check the columns, and prepare the splits for training.

    Args:
        data (`DataArguments`): Model, dataset and column options.
        splits (`tuple[str]`, *optional*): Splits that must exist (default: the training and evaluation splits).
        label_names (`list[str]`, *optional*): The label of each class id of an already trained model (its
            `id2label`); dataset labels are mapped to these ids by name. Default: the training split's labels.
    """
    dataset_dict = load_dataset_dict(data.dataset, data.dataset_config)
    for split in splits or tuple(s for s in (data.train_split, data.eval_split) if s):
        if split not in dataset_dict:
            raise ValueError(f"Dataset {data.dataset} has no split {split!r}; it has {sorted(dataset_dict)}.")
    train = dataset_dict[data.train_split] if data.train_split in dataset_dict else next(iter(dataset_dict.values()))
    if data.label_column not in train.column_names:
        raise ValueError(
            f"Dataset {data.dataset} has no label column {data.label_column!r} (columns: {train.column_names}); "
            "set --label_column."
        )
    if len(train) == 0:
        raise ValueError(f"The {data.train_split!r} split of {data.dataset} is empty.")
    names = label_names or _label_names(train, data.label_column)
    label2id = {name: index for index, name in enumerate(names)}
    to_ids = _label_converter(train.features[data.label_column], label2id)
    image_column = _image_column(train, data.image_column)
    if image_column is not None:
        prepare, processor, collator, auto_class = _image_preparation(data, train, image_column, to_ids)
    else:
        prepare, processor, collator, auto_class = _text_preparation(data, train, to_ids)

    def model_init():
        model = auto_class.from_pretrained(
            data.model_name_or_path,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id=label2id,
            ignore_mismatched_sizes=True,
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
        is_image=image_column is not None,
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


def _text_preparation(data: DataArguments, train: datasets.Dataset, to_ids):
    column = data.text_column or next((c for c in ("text", "sentence") if c in train.column_names), None)
    if column is None or column not in train.column_names:
        raise ValueError(
            f"No text column {data.text_column or 'text/sentence'!r} in {train.column_names}; set --text_column, or "
            "--image_column for image data."
        )
    if data.text_pair_column is not None and data.text_pair_column not in train.column_names:
        raise ValueError(f"No text pair column {data.text_pair_column!r} in {train.column_names}.")
    tokenizer = AutoTokenizer.from_pretrained(data.model_name_or_path)

    def tokenize(batch):
        pair = batch[data.text_pair_column] if data.text_pair_column else None
        encoded = tokenizer(batch[column], pair, truncation=True, max_length=data.max_length)
        encoded["labels"] = to_ids(batch[data.label_column])
        return encoded

    def prepare(dataset):
        return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)

    return prepare, tokenizer, DataCollatorWithPadding(tokenizer), AutoModelForSequenceClassification


def _image_preparation(data: DataArguments, train: datasets.Dataset, column: str, to_ids):
    if column not in train.column_names:
        raise ValueError(f"No image column {column!r} in {train.column_names}; set --image_column.")
    processor = AutoImageProcessor.from_pretrained(data.model_name_or_path)

    def transform(batch):
        images = [image.convert("RGB") for image in batch[column]]
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": to_ids(batch[data.label_column])}

    def prepare(dataset):
        return dataset.with_transform(transform)

    return prepare, processor, default_data_collator, AutoModelForImageClassification
