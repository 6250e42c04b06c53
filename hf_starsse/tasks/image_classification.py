"""Image classification: `AutoModelForImageClassification`, the `image-classification` pipeline."""

from transformers import AutoImageProcessor, default_data_collator
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from .base import TaskFamily
from .classification import CLASS_PROBABILITIES, CLASSIFICATION_METRICS, check_class_labels


def prepare_images(data, train, to_ids) -> tuple:
    """Run the image processor on `data.image_column` of each split as a dataset transform (on access), labels
    mapped by `to_ids`."""
    column = data.image_column
    if column not in train.column_names:
        raise ValueError(f"No image column {column!r} in {train.column_names}; set --image_column.")
    processor = AutoImageProcessor.from_pretrained(data.model_name_or_path)

    def transform(batch):
        images = [image.convert("RGB") for image in batch[column]]
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": to_ids(batch[data.label_column])}

    def prepare(dataset):
        return dataset.with_transform(transform)

    return prepare, processor, default_data_collator


IMAGE_CLASSIFICATION = TaskFamily(
    name="image-classification",
    auto_class="AutoModelForImageClassification",
    model_mapping=MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    ensemble_class="EnsembleForImageClassification",
    adapter_ensemble_class="AdapterEnsembleForImageClassification",
    ensemble_pipeline="EnsembleImageClassificationPipeline",
    raw_input="image",
    combination=CLASS_PROBABILITIES,
    metrics=CLASSIFICATION_METRICS,
    peft_task_type=None,
    keeps_raw_columns=True,
    prepare_data=prepare_images,
    check_labels=check_class_labels,
    wrong_model="Dataset {source} holds images (column {column!r}) but {model} is a {model_type!r} model, which "
    "does not classify images. Use an image model, or another dataset.",
)
