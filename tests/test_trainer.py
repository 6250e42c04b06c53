import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_starsse import StarSSETrainer
from hf_starsse.storage.weights import weights_sha256

from conftest import (
    image_dataset,
    load_image_model,
    load_text_model,
    make_args,
    text_dataset,
    tokenizer,
)

METHODS = ["starsse", "sse", "local_de"]


class Recorder(TrainerCallback):
    """Records, per train() call of a member, the starting weights, optimizer state and learning rates."""

    def __init__(self):
        self.starts, self.optimizer_states, self.lrs, self.members, self.data_seeds = [], [], [], [], []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.data_seeds.append(args.data_seed)
        self.starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.optimizer_states.append({k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state.items()})
        self.lrs.append([])
        self.members.append(args.seed)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "learning_rate" in logs:
            self.lrs[-1].append((logs["member"], logs["cycle"], logs["learning_rate"]))


def train_text(tmp_path, model_path, callbacks=(), **kwargs):
    trainer = StarSSETrainer(
        model=load_text_model(model_path),
        args=make_args(tmp_path / "run", **kwargs),
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
        callbacks=list(callbacks),
    )
    return trainer, trainer.train()


def member_weights(run_dir, index):
    return load_file(str(run_dir / "members" / f"member-{index:02d}" / "model.safetensors"))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("method", METHODS)
def test_lr_trace_follows_the_schedules(tmp_path, pretrained_bert, method):
    recorder = Recorder()
    train_text(
        tmp_path,
        pretrained_bert,
        [recorder],
        ensemble_method=method,
        lr_scheduler_type="constant",
        cycle_steps=5,
        cycle_warmup_ratio=0.4,
    )
    assert len(recorder.lrs) == 3
    assert recorder.lrs[0] == [(0, 0, pytest.approx(1e-3))] * 6  # member 0: the user's own (constant) schedule
    for member in (1, 2):
        if method == "local_de":  # independent fine-tunes: the first model's recipe again
            assert recorder.lrs[member] == [(member, 0, pytest.approx(1e-3))] * 6
            continue
        warmup = math.ceil(0.4 * 5)
        expected = [
            2e-3 * s / warmup if s < warmup else 2e-3 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / 3))
            for s in range(5)
        ]
        assert recorder.lrs[member] == [(member, member, pytest.approx(lr)) for lr in expected]


@pytest.mark.parametrize("method", METHODS)
def test_branch_starting_weights(tmp_path, pretrained_bert, method):
    recorder = Recorder()
    trainer, _ = train_text(tmp_path, pretrained_bert, [recorder], ensemble_method=method)
    run = tmp_path / "run"
    pretrained = load_text_model(pretrained_bert).state_dict()
    head = {k for k in pretrained if k.startswith("classifier.")}
    assert head == {"classifier.weight", "classifier.bias"}
    backbone = {k: v for k, v in pretrained.items() if k not in head}
    assert_same({k: v for k, v in recorder.starts[0].items() if k not in head}, backbone)
    for member in (1, 2):
        start = recorder.starts[member]
        if method == "starsse":
            assert_same(start, member_weights(run, 0))
        elif method == "sse":
            assert_same(start, member_weights(run, member - 1))
        else:
            assert_same({k: v for k, v in start.items() if k not in head}, backbone)
            for other in range(member):
                assert not torch.equal(start["classifier.weight"], recorder.starts[other]["classifier.weight"])
    finals = [member_weights(run, m)["classifier.weight"] for m in range(3)]
    assert not torch.equal(finals[1], finals[2])


@pytest.mark.parametrize("method", ["starsse", "sse"])
@pytest.mark.parametrize("reset", [True, False])
def test_optimizer_state_reset_per_cycle(tmp_path, pretrained_bert, reset, method):
    recorder = Recorder()
    train_text(tmp_path, pretrained_bert, [recorder], reset_optimizer_each_cycle=reset, ensemble_method=method)
    assert recorder.optimizer_states[0] == {}
    for member in (1, 2):
        carried = recorder.optimizer_states[member]
        parent = 0 if method == "starsse" else member - 1
        if reset:
            assert carried == {}
            assert not (tmp_path / f"run/members/member-0{parent}/optimizer_state.pt").exists()
            continue
        saved = torch.load(tmp_path / f"run/members/member-0{parent}/optimizer_state.pt", weights_only=True)
        assert len(carried) == len(saved["state"]) > 0
        for state, saved_state in zip(carried.values(), saved["state"].values()):
            assert torch.equal(state["exp_avg"], saved_state["exp_avg"])


