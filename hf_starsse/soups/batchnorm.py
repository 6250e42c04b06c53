"""BatchNorm in soups and members: re-estimating running statistics after averaging (or after training), and
fixing TensorFlow-style momenta."""

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import TrainerCallback

from ..adapters.peft import is_peft_model
from .predict import model_inputs


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` has BatchNorm layers with running statistics (which averaging weights gets wrong)."""
    return bool(_batchnorms(model))


def fix_batchnorm_momentum(model: nn.Module, momentum: float = 0.1) -> int:
    """
    Set BatchNorm momenta that are TensorFlow decays to a PyTorch momentum: transformers' MobileNetV1/V2 build
    `momentum=0.997`, which makes the running statistics those of the last batch. Returns how many layers changed.
    """
    changed = [bn for bn in _batchnorms(model) if (bn.momentum or 0) > 0.5]
    for bn in changed:
        bn.momentum = momentum
    return len(changed)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataloader, num_batches: int | None = None) -> nn.Module:
    """
    Re-estimate BatchNorm running statistics: reset them, then take their cumulative average over a pass of
    `dataloader` in train mode without gradients. Momenta and the train/eval mode are restored afterwards.

    Args:
        model (`nn.Module`): The model, updated in place.
        dataloader (iterable of `dict`): Batches of model inputs (training data, without augmentation ideally).
        num_batches (`int`, *optional*): Stop after this many batches (default: the whole pass).

    Returns:
        `nn.Module`: `model`.
    """
    batchnorms = _batchnorms(model)
    if not batchnorms:
        return model
    momenta = [bn.momentum for bn in batchnorms]
    was_training = model.training
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    device = next(model.parameters()).device
    model.train()
    try:
        for step, batch in enumerate(dataloader):
            if num_batches is not None and step >= num_batches:
                break
            model(**model_inputs(model, batch, device))
    finally:
        for bn, momentum in zip(batchnorms, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return model


class BatchNormRecalibrationCallback(TrainerCallback):
    """
    Re-estimate BatchNorm statistics (see `recalibrate_batchnorm`) over the training dataloader when training ends,
    so that the saved model (every member of a `StarSSETrainer` run) has statistics of its final weights. Short
    fine-tunes need this: running averages lag behind the weights, which can cost a single model many points, and
    comparisons with soups (always recalibrated) are only fair when members get the same treatment.

    Args:
        num_batches (`int`, *optional*): Limit the pass to this many batches (default: one epoch).

    PEFT members are left as they are: their BatchNorm statistics belong to the frozen base, which the trainer holds
    fixed (see `training/adapters.py`: `hold_base_batchnorm`) and no adapter stores.
    """

    def __init__(self, num_batches: int | None = None):
        self.num_batches = num_batches

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if model is None or train_dataloader is None or is_peft_model(model):
            return
        if has_batchnorm(model):
            recalibrate_batchnorm(model, train_dataloader, self.num_batches)
