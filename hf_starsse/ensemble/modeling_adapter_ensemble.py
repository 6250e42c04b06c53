"""Ensembles of PEFT adapters over one base model: the base held ONCE plus K adapters.

The output conventions are those of the full-model ensembles (`EnsembleFor...Classification`, which these classes
extend): logits `log(mean_k softmax(z_k))`, each member's logits in `member_logits`, an NLL loss with `labels`. A saved
adapter ensemble holds its config, the K adapters as PEFT saves them (`adapters/member_k/`) and a reference to the
base model (Hub id or path, with the sha256 of its weights); with `include_base=True` also a copy of the base
(`base/`), for offline use. `AutoModelFor...from_pretrained(dir)` and `pipeline(model=dir)` load it once `hf_starsse`
is imported; peft must be installed (`pip install hf_starsse[peft]`).
"""

import copy
import os
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel

from ..adapters.peft import base_sha256, copy_base, load_adapter_model, require_peft, resolve_base
from .configuration_ensemble import EnsembleConfig
from .modeling_causal_ensemble import EnsembleCache, EnsembleForCausalLM
from .modeling_ensemble import (
    EnsembleForAudioClassification,
    EnsembleForImageClassification,
    EnsembleForMultipleChoice,
    EnsembleForQuestionAnswering,
    EnsembleForSequenceClassification,
    EnsembleForTokenClassification,
)

ADAPTERS_DIR = "adapters"
BASE_DIR = "base"
# from_pretrained arguments that concern loading the base model's weights; the others concern finding the ensemble.
BASE_LOAD_KWARGS = ("dtype", "torch_dtype", "device_map", "attn_implementation")
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
# The tensor inputs of a causal LM whose first axis is the batch's: repeated once per member in a mixed-adapter batch.
BATCH_INPUTS = ("input_ids", "attention_mask", "position_ids", "inputs_embeds", "token_type_ids")


class AdapterEnsembleConfig(EnsembleConfig):
    r"""
    Configuration of [`AdapterEnsembleForSequenceClassification`] and [`AdapterEnsembleForImageClassification`]: the
    fields of [`EnsembleConfig`] plus where the base model is.

    Args:
        base_model (`str`): Hub id or path of the base model the adapters were trained on.
        base_revision (`str`, *optional*): Its Hub revision.
        base_sha256 (`str`, *optional*): sha256 of the base's weight files, checked when the ensemble is loaded.
        include_base (`bool`, defaults to `False`): The saved ensemble holds a copy of the base (`base/`).
        adapter_names (`list[str]`): The members' adapter names (also their folders under `adapters/`).
        peft_type (`str`, *optional*): The adapters' PEFT method (`"LORA"`, ...).
    """

    model_type = "starsse_adapter_ensemble"
    _auto_class = None  # no remote code: loading needs hf_starsse and peft
    base_model: str | None = None
    base_revision: str | None = None
    base_sha256: str | None = None
    include_base: bool = False
    adapter_names: list[str] | None = None
    peft_type: str | None = None


