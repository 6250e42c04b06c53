"""`sweep_cycle_hyperparameters`: the paper's grid of cycle learning rate x cycle length for StarSSE or SSE, sharing
one trained member 0 across all cells (of both methods), scored on a validation split, resumable.

```
output_dir/
  member0/                   a run with the first member only (trained once)
  cells/lr2-len0.5/          one StarSSE run per cell, member 0 adopted from member0/
  cells/sse-lr2-len0.5/      one SSE run per cell (its own chain), member 0 adopted from member0/
  sweep.json                 every finished cell's results and the best cell of each method
  sweep_heatmaps.png         StarSSE: ensemble accuracy, member accuracy and barrier over the grid
  sweep_heatmaps_sse.png     the same for SSE
```
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from statistics import fmean

from filelock import FileLock
from transformers import AutoConfig, PreTrainedModel
from transformers.utils import logging

from ..evaluation import plots
from ..evaluation.diagnostics import barrier_height, interpolation_curve
from ..evaluation.generative import evaluate_generative
from ..evaluation.run_evaluation import evaluate_ensemble
from ..soups.average import member_model
from ..soups.predict import make_dataloader, predicts_next_token
from ..storage.atomic_io import atomic_write_json
from ..storage.weights import weights_sha256
from .arguments import StarSSETrainingArguments
from .trainer import StarSSETrainer

SWEEP_RESULTS_NAME = "sweep.json"
SWEEP_METHODS = {"starsse": "StarSSE", "sse": "SSE"}
logger = logging.get_logger(__name__)


def cell_name(method: str, lr_ratio: float, length_ratio: float) -> str:
    """The directory name of a cell under `output_dir/cells`."""
    prefix = "" if method == "starsse" else f"{method}-"  # StarSSE cells keep their original names
    return f"{prefix}lr{lr_ratio:g}-len{length_ratio:g}"


def _cell_key(cell: dict) -> tuple[str, float, float]:
    """A cell's method and ratios; cells written before SSE sweeps existed are StarSSE cells."""
    return cell.get("ensemble_method", "starsse"), cell["lr_ratio"], cell["length_ratio"]


def _cell_args(args: StarSSETrainingArguments, output_dir: Path, method: str, lr_ratio: float, length_ratio: float):
    """The run arguments of one cell: the first member's recipe, cycles scaled relative to it."""
    length = {"cycle_epochs": None, "cycle_steps": None}
    if args.max_steps > 0:
        length["cycle_steps"] = max(1, round(length_ratio * args.max_steps))
    else:
        length["cycle_epochs"] = length_ratio * args.num_train_epochs
    return dataclasses.replace(
        args,
        output_dir=str(output_dir),
        ensemble_method=method,
        cycle_learning_rate=lr_ratio * args.learning_rate,
        members_to_train=None,
        **length,
    )


def _score_cell(cell_dir: Path, eval_dataset, train_dataset, trainer: StarSSETrainer, num_points: int) -> dict:
    member_dirs = [cell_dir / f"members/member-{i:02d}" for i in (0, 1)]
    next_token = predicts_next_token(AutoConfig.from_pretrained(member_dirs[0]))  # the members' head, by config
    scores = _ensemble_scores(cell_dir, eval_dataset, trainer, next_token)  # before members 0 and 1 are loaded
    first, second = (member_model(member_dir, trainer.args.device) for member_dir in member_dirs)
    loader = make_dataloader(first, eval_dataset, trainer.data_collator, trainer.args.per_device_eval_batch_size)
    bn_loader = make_dataloader(first, train_dataset, trainer.data_collator, trainer.args.per_device_train_batch_size)
    curve = interpolation_curve(first, second, {"validation": loader}, num_points, batchnorm_dataloader=bn_loader)
    return scores | {"barrier": barrier_height(curve["validation"]["accuracy"])}


