"""Adapter members (PEFT, e.g. LoRA): directories as PEFT saves them (`adapter_config.json`,
`adapter_model.safetensors`, processor files) over one base model that none of them holds.

Here: telling adapter directories apart, checking that members fit together, finding their base model (a local path
or a Hub id, `include_base` copies inside saved ensembles), and loading the base ONCE with the K adapters as one
`PeftModel`. `peft` is an optional extra (`pip install hf_starsse[peft]`), imported only when adapters are used.
"""

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from ..errors import MissingDependencyError
from ..storage.saving import processor_files
from ..storage.weights import pickle_weight_files, weight_files, weights_sha256
from ..tasks import family_of_peft_task_type, peft_task_types

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # of every tensor name in an adapter file
# adapter_config.json entries that may differ between members (bookkeeping); the base is compared on its own.
IGNORED_ADAPTER_KEYS = {"inference_mode", "peft_version"}
BASE_KEYS = ("base_model_name_or_path", "revision")
# The files of a base model fetched from the Hub: config, weights, and tokenizer / image-processor files (used when the
# adapter directories carry none).
HUB_BASE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
PEFT_INSTALL = "pip install 'hf_starsse[peft]'"


def require_peft():
    """The `peft` module, or a `MissingDependencyError` (an `ImportError`) saying how to install it."""
    try:
        import peft
    except ImportError:
        raise MissingDependencyError(f"Adapter (PEFT) members need the peft package: {PEFT_INSTALL}") from None
    return peft


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a `peft.PeftModel` (told without importing peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "active_adapter")


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether `path` holds a PEFT adapter (its config or weights) rather than a full `save_pretrained` model."""
    path = Path(path)
    return (path / ADAPTER_CONFIG_NAME).is_file() or any(path.glob("adapter_model.*"))


def check_adapter_dir(path: Path) -> None:
    """Refuse an adapter directory that lacks its config or its safetensors weights, naming the missing file."""
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path} is a PEFT adapter directory without {name}: save adapters with "
                "PeftModel.save_pretrained (safetensors)."
            )


def read_adapter_config(path: Path) -> dict:
    return json.loads((path / ADAPTER_CONFIG_NAME).read_text())


def _comparable(value):
    """Lists of names (target_modules, modules_to_save) are sets to PEFT: compare them sorted."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return sorted(value)
    return value


def check_adapter_members(member_dirs: list[Path]) -> dict:
    """
    Check that the adapters are of a kind PEFT knows and that they share one PEFT configuration and one base model;
    return the first member's `adapter_config.json`.

    Raises:
        `ImportError`: peft is not installed.
        `ValueError`: naming the member and the first differing entry, a different base, or an adapter type (prompt
            learning) that has no per-member weights to ensemble.
    """
    peft = require_peft()
    reference = read_adapter_config(member_dirs[0])
    peft_type = reference.get("peft_type")
    config_class = peft.PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if config_class is None:
        raise ValueError(f"{member_dirs[0]}: peft_type {peft_type!r} is unknown to peft {peft.__version__}.")
    if config_class.from_pretrained(str(member_dirs[0])).is_prompt_learning:
        raise ValueError(
            f"{member_dirs[0]} is a {peft_type} adapter (prompt learning): not supported as an ensemble member; use "
            "adapters that change the model's weights (LoRA, IA3, ...)."
        )
    for member in member_dirs[1:]:
        config = read_adapter_config(member)
        base, base_0 = [tuple(c.get(key) for key in BASE_KEYS) for c in (config, reference)]
        if _base_identity(*base) != _base_identity(*base_0):
            raise ValueError(
                f"Member {member} adapts base model {base[0]!r} (revision {base[1]}), but {member_dirs[0]} adapts "
                f"{base_0[0]!r} (revision {base_0[1]}): the members of an ensemble or soup share one base model."
            )
        for key in sorted((set(reference) | set(config)) - IGNORED_ADAPTER_KEYS - set(BASE_KEYS)):
            if _comparable(reference.get(key)) != _comparable(config.get(key)):
                raise ValueError(
                    f"Member {member} does not match {member_dirs[0]}: {ADAPTER_CONFIG_NAME} differs in {key!r} "
                    f"({config.get(key)!r} vs {reference.get(key)!r}). Adapter members share one PEFT configuration."
                )
    return reference


def _base_identity(reference: str | None, revision: str | None) -> tuple:
    """A base named by path or Hub id; two paths of one local directory name the same base."""
    local = reference is not None and Path(reference).expanduser().is_dir()
    return (Path(reference).expanduser().resolve() if local else reference, revision)


