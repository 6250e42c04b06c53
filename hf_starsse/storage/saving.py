"""Writing model directories (ensembles, soups) atomically, with the members' processor files."""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedModel

from .atomic_io import fsync_dir, fsync_files
from .weights import PICKLE_SUFFIXES

# Files of a member directory that belong to the member or its training, not to its processor.
NON_PROCESSOR_FILES = {
    "config.json",
    "generation_config.json",
    "training_args.bin",
    "trainer_state.json",
    "adapter_config.json",  # a PEFT adapter's: copied into a model directory, transformers would load it as one
}


def processor_files(member: Path) -> list[Path]:
    """Tokenizer / image-processor files of a member directory: everything but weights, config and training files."""
    return [
        file
        for file in member.iterdir()
        if file.is_file()
        and not file.name.startswith(".")
        and file.name not in NON_PROCESSOR_FILES
        and file.suffix != ".safetensors"
        and file.suffix not in PICKLE_SUFFIXES
        and not file.name.endswith(".index.json")
    ]


def save_model_dir(
    model: PreTrainedModel,
    out_dir: str | os.PathLike,
    processor_source: Path,
    extra_files: dict[str, str] | None = None,
    overwrite: bool = False,
) -> None:
    """
    Save `model` with `save_pretrained`, plus the processor files of `processor_source` and `extra_files`, into a
    temporary directory next to `out_dir`, then rename it into place: `out_dir` is either complete or untouched.

    Args:
        model (`PreTrainedModel`): The model to save.
        out_dir (`str` or `os.PathLike`): Destination directory.
        processor_source (`Path`): A member directory whose tokenizer / image-processor files are copied.
        extra_files (`dict[str, str]`, *optional*): More text files (model card, records) by file name.
        overwrite (`bool`, *optional*, defaults to `False`): Replace a non-empty `out_dir`.
    """
    check_out_dir(out_dir, [processor_source], overwrite)
    write_dir_atomically(out_dir, _model_writer(model, processor_source, extra_files), overwrite)


def _model_writer(model: PreTrainedModel, processor_source: Path, extra_files: dict[str, str] | None):
    """What fills a model directory: `save_pretrained`, the processor files of `processor_source`, `extra_files`."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        for file in processor_files(processor_source):
            shutil.copy2(file, tmp / file.name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)

    return write


def write_dir_atomically(out_dir: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False) -> None:
    """
    Fill a temporary directory next to `out_dir` with `write(tmp)`, then rename it into place: `out_dir` is either
    complete or untouched (an old one is replaced only with `overwrite`).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        write(tmp)
        fsync_files(tmp)
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out_dir.parent)


def replace_model_dir(model: PreTrainedModel, model_dir: str | os.PathLike, extra_files: dict[str, str] | None = None):
    """
    Save `model` over the saved model directory it came from, keeping that directory's other files (processor files,
    records) and replacing `extra_files`: written next to it, then swapped in, so `model_dir` is never half-written.
    """
    model_dir = Path(model_dir)
    write_dir_atomically(model_dir, _model_writer(model, model_dir, extra_files), overwrite=True)


def check_out_dir(out_dir: str | os.PathLike, members: list[Path], overwrite: bool = False) -> None:
    """
    Refuse an output directory that is or holds one of `members`, or that is not empty (unless `overwrite`): called
    before building a model, and again when saving it.
    """
    out_dir = Path(out_dir).resolve()
    if any(out_dir == member.resolve() or out_dir in member.resolve().parents for member in members):
        raise ValueError(f"{out_dir} holds the members themselves; save to a directory outside the run.")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; choose another directory or pass overwrite=True.")


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename `tmp` to `out_dir`; an old `out_dir` (overwrite) is moved aside first and deleted only afterwards."""
    if not (overwrite and out_dir.exists()):
        os.rename(tmp, out_dir)  # fails, leaving out_dir alone, if another writer filled it meanwhile
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old."))
    os.replace(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old)
