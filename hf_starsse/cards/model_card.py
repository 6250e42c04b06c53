"""Model cards of saved ensembles and soups.

Cards are rendered from the Jinja templates in `model_cards/` (at the repository root, shipped inside the package as
`hf_starsse/model_cards/`) and carry YAML metadata built with `huggingface_hub.ModelCardData` (library, base model,
tags, datasets, licence, and `model-index` results from `evaluation.json` when the run was evaluated) and a body
describing the method, the members' lineage, the results and how to load the model. Publishing is in `hub/`.

Cards of adapter ensembles (PEFT members) add what PEFT's own cards say: tags `peft` and the method (`lora`), the base
model, and for a base with a Hub id the tag `base_model:adapter:<id>` and `base_model_relation: adapter` (the Hub's
model tree lists the ensemble among the base's adapters). Their `library_name` stays `transformers`: the Hub's `peft`
library counts downloads and builds its usage snippet from a root `adapter_config.json`, which an adapter ensemble
cannot have (transformers would load it as one adapter instead of the ensemble); its adapters are in
`adapters/member_<k>/`. The body gives one member's adapter size against the base model's (`adapter_cards.py`).
"""

import json
import os
from pathlib import Path
from statistics import fmean

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.pipelines import SUPPORTED_TASKS

from ..run.directory import run_manifest
from ..storage.atomic_io import atomic_write_json
from ..tasks import family_of_architecture
from ..tasks.sequence_classification import SEQUENCE_CLASSIFICATION
from ..tasks.text_generation import PROMPT_OPTIONS, TEXT_GENERATION, prompted_usage
from .adapter_cards import ADAPTER_RELATION, adapter_base_tag, adapter_metadata, adapter_summary, member_adapters

# The templates: inside the installed package (wheel), else at the root of the source tree (checkout, editable).
TEMPLATES = next(
    path
    for path in (Path(__file__).parents[1] / "model_cards", Path(__file__).parents[2] / "model_cards")
    if path.is_dir()
)
EVALUATION_NAME = "evaluation.json"
# What the cards of a run say about its origin, beyond the manifest (see `save_card_info`).
CARD_INFO_NAME = "card_info.json"
SOUP_RECORD_NAME = "soup.json"
# Where the usage examples of a card point until the model has a Hub repository.
ENSEMBLE_PLACEHOLDER, SOUP_PLACEHOLDER = "path/to/ensemble", "path/to/soup"
# Where the usage examples of an adapter ensemble's card load its base from, until the base has a known Hub id.
BASE_PLACEHOLDER = "path/to/base"
METHODS = {
    "starsse": (
        "StarSSE",
        "StarSSE (Sadrtdinov et al., 2023): member 0 is an ordinary fine-tune of the pre-trained checkpoint; every "
        "other member is a short cosine learning-rate cycle that starts from member 0 with its own seed, so the "
        "members explore the pre-train basin around member 0 without leaving it.",
    ),
    "sse": (
        "SSE",
        "SSE, a snapshot ensemble adapted to transfer learning: member 0 is an ordinary fine-tune; each other member "
        "is a cosine learning-rate cycle that starts from the previous member.",
    ),
    "local_de": (
        "Local DE",
        "Local deep ensemble: every member is an independent fine-tune of the pre-trained checkpoint with its own "
        "seed and freshly initialised head.",
    ),
}
SOUP_MODELS = {"uniform_soup": "uniform soup", "greedy_soup": "greedy soup"}
# How the cards' tables name a task family's metrics (`TaskFamily.metrics`); others by their own name.
METRIC_NAMES = {"nll": "NLL", "ece": "ECE", "brier": "Brier", "exact_match": "exact match", "f1": "F1",
                "entity_f1": "entity F1", "aurc": "AURC", "token_nll": "NLL per token"}  # fmt: skip


