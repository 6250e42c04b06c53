"""`build_ensemble`: an ensemble model from a run directory or member directories."""

import os
from pathlib import Path

from transformers import GenerationConfig, PreTrainedModel
from transformers.utils import GENERATION_CONFIG_NAME

from ..adapters.peft import base_sha256, is_adapter_dir, load_adapter_members, processor_source
from ..cards.model_card import ensemble_card
from ..run.directory import run_manifest
from ..run.members import (
    IGNORED_CONFIG_KEYS,
    check_base_sha256,
    check_member_configs,
    copy_member_tensors,
    load_members,
)
from ..storage.saving import check_out_dir, save_model_dir
from ..tasks import FAMILIES, family_of_architecture
from .configuration_ensemble import EnsembleConfig
from .modeling_adapter_ensemble import ADAPTER_ENSEMBLE_CLASSES, AdapterEnsembleConfig
from .modeling_ensemble import ENSEMBLE_CLASSES


def _ensemble_class(member_config: dict) -> type[PreTrainedModel]:
    architecture = (member_config.get("architectures") or [None])[0]
    family = family_of_architecture(architecture)
    if family is not None:
        return ENSEMBLE_CLASSES[family.ensemble_class]
    supported = ", ".join(f"{family.name} ({family.auto_class})" for family in FAMILIES)
    raise ValueError(f"Member architecture {architecture!r} is of no task family ensembles support: {supported}.")


def _use_member_generation_config(model: PreTrainedModel, member_dir: Path) -> None:
    """An ensemble that generates takes its first member's generation defaults (special tokens, `use_cache`, ...),
    which its members built from their model config lack."""
    if model.can_generate() and (member_dir / GENERATION_CONFIG_NAME).is_file():
        model.generation_config = GenerationConfig.from_pretrained(member_dir)


def _manifest_fields(source, positions: list[int]) -> dict:
    """Method, hyperparameters and member lineage from the run manifest, when `source` is a run directory."""
    manifest = run_manifest(source)
    if manifest is None:
        return {}
    return {
        "ensemble_method": manifest.get("ensemble_method"),
        "cycle_hyperparameters": manifest.get("hyperparameters"),
        "members_info": [manifest["members"][position] for position in positions],
    }


def _adapter_ensemble(source, member_dirs: list, config_fields: dict, base_model: str | None) -> PreTrainedModel:
    """The base loaded once with the members' adapters, as an `AdapterEnsembleFor...` model; a run's base (or the
    copy given as `base_model`) is checked against the sha256 its manifest records."""
    loaded = load_adapter_members(member_dirs, base_model, lambda config: _ensemble_class(config.to_dict()))
    found = base_sha256(loaded.base_dir)
    manifest = run_manifest(source)
    if manifest is not None:
        check_base_sha256(loaded.base_dir, manifest, source, found)
    member_config = {key: value for key, value in loaded.config.to_dict().items() if key not in IGNORED_CONFIG_KEYS}
    config = AdapterEnsembleConfig(
        member_config=member_config,
        base_model=loaded.base_reference,
        base_revision=loaded.base_revision,
        base_sha256=found,
        adapter_names=loaded.names,
        peft_type=loaded.adapter_config.get("peft_type"),
        **config_fields,
    )
    return ADAPTER_ENSEMBLE_CLASSES[_ensemble_class(member_config)](config, loaded.model, loaded.base_dir)


def build_ensemble(
    source,
    out_dir: str | os.PathLike | None = None,
    members: list[int] | None = None,
    member_weights: list[float] | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    include_base: bool = False,
    base_model: str | None = None,
) -> PreTrainedModel:
    """
    Build an ensemble model (`EnsembleForSequenceClassification` or `EnsembleForImageClassification`) whose members
    are the given checkpoints, checked for matching configs, tensors and finite values before use. Members that are
    PEFT adapters give an `AdapterEnsembleFor...` model holding their base model once plus the K adapters.

    Args:
        source (`str`, `os.PathLike` or `list`): A run directory (hashes verified) or a list of member directories
            (`save_pretrained` directories, or PEFT adapter directories over one base model).
        out_dir (`str` or `os.PathLike`, *optional*): Save the ensemble here, atomically, with the first member's
            processor files: `AutoModelFor...from_pretrained(out_dir)` and `pipeline(model=out_dir)` load it.
        members (`list[int]`, *optional*): Positions (in `load_members` order) of the members to use, e.g. `[0, 1]`
            for the ensemble of size 2. Default: all.
        member_weights (`list[float]`, *optional*): Weights of the members in the average (default: uniform).
        overwrite (`bool`, *optional*, defaults to `False`): Replace a non-empty `out_dir`.
        allow_pickle (`bool`, *optional*, defaults to `False`): Accept members with only pickle weights (see
            `load_members`).
        include_base (`bool`, *optional*, defaults to `False`): Adapter members: save a copy of the base model in
            `out_dir` too (offline use); by default the saved ensemble references it (Hub id or path).
        base_model (`str`, *optional*): Adapter members: the base model's Hub id or path, when not the one their
            `adapter_config.json` names (e.g. a local copy); for a run directory, its weights must have the sha256
            the run's manifest records.

    Returns:
        [`~transformers.PreTrainedModel`]: The ensemble, in eval mode.
    """
    member_dirs = load_members(source, allow_pickle)
    if out_dir is not None:
        check_out_dir(out_dir, member_dirs, overwrite)
    positions = list(range(len(member_dirs))) if members is None else list(members)
    outside = [position for position in positions if not 0 <= position < len(member_dirs)]
    if outside or not positions or len(set(positions)) < len(positions):
        raise ValueError(f"members={members}: choose distinct positions in 0..{len(member_dirs) - 1} (one at least).")
    member_dirs = [member_dirs[position] for position in positions]
    fields = dict(num_members=len(member_dirs), member_weights=member_weights, **_manifest_fields(source, positions))
    if is_adapter_dir(member_dirs[0]):
        model = _adapter_ensemble(source, member_dirs, dict(fields, include_base=include_base), base_model)
    elif include_base or base_model is not None:
        raise ValueError("include_base and base_model are for PEFT adapter members; these are full models.")
    else:
        member_config = check_member_configs(member_dirs)
        member_config = {key: value for key, value in member_config.items() if key not in IGNORED_CONFIG_KEYS}
        model = _ensemble_class(member_config)(EnsembleConfig(member_config=member_config, **fields))
        copy_member_tensors(list(model.members), member_dirs)
        _use_member_generation_config(model, member_dirs[0])
    model.eval()
    if out_dir is not None:
        card = str(ensemble_card(model, source))
        processors = processor_source(member_dirs[0], getattr(model, "base_dir", None))
        save_model_dir(model, out_dir, processors, {"README.md": card}, overwrite=overwrite)
    return model
