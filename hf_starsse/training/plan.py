"""The per-member policy of each method, as one pure function: `plan_members(args)` says, for every member, which
member it starts from, its seed, its peak learning rate, its length and its cycle index. The trainer, the sweep, the
manifest and the model cards all read it; adapter (PEFT) members can reuse it as is, since it says nothing about
what a member's weights are.

| method     | parent of member k (k >= 1) | cycle of member k | peak LR of member k  | length of member k   |
|------------|-----------------------------|-------------------|----------------------|----------------------|
| `starsse`  | 0                           | k                 | `cycle_learning_rate` | `cycle_epochs/steps` |
| `sse`      | k - 1                       | k                 | `cycle_learning_rate` | `cycle_epochs/steps` |
| `local_de` | none (pre-trained weights)  | 0                 | `learning_rate`       | the first member's   |

Member 0 is always an ordinary fine-tune of the pre-trained weights with the user's own schedule (cycle 0).
"""

from dataclasses import dataclass

from .arguments import StarSSETrainingArguments


@dataclass(frozen=True)
class MemberPlan:
    """
    How one member is obtained.

    Args:
        index (`int`): The member's index.
        parent (`int`, *optional*): The member whose weights it starts from; `None` for the pre-trained weights.
        seed (`int`): Its seed (`seed + index`): head initialisation, dropout and data order.
        data_seed (`int`, *optional*): Its data-order seed (`data_seed + index`) when `data_seed` is set.
        peak_learning_rate (`float`): The largest learning rate of its schedule.
        num_train_epochs (`float`), max_steps (`int`): Its length, as in `TrainingArguments` (`max_steps=-1`: epochs).
        cycle (`int`): Index of the learning-rate cycle that produces it; 0 is a fine-tune with the user's schedule,
            any other value the cycle schedule of `get_cycle_schedule`.
        fresh_optimizer (`bool`): Whether it starts with a fresh optimizer state and loss scale; otherwise it
            inherits its parent's.
    """

    index: int
    parent: int | None
    seed: int
    data_seed: int | None
    peak_learning_rate: float
    num_train_epochs: float
    max_steps: int
    cycle: int
    fresh_optimizer: bool


def plan_member(args: StarSSETrainingArguments, index: int) -> MemberPlan:
    """The plan of member `index` of the run described by `args` (see the module's table)."""
    method = args.ensemble_method
    cycle = 0 if method == "local_de" else index
    parent = None if index == 0 or method == "local_de" else 0 if method == "starsse" else index - 1
    epochs, steps = args.cycle_length() if cycle else (args.num_train_epochs, args.max_steps)
    return MemberPlan(
        index=index,
        parent=parent,
        seed=args.seed + index,
        data_seed=None if args.data_seed is None else args.data_seed + index,
        peak_learning_rate=args.cycle_peak_learning_rate if cycle else args.learning_rate,
        num_train_epochs=epochs,
        max_steps=steps,
        cycle=cycle,
        fresh_optimizer=parent is None or args.reset_optimizer_each_cycle,
    )


def plan_members(args: StarSSETrainingArguments) -> list[MemberPlan]:
    """The plan of every member `0..num_members-1` of the run described by `args`."""
    return [plan_member(args, index) for index in range(args.num_members)]
