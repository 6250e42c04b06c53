"""The options of each `hf-starsse` command as dataclasses, and parsing them the way users expect from a CLI: no
abbreviated flags, a suggestion for a mistyped one, and errors that name options as flags."""

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..demo import DemoArguments
from ..training.arguments import StarSSETrainingArguments
from ..training.data import DataArguments
from .peft_args import PeftArguments


@dataclass
class SoupArguments:
    run_dir: str = field(metadata={"help": "The run directory whose complete members go into the soup."})
    output_dir: str = field(metadata={"help": "Where the soup is saved (a plain checkpoint of the base model)."})
    method: str = field(default="uniform", metadata={"help": "uniform or greedy.", "choices": ["uniform", "greedy"]})
    batch_size: int = field(default=32, metadata={"help": "Batch size of the BatchNorm pass and greedy scoring."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    calibrate: bool = field(
        default=False, metadata={"help": "Fit the soup's temperature on --eval_split and fold it into its head."}
    )


@dataclass
class EnsembleArguments:
    run_dir: str = field(metadata={"help": "The run directory whose complete members form the ensemble."})
    output_dir: str = field(
        metadata={"help": "Where the ensemble is saved (AutoModelFor... / pipeline() load it, with its model card)."}
    )
    members: list[int] | None = field(
        default=None, metadata={"help": "Positions of the members to use, e.g. 0 1 2 (default: every member)."}
    )
    include_base: bool = field(
        default=False, metadata={"help": "Adapter members: also save a copy of the base model (for offline use)."}
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Adapter members: the base model's Hub id or path, when not the one the adapters name."},
    )
    calibrate: bool = field(
        default=False,
        metadata={"help": "Fit the ensemble's temperature on --eval_split (held-out) and store it in its config."},
    )
    per_member: bool = field(default=False, metadata={"help": "With --calibrate: one temperature per member first."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of the calibration pass."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})


@dataclass
class CalibrateArguments:
    model_dir: str = field(metadata={"help": "A saved ensemble, soup or single classifier (updated in place)."})
    split: str = field(default="validation", metadata={"help": "The held-out split to fit on (never a test split)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Save the calibrated model here instead of updating model_dir."}
    )
    per_member: bool = field(default=False, metadata={"help": "Ensembles: one temperature per member first."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of the pass over the split."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})


@dataclass
class EvaluateArguments:
    run_dir: str = field(metadata={"help": "The run directory to evaluate (evaluation.csv/json are written there)."})
    splits: list[str] = field(default_factory=lambda: ["test"], metadata={"help": "Dataset splits to evaluate."})
    soups: list[str] = field(default_factory=lambda: ["uniform"], metadata={"help": "Soups to add: uniform, greedy."})
    batch_size: int = field(default=32, metadata={"help": "Evaluation batch size."})
    calibration_split: str | None = field(
        default=None, metadata={"help": "Held-out split to fit each model's temperature on (adds *_calibrated)."}
    )
    answer_options: list[str] | None = field(
        default=None,
        metadata={
            "help": "Text generation: the answers to score after each prompt, e.g. yes no (default: the names of a "
            "ClassLabel completion column). Without either, the perplexity of the completions (or of the text)."
        },
    )


@dataclass
class SweepArguments:
    lr_ratios: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0], metadata={"help": "Cycle LR / first LR values."}
    )
    length_ratios: list[float] = field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0], metadata={"help": "Cycle length / first length values."}
    )


@dataclass
class PushArguments:
    path: str = field(metadata={"help": "A run directory (its ensemble is built to upload), saved ensemble or soup."})
    repo_id: str = field(metadata={"help": "The Hub repository: 'name' (your namespace) or 'namespace/name'."})
    soup_repo_id: str | None = field(
        default=None, metadata={"help": "Also push a soup to this separate repository (default soup: uniform)."}
    )
    soup_path: str | None = field(default=None, metadata={"help": "A saved soup to push to soup_repo_id."})
    members_as_subfolders: bool = field(
        default=False, metadata={"help": "Also upload every member of the run under members/member-NN/."}
    )
    private: bool | None = field(default=None, metadata={"help": "Make new repositories private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created if missing)."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    token: str | None = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the stored login, which is safer)."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Print which files would go where; upload nothing."})
    dry_run_dir: str | None = field(
        default=None, metadata={"help": "Write the files that would be uploaded into this new directory (dry run)."}
    )


def optional_data_options() -> type:
    """`DataArguments` without the model (a run's member provides it) nor the cards' names (`train` records them),
    and with every field optional: `None` unless given, but flags (`--chat_template`, `--allow_pickle`) keep their
    `False`, so that they take no value, as in `train`."""
    skipped = ("model_name_or_path", "base_model_id", "dataset_name")
    fields = [f for f in dataclasses.fields(DataArguments) if f.name not in skipped]
    spec = [
        (f.name, f.type, dataclasses.field(default=False, metadata=f.metadata))
        if f.type is bool
        else (f.name, f.type | None, dataclasses.field(default=None, metadata=f.metadata))
        for f in fields
    ]
    return dataclasses.make_dataclass("DataOptions", spec)


DataOptions = optional_data_options()
# The argument dataclasses of each command, in the order `parse` returns them.
COMMAND_ARGUMENTS = {
    "train": (DataArguments, StarSSETrainingArguments, PeftArguments),
    "sweep": (DataArguments, StarSSETrainingArguments, SweepArguments, PeftArguments),
    "ensemble": (EnsembleArguments, DataOptions),
    "soup": (SoupArguments, DataOptions),
    "evaluate": (EvaluateArguments, DataOptions),
    "calibrate": (CalibrateArguments, DataOptions),
    "push": (PushArguments,),
    "demo": (DemoArguments, StarSSETrainingArguments),
}


def parse(command: str, argv: list[str], defaults: dict | None = None) -> tuple:
    """
    The options of `command` from the command line, or from one YAML/JSON file given instead. Flags are never
    abbreviated (`--num_member` is not `--num_members`); an unknown one is refused with the closest known flag.

    Args:
        command (`str`): A key of `COMMAND_ARGUMENTS`.
        argv (`list[str]`): The command's arguments.
        defaults (`dict`, *optional*): Defaults that replace the dataclasses' own (e.g. the demo's recipe).
    """
    parser = HfArgumentParser(COMMAND_ARGUMENTS[command], prog=f"hf-starsse {command}", allow_abbrev=False)
    defaults, given = dict(defaults or {}), given_options(argv)
    if command == "train" and "eval_split" in given and "eval_strategy" not in given:
        defaults["eval_strategy"] = "steps" if "eval_steps" in given else "epoch"  # a named split is evaluated
    if is_config_file(argv):
        return parser.parse_dict({**defaults, **read_config_file(argv[0])})
    parser.set_defaults(**defaults)
    *options, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unknown:
        raise ValueError(unknown_options_message(command, unknown))
    return tuple(options)


def is_config_file(argv: list[str]) -> bool:
    """Whether the options are one YAML or JSON file."""
    return len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json"))


def read_config_file(path: str) -> dict:
    """The options in a YAML or JSON file."""
    text = Path(path).read_text()
    return (json.loads(text) if path.endswith(".json") else yaml.safe_load(text)) or {}


def given_options(argv: list[str]) -> dict:
    """The options the user gave, by name (`--eval-split` as `eval_split`), with their value (`None` for a flag
    without one), on the command line or in a config file."""
    if is_config_file(argv):
        return read_config_file(argv[0])
    given = {}
    for position, arg in enumerate(argv):
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            following = argv[position + 1] if position + 1 < len(argv) else "--"
            given[name.replace("-", "_")] = value or (None if following.startswith("--") else following)
    return given


def command_flags(command: str) -> list[str]:
    """Every flag of `command`: `--name` for each field, and `--no_name` for booleans that default to `True`."""
    fields = [f for cls in COMMAND_ARGUMENTS[command] for f in dataclasses.fields(cls)]
    return [f"--{f.name}" for f in fields] + [f"--no_{f.name}" for f in fields if f.default is True]


def unknown_options_message(command: str, unknown: list[str]) -> str:
    """What `parse` says of arguments no option took: the unknown flags, each with the closest known one."""
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")] or unknown
    known = command_flags(command)
    hints = [
        f"{flag}: did you mean {guess[0]}?" for flag in flags if (guess := difflib.get_close_matches(flag, known, 1))
    ]
    said = f" ({'; '.join(hints)})" if hints else ""
    return f"unknown option(s) {' '.join(flags)}{said}; see hf-starsse {command} --help."


def cli_spelling(message: str, command: str) -> str:
    """`message` with the Python spelling of the command's options as flags (`overwrite=True` -> `--overwrite`,
    `members_to_train=[2]` -> `--members_to_train 2`), for errors raised by the library under the CLI."""
    defaults = {f.name: f.default for cls in COMMAND_ARGUMENTS.get(command, ()) for f in dataclasses.fields(cls)}

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2).strip("'\"[]").replace(",", "")
        if name not in defaults:
            return match.group(0)
        if value in ("True", "", "..."):
            return f"--{name}"
        if value == "False" and defaults[name] is True:
            return f"--no_{name}"
        return f"--{name} {match.group(2) if ' ' in value and not match.group(2).startswith('[') else value}"

    return re.sub(r"\b(\w+)=('[^']*'|\[[^\]]*\]|[^\s,;)]*[^\s,;).]|)", flag, message)
