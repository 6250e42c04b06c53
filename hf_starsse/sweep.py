"""`sweep_cycle_hyperparameters`: the paper's grid of cycle learning rate x cycle length for StarSSE, sharing one
trained member 0 across all cells, scored on a validation split, resumable.

```
output_dir/
  member0/              a run with the first member only (trained once)
  cells/lr2-len0.5/     one StarSSE run per cell, member 0 adopted from member0/
  sweep.json            every finished cell's results and the best cell
  sweep_heatmaps.png    ensemble accuracy, member accuracy and barrier over the grid
```
"""

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedModel
from transformers.utils import logging

from . import plots
from .atomic_io import atomic_write_json
from .diagnostics import barrier_height, interpolation_curve
from .evaluation import evaluate_ensemble
from .soups import make_dataloader
from .trainer import StarSSETrainer
from .training_args import StarSSETrainingArguments
from .weights import load_base_model, weights_sha256

SWEEP_RESULTS_NAME = "sweep.json"
logger = logging.get_logger(__name__)


def _cell_name(lr_ratio: float, length_ratio: float) -> str:
    return f"lr{lr_ratio:g}-len{length_ratio:g}"


def _cell_args(args: StarSSETrainingArguments, output_dir: Path, lr_ratio: float, length_ratio: float):
    """The run arguments of one cell: the first member's recipe, cycles scaled relative to it."""
    length = {"cycle_epochs": None, "cycle_steps": None}
    if args.max_steps > 0:
        length["cycle_steps"] = max(1, round(length_ratio * args.max_steps))
    else:
        length["cycle_epochs"] = length_ratio * args.num_train_epochs
    return dataclasses.replace(
        args,
        output_dir=str(output_dir),
        ensemble_method="starsse",
        cycle_learning_rate=lr_ratio * args.learning_rate,
        members_to_train=None,
        **length,
    )


def _score_cell(cell_dir: Path, eval_dataset, train_dataset, trainer: StarSSETrainer, num_points: int) -> dict:
    rows = evaluate_ensemble(cell_dir, {"validation": eval_dataset}, soups=(), **_eval_options(trainer))
    members = [row for row in rows if row["model"] == "member"]
    ensemble = max((row for row in rows if row["model"] == "ensemble"), key=lambda row: row["size"])
    first, second = (load_base_model(cell_dir / f"members/member-{i:02d}", trainer.args.device) for i in (0, 1))
    loader = make_dataloader(first, eval_dataset, trainer.data_collator, trainer.args.per_device_eval_batch_size)
    bn_loader = make_dataloader(first, train_dataset, trainer.data_collator, trainer.args.per_device_train_batch_size)
    curve = interpolation_curve(first, second, {"validation": loader}, num_points, batchnorm_dataloader=bn_loader)
    return {
        "ensemble_accuracy": ensemble["accuracy"],
        "ensemble_nll": ensemble["nll"],
        "member_accuracy": sum(row["accuracy"] for row in members) / len(members),
        "barrier": barrier_height(curve["validation"]["accuracy"]),
    }


def _eval_options(trainer: StarSSETrainer) -> dict:
    return {
        "data_collator": trainer.data_collator,
        "batch_size": trainer.args.per_device_eval_batch_size,
        "device": trainer.args.device,
    }


