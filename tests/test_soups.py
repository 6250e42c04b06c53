import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from hf_starsse import StarSSETrainer, greedy_soup, recalibrate_batchnorm, uniform_soup

from conftest import image_dataset, load_image_model, load_text_model, make_args, text_dataset, tokenizer


def members_of(trainer, count):
    return [Path(trainer.args.output_dir) / f"members/member-{i:02d}" for i in range(count)]


def test_uniform_soup_is_the_float64_average(tmp_path, text_run):
    soup = uniform_soup(text_run.args.output_dir, tmp_path / "soup")
    states = [load_file(str(m / "model.safetensors")) for m in members_of(text_run, 3)]
    for key, value in soup.state_dict().items():
        expected = (sum(s[key].double() for s in states) / 3).to(states[0][key].dtype)
        assert torch.equal(value, expected), key
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "soup")
    assert type(loaded).__name__ == "BertForSequenceClassification"
    assert (tmp_path / "soup/tokenizer.json").is_file()
    assert not (tmp_path / "soup/trainer_state.json").exists()
    record = json.loads((tmp_path / "soup/soup.json").read_text())
    assert record["method"] == "uniform" and len(record["members"]) == 3
    with pytest.raises(FileExistsError, match="not empty"):
        uniform_soup(text_run.args.output_dir, tmp_path / "soup")


def test_recalibrate_batchnorm_estimates_data_statistics():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(4, momentum=0.3)

        def forward(self, pixel_values):
            return self.bn(pixel_values)

    data = torch.randn(64, 4) * 3 + 2
    model = Net().eval()
    recalibrate_batchnorm(model, [{"pixel_values": chunk} for chunk in data.split(16)])
    assert torch.allclose(model.bn.running_mean, data.mean(0), atol=1e-5)
    batch_vars = torch.stack([chunk.var(0, unbiased=True) for chunk in data.split(16)])
    assert torch.allclose(model.bn.running_var, batch_vars.mean(0), atol=1e-4)
    assert model.bn.momentum == 0.3 and not model.training


def test_batchnorm_soup_recalibrated_or_warned(tmp_path, image_run, caplog):
    with caplog.at_level(logging.WARNING):
        plain = uniform_soup(image_run.args.output_dir)
    assert "no train_dataset was given" in caplog.text
    soup = uniform_soup(image_run.args.output_dir, tmp_path / "soup", train_dataset=image_dataset(), batch_size=8)
    key = "mobilenet_v2.conv_stem.first_conv.normalization.running_mean"
    assert not torch.equal(plain.state_dict()[key], soup.state_dict()[key])
    loader = [{"pixel_values": batch["pixel_values"]} for batch in torch.utils.data.DataLoader(image_dataset(), 8)]
    expected = recalibrate_batchnorm(plain, loader)
    assert torch.allclose(soup.state_dict()[key], expected.state_dict()[key], atol=1e-6)
    assert json.loads((tmp_path / "soup/soup.json").read_text())["batchnorm_recalibrated"] is True
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path / "soup")).__name__.startswith("MobileNetV2")


def copy_member(source, target, edit=None, config_edit=None):
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints"))
    if edit is not None:
        state = load_file(str(target / "model.safetensors"))
        edit(state)
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    if config_edit is not None:
        config = json.loads((target / "config.json").read_text())
        config_edit(config)
        (target / "config.json").write_text(json.dumps(config))
    return target


def set_item(key, value):
    return lambda state: state.__setitem__(key, value)


@pytest.mark.parametrize(
    "edit,config_edit,message",
    [
        (lambda s: s.pop("classifier.bias"), None, "different tensors"),
        (set_item("classifier.bias", torch.zeros(4)), None, r"'classifier.bias' is \(4,\)"),
        (lambda s: s.__setitem__("classifier.bias", s["classifier.bias"].half()), None, "torch.float16"),
        (set_item("classifier.bias", torch.tensor([float("nan"), 0.0, 0.0])), None, "non-finite"),
        (None, lambda c: c.__setitem__("id2label", {"0": "a", "1": "b", "2": "z"}), "'id2label'"),
        (None, lambda c: c.__setitem__("architectures", ["BertForMaskedLM"]), "'architectures'"),
    ],
)
def test_mismatched_members_refused(tmp_path, text_run, edit, config_edit, message):
    good = members_of(text_run, 1)[0]
    bad = copy_member(good, tmp_path / "bad", edit, config_edit)
    with pytest.raises(ValueError, match=message) as error:
        uniform_soup([good, bad], tmp_path / "soup")
    assert "bad" in str(error.value)
    assert not (tmp_path / "soup").exists() and [p.name for p in tmp_path.iterdir()] == ["bad"]


