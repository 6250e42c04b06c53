"""What the cards of models made of PEFT adapters say: an adapter ensemble's adapters (method, rank, sizes against
the base model's) and metadata (as PEFT's own cards of adapters), and the adapters a soup was merged from. Rendered by
`model_card.py`."""

from pathlib import Path

from ..adapters.peft import is_adapter_dir, read_adapter_config, require_peft
from ..storage.weights import pickle_weight_files, weight_files
from ..tasks import family_of_architecture

ADAPTER_RELATION = "adapter"  # `base_model_relation` of an adapter ensemble's card


def megabytes(num_bytes: int) -> str:
    """A size in decimal megabytes (as the Hub shows file sizes), to three significant digits."""
    return f"{num_bytes / 1e6:.3g} MB"


def adapter_summary(model) -> dict | None:
    """
    What the card of an adapter ensemble says about its adapters, or `None` for an ensemble of full models.

    Args:
        model (`EnsemblePreTrainedModel`): The ensemble; an adapter ensemble has `peft_model` and `base_dir`.

    Returns:
        `dict` or `None`: `peft_type`, `rank` (LoRA), `member_size` (one member's adapter tensors), `members_size`
        (all K), `base_size` (the base model's weight files), `copies_size` (K full copies of the base),
        `include_base` and `num_labels` (families whose labels are classes; else `None`: the base keeps its head).
    """
    names = getattr(model.config, "adapter_names", None)
    if not names:
        return None
    state = require_peft().get_peft_model_state_dict(model.peft_model, adapter_name=names[0])
    member = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    base_files = weight_files(model.base_dir) or pickle_weight_files(model.base_dir)
    base = sum(file.stat().st_size for file in base_files)
    count, family = model.config.num_members, family_of_architecture(type(model).__name__)
    return {
        "peft_type": model.config.peft_type,
        "rank": getattr(model.peft_model.peft_config[names[0]], "r", None),
        "member_size": megabytes(member),
        "members_size": megabytes(count * member),
        "base_size": megabytes(base),
        "copies_size": megabytes(count * base),
        "include_base": model.config.include_base,
        "num_labels": model.config.num_labels if family.class_labels else None,
    }


def member_adapters(record: dict) -> dict | None:
    """What the card of a soup says of its members when they were PEFT adapters (`record`: its `soup.json`):
    `peft_type` and `rank` (LoRA), or `None` for full members (or members no longer on disk)."""
    first = Path(record["members"][0])
    if not is_adapter_dir(first):
        return None
    config = read_adapter_config(first)
    return {"peft_type": config.get("peft_type"), "rank": config.get("r")}


def adapter_base_tag(base_model: str) -> str:
    """PEFT's tag for an adapter of `base_model` (a Hub id)."""
    return f"base_model:adapter:{base_model}"


def adapter_metadata(peft_type: str, base_model: str | None) -> dict:
    """
    The metadata an adapter ensemble's card adds to a full-model ensemble's, as PEFT's cards of adapters do.

    Args:
        peft_type (`str`): The adapters' PEFT method (`"LORA"`, ...), tagged lowercased.
        base_model (`str`, *optional*): The base model's Hub id: tagged `base_model:adapter:<id>`, and the
            relation `adapter` (unknown without one).

    Returns:
        `dict`: `tags` and, with a base, `base_model_relation`.
    """
    tags = ["peft", peft_type.lower()]
    if base_model is None:
        return {"tags": tags}
    return {"tags": [*tags, adapter_base_tag(base_model)], "base_model_relation": ADAPTER_RELATION}
