"""Audio classification: `AutoModelForAudioClassification`, the `audio-classification` pipeline."""

from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES

from .base import TaskFamily
from .classification import CLASS_PROBABILITIES, CLASSIFICATION_METRICS, check_class_labels

AUDIO_CLASSIFICATION = TaskFamily(
    name="audio-classification",
    auto_class="AutoModelForAudioClassification",
    model_mapping=MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
    ensemble_class="EnsembleForAudioClassification",
    adapter_ensemble_class="AdapterEnsembleForAudioClassification",
    ensemble_pipeline="EnsembleAudioClassificationPipeline",
    raw_input="audio",
    combination=CLASS_PROBABILITIES,
    metrics=CLASSIFICATION_METRICS,
    peft_task_type=None,
    keeps_raw_columns=False,
    prepare_data=None,
    check_labels=check_class_labels,
    wrong_model="Dataset {source} holds audio (column {column!r}) but {model} is a {model_type!r} model, which does "
    "not classify audio. Use an audio model.",
)
