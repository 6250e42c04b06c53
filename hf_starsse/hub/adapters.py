"""What publishing adds for adapter (PEFT) ensembles: the files of a saved adapter ensemble beyond its root, telling
pushes of adapters apart, and the Hub id by which everything pushed names the base model (see `publish.py`).

A saved adapter ensemble holds its K adapters in `adapters/<name>/` and, saved with `include_base=True`, a copy of the
base model in `base/`; without that copy it loads the base by the name its config records, so on the Hub that name must
be a Hub id: the one training recorded, else the one declared with `save_card_info(run_dir, base_model=...)`, named by
the saved ensemble's card, or passed to `push_ensemble_to_hub(..., base_model=...)`.
"""

import json
from pathlib import Path

from ..adapters.peft import ADAPTER_CONFIG_NAME, is_adapter_dir
from ..cards.model_card import card_base_model, card_info, is_hub_id
from ..ensemble import AdapterEnsembleConfig
from ..ensemble.modeling_adapter_ensemble import ADAPTERS_DIR, BASE_DIR
from ..run.directory import run_manifest

# Where pushed JSON names the base model: an adapter ensemble's config, a PEFT adapter config, a run's manifest.
BASE_FIELDS = ("base_model", "base_model_name_or_path")


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or `{}` when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else {}


def adapter_ensemble_folders(model_dir: Path) -> list[Path]:
    """The adapters (`adapters/<name>/`) of a saved adapter ensemble, and the copy of its base (`base/`) if any."""
    config = read_json(model_dir / "config.json")
    if config.get("model_type") != AdapterEnsembleConfig.model_type:
        return []
    folders = [model_dir / ADAPTERS_DIR / name for name in config["adapter_names"]]
    return folders + ([model_dir / BASE_DIR] if config.get("include_base") else [])


def holds_adapters(path: Path, kind: str) -> bool:
    """
    Whether what is pushed is made of PEFT adapters.

    Args:
        path (`Path`): The directory pushed.
        kind (`str`): What it is: `"run"` (of adapter members?), `"ensemble"` (an adapter ensemble?) or `"soup"` (in
            adapter form, `save_lora_soup_adapter`?).
    """
    if kind == "run":
        members = (run_manifest(path) or {}).get("members") or []
        return bool(members) and is_adapter_dir(path / members[0]["path"])
    if kind == "ensemble":
        return read_json(path / "config.json").get("model_type") == AdapterEnsembleConfig.model_type
    return is_adapter_dir(path)


def _recorded_base(path: Path, kind: str) -> str | None:
    """The base model (Hub id or local path) that a run's manifest, an ensemble's config or an adapter names."""
    if kind == "run":
        return (run_manifest(path) or {}).get("base_model")
    if kind == "ensemble":
        return read_json(path / "config.json").get("base_model")
    return read_json(path / ADAPTER_CONFIG_NAME).get("base_model_name_or_path")


def _names_base(path: Path, kind: str, soup_path, include_base: bool | None) -> bool:
    """Whether a pushed adapter ensemble or adapter soup loads its base model by name (it holds no copy of it)."""
    if kind == "ensemble":
        return not read_json(path / "config.json").get("include_base")
    if kind == "run":
        return not include_base or (soup_path is not None and is_adapter_dir(soup_path))
    return True  # a soup in adapter form


def _check_adapter_options(path: Path, kind: str, recorded, include_base: bool | None, base_model) -> None:
    """Refuse `include_base` / `base_model` where they do not apply or cannot hold (`recorded`: the base the pushed
    adapters name)."""
    if not holds_adapters(path, kind):
        if include_base is not None or base_model is not None:
            raise ValueError(f"include_base and base_model are for adapter (PEFT) ensembles; {path} holds full models")
        return
    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(f"base_model={base_model!r} is not a Hub id: name the base model's repository, 'org/name'.")
    if base_model is not None and is_hub_id(recorded) and recorded != base_model:
        raise ValueError(
            f"base_model={base_model!r}: the adapters name their base model by its Hub id {recorded!r} already; "
            "base_model is for a base they know only by a local path."
        )
    saved = bool(read_json(path / "config.json").get("include_base"))
    if kind != "run" and include_base not in (None, saved):
        raise ValueError(
            f"{path} is saved {'with' if saved else 'without'} a copy of its base model and is pushed as saved: "
            f"rebuild it with build_ensemble(..., include_base={include_base}), or push its run directory."
        )


def hub_base_model(
    path: Path, kind: str, soup_path=None, include_base: bool | None = None, base_model: str | None = None
) -> str | None:
    """
    The Hub id by which the pushed files name the base model.

    Args:
        path (`Path`): The directory pushed.
        kind (`str`): `"run"`, `"ensemble"` or `"soup"`.
        soup_path (*optional*): A saved soup pushed with a run (one in adapter form names the base too).
        include_base (`bool`, *optional*): Whether an adapter ensemble goes up with a copy of its base.
        base_model (`str`, *optional*): The Hub id given to `push_ensemble_to_hub`.

    Returns:
        `str` or `None`: `base_model`, else the id declared for the run (`save_card_info`), recorded by training or
        named by the saved model's card; `None` when there is none (allowed only where no pushed file loads the base
        by name).

    Raises:
        `ValueError`: options that do not apply, or adapters that would load their base by a local path.
    """
    recorded = _recorded_base(path, kind)
    _check_adapter_options(path, kind, recorded, include_base, base_model)
    hub_id = base_model or card_info(path, recorded)["base_model"] or card_base_model(path)
    if hub_id is None and holds_adapters(path, kind) and _names_base(path, kind, soup_path, include_base):
        raise ValueError(
            f"The adapters' base model is the local directory {Path(recorded or '').name!r}, which "
            "Hub users cannot download: pass base_model='namespace/name' (its Hub id; the weights there must be the "
            "same, their sha256 is checked on loading), declare it with save_card_info(run_dir, base_model=...), or "
            "upload a copy of the base with include_base=True."
        )
    return hub_id


def with_hub_base(data, base_model: str | None):
    """`data` (parsed JSON) with a base model named by a local path (see `BASE_FIELDS`) named by its Hub id instead."""
    if base_model is None or not isinstance(data, dict):
        return data
    local = {key for key in BASE_FIELDS if isinstance(data.get(key), str) and not is_hub_id(data[key])}
    return {key: base_model if key in local else value for key, value in data.items()}