def _ensemble_scores(cell_dir: Path, eval_dataset, trainer: StarSSETrainer, next_token: bool) -> dict:
    """The validation scores of a cell's ensemble (all its members) and of its mean member: accuracy and NLL, or for
    causal language models (`next_token`) the NLL per token of the validation text."""
    validation = {"validation": eval_dataset}
    if next_token:
        rows = evaluate_generative(cell_dir, text_datasets=validation, soups=(), **_eval_options(trainer))
        metrics = {"nll": "token_nll"}
    else:
        rows = evaluate_ensemble(cell_dir, validation, soups=(), **_eval_options(trainer))
        metrics = {"accuracy": "accuracy", "nll": "nll"}
    members = [row for row in rows if row["model"] == "member"]
    ensemble = max((row for row in rows if row["model"] == "ensemble"), key=lambda row: row["size"])
    return {
        **{f"ensemble_{name}": ensemble[key] for name, key in metrics.items()},
        **{f"member_{name}": fmean(row[key] for row in members) for name, key in metrics.items()},
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
    ensemble_method: str | None = None,
    first_member: str | os.PathLike | None = None,
) -> dict:
    """
    Train and score a StarSSE (or SSE) ensemble for every cell of the grid `cycle_learning_rate = lr_ratio *
    learning_rate` x `cycle length = length_ratio * first member's length`, all starting from one member 0 trained
    once. Each cell is scored on `eval_dataset` (a validation split, never the test split): ensemble and mean member
    accuracy and NLL (causal language models: NLL per token), and the accuracy barrier between member 0 and member 1
    (large: the cycles left the pre-train basin; next-token accuracy for causal language models).
    Cells already in `output_dir/sweep.json` are reused, so a rerun continues an interrupted sweep. StarSSE and SSE
    sweeps in the same `output_dir` share member 0 (SSE cells each train their own chain), so that each method gets
    its own optimum from the same starting point.

    Args:
        model_init (`Callable`): Builds the pre-trained model with a fresh head (as for `Trainer`).
        args (`StarSSETrainingArguments`): The first member's recipe, `num_members` and `output_dir` (the sweep's).
        train_dataset, eval_dataset: Training data and the validation split.
        lr_ratios (`tuple[float]`, *optional*): Cycle learning rates relative to `learning_rate`.
        length_ratios (`tuple[float]`, *optional*): Cycle lengths relative to the first member's length.
        trainer_kwargs (`dict`, *optional*): More `StarSSETrainer` arguments (`data_collator`, `processing_class`,
            `callbacks`, ...).
        num_interpolation_points (`int`, *optional*, defaults to 5): Points of the barrier's interpolation curve.
        ensemble_method (`str`, *optional*): `"starsse"` or `"sse"`; default: `args.ensemble_method`.
        first_member (`str` or `os.PathLike`, *optional*): An already trained member 0 (a member directory, e.g.
            `members/member-00` of a run with `args`' recipe) that every cell adopts; default: train it once into
            `output_dir/member0`.

    Returns:
        `dict`: `cells` (one dict per cell of the requested grid: method, ratios, cycle settings and scores), `best`
        (the cell with the highest ensemble accuracy, then lowest NLL) and `setup` (member 0's sha256 and the
        settings).
    """
    method = ensemble_method or args.ensemble_method
    if method not in SWEEP_METHODS:
        raise ValueError(
            f"The sweep tunes cycles: ensemble_method must be one of {', '.join(SWEEP_METHODS)}, not {method!r}."
        )
    if args.num_members < 2:
        raise ValueError("A sweep compares ensembles: set num_members to 2 or more.")
    root = Path(args.output_dir)
    trainer_kwargs = dict(trainer_kwargs or {}, model_init=model_init, train_dataset=train_dataset)
    no_cycles = dict(cycle_learning_rate=None, cycle_epochs=None, cycle_steps=None)  # member 0 has none
    first_args = dataclasses.replace(  # the same member 0 for every method
        args, output_dir=str(root / "member0"), ensemble_method="starsse", num_members=1, members_to_train=None,
        **no_cycles,
    )  # fmt: skip
    settings = {"num_members": args.num_members, "hyperparameters": first_args.run_hyperparameters()}
    _check_setup(root / SWEEP_RESULTS_NAME, settings, args.overwrite_output_dir)  # before anything is trained
    if first_member is None:
        StarSSETrainer(args=first_args, **trainer_kwargs).train()  # skipped when member 0 is complete
    member0 = Path(first_member) if first_member is not None else root / "member0" / "members" / "member-00"
    setup = {"member0_sha256": weights_sha256(member0), **settings}
    cells = _finished_cells(root / SWEEP_RESULTS_NAME, setup, args.overwrite_output_dir)
    for lr_ratio in lr_ratios:
        for length_ratio in length_ratios:
            if (method, lr_ratio, length_ratio) in cells:
                continue
            cell_dir = root / "cells" / cell_name(method, lr_ratio, length_ratio)
            cell_args = _cell_args(args, cell_dir, method, lr_ratio, length_ratio)
            trainer = StarSSETrainer(args=cell_args, **trainer_kwargs)
            trainer.adopt_member(member0)
            trainer.train()
            scores = _score_cell(cell_dir, eval_dataset, train_dataset, trainer, num_interpolation_points)
            cells[(method, lr_ratio, length_ratio)] = {
                "ensemble_method": method,
                "lr_ratio": lr_ratio,
                "length_ratio": length_ratio,
                "cycle_learning_rate": cell_args.cycle_learning_rate,
                "cycle_epochs": cell_args.cycle_epochs,
                "cycle_steps": cell_args.cycle_steps,
                **scores,
            }
            # each finished cell is kept, even if a later one fails
            _write_results(root, setup, cells)
    grid = [cells[(method, lr_ratio, length_ratio)] for lr_ratio in lr_ratios for length_ratio in length_ratios]
    best = best_cell(grid)
    _write_results(root, setup, cells, {method: best})
    suffix = "" if method == "starsse" else f"_{method}"
    plots.plot_sweep_heatmaps(grid, root / f"sweep_heatmaps{suffix}.png", method=SWEEP_METHODS[method])
    return {"setup": setup, "cells": grid, "best": best}


