"""Model cards of saved ensembles and soups, and publishing them on the Hub.

Cards are rendered from the Jinja templates in `model_cards/` and carry YAML metadata built with
`huggingface_hub.ModelCardData` (library, base model, tags, datasets, licence, and `model-index` results from
`evaluation.json` when the run was evaluated) and a body describing the method, the members' lineage, the results and
how to load the model. `push_ensemble_to_hub` uploads a run's ensemble (and optionally its soup and members).
"""

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import validate_repo_id

from . import __version__
from .run_dir import MANIFEST_NAME, RunDirectory, run_manifest, weight_files
from .saving import processor_files

TEMPLATES = Path(__file__).parent / "model_cards"
EVALUATION_NAME = "evaluation.json"
SOUP_RECORD_NAME = "soup.json"
# Where the usage examples of a card point until the model has a Hub repository.
ENSEMBLE_PLACEHOLDER, SOUP_PLACEHOLDER = "path/to/ensemble", "path/to/soup"
# Files of a run directory that travel with its ensemble: the manifest and the evaluation tables.
RUN_FILES = (MANIFEST_NAME, EVALUATION_NAME, "evaluation.csv")
# Never uploaded: pickle formats (torch.save, Trainer state), whatever directory they are found in.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
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
    "AdapterEnsembleForImageClassification": ("image-classification", "AutoModelForImageClassification"),
    "AdapterEnsembleForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
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
    base_model = manifest.get("base_model") or getattr(config, "base_model", None)  # adapter ensembles name it
    card_data = _card_data(name, method, base_model, task, size_rows, "ensemble", license)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "ensemble_card.md"),
        model_name=name,
        num_members=config.num_members,
        architecture=(config.member_config.get("architectures") or ["classifier"])[0],
        base_model=base_model,
        peft_type=getattr(config, "peft_type", None),
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


# ----- publishing ------------------------------------------------------------------------------------------------


@dataclass
class HubUpload:
    """
    One commit to one Hub repository, planned or made by [`push_ensemble_to_hub`].

    Args:
        repo_id (`str`): The repository.
        files (`dict[str, str]`): Each path in the repository and the local file it comes from.
        revision (`str`, *optional*): The branch committed to (default: `main`).
        private (`bool`, *optional*): Visibility of the repository if it is created.
        commit_message (`str`): The commit message.
        commit (`CommitInfo`, *optional*): The commit made (`None` in a dry run).
    """

    repo_id: str
    files: dict[str, str]
    revision: str | None = None
    private: bool | None = None
    commit_message: str = ""
    commit: CommitInfo | None = None

    def describe(self) -> str:
        """The upload as text: the repository, then one `path in repo <- local file` line per file."""
        visibility = {None: "visibility by default", True: "private", False: "public"}[self.private]
        lines = [f"{self.repo_id} (revision {self.revision or 'main'}, {visibility}): {self.commit_message!r}"]
        width = max(map(len, self.files), default=0)
        return "\n".join(lines + [f"  {name:<{width}} <- {source}" for name, source in sorted(self.files.items())])


@dataclass
class _Plan:
    """A planned upload: the local file of each path in the repository."""

    repo_id: str
    kind: str
    files: dict[str, Path] = field(default_factory=dict)

    def add_dir(self, model_dir: Path, prefix: str = "") -> None:
        for file in model_files(model_dir):
            self.files[f"{prefix}{file.name}"] = file


def model_files(model_dir: str | os.PathLike) -> list[Path]:
    """
    The files of a saved model directory that load it and describe it: safetensors weights (and index), config,
    processor files, model card, remote code and records. Pickles, Trainer state and checkpoints are left out.
    """
    model_dir = Path(model_dir)
    weights = weight_files(model_dir) + sorted(model_dir.glob("*.safetensors.index.json"))
    configs = [model_dir / name for name in ("config.json", "generation_config.json") if (model_dir / name).is_file()]
    others = sorted(file for file in processor_files(model_dir) if file.suffix not in PICKLE_SUFFIXES)
    return weights + configs + [file for file in others if not file.name.endswith(".index.json")]


