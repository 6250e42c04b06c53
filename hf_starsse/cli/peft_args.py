"""PEFT (LoRA) members from the command line: `PeftArguments`, the options of `hf-starsse train` and `sweep` with
TRL's names (`--use_peft --lora_r 8 --lora_alpha 16 --lora_target_modules query value`, or `--peft_config FILE`),
`get_peft_config` (the PEFT config they give for a model, its new classification head kept trainable) and
`with_peft` (a prepared task whose `model_init` wraps every freshly loaded model with `peft.get_peft_model`).

`peft` is an optional extra (`pip install 'hf_starsse[peft]'`), imported only when `--use_peft` is set.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from torch import nn
from transformers.utils import logging

from ..adapters.peft import ADAPTER_CONFIG_NAME, require_peft
from ..errors import MissingDependencyError
from ..tasks import family_of_architecture
from ..training.data import PreparedTask

logger = logging.get_logger(__name__)
ALL_LINEAR = "all-linear"  # PEFT's shorthand for every linear layer but the output layer
# The head names that PEFT's SEQ_CLS models put in `modules_to_save` themselves (not to be listed twice).
SEQ_CLS_HEADS = ("classifier", "score")
FILE_OPTIONS = ("use_peft", "peft_config")  # the other fields are the LoRA options


@dataclass
class PeftArguments:
    """Train PEFT adapters (LoRA) as the ensemble members, with the option names of TRL's `ModelConfig`."""

    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train PEFT adapters (LoRA) as the members instead of full models: each member directory holds "
            "its adapter, never the base. Needs pip install 'hf_starsse[peft]'."
        },
    )
    peft_config: str | None = field(
        default=None,
        metadata={
            "help": "Instead of the --lora_* options: a PEFT config as a JSON file (an adapter_config.json, a "
            "directory holding one, or LoraConfig(...).to_dict() saved as JSON), read with PEFT's config classes. "
            "Its base model and revision are not used (the base is --model_name_or_path) and inference_mode is "
            "turned off."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha: the adapter is scaled by lora_alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA layers' inputs."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules to adapt, e.g. query value, or all-linear (default: PEFT's defaults for the "
            "architecture)."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "More modules trained in full and saved with every adapter (the model's new classification "
            "head is always added)."
        },
    )
    lora_task_type: str | None = field(
        default=None,
        metadata={"help": "PEFT task type (default: SEQ_CLS for text classifiers, none for image classifiers)."},
    )
    use_rslora: bool = field(
        default=False, metadata={"help": "Rank-stabilised LoRA: scale by lora_alpha / sqrt(r) instead of / r."}
    )
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})

    def __post_init__(self):
        given = self.given_lora_options()
        if not self.use_peft:
            unused = (["peft_config"] if self.peft_config is not None else []) + given
            if unused:
                raise ValueError(
                    f"{_options(unused)} given without --use_peft, so no adapter would be trained: add --use_peft "
                    "to train LoRA members, or leave them out."
                )
            return
        try:
            require_peft()
        except ImportError as err:
            raise MissingDependencyError(f"--use_peft: {err}") from None
        if self.peft_config is not None and given:
            raise ValueError(
                f"--peft_config {self.peft_config} holds the whole PEFT config, so {_options(given)} would be "
                "ignored: set them in that file, or leave --peft_config out."
            )
        if self.lora_r < 1:
            raise ValueError(f"--lora_r {self.lora_r}: the LoRA rank must be a positive integer.")
        if self.lora_target_modules == [ALL_LINEAR]:
            self.lora_target_modules = ALL_LINEAR  # PEFT's shorthand is a string; a list would name a module
        self.base_config()  # a bad file or option is refused now, before any data or model is loaded

    def given_lora_options(self) -> list[str]:
        """The `lora_*` options (and `use_rslora`, `use_dora`) set to other values than their defaults."""
        return [
            option.name
            for option in dataclasses.fields(self)
            if option.name not in FILE_OPTIONS and getattr(self, option.name) != option.default
        ]

    def base_config(self, task_type: str | None = None):
        """
        The PEFT config of these options before it meets a model: the `--peft_config` file's, else a `LoraConfig`
        of the `--lora_*` options (with `task_type` unless `--lora_task_type` is given).

        Raises:
            `ValueError`: PEFT refuses the options.
        """
        if self.peft_config is not None:
            return load_peft_config_file(self.peft_config)
        peft = require_peft()
        try:
            return peft.LoraConfig(
                task_type=self.lora_task_type or task_type,
                r=self.lora_r,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                target_modules=self.lora_target_modules,
                modules_to_save=self.lora_modules_to_save,
                bias="none",
                use_rslora=self.use_rslora,
                use_dora=self.use_dora,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"--use_peft: PEFT refuses the LoRA options ({_first_line(err)}).") from None