def test_seeds_and_data_order_differ(tmp_path, pretrained_bert):
    batches = []

    def collator(features):
        batches.append(tuple(f["input_ids"][0] for f in features))
        return torch.utils.data.default_collate([{k: torch.tensor(v) for k, v in f.items()} for f in features])

    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert),
        args=make_args(tmp_path / "run", cycle_steps=6),
        train_dataset=text_dataset(),
        data_collator=collator,
    )
    trainer.train()
    members = [batches[i : i + 6] for i in range(0, 18, 6)]
    assert members[0] != members[1] != members[2] != members[0]
    manifest = json.loads((tmp_path / "run/ensemble.json").read_text())
    assert [m["seed"] for m in manifest["members"]] == [0, 1, 2]


def test_manifest_and_member_dirs(tmp_path, pretrained_bert):
    trainer, output = train_text(tmp_path, pretrained_bert, ensemble_method="sse")
    run = tmp_path / "run"
    manifest = json.loads((run / "ensemble.json").read_text())
    assert manifest["ensemble_method"] == "sse" and manifest["num_members"] == 3
    assert manifest["base_model"] == pretrained_bert
    assert manifest["hyperparameters"]["cycle_learning_rate"] == 2e-3
    assert [(m["index"], m["parent"], m["seed"], m["steps"]) for m in manifest["members"]] == [
        (0, None, 0, 6),
        (1, 0, 1, 3),
        (2, 1, 2, 3),
    ]
    for entry in manifest["members"]:
        member_dir = run / entry["path"]
        assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"} <= {
            p.name for p in member_dir.iterdir()
        }
        assert entry["sha256"] == weights_sha256(member_dir)
    assert output.global_step == 12 and output.metrics["train_members"] == 3
    assert {log["member"] for log in trainer.state.log_history} == {0, 1, 2}
    assert_same(
        trainer.model.state_dict(),
        {
            **member_weights(run, 2),
            **{k: v for k, v in trainer.model.state_dict().items() if k not in member_weights(run, 2)},
        },
    )