def evaluation_rows(source) -> list[dict]:
    """The rows `evaluate_ensemble` wrote next to the run, if any."""
    path = Path(source) / EVALUATION_NAME if isinstance(source, (str, os.PathLike)) else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else []


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repository id (`"name"` or `"namespace/name"`) rather than a local path."""
    if not name or os.path.isabs(name) or name.startswith((".", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def save_card_info(
    run_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
    base_model_name: str | None = None,
    datasets: list[str] | None = None,
    dataset_name: str | None = None,
    prompt: dict | None = None,
) -> None:
    """
    Declare what the model cards of a run say about its origin (written to `card_info.json` in the run directory and
    read by `build_ensemble`, the soups and `push_ensemble_to_hub`). Without it a card shows the base model's Hub id
    when it was loaded from the Hub, else only the name of its local directory; local paths never reach a card.
    What is not passed keeps its recorded value (e.g. the prompt options `hf-starsse train` records).

    Args:
        run_dir (`str` or `os.PathLike`): The run directory.
        base_model (`str`, *optional*): The Hub id of the base model (e.g. when it was trained from a local copy):
            the card's `base_model` metadata.
        base_model_name (`str`, *optional*): How the card's text names the base model (default: `base_model`).
        datasets (`list[str]`, *optional*): Hub ids of the training data: the card's `datasets` metadata.
        dataset_name (`str`, *optional*): The dataset's name in the card's results (default: the first of
            `datasets`).
        prompt (`dict`, *optional*): Text generation: the options that made the members' prompts, by the CLI's
            names (`completion_column`, `prompt_template`, `chat_template`, `max_length`; `{}`: plain text, no
            prompt); the cards' usage example follows them and `hf-starsse evaluate` reuses them.
    """
    for option, names in (("base_model", [base_model] if base_model else []), ("datasets", datasets or [])):
        bad = [name for name in names if not is_hub_id(name)]
        if bad:
            raise ValueError(
                f"{option}={bad[0]!r} is not a Hub id: the card's metadata links to the Hub. Name a local model or "
                "dataset with base_model_name / dataset_name instead."
            )
    unknown = sorted(set(prompt or {}) - set(PROMPT_OPTIONS))
    if unknown:
        raise ValueError(f"prompt names {unknown}, which are no prompt options: use {', '.join(PROMPT_OPTIONS)}.")
    info = dict(base_model=base_model, base_model_name=base_model_name, datasets=datasets, dataset_name=dataset_name)
    path = Path(run_dir) / CARD_INFO_NAME
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    given = {key: value for key, value in info.items() if value}
    if prompt is not None:
        given["prompt"] = prompt  # `{}` too: members that learned plain text
    atomic_write_json(path, {**recorded, **given})


def card_info(source, base_model: str | None = None) -> dict:
    """
    The origin a card shows: `base_model` (a Hub id or `None`), `base_model_name` (text without local paths),
    `datasets` (Hub ids), `dataset_name` and `prompt` (see `save_card_info`), from the run's manifest and
    `card_info.json` when `source` is a run, else from `base_model` (the base an adapter ensemble records, a Hub id
    or a local path).
    """
    declared, recorded = {}, (run_manifest(source) or {}).get("base_model") or base_model
    if isinstance(source, (str, os.PathLike)) and (Path(source) / CARD_INFO_NAME).is_file():
        declared = json.loads((Path(source) / CARD_INFO_NAME).read_text())
    base_model = declared.get("base_model") or (recorded if is_hub_id(recorded) else None)
    datasets = declared.get("datasets") or []
    return {
        "base_model": base_model,
        "base_model_name": declared.get("base_model_name") or base_model or (recorded and Path(recorded).name),
        "datasets": datasets,
        "dataset_name": declared.get("dataset_name") or (datasets[0] if datasets else None),
        "prompt": declared.get("prompt"),
    }


def pipeline_usage(family, repo_id: str, prompt: dict | None = None) -> str | None:
    """The lines of a card that run the model's `pipeline` (for text generation on a prompt made as in training,
    given its `prompt` options), or `None` where transformers has none for its task."""
    if family is TEXT_GENERATION and prompt:
        return prompted_usage(repo_id, prompt)
    return family.pipeline_usage.format(task=family.name, repo_id=repo_id) if family.name in SUPPORTED_TASKS else None


def card_with_base_model(text: str, base_model: str) -> str:
    """
    A rendered card that names `base_model` (a Hub id) as its base, in its metadata (with the adapter tag and
    relation of an adapter ensemble's card, see `adapter_metadata`) and in its usage examples: for publishing a model
    whose base was only a local path when its card was rendered.

    Args:
        text (`str`): The card (`README.md`).
        base_model (`str`): The base model's Hub id.
    """
    card = ModelCard(text)
    if card.data.base_model == base_model and f'"{BASE_PLACEHOLDER}"' not in text:
        return text
    card.data.base_model = base_model
    tags = card.data.tags or []
    if "peft" in tags:
        card.data.tags = [name for name in tags if not name.startswith("base_model:")] + [adapter_base_tag(base_model)]
        card.data.base_model_relation = ADAPTER_RELATION
    return str(card).replace(f'"{BASE_PLACEHOLDER}"', f'"{base_model}"')


def card_base_model(model_dir: str | os.PathLike) -> str | None:
    """The base model (Hub id) that the card (`README.md`) of a saved model names, if any."""
    card = Path(model_dir) / "README.md"
    return ModelCard.load(card).data.base_model if card.is_file() else None


def _card_data(
    model_name: str,
    tags: list[str],
    family,
    metrics: tuple[str, ...],
    info: dict,
    rows: list[dict],
    license,
    peft_type: str | None = None,
) -> ModelCardData:
    """The card's metadata: the `pipeline_tag` of the task `family`; `rows` are the results of the model itself,
    reported in `model-index` by the first of the family's metrics they hold (clean splits); `peft_type` (adapter
    ensembles) adds the metadata of `adapter_metadata`."""
    task = family.name
    metric = next((name for name in metrics if any(name in row for row in rows)), metrics[0])
    eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=(info["datasets"] or ["custom"])[0],
            dataset_name=info["dataset_name"] or "custom",
            dataset_split=row["split"],
            metric_type=metric,
            metric_value=row[metric],
        )
        for row in rows
        if "/" not in row["split"] and row.get(metric) is not None
    ]
    adapter = adapter_metadata(peft_type, info["base_model"]) if peft_type else {}
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=task,
        base_model=info["base_model"],
        tags=["hf_starsse", *tags, task, *adapter.pop("tags", [])],
        datasets=info["datasets"] or None,
        license=license,
        eval_results=eval_results or None,
        **adapter,
    )


def shown_metrics(rows: list[dict], metrics: tuple[str, ...]) -> dict[str, str]:
    """The metrics of a task family (`metrics`) that evaluation rows have (e.g. option accuracy on some splits,
    perplexity on others), each with its name in the cards' tables."""
    return {metric: METRIC_NAMES.get(metric, metric) for metric in metrics if any(metric in row for row in rows)}


