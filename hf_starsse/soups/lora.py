"""Exact soups of LoRA members: the average of the members' merged weights, never of A and B separately.

A LoRA member's weight is `W + s B_k A_k`, so the soup of K members is `W + mean_k(s B_k A_k)`; averaging A and B
apart gives `mean(B) mean(A)`, another model. Two forms:

- `lora_soup_model`: a full model of the base architecture (`from_pretrained` loads it), built on the base loaded once
  with the K adapters: each adapted layer is merged with every member in turn in float64 (PEFT's own merge, so DoRA's
  rescaled weights and rsLoRA's scale are exact too) and averaged, one layer at a time. `modules_to_save` modules
  (e.g. the classifier) are averaged as weights.
- `save_lora_soup_adapter`: the same soup as one LoRA adapter of rank K·r (the members' A stacked, their B side by
  side, the scale kept by keeping `lora_alpha`), which PEFT loads over the base. Not for DoRA, whose merged weight is
  not `W` plus a low-rank product.
"""

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

from ..adapters.peft import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    check_adapter_members,
    is_adapter_dir,
    load_adapter_members,
    processor_source,
    read_adapter_config,
    require_peft,
)
from ..run.members import float64_mean, load_members
from ..storage.saving import check_out_dir, processor_files, write_dir_atomically


def _check_lora(adapter_config: dict, member: Path) -> None:
    peft_type = adapter_config.get("peft_type")
    if peft_type != "LORA":
        raise ValueError(
            f"{member} is a {peft_type} adapter: soups are built of LoRA adapters only (DoRA and rsLoRA included), "
            "whose merged weights are defined exactly. Ensembles (build_ensemble) take any weight adapter."
        )


def lora_soup_model(member_dirs: list[Path], device: str | torch.device | None = None) -> PreTrainedModel:
    """
    The uniform soup of LoRA members as a model of the base architecture (eval mode): every adapted weight is
    `mean_k merged_k(W)` accumulated in float64, every `modules_to_save` module the float64 mean of the members'.
    Peak memory: the base model, the K adapters and one layer in float64.

    Raises:
        `ValueError`: members that are not LoRA adapters, or adapt convolutions with groups (PEFT cannot merge those).
    """
    peft = require_peft()
    _check_lora(read_adapter_config(member_dirs[0]), member_dirs[0])
    loaded = load_adapter_members(member_dirs)
    model, names = loaded.model.to(device or "cpu"), loaded.names
    model.set_adapter(names[0])  # unloading keeps the active adapter's copy of each modules_to_save module
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                _average_merged_layer(module, names, name)
            elif isinstance(module, peft.utils.ModulesToSaveWrapper):
                _average_copies(module, names)
    return model.unload().requires_grad_(True).eval()  # PEFT froze the base; a soup is an ordinary model


def _average_merged_layer(layer, names: list[str], layer_name: str) -> None:
    """Set the base layer's parameters to the float64 mean over members of PEFT's merge of each member's adapter."""
    base = layer.get_base_layer()
    if getattr(base, "groups", 1) > 1:
        raise ValueError(f"LoRA on {layer_name}, a convolution with groups > 1: PEFT cannot merge it, so no soup.")
    originals = dict(base.named_parameters(recurse=False))
    originals = {key: parameter.data for key, parameter in originals.items()}
    for key, parameter in layer.named_parameters():
        if not key.startswith("base_layer."):
            parameter.data = parameter.data.to(torch.float64)  # this layer's adapters: deltas in float64
    totals = {}
    for name in names:
        for key, parameter in base.named_parameters(recurse=False):
            parameter.data = originals[key].to(torch.float64, copy=True)
        layer.merge(adapter_names=[name])
        layer.merged_adapters.clear()  # a fresh copy of the base weights each time: nothing stays merged
        for key, parameter in base.named_parameters(recurse=False):
            totals[key] = parameter.data if key not in totals else totals[key].add_(parameter.data)
    for key, parameter in base.named_parameters(recurse=False):
        parameter.data = totals[key].div_(len(names)).to(originals[key].dtype)


def _average_copies(wrapper, names: list[str]) -> None:
    """Write the float64 mean of the members' copies of a `modules_to_save` module into the first member's copy."""
    states = [wrapper.modules_to_save[name].state_dict() for name in names]
    for key, tensor in states[0].items():
        tensor.copy_(float64_mean(state[key] for state in states))


