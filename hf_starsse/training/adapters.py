"""What `StarSSETrainer` does differently when the model is a PEFT model (LoRA and other adapters): the checks before
training, the run header fields that pin the base model, loading a member's adapter into the model, the fresh
adapter (and head) of every Local DE member, and the frozen base's BatchNorm statistics held fixed. The base weights
are frozen by PEFT and never written per member.

Members are saved by `Trainer.save_model`, i.e. `PeftModel.save_pretrained`: `adapter_model.safetensors` and
`adapter_config.json` (plus processor files). `peft` is imported only when a PEFT model is given.
"""

import copy
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from ..adapters.peft import (
    ADAPTER_WEIGHTS_NAME,
    BASE_KEYS,
    IGNORED_ADAPTER_KEYS,
    PEFT_PREFIX,
    base_sha256,
    check_adapter_dir,
    is_adapter_dir,
    is_peft_model,
    modules_to_save_advice,
    require_peft,
    resolve_base,
)
from ..storage.atomic_io import atomic_write_text
from ..storage.weights import check_weight_files, load_weights

# LoRA initialisations that draw A at random (B = 0): Local DE members can each draw their own.
RANDOM_LORA_INITS = (True, "gaussian")
# LoRA initialisations that move part of the base's weights into the adapter (prefixes of init_lora_weights values).
BASE_REWRITING_LORA_INITS = ("pissa", "olora", "loftq", "corda")


def _adapter_config(model: nn.Module):
    return model.peft_config[model.active_adapter]


