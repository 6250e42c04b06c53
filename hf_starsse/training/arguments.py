"""`StarSSETrainingArguments`: `TrainingArguments` plus the ensemble recipe (method, size, cycle hyperparameters)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)

ENSEMBLE_METHODS = ("starsse", "sse", "local_de")
# Fields that decide what the members of a run are: resuming a run directory requires them unchanged.
RUN_IDENTITY_FIELDS = (
    "ensemble_method",
    "seed",
    "data_seed",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "weight_decay",
    "optim",
    "optim_args",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "label_smoothing_factor",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "cycle_epochs",
    "cycle_steps",
    "cycle_learning_rate",
    "cycle_warmup_ratio",
    "reset_optimizer_each_cycle",
)


@dataclass(repr=False)  # keep TrainingArguments.__repr__, which masks tokens
class StarSSETrainingArguments(TrainingArguments):
    """
    [`~transformers.TrainingArguments`] for [`StarSSETrainer`]. The usual fields (`learning_rate`, `num_train_epochs`,
    `lr_scheduler_type`, ...) describe how the first member is fine-tuned from the pre-trained checkpoint; the fields
    below describe how the other members are obtained.

    Args:
        ensemble_method (`str`, defaults to `"starsse"`):
            `"starsse"`: every later member is a cycle that starts from member 0 (branches are independent);
            `"sse"`: each cycle starts from the previous member (a chain); `"local_de"`: every member is an
            independent fine-tune of the pre-trained checkpoint with its own seed and a fresh classification head.
        num_members (`int`, defaults to 5):
            Ensemble size K, member 0 included.
        cycle_epochs (`float`, *optional*):
            Length of each later cycle in epochs. Defaults to the first member's length.
        cycle_steps (`int`, *optional*):
            Length of each later cycle in optimizer steps (instead of `cycle_epochs`).
        cycle_learning_rate (`float`, *optional*):
            Peak learning rate of each later cycle. Defaults to `learning_rate`.
        cycle_warmup_ratio (`float`, defaults to 0.0):
            Fraction of each cycle spent in linear warmup before the cosine decay.
        reset_optimizer_each_cycle (`bool`, defaults to `True`):
            Start each cycle with a fresh optimizer state (the paper's default). When `False`, a cycle inherits the
            optimizer state of the member it starts from.
        members_to_train (`list[int]`, *optional*):
            Train only these member indices into the shared `output_dir` (parallel StarSSE branches, job arrays).
        branch_parallel (`bool`, defaults to `False`):
            StarSSE only: in a multi-process launch (`accelerate launch`, `torchrun`), train member 0 data-parallel,
            then give each process its own share of the branches, each trained on the full dataset without gradient
            synchronisation. Without it every member is trained data-parallel.
        overwrite_output_dir (`bool`, defaults to `False`):
            Discard a run with different settings found in `output_dir` instead of refusing to start.
        keep_member_checkpoints (`bool`, defaults to `False`):
            Keep each member's Trainer checkpoints (`members/member-NN/checkpoints/`, optimizer state included) once
            the member is recorded in the manifest. By default they are deleted then: resuming needs only recorded
            members, and the checkpoints of a K-member run weigh several times the members themselves.
    """

    ensemble_method: str = field(
        default="starsse",
        metadata={
            "help": "How members are obtained: 'starsse' (every cycle branches from member 0), 'sse' (each cycle "
            "continues from the previous member) or 'local_de' (independent fine-tunes with fresh heads).",
            "choices": list(ENSEMBLE_METHODS),
        },
    )
    num_members: int = field(default=5, metadata={"help": "Ensemble size K, the first member included."})
    cycle_epochs: float | None = field(
        default=None,
        metadata={"help": "Length of each later cycle in epochs (default: the first member's length)."},
    )
    cycle_steps: int | None = field(
        default=None,
        metadata={"help": "Length of each later cycle in optimizer steps; excludes cycle_epochs."},
    )
    cycle_learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate of each later cycle (default: learning_rate)."}
    )
    cycle_warmup_ratio: float = field(
        default=0.0, metadata={"help": "Fraction of each cycle used for linear warmup, in [0, 1)."}
    )
    reset_optimizer_each_cycle: bool = field(
        default=True,
        metadata={
            "help": "Reset the optimizer state (momentum, Adam moments, AMP scaler) at the start of each cycle."
        },
    )
    members_to_train: list[int] | None = field(
        default=None,
        metadata={
            "help": "Train only these member indices into the shared output_dir (parallel branches, job arrays)."
        },
    )
    branch_parallel: bool = field(
        default=False,
        metadata={
            "help": "StarSSE in a multi-process launch: member 0 data-parallel, then each process trains its own "
            "share of the branches on the full dataset (no gradient synchronisation between branches)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Discard a run with different settings found in output_dir instead of refusing to start."},
    )

    keep_member_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep each member's Trainer checkpoints after it is recorded (by default they are deleted then: "
            "resuming needs only recorded members)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.ensemble_method = str(self.ensemble_method).lower()
        if self.ensemble_method not in ENSEMBLE_METHODS:
            raise ValueError(
                f"ensemble_method={self.ensemble_method!r} is unknown; choose one of {', '.join(ENSEMBLE_METHODS)}."
            )
        if self.num_members < 1:
            raise ValueError(f"num_members={self.num_members} must be at least 1 (the first fine-tuned model).")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive.")
        if self.cycle_learning_rate is not None and self.cycle_learning_rate <= 0:
            raise ValueError(f"cycle_learning_rate={self.cycle_learning_rate} must be positive (or None).")
        if self.cycle_epochs is not None and self.cycle_steps is not None:
            raise ValueError("Set cycle_epochs or cycle_steps, not both: they both give the cycle length.")
        if self.cycle_epochs is not None and self.cycle_epochs <= 0:
            raise ValueError(f"cycle_epochs={self.cycle_epochs} must be positive.")
        if self.cycle_steps is not None and self.cycle_steps < 1:
            raise ValueError(f"cycle_steps={self.cycle_steps} must be at least 1.")
        if not 0 <= self.cycle_warmup_ratio < 1:
            raise ValueError(f"cycle_warmup_ratio={self.cycle_warmup_ratio} must be in [0, 1).")
        if self.branch_parallel:
            self._check_branch_parallel()
        if self.members_to_train is not None:
            self.members_to_train = self._validated_members(self.members_to_train)
        if self.ensemble_method == "local_de" and self._cycle_settings():
            logger.warning(
                f"ensemble_method='local_de' fine-tunes every member with the first member's recipe, so "
                f"{', '.join(self._cycle_settings())} {'is' if len(self._cycle_settings()) == 1 else 'are'} ignored."
            )

    def _check_branch_parallel(self) -> None:
        if self.ensemble_method != "starsse":
            kind = "form a chain" if self.ensemble_method == "sse" else "are independent fine-tunes"
            raise ValueError(
                f"branch_parallel=True trains the branches of member 0 side by side, which only StarSSE has: "
                f"ensemble_method={self.ensemble_method!r} members {kind}. Use ensemble_method='starsse', or train "
                "members in separate jobs with members_to_train."
            )
        sharded = [name for name in ("fsdp", "deepspeed") if getattr(self, name)]
        if sharded:
            raise ValueError(
                f"branch_parallel=True trains a whole model in each process, but {' and '.join(sharded)} would shard "
                f"it across processes. Remove {' and '.join(sharded)} (each branch must fit one device), or leave "
                "branch_parallel=False to train every member data-parallel."
            )

    def _cycle_settings(self) -> list[str]:
        """The cycle fields set away from their defaults."""
        defaults = {"cycle_warmup_ratio": 0.0, "reset_optimizer_each_cycle": True}
        names = ("cycle_epochs", "cycle_steps", "cycle_learning_rate", *defaults)
        return [name for name in names if getattr(self, name) != defaults.get(name)]

    def _validated_members(self, members: list[int]) -> list[int]:
        members = [int(member) for member in members]
        if not members:
            raise ValueError("members_to_train is empty; leave it None to train every member.")
        if len(set(members)) != len(members):
            raise ValueError(f"members_to_train={members} lists a member twice.")
        outside = [member for member in members if not 0 <= member < self.num_members]
        if outside:
            raise ValueError(
                f"members_to_train={members}: {outside} outside 0..{self.num_members - 1} "
                f"(num_members={self.num_members})."
            )
        members = sorted(members)
        if self.ensemble_method == "sse":
            for previous, member in zip(members, members[1:]):
                if member != previous + 1:
                    raise ValueError(
                        f"ensemble_method='sse' trains a chain: member {member} starts from member {member - 1}, "
                        f"which members_to_train={members} skips. Use consecutive members, e.g. "
                        f"{list(range(members[0], member + 1))}."
                    )
        return members

    @property
    def cycle_peak_learning_rate(self) -> float:
        """Peak learning rate of the cycles after member 0."""
        return self.learning_rate if self.cycle_learning_rate is None else self.cycle_learning_rate

    def cycle_length(self) -> tuple[float, int]:
        """`(num_train_epochs, max_steps)` of one later cycle, `max_steps=-1` when it is given in epochs."""
        if self.cycle_steps is not None:
            return self.num_train_epochs, self.cycle_steps
        if self.cycle_epochs is not None:
            return self.cycle_epochs, -1
        return self.num_train_epochs, self.max_steps

    def run_hyperparameters(self) -> dict:
        """The JSON-serialisable settings that define this run's members (stored in the manifest)."""
        values = self.to_dict()
        return {name: values[name] for name in RUN_IDENTITY_FIELDS}

    def members(self) -> list[int]:
        """The member indices this run trains, in order."""
        return self.members_to_train if self.members_to_train is not None else list(range(self.num_members))


def given_training_args(args: tuple, kwargs: dict):
    """The `args` a Trainer constructor was called with (its second positional argument, or by name)."""
    return kwargs["args"] if "args" in kwargs else args[1] if len(args) > 1 else None