class StopAt(TrainerCallback):
    """Simulates a crash: raises once `member` (by seed) reaches `step`."""

    def __init__(self, member, step):
        self.member, self.step = member, step

    def on_step_end(self, args, state, control, **kwargs):
        if args.seed == self.member and state.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_interrupted_member(tmp_path, pretrained_bert, method):
    settings = dict(ensemble_method=method, num_members=3, cycle_steps=5, save_strategy="steps", save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train_text(tmp_path, pretrained_bert, [StopAt(member=2, step=3)], **settings)
    run = tmp_path / "run"
    before = {m: (run / f"members/member-0{m}/model.safetensors").stat().st_mtime_ns for m in (0, 1)}
    assert [m["index"] for m in json.loads((run / "ensemble.json").read_text())["members"]] == [0, 1]

    recorder = Recorder()
    trainer, output = train_text(tmp_path, pretrained_bert, [recorder], **settings)
    assert recorder.members == [2]  # finished members are not retrained
    steps = 6 if method == "local_de" else 5  # local_de members repeat the first fine-tune (1 epoch, 6 steps)
    assert output.global_step == steps and len(recorder.lrs[0]) == steps - 2  # member 2 resumed from checkpoint-2
    assert before == {m: (run / f"members/member-0{m}/model.safetensors").stat().st_mtime_ns for m in (0, 1)}

    train_text(tmp_path / "reference", pretrained_bert, **settings)
    for member in range(3):
        assert_same(member_weights(run, member), member_weights(tmp_path / "reference/run", member))


def test_members_to_train_as_parallel_jobs(tmp_path, pretrained_bert):
    with pytest.raises(ValueError, match="member 2 starts from member 0, which is not complete"):
        train_text(tmp_path, pretrained_bert, members_to_train=[2])
    for job in ([0], [2], [1]):  # as a job array would run them, in any order after member 0
        train_text(tmp_path, pretrained_bert, members_to_train=job)
    train_text(tmp_path / "reference", pretrained_bert)
    for member in range(3):
        assert_same(member_weights(tmp_path / "run", member), member_weights(tmp_path / "reference/run", member))


def test_different_run_refused_unless_overwrite(tmp_path, pretrained_bert):
    train_text(tmp_path, pretrained_bert, num_members=2)
    with pytest.raises(ValueError, match="learning_rate: 0.001 there, 0.01 now"):
        train_text(tmp_path, pretrained_bert, num_members=2, learning_rate=1e-2)
    other_data = StarSSETrainer(  # the same settings on other training data: not the same run
        model=load_text_model(pretrained_bert), args=make_args(tmp_path / "run", num_members=2),
        train_dataset=text_dataset(seed=5),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"holds a different hf_starsse run \(train_data.sha256: "):
        other_data.train()
    recorder = Recorder()
    train_text(tmp_path, pretrained_bert, [recorder], num_members=2, learning_rate=1e-2, overwrite_output_dir=True)
    assert recorder.members == [0, 1]
    # a larger num_members adds members to a finished run
    recorder = Recorder()
    train_text(tmp_path, pretrained_bert, [recorder], num_members=3, learning_rate=1e-2)
    assert recorder.members == [2]


def test_single_member_is_a_plain_trainer(tmp_path, pretrained_bert):
    dataset = text_dataset()
    plain = TrainingArguments(
        output_dir=str(tmp_path / "plain"),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        num_train_epochs=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    reference = Trainer(load_text_model(pretrained_bert), plain, train_dataset=dataset)
    reference.train()
    as_trainer = StarSSETrainer(load_text_model(pretrained_bert), plain, train_dataset=dataset)
    as_trainer.train()
    ensemble_of_one = StarSSETrainer(
        load_text_model(pretrained_bert),
        make_args(tmp_path / "one", num_members=1, lr_scheduler_type="linear", logging_steps=500),
        train_dataset=dataset,
    )
    ensemble_of_one.train()
    expected = reference.model.state_dict()
    assert_same(as_trainer.model.state_dict(), expected)
    assert_same(ensemble_of_one.model.state_dict(), expected)
    assert not (tmp_path / "plain/ensemble.json").exists() and (tmp_path / "one/ensemble.json").exists()


def test_single_member_with_model_init_is_a_plain_trainer(tmp_path, pretrained_bert):
    def model_init():
        return load_text_model(pretrained_bert, seed=None)

    dataset = text_dataset()
    reference = Trainer(
        model_init=model_init, args=make_args(tmp_path / "plain", num_members=1), train_dataset=dataset
    )
    Trainer.train(reference)
    trainer = StarSSETrainer(
        model_init=model_init, args=make_args(tmp_path / "one", num_members=1), train_dataset=dataset
    )
    trainer.train()
    assert_same(trainer.model.state_dict(), reference.model.state_dict())


def test_model_init_local_de(tmp_path, pretrained_bert):
    trainer = StarSSETrainer(
        model_init=lambda: load_text_model(pretrained_bert, seed=None),
        args=make_args(tmp_path / "run", ensemble_method="local_de"),
        train_dataset=text_dataset(),
    )
    trainer.train()
    heads = [member_weights(tmp_path / "run", m)["classifier.weight"] for m in range(3)]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])


def test_image_model_with_batchnorm(tmp_path, pretrained_mobilenet):
    recorder = Recorder()
    trainer = StarSSETrainer(
        model=load_image_model(pretrained_mobilenet),
        args=make_args(tmp_path / "run", num_members=2, cycle_steps=2),
        train_dataset=image_dataset(),
        callbacks=[recorder],
    )
    trainer.train()
    member0 = member_weights(tmp_path / "run", 0)
    running_means = [k for k in member0 if k.endswith("running_mean")]
    assert running_means
    assert_same(recorder.starts[1], member0)  # BatchNorm statistics travel with the branch
    member1 = member_weights(tmp_path / "run", 1)
    assert any(not torch.equal(member0[k], member1[k]) for k in running_means)


