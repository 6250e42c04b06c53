"""Multiple choice: `AutoModelForMultipleChoice` (no `pipeline` in transformers). Members' probabilities over the
choices are pooled; each label is the index of the right choice."""

from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES

from .base import TaskFamily, indices_outside_rows


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
    prepare_data=None,
    check_labels=check_choice_labels,
    wrong_model="Dataset {source} holds choices but {model} is a {model_type!r} model, which has no multiple-choice "
    "head. Use a model with one.",
)
