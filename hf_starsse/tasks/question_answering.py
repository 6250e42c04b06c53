"""Extractive question answering: `AutoModelForQuestionAnswering` (transformers 5 has no `pipeline` for it). The
members' probabilities of the answer's start and of its end are pooled separately; labels are token positions."""

from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

from .base import TaskFamily, indices_outside_rows


def check_answer_positions(dataset, column: str, model) -> None:
    """`TaskFamily.check_labels` of extractive QA: answer start and end positions inside each row's tokens."""
    for name in dict.fromkeys((column, "start_positions", "end_positions")):
        if name not in dataset.column_names:
            continue
        outside, length = indices_outside_rows(dataset, name, model)
        if outside:
            raise ValueError(
                f"train_dataset column {name!r} holds positions {outside[:5]} outside the {length} tokens of a row: "
                "answer positions are token indices (0..sequence length - 1)."
            )


QUESTION_ANSWERING = TaskFamily(
    name="question-answering",
    auto_class="AutoModelForQuestionAnswering",
    model_mapping=MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
    ensemble_class="EnsembleForQuestionAnswering",
    adapter_ensemble_class="AdapterEnsembleForQuestionAnswering",
    ensemble_pipeline=None,
    raw_input="questions",
    combination=(
        "the mean of the members' probabilities of each token starting the answer, and of each token ending it; the "
        "model returns them as `start_logits` and `end_logits` (`log` of the means)"
    ),
    metrics=("exact_match", "f1"),
    peft_task_type="QUESTION_ANS",
    keeps_raw_columns=False,
    prepare_data=None,
    check_labels=check_answer_positions,
    wrong_model="Dataset {source} holds questions but {model} is a {model_type!r} model, which has no extractive "
    "question-answering head. Use a model with one.",
)