def _folder_kind(path: Path) -> str:
    """`"run"`, `"ensemble"` or `"soup"`: what a local directory to push holds."""
    if (path / MANIFEST_NAME).is_file():
        return "run"
    if (path / SOUP_RECORD_NAME).is_file():
        return "soup"
    from .ensemble import EnsembleConfig  # imported here: the ensemble package imports this module

    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == EnsembleConfig.model_type:
        return "ensemble"
    raise ValueError(
        f"{path} is neither a run directory ({MANIFEST_NAME}), a saved ensemble (save_ensemble / build_ensemble) nor "
        f"a saved soup ({SOUP_RECORD_NAME}): pass one of those to push."
    )


def _check_repo_id(repo_id: str, option: str) -> None:
    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise ValueError(
            f"{option}={repo_id!r} is not a valid Hub repository id ({str(err).splitlines()[0]}); use 'name' or "
            "'namespace/name' with letters, digits, '-', '_' and '.'."
        ) from None


def _check_push(kind, repo_id, soup_repo_id, soup_path, members_as_subfolders, dry_run, token) -> None:
    """Every input problem of a push, as one clear error, before anything is built or sent."""
    _check_repo_id(repo_id, "repo_id")
    if soup_repo_id is not None:
        _check_repo_id(soup_repo_id, "soup_repo_id")
        if soup_repo_id == repo_id:
            raise ValueError("soup_repo_id must differ from repo_id: the soup and the ensemble are separate models.")
        if kind == "soup":
            raise ValueError("path is a soup already: push it with repo_id, without soup_repo_id.")
        if kind == "ensemble" and soup_path is None:
            raise ValueError("A saved ensemble holds no soup: pass soup_path (a saved soup) with soup_repo_id.")
    elif soup_path is not None:
        raise ValueError("soup_path needs soup_repo_id, the repository the soup goes to.")
    if soup_path is not None and not (Path(soup_path) / SOUP_RECORD_NAME).is_file():
        raise ValueError(f"soup_path={soup_path} is not a saved soup (it has no {SOUP_RECORD_NAME}).")
    if members_as_subfolders and kind != "run":
        raise ValueError("members_as_subfolders needs a run directory as path (a saved model has no member files).")
    if not dry_run and (token or get_token()) is None:
        raise ValueError(
            "No Hugging Face token found: pass token=..., set HF_TOKEN, or log in with `hf auth login` (or use "
            "dry_run to see what would be uploaded)."
        )


def _staged_card(plan: _Plan, model_dir: Path, placeholder: str, staging: Path) -> None:
    """A copy of the model card whose usage examples load the model from its repository."""
    card = model_dir / "README.md"
    if card.is_file():
        staged = staging / plan.repo_id.replace("/", "--") / "README.md"
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(card.read_text().replace(f'"{placeholder}"', f'"{plan.repo_id}"'))
        plan.files["README.md"] = staged


def _plan_uploads(path, kind, repo_id, soup_repo_id, soup_path, members_as_subfolders, staging: Path) -> list[_Plan]:
    from .ensemble import build_ensemble  # imported here: the ensemble and soup modules import this module
    from .soups import has_batchnorm, uniform_soup

    main = _Plan(repo_id, "soup" if kind == "soup" else "ensemble")
    model_dir = path
    if kind == "run":
        model_dir = staging / "ensemble"
        build_ensemble(path, model_dir)
    main.add_dir(model_dir)
    _staged_card(main, model_dir, SOUP_PLACEHOLDER if kind == "soup" else ENSEMBLE_PLACEHOLDER, staging)
    if kind == "run":
        main.files.update({name: path / name for name in RUN_FILES if (path / name).is_file()})
    if members_as_subfolders:
        for member in RunDirectory(path).complete_members().values():
            main.add_dir(path / member["path"], prefix=f"{member['path']}/")
    plans = [main]
    if soup_repo_id is not None:
        soup_dir = Path(soup_path) if soup_path is not None else staging / "soup"
        if soup_path is None and has_batchnorm(uniform_soup(path, soup_dir)):
            raise ValueError(
                "The members have BatchNorm layers, whose statistics a soup must re-estimate on training data: save "
                "the soup with data first (trainer.save_soup or `hf-starsse soup --dataset ...`) and pass soup_path."
            )
        soup = _Plan(soup_repo_id, "soup")
        soup.add_dir(soup_dir)
        _staged_card(soup, soup_dir, SOUP_PLACEHOLDER, staging)
        plans.append(soup)
    return plans


