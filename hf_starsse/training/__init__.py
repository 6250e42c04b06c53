"""Training: `StarSSETrainingArguments` (`arguments.py`), the cycle schedule (`schedule.py`), the member plan
(`plan.py`, pure), `StarSSETrainer` (`trainer.py`; its behaviour as `StarSSETrainerMixin` for Trainer subclasses,
e.g. TRL's `SFTTrainer` in `sft.py`, imported only when asked for: trl is optional) and its mixins (`outputs.py`:
saving ensembles and soups from a trainer; `branch_parallel.py`: StarSSE branches in parallel processes), the
settings it refuses up front (`checks.py`), what identifies a run (`run_identity.py`), PEFT members (`adapters.py`),
the cycle hyperparameter sweep (`sweep.py`), and models and datasets by Hub id or local path prepared for a trainer
(`data.py`: `prepare_task`, `PreparedTask`, and their options `DataArguments` in `data_arguments.py`, used by the
CLI, the demo, the examples and the benchmarks).

May import: every package but `cli` and `demo` (a trainer saves ensembles and soups, and pushes them).
"""
