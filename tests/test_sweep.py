import json
import math
from pathlib import Path

import pytest
from PIL import Image
from transformers import TrainerCallback

from hf_starsse.training.sweep import cell_name, sweep_cycle_hyperparameters

from conftest import load_text_model, make_args, text_dataset


class CountTrainings(TrainerCallback):
    """Counts train() calls per (run directory, member)."""

    def __init__(self):
        self.runs = []

    def on_train_begin(self, args, state, control, **kwargs):
        member_dir = Path(args.output_dir).parent
        self.runs.append((member_dir.parent.parent.name, member_dir.name))


def sweep_options(base_model: str, **options) -> dict:
    """`sweep_cycle_hyperparameters` arguments for the tiny text task from `base_model` (2 interpolation points
    unless given); `options` adds or overrides the rest (args, grid, callbacks, ...)."""
    return (
        dict(
            model_init=lambda: load_text_model(base_model, seed=None),
            train_dataset=text_dataset(),
            eval_dataset=text_dataset(n=16, seed=9),
            num_interpolation_points=2,
        )
        | options
    )


def test_sweep_reuses_member_0_and_resumes(tmp_path, pretrained_bert):
    counter = CountTrainings()
    options = sweep_options(
        pretrained_bert,
        args=make_args(tmp_path / "sweep", num_members=2, cycle_steps=None),
        lr_ratios=(0.5, 4.0),
        length_ratios=(0.5, 1.0),
        trainer_kwargs={"callbacks": [counter]},
        num_interpolation_points=3,
    )
    results = sweep_cycle_hyperparameters(**options)
    member0_runs = [run for run in counter.runs if run[1] == "member-00"]
    assert member0_runs == [("member0", "member-00")]  # trained once, adopted by the 4 cells
    assert sorted(counter.runs) == sorted([("member0", "member-00")] + [(c, "member-01") for c in (
        "lr0.5-len0.5", "lr0.5-len1", "lr4-len0.5", "lr4-len1")])  # fmt: skip
    cells = {(c["lr_ratio"], c["length_ratio"]): c for c in results["cells"]}
    assert len(cells) == 4 and cells[(4.0, 1.0)]["cycle_learning_rate"] == pytest.approx(4e-3)
    assert cells[(0.5, 0.5)]["cycle_epochs"] == 0.5 and cells[(0.5, 0.5)]["cycle_steps"] is None
    for (lr_ratio, length_ratio), cell in cells.items():  # the scores are the cell's own evaluation
        rows = json.loads((tmp_path / f"sweep/cells/lr{lr_ratio:g}-len{length_ratio:g}/evaluation.json").read_text())
        ensemble = next(row for row in rows if row["model"] == "ensemble" and row["size"] == 2)
        members = [row["accuracy"] for row in rows if row["model"] == "member"]
        assert (cell["ensemble_accuracy"], cell["ensemble_nll"]) == (ensemble["accuracy"], ensemble["nll"])
        assert cell["member_accuracy"] == pytest.approx(sum(members) / 2)
        assert 0 <= cell["barrier"] <= max(members)  # a drop below an end point cannot exceed its accuracy
    assert results["best"]["ensemble_accuracy"] == max(c["ensemble_accuracy"] for c in cells.values())
    adopted = json.loads((tmp_path / "sweep/cells/lr4-len1/ensemble.json").read_text())["members"][0]
    original = json.loads((tmp_path / "sweep/member0/ensemble.json").read_text())["members"][0]
    assert adopted["sha256"] == original["sha256"]
    with Image.open(tmp_path / "sweep/sweep_heatmaps.png") as image:
        assert image.format == "PNG"

    counter.runs.clear()
    again = sweep_cycle_hyperparameters(**{**options, "length_ratios": (0.5, 1.0, 2.0)})
    assert sorted(counter.runs) == [("lr0.5-len2", "member-01"), ("lr4-len2", "member-01")]  # only the new cells
    assert len(again["cells"]) == 6