def summary_rows(rows: list[dict], size: int, metrics: tuple[str, ...]) -> list[dict]:
    """
    The short results table: the single model (the first member), the ensemble of `size` and the soups, on each
    evaluation set, with the shifted sets (splits named `name/severity`) averaged into one.
    """
    first = min((row["member"] for row in rows if row["model"] == "member"), default=None)
    models = {"single model": lambda r: r["model"] == "member" and r["member"] == first}
    models[f"ensemble of {size}"] = lambda r: r["model"] == "ensemble" and r["size"] == size
    for kind, label in SOUP_MODELS.items():
        models[label] = lambda r, kind=kind: r["model"] == kind
    clean = list(dict.fromkeys(row["split"] for row in rows if "/" not in row["split"]))
    shifted = sorted({row["split"] for row in rows if "/" in row["split"]})
    sets = [(split, [split]) for split in clean]
    sets += [(f"shifted (mean of {len(shifted)})", shifted)] if shifted else []
    summary = []
    for name, splits in sets:
        for label, chosen in models.items():
            group = [row for row in rows if row["split"] in splits and chosen(row)]
            if group:
                means = {m: [row[m] for row in group if row.get(m) is not None] for m in metrics}
                summary.append({"set": name, "model": label, **{m: fmean(v) if v else None for m, v in means.items()}})
    return summary


def _all_rows(rows: list[dict], size: int) -> list[dict]:
    """The full results table: members, the full ensemble and the soups on every split."""
    keep = [r for r in rows if r["model"] == "member" or r["model"] in SOUP_MODELS]
    keep += [r for r in rows if r["model"] == "ensemble" and r["size"] == size]
    return sorted(keep, key=lambda r: (r["split"], r["model"] != "ensemble", r["model"], r.get("member") or 0))