def test_user_optimizer_instance_refused(tmp_path, pretrained_bert):
    model = load_text_model(pretrained_bert)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        StarSSETrainer(model=model, args=make_args(tmp_path), optimizers=(optimizer, None))
    recorder = Recorder()
    trainer = StarSSETrainer(
        model=model,
        args=make_args(tmp_path, num_members=2, learning_rate=0.1, lr_scheduler_type="constant"),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1, "momentum": 0.5}),
        callbacks=[recorder],
    )
    trainer.train_dataset = text_dataset()
    trainer.train()
    sgd = trainer.optimizer.optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5  # the kwargs were used
    assert recorder.lrs[0] == [(0, 0, pytest.approx(0.1))] * 6
    assert recorder.lrs[1][0] == (1, 1, pytest.approx(2e-3))  # the cycle peaks at cycle_learning_rate, not 0.1


def test_local_de_needs_pretrained_model_or_model_init(tmp_path):
    with pytest.raises(ValueError, match="model_init"):
        StarSSETrainer(model=torch.nn.Linear(4, 2), args=make_args(tmp_path, ensemble_method="local_de"))


@pytest.mark.parametrize("keep", [False, True])
def test_evaluation_and_checkpoints_inside_members(tmp_path, pretrained_bert, keep):
    settings = dict(eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2)
    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert),
        args=make_args(tmp_path / "run", num_members=2, keep_member_checkpoints=keep, **settings),
        train_dataset=text_dataset(),
        eval_dataset=text_dataset(seed=1),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    trainer.train()
    evals = [(log["member"], log["step"]) for log in trainer.state.log_history if "eval_accuracy" in log]
    assert evals == [(0, 2), (0, 4), (0, 6), (1, 2), (1, 3)]
    for member, steps in (
        (0, ["checkpoint-2", "checkpoint-4", "checkpoint-6"]),
        (1, ["checkpoint-2", "checkpoint-3"]),
    ):
        checkpoints = tmp_path / f"run/members/member-{member:02d}/checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == steps if keep else not checkpoints.exists()
    batch = text_dataset(seed=1).with_format("torch")[:]
    with torch.no_grad():  # the final model is member 1: evaluate() scores it
        logits = trainer.model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    accuracy = (logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(accuracy)


def test_member_in_training_is_locked(tmp_path, pretrained_bert):
    from hf_starsse import RunDirectory

    train_text(tmp_path, pretrained_bert, num_members=2, members_to_train=[0])
    lock = RunDirectory(tmp_path / "run").lock_member(1)  # another job is training member 1
    try:
        with pytest.raises(RuntimeError, match="Member 1 .* is being trained by another job"):
            train_text(tmp_path, pretrained_bert, num_members=2)
    finally:
        lock.release()
    train_text(tmp_path, pretrained_bert, num_members=2)
    assert len(json.loads((tmp_path / "run/ensemble.json").read_text())["members"]) == 2


def test_resume_true_without_checkpoint(tmp_path, pretrained_bert):
    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert), args=make_args(tmp_path), train_dataset=text_dataset()
    )
    with pytest.raises(ValueError, match="No valid checkpoint found for member 0"):
        trainer.train(resume_from_checkpoint=True)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps"}, "cycle's end"),
        ({"push_to_hub": True, "hub_model_id": "user/x"}, "push_to_hub=True"),
    ],
)
def test_unsupported_settings_refused(tmp_path, pretrained_bert, kwargs, message):
    with pytest.raises(ValueError, match=message):
        StarSSETrainer(
            model=load_text_model(pretrained_bert), args=make_args(tmp_path, **kwargs), eval_dataset=text_dataset()
        )


def test_cycle_epochs_and_data_seed(tmp_path, pretrained_bert):
    recorder = Recorder()
    trainer, _ = train_text(
        tmp_path, pretrained_bert, [recorder], num_members=2, cycle_steps=None, cycle_epochs=0.5, data_seed=100
    )
    manifest = json.loads((tmp_path / "run/ensemble.json").read_text())
    assert [m["steps"] for m in manifest["members"]] == [6, 3]  # 48 samples / 8 = 6 steps per epoch
    member_args = json.loads((tmp_path / "run/members/member-01/trainer_state.json").read_text())
    assert member_args["global_step"] == 3 and recorder.members == [0, 1]
    assert recorder.data_seeds == [100, 101]  # member 1 shuffled with data_seed + 1
    assert trainer.args.data_seed == 100  # the user's arguments are restored after training
    assert trainer.accelerator.dataloader_config.data_seed == 100  # and so is the accelerator's data seed


