"""The prompt options of text-generation runs on the command line: `train` records those that made the members'
prompts in the run (`card_info.json`, see `save_card_info`); `evaluate` (and `soup` or `ensemble` given data) reuse
those they are not given."""

import sys

from ..cards.model_card import card_info
from ..tasks import family_of_model
from ..tasks.text_generation import PROMPT_OPTIONS, TEXT_GENERATION, completion_column
from ..training.data import DataArguments, PreparedTask, load_model_config

UNSET_BY_EMPTY = ("completion_column", "prompt_template")  # `--completion_column ''`: none (e.g. perplexity)


def run_prompt(data: DataArguments, task: PreparedTask) -> dict | None:
    """What `train` records: the prompt options of a run that learns answers after prompts, with the completion
    column it found; `{}` for one that learns plain text, `None` for runs that do not generate."""
    if task.family is not TEXT_GENERATION:
        return None
    column = completion_column(data, task.splits[data.train_split])
    return {} if column is None else {**data.prompt_options(), "completion_column": column}


def generates(model: str) -> bool:
    """Whether `model` (a member, ensemble or soup directory) is a causal language model, told by its config."""
    return family_of_model(load_model_config(model)) is TEXT_GENERATION


def _flag(option: str, value) -> str:
    return f"--{option}" if value is True else f"--{option} {value!r}"


def with_run_prompt(command: str, run_dir: str, member: str, given: dict, named: dict) -> dict:
    """
    The data options `given` to `command` (`evaluate`, `soup`, `ensemble`), with the prompt options recorded in the
    run `run_dir` (its first member: `member`) where the command line (`named`) sets none, said in one line; one it
    sets otherwise is used, also said. `''` unsets a completion column or template. A text-generation run that
    records none (trained through the Python API, or before runs recorded them) gets a line asking for them, unless
    some are given.
    """
    recorded = card_info(run_dir)["prompt"]  # {}: trained on plain text
    if recorded is None and not named.keys() & set(PROMPT_OPTIONS):
        if generates(member):
            print(
                f"hf-starsse {command}: {run_dir} records no prompt options: pass --completion_column, "
                "--prompt_template and --chat_template as in training (or record them with save_card_info(run_dir, "
                "prompt={...})); without them, the defaults are scored (a 'completion' column, else the text).",
                file=sys.stderr,
            )
    reused = {option: value for option, value in (recorded or {}).items() if option not in named}
    shown = [_flag(option, value) for option, value in reused.items() if value not in (None, False)]
    if shown:
        print(
            f"hf-starsse {command}: the run's prompt options ({run_dir}/card_info.json): {' '.join(shown)}",
            file=sys.stderr,
        )
    for option in (recorded or {}).keys() & named.keys():
        if given.get(option) != recorded[option]:
            print(
                f"hf-starsse {command}: {_flag(option, given.get(option))} is not what the run was trained with "
                f"({'no value' if recorded[option] is None else repr(recorded[option])}); scoring with the given one.",
                file=sys.stderr,
            )
    given = {**given, **reused}
    return {**given, **{option: None for option in UNSET_BY_EMPTY if given.get(option) == ""}}