def push_ensemble_to_hub(
    path: str | os.PathLike,
    repo_id: str,
    *,
    soup_repo_id: str | None = None,
    soup_path: str | os.PathLike | None = None,
    members_as_subfolders: bool = False,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
) -> list[HubUpload]:
    """
    Publish an ensemble (or a soup) on the Hub: create the repository if needed (and the branch `revision`), then
    upload, in one commit per repository, the files that load the model (safetensors weights, config, processor
    files, remote code), its model card with usage examples pointing at the repository, and for a run directory its
    manifest and evaluation tables. Pickles, Trainer state and checkpoints are never uploaded.

    Args:
        path (`str` or `os.PathLike`): A run directory (its ensemble of complete members is built for the upload), a
            saved ensemble (`save_ensemble` / `build_ensemble`) or a saved soup (`save_soup` / `uniform_soup`).
        repo_id (`str`): The repository, `"name"` (your namespace) or `"namespace/name"`.
        soup_repo_id (`str`, *optional*): Also push a soup to this separate repository: `soup_path`, or by default
            the uniform soup of the run's members (models without BatchNorm).
        soup_path (`str` or `os.PathLike`, *optional*): A saved soup to push to `soup_repo_id`.
        members_as_subfolders (`bool`, *optional*, defaults to `False`): Also upload each member of the run as a plain
            model under `members/member-NN/` (loadable with `from_pretrained(repo_id, subfolder=...)`).
        private (`bool`, *optional*): Make new repositories private (default: the namespace's default).
        revision (`str`, *optional*): Branch to commit to, created from `main` if missing (default: `main`).
        commit_message (`str`, *optional*): Commit message (default: "Upload ensemble/soup with hf_starsse").
        token (`str`, *optional*): Hub token with write access (default: `HF_TOKEN` or the stored login). It is only
            sent to the Hub: never printed, logged or written to files.
        dry_run (`bool`, *optional*, defaults to `False`): Plan only: build what the upload needs, contact no server.

    Returns:
        `list[HubUpload]`: One upload per repository, with the files and (unless `dry_run`) the commit made.
    """
    path = Path(path)
    kind = _folder_kind(path) if path.is_dir() else None
    if kind is None:
        raise FileNotFoundError(f"{path} is not a directory: pass a run directory, a saved ensemble or a soup.")
    _check_push(kind, repo_id, soup_repo_id, soup_path, members_as_subfolders, dry_run, token)
    api = HfApi(library_name="hf_starsse", library_version=__version__)
    uploads = []
    with tempfile.TemporaryDirectory(prefix="hf_starsse_push_") as staging:
        for plan in _plan_uploads(path, kind, repo_id, soup_repo_id, soup_path, members_as_subfolders, Path(staging)):
            upload = HubUpload(
                plan.repo_id,
                {name: _describe_source(file, Path(staging), path) for name, file in plan.files.items()},
                revision,
                private,
                commit_message or f"Upload {plan.kind} with hf_starsse",
            )
            if not dry_run:
                upload.repo_id, upload.commit = _commit(api, plan, upload, token)
            uploads.append(upload)
    return uploads


def _describe_source(file: Path, staging: Path, path: Path) -> str:
    """A local file as shown in a plan; files built for the upload are shown as such (they are deleted afterwards)."""
    if staging in file.parents:
        what = "model card" if file.name == "README.md" else f"{file.parts[len(staging.parts)]} built from {path}"
        return f"<{what}>/{file.name}"
    return str(file)


def _commit(api: HfApi, plan: _Plan, upload: HubUpload, token: str | None) -> tuple[str, CommitInfo]:
    """Create the repository (and branch) if needed and commit the plan's files; returns the full repo id."""
    repo_id = api.create_repo(plan.repo_id, token=token, private=upload.private, exist_ok=True).repo_id
    if upload.revision not in (None, "main"):
        api.create_branch(repo_id, branch=upload.revision, token=token, exist_ok=True)
    operations = [CommitOperationAdd(name, str(file)) for name, file in sorted(plan.files.items())]
    commit = api.create_commit(
        repo_id, operations, commit_message=upload.commit_message, revision=upload.revision, token=token
    )
    return repo_id, commit