def ensemble_card(model, source, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    """
    The model card of an ensemble built from `source` (a run directory or member directories).

    Args:
        model (`EnsemblePreTrainedModel`): The ensemble (its config holds method, hyperparameters and lineage).
        source: Where the members came from; a run directory adds its manifest, `card_info.json` (see
            `save_card_info`) and `evaluation.json` results.
        repo_id (`str`, *optional*): The Hub repository id shown in the usage examples (default: a placeholder).
        license (`str`, *optional*): Licence identifier for the metadata.
    """
    config = model.config
    method = config.ensemble_method or "members"
    title, description = METHODS.get(method, ("hand-picked members", "Members were given as directories."))
    family = family_of_architecture(type(model).__name__)
    name = repo_id or f"{title} ensemble of {config.num_members}"
    info = card_info(source, getattr(config, "base_model", None))  # adapter ensembles record their base
    rows = evaluation_rows(source)
    own = [r for r in rows if r["model"] == "ensemble" and r["size"] == config.num_members]
    adapter = adapter_summary(model)
    family_metrics = family.metrics_for(model.problem_type)
    metrics = shown_metrics(rows, family_metrics)
    return ModelCard.from_template(
        _card_data(
            name, [method, "ensemble"], family, family_metrics, info, own, license, adapter and adapter["peft_type"]
        ),
        template_path=str(TEMPLATES / "ensemble_card.md"),
        model_name=name,
        num_members=config.num_members,
        architecture=(config.member_config.get("architectures") or ["classifier"])[0],
        info=info,
        adapter=adapter,
        base_placeholder=BASE_PLACEHOLDER,
        method_title=title,
        method_description=description,
        hyperparameters=config.cycle_hyperparameters or {},
        members=config.members_info or [],
        summary=summary_rows(rows, config.num_members, tuple(metrics)),
        results=_all_rows(rows, config.num_members),
        metrics=metrics,
        auto_class=family.auto_class,
        pipeline_usage=pipeline_usage(family, repo_id or ENSEMBLE_PLACEHOLDER, info["prompt"]),
        combination=family.combination,
        repo_id=repo_id or ENSEMBLE_PLACEHOLDER,
    )


def soup_card(model, source, record: dict, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    """
    The model card of a soup (see [`ensemble_card`]); `record` is the soup's `soup.json` content.
    """
    method = (run_manifest(source) or {}).get("ensemble_method", "members")
    title = METHODS.get(method, ("hand-picked members",))[0]
    architecture = type(model).__name__
    family = family_of_architecture(architecture) or SEQUENCE_CLASSIFICATION
    kind = f"{record['method']}_soup"
    name = repo_id or f"{record['method'].capitalize()} soup of {title} members"
    info = card_info(source)
    rows = evaluation_rows(source)
    size = max((r["size"] for r in rows if r["model"] == "ensemble"), default=len(record["members"]))
    family_metrics = family.metrics_for(model.config.problem_type)  # set by training (e.g. regression)
    metrics = shown_metrics(rows, family_metrics)
    own = [r for r in rows if r["model"] == kind]
    return ModelCard.from_template(
        _card_data(name, [method, "model-soup"], family, family_metrics, info, own, license),
        template_path=str(TEMPLATES / "soup_card.md"),
        model_name=name,
        soup_method=record["method"],
        num_chosen=len(record.get("chosen", record["members"])),
        num_members=len(record["members"]),
        members=[Path(member).name for member in record["members"]],
        chosen=record.get("chosen"),
        info=info,
        adapters=member_adapters(record),
        method_title=title,
        architecture=architecture,
        batchnorm_recalibrated=record.get("batchnorm_recalibrated"),
        summary=summary_rows(rows, size, tuple(metrics)),
        results=[r for r in rows if r["model"] == kind],
        metrics=metrics,
        auto_class=family.auto_class,
        pipeline_usage=pipeline_usage(family, repo_id or SOUP_PLACEHOLDER, info["prompt"]),
        repo_id=repo_id or SOUP_PLACEHOLDER,
    )
