"""The run directory: the manifest `ensemble.json`, member directories, weight hashes and atomic writes.

```
output_dir/
  ensemble.json                                # manifest, rewritten atomically under a file lock
  members/member-00/                           # save_pretrained dir of a member
  members/member-00/checkpoints/checkpoint-N/  # ordinary Trainer checkpoints, for resume
  .processes/process-N.json                    # while branch-parallel processes meet: each one's report
```
A member is complete only once the manifest lists it with the sha256 of its weights.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import sort_checkpoints
from transformers.utils import logging

logger = logging.get_logger(__name__)

MANIFEST_NAME = "ensemble.json"
MEMBERS_DIR = "members"
CHECKPOINTS_DIR = "checkpoints"
PROCESS_REPORTS_DIR = ".processes"
FORMAT_VERSION = 1
# Manifest fields that define a run: a directory holding a run that differs in any of them is refused.
IDENTITY_KEYS = ("ensemble_method", "base_model", "hyperparameters")
# Fields every manifest member entry has, with their types.
ENTRY_FIELDS = (("index", int), ("path", str), ("sha256", str))


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory, fsync, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; shared run directories must stay readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically (see `atomic_write_text`)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The safetensors weight files of a `save_pretrained` directory, sorted by name."""
    return sorted(Path(model_dir).glob("*.safetensors"))


