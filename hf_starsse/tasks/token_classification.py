"""Token classification (e.g. named entities): `AutoModelForTokenClassification`, the `token-classification`
pipeline. Members' probabilities are pooled for each token; labels are per token, `-100` where none applies."""

from transformers import AutoTokenizer, DataCollatorForTokenClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES

from .base import TaskFamily


def prepare_tokens(data, train, to_ids) -> tuple:
    """Tokenize the words of `data.text_column` (default `tokens`: a list of words per row) and give each word's
    label (`to_ids` of a row's word labels, from `data.label_column`) to its first sub-word token, `-100` to the
    others and to special tokens; the collator pads labels with `-100`."""
    column = data.text_column or "tokens"
    if column not in train.column_names:
        raise ValueError(f"No word column {column!r} in {train.column_names}; set --text_column.")
    tokenizer = AutoTokenizer.from_pretrained(data.model_name_or_path)

    def tokenize(batch):
        encoded = tokenizer(batch[column], is_split_into_words=True, truncation=True, max_length=data.max_length)
        labels = []
        for row, word_labels in enumerate(batch[data.label_column]):
            ids, words = to_ids(word_labels), encoded.word_ids(row)
            first = [word is not None and word != before for word, before in zip(words, [None, *words])]
            labels.append([ids[word] if is_first else -100 for word, is_first in zip(words, first)])
        encoded["labels"] = labels
        return encoded

    def prepare(dataset):
        return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)

    return prepare, tokenizer, DataCollatorForTokenClassification(tokenizer)


def check_token_labels(dataset, column: str, model) -> None:
    """`TaskFamily.check_labels` of token classifiers: every token's label is a class id of the model or `-100`."""
    num_labels = model.config.num_labels
    outside = sorted({v for row in dataset[column] for v in row if v != -100 and not 0 <= v < num_labels})
    if outside:
        raise ValueError(
            f"train_dataset column {column!r} holds token labels {outside[:5]} outside the model's {num_labels} "
            "classes (0..num_labels-1, or -100 for tokens without a label). Map the tags to class ids, or load the "
            "model with the right num_labels."
        )


TOKEN_CLASSIFICATION = TaskFamily(
    name="token-classification",
    auto_class="AutoModelForTokenClassification",
    model_mapping=MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    ensemble_class="EnsembleForTokenClassification",
    adapter_ensemble_class="AdapterEnsembleForTokenClassification",
    ensemble_pipeline="EnsembleTokenClassificationPipeline",
    raw_input="words",
    combination=(
        "the mean of the members' softmax probabilities for each token; the model returns it as logits "
        "`log(mean_k softmax(z_k))` of shape (batch, tokens, labels), with the uncertainty of each token"
    ),
    metrics=("entity_f1", "accuracy", "nll", "ece"),  # entities only with BIO tag names
    head="token",
    peft_task_type="TOKEN_CLS",
    keeps_raw_columns=False,
    prepare_data=prepare_tokens,
    check_labels=check_token_labels,
    wrong_model="Dataset {source} holds words but {model} is a {model_type!r} model, which does not classify tokens. "
    "Use a model type with a token-classification head (AutoModelForTokenClassification).",
    label_columns=("label", "ner_tags"),
)
