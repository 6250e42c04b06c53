"""`EnsembleConfig`: the configuration of an ensemble of same-architecture classifiers.

Self-contained (imports only transformers) so that it can travel to the Hub as remote code. Every field is plain JSON.
"""

import math

from transformers import PretrainedConfig

COMBINE_RULES = ("mean_probs",)


class EnsembleConfig(PretrainedConfig):
    r"""
    Configuration of [`EnsembleForSequenceClassification`] and [`EnsembleForImageClassification`].

    Args:
        member_config (`dict`):
            The members' configuration (`config.to_dict()` of the base architecture, `model_type` included).
        num_members (`int`, defaults to 1):
            Number of members K.
        combine (`str`, defaults to `"mean_probs"`):
            How member predictions are combined: `"mean_probs"` averages the members' softmax probabilities.
        member_weights (`list[float]`, *optional*):
            Non-negative weight of each member in the average (default: uniform).
        ensemble_method (`str`, *optional*):
            How the members were trained (`"starsse"`, `"sse"`, `"local_de"`), from the run manifest.
        cycle_hyperparameters (`dict`, *optional*):
            The run's training hyperparameters, from the run manifest.
        members_info (`list[dict]`, *optional*):
            Lineage of each member (index, parent, seed, steps, sha256), from the run manifest.
        temperature (`float`, defaults to 1.0):
            Temperature of the pooled prediction: the ensemble returns `log_softmax(log(mean_k p_k) / temperature)`
            (pool-then-calibrate, set by `calibrate_ensemble`).
        member_temperatures (`list[float]`, *optional*):
            Temperature of each member's logits before pooling (`calibrate_ensemble(..., per_member=True)`).
        variance_scale (`float`, defaults to 1.0):
            Regression members: the factor of the variance of their outputs the ensemble returns (fitted on held-out
            data by `calibrate_ensemble`, so that its nominal intervals cover what they claim).
        calibration (`dict`, *optional*):
            How the temperatures (or the variance scale) were fitted: split, number of samples, metrics before and
            after.
    """

    model_type = "starsse_ensemble"
    member_config: dict | None = None
    num_members: int = 1
    combine: str = "mean_probs"
    member_weights: list[float] | None = None
    ensemble_method: str | None = None
    cycle_hyperparameters: dict | None = None
    members_info: list[dict] | None = None
    temperature: float = 1.0
    member_temperatures: list[float] | None = None
    variance_scale: float = 1.0
    calibration: dict | None = None

    def __post_init__(self, **kwargs):
        member_config = self.member_config or {}
        for key in ("id2label", "label2id", "problem_type"):  # what pipelines read (e.g. sigmoid for multi-label)
            if getattr(self, key, None) is None and member_config.get(key) is not None:
                value = member_config[key]
                setattr(self, key, dict(value) if isinstance(value, dict) else value)
        super().__post_init__(**kwargs)
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"combine={self.combine!r} is unknown; choose one of {COMBINE_RULES}.")
        if self.num_members < 1:
            raise ValueError(f"num_members={self.num_members} must be at least 1.")
        weights = self.member_weights
        valid = weights is None or (
            len(weights) == self.num_members and all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0
        )
        if not valid:
            raise ValueError(
                f"member_weights={weights} must hold {self.num_members} non-negative numbers with a positive sum."
            )
        temperatures = [self.temperature, self.variance_scale, *(self.member_temperatures or ())]
        if not all(math.isfinite(t) and t > 0 for t in temperatures) or len(self.member_temperatures or ()) not in (
            0,
            self.num_members,
        ):
            raise ValueError(
                f"temperature={self.temperature}, variance_scale={self.variance_scale} and member_temperatures="
                f"{self.member_temperatures} must be positive numbers ({self.num_members} member temperatures, or "
                "none)."
            )


__all__ = ["EnsembleConfig"]
