"""`StarSSESFTTrainer` and `StarSSESFTConfig`: StarSSE, SSE and Local DE ensembles of causal language models trained
by TRL's `SFTTrainer` (its datasets of text, chat messages or prompt-completion pairs, its tokenization, packing and
completion-only loss, its `peft_config`). Needs `trl` (`pip install 'hf_starsse[trl]'`): `hf_starsse` imports this
module only when one of these two names is asked for."""

import importlib.util
import inspect
from dataclasses import dataclass

if importlib.util.find_spec("trl") is None:
    raise ImportError("StarSSESFTTrainer and StarSSESFTConfig need TRL: pip install 'hf_starsse[trl]'")

from trl import SFTConfig, SFTTrainer  # noqa: E402

from .arguments import StarSSETrainingArguments, given_training_args  # noqa: E402
from .trainer import StarSSETrainerMixin  # noqa: E402

# SFTConfig fields that change what the members learn from the same tokenized rows: part of the run's identity.
SFT_RUN_IDENTITY_FIELDS = ("loss_type", "completion_only_loss", "assistant_only_loss", "max_length", "packing")


@dataclass(repr=False)
class StarSSESFTConfig(SFTConfig, StarSSETrainingArguments):
    """
    TRL's [`~trl.SFTConfig`] with the ensemble fields of [`StarSSETrainingArguments`] (`ensemble_method`,
    `num_members`, `cycle_steps`, `cycle_learning_rate`, ...), for [`StarSSESFTTrainer`]. Fields both define take
    TRL's defaults (e.g. `learning_rate=2e-5`, `logging_steps=10`, `gradient_checkpointing=True`, `bf16` unless
    `fp16`); `SFTConfig.__post_init__` runs first, then `StarSSETrainingArguments`' checks. The SFT fields that change
    the loss (`loss_type`, `completion_only_loss`, `assistant_only_loss`, `max_length`, `packing`) are part of the
    run's identity: resuming a run directory requires them unchanged.
    """

    __repr__ = StarSSETrainingArguments.__repr__  # masks `hub_token`, which SFTConfig's dataclass repr shows

    def run_hyperparameters(self) -> dict:
        """The JSON-serialisable settings that define this run's members, SFT ones included (see the class)."""
        values = self.to_dict()
        return {**super().run_hyperparameters(), **{name: values[name] for name in SFT_RUN_IDENTITY_FIELDS}}


class StarSSESFTTrainer(StarSSETrainerMixin, SFTTrainer):
    """
    TRL's [`~trl.SFTTrainer`] that trains an ensemble as [`StarSSETrainer`] does: every member is fine-tuned by
    `SFTTrainer`'s machinery (it tokenizes a dataset of `"text"`, chat `"messages"` or `"prompt"`/`"completion"` rows
    once, then trains each member on it with its loss), and lands in `output_dir/members/member-NN/` with the
    manifest `output_dir/ensemble.json`. With `peft_config=LoraConfig(task_type="CAUSAL_LM", ...)` every member is an
    adapter over the frozen base. `build_ensemble(output_dir, ...)` then gives an ensemble that generates. It takes
    `SFTTrainer`'s arguments; `args` is a [`StarSSESFTConfig`] (a plain `SFTConfig` trains one model, as `SFTTrainer`).

    Example:
    ```python
    from datasets import load_dataset
    from hf_starsse import StarSSESFTConfig, StarSSESFTTrainer, build_ensemble

    args = StarSSESFTConfig(output_dir="runs/sft", num_train_epochs=1, learning_rate=2e-5, num_members=4,
                            cycle_steps=200, cycle_learning_rate=4e-5)
    trainer = StarSSESFTTrainer(model="Qwen/Qwen2.5-0.5B", args=args,
                                train_dataset=load_dataset("trl-lib/Capybara", split="train"))
    trainer.train()  # members 0..3 in runs/sft/members/
    ensemble = build_ensemble("runs/sft", "out/sft-ensemble")  # generates with the members' mean probabilities
    ```
    """

    def __init__(self, *args, **kwargs):
        training_args = given_training_args(args, kwargs)
        if isinstance(training_args, StarSSETrainingArguments) and not isinstance(training_args, SFTConfig):
            raise TypeError(
                "StarSSESFTTrainer takes a StarSSESFTConfig (SFTConfig plus the ensemble fields), not "
                "StarSSETrainingArguments: SFTTrainer would drop the ensemble fields."
            )
        super().__init__(*args, **kwargs)

    __init__.__signature__ = inspect.signature(SFTTrainer.__init__)

    def _reset_member_state(self, member: int) -> None:
        super()._reset_member_state(member)
        self._total_train_tokens = 0  # SFTTrainer's `num_tokens` log counts the member's own tokens
