"""hf_starsse: ensembles and model soups from one pre-trained checkpoint (Local DE, SSE, StarSSE) for transformers."""

import sys

__version__ = "0.1.0"

from .cards.model_card import save_card_info  # noqa: E402
from .ensemble import (  # noqa: E402
    AdapterEnsembleConfig,
    AdapterEnsembleForAudioClassification,
    AdapterEnsembleForCausalLM,
    AdapterEnsembleForImageClassification,
    AdapterEnsembleForMultipleChoice,
    AdapterEnsembleForQuestionAnswering,
    AdapterEnsembleForSequenceClassification,
    AdapterEnsembleForTokenClassification,
    EnsembleConfig,
    EnsembleForAudioClassification,
    EnsembleForCausalLM,
    EnsembleForImageClassification,
    EnsembleForMultipleChoice,
    EnsembleForQuestionAnswering,
    EnsembleForSequenceClassification,
    EnsembleForTokenClassification,
    build_ensemble,
)
from .evaluation import metrics  # noqa: E402
from .evaluation.calibration import calibrate_ensemble  # noqa: E402
from .evaluation.diagnostics import interpolation_curve  # noqa: E402
from .evaluation.run_evaluation import evaluate_ensemble  # noqa: E402
from .hub.publish import push_ensemble_to_hub  # noqa: E402
from .run.directory import RunDirectory  # noqa: E402
from .run.members import load_members  # noqa: E402
from .soups.average import greedy_soup, uniform_soup  # noqa: E402
from .soups.batchnorm import recalibrate_batchnorm  # noqa: E402
from .storage.weights import load_base_model, load_weights  # noqa: E402
from .training.arguments import StarSSETrainingArguments  # noqa: E402
from .training.schedule import get_cycle_schedule  # noqa: E402
from .training.trainer import StarSSETrainer  # noqa: E402

# Names that need the optional `trl` (`pip install 'hf_starsse[trl]'`): imported when first asked for.
OPTIONAL_TRL_NAMES = ("StarSSESFTConfig", "StarSSESFTTrainer")


def __getattr__(name: str):
    if name in OPTIONAL_TRL_NAMES:
        from .training import sft

        return getattr(sft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `hf_starsse.metrics` (the metric functions) keeps its public module path: `from hf_starsse.metrics import accuracy`.
sys.modules[f"{__name__}.metrics"] = metrics

__all__ = [
    "AdapterEnsembleConfig",
    "AdapterEnsembleForAudioClassification",
    "AdapterEnsembleForCausalLM",
    "AdapterEnsembleForImageClassification",
    "AdapterEnsembleForMultipleChoice",
    "AdapterEnsembleForQuestionAnswering",
    "AdapterEnsembleForSequenceClassification",
    "AdapterEnsembleForTokenClassification",
    "EnsembleConfig",
    "EnsembleForAudioClassification",
    "EnsembleForCausalLM",
    "EnsembleForImageClassification",
    "EnsembleForMultipleChoice",
    "EnsembleForQuestionAnswering",
    "EnsembleForSequenceClassification",
    "EnsembleForTokenClassification",
    "RunDirectory",
    "StarSSETrainer",
    "StarSSETrainingArguments",
    "build_ensemble",
    "calibrate_ensemble",
    "evaluate_ensemble",
    "get_cycle_schedule",
    "greedy_soup",
    "interpolation_curve",
    "load_base_model",
    "load_members",
    "load_weights",
    "push_ensemble_to_hub",
    "recalibrate_batchnorm",
    "save_card_info",
    "uniform_soup",
]
