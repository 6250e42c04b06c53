"""`DataArguments`: which model and data to use and how to read the dataset's columns, checked before any work (the
options of the CLI's commands that prepare data, see `data.py`)."""

import re
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..cards.model_card import is_hub_id
from ..tasks import family_for_task
from ..tasks.text_generation import PROMPT_OPTIONS

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
    task: str | None = field(
        default=None,
        metadata={
            "help": "The task, as its pipeline tag: text-classification, token-classification, multiple-choice, "
            "question-answering, image-classification or text-generation. Default: the task of the model's head, "
            "else what the data holds (images, or else text classification); a model without a head needs it for "
            "the other tasks."
        },
    )
    text_column: str | None = field(
        default=None,
        metadata={
            "help": "Text column (default: 'text' or 'sentence'); token classification: the column of word lists "
            "(default: 'tokens'). Ignored for image data."
        },
    )
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column for sentence pairs."})
    image_column: str | None = field(
        default=None, metadata={"help": "Image column (default: the first column with an Image feature)."}
    )
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with the labels (default: 'label'; token classification: 'label', else 'ner_tags', one "
            "label per word; multiple choice: the index of the right choice). Question answering reads "
            "--answer_column instead."
        },
    )
    context_column: str | None = field(
        default=None,
        metadata={"help": "Multiple choice and question answering: the context (default: 'sent1'; QA: 'context')."},
    )
    question_column: str | None = field(
        default=None,
        metadata={
            "help": "Question answering: the question (default: 'question'); multiple choice: text put before every "
            "choice (default: 'sent2' when there is one, as in SWAG)."
        },
    )
    choice_columns: list[str] | None = field(
        default=None,
        metadata={"help": "Multiple choice: the choices' columns, in label order (default: ending0 ending1 ...)."},
    )
    answer_column: str | None = field(
        default=None,
        metadata={
            "help": "Question answering: the answers, as in SQuAD {'text': [...], 'answer_start': [...]} (default: "
            "'answers'); the first one is learned, none means no answer in the context."
        },
    )
    completion_column: str | None = field(
        default=None,
        metadata={
            "help": "Text generation: the answer column, learned after its prompt (default: 'completion' when "
            "present; a ClassLabel column gives its names, and evaluation scores them as options). Without one, "
            "every token of --text_column is learned."
        },
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "Text generation: the prompt, formatted from each row's columns, e.g. '{text}\\n\\nTopic:' "
            "(default: the 'prompt' column)."
        },
    )
    chat_template: bool = field(
        default=False,
        metadata={"help": "Text generation: put prompt and answer in the tokenizer's chat template (a user turn and "
                  "the assistant's answer)."},
    )  # fmt: skip
    max_length: int | None = field(
        default=None,
        metadata={"help": "Truncate texts to this many tokens (text generation: prompt and answer together, the "
                  "row's text losing its start)."},
    )  # fmt: skip
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
        if self.task is not None:
            family_for_task(self.task)  # a known task, whose data the CLI prepares

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

    def prompt_options(self) -> dict:
        """The text-generation prompt options (`PROMPT_OPTIONS`) by name, as `save_card_info(prompt=...)` records
        them."""
        return {option: getattr(self, option) for option in PROMPT_OPTIONS}


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
