"""Ensembles as transformers models, registered on import with the Auto class of every task family.

Owns the ensemble configurations and modeling (full members in `configuration_ensemble.py` / `modeling_ensemble.py`,
and `modeling_causal_ensemble.py` for causal language models, which generate; self-contained: they are also saved next
to each ensemble as remote code; PEFT adapter members over one base in `modeling_adapter_ensemble.py`),
`build_ensemble` (`build.py`) and the pipelines with uncertainty (`pipelines.py`).
`AutoModelFor<Task>.from_pretrained(dir)` and `pipeline(..., model=dir)` load saved ensembles once `hf_starsse` is
imported; without the library, `trust_remote_code=True` does (full members). Which Auto class and pipeline go with
which ensemble class is the task registry's (`hf_starsse.tasks`).

May import: `tasks`, `storage`, `adapters`, `run`, `cards`.
"""

from transformers import AutoConfig

from ..tasks import FAMILIES
from .build import build_ensemble
from .configuration_ensemble import EnsembleConfig
from .modeling_adapter_ensemble import (
    ADAPTER_ENSEMBLE_CLASSES,
    AdapterEnsembleConfig,
    AdapterEnsembleForAudioClassification,
    AdapterEnsembleForCausalLM,
    AdapterEnsembleForImageClassification,
    AdapterEnsembleForMultipleChoice,
    AdapterEnsembleForQuestionAnswering,
    AdapterEnsembleForSequenceClassification,
    AdapterEnsembleForTokenClassification,
    MemberBatchCache,
)
from .modeling_causal_ensemble import EnsembleCache, EnsembleCausalLMOutput, EnsembleForCausalLM
from .modeling_ensemble import (
    ENSEMBLE_CLASSES,
    EnsembleClassifierOutput,
    EnsembleForAudioClassification,
    EnsembleForImageClassification,
    EnsembleForMultipleChoice,
    EnsembleForQuestionAnswering,
    EnsembleForSequenceClassification,
    EnsembleForTokenClassification,
)
from .pipelines import (
    EnsembleAudioClassificationPipeline,
    EnsembleImageClassificationPipeline,
    EnsembleTextClassificationPipeline,
    EnsembleTokenClassificationPipeline,
    register_pipelines,
)

AutoConfig.register(EnsembleConfig.model_type, EnsembleConfig, exist_ok=True)
AutoConfig.register(AdapterEnsembleConfig.model_type, AdapterEnsembleConfig, exist_ok=True)
EnsembleConfig.register_for_auto_class()
for family in FAMILIES:
    ensemble_class = ENSEMBLE_CLASSES[family.ensemble_class]
    family.auto_model_class().register(EnsembleConfig, ensemble_class, exist_ok=True)
    family.auto_model_class().register(AdapterEnsembleConfig, ADAPTER_ENSEMBLE_CLASSES[ensemble_class], exist_ok=True)
    ensemble_class.register_for_auto_class(family.auto_class)
register_pipelines()

__all__ = [
    "AdapterEnsembleConfig",
    "AdapterEnsembleForAudioClassification",
    "AdapterEnsembleForCausalLM",
    "AdapterEnsembleForImageClassification",
    "AdapterEnsembleForMultipleChoice",
    "AdapterEnsembleForQuestionAnswering",
    "AdapterEnsembleForSequenceClassification",
    "AdapterEnsembleForTokenClassification",
    "EnsembleAudioClassificationPipeline",
    "EnsembleCache",
    "EnsembleCausalLMOutput",
    "EnsembleClassifierOutput",
    "EnsembleConfig",
    "EnsembleForAudioClassification",
    "EnsembleForCausalLM",
    "EnsembleForImageClassification",
    "EnsembleForMultipleChoice",
    "EnsembleForQuestionAnswering",
    "EnsembleForSequenceClassification",
    "EnsembleForTokenClassification",
    "EnsembleImageClassificationPipeline",
    "EnsembleTextClassificationPipeline",
    "EnsembleTokenClassificationPipeline",
    "MemberBatchCache",
    "build_ensemble",
]