def resolve_base(reference: str, revision: str | None = None, context: str = "") -> Path:
    """
    The local directory of a base model named by a path or a Hub id (downloaded, or found in the Hub cache offline).

    Raises:
        `FileNotFoundError`: the base is neither a local directory nor available from the Hub (offline, unknown id).
    """
    if reference is None:
        raise FileNotFoundError(f"{context}base model None (base_model_name_or_path is empty): pass base_model=.")
    if Path(reference).expanduser().is_dir():
        return Path(reference).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(reference, revision=revision, allow_patterns=HUB_BASE_PATTERNS))
    except Exception as error:  # offline, unknown repository, invalid id, no network: one message for all
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"{context}base model {reference!r} is neither a local directory nor available from the Hub ({reason}). "
            "Make it available at that path or in the Hub cache, or pass base_model= to use another copy."
        ) from None


def base_sha256(base_dir: Path) -> str | None:
    """sha256 of a base model's safetensors weights (None for a base with pickle weights only: not checked)."""
    return weights_sha256(base_dir) if weight_files(base_dir) else None


def copy_base(base_dir: Path, target: Path) -> None:
    """Copy a base model's config and weights (what `resolve_base` needs to load it) into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    files = [base_dir / "config.json", *sorted(base_dir.glob("*.safetensors.index.json"))]
    for file in files + (weight_files(base_dir) or pickle_weight_files(base_dir)):
        shutil.copy2(file, target / file.name)


def processor_source(member_dir: Path, base_dir: Path | None = None) -> Path:
    """Where a member's tokenizer / image-processor files are: its own directory, else (adapters) its base's
    (`base_dir`, or the one its adapter config names)."""
    own = [f for f in processor_files(member_dir) if f.name != "README.md"]
    if own or not is_adapter_dir(member_dir):
        return member_dir
    if base_dir is not None:
        return base_dir
    config = read_adapter_config(member_dir)
    return resolve_base(config.get("base_model_name_or_path"), config.get("revision"), f"{member_dir}: ")


def _architecture(adapter_config: dict, base_config: PretrainedConfig, member: Path) -> str:
    """The classification architecture the adapters were trained on."""
    auto_mapping = adapter_config.get("auto_mapping") or {}
    if getattr(transformers, auto_mapping.get("base_model_class") or "", None) is not None:
        return auto_mapping["base_model_class"]
    family = family_of_peft_task_type(adapter_config.get("task_type"))
    name = family and family.model_mapping.get(base_config.model_type)
    if isinstance(name, str):
        return name
    architecture = (base_config.architectures or [""])[0]
    if "For" in architecture and "Classification" in architecture:
        return architecture
    task_type = adapter_config.get("task_type")
    raise ValueError(
        f"{member}: cannot tell the classifier the adapter was trained on (task_type {task_type!r}, base "
        f"architecture {architecture!r}). Save the member's model config next to the adapter "
        "(model.config.save_pretrained(member_dir)) or use task_type='SEQ_CLS'."
    )


def member_config(member_dirs: list[Path], adapter_config: dict, base_dir: Path) -> PretrainedConfig:
    """
    The members' model config: a `config.json` saved next to the adapters (label names included), else the base's
    config with the classifier architecture and the number of labels of the adapters' own head.
    """
    if (member_dirs[0] / "config.json").is_file():  # the same in every member: checked by `load_members`
        return AutoConfig.from_pretrained(member_dirs[0])
    config = AutoConfig.from_pretrained(base_dir)
    config.architectures = [_architecture(adapter_config, config, member_dirs[0])]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in getattr(transformers, config.architectures[0])(config).state_dict().items()}
    with safe_open(member_dirs[0] / ADAPTER_WEIGHTS_NAME, "pt") as f:
        saved = {key.removeprefix(PEFT_PREFIX): f.get_slice(key).get_shape() for key in f.keys()}
    labels = {
        shape[0]
        for name, shape in saved.items()
        if name in shapes and tuple(shape) != tuple(shapes[name]) and tuple(shape[1:]) == tuple(shapes[name][1:])
    }
    if len(labels) == 1:  # the adapters carry their own head (modules_to_save) of another size than the base's
        config.num_labels = labels.pop()
    return config


def load_adapter_model(
    base_dir: Path, config: PretrainedConfig, member_dirs: list[Path], adapter_names: list[str], **load_kwargs
):
    """
    The base model (architecture and labels of `config`) loaded once from `base_dir`, with each member's adapter
    loaded under its name in `adapter_names`: a `peft.PeftModel` in eval mode.

    Raises:
        `ValueError`: an adapter does not fit the base (different architecture: missing, extra or misshapen
            tensors), or a tensor the base lacks (e.g. a new classifier) is not stored by the adapters.
    """
    peft = require_peft()
    model_class = getattr(transformers, config.architectures[0])
    base, info = model_class.from_pretrained(
        base_dir, config=config, ignore_mismatched_sizes=True, output_loading_info=True, **load_kwargs
    )
    fresh = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
    model = None
    for member, name in zip(member_dirs, adapter_names):
        try:
            if model is None:
                model = peft.PeftModel.from_pretrained(base, str(member), adapter_name=name)
            else:
                model.load_adapter(str(member), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as error:
            reason = str(error).strip().splitlines()[0]
            raise ValueError(f"The adapter in {member} does not fit the base model {base_dir}: {reason}") from None
        _check_loaded(model, name, member, base_dir)
    saved_modules = {
        module_name.removeprefix("base_model.model.")
        for module_name, module in model.named_modules()
        if isinstance(module, peft.utils.ModulesToSaveWrapper)
    }
    uncovered = sorted(key for key in fresh if not any(key.startswith(m + ".") for m in saved_modules))
    if uncovered:
        raise ValueError(
            f"The base model {base_dir} lacks {uncovered[:5]} and the adapters do not store them: the members cannot "
            f"be rebuilt. {modules_to_save_advice(uncovered)}"
        )
    return model.eval()


def modules_to_save_advice(parameter_names: list[str]) -> str:
    """What to do about new parameters of a base model (e.g. a new head) that adapters do not store."""
    owners = {name.rsplit(".", 1)[0] for name in parameter_names}
    modules = sorted(m for m in owners if not any(m.startswith(other + ".") for other in owners))  # outermost
    return (
        f"Add their modules to the adapter, e.g. LoraConfig(modules_to_save={modules}), or use a task_type that adds "
        f"the head ({', '.join(peft_task_types())})."
    )


def _check_loaded(model, name: str, member: Path, base_dir: Path) -> None:
    """Every tensor of the adapter file found its place in the model, and the model expected no other."""
    peft = require_peft()
    expected = set(peft.get_peft_model_state_dict(model, adapter_name=name))
    with safe_open(member / ADAPTER_WEIGHTS_NAME, "pt") as f:
        saved = set(f.keys())
    if saved != expected:
        difference = sorted(saved ^ expected)[:5]
        raise ValueError(
            f"The adapter in {member} does not fit the base model {base_dir}: tensors {difference} are "
            f"{'missing from' if difference[0] in expected else 'unknown to'} it. Is it the base it was trained on?"
        )


def adapter_names(count: int) -> list[str]:
    """The names under which members' adapters are loaded and saved: `member_0`, `member_1`, ..."""
    return [f"member_{index}" for index in range(count)]