def test_changed_setup_redoes_the_cells(tmp_path, pretrained_bert):
    counter = CountTrainings()
    options = sweep_options(
        pretrained_bert, lr_ratios=(2.0,), length_ratios=(1.0,), trainer_kwargs={"callbacks": [counter]}
    )
    sweep_cycle_hyperparameters(
        args=make_args(tmp_path / "sweep", num_members=2, max_steps=4, cycle_steps=None), **options
    )
    cell = json.loads((tmp_path / "sweep/sweep.json").read_text())["cells"][0]
    assert cell["cycle_steps"] == 4 and cell["cycle_epochs"] is None  # lengths in steps follow max_steps
    counter.runs.clear()
    changed = make_args(tmp_path / "sweep", num_members=2, max_steps=4, learning_rate=2e-3, overwrite_output_dir=True)
    results = sweep_cycle_hyperparameters(args=changed, **options)
    assert sorted(counter.runs) == [("lr2-len1", "member-01"), ("member0", "member-00")]  # all redone
    assert results["cells"][0]["cycle_learning_rate"] == pytest.approx(4e-3)


def test_adopting_a_different_member_0_is_refused(tmp_path, text_run):
    from hf_starsse import StarSSETrainer

    members = Path(text_run.args.output_dir) / "members"
    trainer = StarSSETrainer(model=load_text_model(str(members / "member-00")), args=make_args(tmp_path / "run"))
    trainer.adopt_member(members / "member-00")
    trainer.adopt_member(members / "member-00")  # the same model again: nothing to do
    with pytest.raises(ValueError, match="Member 0 of .* differs from"):
        trainer.adopt_member(members / "member-01")


def test_changed_setup_never_deletes_finished_cells_without_overwrite(tmp_path, pretrained_bert):
    options = sweep_options(pretrained_bert, lr_ratios=(2.0,), length_ratios=(1.0,))
    sweep_cycle_hyperparameters(args=make_args(tmp_path / "sweep", num_members=2, max_steps=4), **options)
    saved = (tmp_path / "sweep/sweep.json").read_text()
    counter = CountTrainings()
    with pytest.raises(ValueError, match=r"sweep.json holds the finished cells of a sweep with other num_members"):
        sweep_cycle_hyperparameters(
            args=make_args(tmp_path / "sweep", num_members=3, max_steps=4),
            **{**options, "trainer_kwargs": {"callbacks": [counter]}},
        )
    assert counter.runs == []  # refused before training anything
    assert (tmp_path / "sweep/sweep.json").read_text() == saved
    assert (tmp_path / "sweep/cells/lr2-len1/members/member-01/model.safetensors").is_file()


def test_sse_sweep_shares_member_0_not_the_chain_and_resumes(tmp_path, pretrained_bert):
    counter = CountTrainings()
    options = sweep_options(
        pretrained_bert,
        args=make_args(tmp_path / "sweep", num_members=3, max_steps=4, cycle_steps=None),
        lr_ratios=(0.5, 4.0),
        length_ratios=(0.5,),
        trainer_kwargs={"callbacks": [counter]},
    )
    starsse = sweep_cycle_hyperparameters(**options)
    sse = sweep_cycle_hyperparameters(**options, ensemble_method="sse")
    assert [run for run in counter.runs if run[1] == "member-00"] == [("member0", "member-00")]  # one member 0
    assert sorted(run for run in counter.runs if run[0].startswith("sse-")) == [
        (cell, member) for cell in ("sse-lr0.5-len0.5", "sse-lr4-len0.5") for member in ("member-01", "member-02")
    ]
    assert {cell["ensemble_method"] for cell in sse["cells"]} == {"sse"} and sse["best"]["ensemble_method"] == "sse"
    assert {cell["ensemble_method"] for cell in starsse["cells"]} == {"starsse"}

    def manifest(cell: str) -> list[dict]:
        return json.loads((tmp_path / "sweep/cells" / cell / "ensemble.json").read_text())["members"]

    first = json.loads((tmp_path / "sweep/member0/ensemble.json").read_text())["members"][0]["sha256"]
    for cell in ("lr4-len0.5", "sse-lr0.5-len0.5", "sse-lr4-len0.5"):
        assert manifest(cell)[0]["sha256"] == first  # member 0 adopted, not retrained
    assert [m["parent"] for m in manifest("sse-lr4-len0.5")] == [None, 0, 1]  # a chain
    assert [m["parent"] for m in manifest("lr4-len0.5")] == [None, 0, 0]  # a star
    # each SSE cell grows its own chain from member 0 (its first cycle is the StarSSE cell's first branch)
    assert manifest("sse-lr0.5-len0.5")[1]["sha256"] != manifest("sse-lr4-len0.5")[1]["sha256"]
    assert manifest("sse-lr4-len0.5")[2]["sha256"] != manifest("lr4-len0.5")[2]["sha256"]
    saved = json.loads((tmp_path / "sweep/sweep.json").read_text())
    assert len(saved["cells"]) == 4 and set(saved["best_by_method"]) == {"starsse", "sse"}
    assert saved["best_by_method"]["starsse"] == starsse["best"]
    assert (tmp_path / "sweep/sweep_heatmaps_sse.png").is_file()

    counter.runs.clear()
    again = sweep_cycle_hyperparameters(**options, ensemble_method="sse")
    assert counter.runs == [] and again["cells"] == sse["cells"]  # a rerun reuses every cell
    with pytest.raises(ValueError, match="ensemble_method must be one of starsse, sse"):
        sweep_cycle_hyperparameters(**options, ensemble_method="local_de")


