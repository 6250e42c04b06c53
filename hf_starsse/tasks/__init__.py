"""The task registry: one module per task family, the one place that knows what a model does.

A family (`TaskFamily`, in `base.py`) declares which transformers architectures it covers (through an Auto mapping),
its `pipeline` task and Hub `pipeline_tag`, its ensemble classes, how member outputs combine, which metrics evaluate
it, how its training data is prepared and checked, and what its card says. Training, ensembles, soups, evaluation,
cards and the CLI ask the registry (`registry.py`) instead of branching on a task. Adding a task family means adding
one module here and listing it in `registry.FAMILIES`.

May import: transformers, datasets and `hf_starsse.errors`; nothing else of hf_starsse (every other package imports
this one).
"""

from .base import TaskFamily
from .registry import (
    FAMILIES,
    family_for_input,
    family_for_model,
    family_for_task,
    family_of_architecture,
    family_of_model,
    family_of_peft_task_type,
    peft_task_types,
)

__all__ = [
    "FAMILIES",
    "TaskFamily",
    "family_for_input",
    "family_for_model",
    "family_for_task",
    "family_of_architecture",
    "family_of_model",
    "family_of_peft_task_type",
    "peft_task_types",
]
