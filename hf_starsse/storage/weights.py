"""Weights on disk: the files of a `save_pretrained` directory, their sha256, checks that they are readable, and
loading them into a model (in place, or as a fresh model of the saved architecture)."""

import hashlib
import os
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, PreTrainedModel

# Pickle weight files of a `save_pretrained` directory: never loaded unless the caller allows it.
PICKLE_WEIGHT_PATTERN = "pytorch_model*.bin"
# Every pickle format (torch.save, Trainer state, ...): never uploaded, never copied as a processor file.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The safetensors weight files of a `save_pretrained` directory, sorted by name."""
    return sorted(Path(model_dir).glob("*.safetensors"))


def pickle_weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The pickle weight files (`pytorch_model*.bin`) of a `save_pretrained` directory, sorted by name."""
    return sorted(Path(model_dir).glob(PICKLE_WEIGHT_PATTERN))


def weights_sha256(model_dir: str | os.PathLike) -> str:
    """sha256 over the safetensors weight files of `model_dir`, read in name order."""
    files = weight_files(model_dir)
    if not files:
        raise FileNotFoundError(f"No *.safetensors weights in {model_dir}.")
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_weight_files(model_dir: str | os.PathLike, name: str | None = None) -> list[Path]:
    """
    Check that every safetensors file of `model_dir` can be read (header complete, data covering the file) and
    return them.

    Args:
        model_dir (`str` or `os.PathLike`): A `save_pretrained` directory.
        name (`str`, *optional*): How the error names the model, e.g. `"member 2"` (default: the directory).

    Raises:
        `ValueError`: naming the model, the file and the likely cause, for a truncated or corrupted file.
    """
    files = weight_files(model_dir)
    for file in files:
        try:
            with safe_open(file, "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{name or 'The model'} ({model_dir}): {file.name} cannot be read as safetensors ({err}). The file "
                "is probably truncated (an interrupted save or copy) or corrupted: restore it, or save the model "
                "again."
            ) from None
    return files


def load_weights(model: torch.nn.Module, model_dir: str | os.PathLike) -> None:
    """
    Load the safetensors weights of a `save_pretrained` directory into `model` in place (see `load_state`).

    Args:
        model (`torch.nn.Module`): The model to update.
        model_dir (`str` or `os.PathLike`): A directory holding `model.safetensors` (or its shards).
    """
    files = check_weight_files(model_dir)
    if not files:
        raise FileNotFoundError(f"No *.safetensors weights in {model_dir}.")
    state = {}
    for file in files:
        state.update(load_file(file))
    load_state(model, state, source=str(model_dir))


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "the state dict") -> None:
    """
    Copy `state` into `model` in place. Keys left out because they are tied to a loaded tensor are accepted; any other
    missing or unexpected key is an error naming `source`.
    """
    _, unexpected = model.load_state_dict(state, strict=False)
    missing = untied_missing(model, set(state))
    if missing or unexpected:
        raise ValueError(
            f"The weights in {source} do not fit {type(model).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}."
        )


def untied_missing(model: torch.nn.Module, loaded: set[str]) -> list[str]:
    """Names of `model`'s state that `loaded` misses, apart from those tied to a loaded tensor."""
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    loaded_ids = {id(tensors[name]) for name in loaded if name in tensors}
    return [name for name in model.state_dict() if name not in loaded and id(tensors.get(name)) not in loaded_ids]


def load_base_model(model_dir: str | os.PathLike, device: str | torch.device | None = None) -> PreTrainedModel:
    """
    A saved member (or soup) as a model of its own transformers architecture, e.g. `BertForSequenceClassification`,
    on `device` (default: CPU).

    Args:
        model_dir (`str` or `os.PathLike`): A `save_pretrained` directory whose config names the architecture.
        device (`str` or `torch.device`, *optional*): Where the model goes.
    """
    config = AutoConfig.from_pretrained(model_dir)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise ValueError(
            f"{model_dir}/config.json names architecture {architecture!r}, which transformers does not provide; soups "
            "and evaluations are built for transformers architectures."
        )
    check_weight_files(model_dir)
    return model_class.from_pretrained(model_dir).to(device or "cpu")