class AdapterEnsembleMixin:
    """The base model loaded once with K adapters (a `peft.PeftModel`, in `self.peft_model`); members are its
    adapters, run one after the other on the batch."""

    config_class = AdapterEnsembleConfig
    base_model_prefix = "peft_model"
    _auto_class = None

    def __init__(self, config: AdapterEnsembleConfig, peft_model=None, base_dir: str | os.PathLike | None = None):
        if peft_model is None:
            raise ValueError(
                "Adapter ensembles hold a pre-trained base model: load one with from_pretrained(dir) or build one "
                "with hf_starsse.build_ensemble(adapter_dirs)."
            )
        PreTrainedModel.__init__(self, config)  # not EnsemblePreTrainedModel's: no full members to build
        self.peft_model = peft_model
        self.base_dir = None if base_dir is None else Path(base_dir)
        self.post_init()

    def init_weights(self) -> None:
        """Nothing to initialise or tie: the base model and the adapters come loaded (`post_init` would otherwise
        re-initialise the adapter weights, which the base model's loading did not mark as loaded)."""

    def member_outputs(self, inputs: dict, member_inputs: list[dict] | None = None) -> list:
        """The adapters one after the other on the batch, each with its own `member_inputs[k]` (e.g. its KV cache).
        PEFT's mixed-adapter batch (the batch repeated K times, routed with `adapter_names`) was measured too and was
        slower in most cases, up to 2x (it also excludes DoRA): see benchmarks/peft_members.py. Causal LMs decoding
        with a cache are the exception (`AdapterEnsembleForCausalLM.run_members`)."""
        outputs = []
        for name, own in zip(self.config.adapter_names, member_inputs or [{} for _ in self.config.adapter_names]):
            self.peft_model.set_adapter(name, inference_mode=True)
            outputs.append(self.peft_model(**inputs, **own, return_dict=True))
        return outputs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, config=None, **kwargs):
        """
        Load a saved adapter ensemble: its base model (the copy inside it, else the one it references, whose weights
        must have the recorded sha256) with its K adapters.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): The saved ensemble (directory or Hub id).
            config (`AdapterEnsembleConfig`, *optional*): Its config (default: read from the directory).
            kwargs: `dtype`, `device_map` and `attn_implementation` apply to the base model; `revision`, `token`,
                `cache_dir`, `local_files_only` and `force_download` to fetching the ensemble from the Hub.
        """
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
            path = Path(snapshot_download(str(pretrained_model_name_or_path), **hub_kwargs))
        config = config if isinstance(config, AdapterEnsembleConfig) else AdapterEnsembleConfig.from_pretrained(path)
        adapter_dirs = [path / ADAPTERS_DIR / name for name in config.adapter_names]
        for adapter_dir in adapter_dirs:
            if not adapter_dir.is_dir():
                raise FileNotFoundError(f"{adapter_dir} is missing: {path} is not a complete adapter ensemble.")
        if config.include_base:
            base_dir = path / BASE_DIR
        else:
            base_dir = resolve_base(
                config.base_model, config.base_revision, f"{path} was saved without its base (include_base=False) and "
            )
        check_base(base_dir, config)
        load_kwargs = {key: kwargs[key] for key in BASE_LOAD_KWARGS if kwargs.get(key) is not None}
        peft_model = load_adapter_model(
            base_dir, member_config_of(config), adapter_dirs, config.adapter_names, **load_kwargs
        )
        return cls(config, peft_model, base_dir).eval()

    def save_pretrained(self, save_directory: str | os.PathLike, include_base: bool | None = None, **kwargs) -> None:
        """
        Save the config, the K adapters (`adapters/<name>/`, as PEFT saves them) and, with `include_base` (default:
        `config.include_base`), a copy of the base model (`base/`). Other arguments of `PreTrainedModel.
        save_pretrained` are not used.
        """
        require_peft()
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.include_base = self.config.include_base if include_base is None else include_base
        if config.include_base:
            if self.base_dir is None:
                raise ValueError("This ensemble does not know where its base model is; it cannot include it.")
            copy_base(self.base_dir, save_directory / BASE_DIR)
        config.save_pretrained(save_directory)
        self.peft_model.save_pretrained(str(save_directory / ADAPTERS_DIR))
        (save_directory / ADAPTERS_DIR / "README.md").unlink(missing_ok=True)  # PEFT's card of the adapters


def member_config_of(config: AdapterEnsembleConfig):
    """The members' transformers config (architecture and labels) stored in an ensemble's config."""
    return AutoConfig.for_model(**config.member_config)


def check_base(base_dir: Path, config: AdapterEnsembleConfig) -> None:
    """Refuse a base whose weights are not those the ensemble was built on."""
    if config.base_sha256 is not None and base_sha256(base_dir) != config.base_sha256:
        raise ValueError(
            f"The base model at {base_dir} is not the one this adapter ensemble was built on (the sha256 of its "
            f"weights differs from the recorded {config.base_sha256[:16]}...): the adapters only fit their own base."
        )


class AdapterEnsembleForSequenceClassification(AdapterEnsembleMixin, EnsembleForSequenceClassification):
    """An ensemble of PEFT adapters over one sequence-classification base model; takes the base's inputs."""


class AdapterEnsembleForTokenClassification(AdapterEnsembleMixin, EnsembleForTokenClassification):
    """An ensemble of PEFT adapters over one token-classification base model; takes the base's inputs."""


class AdapterEnsembleForMultipleChoice(AdapterEnsembleMixin, EnsembleForMultipleChoice):
    """An ensemble of PEFT adapters over one multiple-choice base model; takes the base's inputs."""


class AdapterEnsembleForQuestionAnswering(AdapterEnsembleMixin, EnsembleForQuestionAnswering):
    """An ensemble of PEFT adapters over one extractive question-answering base model; takes the base's inputs."""


class AdapterEnsembleForAudioClassification(AdapterEnsembleMixin, EnsembleForAudioClassification):
    """An ensemble of PEFT adapters over one audio-classification base model; takes the base's inputs."""


class AdapterEnsembleForImageClassification(AdapterEnsembleMixin, EnsembleForImageClassification):
    """An ensemble of PEFT adapters over one image-classification base model; takes the base's inputs."""


