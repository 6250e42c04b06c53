"""The run directory: the manifest `ensemble.json` (the run's identity and its complete members), member
directories, member locks and resume points. Atomic writes live in `storage/atomic_io.py`, weight files and hashes
in `storage/weights.py`, the processes' meeting point in `coordination.py`.

```
output_dir/
  ensemble.json                                # manifest, rewritten atomically under a file lock
  members/member-00/                           # save_pretrained dir of a member
  members/member-00/checkpoints/checkpoint-N/  # ordinary Trainer checkpoints, for resume
  .processes/process-N.json                    # while branch-parallel processes meet: each one's report
```
A member is complete only once the manifest lists it with the sha256 of its weights.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import sort_checkpoints
from transformers.utils import logging

from ..errors import MemberLockedError
from ..storage.atomic_io import atomic_write_json, fsync_files
from ..storage.weights import weight_files, weights_sha256
from .coordination import Rendezvous

logger = logging.get_logger(__name__)

MANIFEST_NAME = "ensemble.json"
MEMBERS_DIR = "members"
CHECKPOINTS_DIR = "checkpoints"
PROCESS_REPORTS_DIR = ".processes"
FORMAT_VERSION = 1
# Manifest fields that define a run: a directory holding a run that differs in any of them is refused.
# Adapter (PEFT) runs also have `adapter`, `base_model_revision` and `base_model_sha256`; full-model runs lack them.
IDENTITY_KEYS = ("ensemble_method", "base_model", "hyperparameters", "precision", "train_data")
ADAPTER_IDENTITY_KEYS = ("adapter", "base_model_revision", "base_model_sha256")
# Identity fields that manifests of earlier hf_starsse versions lack: such runs resume (with a warning) and get them.
LATER_IDENTITY_KEYS = ("precision", "train_data")
# Fields every manifest member entry has, with their types.
ENTRY_FIELDS = (("index", int), ("path", str), ("sha256", str))


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

    def member_logs(self, members: list[int]) -> list[dict[str, Any]]:
        """The Trainer log histories of `members` (from their `trainer_state.json`), one after another."""
        logs = []
        for member in members:
            state_file = self.member_dir(member) / TRAINER_STATE_NAME
            if state_file.is_file():
                logs.extend(json.loads(state_file.read_text())["log_history"])
        return logs

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
            raise MemberLockedError(
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
            if manifest is not None and not overwrite:
                self._check_same_kind(manifest, header)
            if manifest is not None and self._differences(manifest, header):
                if not overwrite:
                    raise ValueError(
                        f"output_dir {str(self.path)!r} holds a different hf_starsse run "
                        f"({'; '.join(self._differences(manifest, header))}). Use another output_dir, or set "
                        "overwrite_output_dir=True to discard it."
                    )
                self._discard()
                manifest = None
            older = [key for key in LATER_IDENTITY_KEYS if manifest is not None and key not in manifest]
            if older:
                logger.warning(
                    f"{self.manifest_path} was written by an older hf_starsse without {', '.join(older)}; resuming "
                    "it on the assumption that they did not change, and recording them now."
                )
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

    def _check_same_kind(self, manifest: dict[str, Any], header: dict[str, Any]) -> None:
        """Refuse to mix full-model members and PEFT adapter members in one run directory."""
        saved, wanted = bool(manifest.get("adapter")), bool(header.get("adapter"))
        if saved != wanted:
            kinds = ("full-model members", "PEFT adapter members")
            raise ValueError(
                f"output_dir {str(self.path)!r} holds a run of {kinds[saved]}, but this run trains {kinds[wanted]}: "
                "the two cannot be mixed in one run directory. Use another output_dir, or set "
                "overwrite_output_dir=True to discard it."
            )

    @staticmethod
    def _differences(manifest: dict[str, Any], header: dict[str, Any]) -> list[str]:
        """The identity fields in which `header` differs from `manifest` (fields an older manifest lacks: none)."""
        keys = [key for key in IDENTITY_KEYS if key in manifest or key not in LATER_IDENTITY_KEYS]
        keys += ADAPTER_IDENTITY_KEYS

        def flat(source: dict[str, Any]) -> dict[str, Any]:
            values = {}
            for key in keys:
                value = source.get(key)
                if isinstance(value, dict):
                    prefix = "" if key == "hyperparameters" else f"{key}."
                    values.update({f"{prefix}{name}": item for name, item in value.items()})
                else:
                    values[key] = value
            return values

        saved, wanted = flat(manifest), flat(header)
        # an adapter-config entry only one side has is one another peft version added (the kind itself is checked
        # by `_check_same_kind`): resuming with a newer peft is not refused for it
        keys = [
            key
            for key in set(saved) | set(wanted)
            if not key.startswith("adapter.") or key in saved.keys() & wanted.keys()
        ]
        return [
            f"{key}: {saved.get(key)!r} there, {wanted.get(key)!r} now"
            for key in sorted(keys)
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

    def remove_checkpoints(self, indices: list[int]) -> list[int]:
        """
        Delete the Trainer checkpoints of the members `indices`, once they are recorded (a recorded member is never
        resumed from a checkpoint). Returns the members that had some.
        """
        removed = [index for index in indices if self.checkpoints_dir(index).exists()]
        for index in removed:
            try:
                shutil.rmtree(self.checkpoints_dir(index))
            except FileNotFoundError:  # another job of the run removed it first
                pass
        return removed

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

    @property
    def rendezvous(self) -> Rendezvous:
        """Where the processes of a branch-parallel launch meet (`.processes/`)."""
        return Rendezvous(self.path / PROCESS_REPORTS_DIR)

    def clear_process_reports(self) -> None:
        """Remove the reports of an earlier meeting of processes (e.g. of a launch that crashed)."""
        self.rendezvous.clear()

    def report_process(self, process: int, report: dict[str, Any]) -> None:
        """Write process `process`'s report (JSON-serialisable) for `wait_for_reports`."""
        self.rendezvous.report(process, report)

    def wait_for_reports(
        self, num_processes: int, timeout: float = 1800, poll_seconds: float = 0.5
    ) -> list[dict[str, Any]]:
        """
        Wait until processes `0..num_processes-1` have reported and return their reports; a process that neither
        reports nor beats its heartbeat for `timeout` seconds (the trainer uses `ddp_timeout`) raises a
        `TimeoutError` naming it (see `Rendezvous.wait`).
        """
        return self.rendezvous.wait(num_processes, timeout, poll_seconds)


def run_manifest(source) -> dict | None:
    """The manifest of `source` when it is a run directory (a path with `ensemble.json`), else `None`."""
    if isinstance(source, (str, os.PathLike)) and (Path(source) / MANIFEST_NAME).is_file():
        return RunDirectory(source).read_manifest()
    return None
