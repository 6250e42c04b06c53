"""Model soups: the members' weights averaged into one model of the base architecture.

Weights are streamed from safetensors one tensor of one member at a time and accumulated in float64, so peak memory
is about one model whatever the number of members. Models with BatchNorm get their running statistics re-estimated
on training data after averaging.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel
from transformers.utils import logging

from ..adapters.peft import is_adapter_dir, processor_source
from ..cards.model_card import SOUP_RECORD_NAME, soup_card
from ..run.members import copy_member_tensors, load_members
from ..storage.saving import check_out_dir, save_model_dir
from ..storage.weights import load_base_model
from .batchnorm import has_batchnorm, recalibrate_batchnorm
from .lora import check_adapter_soup, lora_soup_model, save_lora_soup_adapter
from .predict import accuracy_metric, make_dataloader, predict_logits

logger = logging.get_logger(__name__)


@dataclass
class _SoupOptions:
    """How soups are evaluated and recalibrated."""

    train_dataset: object = None
    data_collator: Callable | None = None
    batch_size: int = 32
    num_batches: int | None = None
    device: str | torch.device | None = None

    def loader(self, model: nn.Module, dataset) -> DataLoader:
        return make_dataloader(model, dataset, self.data_collator, self.batch_size)


def member_model(member: Path, device: str | torch.device | None = None) -> PreTrainedModel:
    """One member as a model of the base architecture: its checkpoint, or a PEFT adapter merged into its base (then
    distances and interpolations between members are those of their weight deltas)."""
    return lora_soup_model([member], device) if is_adapter_dir(member) else load_base_model(member, device)


def _soup(member_dirs: list[Path], options: _SoupOptions) -> tuple[PreTrainedModel, bool]:
    """The averaged model (eval mode) and whether its BatchNorm statistics were re-estimated."""
    if is_adapter_dir(member_dirs[0]):  # LoRA: the mean of the merged members, W + mean_k(s B_k A_k)
        model = lora_soup_model(member_dirs, options.device)
    else:
        model = load_base_model(member_dirs[0], options.device)
        copy_member_tensors([model], member_dirs, average=True)
    if not has_batchnorm(model):
        return model.eval(), False
    if options.train_dataset is None:
        if len(member_dirs) > 1:
            logger.warning(
                "The soup has BatchNorm layers but no train_dataset was given: its running statistics are plain "
                "averages of the members' and can be far off. Pass train_dataset to re-estimate them."
            )
        return model.eval(), False
    recalibrate_batchnorm(model, options.loader(model, options.train_dataset), options.num_batches)
    return model.eval(), True


def _soup_files(model: PreTrainedModel, source, record: dict) -> dict[str, str]:
    """The soup's record and model card."""
    return {SOUP_RECORD_NAME: json.dumps(record, indent=2) + "\n", "README.md": str(soup_card(model, source, record))}


def uniform_soup(
    members,
    out_dir: str | os.PathLike | None = None,
    *,
    train_dataset=None,
    data_collator: Callable | None = None,
    batch_size: int = 32,
    num_batches: int | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    adapter_out_dir: str | os.PathLike | None = None,
) -> PreTrainedModel:
    """
    Average all members' weights into one model of the base architecture. LoRA members (PEFT adapter directories)
    are averaged exactly: the soup is the mean of the merged members, `W + mean_k(s B_k A_k)` (see
    `hf_starsse.soups.lora`).

    Args:
        members (`str`, `os.PathLike` or `list`): A run directory or a list of member directories (see `load_members`).
        out_dir (`str` or `os.PathLike`, *optional*): Save the soup here (`save_pretrained`, processor files copied
            from the first member, `soup.json` recording the members). Written atomically.
        train_dataset (*optional*): Training data to re-estimate BatchNorm statistics with (models with BatchNorm).
        data_collator (`Callable`, *optional*): Collator for `train_dataset` (default: `default_data_collator`).
        batch_size (`int`, *optional*, defaults to 32): Batch size of the BatchNorm pass.
        num_batches (`int`, *optional*): Limit the BatchNorm pass to this many batches.
        device (`str` or `torch.device`, *optional*): Where the soup is built and recalibrated (default: CPU).
        overwrite (`bool`, *optional*, defaults to `False`): Replace a non-empty `out_dir`.
        allow_pickle (`bool`, *optional*, defaults to `False`): Accept members with only pickle weights (see
            `load_members`).
        adapter_out_dir (`str` or `os.PathLike`, *optional*): LoRA members: also save the soup as one LoRA adapter of
            rank K·r here (see `save_lora_soup_adapter`).

    Returns:
        [`~transformers.PreTrainedModel`]: The soup, in eval mode.
    """
    member_dirs = load_members(members, allow_pickle)
    for directory in (out_dir, adapter_out_dir):
        if directory is not None:
            check_out_dir(directory, member_dirs, overwrite)
    if adapter_out_dir is not None:
        check_adapter_soup(member_dirs)
    options = _SoupOptions(train_dataset, data_collator, batch_size, num_batches, device)
    model, recalibrated = _soup(member_dirs, options)
    names = [str(member) for member in member_dirs]
    record = {"method": "uniform", "members": names, "batchnorm_recalibrated": recalibrated}
    if out_dir is not None:
        processors = processor_source(member_dirs[0])
        save_model_dir(model, out_dir, processors, _soup_files(model, members, record), overwrite)
    if adapter_out_dir is not None:
        save_lora_soup_adapter(member_dirs, adapter_out_dir, overwrite, record)
    return model