def check_peft_model(model: nn.Module, ensemble_method: str, has_model_init: bool) -> None:
    """
    Refuse PEFT models that cannot be ensemble members: several adapters, prompt learning (no per-member weights to
    average or branch from), a base model that cannot be found again by its name (the adapters reference it), a LoRA
    initialisation that rewrites the base's weights (PiSSA, OLoRA, LoftQ, CorDA: the members would no longer share the
    base on disk), new base parameters the adapter does not save (`check_new_modules_saved`), and, for Local DE
    without `model_init`, an adapter the trainer cannot draw afresh for each member (anything but LoRA with a random
    initialisation).

    Raises:
        `ValueError`: naming the problem and what to do.
    """
    if len(model.peft_config) != 1:
        raise ValueError(
            f"The PEFT model holds {len(model.peft_config)} adapters ({sorted(model.peft_config)}); ensemble members "
            "are trained one adapter at a time. Give StarSSETrainer a model with one adapter (get_peft_model)."
        )
    config = _adapter_config(model)
    if config.is_prompt_learning:
        raise ValueError(
            f"{config.peft_type.value} (prompt learning) adapters are not supported as ensemble members: use an "
            "adapter that changes the model's weights (LoRA, DoRA, IA3, ...)."
        )
    if not config.base_model_name_or_path:
        raise ValueError(
            "The PEFT model's base has no name or path (base_model_name_or_path is empty), so the members' adapters "
            "could not find it again. Save the base with save_pretrained, load it from there with from_pretrained, "
            "then call get_peft_model."
        )
    init = getattr(config, "init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_LORA_INITS):
        raise ValueError(
            f"init_lora_weights={init!r} rewrites the base model's weights in memory, so the members would not share "
            "the base saved on disk that their adapters name. Use init_lora_weights=True or 'gaussian'."
        )
    check_new_modules_saved(model)
    if ensemble_method == "local_de" and not has_model_init:
        if config.peft_type != "LORA" or init not in RANDOM_LORA_INITS:
            raise ValueError(
                f"ensemble_method='local_de' draws every member's adapter afresh, which the trainer does for LoRA "
                f"with a random init (init_lora_weights=True or 'gaussian'), not for {config.peft_type.value} with "
                f"init_lora_weights={init!r}. Pass model_init=... that builds each member's PEFT model instead."
            )


def check_new_modules_saved(model: nn.Module) -> None:
    """
    Refuse a PEFT model whose frozen base holds parameters that `from_pretrained` did not load (e.g. the new head of a
    multiple-choice model wrapped without `task_type`) and that the adapter does not save (`modules_to_save`): they
    would stay at their random initialisation, and ensembles and soups, which load the members' base from its
    checkpoint, could not rebuild them. Models that `from_pretrained` did not load at all are not checked.

    Raises:
        `ValueError`: naming the parameters and the `modules_to_save` that keeps them.
    """
    peft = require_peft()
    saved = [name for name, module in model.named_modules() if isinstance(module, peft.utils.ModulesToSaveWrapper)]
    parameters = [
        (name, p) for name, p in model.named_parameters() if not any(name.startswith(s + ".") for s in saved)
    ]
    if not any(getattr(parameter, "_is_hf_initialized", False) for _, parameter in parameters):
        return
    fresh = [
        name.removeprefix(PEFT_PREFIX)
        for name, parameter in parameters
        if not parameter.requires_grad and not getattr(parameter, "_is_hf_initialized", False)
    ]
    if fresh:
        raise ValueError(
            f"The PEFT model's base has parameters its checkpoint does not hold ({fresh[:5]}) which the adapter "
            "neither trains nor saves: they would stay random, and no ensemble or soup could rebuild the members. "
            + modules_to_save_advice(fresh)
        )


def adapter_header(model: nn.Module) -> dict:
    """
    The run header fields of a PEFT model: its base (`base_model`, a Hub id or absolute path, and its revision), the
    sha256 of the base's safetensors weights, and the adapter configuration (as `adapter_config.json` has it, without
    bookkeeping entries). A local base's path becomes absolute in the model's PEFT config, so that the members'
    `adapter_config.json` name it from any working directory.
    """
    config = _adapter_config(model)
    reference = config.base_model_name_or_path
    local = os.path.isdir(reference)
    if local:  # the members' adapter_config.json then name the base from any working directory
        config.base_model_name_or_path = reference = os.path.abspath(reference)
    base_dir = Path(reference) if local else resolve_base(reference, config.revision, "The PEFT model's ")
    return {
        "base_model": reference,
        "base_model_revision": config.revision,
        "base_model_sha256": base_sha256(base_dir),
        "adapter": adapter_identity(model),
    }


def adapter_identity(model: nn.Module) -> dict:
    """The PEFT model's adapter configuration as the run header records it (JSON values, bookkeeping left out)."""
    config = _adapter_config(model).to_dict()
    kept = {
        k: v for k, v in config.items() if k not in IGNORED_ADAPTER_KEYS | set(BASE_KEYS) and not k.startswith("_")
    }
    return _jsonable(kept)


def check_same_adapter(model: nn.Module, recorded: dict, member: int) -> None:
    """
    Refuse a member whose PEFT config differs from the run's (e.g. a `model_init` that builds another adapter for
    each member): the run's members must share one adapter configuration to be ensembled and souped.
    """
    built = adapter_identity(model)
    differing = sorted(key for key in built.keys() & recorded.keys() if built[key] != recorded[key])
    if differing:
        key = differing[0]
        raise ValueError(
            f"model_init built member {member} with another PEFT config than the run's: {key} is {built[key]!r}, the "
            f"run records {recorded[key]!r}. Build the same config for every member (a fresh LoraConfig each call; "
            "PEFT adds the classifier to a modules_to_save list in place)."
        )


def _jsonable(value):
    """Sets (PEFT keeps target_modules as one) as sorted lists, enums as their values; the rest as is."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(item) for item in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return getattr(value, "value", value) if not isinstance(value, (str, int, float, bool)) else value


def load_member_weights(model: nn.Module, member_dir: str | os.PathLike) -> None:
    """
    Load a saved member into `model` in place: an adapter directory into a PEFT model's active adapter (the base is
    left as it is), a `save_pretrained` directory into a full model (`weights.load_weights`).

    Raises:
        `ValueError`: a full model and an adapter member mixed, or an adapter whose tensors do not fit the model's.
    """
    member_dir = Path(member_dir)
    check_member_kind(model, member_dir)
    if not is_peft_model(model):
        load_weights(model, member_dir)
        return
    peft = require_peft()
    check_adapter_dir(member_dir)
    check_weight_files(member_dir)
    state = load_file(member_dir / ADAPTER_WEIGHTS_NAME)
    expected = set(peft.get_peft_model_state_dict(model, adapter_name=model.active_adapter))
    if set(state) != expected:
        raise ValueError(
            f"The adapter in {member_dir} does not fit the model being trained: tensors "
            f"{sorted(set(state) ^ expected)[:5]} differ. Its adapter_config.json must match the model's PEFT config."
        )
    peft.set_peft_model_state_dict(model, state, adapter_name=model.active_adapter)


def save_member_config(model: nn.Module, member_dir: str | os.PathLike) -> None:
    """
    Write a PEFT model's model config (classifier architecture, label names) as `config.json` next to its saved
    adapter: PEFT saves the adapter alone, and ensembles, soups and evaluations of the run read the class names there.
    """
    base = model.get_base_model()
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]
    atomic_write_text(Path(member_dir) / "config.json", config.to_json_string())


def check_member_kind(model: nn.Module, member_dir: str | os.PathLike) -> None:
    """Refuse a member directory of the other kind than `model` (an adapter for a full model, or the reverse)."""
    if is_adapter_dir(member_dir) != is_peft_model(model):
        kinds = ("a PEFT adapter", "a full model")
        raise ValueError(
            f"{member_dir} holds {kinds[not is_adapter_dir(member_dir)]} but the model being trained is "
            f"{kinds[not is_peft_model(model)]}: a run's members are all adapters over one base, or all full models."
        )


class FreshAdapter:
    """
    The starting adapter of Local DE members over a frozen base: the adapter state as given (before training), with
    LoRA A drawn again by PEFT's own initialisation (B = 0) and new heads (`modules_to_save` modules that
    `from_pretrained` did not load) initialised again, under the seed set for the member.

    Args:
        model (`peft.PeftModel`): The model as given to the trainer.
    """

    def __init__(self, model: nn.Module):
        peft = require_peft()
        self.name = model.active_adapter
        self.state = {
            key: tensor.detach().to("cpu", copy=True)
            for key, tensor in peft.get_peft_model_state_dict(model, adapter_name=self.name).items()
        }
        self.new_heads = [
            wrapper.modules_to_save[self.name]
            for wrapper in model.modules()
            if isinstance(wrapper, peft.utils.ModulesToSaveWrapper)
            and not all(getattr(p, "_is_hf_initialized", False) for p in wrapper.original_module.parameters())
        ]

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Give `model` a fresh adapter and fresh new heads (draws from the current random state)."""
        peft = require_peft()
        peft.set_peft_model_state_dict(model, self.state, adapter_name=self.name)
        init_lora_weights = getattr(_adapter_config(model), "init_lora_weights", True)
        for module in model.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer) and self.name in module.lora_A:
                module.reset_lora_parameters(self.name, init_lora_weights)
        base = model.get_base_model()
        for head in self.new_heads:
            for module in head.modules():
                base._init_weights(module)


def hold_base_batchnorm(model: nn.Module) -> list[RemovableHandle]:
    """
    Keep the BatchNorm layers of a PEFT model's frozen base in eval mode while its adapter trains (their running
    statistics are part of the base, which no member stores): each member is then trained with the statistics it
    is evaluated with, and the base stays the same for every member. BatchNorm layers the adapter trains
    (`modules_to_save`) are left alone. Remove the returned hooks after training.
    """
    frozen = [
        module
        for module in model.modules()
        if isinstance(module, _BatchNorm)
        and module.track_running_stats
        and not any(parameter.requires_grad for parameter in module.parameters())
    ]
    return [module.register_forward_pre_hook(_eval_mode) for module in frozen]


def _eval_mode(module: nn.Module, inputs) -> None:
    module.eval()
