"""Multiple choice: `AutoModelForMultipleChoice` (no `pipeline` in transformers). Members' probabilities over the
choices are pooled; each label is the index of the right choice."""

import re

from transformers import AutoTokenizer, DataCollatorForMultipleChoice
from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES

from .base import TaskFamily, indices_outside_rows


def choice_columns(data, columns: list[str]) -> tuple[str, str | None, list[str]]:
    """The context, question (put before every choice, or `None`) and choice columns: the options of `data`, else
    SWAG's (`sent1`, `sent2`, `ending0`, `ending1`, ...), checked against the dataset's `columns`."""
    context = data.context_column or "sent1"
    question = data.question_column or ("sent2" if "sent2" in columns else None)
    endings = sorted((c for c in columns if re.fullmatch(r"ending\d+", c)), key=lambda c: int(c[len("ending") :]))
    choices = data.choice_columns or endings
    missing = [name for name in (context, question, *choices) if name is not None and name not in columns]
    if missing or len(choices) < 2:
        raise ValueError(
            f"Multiple-choice data needs a context and two or more choice columns; {missing or choices} not found "
            f"in {columns}: set --context_column and --choice_columns (and --question_column)."
        )
    return context, question, choices


def prepare_choices(data, train, to_ids) -> tuple:
    """Pair the context (`data.context_column`) of each row with each of its choices (`data.choice_columns`, after
    the question or header `data.question_column` if any) and tokenize the pairs; the label (`data.label_column`) is
    the index of the right choice (`to_ids` is not used). The collator pads every choice of a batch alike."""
    context, question, choices = choice_columns(data, train.column_names)
    tokenizer = AutoTokenizer.from_pretrained(data.model_name_or_path)

    def tokenize(batch):
        rows, count = len(batch[context]), len(choices)
        firsts = [text for text in batch[context] for _ in choices]
        heads = batch[question] if question else [""] * rows
        seconds = [f"{heads[row]} {batch[choice][row]}".strip() for row in range(rows) for choice in choices]
        encoded = tokenizer(firsts, seconds, truncation=True, max_length=data.max_length)
        grouped = {key: [value[i : i + count] for i in range(0, len(value), count)] for key, value in encoded.items()}
        return {**grouped, "labels": [int(label) for label in batch[data.label_column]]}

    def prepare(dataset):
        return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)

    return prepare, tokenizer, DataCollatorForMultipleChoice(tokenizer)


def check_choice_labels(dataset, column: str, model) -> None:
    """`TaskFamily.check_labels` of multiple choice: every label indexes one of its row's choices."""
    outside, num_choices = indices_outside_rows(dataset, column, model)
    if outside:
        raise ValueError(
            f"train_dataset column {column!r} holds labels {outside[:5]} that are not choices: each row has "
            f"{num_choices} (labels 0..{num_choices - 1})."
        )


MULTIPLE_CHOICE = TaskFamily(
    name="multiple-choice",
    auto_class="AutoModelForMultipleChoice",
    model_mapping=MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES,
    ensemble_class="EnsembleForMultipleChoice",
    adapter_ensemble_class="AdapterEnsembleForMultipleChoice",
    ensemble_pipeline=None,
    raw_input="choices",
    combination=(
        "the mean of the members' softmax probabilities over the choices; the model returns it as logits "
        "`log(mean_k softmax(z_k))` of shape (batch, choices)"
    ),
    metrics=("accuracy", "nll", "ece"),
    peft_task_type=None,
    keeps_raw_columns=False,
    prepare_data=prepare_choices,
    check_labels=check_choice_labels,
    wrong_model="Dataset {source} holds choices but {model} is a {model_type!r} model, which has no multiple-choice "
    "head. Use a model with one.",
    class_labels=False,
)
