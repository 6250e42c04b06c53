"""What identifies a run: the manifest header (method, size, base model, hyperparameters, precision and a fingerprint
of the training data). Training again into a directory whose header differs is refused (see `RunDirectory.claim`)."""

import hashlib
import os

import numpy as np
import torch

from .. import __version__
from ..adapters.peft import is_peft_model
from .adapters import adapter_header
from .arguments import StarSSETrainingArguments

# Rows of the training data hashed into its fingerprint (evenly spaced, first and last included).
FINGERPRINT_ROWS = 32
# The TrainingArguments fields that set the numeric precision of training.
PRECISION_FIELDS = ("fp16", "bf16", "tf32", "half_precision_backend")


def _update(digest, value) -> None:
    """Feed `value` (a row: nested dicts, lists, tensors, arrays, images, scalars) into `digest`, canonically."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(f"<{key}>".encode())
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"[{len(value)}".encode())
        for item in value:
            _update(digest, item)
    elif isinstance(value, torch.Tensor):
        _update(digest, value.detach().cpu().numpy())
    elif isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
    elif hasattr(value, "tobytes") and hasattr(value, "size"):  # a PIL image
        digest.update(f"{getattr(value, 'mode', '')}{value.size}".encode() + value.tobytes())
    else:
        digest.update(repr(value).encode())


def dataset_fingerprint(dataset) -> dict | None:
    """
    A fingerprint of a training dataset: its length and the sha256 of `FINGERPRINT_ROWS` evenly spaced rows as the
    trainer gets them (after any transform). Content-based, so the same data loaded again gives the same fingerprint.

    Args:
        dataset: A `datasets.Dataset`, a torch map-style dataset, or anything with `__len__` and `__getitem__`;
            `None` for other datasets (iterable ones), whose identity is then not checked.
    """
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return None
    length = len(dataset)
    rows = sorted({round(i * (length - 1) / max(1, FINGERPRINT_ROWS - 1)) for i in range(FINGERPRINT_ROWS)})
    digest = hashlib.sha256()
    for row in rows[: min(length, FINGERPRINT_ROWS)]:
        _update(digest, dataset[row])
    return {"num_rows": length, "sha256": digest.hexdigest()}


def precision_settings(args: StarSSETrainingArguments) -> dict:
    """The precision settings of training (`fp16`, `bf16`, `tf32`, `half_precision_backend`), JSON-serialisable."""
    values = args.to_dict()
    return {name: values.get(name) for name in PRECISION_FIELDS}


def model_id(name_or_path: str | None) -> str | None:
    """A Hub id as is; a local directory as an absolute path (so runs resume from any working directory)."""
    return os.path.abspath(name_or_path) if name_or_path and os.path.isdir(name_or_path) else name_or_path or None


def run_header(args: StarSSETrainingArguments, model, train_dataset) -> dict:
    """
    The manifest header of the run that `args` trains from `model` on `train_dataset`; for a PEFT model, also its base
    (Hub id or path, revision, sha256 of its weights) and adapter configuration (see `adapter_header`).
    """
    config = getattr(model, "config", None)
    header = {
        "library": "hf_starsse",
        "library_version": __version__,
        "ensemble_method": args.ensemble_method,
        "num_members": args.num_members,
        "base_model": model_id(getattr(config, "_name_or_path", None)),
        "hyperparameters": args.run_hyperparameters(),
        "precision": precision_settings(args),
        "train_data": dataset_fingerprint(train_dataset),
    }
    return {**header, **adapter_header(model)} if is_peft_model(model) else header