def test_crash_between_snapshot_and_manifest(tmp_path, pretrained_bert, monkeypatch):
    from hf_starsse import RunDirectory

    record = RunDirectory.record_member

    def crash_on_member_1(self, index, *args):
        if index == 1:
            raise KeyboardInterrupt("crash after the member's files were written")
        return record(self, index, *args)

    monkeypatch.setattr(RunDirectory, "record_member", crash_on_member_1)
    with pytest.raises(KeyboardInterrupt):
        train_text(tmp_path, pretrained_bert, num_members=2, save_strategy="steps", save_steps=2)
    assert (tmp_path / "run/members/member-01/model.safetensors").exists()  # written, but not listed
    assert [m["index"] for m in json.loads((tmp_path / "run/ensemble.json").read_text())["members"]] == [0]
    monkeypatch.setattr(RunDirectory, "record_member", record)
    recorder = Recorder()
    train_text(tmp_path, pretrained_bert, [recorder], num_members=2, save_strategy="steps", save_steps=2)
    assert recorder.members == [1]  # resumed from its last checkpoint, then recorded
    train_text(tmp_path / "reference", pretrained_bert, num_members=2, save_strategy="steps", save_steps=2)
    assert_same(member_weights(tmp_path / "run", 1), member_weights(tmp_path / "reference/run", 1))


def test_branch_parallel_in_one_process_trains_in_turn(tmp_path, pretrained_bert, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_starsse"):
        train_text(tmp_path, pretrained_bert, branch_parallel=True)
    assert "branch_parallel=True in a single process: the branches are trained one after another" in caplog.text
    entries = json.loads((tmp_path / "run/ensemble.json").read_text())["members"]
    assert [e["index"] for e in entries] == [0, 1, 2] and all("processes" not in e for e in entries)


def test_evaluate_ensemble_and_the_running_ensemble_in_the_logs(tmp_path, pretrained_bert):
    """`evaluate_ensemble` reports the ensemble, soup and member mean Trainer-style; with an evaluation strategy,
    the ensemble of the members complete so far is logged after each member."""
    from hf_starsse import evaluate_ensemble

    eval_dataset = text_dataset(seed=1)
    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert),
        args=make_args(tmp_path / "run", num_members=3, eval_strategy="epoch"),
        train_dataset=text_dataset(),
        eval_dataset=eval_dataset,
    )
    trainer.train()
    running = [log for log in trainer.state.log_history if "eval_ensemble_accuracy" in log]
    assert [(log["member"], log["eval_ensemble_size"]) for log in running] == [(0, 1), (1, 2), (2, 3)]
    assert all("eval_soup_accuracy" not in log for log in running)  # the running log skips the soup

    metrics = trainer.evaluate_ensemble()
    rows = evaluate_ensemble(tmp_path / "run", {"eval": eval_dataset})
    row = {(r["model"], r["size"]): r for r in rows if r["model"] != "member"}
    members = [r for r in rows if r["model"] == "member"]
    assert metrics["eval_ensemble_size"] == 3
    assert metrics["eval_ensemble_accuracy"] == pytest.approx(row["ensemble", 3]["accuracy"])
    assert metrics["eval_ensemble_nll"] == pytest.approx(running[-1]["eval_ensemble_nll"])
    assert metrics["eval_soup_nll"] == pytest.approx(row["uniform_soup", 3]["nll"])
    assert metrics["eval_member_mean_ece"] == pytest.approx(sum(r["ece"] for r in members) / 3)
    assert trainer.state.log_history[-1]["eval_ensemble_accuracy"] == metrics["eval_ensemble_accuracy"]
    assert trainer.evaluate()["eval_loss"] == pytest.approx(members[-1]["nll"], rel=1e-4)  # the last member only
