"""The errors hf_starsse raises about its inputs or environment that are not plain `ValueError`/`OSError`: the
command line prints these (and `ValueError`/`OSError`) as one line; anything else keeps its traceback."""

import importlib


class StarSSEError(Exception):
    """Base of hf_starsse's user-facing errors: something the user can fix (its message says how)."""


class MissingDependencyError(StarSSEError, ImportError):
    """An optional extra (e.g. `peft`) that the options asked for is not installed; the message names the install."""


class HubUnreachableError(StarSSEError, ConnectionError):
    """The Hugging Face Hub (or the endpoint in `HF_ENDPOINT`) cannot be reached."""


class MemberLockedError(StarSSEError, RuntimeError):
    """Another job is training the member."""


class BranchesFailedError(StarSSEError, RuntimeError):
    """Some processes of a branch-parallel launch failed; the members of the others are complete."""


def network_error_types() -> tuple[type[Exception], ...]:
    """The transport-error classes of the HTTP clients huggingface_hub uses (`httpx2`, `httpx`), when installed."""
    types = []
    for name in ("httpx2", "httpx"):
        try:
            types.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(types)
