"""The registered task families and the questions the rest of the package asks of them."""

from .audio_classification import AUDIO_CLASSIFICATION
from .base import TaskFamily
from .image_classification import IMAGE_CLASSIFICATION
from .multiple_choice import MULTIPLE_CHOICE
from .question_answering import QUESTION_ANSWERING
from .sequence_classification import SEQUENCE_CLASSIFICATION
from .text_generation import TEXT_GENERATION
from .token_classification import TOKEN_CLASSIFICATION

FAMILIES: tuple[TaskFamily, ...] = (
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    MULTIPLE_CHOICE,
    QUESTION_ANSWERING,
    AUDIO_CLASSIFICATION,
    IMAGE_CLASSIFICATION,
    TEXT_GENERATION,
)


def family_of_architecture(architecture: str | None) -> TaskFamily | None:
    """The family of a model class name (e.g. `"BertForSequenceClassification"`, or an ensemble class), or `None`."""
    return next((family for family in FAMILIES if architecture in family.architectures), None)


def family_of_model(model) -> TaskFamily | None:
    """The family of a model, or of its config: by the architecture it saves (`config.architectures`), else by its
    class (a model built in memory names none yet)."""
    config = getattr(model, "config", model)
    unsaved = [type(model).__name__] if model is not config else [None]
    return family_of_architecture((getattr(config, "architectures", None) or unsaved)[0])


def family_of_peft_task_type(task_type: str | None) -> TaskFamily | None:
    """The family whose LoRA members PEFT saves with `task_type` (e.g. `"SEQ_CLS"`), or `None`."""
    return next((family for family in FAMILIES if task_type and family.peft_task_type == task_type), None)


def peft_task_types() -> list[str]:
    """The PEFT `task_type`s of the registered families (e.g. `["QUESTION_ANS", "SEQ_CLS", "TOKEN_CLS"]`)."""
    return sorted({family.peft_task_type for family in FAMILIES if family.peft_task_type})


def family_for_input(raw_input: str) -> TaskFamily:
    """The family whose data the CLI prepares from data holding `raw_input` (`"text"`, `"image"`, ...)."""
    prepared = [family for family in FAMILIES if family.prepare_data is not None]
    family = next((family for family in prepared if family.raw_input == raw_input), None)
    if family is None:
        inputs = ", ".join(sorted({family.raw_input for family in prepared}))
        raise ValueError(f"No task family is prepared from {raw_input!r} data; hf_starsse prepares {inputs}.")
    return family


def family_for_task(task: str) -> TaskFamily:
    """The family named by the CLI's `--task` (its pipeline tag, e.g. `"token-classification"`), whose data the CLI
    must prepare."""
    family = next((family for family in FAMILIES if family.name == task), None)
    if family is None or family.prepare_data is None:
        problem = "is not a task family" if family is None else "has no data preparation in the CLI yet"
        prepared = ", ".join(family.name for family in FAMILIES if family.prepare_data is not None)
        raise ValueError(f"--task {task!r} {problem}; choose one of {prepared}.")
    return family


def family_for_model(architecture: str | None, images: bool) -> TaskFamily:
    """
    The family the CLI prepares data for when `--task` is not given: that of the model's head (`architecture`, from
    its config) when the CLI prepares it and its data is images exactly when the dataset's is; else that of the data
    (`family_for_input`: images, or else text, the default of a model without a head).
    """
    head = family_of_architecture(architecture)
    from_data = family_for_input("image" if images else "text")
    if head is not None and head.prepare_data is not None and (head.raw_input == "image") == images:
        return head
    return from_data
