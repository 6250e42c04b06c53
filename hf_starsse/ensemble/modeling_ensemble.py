"""Ensembles of same-architecture classifiers as `PreTrainedModel`s.

The ensemble predicts the (weighted) mean of its members' softmax probabilities and returns it as logits
`log(mean_k softmax(z_k))` (divided by the pooled temperature and renormalised once calibrated), so the usual
classification heads, losses and pipelines see exactly the ensemble's probabilities. The output also carries the
per-sample uncertainty decomposition of the members' mixture.
Self-contained (imports only torch and transformers) so that it can travel to the Hub as remote code.
"""

import math
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

from .configuration_ensemble import EnsembleConfig


@dataclass
class EnsembleClassifierOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor`, *optional*): Negative log-likelihood of the ensemble, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): `log` of the ensemble's (calibrated)
            probabilities; `(batch_size, sequence_length, num_labels)` for token classification, and so on: every
            shape below has the sequence axis too then (uncertainty per token).
        member_logits (`torch.FloatTensor` of shape `(num_members, batch_size, num_labels)`): Each member's logits.
        predictive_entropy (`torch.FloatTensor` of shape `(batch_size,)`): Total uncertainty: entropy (nats) of the
            members' mean probabilities (before the pooled temperature; member temperatures applied).
        expected_entropy (`torch.FloatTensor` of shape `(batch_size,)`): Aleatoric uncertainty: the members' mean
            entropy.
        mutual_information (`torch.FloatTensor` of shape `(batch_size,)`): Epistemic uncertainty:
            `predictive_entropy - expected_entropy`, non-negative.
        disagreement (`torch.FloatTensor` of shape `(batch_size,)`): Fraction of member pairs whose predicted classes
            differ (0 for one member).
        variance (`torch.FloatTensor` of shape `(batch_size, num_labels)`): Regression members: the (weighted)
            variance of their outputs around the ensemble's mean, the epistemic uncertainty of each prediction (times
            `config.variance_scale` once calibrated).

    Members that do regression (`problem_type="regression"`, or one output) give the (weighted) mean of their outputs
    as `logits` and their `variance`, with an MSE loss; multi-label members give the logits of the mean of their
    per-label sigmoid probabilities, with a binary cross-entropy loss and the uncertainty fields per label
    `(batch_size, num_labels)`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    member_logits: torch.FloatTensor | None = None
    predictive_entropy: torch.FloatTensor | None = None
    expected_entropy: torch.FloatTensor | None = None
    mutual_information: torch.FloatTensor | None = None
    disagreement: torch.FloatTensor | None = None
    variance: torch.FloatTensor | None = None


def stack_outputs(outputs: list, name: str) -> torch.Tensor:
    """The members' outputs `name` (e.g. `logits`) stacked on a new first axis, on the first member's device."""
    values = [output[name] for output in outputs]
    return torch.stack([value.to(values[0].device) for value in values])


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).sum(-1)


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`(K,)` values shaped to broadcast against `like`, whose first axis is the members'."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _decomposition(total: torch.Tensor, aleatoric: torch.Tensor, predictions: torch.Tensor) -> dict:
    """The uncertainty fields of `EnsembleClassifierOutput` from the total and the members' mean entropy and the
    members' predictions `(K, ...)` (class ids, or per-label votes)."""
    count = len(predictions)
    differ = (predictions.unsqueeze(0) != predictions.unsqueeze(1)).float().sum((0, 1))  # ordered pairs
    return {
        "predictive_entropy": total,
        "expected_entropy": aleatoric,
        "mutual_information": (total - aleatoric).clamp_min(0),
        "disagreement": differ / (count * (count - 1)) if count > 1 else torch.zeros_like(total),
    }


def uncertainty_outputs(log_probs: torch.Tensor, log_weights: torch.Tensor, pooled: torch.Tensor) -> dict:
    """The decomposition of `EnsembleClassifierOutput` from member log-probabilities `(K, B, ..., C)`, log-weights
    `(K,)` and the pooled log-probabilities `(B, ..., C)` before the pooled temperature."""
    entropies = _entropy(log_probs)
    aleatoric = (_per_member(log_weights.exp(), entropies) * entropies).sum(0)
    return _decomposition(_entropy(pooled), aleatoric, log_probs.argmax(-1))


class EnsemblePreTrainedModel(PreTrainedModel):
    """Holds `config.num_members` models of the architecture in `config.member_config` and combines their outputs."""

    config_class = EnsembleConfig
    base_model_prefix = "ensemble"
    member_auto_class = None  # builds members whose architecture is not named in transformers

    def __init__(self, config: EnsembleConfig):
        super().__init__(config)
        member_config = AutoConfig.for_model(**config.member_config)
        architecture = (member_config.architectures or [""])[0]
        build_member = getattr(transformers, architecture, None) or self.member_auto_class.from_config
        self.members = nn.ModuleList([build_member(member_config) for _ in range(config.num_members)])
        self.post_init()
        self._register_member_properties()

    def _register_member_properties(self) -> None:
        """`post_init` collects tied weights and placement hints from direct children only; add the members'."""
        for index, member in enumerate(self.members):
            prefix = f"members.{index}."
            tied = {prefix + target: prefix + source for target, source in member.all_tied_weights_keys.items()}
            self.all_tied_weights_keys.update(tied)
            self._no_split_modules.update(member._no_split_modules)
            self._keep_in_fp32_modules.update(member._keep_in_fp32_modules)
            self._keep_in_fp32_modules_strict.update(member._keep_in_fp32_modules_strict)
            self._skip_keys_device_placement.update(member._skip_keys_device_placement)

    def _init_weights(self, module: nn.Module) -> None:
        """The members initialise their own weights; the ensemble adds none."""

    def _log_weights(self, like: torch.Tensor) -> torch.Tensor:
        """The members' log-weights `(K,)` (uniform unless `member_weights`), on `like`'s device and dtype."""
        count = self.config.num_members
        if self.config.member_weights is None:
            return torch.full((count,), -math.log(count), device=like.device, dtype=like.dtype)
        weights = torch.tensor(self.config.member_weights, dtype=torch.float64)
        return torch.log(weights / weights.sum()).to(device=like.device, dtype=like.dtype)

    def _scaled(self, member_logits: torch.Tensor) -> torch.Tensor:
        """Member logits in float32, divided by the members' own temperatures when calibrated per member."""
        scaled = member_logits.float()
        if self.config.member_temperatures is not None:
            temperatures = torch.tensor(self.config.member_temperatures, device=scaled.device)
            scaled = scaled / _per_member(temperatures, scaled)
        return scaled

    @property
    def problem_type(self) -> str:
        """The members' `problem_type`: as configured, else `"regression"` for one output, else single-label."""
        member = self.config.member_config
        if member.get("problem_type"):
            return member["problem_type"]
        return "regression" if len(member.get("id2label") or {"0": 0, "1": 1}) == 1 else "single_label_classification"

    def combine_member_logits(
        self, member_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> EnsembleClassifierOutput:
        """Turn stacked member logits `(K, batch, ..., num_labels)` into the ensemble's output; the loss is the NLL of
        the labels (`-100`: ignored, e.g. special tokens). Regression and multi-label members: see the output."""
        if self.problem_type == "regression":
            return self._combine_regression(member_logits, labels)
        if self.problem_type == "multi_label_classification":
            return self._combine_multi_label(member_logits, labels)
        log_probs = torch.log_softmax(self._scaled(member_logits), dim=-1)
        log_weights = self._log_weights(log_probs)
        pooled = torch.logsumexp(log_probs + _per_member(log_weights, log_probs), dim=0)
        logits = pooled if self.config.temperature == 1 else torch.log_softmax(pooled / self.config.temperature, -1)
        loss = None
        if labels is not None:
            flat = logits.reshape(-1, logits.shape[-1])
            loss = nn.functional.nll_loss(flat, labels.to(logits.device).reshape(-1), ignore_index=-100)
        return EnsembleClassifierOutput(
            loss=loss,
            logits=logits,
            member_logits=member_logits,
            **uncertainty_outputs(log_probs, log_weights, pooled),
        )

    def _combine_regression(
        self, member_logits: torch.Tensor, labels: torch.Tensor | None
    ) -> EnsembleClassifierOutput:
        values = member_logits.float()
        weights = _per_member(self._log_weights(values).exp(), values)
        mean = (weights * values).sum(0)
        variance = (weights * (values - mean) ** 2).sum(0) * self.config.variance_scale
        loss = None if labels is None else nn.functional.mse_loss(mean.squeeze(-1), labels.to(mean).squeeze(-1))
        return EnsembleClassifierOutput(loss=loss, logits=mean, member_logits=member_logits, variance=variance)

    def _combine_multi_label(
        self, member_logits: torch.Tensor, labels: torch.Tensor | None
    ) -> EnsembleClassifierOutput:
        probs = torch.sigmoid(self._scaled(member_logits))
        weights = _per_member(self._log_weights(probs).exp(), probs)
        pooled = (weights * probs).sum(0).clamp(1e-7, 1 - 1e-7)
        logits = torch.logit(pooled) / self.config.temperature
        loss = None if labels is None else nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits))

        def entropy(p: torch.Tensor) -> torch.Tensor:  # of each label's Bernoulli, in nats
            p = p.clamp(1e-7, 1 - 1e-7)
            return -(p * p.log() + (1 - p) * (1 - p).log())

        uncertainty = _decomposition(entropy(pooled), (weights * entropy(probs)).sum(0), probs > 0.5)
        return EnsembleClassifierOutput(loss=loss, logits=logits, member_logits=member_logits, **uncertainty)

    def member_outputs(self, inputs: dict, member_inputs: list[dict] | None = None) -> list:
        """Each member's output for the members' `inputs` and its own `member_inputs[k]` (e.g. its KV cache)."""
        member_inputs = member_inputs or [{} for _ in self.members]
        return [member(**inputs, **own, return_dict=True) for member, own in zip(self.members, member_inputs)]

    def member_logits(self, inputs: dict) -> torch.Tensor:
        """Each member's logits for the members' `inputs`, stacked: `(K, batch, num_labels)`."""
        return stack_outputs(self.member_outputs(inputs), "logits")

    def _forward_members(self, inputs: dict, labels: torch.Tensor | None):
        return_dict = inputs.pop("return_dict", None)
        inputs = {key: value for key, value in inputs.items() if value is not None}
        output = self.combine_member_logits(self.member_logits(inputs), labels)
        return output if return_dict is not False else output.to_tuple()


class EnsembleForSequenceClassification(EnsemblePreTrainedModel):
    """An ensemble of sequence classifiers sharing one architecture; takes the members' inputs."""

    member_auto_class = AutoModelForSequenceClassification

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> EnsembleClassifierOutput:
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return self._forward_members(inputs, labels)


class EnsembleForTokenClassification(EnsembleForSequenceClassification):
    """An ensemble of token classifiers sharing one architecture: the members' probabilities pooled for each token,
    with the uncertainty of each token; takes the members' inputs."""

    member_auto_class = AutoModelForTokenClassification
    problem_type = "single_label_classification"  # whatever num_labels says: a distribution per token


class EnsembleForMultipleChoice(EnsembleForSequenceClassification):
    """An ensemble of multiple-choice models sharing one architecture: the members' probabilities over the choices
    pooled; takes the members' inputs, `(batch, choices, length)`."""

    member_auto_class = AutoModelForMultipleChoice
    problem_type = "single_label_classification"  # a distribution over the choices (one score each)


class EnsembleForAudioClassification(EnsemblePreTrainedModel):
    """An ensemble of audio classifiers sharing one architecture; takes the members' inputs (`input_values`, or e.g.
    `input_features`)."""

    main_input_name = "input_values"
    member_auto_class = AutoModelForAudioClassification

    def forward(
        self, input_values: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs
    ) -> EnsembleClassifierOutput:
        return self._forward_members(dict(input_values=input_values, **kwargs), labels)


@dataclass
class EnsembleQuestionAnsweringOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor`, *optional*): The mean of the ensemble's NLL of the start and end positions.
        start_logits, end_logits (`torch.FloatTensor` of shape `(batch_size, sequence_length)`): `log` of the
            members' mean probabilities of each token starting / ending the answer.
        member_start_logits, member_end_logits (`torch.FloatTensor` of shape `(num_members, batch_size,
            sequence_length)`): Each member's.
        start_mutual_information, end_mutual_information (`torch.FloatTensor` of shape `(batch_size,)`): Epistemic
            uncertainty of where the answer starts / ends (see `EnsembleClassifierOutput`).
    """

    loss: torch.FloatTensor | None = None
    start_logits: torch.FloatTensor | None = None
    end_logits: torch.FloatTensor | None = None
    member_start_logits: torch.FloatTensor | None = None
    member_end_logits: torch.FloatTensor | None = None
    start_mutual_information: torch.FloatTensor | None = None
    end_mutual_information: torch.FloatTensor | None = None


class EnsembleForQuestionAnswering(EnsembleForSequenceClassification):
    """An ensemble of extractive question-answering models sharing one architecture: the members' probabilities of
    the answer's start and of its end pooled separately; takes the members' inputs."""

    member_auto_class = AutoModelForQuestionAnswering
    problem_type = "single_label_classification"  # distributions of the answer's start and end over the tokens

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EnsembleQuestionAnsweringOutput:
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        outputs = self.member_outputs({key: value for key, value in inputs.items() if value is not None})
        start = self.combine_member_logits(stack_outputs(outputs, "start_logits"), start_positions)
        end = self.combine_member_logits(stack_outputs(outputs, "end_logits"), end_positions)
        output = EnsembleQuestionAnsweringOutput(
            loss=None if start.loss is None or end.loss is None else (start.loss + end.loss) / 2,
            start_logits=start.logits, end_logits=end.logits, member_start_logits=start.member_logits,
            member_end_logits=end.member_logits, start_mutual_information=start.mutual_information,
            end_mutual_information=end.mutual_information,
        )  # fmt: skip
        return output if return_dict is not False else output.to_tuple()


class EnsembleForImageClassification(EnsemblePreTrainedModel):
    """An ensemble of image classifiers sharing one architecture; takes the members' inputs."""

    main_input_name = "pixel_values"
    member_auto_class = AutoModelForImageClassification

    def forward(
        self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs
    ) -> EnsembleClassifierOutput:
        return self._forward_members(dict(pixel_values=pixel_values, **kwargs), labels)


ENSEMBLE_CLASSES = {
    cls.__name__: cls
    for cls in (
        EnsembleForSequenceClassification,
        EnsembleForTokenClassification,
        EnsembleForMultipleChoice,
        EnsembleForQuestionAnswering,
        EnsembleForAudioClassification,
        EnsembleForImageClassification,
    )
}

__all__ = [
    "EnsembleClassifierOutput",
    "EnsembleForAudioClassification",
    "EnsembleForImageClassification",
    "EnsembleForMultipleChoice",
    "EnsembleForQuestionAnswering",
    "EnsembleForSequenceClassification",
    "EnsembleForTokenClassification",
    "EnsemblePreTrainedModel",
]