def test_pickle_only_members_need_the_opt_in_and_load_weights_only(tmp_path, text_run, monkeypatch):
    members = members_of(text_run, 2)
    pickled = [copy_member(member, tmp_path / f"pickled-{i}") for i, member in enumerate(members)]
    for member in pickled:
        torch.save(load_file(member / "model.safetensors"), member / "pytorch_model.bin")
        (member / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="holds only pickle weights .* pass allow_pickle=True"):
        uniform_soup(pickled)
    loads = []
    original_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or original_load(*a, **k))
    soup = uniform_soup(pickled, allow_pickle=True)
    assert loads and all(weights_only is True for weights_only in loads)
    expected = uniform_soup(members).state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in soup.state_dict().items())


def test_greedy_soup_adds_only_members_that_do_not_hurt(tmp_path, text_run):
    member = members_of(text_run, 1)[0]

    def with_bias(value):
        def edit(state):
            state["classifier.bias"] = torch.tensor([value, 0.0, 0.0])

        return edit

    members = [copy_member(member, tmp_path / name, with_bias(b)) for name, b in (("a", -9.0), ("b", 5.0), ("c", 5.0))]
    score = lambda logits, labels: logits[:, 0].mean().item()  # noqa: E731  (rewards a large class-0 bias)
    soup, chosen = greedy_soup(members, text_dataset(n=16, seed=3), metric=score, out_dir=tmp_path / "soup")
    assert chosen == [1, 2]  # sorted first: b and c tie at the top; a would pull the soup down
    assert torch.equal(soup.state_dict()["classifier.bias"], torch.tensor([5.0, 0.0, 0.0]))
    record = json.loads((tmp_path / "soup/soup.json").read_text())
    assert record["chosen"] == [1, 2] and record["method"] == "greedy"
    assert record["member_scores"][0] < record["member_scores"][1]


def test_trainer_saves_soups(tmp_path, pretrained_bert):
    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert),
        args=make_args(tmp_path / "run", num_members=2),
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
    )
    trainer.train()
    with pytest.raises(ValueError, match="give the trainer an eval_dataset"):
        trainer.save_soup(str(tmp_path / "greedy"), method="greedy")
    with pytest.raises(ValueError, match="method='average' is unknown"):
        trainer.save_soup(str(tmp_path / "soup"), method="average")
    soup = trainer.save_soup(str(tmp_path / "soup"))
    assert json.loads((tmp_path / "soup/soup.json").read_text())["method"] == "uniform"
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path / "soup")) is type(soup)
    trainer.eval_dataset = text_dataset(seed=5)
    trainer.save_soup(str(tmp_path / "greedy"), method="greedy")
    assert json.loads((tmp_path / "greedy/soup.json").read_text())["chosen"][0] in (0, 1)


def test_recalibration_restores_accuracy_of_a_soup_with_wrong_statistics(tmp_path, image_run):
    from hf_starsse.soups.predict import accuracy_metric, make_dataloader

    base = members_of(image_run, 1)[0]
    data = image_dataset(n=48, seed=11)
    teacher = recalibrate_batchnorm(
        AutoModelForImageClassification.from_pretrained(base), make_dataloader(load_image_model(base), data, None, 8)
    ).eval()
    with torch.no_grad():
        pixels = data[:]["pixel_values"]
        labels = teacher(pixel_values=pixels).logits.argmax(-1)  # accuracy 1 with the data's statistics

    def shift_statistics(mean_shift, var_scale):
        def edit(state):
            for key in state:
                if key.endswith("running_mean"):
                    state[key] = state[key] + mean_shift
                elif key.endswith("running_var"):
                    state[key] = state[key] * var_scale

        return edit

    members = [
        copy_member(base, tmp_path / "a", shift_statistics(3.0, 100.0)),
        copy_member(base, tmp_path / "b", shift_statistics(-1.0, 1.0)),
    ]
    with torch.no_grad():
        accuracy = {
            name: accuracy_metric(soup(pixel_values=pixels).logits, labels)
            for name, soup in (
                ("raw", uniform_soup(members)),
                ("recalibrated", uniform_soup(members, train_dataset=data, batch_size=8)),
            )
        }
    assert accuracy["raw"] < 0.9 and accuracy["recalibrated"] == 1.0, accuracy


