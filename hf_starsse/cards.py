"""Model cards of saved ensembles and soups.

Cards are rendered from the Jinja templates in `model_cards/` (at the repository root, shipped inside the package as
`hf_starsse/model_cards/`) and carry YAML metadata built with `huggingface_hub.ModelCardData` (library, base model,
tags, datasets, licence, and `model-index` results from `evaluation.json` when the run was evaluated) and a body
describing the method, the members' lineage, the results and how to load the model. Publishing is in `hub.py`.
"""

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .run_dir import run_manifest

# The templates: inside the installed package (wheel), else at the root of the source tree (checkout, editable).
TEMPLATES = next(
    path
    for path in (Path(__file__).parent / "model_cards", Path(__file__).parent.parent / "model_cards")
    if path.is_dir()
)
EVALUATION_NAME = "evaluation.json"
SOUP_RECORD_NAME = "soup.json"
# Where the usage examples of a card point until the model has a Hub repository.
ENSEMBLE_PLACEHOLDER, SOUP_PLACEHOLDER = "path/to/ensemble", "path/to/soup"
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
TASKS = {
    "EnsembleForImageClassification": ("image-classification", "AutoModelForImageClassification"),
    "EnsembleForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
}


def evaluation_rows(source) -> list[dict]:
    """The rows `evaluate_ensemble` wrote next to the run, if any."""
    path = Path(source) / EVALUATION_NAME if isinstance(source, (str, os.PathLike)) else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else []


def _card_data(
    model_name: str, method: str, base_model: str | None, task: str, rows: list[dict], kind: str, license: str | None
) -> ModelCardData:
    headline = [row for row in rows if row["model"] == kind and row.get("accuracy") is not None]
    eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=row.get("dataset") or "custom",
            dataset_name=row.get("dataset") or "custom",
            dataset_split=row["split"],
            metric_type="accuracy",
            metric_value=row["accuracy"],
        )
        for row in headline
    ]
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        base_model=base_model if base_model and not Path(base_model).is_absolute() else None,
        tags=["hf_starsse", method, "ensemble" if kind.startswith("ensemble") else "model-soup", task],
        datasets=sorted({row["dataset"] for row in rows if row.get("dataset")}) or None,
        license=license,
        eval_results=eval_results or None,
    )


def _result_rows(rows: list[dict], size: int) -> list[dict]:
    """The rows a card shows: members, the full ensemble and the soups."""
    keep = [r for r in rows if r["model"] in ("member", "uniform_soup", "greedy_soup")]
    keep += [r for r in rows if r["model"] == "ensemble" and r["size"] == size]
    return sorted(keep, key=lambda r: (r["split"], r["model"] != "ensemble", r["model"], r.get("member") or 0))


def ensemble_card(model, source, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    """
    The model card of an ensemble built from `source` (a run directory or member directories).

    Args:
        model (`EnsemblePreTrainedModel`): The ensemble (its config holds method, hyperparameters and lineage).
        source: Where the members came from; a run directory adds its manifest and `evaluation.json` results.
        repo_id (`str`, *optional*): The Hub repository id shown in the usage examples.
        license (`str`, *optional*): Licence identifier for the metadata.
    """
    config = model.config
    manifest = run_manifest(source) or {}
    method = config.ensemble_method or "members"
    title, description = METHODS.get(method, ("hand-picked members", "Members were given as directories."))
    task, auto_class = TASKS[type(model).__name__]
    name = repo_id or f"{title} ensemble of {config.num_members}"
    rows = evaluation_rows(source)
    size_rows = [r for r in rows if r["model"] == "ensemble" and r["size"] == config.num_members]
    card_data = _card_data(name, method, manifest.get("base_model"), task, size_rows, "ensemble", license)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "ensemble_card.md"),
        model_name=name,
        num_members=config.num_members,
        architecture=(config.member_config.get("architectures") or ["classifier"])[0],
        base_model=manifest.get("base_model"),
        method_title=title,
        method_description=description,
        hyperparameters=config.cycle_hyperparameters or {},
        members=config.members_info or [],
        results=_result_rows(rows, config.num_members),
        auto_class=auto_class,
        pipeline_task=task,
        repo_id=repo_id or ENSEMBLE_PLACEHOLDER,
    )


def soup_card(model, source, record: dict, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    """
    The model card of a soup (see [`ensemble_card`]); `record` is the soup's `soup.json` content.
    """
    manifest = run_manifest(source) or {}
    method = manifest.get("ensemble_method", "members")
    title = METHODS.get(method, ("hand-picked members",))[0]
    architecture = type(model).__name__
    is_image = "Image" in architecture
    task = "image-classification" if is_image else "text-classification"
    kind = f"{record['method']}_soup"
    rows = evaluation_rows(source)
    name = repo_id or f"{record['method'].capitalize()} soup of {title} members"
    card_data = _card_data(
        name, method, manifest.get("base_model"), task, [r for r in rows if r["model"] == kind], kind, license
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "soup_card.md"),
        model_name=name,
        soup_method=record["method"],
        num_chosen=len(record.get("chosen", record["members"])),
        num_members=len(record["members"]),
        members=[Path(member).name for member in record["members"]],
        chosen=record.get("chosen"),
        base_model=manifest.get("base_model"),
        method_title=title,
        architecture=architecture,
        batchnorm_recalibrated=record.get("batchnorm_recalibrated"),
        results=[r for r in rows if r["model"] == kind],
        auto_class="AutoModelForImageClassification" if is_image else "AutoModelForSequenceClassification",
        repo_id=repo_id or SOUP_PLACEHOLDER,
    )
