"""Publishing saved ensembles and soups on the Hub: `push_ensemble_to_hub` uploads a run's ensemble (and optionally
its soup and members) with their model cards (rendered by `cards/model_card.py`).

Adapter ensembles (PEFT members) go up as they are saved: config, processor files, card and the K adapters
(`adapters/<name>/`), plus the base model's weights only when the ensemble holds a copy of them (`include_base`). What
is pushed names the base model by its Hub id, never by a local path: the id recorded by training, or for a base trained
from a local directory the id declared with `save_card_info(run_dir, base_model=...)` or passed as `base_model=`.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token
from huggingface_hub.utils import validate_repo_id

from .. import __version__
from ..adapters.peft import ADAPTER_CONFIG_NAME
from ..cards.model_card import (
    ENSEMBLE_PLACEHOLDER,
    EVALUATION_NAME,
    SOUP_PLACEHOLDER,
    SOUP_RECORD_NAME,
    card_with_base_model,
)
from ..ensemble import AdapterEnsembleConfig, EnsembleConfig, build_ensemble
from ..run.directory import MANIFEST_NAME, RunDirectory
from ..soups.average import uniform_soup
from ..soups.batchnorm import has_batchnorm
from ..storage.saving import processor_files
from ..storage.weights import PICKLE_SUFFIXES, weight_files
from .adapters import adapter_ensemble_folders, hub_base_model, read_json, with_hub_base

# Files of a run directory that travel with its ensemble: the manifest and the evaluation tables.
RUN_FILES = (MANIFEST_NAME, EVALUATION_NAME, "evaluation.csv")
PUBLIC = "public"  # staging folder of files uploaded in place of local ones (cards, JSON without local paths)
ENSEMBLE_TYPES = (EnsembleConfig.model_type, AdapterEnsembleConfig.model_type)


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

    def add_dir(self, model_dir: Path, prefix: str = "", card: bool = True) -> None:
        for file in model_files(model_dir, card):
            self.files[f"{prefix}{file.relative_to(model_dir).as_posix()}"] = file


def model_files(model_dir: str | os.PathLike, card: bool = True) -> list[Path]:
    """
    The files of a saved model directory that load it and describe it: safetensors weights (and index), config (a
    PEFT adapter's too), processor files, model card (unless `card=False`), remote code and records; for a saved
    adapter ensemble also its adapters and, if it holds one, the copy of its base model. Pickles, Trainer state and
    checkpoints are left out.
    """
    model_dir = Path(model_dir)
    weights = weight_files(model_dir) + sorted(model_dir.glob("*.safetensors.index.json"))
    names = ("config.json", "generation_config.json", ADAPTER_CONFIG_NAME)
    configs = [model_dir / name for name in names if (model_dir / name).is_file()]
    others = sorted(file for file in processor_files(model_dir) if file.suffix not in PICKLE_SUFFIXES)
    others = [file for file in others if not file.name.endswith(".index.json") and (card or file.name != "README.md")]
    nested = [file for folder in adapter_ensemble_folders(model_dir) for file in model_files(folder, card=False)]
    return weights + configs + others + nested


def _folder_kind(path: Path) -> str:
    """`"run"`, `"ensemble"` or `"soup"`: what a local directory to push holds."""
    if (path / MANIFEST_NAME).is_file():
        return "run"
    if (path / SOUP_RECORD_NAME).is_file():
        return "soup"
    if read_json(path / "config.json").get("model_type") in ENSEMBLE_TYPES:
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


def _staged(plan: _Plan, name: str, text: str, staging: Path) -> None:
    """Upload `text` as `name` instead of the local file (kept in `staging/public/`)."""
    staged = staging / PUBLIC / plan.repo_id.replace("/", "--") / name
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(text)
    plan.files[name] = staged


def _staged_card(plan: _Plan, model_dir: Path, placeholder: str, staging: Path, base_model: str | None) -> None:
    """A copy of the model card whose usage examples load the model from its repository (and the base model from
    `base_model`, its Hub id, when known)."""
    card = model_dir / "README.md"
    if card.is_file():
        text = card.read_text().replace(f'"{placeholder}"', f'"{plan.repo_id}"')
        _staged(plan, "README.md", card_with_base_model(text, base_model) if base_model else text, staging)


def _without_local_paths(value):
    """`value` (parsed JSON) with every absolute path replaced by its last part (a directory or file name)."""
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(item) for item in value]
    return Path(value).name if isinstance(value, str) and os.path.isabs(value) else value


def _stage_public_json(plan: _Plan, staging: Path, base_model: str | None) -> None:
    """Upload JSON files that name local paths (a run's manifest, a soup's record, adapter configs) without them: the
    base model by its Hub id `base_model` when known, other paths by their last part."""
    for name, file in list(plan.files.items()):
        if file.suffix == ".json" and staging / PUBLIC not in file.parents:
            data = json.loads(file.read_text())
            public = _without_local_paths(with_hub_base(data, base_model))
            if public != data:
                _staged(plan, name, json.dumps(public, indent=2) + "\n", staging)


@dataclass
class _Options:
    """What to push beside the main model, as `push_ensemble_to_hub` takes it."""

    soup_repo_id: str | None = None
    soup_path: str | os.PathLike | None = None
    members_as_subfolders: bool = False
    include_base: bool | None = None
    base_model: str | None = None  # the base model's Hub id, once known


def _plan_uploads(path: Path, kind: str, repo_id: str, options: _Options, staging: Path) -> list[_Plan]:
    main = _Plan(repo_id, "soup" if kind == "soup" else "ensemble")
    model_dir = path
    if kind == "run":
        model_dir = staging / "ensemble"
        build_ensemble(path, model_dir, include_base=bool(options.include_base))
    main.add_dir(model_dir)
    placeholder = SOUP_PLACEHOLDER if kind == "soup" else ENSEMBLE_PLACEHOLDER
    _staged_card(main, model_dir, placeholder, staging, options.base_model)
    if kind == "run":
        main.files.update({name: path / name for name in RUN_FILES if (path / name).is_file()})
    if options.members_as_subfolders:  # without their own cards (PEFT's name the base by its local path)
        for member in RunDirectory(path).complete_members().values():
            main.add_dir(path / member["path"], prefix=f"{member['path']}/", card=False)
    plans = [main] if options.soup_repo_id is None else [main, _soup_plan(path, options, staging)]
    for plan in plans:
        _stage_public_json(plan, staging, options.base_model)
    return plans


def _soup_plan(path: Path, options: _Options, staging: Path) -> _Plan:
    """The upload of the soup to its own repository: `options.soup_path`, else the uniform soup of the run's members
    (for adapter members the merged soup, a plain checkpoint of the base architecture)."""
    soup_dir = Path(options.soup_path) if options.soup_path is not None else staging / "soup"
    if options.soup_path is None and has_batchnorm(uniform_soup(path, soup_dir)):
        raise ValueError(
            "The members have BatchNorm layers, whose statistics a soup must re-estimate on training data: save "
            "the soup with data first (trainer.save_soup or `hf-starsse soup --dataset ...`) and pass soup_path."
        )
    soup = _Plan(options.soup_repo_id, "soup")
    soup.add_dir(soup_dir)
    _staged_card(soup, soup_dir, SOUP_PLACEHOLDER, staging, options.base_model)
    return soup


def push_ensemble_to_hub(
    path: str | os.PathLike,
    repo_id: str,
    *,
    soup_repo_id: str | None = None,
    soup_path: str | os.PathLike | None = None,
    members_as_subfolders: bool = False,
    include_base: bool | None = None,
    base_model: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    dry_run_dir: str | os.PathLike | None = None,
) -> list[HubUpload]:
    """
    Publish an ensemble (or a soup) on the Hub: create the repository if needed (and the branch `revision`), then
    upload, in one commit per repository, the files that load the model (safetensors weights, config, processor
    files, remote code), its model card with usage examples pointing at the repository, and for a run directory its
    manifest and evaluation tables. Pickles, Trainer state and checkpoints are never uploaded. An adapter ensemble
    (PEFT members) goes up as it is saved: its adapters (`adapters/<name>/`) without the base model's weights, unless
    it holds a copy of them (`include_base`); what is pushed names the base model by its Hub id.

    Args:
        path (`str` or `os.PathLike`): A run directory (its ensemble of complete members is built for the upload), a
            saved ensemble (`save_ensemble` / `build_ensemble`) or a saved soup (`save_soup` / `uniform_soup`).
        repo_id (`str`): The repository, `"name"` (your namespace) or `"namespace/name"`.
        soup_repo_id (`str`, *optional*): Also push a soup to this separate repository: `soup_path`, or by default
            the uniform soup of the run's members (models without BatchNorm).
        soup_path (`str` or `os.PathLike`, *optional*): A saved soup to push to `soup_repo_id`.
        members_as_subfolders (`bool`, *optional*, defaults to `False`): Also upload each member of the run as a plain
            model under `members/member-NN/` (loadable with `from_pretrained(repo_id, subfolder=...)`; adapter members
            as PEFT saves them, loadable with `PeftModel.from_pretrained(base, repo_id, subfolder=...)`).
        include_base (`bool`, *optional*): Adapter ensembles: upload a copy of the base model's weights (`base/`) with
            the adapters. Default: as the saved ensemble holds them (a run directory: without).
        base_model (`str`, *optional*): Adapter ensembles and soups whose base model the adapters know only by a local
            path: its Hub id, which the pushed config, adapter configs, manifest and card name instead (default: the
            one declared with `save_card_info`, or named by the saved ensemble's card). Its weights must be those of
            the local copy (their sha256 is checked when the ensemble loads).
        private (`bool`, *optional*): Make new repositories private (default: the namespace's default).
        revision (`str`, *optional*): Branch to commit to, created from `main` if missing (default: `main`).
        commit_message (`str`, *optional*): Commit message (default: "Upload ensemble/soup with hf_starsse").
        token (`str`, *optional*): Hub token with write access (default: `HF_TOKEN` or the stored login). It is only
            sent to the Hub: never printed, logged or written to files.
        dry_run (`bool`, *optional*, defaults to `False`): Plan only: build what the upload needs, contact no server.
        dry_run_dir (`str` or `os.PathLike`, *optional*): A new or empty directory to write every file that would be
            uploaded into, one folder per repository (`namespace--name/`), to read them before pushing; implies
            `dry_run`.

    Returns:
        `list[HubUpload]`: One upload per repository, with the files and (unless `dry_run`) the commit made.
    """
    path = Path(path)
    kind = _folder_kind(path) if path.is_dir() else None
    if kind is None:
        raise FileNotFoundError(f"{path} is not a directory: pass a run directory, a saved ensemble or a soup.")
    dry_run = dry_run or dry_run_dir is not None
    _check_push(kind, repo_id, soup_repo_id, soup_path, members_as_subfolders, dry_run, token)
    base_model = hub_base_model(path, kind, soup_path, include_base, base_model)
    options = _Options(soup_repo_id, soup_path, members_as_subfolders, include_base, base_model)
    if dry_run_dir is not None and Path(dry_run_dir).exists() and any(Path(dry_run_dir).iterdir()):
        raise ValueError(f"dry_run_dir={dry_run_dir} is not empty: choose a new or empty directory.")
    api = HfApi(library_name="hf_starsse", library_version=__version__)
    uploads = []
    with tempfile.TemporaryDirectory(prefix="hf_starsse_push_") as staging:
        for plan in _plan_uploads(path, kind, repo_id, options, Path(staging)):
            upload = HubUpload(
                plan.repo_id,
                {name: _describe_source(file, Path(staging), path) for name, file in plan.files.items()},
                revision,
                private,
                commit_message or f"Upload {plan.kind} with hf_starsse",
            )
            if dry_run_dir is not None:
                for name, file in plan.files.items():
                    copy = Path(dry_run_dir) / plan.repo_id.replace("/", "--") / name
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(file, copy)
            elif not dry_run:
                upload.repo_id, upload.commit = _commit(api, plan, upload, token)
            uploads.append(upload)
    return uploads


def _describe_source(file: Path, staging: Path, path: Path) -> str:
    """A local file as shown in a plan; files built for the upload are shown as such (they are deleted afterwards)."""
    if staging in file.parents:
        folder = file.parts[len(staging.parts)]
        if folder == PUBLIC:
            what = "model card" if file.name == "README.md" else f"{file.name} without local paths"
        else:
            what = f"{folder} built from {path}"
        name = file.parts[len(staging.parts) + (2 if folder == PUBLIC else 1) :]  # public/<repo>/..., <folder>/...
        return f"<{what}>/{'/'.join(name)}"
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
