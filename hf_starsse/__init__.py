"""hf_starsse: ensembles and model soups from one pre-trained checkpoint (Local DE, SSE, StarSSE) for transformers."""

__version__ = "0.1.0"

from .calibration import calibrate_ensemble  # noqa: E402
from .cards import save_card_info  # noqa: E402
from .diagnostics import interpolation_curve  # noqa: E402
from .ensemble import (  # noqa: E402
    AdapterEnsembleConfig,
    AdapterEnsembleForImageClassification,
    AdapterEnsembleForSequenceClassification,
    EnsembleConfig,
    EnsembleForImageClassification,
    EnsembleForSequenceClassification,
    build_ensemble,
)
from .evaluation import evaluate_ensemble  # noqa: E402
from .hub import push_ensemble_to_hub  # noqa: E402
from .members import load_members  # noqa: E402
from .run_dir import RunDirectory  # noqa: E402
from .schedule import get_cycle_schedule  # noqa: E402
from .soups import greedy_soup, recalibrate_batchnorm, uniform_soup  # noqa: E402
from .trainer import StarSSETrainer  # noqa: E402
from .training_args import StarSSETrainingArguments  # noqa: E402
from .weights import load_base_model, load_weights  # noqa: E402

__all__ = [
    "AdapterEnsembleConfig",
    "AdapterEnsembleForImageClassification",
    "AdapterEnsembleForSequenceClassification",
    "EnsembleConfig",
    "EnsembleForImageClassification",
    "EnsembleForSequenceClassification",
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
