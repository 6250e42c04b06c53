import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from hf_starsse import StarSSETrainer, greedy_soup, recalibrate_batchnorm, uniform_soup

from conftest import image_dataset, load_image_model, load_text_model, make_args, text_dataset, tokenizer


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, pretrained_bert):
    run = tmp_path_factory.mktemp("text_run") / "run"
    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert),
        args=make_args(run, num_members=3),
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
    )
    trainer.train()
    return run


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, pretrained_mobilenet):
    run = tmp_path_factory.mktemp("image_run") / "run"
    trainer = StarSSETrainer(
        model=load_image_model(pretrained_mobilenet),
        args=make_args(run, num_members=2, cycle_steps=2, cycle_learning_rate=0.05),
        train_dataset=image_dataset(),
    )
    trainer.train()
    return run


def members_of(run, count):
    return [run / f"members/member-{i:02d}" for i in range(count)]


def test_uniform_soup_is_the_float64_average(tmp_path, text_run):
    soup = uniform_soup(text_run, tmp_path / "soup")
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
        uniform_soup(text_run, tmp_path / "soup")


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
        plain = uniform_soup(image_run)
    assert "no train_dataset was given" in caplog.text
    soup = uniform_soup(image_run, tmp_path / "soup", train_dataset=image_dataset(), batch_size=8)
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


def test_pickle_only_member_refused(tmp_path, text_run):
    member = copy_member(members_of(text_run, 1)[0], tmp_path / "pickled")
    (member / "model.safetensors").rename(member / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickle checkpoints are never loaded"):
        uniform_soup([member])


def test_greedy_soup_adds_only_members_that_do_not_hurt(tmp_path, text_run):
    member = members_of(text_run, 1)[0]

    def with_bias(value):
        def edit(state):
            state["classifier.bias"] = torch.tensor([value, 0.0, 0.0])

        return edit

    members = [copy_member(member, tmp_path / name, with_bias(b)) for name, b in (("a", 5.0), ("b", -9.0), ("c", 5.0))]
    score = lambda logits, labels: logits[:, 0].mean().item()  # noqa: E731  (rewards a large class-0 bias)
    soup, chosen = greedy_soup(members, text_dataset(n=16, seed=3), metric=score, out_dir=tmp_path / "soup")
    assert chosen == [0, 2]  # a and c tie at the top; b would pull the soup down
    assert torch.equal(soup.state_dict()["classifier.bias"], torch.tensor([5.0, 0.0, 0.0]))
    record = json.loads((tmp_path / "soup/soup.json").read_text())
    assert record["chosen"] == [0, 2] and record["method"] == "greedy"
    assert record["member_scores"][1] < record["member_scores"][0]


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
