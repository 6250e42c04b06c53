"""Ensembles of causal language models as `PreTrainedModel`s that generate.

The ensemble's next-token distribution at every position is the (weighted) mean of its members'; it returns it as
logits `log(mean_k softmax(z_k))`, so `GenerationMixin.generate()` decodes from it as from any causal LM: greedy,
sampling and beam search, `max_new_tokens`, stopping criteria, chat templates, the `text-generation` pipeline. Each
member keeps its own KV cache (LoRA adapter ensembles: one cache of their batched rows); `generate()` holds them
together as one `EnsembleCache` (beam search reorders every member's). The output carries the uncertainty of every
token's prediction.
Self-contained (imports only torch and transformers) so that it can travel to the Hub as remote code.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin
from transformers.utils import ModelOutput

from .modeling_ensemble import ENSEMBLE_CLASSES, EnsemblePreTrainedModel, stack_outputs

ASSISTED_ARGUMENTS = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
"""`generate()` arguments of assisted decoding, which verifies a draft against one model's cache."""
GENERATION_UNCERTAINTY = ("predictive_entropy", "mutual_information")
"""The uncertainty of each generated token that `generate(..., output_scores=True)` adds to its output."""


@dataclass
class EnsembleCausalLMOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor`, *optional*): The ensemble's mean negative log-likelihood of the next tokens, when
            `labels` are given (the inputs themselves: the model shifts them; `-100` is ignored).
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`): `log` of the ensemble's
            (calibrated) next-token probabilities at every position.
        member_logits (`torch.FloatTensor` of shape `(num_members, batch_size, sequence_length, vocab_size)`): Each
            member's logits.
        predictive_entropy, expected_entropy, mutual_information, disagreement (`torch.FloatTensor` of shape
            `(batch_size, sequence_length)`): The uncertainty of each next-token prediction (total, aleatoric,
            epistemic, and the fraction of member pairs whose most likely tokens differ), as `EnsembleClassifierOutput`
            defines them.
        cache (`EnsembleCache`, *optional*): The members' KV caches, with `use_cache=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    member_logits: torch.FloatTensor | None = None
    predictive_entropy: torch.FloatTensor | None = None
    expected_entropy: torch.FloatTensor | None = None
    mutual_information: torch.FloatTensor | None = None
    disagreement: torch.FloatTensor | None = None
    cache: "EnsembleCache | None" = None


class EnsembleCache:
    """
    The members' KV caches (transformers `Cache`s, one per member), held by `generate()` as the cache of one model.

    Args:
        caches (`list[Cache]`): Each member's cache, in the members' order.
    """

    is_compileable = False  # generate() compiles the forward only for static caches
    is_croppable = False

    def __init__(self, caches: list):
        self.caches = list(caches)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The number of tokens cached (the same for every member)."""
        return self.caches[0].get_seq_length(layer_idx)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep, in every member's cache, the rows of the beams `beam_idx` selects."""
        for cache in self.caches:
            cache.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row `repeats` times in place, in every member's cache (e.g. a prompt's cache for its
        options)."""
        for cache in self.caches:
            cache.batch_repeat_interleave(repeats)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The mean NLL of `labels[:, 1:]` under the log-probabilities `logits[:, :-1]` (`-100`: ignored)."""
    if labels is None:
        return None
    predicted = logits[:, :-1].reshape(-1, logits.shape[-1])
    return nn.functional.nll_loss(predicted, labels[:, 1:].to(logits.device).reshape(-1), ignore_index=-100)


class EnsembleForCausalLM(EnsemblePreTrainedModel, GenerationMixin):
    """An ensemble of causal language models sharing one architecture and vocabulary: the members' next-token
    probabilities pooled at every position, with the uncertainty of each token; generates as any causal LM (see the
    module); takes the members' inputs."""

    member_auto_class = AutoModelForCausalLM

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """`generate()` must not make one cache for the ensemble: each member makes its own on the first forward."""
        return False

    def post_init(self) -> None:
        """As `PreTrainedModel.post_init`; generation defaults (special tokens, ...) are the members'."""
        super().post_init()
        member = next(
            module for module in self.modules() if module is not self and isinstance(module, GenerationMixin)
        )
        self.generation_config = copy.deepcopy(member.generation_config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: EnsembleCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EnsembleCausalLMOutput:
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      inputs_embeds=inputs_embeds, logits_to_keep=logits_to_keep, **kwargs)  # fmt: skip
        use_cache = bool(use_cache) or cache is not None
        member_logits, cache = self.run_members(
            {key: value for key, value in inputs.items() if value is not None}, cache, use_cache
        )
        pooled = self.combine_member_logits(member_logits)
        output = EnsembleCausalLMOutput(loss=next_token_loss(pooled.logits, labels), cache=cache, **pooled)
        return output if return_dict is not False else output.to_tuple()

    def run_members(
        self, inputs: dict, cache: EnsembleCache | None, use_cache: bool
    ) -> tuple[torch.Tensor, EnsembleCache | None]:
        """The members' logits `(num_members, batch, length, vocab_size)` on `inputs` and, with `use_cache`, their
        caches (`cache`: those of the previous steps); each member runs with its own cache."""
        caches = [None] * self.config.num_members if cache is None else cache.caches
        outputs = self.member_outputs(
            inputs, [{"cache": member_cache, "use_cache": use_cache} for member_cache in caches]
        )
        new_cache = EnsembleCache([member_output.cache for member_output in outputs]) if use_cache else None
        return stack_outputs(outputs, "logits"), new_cache

    def generate(self, *args, **kwargs):
        """
        `GenerationMixin.generate` from the members' pooled next-token distribution; assisted decoding is refused.
        With `return_dict_in_generate=True` and `output_scores=True`, the output also holds the `predictive_entropy`
        and `mutual_information` of each generated token: a tuple with a `(batch_size * num_beams,)` tensor per step,
        as `scores`.
        """
        config = kwargs.get("generation_config") or self.generation_config
        assisted = [name for name in ASSISTED_ARGUMENTS if (kwargs.get(name) or getattr(config, name, None))]
        if assisted:
            raise ValueError(
                f"{type(self).__name__}.generate() cannot take {assisted[0]}: assisted decoding checks a draft "
                "against one model's cache, and an ensemble keeps one per member. Use greedy, sampling or beam search."
            )
        steps = []
        handle = self.register_forward_hook(
            lambda module, args, output: steps.append([output[key][:, -1] for key in GENERATION_UNCERTAINTY])
        )
        try:
            generated = super().generate(*args, **kwargs)
        finally:
            handle.remove()
        if isinstance(generated, ModelOutput) and generated.get("scores") is not None:
            steps = steps[len(steps) - len(generated["scores"]) :]  # the last forwards: chunked prefill makes more
            for position, key in enumerate(GENERATION_UNCERTAINTY):
                generated[key] = tuple(step[position] for step in steps)
        return generated


ENSEMBLE_CLASSES[EnsembleForCausalLM.__name__] = EnsembleForCausalLM  # every family's ensemble class, by name

__all__ = ["EnsembleCache", "EnsembleCausalLMOutput", "EnsembleForCausalLM"]