def _score(model: nn.Module, loader: DataLoader, metric: Callable) -> float:
    return metric(*predict_logits(model, loader))


def greedy_soup(
    members,
    eval_dataset,
    metric: Callable[[torch.Tensor, torch.Tensor], float] = accuracy_metric,
    out_dir: str | os.PathLike | None = None,
    *,
    train_dataset=None,
    data_collator: Callable | None = None,
    batch_size: int = 32,
    num_batches: int | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    adapter_out_dir: str | os.PathLike | None = None,
) -> tuple[PreTrainedModel, list[int]]:
    """
    Greedy soup (Wortsman et al., 2022): sort members by `metric` on held-out `eval_dataset`, then add each member
    to the soup only if the soup's metric does not drop. With BatchNorm and `train_dataset`, every candidate soup (the
    first, single-member one included) has its statistics re-estimated before it is scored.

    Args:
        members (`str`, `os.PathLike` or `list`): A run directory or a list of member directories.
        eval_dataset: Held-out data with a label column (never the test split).
        metric (`Callable`, *optional*): `metric(logits, labels) -> float`, higher is better (default: accuracy).
        out_dir, train_dataset, data_collator, batch_size, num_batches, device, overwrite, allow_pickle,
            adapter_out_dir: As in [`uniform_soup`] (the adapter form holds the chosen members).

    Returns:
        `tuple`: The soup and the positions (in `load_members` order) of the members it contains.
    """
    member_dirs = load_members(members, allow_pickle)
    for directory in (out_dir, adapter_out_dir):
        if directory is not None:
            check_out_dir(directory, member_dirs, overwrite)
    if adapter_out_dir is not None:
        check_adapter_soup(member_dirs)
    options = _SoupOptions(train_dataset, data_collator, batch_size, num_batches, device)
    loader, scores = None, []
    for member in member_dirs:
        model = member_model(member, device)
        if loader is None:
            loader = options.loader(model, eval_dataset)
        scores.append(_score(model, loader, metric))
    order = sorted(range(len(member_dirs)), key=lambda i: -scores[i])
    chosen = [order[0]]
    soup, recalibrated = _soup([member_dirs[order[0]]], options)
    best = _score(soup, loader, metric)
    for candidate in order[1:]:
        trial, trial_recalibrated = _soup([member_dirs[i] for i in chosen + [candidate]], options)
        score = _score(trial, loader, metric)
        logger.info(f"greedy soup: adding member {candidate} gives {score:.4f} (best so far {best:.4f})")
        if score >= best:
            chosen, best, soup, recalibrated = chosen + [candidate], score, trial, trial_recalibrated
    record = {
        "method": "greedy",
        "members": [str(member) for member in member_dirs],
        "member_scores": scores,
        "chosen": chosen,
        "score": best,
        "batchnorm_recalibrated": recalibrated,
    }
    if out_dir is not None:
        processors = processor_source(member_dirs[chosen[0]])
        save_model_dir(soup, out_dir, processors, _soup_files(soup, members, record), overwrite)
    if adapter_out_dir is not None:
        save_lora_soup_adapter([member_dirs[i] for i in chosen], adapter_out_dir, overwrite, record)
    return soup, chosen
