"""The per-member policy: the plan (parent, seed, peak LR, length, cycle), and what every member gets whatever the
route: its own peak learning rate, fresh callback state, its loss scale, its own TensorBoard directory."""

import json

import pytest
import torch
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ExportableState

from hf_starsse import StarSSETrainer
from hf_starsse.training.plan import MemberPlan, plan_member, plan_members

from conftest import load_text_model, make_args, text_dataset


def trainer_for(tmp_path, pretrained_bert, trainer_class=StarSSETrainer, callbacks=(), **kwargs):
    return trainer_class(
        model=load_text_model(pretrained_bert),
        args=make_args(tmp_path / "run", **kwargs),
        train_dataset=text_dataset(),
        callbacks=list(callbacks),
    )


def lr_trace(trainer) -> dict[int, list[float]]:
    """The learning rates logged for each member, from the trainer's log_history."""
    trace = {}
    for log in trainer.state.log_history:
        if "learning_rate" in log:
            trace.setdefault(log["member"], []).append(log["learning_rate"])
    return trace


# ----- the plan ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,parents,cycles",
    [
        ("starsse", [None, 0, 0, 0], [0, 1, 2, 3]),
        ("sse", [None, 0, 1, 2], [0, 1, 2, 3]),
        ("local_de", [None] * 4, [0] * 4),
    ],
)
def test_plan_parents_cycles_seeds(tmp_path, method, parents, cycles):
    args = make_args(tmp_path, ensemble_method=method, num_members=4, seed=7, data_seed=100)
    plans = plan_members(args)
    assert [plan.parent for plan in plans] == parents
    assert [plan.cycle for plan in plans] == cycles
    assert [plan.seed for plan in plans] == [7, 8, 9, 10] and [plan.data_seed for plan in plans] == [
        100,
        101,
        102,
        103,
    ]
    assert all(isinstance(plan, MemberPlan) and plan.index == index for index, plan in enumerate(plans))


def test_plan_learning_rates_lengths_and_optimizer_state(tmp_path):
    args = make_args(
        tmp_path, num_members=3, learning_rate=1e-3, cycle_learning_rate=4e-3, max_steps=10, cycle_steps=4
    )
    first, second = plan_member(args, 0), plan_member(args, 1)
    assert (first.peak_learning_rate, first.max_steps) == (1e-3, 10)
    assert (second.peak_learning_rate, second.max_steps) == (4e-3, 4)
    assert second.fresh_optimizer
    carried = make_args(
        tmp_path, ensemble_method="sse", reset_optimizer_each_cycle=False, cycle_steps=None, cycle_epochs=0.5
    )
    assert [plan.fresh_optimizer for plan in plan_members(carried)] == [True, False, False]
    assert plan_member(carried, 2).num_train_epochs == 0.5 and plan_member(carried, 2).max_steps == -1
    local = make_args(tmp_path, ensemble_method="local_de", cycle_learning_rate=9.0, cycle_steps=2)
    assert {(plan.peak_learning_rate, plan.max_steps, plan.fresh_optimizer) for plan in plan_members(local)} == {
        (1e-3, -1, True)
    }
    no_cycle_lr = make_args(tmp_path, cycle_learning_rate=None)
    assert plan_member(no_cycle_lr, 2).peak_learning_rate == no_cycle_lr.learning_rate


# ----- item 1: every optimizer route gives each member its own peak LR ------------------------------------------


class HardCodedSGD(StarSSETrainer):
    """A subclass that builds its own optimizer with a fixed learning rate, as user code often does."""

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        return self.optimizer


ROUTES = {
    "optim": dict(optim="sgd"),
    "optim_args": dict(optim="sgd", optim_args="momentum=0.9,nesterov=True"),
    "optimizer_cls_and_kwargs": dict(optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9})),
    "create_optimizer": dict(trainer_class=HardCodedSGD),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_optimizer_route_peaks_at_the_members_learning_rate(tmp_path, pretrained_bert, route):
    options = dict(ROUTES[route])
    trainer_class = options.pop("trainer_class", StarSSETrainer)
    optimizer_cls_and_kwargs = options.pop("optimizer_cls_and_kwargs", None)
    trainer = trainer_class(
        model=load_text_model(pretrained_bert),
        args=make_args(tmp_path / "run", lr_scheduler_type="constant", cycle_learning_rate=0.5, **options),
        train_dataset=text_dataset(),
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
    )
    trainer.train()
    trace = lr_trace(trainer)
    assert trace[0] == [pytest.approx(1e-3)] * 6  # member 0: learning_rate, the user's constant schedule
    for member in (1, 2):  # each cycle starts at cycle_learning_rate, then decays
        assert trace[member][0] == pytest.approx(0.5) and max(trace[member]) == pytest.approx(0.5)
        assert trace[member][-1] < 0.5


def test_optimizer_kwargs_lr_that_contradicts_learning_rate_is_refused(tmp_path, pretrained_bert):
    with pytest.raises(ValueError, match=r"optimizer_cls_and_kwargs sets lr=0.01, but learning_rate=0.001"):
        StarSSETrainer(
            model=load_text_model(pretrained_bert),
            args=make_args(tmp_path),
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.01}),
        )


# ----- item 2: stateful callbacks ---------------------------------------------------------------------------------


