import pytest
from transformers import HfArgumentParser

from hf_starsse import StarSSETrainingArguments


def make(tmp_path, **kwargs):
    return StarSSETrainingArguments(output_dir=str(tmp_path), report_to="none", **kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_members": 0}, "num_members=0 must be at least 1"),
        ({"learning_rate": 0.0}, "learning_rate=0.0 must be positive"),
        ({"learning_rate": -1e-3}, "learning_rate=-0.001 must be positive"),
        ({"cycle_learning_rate": -0.1}, "cycle_learning_rate=-0.1 must be positive"),
        ({"cycle_epochs": 1.0, "cycle_steps": 10}, "cycle_epochs or cycle_steps, not both"),
        ({"cycle_epochs": 0.0}, "cycle_epochs=0.0 must be positive"),
        ({"cycle_steps": 0}, "cycle_steps=0 must be at least 1"),
        ({"cycle_warmup_ratio": 1.0}, r"cycle_warmup_ratio=1.0 must be in \[0, 1\)"),
        ({"ensemble_method": "snapshot"}, "ensemble_method='snapshot' is unknown"),
        ({"members_to_train": [5], "num_members": 5}, r"\[5\] outside 0..4"),
        ({"members_to_train": [-1]}, r"\[-1\] outside"),
        ({"members_to_train": []}, "members_to_train is empty"),
        ({"members_to_train": [1, 1]}, "lists a member twice"),
        ({"members_to_train": [1, 3], "ensemble_method": "sse"}, "member 3 starts from member 2"),
        ({"branch_parallel": True, "ensemble_method": "sse"}, "ensemble_method='sse' members form a chain"),
        ({"branch_parallel": True, "ensemble_method": "local_de"}, "'local_de' members are independent fine-tunes"),
        ({"branch_parallel": True, "fsdp": True, "use_cpu": True}, "fsdp would shard it across processes"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **kwargs)


def test_defaults_and_cycle_length(tmp_path):
    args = make(tmp_path, num_train_epochs=3, learning_rate=0.01)
    assert (args.ensemble_method, args.num_members, args.reset_optimizer_each_cycle) == ("starsse", 5, True)
    assert args.cycle_peak_learning_rate == 0.01
    assert args.cycle_length() == (3, -1)
    assert args.members() == [0, 1, 2, 3, 4]
    assert make(tmp_path, max_steps=20).cycle_length()[1] == 20
    assert make(tmp_path, cycle_steps=7).cycle_length()[1] == 7
    assert make(tmp_path, cycle_epochs=0.5).cycle_length() == (0.5, -1)


def test_members_to_train_sorted_and_sse_chain(tmp_path):
    assert make(tmp_path, members_to_train=[3, 1]).members() == [1, 3]
    assert make(tmp_path, members_to_train=[2, 3], ensemble_method="sse").members() == [2, 3]
    assert make(tmp_path, ensemble_method="Local_DE").ensemble_method == "local_de"


def test_parses_from_command_line(tmp_path):
    (args,) = HfArgumentParser(StarSSETrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--ensemble_method",
            "sse",
            "--num_members",
            "4",
            "--cycle_steps",
            "9",
            "--members_to_train",
            "1",
            "2",
            "--reset_optimizer_each_cycle",
            "false",
            "--report_to",
            "none",
        ]
    )
    assert (args.ensemble_method, args.num_members, args.cycle_steps) == ("sse", 4, 9)
    assert args.members_to_train == [1, 2] and args.reset_optimizer_each_cycle is False


def test_every_field_has_help():
    parser = HfArgumentParser(StarSSETrainingArguments)
    help_text = parser.format_help()
    for name in (
        "ensemble_method",
        "num_members",
        "cycle_epochs",
        "cycle_steps",
        "cycle_learning_rate",
        "cycle_warmup_ratio",
        "reset_optimizer_each_cycle",
        "members_to_train",
        "overwrite_output_dir",
    ):
        assert f"--{name}" in help_text
    for action in parser._actions:
        assert action.help, action.dest


def test_run_hyperparameters_follow_what_defines_the_members(tmp_path):
    import json

    base = make(tmp_path).run_hyperparameters()
    changed = make(tmp_path, learning_rate=0.3, cycle_steps=7, optim="sgd", seed=3).run_hyperparameters()
    assert sorted(key for key in base if base[key] != changed[key]) == [
        "cycle_steps",
        "learning_rate",
        "optim",
        "seed",
    ]
    assert changed["learning_rate"] == 0.3 and changed["cycle_steps"] == 7
    # settings that do not change what the members are leave the run's identity alone
    same = make(tmp_path, logging_steps=3, save_strategy="no", members_to_train=[0], overwrite_output_dir=True)
    assert same.run_hyperparameters() == base
    assert json.loads(json.dumps(base)) == base and set(base) <= set(make(tmp_path).to_dict())


def test_local_de_warns_about_ignored_cycle_settings(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        make(tmp_path, ensemble_method="local_de", cycle_steps=5, reset_optimizer_each_cycle=False)
    assert "cycle_steps, reset_optimizer_each_cycle are ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make(tmp_path, ensemble_method="starsse", cycle_steps=5)
    assert "ignored" not in caplog.text
