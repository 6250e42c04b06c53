"""Ensembles as transformers models, registered with the Auto classes on import.

`AutoModelForSequenceClassification.from_pretrained(dir)`, `AutoModelForImageClassification.from_pretrained(dir)` and
`pipeline(..., model=dir)` load saved ensembles once `hf_starsse` is imported; without the library, the saved
`configuration_ensemble.py` / `modeling_ensemble.py` load them with `trust_remote_code=True`. `pipeline()` on an
ensemble takes `return_uncertainty=True` (see `pipelines.py`). Ensembles of PEFT adapters (`AdapterEnsembleFor...`)
need the library and peft to load.
"""

from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

from .build import build_ensemble
from .configuration_ensemble import EnsembleConfig
from .modeling_adapter_ensemble import (
    AdapterEnsembleConfig,
    AdapterEnsembleForImageClassification,
    AdapterEnsembleForSequenceClassification,
)
from .modeling_ensemble import (
    EnsembleClassifierOutput,
    EnsembleForImageClassification,
    EnsembleForSequenceClassification,
)
from .pipelines import EnsembleImageClassificationPipeline, EnsembleTextClassificationPipeline, register_pipelines

AutoConfig.register(EnsembleConfig.model_type, EnsembleConfig, exist_ok=True)
AutoModelForSequenceClassification.register(EnsembleConfig, EnsembleForSequenceClassification, exist_ok=True)
AutoModelForImageClassification.register(EnsembleConfig, EnsembleForImageClassification, exist_ok=True)
AutoConfig.register(AdapterEnsembleConfig.model_type, AdapterEnsembleConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    AdapterEnsembleConfig, AdapterEnsembleForSequenceClassification, exist_ok=True
)
AutoModelForImageClassification.register(AdapterEnsembleConfig, AdapterEnsembleForImageClassification, exist_ok=True)
EnsembleConfig.register_for_auto_class()
EnsembleForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
EnsembleForImageClassification.register_for_auto_class("AutoModelForImageClassification")
register_pipelines()

__all__ = [
    "AdapterEnsembleConfig",
    "AdapterEnsembleForImageClassification",
    "AdapterEnsembleForSequenceClassification",
    "EnsembleClassifierOutput",
    "EnsembleConfig",
    "EnsembleForImageClassification",
    "EnsembleForSequenceClassification",
    "EnsembleImageClassificationPipeline",
    "EnsembleTextClassificationPipeline",
    "build_ensemble",
]