def sweep_cycle_hyperparameters(
    model_init: Callable[[], PreTrainedModel],
    args: StarSSETrainingArguments,
    train_dataset,
    eval_dataset,
    lr_ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
    length_ratios: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
    trainer_kwargs: dict | None = None,
    num_interpolation_points: int = 5,
) -> dict:
    """
    Train and score a StarSSE ensemble for every cell of the grid `cycle_learning_rate = lr_ratio * learning_rate`
    x `cycle length = length_ratio * first member's length`, all branching from one member 0 trained once. Each cell
    is scored on `eval_dataset` (a validation split, never the test split): ensemble accuracy and NLL, mean member
    accuracy, and the accuracy barrier between member 0 and member 1 (large: the cycles left the pre-train basin).
    Cells already in `output_dir/sweep.json` are reused, so a rerun continues an interrupted sweep.

    Args:
        model_init (`Callable`): Builds the pre-trained model with a fresh head (as for `Trainer`).
        args (`StarSSETrainingArguments`): The first member's recipe, `num_members` and `output_dir` (the sweep's).
        train_dataset, eval_dataset: Training data and the validation split.
        lr_ratios (`tuple[float]`, *optional*): Cycle learning rates relative to `learning_rate`.
        length_ratios (`tuple[float]`, *optional*): Cycle lengths relative to the first member's length.
        trainer_kwargs (`dict`, *optional*): More `StarSSETrainer` arguments (`data_collator`, `processing_class`,
            `callbacks`, ...).
        num_interpolation_points (`int`, *optional*, defaults to 5): Points of the barrier's interpolation curve.

    Returns:
        `dict`: `cells` (one dict per cell of the requested grid: ratios, cycle settings and scores), `best` (the
        cell with the highest ensemble accuracy, then lowest NLL) and `setup` (member 0's sha256 and the settings).
    """
    if args.num_members < 2:
        raise ValueError("A sweep compares ensembles: set num_members to 2 or more.")
    root = Path(args.output_dir)
    trainer_kwargs = dict(trainer_kwargs or {}, model_init=model_init, train_dataset=train_dataset)
    no_cycles = dict(cycle_learning_rate=None, cycle_epochs=None, cycle_steps=None)  # member 0 has none
    first_args = dataclasses.replace(
        args, output_dir=str(root / "member0"), num_members=1, members_to_train=None, **no_cycles
    )
    settings = {"num_members": args.num_members, "hyperparameters": first_args.run_hyperparameters()}
    _check_setup(root / SWEEP_RESULTS_NAME, settings, args.overwrite_output_dir)  # before anything is trained
    StarSSETrainer(args=first_args, **trainer_kwargs).train()  # skipped when member 0 is complete
    member0 = root / "member0" / "members" / "member-00"
    setup = {"member0_sha256": weights_sha256(member0), **settings}
    cells = _finished_cells(root / SWEEP_RESULTS_NAME, setup, args.overwrite_output_dir)
    for lr_ratio in lr_ratios:
        for length_ratio in length_ratios:
            if (lr_ratio, length_ratio) in cells:
                continue
            cell_dir = root / "cells" / _cell_name(lr_ratio, length_ratio)
            cell_args = _cell_args(args, cell_dir, lr_ratio, length_ratio)
            trainer = StarSSETrainer(args=cell_args, **trainer_kwargs)
            trainer.adopt_member(member0)
            trainer.train()
            scores = _score_cell(cell_dir, eval_dataset, train_dataset, trainer, num_interpolation_points)
            cells[(lr_ratio, length_ratio)] = {
                "lr_ratio": lr_ratio,
                "length_ratio": length_ratio,
                "cycle_learning_rate": cell_args.cycle_learning_rate,
                "cycle_epochs": cell_args.cycle_epochs,
                "cycle_steps": cell_args.cycle_steps,
                **scores,
            }
            # each finished cell is kept, even if a later one fails
            atomic_write_json(root / SWEEP_RESULTS_NAME, {"setup": setup, "cells": list(cells.values())})
    grid = [cells[(lr_ratio, length_ratio)] for lr_ratio in lr_ratios for length_ratio in length_ratios]
    best = max(grid, key=lambda cell: (cell["ensemble_accuracy"], -cell["ensemble_nll"]))
    atomic_write_json(root / SWEEP_RESULTS_NAME, {"setup": setup, "cells": list(cells.values()), "best": best})
    plots.plot_sweep_heatmaps(grid, root / "sweep_heatmaps.png")
    return {"setup": setup, "cells": grid, "best": best}


def _check_setup(results_path: Path, setup: dict, overwrite: bool) -> None:
    """Refuse to replace the finished cells of a sweep whose `setup` entries differ, unless `overwrite`."""
    if not results_path.is_file() or overwrite:
        return
    saved = json.loads(results_path.read_text()).get("setup", {})
    changed = sorted(key for key in setup if saved.get(key) != setup[key])
    if changed:
        raise ValueError(
            f"{results_path} holds the finished cells of a sweep with other {', '.join(changed)}; this sweep would "
            "replace them. Use another output_dir, or set overwrite_output_dir=True to redo every cell."
        )


def _finished_cells(results_path: Path, setup: dict, overwrite: bool) -> dict:
    """Cells of an earlier sweep with the same member 0 and settings, by (lr_ratio, length_ratio)."""
    if not results_path.is_file():
        return {}
    saved = json.loads(results_path.read_text())
    if saved.get("setup") != setup:
        _check_setup(results_path, setup, overwrite)
        logger.warning(f"{results_path} comes from a sweep with another member 0 or settings; its cells are redone.")
        shutil.rmtree(results_path.parent / "cells", ignore_errors=True)  # branches of the old member 0
        results_path.unlink()
        return {}
    return {(cell["lr_ratio"], cell["length_ratio"]): cell for cell in saved["cells"]}