def pickle_weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The pickle weight files (`pytorch_model*.bin`) of a `save_pretrained` directory, sorted by name."""
    return sorted(Path(model_dir).glob("pytorch_model*.bin"))


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


def fsync_files(model_dir: str | os.PathLike) -> None:
    """Flush the files directly inside `model_dir` (not sub-directories) to disk."""
    model_dir = Path(model_dir)
    for file in model_dir.iterdir():
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(model_dir)


class RunDirectory:
    """
    Reads and writes one run directory. Writers take a file lock, so parallel jobs (StarSSE branches, job arrays)
    can share it.

    Args:
        path (`str` or `os.PathLike`): The run's `output_dir`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest_path = self.path / MANIFEST_NAME

    def member_dir(self, index: int) -> Path:
        """Directory of member `index`: its `save_pretrained` files."""
        return self.path / MEMBERS_DIR / f"member-{index:02d}"

    def checkpoints_dir(self, index: int) -> Path:
        """Trainer checkpoints of member `index` while it trains."""
        return self.member_dir(index) / CHECKPOINTS_DIR

    def last_checkpoint(self, index: int) -> str | None:
        """
        The newest Trainer checkpoint of member `index` to resume from, or `None`. The Trainer writes
        `trainer_state.json` last, so a checkpoint whose state does not parse was cut short by a crash and is skipped.
        So is one taken at the last step: resuming from it inside an epoch, `Trainer` would take one step too many.
        """
        if not self.checkpoints_dir(index).is_dir():
            return None
        for checkpoint in reversed(sort_checkpoints(str(self.checkpoints_dir(index)))):
            try:
                state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())
            except (OSError, ValueError):
                logger.warning(f"Skipping {checkpoint}: it was not completely written (interrupted while saving).")
                continue
            if state["global_step"] < state["max_steps"]:
                return checkpoint
        return None

    def lock_member(self, index: int) -> FileLock:
        """
        Take the lock that lets one job at a time train member `index` (released by `.release()` or when the
        process exits, even if it crashes).
        """
        self.member_dir(index).mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.member_dir(index) / ".training.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RuntimeError(
                f"Member {index} in {self.path} is being trained by another job. Wait for it, or train other members "
                "(members_to_train)."
            ) from None
        return lock

    def _lock(self) -> FileLock:
        return FileLock(str(self.path / f".{MANIFEST_NAME}.lock"))

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or `None` when the directory holds no run yet."""
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{self.manifest_path} is not valid JSON ({err}); the run directory is damaged. Move it away, or set "
                "overwrite_output_dir=True to start over."
            ) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("members"), list):
            raise ValueError(f"{self.manifest_path} is not an hf_starsse manifest (no 'members' list).")
        if manifest.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"{self.manifest_path} was written by a newer hf_starsse; upgrade the library.")
        for position, entry in enumerate(manifest["members"]):
            if not isinstance(entry, dict) or not all(isinstance(entry.get(key), kind) for key, kind in ENTRY_FIELDS):
                raise ValueError(
                    f"{self.manifest_path}: members[{position}] is not a member entry (needs "
                    f"{', '.join(key for key, _ in ENTRY_FIELDS)}); the manifest is damaged. Restore it, or start "
                    "over in a new output_dir."
                )
        return manifest

    def claim(self, header: dict[str, Any], overwrite: bool = False) -> None:
        """
        Start or resume the run described by `header` (method, base model, hyperparameters, size).

        Args:
            header (`dict`): Manifest fields without `members`.
            overwrite (`bool`): Discard a run with different settings instead of raising.
        """
        self.check_writable()
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock():
            try:
                manifest = self.read_manifest()
            except ValueError:
                if not overwrite:
                    raise
                manifest = None
                self._discard()
            if manifest is not None and self._differences(manifest, header):
                if not overwrite:
                    raise ValueError(
                        f"output_dir {str(self.path)!r} holds a different hf_starsse run "
                        f"({'; '.join(self._differences(manifest, header))}). Use another output_dir, or set "
                        "overwrite_output_dir=True to discard it."
                    )
                self._discard()
                manifest = None
            members = [] if manifest is None else manifest["members"]
            saved_size = 0 if manifest is None else manifest.get("num_members", 0)
            num_members = max([header["num_members"], saved_size] + [entry["index"] + 1 for entry in members])
            atomic_write_json(
                self.manifest_path,
                {"format_version": FORMAT_VERSION, **header, "num_members": num_members, "members": members},
            )

    def check_writable(self) -> None:
        """Raise a `PermissionError` naming the run directory when it cannot be created or written."""
        existing = next(path for path in (self.path, *self.path.parents) if path.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(
                f"output_dir {str(self.path)!r} cannot be written: {existing} is not a writable directory. Choose "
                "another output_dir, or make it writable."
            )

    @staticmethod
    def _differences(manifest: dict[str, Any], header: dict[str, Any]) -> list[str]:
        saved = {key: manifest.get(key) for key in IDENTITY_KEYS}
        saved.update(saved.pop("hyperparameters") or {})
        wanted = {key: header.get(key) for key in IDENTITY_KEYS}
        wanted.update(wanted.pop("hyperparameters") or {})
        return [
            f"{key}: {saved.get(key)!r} there, {wanted.get(key)!r} now"
            for key in sorted(set(saved) | set(wanted))
            if saved.get(key) != wanted.get(key)
        ]

    def _discard(self) -> None:
        shutil.rmtree(self.path / MEMBERS_DIR, ignore_errors=True)
        self.manifest_path.unlink(missing_ok=True)

    def _resolve(self, entry: dict[str, Any]) -> Path:
        """The directory of a manifest entry, which must lie inside the run directory (symlinks followed)."""
        relative = Path(entry["path"])
        inside = not relative.is_absolute() and ".." not in relative.parts
        if not inside or not (self.path / relative).resolve().is_relative_to(self.path.resolve()):
            raise ValueError(
                f"{self.manifest_path}: member {entry['index']} has path {entry['path']!r}, which leads outside the "
                "run directory. Member paths must be relative paths inside it: restore the manifest entry."
            )
        return self.path / relative

    def complete_members(self) -> dict[int, dict[str, Any]]:
        """The manifest entries of complete members by index, each checked against the sha256 of its weights."""
        manifest = self.read_manifest()
        complete = {}
        for entry in [] if manifest is None else manifest["members"]:
            member_dir = self._resolve(entry)
            if not weight_files(member_dir):
                raise ValueError(
                    f"Member {entry['index']} is listed as complete in {self.manifest_path} but {member_dir} holds no "
                    "weights. Restore the directory, or start the run over in a new output_dir."
                )
            if weights_sha256(member_dir) != entry["sha256"]:
                raise ValueError(
                    f"The weights in {member_dir} do not match the sha256 recorded for member {entry['index']} in "
                    f"{self.manifest_path}: they were changed or corrupted. Restore them, or start over in a new "
                    "output_dir."
                )
            complete[entry["index"]] = entry
        return complete

    def record_member(
        self, index: int, parent: int | None, seed: int, steps: int, processes: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """
        Mark a member complete: flush its files, hash its weights, and add it to the manifest atomically.

        Args:
            index (`int`): Member index.
            parent (`int`, *optional*): The member whose weights it started from (`None`: the pre-trained model).
            seed (`int`): The member's seed.
            steps (`int`): Optimizer steps it was trained for.
            processes (`dict`, *optional*): How a multi-process launch trained it (recorded as `"processes"`).

        Returns:
            `dict`: The manifest entry.
        """
        member_dir = self.member_dir(index)
        fsync_files(member_dir)
        entry = {
            "index": index,
            "parent": parent,
            "seed": seed,
            "steps": steps,
            "path": member_dir.relative_to(self.path).as_posix(),
            "sha256": weights_sha256(member_dir),
        }
        if processes is not None:
            entry["processes"] = processes
        with self._lock():
            manifest = self.read_manifest()
            if manifest is None:
                raise FileNotFoundError(f"{self.manifest_path} disappeared while member {index} was training.")
            members = [other for other in manifest["members"] if other["index"] != index] + [entry]
            manifest["members"] = sorted(members, key=lambda other: other["index"])
            atomic_write_json(self.manifest_path, manifest)
        return entry

    def import_member(self, index: int, source: str | os.PathLike, seed: int, steps: int) -> dict[str, Any]:
        """
        Copy a finished model directory (e.g. member 0 of another run) in as member `index` of this run and record
        it; its Trainer checkpoints are left behind. The run must be claimed first.

        Args:
            index (`int`): Member index it becomes.
            source (`str` or `os.PathLike`): A `save_pretrained` directory with safetensors weights.
            seed (`int`), steps (`int`): Its seed and optimizer steps, for the manifest.
        """
        if not weight_files(source):
            raise FileNotFoundError(f"{source} holds no *.safetensors weights to import.")
        target = self.member_dir(index)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(CHECKPOINTS_DIR, ".*"))
        return self.record_member(index, None, seed, steps)

    def _reports_dir(self) -> Path:
        return self.path / PROCESS_REPORTS_DIR

    def clear_process_reports(self) -> None:
        """Remove the reports of an earlier meeting of processes (e.g. of a launch that crashed)."""
        shutil.rmtree(self._reports_dir(), ignore_errors=True)

    def report_process(self, process: int, report: dict[str, Any]) -> None:
        """Write process `process`'s report (JSON-serialisable) for `wait_for_reports`."""
        self._reports_dir().mkdir(exist_ok=True)
        atomic_write_json(self._reports_dir() / f"process-{process}.json", report)

    def wait_for_reports(self, num_processes: int, poll_seconds: float = 0.5) -> list[dict[str, Any]]:
        """
        Wait, without a time limit, until processes `0..num_processes-1` have reported, and return their reports.
        Processes that train for different lengths of time meet here rather than in a collective call, which would
        time out (`ddp_timeout`).
        """
        paths = [self._reports_dir() / f"process-{process}.json" for process in range(num_processes)]
        while not all(path.is_file() for path in paths):
            time.sleep(poll_seconds)
        return [json.loads(path.read_text()) for path in paths]


def run_manifest(source) -> dict | None:
    """The manifest of `source` when it is a run directory (a path with `ensemble.json`), else `None`."""
    if isinstance(source, (str, os.PathLike)) and (Path(source) / MANIFEST_NAME).is_file():
        return RunDirectory(source).read_manifest()
    return None


def load_weights(model: torch.nn.Module, model_dir: str | os.PathLike) -> None:
    """
    Load the safetensors weights of a `save_pretrained` directory into `model` in place (see `load_state`).

    Args:
        model (`torch.nn.Module`): The model to update.
        model_dir (`str` or `os.PathLike`): A directory holding `model.safetensors` (or its shards).
    """
    files = weight_files(model_dir)
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