def _options(names: list[str]) -> str:
    return ", ".join(f"--{name}" for name in names)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_peft_config_file(path: str):
    """
    A PEFT config read from a JSON file (or a directory holding `adapter_config.json`) with PEFT's own config class
    for its `peft_type`, ready to train a new adapter: `inference_mode` off, no base model or revision (those of the
    model it is applied to are recorded).

    Args:
        path (`str`): An `adapter_config.json`, a directory holding one, or any JSON file of a PEFT config's fields.

    Raises:
        `FileNotFoundError`: no such file. `ValueError`: not JSON, not a PEFT config, or refused by PEFT.
    """
    peft = require_peft()
    file = Path(path).expanduser()
    file = file / ADAPTER_CONFIG_NAME if file.is_dir() else file
    if not file.is_file():
        raise FileNotFoundError(f"--peft_config {path}: no such file.")
    try:
        entries = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--peft_config {file} is not a JSON file ({err}).") from None
    peft_type = entries.get("peft_type") if isinstance(entries, dict) else None
    config_class = peft.PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) if isinstance(peft_type, str) else None
    if config_class is None:
        raise ValueError(
            f"--peft_config {file} is not a PEFT config: it has no known peft_type (found {peft_type!r}; e.g. "
            "'LORA'). Give an adapter_config.json, or save one with LoraConfig(...).save_pretrained(directory)."
        )
    try:
        config = config_class.from_peft_type(**config_class.check_kwargs(**entries))
    except (TypeError, ValueError) as err:
        raise ValueError(f"--peft_config {file}: PEFT refuses it ({_first_line(err)}).") from None
    config.inference_mode = False
    config.base_model_name_or_path = config.revision = None
    return config


def new_head_modules(model: nn.Module) -> list[str]:
    """
    Names of the top-most modules of `model` none of whose parameters `from_pretrained` loaded: the new
    classification head (e.g. `classifier`). Empty when nothing, or everything, is new (a model built from config).
    """
    loaded = {name for name, parameter in model.named_parameters() if getattr(parameter, "_is_hf_initialized", False)}
    fresh = {name for name, _ in model.named_parameters()} - loaded
    if not loaded or not fresh:
        return []
    heads = []
    for name, module in model.named_modules():  # parents come before their children
        if not name or any(name.startswith(head + ".") for head in heads):
            continue
        parameters = [f"{name}.{key}" for key, _ in module.named_parameters()]
        if parameters and all(parameter in fresh for parameter in parameters):
            heads.append(name)
    return heads


def get_peft_config(options: PeftArguments, model: nn.Module):
    """
    The PEFT config that `options` give for `model` (a freshly loaded transformers classifier), or `None` without
    `use_peft`. Text classifiers get `task_type="SEQ_CLS"` unless the options set one; the modules that
    `from_pretrained` did not load (the new head, e.g. MobileNetV2's `classifier`) are added to `modules_to_save`,
    so that every member trains and stores its own head.

    Args:
        options (`PeftArguments`): The PEFT options.
        model (`torch.nn.Module`): The model the config is for.
    """
    if not options.use_peft:
        return None
    family = family_of_architecture(type(model).__name__)
    config = options.base_config(task_type=family and family.peft_task_type)
    if not hasattr(config, "modules_to_save"):
        return config  # prompt learning: refused by the trainer, which says why
    saved = list(config.modules_to_save or [])
    covered = saved + (list(SEQ_CLS_HEADS) if config.task_type == "SEQ_CLS" else [])
    added = [head for head in new_head_modules(model) if not any(head.endswith(name) for name in covered)]
    if added and options.peft_config is not None:
        logger.warning(
            f"Adding {added} to the modules_to_save of {options.peft_config}: {type(model).__name__}'s new head must "
            "be trained and saved with every member."
        )
    config.modules_to_save = (saved + added) or None
    return config


def peft_model_init(model_init, options: PeftArguments):
    """`model_init()` wrapped with `peft.get_peft_model` and the config `options` give for it (see `with_peft`)."""
    model = model_init()
    config = get_peft_config(options, model)
    try:
        return require_peft().get_peft_model(model, config)
    except ValueError as err:
        reason = _first_line(err)
        hint = " Name the modules to adapt with --lora_target_modules (or in --peft_config)." * ("target" in reason)
        raise ValueError(f"--use_peft: PEFT cannot adapt {type(model).__name__} ({reason}).{hint}") from None


def with_peft(task: PreparedTask, options: PeftArguments) -> PreparedTask:
    """
    `task` unchanged without `options.use_peft`; otherwise a copy whose `model_init` returns the freshly loaded model
    wrapped with `peft.get_peft_model` (a new adapter, and a new head, for every call: Local DE members each draw
    their own).

    Args:
        task (`PreparedTask`): A task from `prepare_task`.
        options (`PeftArguments`): The PEFT options.
    """
    if not options.use_peft:
        return task
    return dataclasses.replace(task, model_init=partial(peft_model_init, task.model_init, options))