def best_cell(cells: list[dict]) -> dict:
    """The cell with the highest validation ensemble accuracy, ties broken by the lower NLL (causal language models:
    the lowest NLL per token)."""
    return max(cells, key=lambda cell: (cell.get("ensemble_accuracy", 0.0), -cell["ensemble_nll"]))


def _write_results(root: Path, setup: dict, cells: dict, best: dict | None = None) -> None:
    """
    `sweep.json`: every finished cell, and the best cell of each method swept so far (`best`: the latest). Written
    under a file lock and merged with the cells already there, so that sweeps of different methods (or grids) can
    run side by side in one `output_dir`.
    """
    path = root / SWEEP_RESULTS_NAME
    with FileLock(str(path) + ".lock"):
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if saved.get("setup") == setup:
            cells = {**{_cell_key(cell): cell for cell in saved["cells"]}, **cells}
        _write_merged(path, saved, setup, cells, best)


def _write_merged(path: Path, saved: dict, setup: dict, cells: dict, best: dict | None) -> None:
    by_method = {**saved.get("best_by_method", {}), **(best or {})}
    results = {"setup": setup, "cells": list(cells.values())}
    if best:
        results.update(best=next(iter(best.values())), best_by_method=by_method)
    elif by_method:
        results.update(best=saved.get("best"), best_by_method=by_method)
    atomic_write_json(path, results)


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
    """Cells of an earlier sweep with the same member 0 and settings, by (method, lr_ratio, length_ratio)."""
    if not results_path.is_file():
        return {}
    saved = json.loads(results_path.read_text())
    if saved.get("setup") != setup:
        _check_setup(results_path, setup, overwrite)
        logger.warning(f"{results_path} comes from a sweep with another member 0 or settings; its cells are redone.")
        shutil.rmtree(results_path.parent / "cells", ignore_errors=True)  # branches of the old member 0
        results_path.unlink()
        return {}
    return {_cell_key(cell): cell for cell in saved["cells"]}
