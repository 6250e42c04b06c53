"""The registered task families and the questions the rest of the package asks of them."""

from .base import TaskFamily
from .image_classification import IMAGE_CLASSIFICATION
from .sequence_classification import SEQUENCE_CLASSIFICATION
from .token_classification import TOKEN_CLASSIFICATION

FAMILIES: tuple[TaskFamily, ...] = (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, IMAGE_CLASSIFICATION)


def family_of_architecture(architecture: str | None) -> TaskFamily | None:
    """The family of a model class name (e.g. `"BertForSequenceClassification"`, or an ensemble class), or `None`."""
    return next((family for family in FAMILIES if architecture in family.architectures), None)


def family_of_peft_task_type(task_type: str | None) -> TaskFamily | None:
    """The family whose LoRA members PEFT saves with `task_type` (e.g. `"SEQ_CLS"`), or `None`."""
    return next((family for family in FAMILIES if task_type and family.peft_task_type == task_type), None)


def family_for_input(raw_input: str) -> TaskFamily:
    """The family that trains on data holding `raw_input` (`"text"` or `"image"`)."""
    family = next((family for family in FAMILIES if family.raw_input == raw_input), None)
    if family is None:
        inputs = ", ".join(sorted({family.raw_input for family in FAMILIES}))
        raise ValueError(f"No task family trains on {raw_input!r} data; hf_starsse supports {inputs}.")
    return family