def _batch_rows(inputs: dict) -> int:
    """The batch size of a causal LM's `inputs` (the first axis of its first batch input)."""
    return next(inputs[key] for key in BATCH_INPUTS if key in inputs).shape[0]


class MemberBatchCache(EnsembleCache):
    """
    The KV cache of members run as one batch: one cache whose rows are member 0's batch, then member 1's, and so on.

    Args:
        cache (`Cache`): The cache of the batch of all members.
        num_members (`int`): The members in it.
    """

    def __init__(self, cache, num_members: int):
        super().__init__([cache])
        self.num_members = num_members

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep, in every member's rows, those of the beams `beam_idx` selects."""
        rows = beam_idx.numel()
        self.caches[0].reorder_cache(torch.cat([beam_idx + member * rows for member in range(self.num_members)]))


class AdapterEnsembleForCausalLM(AdapterEnsembleMixin, EnsembleForCausalLM):
    """An ensemble of PEFT adapters over one causal language model; generates as `EnsembleForCausalLM` does; takes
    the base's inputs. With a KV cache (`generate()`), LoRA adapters run as one mixed-adapter batch with one cache
    (`MemberBatchCache`); other adapters one after the other, each with its own cache."""

    batch_members = True
    """Run LoRA adapters as one mixed-adapter batch when decoding with a cache (see `run_members`); `False`: one after
    the other, each with its own cache (a long prompt's forward then holds one member's activations at a time)."""

    def run_members(
        self, inputs: dict, cache: EnsembleCache | None, use_cache: bool
    ) -> tuple[torch.Tensor, EnsembleCache | None]:
        """
        As `EnsembleForCausalLM.run_members`. With a cache, LoRA adapters (without DoRA, in eval mode) run in ONE
        forward of the inputs repeated K times, each copy routed to its adapter (PEFT's mixed-adapter batch): a
        decoding step then reads the base's weights once rather than K times (over 2x faster for K = 4 on CPU, see
        benchmarks/generation_speed.py). Forwards without a cache (scoring, training) run the adapters one after the
        other, as the other ensembles do.
        """
        if not isinstance(cache, MemberBatchCache) and not (cache is None and use_cache and self._batches(inputs)):
            return super().run_members(inputs, cache, use_cache)
        num_members, rows = self.config.num_members, _batch_rows(inputs)
        repeated = {key: value.repeat(num_members, *[1] * (value.dim() - 1)) if key in BATCH_INPUTS else value
                    for key, value in inputs.items()}  # fmt: skip
        output = self.peft_model(
            **repeated,
            adapter_names=[name for name in self.config.adapter_names for _ in range(rows)],
            cache=None if cache is None else cache.caches[0],
            use_cache=True,
            return_dict=True,
        )
        logits = output.logits.reshape(num_members, rows, *output.logits.shape[1:])
        return logits, MemberBatchCache(output.cache, num_members)

    def _batches(self, inputs: dict) -> bool:
        """Whether the adapters run as one mixed-adapter batch on `inputs`: `batch_members`, LoRA without DoRA, eval
        mode, and no tensor input but those whose first axis is the batch's."""
        configs = [self.peft_model.peft_config[name] for name in self.config.adapter_names]
        lora = self.config.peft_type == "LORA" and not any(config.use_dora for config in configs)
        rows = _batch_rows(inputs)
        batch_first = all(
            key in BATCH_INPUTS and value.shape[0] == rows for key, value in inputs.items() if torch.is_tensor(value)
        )  # e.g. position_ids of one row broadcast to the batch: not repeated per member, so the loop
        return self.batch_members and lora and batch_first and not self.training


ADAPTER_ENSEMBLE_CLASSES = {
    EnsembleForSequenceClassification: AdapterEnsembleForSequenceClassification,
    EnsembleForTokenClassification: AdapterEnsembleForTokenClassification,
    EnsembleForMultipleChoice: AdapterEnsembleForMultipleChoice,
    EnsembleForQuestionAnswering: AdapterEnsembleForQuestionAnswering,
    EnsembleForAudioClassification: AdapterEnsembleForAudioClassification,
    EnsembleForImageClassification: AdapterEnsembleForImageClassification,
    EnsembleForCausalLM: AdapterEnsembleForCausalLM,
}

__all__ = [
    "AdapterEnsembleConfig",
    "AdapterEnsembleForAudioClassification",
    "AdapterEnsembleForCausalLM",
    "AdapterEnsembleForMultipleChoice",
    "AdapterEnsembleForQuestionAnswering",
    "AdapterEnsembleForImageClassification",
    "AdapterEnsembleForSequenceClassification",
    "AdapterEnsembleForTokenClassification",
    "MemberBatchCache",
]
