"""Tiny models built from config and synthetic data, and the local Hub stand-in: no downloads, CPU, seconds."""

import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import transformers
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    MobileNetV2ImageProcessor,
)
from transformers.utils import logging as transformers_logging

from hf_starsse import StarSSETrainer, StarSSETrainingArguments, evaluate_ensemble

from hub_server import LocalHub

transformers_logging.set_verbosity_error()

NUM_LABELS = 3
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]


def bert_config(**kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        **kwargs,
    )


@pytest.fixture(scope="session")
def asset_cache(tmp_path_factory) -> str:
    """One temporary cache of converted offline assets for the tests that share them (e.g. SmolLM2 converted once for
    the generative demo and benchmark), never the user's."""
    return str(tmp_path_factory.mktemp("asset-cache"))


@pytest.fixture(scope="session")
def pretrained_bert(tmp_path_factory) -> str:
    """A 'pre-trained' tiny BERT backbone saved like a Hub checkpoint (no classification head)."""
    path = tmp_path_factory.mktemp("pretrained") / "tiny-bert"
    torch.manual_seed(1234)
    BertModel(bert_config()).save_pretrained(path)
    tokenizer(path)
    return str(path)


def tokenizer(save_to=None) -> BertTokenizerFast:
    tok = BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)})
    if save_to is not None:
        tok.save_pretrained(save_to)
    return tok


def load_text_model(path: str, seed: int | None = 0) -> BertForSequenceClassification:
    """The backbone from `path` with a new head, initialised from `seed` (None: the current RNG state)."""
    if seed is not None:
        torch.manual_seed(seed)
    return BertForSequenceClassification.from_pretrained(path, num_labels=NUM_LABELS)


def text_dataset(n: int = 48, length: int = 8, seed: int = 0) -> Dataset:
    """Token sequences whose label is given by the most frequent of three token groups: learnable, not trivial."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, len(VOCAB), (n, length), generator=generator)
    labels = (input_ids % NUM_LABELS).mode(dim=1).values
    return Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": [[1] * length] * n, "labels": labels.tolist()}
    )


@pytest.fixture(scope="session")
def pretrained_mobilenet(tmp_path_factory) -> str:
    """A tiny MobileNetV2 (with BatchNorm) saved with a 10-class head, re-headed by `load_image_model`."""
    path = tmp_path_factory.mktemp("pretrained") / "tiny-mobilenet"
    torch.manual_seed(4321)
    config = MobileNetV2Config(num_channels=3, image_size=16, depth_multiplier=0.25, num_labels=10)
    MobileNetV2ForImageClassification(config).save_pretrained(path)
    return str(path)


def load_image_model(path: str, seed: int = 0) -> MobileNetV2ForImageClassification:
    torch.manual_seed(seed)
    model = MobileNetV2ForImageClassification.from_pretrained(
        path, num_labels=NUM_LABELS, ignore_mismatched_sizes=True
    )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return model


def image_dataset(n: int = 32, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_LABELS, (n,), generator=generator)
    pixels = torch.randn(n, 3, 16, 16, generator=generator) + labels.view(n, 1, 1, 1).float()
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()}).with_format("torch")


def make_args(output_dir, **kwargs) -> StarSSETrainingArguments:
    defaults = dict(
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        num_members=3,
        cycle_steps=3,
        cycle_learning_rate=2e-3,
    )
    return StarSSETrainingArguments(output_dir=str(output_dir), **{**defaults, **kwargs})


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, pretrained_bert) -> StarSSETrainer:
    """A trained 3-member StarSSE run of the tiny BERT (with tokenizer files in every member)."""
    trainer = StarSSETrainer(
        model=load_text_model(pretrained_bert),
        args=make_args(tmp_path_factory.mktemp("text_run") / "run", learning_rate=5e-3, cycle_learning_rate=1e-2),
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
    )
    trainer.train()
    return trainer


@pytest.fixture(scope="session")
def image_run(tmp_path_factory, pretrained_mobilenet) -> StarSSETrainer:
    """A trained 2-member StarSSE run of the tiny MobileNetV2 (BatchNorm), with an image processor."""
    trainer = StarSSETrainer(
        model=load_image_model(pretrained_mobilenet),
        args=make_args(
            tmp_path_factory.mktemp("image_run") / "run", num_members=2, cycle_steps=2, cycle_learning_rate=0.05
        ),
        train_dataset=image_dataset(),
        processing_class=MobileNetV2ImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
    )
    trainer.train()
    return trainer


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory) -> Path:
    """A trained 3-member StarSSE run of LoRA adapters (PEFT) over a tiny BERT in a local directory (`lora-base`,
    which the adapters and the manifest name by its path), evaluated on a test split. Copy it to change it."""
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("secret-lora-dir")
    torch.manual_seed(1234)
    BertModel(bert_config()).save_pretrained(root / "lora-base")
    tokenizer(root / "lora-base")
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    StarSSETrainer(
        model=peft.get_peft_model(load_text_model(str(root / "lora-base")), lora),
        args=make_args(root / "run", learning_rate=5e-3, cycle_learning_rate=1e-2),
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
    ).train()
    evaluate_ensemble(root / "run", {"test": text_dataset(n=16, seed=3)})
    return root / "run"


@pytest.fixture(scope="session")
def text_data(tmp_path_factory):
    """A 3-class text dataset saved with save_to_disk (train, validation and test splits)."""
    rng = np.random.default_rng(0)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["alpha", "beta", "gamma"])})

    def split(n):
        words = rng.integers(5, len(VOCAB), (n, 8))
        return Dataset.from_dict(
            {"text": [" ".join(VOCAB[i] for i in row) for row in words], "label": (words[:, 0] % 3).tolist()},
            features=features,
        )

    path = tmp_path_factory.mktemp("cli") / "text_data"
    DatasetDict({"train": split(32), "validation": split(16), "test": split(16)}).save_to_disk(path)
    return str(path)


@pytest.fixture(scope="session")
def image_data(tmp_path_factory, pretrained_mobilenet):
    """A tiny MobileNetV2 with its image processor, and a 2-class dataset of PIL images (train and test splits)."""
    root = tmp_path_factory.mktemp("cli_images")
    shutil.copytree(pretrained_mobilenet, root / "mobilenet")
    processor = MobileNetV2ImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor.save_pretrained(root / "mobilenet")
    rng = np.random.default_rng(1)
    images = [PILImage.fromarray((rng.random((20, 20, 3)) * 255).astype("uint8")) for _ in range(16)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    data = Dataset.from_dict({"image": images, "label": [i % 2 for i in range(16)]}, features=features)
    DatasetDict({"train": data, "test": data.select(range(8))}).save_to_disk(root / "images")
    return str(root / "mobilenet"), str(root / "images")


@pytest.fixture
def local_hub(monkeypatch, tmp_path):
    """The local Hub stand-in, with huggingface_hub pointed at it and no token from the environment or a login."""
    with LocalHub() as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # transformers' shared client, made anew
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        yield hub