def test_soup_memory_does_not_grow_with_members(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=8000, hidden_size=512, num_hidden_layers=4, num_attention_heads=4, intermediate_size=2048
    )
    for seed in range(8):
        torch.manual_seed(seed)
        BertForSequenceClassification(config).save_pretrained(tmp_path / f"m{seed}")
    model_mb = (tmp_path / "m0/model.safetensors").stat().st_size / 2**20
    script = """
import re, sys
from hf_starsse import uniform_soup
uniform_soup(sys.argv[2:])
status = open("/proc/self/status").read()  # VmHWM: this process's peak RSS (ru_maxrss can carry the parent's)
print(int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024)
"""
    peaks = {}
    for count in (2, 8):
        members = [str(tmp_path / f"m{seed}") for seed in range(count)]
        # a fixed mmap threshold makes glibc return freed tensors at once, so RSS tracks live memory, not the heap's
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        result = subprocess.run([sys.executable, "-c", script, "-", *members], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        peaks[count] = float(result.stdout.split()[-1])
    # holding every member would add 6 models (~6 x model_mb); streaming adds nothing that depends on K
    assert peaks[8] - peaks[2] < 0.25 * model_mb, (peaks, model_mb)


def test_recalibration_with_a_transformed_dataset(image_run):
    raw = image_dataset(n=16).with_format(None)

    def transform(batch):  # the usual image-classification recipe: tensors made on the fly
        return {"pixel_values": [torch.tensor(x) for x in batch["pixel_values"]], "labels": batch["labels"]}

    raw.set_transform(transform)
    soup = uniform_soup(image_run.args.output_dir, train_dataset=raw, batch_size=8)
    reference = uniform_soup(image_run.args.output_dir, train_dataset=image_dataset(n=16), batch_size=8)
    key = "mobilenet_v2.conv_stem.first_conv.normalization.running_mean"
    assert torch.allclose(soup.state_dict()[key], reference.state_dict()[key], atol=1e-6)


def test_failed_save_leaves_nothing_and_keeps_the_old_soup(tmp_path, text_run, monkeypatch):
    run = text_run.args.output_dir
    uniform_soup(run, tmp_path / "soup")
    before = (tmp_path / "soup/model.safetensors").read_bytes()

    def failing_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(text_run.model), "save_pretrained", failing_save)
    with pytest.raises(OSError, match="disk full"):
        uniform_soup(run, tmp_path / "soup", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["soup"]  # no temporary directory left
    assert (tmp_path / "soup/model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="holds the members themselves"):
        uniform_soup(run, run, overwrite=True)


def test_members_recalibrated_when_training_ends(tmp_path, pretrained_mobilenet):
    from hf_starsse.soups.batchnorm import BatchNormRecalibrationCallback, fix_batchnorm_momentum
    from hf_starsse.soups.predict import make_dataloader

    data = image_dataset(n=32)

    def first_bn_mean(callbacks, name):
        args = make_args(tmp_path / name, num_members=2, cycle_steps=2, cycle_learning_rate=0.05)
        StarSSETrainer(model=load_image_model(pretrained_mobilenet), args=args, train_dataset=data,
                       callbacks=callbacks).train()  # fmt: skip
        model = AutoModelForImageClassification.from_pretrained(tmp_path / name / "members/member-01")
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        return model, bn.running_mean.clone()

    model, recalibrated = first_bn_mean([BatchNormRecalibrationCallback()], "with")
    _, plain = first_bn_mean(None, "without")
    recalibrate_batchnorm(model, make_dataloader(model, data, batch_size=8))
    reference = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
    assert (recalibrated - reference).abs().max() < 1e-3 < (plain - reference).abs().max()
    assert fix_batchnorm_momentum(model) == len([m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert fix_batchnorm_momentum(model) == 0  # already a PyTorch momentum
