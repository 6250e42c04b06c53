"""Image or text classification: the one place that tells which task a model does, from its architecture (a class
name such as `BertForSequenceClassification`) or its `model_type`."""

from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

IMAGE_CLASSIFICATION, TEXT_CLASSIFICATION = "image-classification", "text-classification"
MAPPINGS = {
    IMAGE_CLASSIFICATION: MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    TEXT_CLASSIFICATION: MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
}
# The ensembles' own classes (hf_starsse.ensemble), which the Auto mappings list only once registered.
ENSEMBLE_CLASSES = {
    "EnsembleForImageClassification": IMAGE_CLASSIFICATION,
    "EnsembleForSequenceClassification": TEXT_CLASSIFICATION,
}


def _class_names(mapping: dict) -> set[str]:
    """Model class names of an Auto mapping (values are names or tuples of names)."""
    return {name for value in mapping.values() for name in ((value,) if isinstance(value, str) else value)}


def task_of_architecture(architecture: str | None) -> str | None:
    """`"image-classification"`, `"text-classification"`, or `None` for a model class name that is neither."""
    if architecture in ENSEMBLE_CLASSES:
        return ENSEMBLE_CLASSES[architecture]
    return next((task for task, mapping in MAPPINGS.items() if architecture in _class_names(mapping)), None)


def model_type_does(model_type: str | None, task: str) -> bool:
    """Whether transformers has a `task` model (image or text classification) for `model_type`."""
    return model_type in MAPPINGS[task]
