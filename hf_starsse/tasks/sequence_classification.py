"""Sequence (text) classification: `AutoModelForSequenceClassification`, the `text-classification` pipeline."""

from transformers import AutoTokenizer, DataCollatorWithPadding
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from .base import TaskFamily
from .classification import CLASS_PROBABILITIES, CLASSIFICATION_METRICS, check_class_labels


def prepare_text(data, train, to_ids) -> tuple:
    """Tokenize `data.text_column` (and `data.text_pair_column`) of each split, labels mapped by `to_ids`; padding
    per batch by the collator."""
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

    return prepare, tokenizer, DataCollatorWithPadding(tokenizer)


SEQUENCE_CLASSIFICATION = TaskFamily(
    name="text-classification",
    auto_class="AutoModelForSequenceClassification",
    model_mapping=MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    ensemble_class="EnsembleForSequenceClassification",
    adapter_ensemble_class="AdapterEnsembleForSequenceClassification",
    ensemble_pipeline="EnsembleTextClassificationPipeline",
    raw_input="text",
    combination=CLASS_PROBABILITIES,
    metrics=CLASSIFICATION_METRICS,
    peft_task_type="SEQ_CLS",
    keeps_raw_columns=False,
    prepare_data=prepare_text,
    check_labels=check_class_labels,
    wrong_model="Dataset {source} holds no image column but {model} is a {model_type!r} model, which does not "
    "classify text. Use a text model, or set --image_column for image data.",
)
