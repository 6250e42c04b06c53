"""The learning-rate schedule of one cycle: linear warmup, then cosine decay from the cycle's peak to zero."""

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cycle_lr_factor(current_step: int, *, num_cycle_steps: int, num_warmup_steps: int) -> float:
    """
    Multiplier of the peak learning rate at `current_step` (0-based) of a cycle.

    Args:
        current_step (`int`): Optimizer steps already taken in this cycle.
        num_cycle_steps (`int`): Length of the cycle in optimizer steps.
        num_warmup_steps (`int`): Steps of linear warmup from 0 to the peak at the start of the cycle.
    """
    if current_step < num_warmup_steps:
        return current_step / max(1, num_warmup_steps)
    progress = (current_step - num_warmup_steps) / max(1, num_cycle_steps - num_warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def get_cycle_schedule(
    optimizer: Optimizer, num_cycle_steps: int, num_warmup_steps: int = 0, last_epoch: int = -1
) -> LambdaLR:
    """
    Create the schedule of one SSE/StarSSE cycle: the learning rate rises linearly from 0 to the optimizer's learning
    rate (the cycle's peak) over `num_warmup_steps`, then follows a cosine down to 0 at `num_cycle_steps`. The
    schedule is picklable, so it can be saved in checkpoints and used in any training loop.

    Args:
        optimizer (`torch.optim.Optimizer`): The optimizer whose learning rate is scheduled; its `lr` is the peak.
        num_cycle_steps (`int`): Length of the cycle in optimizer steps.
        num_warmup_steps (`int`, *optional*, defaults to 0): Warmup steps at the start of the cycle.
        last_epoch (`int`, *optional*, defaults to -1): The index of the last step, when resuming.

    Example:
    ```python
    >>> import torch
    >>> from hf_starsse import get_cycle_schedule
    >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    >>> scheduler = get_cycle_schedule(optimizer, num_cycle_steps=10, num_warmup_steps=2)
    >>> [round(lr, 3) for lr in (scheduler.get_last_lr()[0],)]
    [0.0]
    ```
    """
    if num_cycle_steps < 1:
        raise ValueError(f"num_cycle_steps={num_cycle_steps} must be at least 1.")
    if not 0 <= num_warmup_steps < num_cycle_steps:
        raise ValueError(f"num_warmup_steps={num_warmup_steps} must be in [0, num_cycle_steps={num_cycle_steps}).")
    factor = partial(cycle_lr_factor, num_cycle_steps=num_cycle_steps, num_warmup_steps=num_warmup_steps)
    return LambdaLR(optimizer, factor, last_epoch)


def set_peak_learning_rate(optimizer: Optimizer, peak: float) -> float | None:
    """
    Give the param group with the largest learning rate `peak`, and the others the same ratio to it as before (e.g.
    layer-wise decay), whatever built the optimizer (`optim`, `optim_args`, `optimizer_cls_and_kwargs`, an overridden
    `create_optimizer`). Returns the largest learning rate the optimizer had, or `None` when nothing changed.
    """
    top = max(group["lr"] for group in optimizer.param_groups)
    if top == peak or top <= 0:
        return None
    for group in optimizer.param_groups:
        group["lr"] = peak if group["lr"] == top else group["lr"] * peak / top
        if "initial_lr" in group:
            group["initial_lr"] = group["lr"]
    return top
