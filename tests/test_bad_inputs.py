"""The bad-input matrix: each case is refused with one error naming the input and the fix, before anything is written.

Every case prepares a bad input in a temporary directory and returns the call that must fail; the test checks the
error's type and message and that no file under the temporary directory was created, changed or removed by the call
(so no member directory, manifest, checkpoint or output was half-written, and training never started). Invalid
argument values of `StarSSETrainingArguments` (one case per rule) are in `tests/test_training_args.py`.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets.config
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from hf_starsse import (
    StarSSETrainer,
    build_ensemble,
    evaluate_ensemble,
    greedy_soup,
    load_members,
    load_weights,
    uniform_soup,
)
from hf_starsse.cli.main import main

from conftest import VOCAB, image_dataset, load_image_model, load_text_model, make_args, text_dataset


class CliError(Exception):
    """The one line `hf-starsse` printed for a user error (exit status 2)."""


@dataclass
class Context:
    tmp: Path
    text_run: StarSSETrainer
    pretrained_bert: str
    pretrained_mobilenet: str
    data: dict[str, str]
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch

    def run_copy(self) -> Path:
        """A copy of the trained 3-member StarSSE text run (hyperparameters as `run_args`)."""
        return Path(shutil.copytree(self.text_run.args.output_dir, self.tmp / "run"))

    def run_args(self, output_dir, **kwargs):
        return make_args(output_dir, learning_rate=5e-3, cycle_learning_rate=1e-2, **kwargs)

    def member(self, index: int = 0, name: str | None = None) -> Path:
        """A copy of member `index` of the text run, outside any run directory."""
        source = Path(self.text_run.args.output_dir) / f"members/member-{index:02d}"
        return Path(shutil.copytree(source, self.tmp / (name or f"member-{index}"), ignore=_checkpoints))

    def trainer(self, output_dir=None, model=None, train_dataset=None, **kwargs) -> StarSSETrainer:
        return StarSSETrainer(
            model=model or load_text_model(self.pretrained_bert),
            args=self.run_args(output_dir or self.tmp / "out", **kwargs),
            train_dataset=text_dataset() if train_dataset is None else train_dataset,
        )

    def cli(self, *argv: str):
        """A call of `hf-starsse` that raises `CliError` with its one-line message when it exits with status 2."""

        def call():
            self.capsys.readouterr()
            status = main(list(argv))
            err = self.capsys.readouterr().err
            lines = [line for line in err.splitlines() if line.startswith("hf-starsse")]  # not progress bars
            assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
            raise CliError(lines[0])

        return call

    def cli_train(self, *options: str, model: str | None = None, dataset: str | None = None):
        return self.cli(
            "train", "--model_name_or_path", model or self.pretrained_bert, "--dataset", dataset or self.data["text"],
            "--output_dir", str(self.tmp / "cli_run"), "--report_to", "none", "--use_cpu", "true",
            "--learning_rate", "5e-3", *options,
        )  # fmt: skip


_checkpoints = shutil.ignore_patterns("checkpoints")
CASES = {}


def case(error: type[Exception], message: str):
    """Register a case: a function of the `Context` returning the call that must raise `error` matching `message`."""

    def register(make):
        CASES[make.__name__] = (make, error, message)
        return make

    return register


def edit_manifest(run: Path, edit) -> None:
    manifest = json.loads((run / "ensemble.json").read_text())
    edit(manifest)
    (run / "ensemble.json").write_text(json.dumps(manifest, indent=2) + "\n")


def edit_weights(member: Path, edit) -> Path:
    state = load_file(member / "model.safetensors")
    edit(state)
    save_file(state, member / "model.safetensors", metadata={"format": "pt"})
    return member


def edit_config(member: Path, key: str, value) -> Path:
    config = json.loads((member / "config.json").read_text())
    config[key] = value
    (member / "config.json").write_text(json.dumps(config))
    return member


def ensemble_of(ctx: Context, source):
    return lambda: build_ensemble(source, ctx.tmp / "ensemble")


# ----- run directories and manifests ---------------------------------------------------------------------------


@case(ValueError, r"Member 1 is listed as complete .* holds no weights. Restore the directory")
def missing_member_weights(ctx):
    run = ctx.run_copy()
    (run / "members/member-01/model.safetensors").unlink()
    return ensemble_of(ctx, run)


@case(ValueError, r"Member 1 is listed as complete .* holds no weights")
def renamed_weights_file(ctx):
    run = ctx.run_copy()
    (run / "members/member-01/model.safetensors").rename(run / "members/member-01/model.safetensors.bak")
    return ensemble_of(ctx, run)


@case(ValueError, r"Member 2 is listed as complete .*member-02 holds no weights")
def renamed_member_directory(ctx):
    run = ctx.run_copy()
    (run / "members/member-02").rename(run / "members/member-2")
    return ensemble_of(ctx, run)


@case(ValueError, r"member-01 do not match the sha256 recorded for member 1 .* Restore them")
def truncated_weights(ctx):
    run = ctx.run_copy()
    weights = run / "members/member-01/model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    return ensemble_of(ctx, run)


@case(ValueError, r"member-00 do not match the sha256 recorded for member 0")
def corrupted_weights(ctx):
    run = ctx.run_copy()
    weights = run / "members/member-00/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped bit pattern inside the last tensor
    weights.write_bytes(bytes(data))
    return ensemble_of(ctx, run)


@case(ValueError, r"ensemble.json is not valid JSON .* Move it away, or set overwrite_output_dir=True")
def manifest_not_json(ctx):
    run = ctx.run_copy()
    (run / "ensemble.json").write_text('{"members": [')
    return ensemble_of(ctx, run)


@case(ValueError, r"ensemble.json is not an hf_starsse manifest \(no 'members' list\)")
def manifest_not_a_manifest(ctx):
    run = ctx.run_copy()
    (run / "ensemble.json").write_text("[1, 2, 3]")
    return ensemble_of(ctx, run)


@case(ValueError, r"Member 7 is listed as complete .*member-07 holds no weights")
def manifest_lists_a_missing_member(ctx):
    run = ctx.run_copy()
    edit_manifest(run, lambda m: m["members"].append({**m["members"][0], "index": 7, "path": "members/member-07"}))
    return ensemble_of(ctx, run)


@case(ValueError, r"members\[1\] is not a member entry \(needs index, path, sha256\)")
def manifest_entry_without_hash(ctx):
    run = ctx.run_copy()
    edit_manifest(run, lambda m: m["members"][1].pop("sha256"))
    return ensemble_of(ctx, run)


@case(ValueError, r"member 1 has path '../elsewhere', which leads outside the run directory")
def manifest_path_with_dotdot(ctx):
    run = ctx.run_copy()
    ctx.member(1, "elsewhere")
    edit_manifest(run, lambda m: m["members"][1].update(path="../elsewhere"))
    return ensemble_of(ctx, run)


@case(ValueError, r"member 0 has path '/.*', which leads outside the run directory")
def manifest_absolute_path(ctx):
    run = ctx.run_copy()
    outside = ctx.member(0, "elsewhere")
    edit_manifest(run, lambda m: m["members"][0].update(path=str(outside)))
    return ensemble_of(ctx, run)


@case(ValueError, r"member 2 has path 'members/member-02', which leads outside the run directory")
def manifest_path_through_a_symlink(ctx):
    run = ctx.run_copy()
    outside = ctx.member(2, "elsewhere")
    shutil.rmtree(run / "members/member-02")
    (run / "members/member-02").symlink_to(outside, target_is_directory=True)
    return ensemble_of(ctx, run)


@case(ValueError, r"ensemble.json was written by a newer hf_starsse; upgrade the library")
def manifest_from_a_newer_version(ctx):
    run = ctx.run_copy()
    edit_manifest(run, lambda m: m.update(format_version=99))
    return ensemble_of(ctx, run)


@case(ValueError, r"lists no complete member yet: train the ensemble first")
def run_without_complete_members(ctx):
    run = ctx.run_copy()
    edit_manifest(run, lambda m: m.update(members=[]))
    return ensemble_of(ctx, run)


@case(FileNotFoundError, r"has no ensemble.json: pass an hf_starsse run directory or a list of member directories")
def not_a_run_directory(ctx):
    (ctx.tmp / "empty").mkdir()
    return ensemble_of(ctx, ctx.tmp / "empty")


# ----- member directories --------------------------------------------------------------------------------------


@case(ValueError, r"No member directories given")
def empty_member_list(ctx):
    return ensemble_of(ctx, [])


@case(FileNotFoundError, r"member-1 has no config.json: members are save_pretrained directories")
def member_without_config(ctx):
    members = [ctx.member(0), ctx.member(1)]
    (members[1] / "config.json").unlink()
    return ensemble_of(ctx, members)


@case(FileNotFoundError, r"member-1 holds no \*.safetensors weights. Save models with save_pretrained")
def member_without_weights(ctx):
    members = [ctx.member(0), ctx.member(1)]
    (members[1] / "model.safetensors").unlink()
    return ensemble_of(ctx, members)


@case(FileNotFoundError, r"member-1 holds only pickle weights .* pass allow_pickle=True")
def pickle_only_member(ctx):
    members = [ctx.member(0), ctx.member(1)]
    torch.save(load_file(members[1] / "model.safetensors"), members[1] / "pytorch_model.bin")
    (members[1] / "model.safetensors").unlink()
    return ensemble_of(ctx, members)


@case(ValueError, r"Member .*mobilenet does not match .*member-0: config.json differs in .* share architecture")
def members_of_different_architectures(ctx):
    load_image_model(ctx.pretrained_mobilenet).save_pretrained(ctx.tmp / "mobilenet")
    return ensemble_of(ctx, [ctx.member(0), ctx.tmp / "mobilenet"])


@case(ValueError, r"member-1 does not match .*: config.json differs in 'id2label' .* label map")
def members_with_different_label_maps(ctx):
    relabelled = edit_config(ctx.member(1), "id2label", {"0": "neg", "1": "neu", "2": "pos"})
    return ensemble_of(ctx, [ctx.member(0), relabelled])


@case(ValueError, r"member-1: tensor 'classifier.bias' is \(4,\) torch.float32, but \(3,\)")
def members_with_different_shapes(ctx):
    wider = edit_weights(ctx.member(1), lambda state: state.update({"classifier.bias": torch.zeros(4)}))
    return ensemble_of(ctx, [ctx.member(0), wider])


@case(ValueError, r"member-1: tensor 'classifier.weight' holds non-finite values")
def member_with_non_finite_weights(ctx):
    members = [ctx.member(0), ctx.member(1)]
    edit_weights(members[1], lambda state: state["classifier.weight"].__setitem__((0, 0), float("inf")))
    return lambda: uniform_soup(members, ctx.tmp / "soup")


TRUNCATED = r"Member 1 \(.*member-1\): model.safetensors cannot be read as safetensors .* probably truncated"


def truncated_members(ctx) -> list[Path]:
    """Two member directories given directly, the second with its weights cut short (an interrupted copy)."""
    members = [ctx.member(0), ctx.member(1)]
    os.truncate(members[1] / "model.safetensors", (members[1] / "model.safetensors").stat().st_size // 2)
    return members


@case(ValueError, TRUNCATED)
def truncated_member_in_a_soup(ctx):
    members = truncated_members(ctx)
    return lambda: uniform_soup(members, ctx.tmp / "soup")


@case(ValueError, TRUNCATED)
def truncated_member_in_an_ensemble(ctx):
    members = truncated_members(ctx)
    return lambda: build_ensemble(members, ctx.tmp / "ensemble")


@case(ValueError, TRUNCATED)
def truncated_member_in_load_members(ctx):
    members = truncated_members(ctx)
    return lambda: load_members(members)


@case(ValueError, TRUNCATED)
def truncated_member_in_an_evaluation(ctx):
    members = truncated_members(ctx)
    return lambda: evaluate_ensemble(members, {"test": text_dataset()}, output_dir=ctx.tmp / "evaluation")


@case(ValueError, r"\(.*tiny-bert\): model.safetensors cannot be read as safetensors .* truncated")
def truncated_model_in_load_weights(ctx):
    model = Path(shutil.copytree(ctx.pretrained_bert, ctx.tmp / "tiny-bert"))
    os.truncate(model / "model.safetensors", 1000)
    return lambda: load_weights(load_text_model(ctx.pretrained_bert), model)


def forbid(ctx: Context, target: str) -> None:
    """Make `target` fail the test if it is called: the error must come before that work."""
    ctx.monkeypatch.setattr(target, lambda *args, **kwargs: pytest.fail(f"{target} ran before the error"))


@case(FileExistsError, r"ensemble is not empty; choose another directory or pass overwrite=True")
def ensemble_into_a_non_empty_directory(ctx):
    (ctx.tmp / "ensemble").mkdir()
    (ctx.tmp / "ensemble/notes.txt").write_text("mine")
    forbid(ctx, "hf_starsse.ensemble.build.copy_member_tensors")
    return ensemble_of(ctx, [ctx.member(0)])


@case(ValueError, r"run/members holds the members themselves; save to a directory outside the run")
def greedy_soup_into_the_run(ctx):
    run = ctx.run_copy()
    forbid(ctx, "hf_starsse.soups.average.load_base_model")
    return lambda: greedy_soup(run, text_dataset(), out_dir=run / "members", overwrite=True)


# ----- training ------------------------------------------------------------------------------------------------


@case(ValueError, r"holds a different hf_starsse run \(learning_rate: 0.005 there, 0.001 now\).* overwrite_output_dir")
def output_dir_holding_a_different_run(ctx):
    trainer = ctx.trainer(ctx.run_copy())
    trainer.args.learning_rate = 1e-3
    return trainer.train


@case(ValueError, r"starsse member 2 starts from member 0, which is not complete .* members_to_train=\[0\]")
def members_to_train_without_their_parent(ctx):
    run = ctx.run_copy()
    edit_manifest(run, lambda m: m.update(members=m["members"][1:2]))
    shutil.rmtree(run / "members/member-00")
    shutil.rmtree(run / "members/member-02")
    return ctx.trainer(run, members_to_train=[2]).train


@case(ValueError, r"train_dataset is empty")
def empty_dataset(ctx):
    return ctx.trainer(train_dataset=text_dataset().select([])).train


@case(ValueError, r"Training needs a train_dataset")
def no_dataset(ctx):
    trainer = ctx.trainer()
    trainer.train_dataset = None
    return trainer.train


@case(ValueError, r"train_dataset has no label column \(labels; columns: \['input_ids', 'attention_mask'\]\)")
def dataset_without_labels(ctx):
    return ctx.trainer(train_dataset=text_dataset().remove_columns("labels")).train


@case(ValueError, r"column 'labels' holds labels \[3, 7\] outside the model's 3 classes")
def labels_outside_the_label_map(ctx):
    dataset = text_dataset().map(lambda row, i: {"labels": {5: 7, 9: 3}.get(i, row["labels"])}, with_indices=True)
    return ctx.trainer(train_dataset=dataset).train


@case(ValueError, r"column 'labels' holds strings \('alpha', \.\.\.\), not class ids: .*class_encode_column")
def string_labels(ctx):
    names = ["alpha", "beta", "gamma"]
    dataset = text_dataset().map(lambda row: {"labels": names[row["labels"]]})
    return ctx.trainer(train_dataset=dataset).train


@case(ValueError, r"train_dataset has no 'input_ids' column .* the input of BertForSequenceClassification")
def image_dataset_for_a_text_model(ctx):
    return ctx.trainer(train_dataset=image_dataset()).train


@case(ValueError, r"train_dataset has no 'pixel_values' column .* MobileNetV2ForImageClassification")
def text_dataset_for_an_image_model(ctx):
    return ctx.trainer(model=load_image_model(ctx.pretrained_mobilenet)).train


@case(PermissionError, r"output_dir '.*/read-only/run' cannot be written: .* is not a writable directory")
def read_only_output_dir(ctx):
    if os.geteuid() == 0:
        pytest.skip("running as root, for whom chmod does not block writes (see output_dir_below_a_file)")
    (ctx.tmp / "read-only").mkdir(mode=0o555)
    return lambda: ctx.trainer(ctx.tmp / "read-only/run")


@case(PermissionError, r"output_dir '.*/notes.txt/run' cannot be written: .*notes.txt is not a writable directory")
def output_dir_below_a_file(ctx):
    (ctx.tmp / "notes.txt").write_text("a file, not a directory")
    return lambda: ctx.trainer(ctx.tmp / "notes.txt/run")


# ----- the command line ----------------------------------------------------------------------------------------


@case(CliError, r"holds images \(column 'image'\) but .* is a 'bert' model, which does not classify images")
def cli_image_dataset_for_a_text_model(ctx):
    return ctx.cli_train(dataset=ctx.data["images"])


@case(CliError, r"holds no image column but .* is a 'mobilenet_v2' model, which does not classify text")
def cli_text_dataset_for_an_image_model(ctx):
    return ctx.cli_train(model=ctx.pretrained_mobilenet)


@case(CliError, r"tiny-bert holds only pickle weights .* pass --allow_pickle if you trust")
def cli_pickle_only_model(ctx):
    model = Path(shutil.copytree(ctx.pretrained_bert, ctx.tmp / "tiny-bert"))
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return ctx.cli_train(model=str(model))


@case(CliError, r"tiny-bert\): model.safetensors cannot be read as safetensors .* probably truncated")
def cli_truncated_model(ctx):
    model = Path(shutil.copytree(ctx.pretrained_bert, ctx.tmp / "tiny-bert"))
    os.truncate(model / "model.safetensors", (model / "model.safetensors").stat().st_size - 10)
    return ctx.cli_train(model=str(model))


@case(CliError, r"Could not load model 'someone/tiny-bert' .* Without network access \(HF_HUB_OFFLINE=1\)")
def cli_hub_model_when_offline(ctx):
    ctx.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return ctx.cli_train(model="someone/tiny-bert")


@case(CliError, r"Could not load dataset 'someone/data' .*OfflineModeIsEnabled.* pass a local dataset")
def cli_hub_dataset_when_offline(ctx):
    ctx.monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return ctx.cli_train(dataset="someone/data")


@case(CliError, r"--model_name_or_path 'my model!' is neither a local path nor a valid Hub id")
def cli_model_id_with_invalid_characters(ctx):
    return ctx.cli_train(model="my model!")


@case(CliError, r"--dataset 'user/data\?split=1' is neither a local path nor a valid Hub id")
def cli_dataset_id_with_invalid_characters(ctx):
    return ctx.cli_train(dataset="user/data?split=1")


@case(
    CliError, r"Could not read .*empty.csv \(Instruction \"train\" corresponds to no data!\). Check that it holds rows"
)
def cli_empty_dataset(ctx):
    return ctx.cli_train(dataset=ctx.data["empty"])


@case(CliError, r"--ensemble_method sse trains a chain: member 3 starts from member 2")
def cli_sse_members_that_skip_a_link(ctx):
    return ctx.cli_train("--ensemble_method", "sse", "--num_members", "4", "--members_to_train", "1", "3")


@case(CliError, r"--cycle_warmup_ratio 1.0 must be in \[0, 1\)")
def cli_cycle_warmup_ratio_of_one(ctx):
    return ctx.cli_train("--cycle_warmup_ratio", "1.0")


@case(CliError, r"holds a different hf_starsse run \(.*learning_rate: 0.005 there, 0.001 now")
def cli_output_dir_holding_a_different_run(ctx):
    run = ctx.run_copy()
    return ctx.cli(
        "train", "--model_name_or_path", ctx.pretrained_bert, "--dataset", ctx.data["text"], "--output_dir",
        str(run), "--report_to", "none", "--use_cpu", "true", "--learning_rate", "1e-3",
    )  # fmt: skip


@case(CliError, r"member-01 do not match the sha256 recorded for member 1")
def cli_soup_of_a_corrupted_run(ctx):
    run = ctx.run_copy()
    os.truncate(run / "members/member-01/model.safetensors", 100)
    return ctx.cli("soup", "--run_dir", str(run), "--output_dir", str(ctx.tmp / "soup"))


# ----- the test ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Datasets on disk for the command line: text (3 labels), images, and an empty CSV file."""
    root = tmp_path_factory.mktemp("bad_inputs_data")
    text = Dataset.from_dict(
        {"text": [f"{VOCAB[5 + i]} {VOCAB[9 + i]}" for i in range(12)], "label": [i % 3 for i in range(12)]},
        features=Features({"text": Value("string"), "label": ClassLabel(names=["a", "b", "c"])}),
    )
    pixels = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    images = Dataset.from_dict(
        {"image": [PILImage.fromarray(p) for p in pixels], "label": [0, 1, 0, 1]},
        features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}),
    )
    paths = {"text": root / "text", "images": root / "images", "empty": root / "empty.csv"}
    DatasetDict({"train": text}).save_to_disk(paths["text"])
    DatasetDict({"train": images}).save_to_disk(paths["images"])
    paths["empty"].write_text("text,label\n")
    return {name: str(path) for name, path in paths.items()}


def files(root: Path) -> dict[str, bytes]:
    """Every file below `root` (symlinks not followed; lock files left out) with its contents."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if not name.endswith(".lock"):
                found[str(path.relative_to(root))] = path.read_bytes() if path.is_file() else b"<special>"
    return found


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_before_anything_is_written(name, tmp_path, text_run, pretrained_bert, pretrained_mobilenet, data,
                                            capsys, monkeypatch):  # fmt: skip
    make, error, message = CASES[name]
    ctx = Context(tmp_path, text_run, pretrained_bert, pretrained_mobilenet, data, capsys, monkeypatch)
    attempt = make(ctx)
    before = files(tmp_path)
    with pytest.raises(error, match=message) as refusal:
        attempt()
    assert files(tmp_path) == before
    assert "\n" not in str(refusal.value)  # one line, as the command line prints it
