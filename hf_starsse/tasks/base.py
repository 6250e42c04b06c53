"""`TaskFamily`: what hf_starsse knows of one task family, declared in one place (see the package docstring)."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import transformers

from .classification import MULTI_LABEL_METRICS, REGRESSION_METRICS

PROBLEM_METRICS = {"regression": REGRESSION_METRICS, "multi_label_classification": MULTI_LABEL_METRICS}


@dataclass(frozen=True)
class TaskFamily:
    """
    One task family, e.g. sequence classification.

    Args:
        name (`str`): Its `pipeline` task, which is also its Hub `pipeline_tag` (e.g. `"text-classification"`).
        auto_class (`str`): The transformers Auto class of its models (e.g. `"AutoModelForSequenceClassification"`).
        model_mapping (`Mapping`): transformers' `model_type -> class name(s)` mapping of that Auto class.
        ensemble_class (`str`), adapter_ensemble_class (`str`): Its ensemble classes in `hf_starsse.ensemble` (by
            name: the ensemble modules are self-contained, they also travel as remote code).
        ensemble_pipeline (`str`, *optional*): The `hf_starsse.ensemble.pipelines` class that adds uncertainty to its
            pipeline (`None`: transformers has no pipeline for it, e.g. multiple choice, or its stock pipeline serves
            the ensemble unchanged, e.g. text generation).
        raw_input (`str`): What its data holds before the processor: `"text"`, `"words"`, `"choices"`, `"audio"`
            or `"image"`.
        combination (`str`): How member outputs combine into the ensemble's prediction (its model card says so).
        metrics (`tuple[str]`): The metrics that evaluate it, in `evaluate_ensemble`'s rows and on cards.
        peft_task_type (`str`, *optional*): The PEFT `task_type` of its LoRA members, if PEFT has one.
        keeps_raw_columns (`bool`): Its processor runs as a dataset transform, so the Trainer must keep the raw
            columns (`remove_unused_columns=False`).
        prepare_data (`Callable`, *optional*): `prepare_data(data, train, to_ids) -> (prepare, processor,
            data_collator)` for the column options `data` (`hf_starsse.training.data.DataArguments`) and a function
            from dataset labels to class ids; `prepare(split)` turns a raw split into model inputs with `labels`
            (`None`: its data is prepared in Python; the CLI's column options do not describe it yet).
        check_labels (`Callable`): `check_labels(dataset, column, model)` raises a `ValueError` naming labels the
            model cannot learn from (e.g. class ids out of range).
        wrong_model (`str`): The error for a model without this family's head, formatted with `source`, `column`
            (the data's input column), `model` and `model_type`.
        label_columns (`tuple[str]`): The dataset columns that hold its labels when the CLI's `--label_column` is not
            given, the first one present taken (empty: `prepare_data` makes the labels from other columns, e.g. the
            answers of extractive QA).
        class_labels (`bool`): Its labels are classes the model names (`id2label`): the CLI maps the dataset's labels
            to class ids and sizes the model's head by them. `False`: they index the input (a choice, answer
            positions) and the model keeps its head.
        head (`str`): How evaluation reads its outputs: `"classification"` (a distribution per example, or per label
            or a value for multi-label and regression models), `"token"` (a distribution per token) or
            `"question_answering"` (distributions of the answer's start and end over the tokens) or
            `"language_modeling"` (a distribution over the vocabulary of the next token, at every position).
        pipeline_usage (`str`): The lines of a model card that run its `pipeline`, formatted with `task` and
            `repo_id` (shown only where transformers has a pipeline for it).
    """

    name: str
    auto_class: str
    model_mapping: Mapping[str, str | tuple[str, ...]]
    ensemble_class: str
    adapter_ensemble_class: str
    ensemble_pipeline: str | None
    raw_input: str
    combination: str
    metrics: tuple[str, ...]
    peft_task_type: str | None
    keeps_raw_columns: bool
    prepare_data: Callable | None
    check_labels: Callable
    wrong_model: str
    label_columns: tuple[str, ...] = ("label",)
    class_labels: bool = True
    head: str = "classification"
    pipeline_usage: str = 'classifier = pipeline("{task}", model="{repo_id}")'

    @cached_property
    def architectures(self) -> frozenset[str]:
        """The class names it covers: transformers' models of its Auto class and hf_starsse's ensembles."""
        names = {
            name for value in self.model_mapping.values() for name in ((value,) if isinstance(value, str) else value)
        }
        return frozenset(names | {self.ensemble_class, self.adapter_ensemble_class})

    def covers_model_type(self, model_type: str | None) -> bool:
        """Whether transformers has a model of this family for `model_type` (e.g. `"bert"`)."""
        return model_type in self.model_mapping

    def metrics_for(self, problem_type: str | None) -> tuple[str, ...]:
        """Its metrics for models of `problem_type` (`config.problem_type`): regression and multi-label models of a
        classification family are measured by their own."""
        if self.head == "classification" and self.class_labels and problem_type in PROBLEM_METRICS:
            return PROBLEM_METRICS[problem_type]
        return self.metrics

    def auto_model_class(self) -> type:
        """The transformers Auto class itself (e.g. `AutoModelForSequenceClassification`)."""
        return getattr(transformers, self.auto_class)


def indices_outside_rows(dataset, column: str, model) -> tuple[list, int]:
    """The values of `column` that index no position of a row's model input (its choices, or its tokens: the axis
    after the row), sorted, and the number of positions a row has."""
    size = len(dataset[0][model.main_input_name])
    return sorted(value for value in dataset.unique(column) if not 0 <= value < size), size