def save_lora_soup_adapter(
    members, out_dir: str | os.PathLike, overwrite: bool = False, record: dict | None = None
) -> Path:
    """
    Save the uniform soup of LoRA members as one LoRA adapter of rank K·r over their base: the members' A matrices
    stacked, their B matrices side by side. Keeping `lora_alpha` and multiplying the rank by K divides the scale
    `alpha / r` by K, which makes the sum of the K products their mean; with rsLoRA (`alpha / sqrt(r)`) B is also
    scaled by `1 / sqrt(K)`. Other tensors (`modules_to_save`, e.g. the classifier) are averaged in float64.

    Args:
        members (`str`, `os.PathLike` or `list`): A run directory or a list of LoRA adapter directories.
        out_dir (`str` or `os.PathLike`): Where the adapter is written (atomically), with the first member's processor
            files; `PeftModel.from_pretrained(base, out_dir)` loads it.
        overwrite (`bool`, *optional*, defaults to `False`): Replace a non-empty `out_dir`.
        record (`dict`, *optional*): Written as `soup.json` (default: the method and the members).

    Returns:
        `Path`: `out_dir`.

    Raises:
        `ValueError`: members that are not LoRA, or use DoRA (whose merged weight is no low-rank sum), or hold
            LoRA tensors of another kind than A, B and embedding A/B.
    """
    member_dirs = load_members(members)
    check_out_dir(out_dir, member_dirs, overwrite)
    adapter_config = check_adapter_soup(member_dirs)
    count = len(member_dirs)
    factor = count**-0.5 if adapter_config.get("use_rslora") else 1.0
    tensors = {}
    with safe_open(member_dirs[0] / ADAPTER_WEIGHTS_NAME, "pt") as f:
        keys = list(f.keys())
    for key in keys:
        values = []
        for member in member_dirs:
            with safe_open(member / ADAPTER_WEIGHTS_NAME, "pt") as f:
                values.append(f.get_tensor(key))
        tensors[key] = _combine(key, values, factor)
    config = dict(adapter_config, r=adapter_config["r"] * count)
    config["rank_pattern"] = {name: rank * count for name, rank in (adapter_config.get("rank_pattern") or {}).items()}
    record = record or {"method": "uniform", "members": [str(member) for member in member_dirs]}
    processors = processor_source(member_dirs[0])

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "soup.json").write_text(json.dumps(dict(record, form="lora_adapter", rank=config["r"]), indent=2))
        for file in processor_files(processors):
            if file.name != "README.md":
                (tmp / file.name).write_bytes(file.read_bytes())

    write_dir_atomically(out_dir, write, overwrite)
    return Path(out_dir)


def check_adapter_soup(member_dirs: list[Path]) -> dict:
    """
    Check that the members' soup has an adapter form (LoRA adapters without DoRA); return their adapter config.

    Raises:
        `ValueError`: naming what stands in the way (full-model members, another PEFT method, DoRA).
    """
    if not is_adapter_dir(member_dirs[0]):
        raise ValueError(f"{member_dirs[0]} is a full model: the adapter form of a soup is for LoRA adapter members.")
    adapter_config = check_adapter_members(member_dirs)
    _check_lora(adapter_config, member_dirs[0])
    if adapter_config.get("use_dora"):
        raise ValueError(
            f"{member_dirs[0]} uses DoRA: a DoRA member's merged weight rescales the columns of W + BA, so no LoRA "
            "adapter equals the soup. Use the merged soup (uniform_soup / greedy_soup without adapter_out_dir)."
        )
    return adapter_config


def _combine(key: str, values: list[torch.Tensor], factor: float) -> torch.Tensor:
    """One tensor of the rank-K·r adapter from the members' tensors of that name."""
    if key.endswith((".lora_A.weight", ".lora_embedding_A")):
        return torch.cat(values, dim=0)
    if key.endswith((".lora_B.weight", ".lora_embedding_B")):
        return (torch.cat([value.to(torch.float64) for value in values], dim=1) * factor).to(values[0].dtype)
    if key.endswith(".lora_B.bias"):  # s_new b_new = mean_k s b_k
        return (torch.stack([value.to(torch.float64) for value in values]).sum(0) * factor).to(values[0].dtype)
    if any(part.startswith("lora_") for part in key.split(".")):
        raise ValueError(f"Tensor {key!r} is no LoRA A or B matrix: the adapter form of the soup cannot hold it.")
    return float64_mean(iter(values))