@dataclass
class AdapterMembers:
    """Adapter members loaded over their base: the `PeftModel` and where everything came from."""

    model: object  # peft.PeftModel, the base once + the K adapters under `names`
    names: list[str]
    config: PretrainedConfig  # the members' model config (architecture, labels)
    adapter_config: dict  # the members' common adapter_config.json
    base_reference: str  # the base's Hub id or path, as named by the adapters or `base_model`
    base_revision: str | None
    base_dir: Path  # where it was loaded from


def load_adapter_members(
    member_dirs: list[Path], base_model: str | None = None, check_config: Callable | None = None
) -> AdapterMembers:
    """
    Check adapter members (see `check_adapter_members`), find their base (or `base_model`, a Hub id or path) and load
    it once with the K adapters (see `load_adapter_model`).

    Args:
        member_dirs (`list[Path]`): The adapter directories.
        base_model (`str`, *optional*): The base's Hub id or path, when not the one the adapters name.
        check_config (`Callable`, *optional*): Called with the members' model config before anything is loaded
            (e.g. to refuse an architecture).
    """
    adapter_config = check_adapter_members(member_dirs)
    reference = base_model or adapter_config.get("base_model_name_or_path")
    revision = None if base_model else adapter_config.get("revision")
    base_dir = resolve_base(reference, revision, f"The adapters in {member_dirs[0]} name a ")
    config = member_config(member_dirs, adapter_config, base_dir)
    if check_config is not None:
        check_config(config)
    names = adapter_names(len(member_dirs))
    model = load_adapter_model(base_dir, config, member_dirs, names)
    return AdapterMembers(model, names, config, adapter_config, reference, revision, base_dir)
