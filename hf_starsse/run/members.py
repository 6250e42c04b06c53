"""Members of an ensemble on disk: finding them, checking that they fit together, and streaming their tensors."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..adapters.peft import base_sha256, check_adapter_dir, is_adapter_dir, resolve_base
from ..storage.weights import check_weight_files, pickle_weight_files, untied_missing, weight_files
from .directory import MANIFEST_NAME, RunDirectory

# Config entries allowed to differ between members.
IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version"}


def load_members(source: str | os.PathLike | list[str | os.PathLike], allow_pickle: bool = False) -> list[Path]:
    """
    The member directories of an ensemble, in order, checked before anything is loaded from them.

    Args:
        source (`str`, `os.PathLike` or `list`):
            A run directory (its manifest lists the complete members; each one's sha256 is verified), or a list of
            `save_pretrained` directories holding safetensors weights, or of PEFT adapter directories over one base
            (`adapter_config.json`, `adapter_model.safetensors`).
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Accept listed directories that hold only pickle weights (`pytorch_model*.bin`); they are read with
            `torch.load(weights_only=True)`. Only for checkpoints from a source you trust.

    Returns:
        `list[Path]`: One directory per member.
    """
    if isinstance(source, (str, os.PathLike)):
        run = RunDirectory(source)
        if not run.manifest_path.is_file():
            raise FileNotFoundError(
                f"{source} has no {MANIFEST_NAME}: pass an hf_starsse run directory or a list of member directories."
            )
        complete = run.complete_members()
        if not complete:
            raise ValueError(f"{source} lists no complete member yet: train the ensemble first.")
        members = [run.path / complete[index]["path"] for index in sorted(complete)]
        if _check_adapters(members):
            _check_run_base(run)
        return members
    members = [Path(member) for member in source]
    if not members:
        raise ValueError("No member directories given.")
    if _check_adapters(members):
        return members
    for position, member in enumerate(members):
        if not check_weight_files(member, f"Member {position}"):
            check_pickle_weights(member, allow_pickle)
        if not (member / "config.json").is_file():
            raise FileNotFoundError(f"{member} has no config.json: members are save_pretrained directories.")
    return members


def _check_adapters(members: list[Path]) -> bool:
    """Whether the members are PEFT adapters, checked: all of them (not mixed with full models), each with its files,
    and the same model config if they carry one (`config.json`, for label names)."""
    adapters = [is_adapter_dir(member) for member in members]
    if any(adapters) and not all(adapters):
        raise ValueError(
            f"{members[adapters.index(True)]} is a PEFT adapter but {members[adapters.index(False)]} is a full model: "
            "the members of an ensemble or soup are all adapters over one base, or all full models."
        )
    for member in members if adapters[0] else []:
        check_adapter_dir(member)
    if adapters[0] and any((member / "config.json").is_file() for member in members):
        check_member_configs(members)
    return adapters[0]


def _check_run_base(run: RunDirectory) -> None:
    """The base model an adapter run names is still the one it was trained on (sha256 of its weights)."""
    manifest = run.read_manifest()
    if manifest.get("base_model_sha256") is None:  # adapters trained elsewhere and imported, or pickle weights only
        return
    try:
        base_dir = resolve_base(manifest["base_model"], manifest.get("base_model_revision"))
    except FileNotFoundError:  # moved or offline: the loader finds it (or a copy given as base_model=) or says so
        return
    check_base_sha256(base_dir, manifest, run.path)


def check_base_sha256(base_dir: Path, manifest: dict, run_path: Path, found: str | None = None) -> None:
    """
    Refuse a base model whose weights are not the ones the run's adapters were trained on (`base_model_sha256` of
    its manifest; nothing to check without one). `found`: the base's sha256, when already computed.
    """
    expected = manifest.get("base_model_sha256")
    found = base_sha256(base_dir) if found is None else found
    if expected is not None and found != expected:
        raise ValueError(
            f"The base model {base_dir} is not the one the adapters of {run_path} were trained on: the sha256 of its "
            f"weights is {found}, the run's manifest records {expected}. Restore that base model at "
            f"{manifest['base_model']}, or pass base_model= a copy of it."
        )


def check_pickle_weights(model_dir: str | os.PathLike, allow_pickle: bool) -> None:
    """
    Accept a directory without safetensors weights only if it has pickle weights and `allow_pickle` is set.

    Raises:
        `FileNotFoundError`: naming the directory and the way out.
    """
    pickles = pickle_weight_files(model_dir)
    if not pickles:
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors weights. Save models with save_pretrained.")
    if not allow_pickle:
        raise FileNotFoundError(
            f"{model_dir} holds only pickle weights ({pickles[0].name}), which are not loaded by default since "
            "unpickling can run code. Convert them to safetensors, or pass allow_pickle=True if you "
            "trust their source (they are then read with torch.load(weights_only=True))."
        )


def check_member_configs(member_dirs: list[Path]) -> dict:
    """
    Check that every member has the first member's config (architecture, sizes, label map); return that config.

    Raises:
        `ValueError`: naming the member and the first differing config entry.
    """
    reference = json.loads((member_dirs[0] / "config.json").read_text())
    for member in member_dirs[1:]:
        config = json.loads((member / "config.json").read_text())
        for key in sorted((set(reference) | set(config)) - IGNORED_CONFIG_KEYS):
            if reference.get(key) != config.get(key):
                raise ValueError(
                    f"Member {member} does not match {member_dirs[0]}: config.json differs in {key!r} "
                    f"({config.get(key)!r} vs {reference.get(key)!r}). Members must share architecture and label map."
                )
    return reference


def _tensor_index(member: Path) -> dict[str, Path]:
    """The weight file of each tensor name: safetensors files, or else pickle files (see `load_members`)."""
    index = {}
    for file in weight_files(member):
        with safe_open(file, "pt") as f:
            index.update(dict.fromkeys(f.keys(), file))
    for file in [] if index else pickle_weight_files(member):
        index.update(dict.fromkeys(_load_pickle(file), file))
    return index


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    """A pickle state dict, memory-mapped, unpickled with `weights_only=True` (tensors and plain containers only)."""
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def _read_tensor(file: Path, name: str) -> torch.Tensor:
    if file.suffix != ".safetensors":
        return _load_pickle(file)[name]
    # open per read: a file mapping kept open would keep every member's pages resident
    with safe_open(file, "pt") as f:
        return f.get_tensor(name)


def iter_member_tensors(member_dirs: list[Path]) -> Iterator[tuple[str, Iterator[torch.Tensor]]]:
    """
    Yield `(name, tensors)` for each tensor name of the first member, where `tensors` reads that tensor from each
    member in turn, checking shape, dtype and finiteness as it goes. Consume `tensors` before the next name: then
    only one member's tensor is in memory at a time (files are memory-mapped), whatever the number of members.

    Raises:
        `ValueError`: naming the member and tensor (or config entry) that does not fit the first member.
    """
    check_member_configs(member_dirs)
    indexes = [_tensor_index(member) for member in member_dirs]
    for member, index in zip(member_dirs[1:], indexes[1:]):
        if set(index) != set(indexes[0]):
            difference = sorted(set(index) ^ set(indexes[0]))
            raise ValueError(f"Member {member} has different tensors than {member_dirs[0]}: {difference[:5]}.")

    def checked(name: str) -> Iterator[torch.Tensor]:
        shape, dtype = None, None
        for member, index in zip(member_dirs, indexes):
            tensor = _read_tensor(index[name], name)
            shape, dtype = shape or tensor.shape, dtype or tensor.dtype
            if tensor.shape != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"Member {member}: tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, but "
                    f"{tuple(shape)} {dtype} in {member_dirs[0]}."
                )
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ValueError(f"Member {member}: tensor {name!r} holds non-finite values (NaN or inf).")
            yield tensor

    for name in indexes[0]:
        yield name, checked(name)


def float64_mean(tensors: Iterator[torch.Tensor]) -> torch.Tensor:
    """Mean of floating-point tensors accumulated in float64 and cast back; other tensors: the first one."""
    total, count, dtype = None, 0, None
    for tensor in tensors:
        if not tensor.is_floating_point():  # e.g. num_batches_tracked
            total = tensor if total is None else total
            continue
        total = tensor.to(torch.float64, copy=True) if total is None else total.add_(tensor)
        count, dtype = count + 1, tensor.dtype
    return total.div_(count).to(dtype) if count else total


def copy_member_tensors(targets: list[nn.Module], member_dirs: list[Path], average: bool = False) -> None:
    """
    Stream the members' checked tensors (see `iter_member_tensors`) into models: member k's into `targets[k]`, or,
    with `average=True`, the float64 mean over all members into `targets[0]`. Peak memory: the targets plus one tensor.

    Raises:
        `ValueError`: when a tensor does not belong to the targets' architecture or one of theirs is missing (tied
        weights excepted).
    """
    states = [target.state_dict() for target in targets]
    architecture = type(targets[0]).__name__
    loaded = set()
    for name, tensors in iter_member_tensors(member_dirs):
        if name not in states[0]:
            raise ValueError(f"Tensor {name!r} of {member_dirs[0]} does not belong to {architecture}.")
        if average:
            states[0][name].copy_(float64_mean(tensors))
        else:
            for state, tensor in zip(states, tensors):
                state[name].copy_(tensor)
        loaded.add(name)
    missing = untied_missing(targets[0], loaded)
    if missing:
        raise ValueError(f"{member_dirs[0]} lacks tensors of {architecture}: {missing[:5]}.")