def test_early_stopping_refused_for_cycle_methods(tmp_path, pretrained_bert):
    early = EarlyStoppingCallback(early_stopping_patience=1)
    for method in ("starsse", "sse"):
        with pytest.raises(ValueError, match=f"EarlyStoppingCallback would end a {method} cycle"):
            trainer_for(tmp_path, pretrained_bert, callbacks=[early], ensemble_method=method)
    trainer = trainer_for(tmp_path, pretrained_bert)
    trainer.add_callback(early)  # added after construction: refused before anything is written
    with pytest.raises(ValueError, match="EarlyStoppingCallback would end a starsse cycle"):
        trainer.train()
    assert not (tmp_path / "run/ensemble.json").exists()


class StopAfterSteps(TrainerCallback, ExportableState):
    """A stateful callback: stops training after `limit` steps counted across calls (saved in checkpoints)."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.count += 1
        control.should_training_stop = self.count >= self.limit

    def state(self) -> dict:
        return {"args": {"limit": self.limit}, "attributes": {"count": self.count}}


def test_stateful_callbacks_start_afresh_for_each_member(tmp_path, pretrained_bert):
    stopper = StopAfterSteps(limit=2)
    trainer = trainer_for(tmp_path, pretrained_bert, callbacks=[stopper], ensemble_method="local_de")
    trainer.train()
    manifest = json.loads((tmp_path / "run/ensemble.json").read_text())
    assert [entry["steps"] for entry in manifest["members"]] == [2, 2, 2]  # not [2, 1, 1]
    assert stopper.count == 2  # the last member's own count


def test_local_de_early_stopping_restarts_per_member(tmp_path, pretrained_bert):
    early = EarlyStoppingCallback(early_stopping_patience=1)
    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert),
        args=make_args(
            tmp_path / "run",
            ensemble_method="local_de",
            eval_strategy="steps",
            eval_steps=1,
            metric_for_best_model="constant",  # never improves: each member stops at its second evaluation
        ),
        train_dataset=text_dataset(),
        eval_dataset=text_dataset(n=8, seed=3),
        compute_metrics=lambda prediction: {"constant": 1.0},
        callbacks=[early],
    )
    trainer.train()
    manifest = json.loads((tmp_path / "run/ensemble.json").read_text())
    assert [entry["steps"] for entry in manifest["members"]] == [2, 2, 2]


# ----- item 3: the AMP loss scale per member ------------------------------------------------------------------------


class ScaleRecorder(TrainerCallback):
    """The loss scale each member starts with, read from the trainer's accelerator."""

    def __init__(self):
        self.trainer, self.starts = None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.starts.append(self.trainer.accelerator.scaler.get_scale())


@pytest.mark.parametrize("method,reset", [("starsse", True), ("starsse", False), ("sse", False), ("local_de", True)])
def test_loss_scale_per_member(tmp_path, pretrained_bert, method, reset):
    """
    A real `GradScaler` drives the Trainer's own backward and optimizer step (accelerate's `backward` and
    `AcceleratedOptimizer.step`). CPU training has no fp16 loss scaling, so the scaler is given to the accelerator
    (its public `scaler` attribute); it doubles its scale after every step, so each member's start shows where its
    scale came from. `test_fp16_loss_scale_on_gpu` runs the same check with `fp16=True` where a GPU exists.
    """
    recorder = ScaleRecorder()
    trainer = trainer_for(
        tmp_path, pretrained_bert, callbacks=[recorder], ensemble_method=method, reset_optimizer_each_cycle=reset
    )
    recorder.trainer = trainer
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=16.0, growth_factor=2.0, growth_interval=1)
    trainer.train()
    first_end = 16.0 * 2**6  # member 0: 6 steps, each one doubling the scale
    expected = {
        ("starsse", True): [16.0, 16.0, 16.0],
        ("starsse", False): [16.0, first_end, first_end],  # every branch carries member 0's scale
        ("sse", False): [16.0, first_end, first_end * 2**3],  # the chain carries its parent's (3 steps per cycle)
        ("local_de", True): [16.0, 16.0, 16.0],
    }[(method, reset)]
    assert recorder.starts == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 loss scaling needs a GPU (CPU AMP has no scaler)")
def test_fp16_loss_scale_on_gpu(tmp_path, pretrained_bert):
    recorder = ScaleRecorder()
    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert),
        args=make_args(tmp_path / "run", use_cpu=False, fp16=True, reset_optimizer_each_cycle=False),
        train_dataset=text_dataset(),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    saved = torch.load(tmp_path / "run/members/member-00/optimizer_state.pt", weights_only=True)
    assert recorder.starts[1] == recorder.starts[2] == saved["grad_scaler"]["scale"]


# ----- item 14: TensorBoard, one directory per member ---------------------------------------------------------------


class FakeWriter:
    """Stands in for tensorboard's SummaryWriter (not installed here): records its directory and scalars."""

    writers: list["FakeWriter"] = []

    def __init__(self, log_dir):
        self.log_dir, self.steps = log_dir, []
        FakeWriter.writers.append(self)

    def add_scalar(self, tag, value, step):
        self.steps.append(step)

    def add_text(self, *args, **kwargs):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class RecordingTensorBoard(TensorBoardCallback):
    def __init__(self):  # TensorBoardCallback's own __init__ needs tensorboard installed
        self._SummaryWriter, self.tb_writer, self.logging_dir = FakeWriter, None, None


def test_tensorboard_logs_each_member_in_its_own_directory(tmp_path, pretrained_bert):
    FakeWriter.writers = []
    trainer_for(tmp_path, pretrained_bert, callbacks=[RecordingTensorBoard()]).train()
    dirs = [writer.log_dir for writer in FakeWriter.writers]
    assert dirs == [str(tmp_path / "run" / "runs" / f"member-{member:02d}") for member in range(3)]
    assert [min(writer.steps) for writer in FakeWriter.writers] == [1, 1, 1]  # each member's own step axis
