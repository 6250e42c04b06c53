"""Extractive question answering: `AutoModelForQuestionAnswering` (transformers 5 has no `pipeline` for it). The
members' probabilities of the answer's start and of its end are pooled separately; labels are token positions."""

from transformers import AutoTokenizer, default_data_collator
from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

from .base import TaskFamily, indices_outside_rows

MAX_LENGTH = 384  # the tokens of a question and its context, as in transformers' question-answering example


def answer_positions(context_ids: list[bool], offsets: list[tuple[int, int]], answers: dict) -> tuple[int, int]:
    """
    The first and last token of the first answer (SQuAD style: `{"text": [...], "answer_start": [...]}`, character
    positions in the context), or `(0, 0)` (the CLS token) when there is none or the truncated context lacks it.

    Args:
        context_ids (`list[bool]`): Whether each token belongs to the context.
        offsets (`list[tuple[int, int]]`): Each token's characters (the tokenizer's `offset_mapping`).
        answers (`dict`): The row's answers.
    """
    if not answers["text"]:
        return 0, 0
    start = answers["answer_start"][0]
    end = start + len(answers["text"][0])
    tokens = [index for index, in_context in enumerate(context_ids) if in_context]
    if not tokens or offsets[tokens[0]][0] > start or offsets[tokens[-1]][1] < end:
        return 0, 0
    return max(i for i in tokens if offsets[i][0] <= start), min(i for i in tokens if offsets[i][1] >= end)


def prepare_questions(data, train, to_ids) -> tuple:
    """Tokenize each question (`data.question_column`, default `question`) with its context (`data.context_column`,
    default `context`) in one window of `data.max_length` tokens (default 384, at most the model's), truncating the
    context and padded to that length, and label it with the token positions of its answer (`data.answer_column`,
    default `answers`, see `answer_positions`; `to_ids` is not used). A context longer than the window is not split
    into several windows: an answer beyond it is labelled as none."""
    question, context = data.question_column or "question", data.context_column or "context"
    answers = data.answer_column or "answers"
    missing = [name for name in (question, context, answers) if name not in train.column_names]
    if missing:
        raise ValueError(
            f"No question-answering column(s) {missing} in {train.column_names}; set --question_column, "
            "--context_column and --answer_column."
        )
    tokenizer = AutoTokenizer.from_pretrained(data.model_name_or_path)
    context_first = tokenizer.padding_side == "left"  # the context next to the padding, as the tokenizer expects
    side = 0 if context_first else 1
    max_length = min(data.max_length or MAX_LENGTH, tokenizer.model_max_length)

    def tokenize(batch):
        questions = [text.lstrip() for text in batch[question]]
        pair = (batch[context], questions) if context_first else (questions, batch[context])
        encoded = tokenizer(*pair, truncation="only_first" if context_first else "only_second", padding="max_length",
                            max_length=max_length, return_offsets_mapping=True)  # fmt: skip
        offsets = encoded.pop("offset_mapping")
        positions = [
            answer_positions([i == side for i in encoded.sequence_ids(row)], offsets[row], row_answers)
            for row, row_answers in enumerate(batch[answers])
        ]
        encoded["start_positions"] = [start for start, _ in positions]
        encoded["end_positions"] = [end for _, end in positions]
        return encoded

    def prepare(dataset):
        return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)

    return prepare, tokenizer, default_data_collator


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
    metrics=("exact_match", "f1", "nll", "ece"),  # answer spans; NLL and ECE of starts and ends
    head="question_answering",
    peft_task_type="QUESTION_ANS",
    keeps_raw_columns=False,
    prepare_data=prepare_questions,
    check_labels=check_answer_positions,
    wrong_model="Dataset {source} holds questions but {model} is a {model_type!r} model, which has no extractive "
    "question-answering head. Use a model with one.",
    label_columns=(),
    class_labels=False,
)
