"""`check_train_dataset`: what every run checks of its training data before it starts, the labels by the model's
task family (those of other models, e.g. per-token labels or answer spans, are the Trainer's to take)."""

import inspect

import datasets

from .registry import family_of_architecture


def check_train_dataset(dataset, model, label_names: list[str], data_collator=None) -> None:
    """
    Check training data before a run starts: present and not empty and, for a `datasets.Dataset` without a transform
    (whose columns are what the model gets), holding the model's input, a label column, and labels the model's task
    family accepts (`TaskFamily.check_labels`, for a model of a registered family: a PEFT model by its base model).
    Data without a label column passes when the collator makes the labels (e.g. `DataCollatorForLanguageModeling`).

    Args:
        dataset: The training dataset.
        model (`PreTrainedModel`): The model to train (its `main_input_name` and `config.num_labels`).
        label_names (`list[str]`): Names of the label columns the model takes (`Trainer.label_names`).
        data_collator (`Callable`, *optional*): The trainer's collator: string labels are refused unless it is one of
            the user's own (transformers' collators cannot make tensors of them).
    """
    if dataset is None:
        raise ValueError("Training needs a train_dataset; pass one to the trainer.")
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError("train_dataset is empty: give the trainer a dataset with at least one example.")
    if not isinstance(dataset, datasets.Dataset) or dataset.format["type"] == "custom":
        return
    columns = dataset.column_names
    model_input = getattr(model, "main_input_name", None)
    if model_input and model_input not in columns and "inputs_embeds" not in columns:
        raise ValueError(
            f"train_dataset has no {model_input!r} column (columns: {columns}), the input of {type(model).__name__}: "
            "prepare it with the model's tokenizer or image processor (an image dataset for a text model, or the "
            "other way round?)."
        )
    label_column = next((c for c in (*label_names, "label", "label_ids") if c in columns), None)
    if label_column is None and collator_makes_labels(dataset, model, label_names, data_collator):
        return
    if label_column is None:
        raise ValueError(
            f"train_dataset has no label column ({', '.join(label_names) or 'labels'}; columns: {columns}). Add the "
            "labels, or rename their column to 'labels'."
        )
    feature = dataset.features[label_column]
    if getattr(feature, "dtype", None) in ("string", "large_string") and stock_collator(data_collator):
        raise ValueError(
            f"train_dataset column {label_column!r} holds strings ({dataset[0][label_column]!r}, ...), not class ids: "
            f"encode them first, e.g. dataset = dataset.class_encode_column({label_column!r}), and load the model "
            f"with id2label=dict(enumerate(dataset.features[{label_column!r}].names)) and the matching label2id."
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's base
    family = family_of_architecture(type(base).__name__)
    if family is not None:
        family.check_labels(dataset, label_column, model)


def collator_makes_labels(dataset, model, label_names: list[str], data_collator) -> bool:
    """
    Whether `data_collator` makes labels from the first rows of `dataset` (their columns that the model takes, as the
    Trainer keeps them), as `DataCollatorForLanguageModeling` does.

    Raises:
        `ValueError`: the collator cannot batch the rows (e.g. a tokenizer without a padding token), in one line.
    """
    if data_collator is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    taken = set(inspect.signature(base.forward).parameters) | {*label_names, "label", "label_ids"}
    first = dataset.select(range(min(2, len(dataset))))
    rows = [{key: value for key, value in row.items() if key in taken} for row in first]
    try:
        batch = data_collator(rows)
    except (ValueError, TypeError, KeyError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"data_collator cannot batch the rows of train_dataset: {reason}") from None
    return any(name in batch for name in (*label_names, "labels"))


def stock_collator(data_collator) -> bool:
    """Whether `data_collator` is transformers' own (or none, the Trainer's default), as opposed to the user's."""
    return data_collator is None or getattr(data_collator, "__module__", "").startswith("transformers.")