def test_sweep_adopts_a_given_first_member(tmp_path, text_run):
    counter = CountTrainings()
    first = Path(text_run.args.output_dir) / "members" / "member-00"
    results = sweep_cycle_hyperparameters(
        **sweep_options(
            str(first),
            args=make_args(tmp_path / "sweep", num_members=2, max_steps=2, cycle_steps=None),
            lr_ratios=(2.0,),
            length_ratios=(0.5,),
            trainer_kwargs={"callbacks": [counter]},
            ensemble_method="sse",
            first_member=first,
        )
    )
    assert counter.runs == [("sse-lr2-len0.5", "member-01")] and not (tmp_path / "sweep/member0").exists()
    members = json.loads((tmp_path / "sweep/cells/sse-lr2-len0.5/ensemble.json").read_text())["members"]
    assert members[0]["sha256"] == results["setup"]["member0_sha256"]
    assert members[0]["sha256"] == json.loads((Path(text_run.args.output_dir) / "ensemble.json").read_text())[
        "members"][0]["sha256"]  # fmt: skip


def test_sweep_of_lora_members(tmp_path, pretrained_bert):
    peft = pytest.importorskip("peft")

    def model_init():
        lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
        return peft.get_peft_model(load_text_model(pretrained_bert, seed=None), lora)

    options = sweep_options(
        pretrained_bert,
        model_init=model_init,
        args=make_args(tmp_path / "sweep", num_members=2, max_steps=4, cycle_steps=None),
        lr_ratios=(1.0, 4.0),
        length_ratios=(0.5,),
    )
    results = sweep_cycle_hyperparameters(**options)
    assert len(results["cells"]) == 2
    for cell in results["cells"]:
        member_dir = tmp_path / "sweep/cells" / cell_name("starsse", cell["lr_ratio"], 0.5) / "members/member-01"
        assert (member_dir / "adapter_model.safetensors").is_file() and not (member_dir / "model.safetensors").exists()
        assert 0 <= cell["member_accuracy"] <= 1
        assert math.isfinite(cell["ensemble_nll"]) and math.isfinite(cell["barrier"])


class OtherProcessWrites(TrainerCallback):
    """While this sweep trains, another process's sweep (of SSE) records a finished cell in the same sweep.json."""

    def __init__(self, path):
        self.path = path

    def on_train_end(self, args, state, control, **kwargs):
        if not self.path.is_file():
            return
        saved = json.loads(self.path.read_text())
        other = dict(saved["cells"][0], ensemble_method="sse") if saved["cells"] else None
        if other is not None and all(cell["ensemble_method"] != "sse" for cell in saved["cells"]):
            self.path.write_text(json.dumps({**saved, "cells": saved["cells"] + [other]}))


def test_sweeps_side_by_side_keep_each_others_cells(tmp_path, pretrained_bert):
    options = sweep_options(
        pretrained_bert, args=make_args(tmp_path / "sweep", num_members=2, max_steps=2, cycle_steps=None),
        lr_ratios=(1.0, 2.0), length_ratios=(0.5,),
        trainer_kwargs={"callbacks": [OtherProcessWrites(tmp_path / "sweep" / "sweep.json")]},
    )  # fmt: skip
    sweep_cycle_hyperparameters(**options)
    cells = json.loads((tmp_path / "sweep/sweep.json").read_text())["cells"]
    assert sorted(cell["ensemble_method"] for cell in cells) == ["sse", "starsse", "starsse"]
