"""Image corruptions for robustness under distribution shift (CIFAR-C style), at 5 severities, deterministic.

Each corruption takes images as a float tensor `(N, C, H, W)` or `(C, H, W)` with values in [0, 1] (before the
processor's normalisation), a severity in 1..5 and a seed, and returns corrupted images of the same shape in [0, 1].
The same inputs, severity and seed always give the same output.
"""

import io
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)
# Strength of each corruption per severity 1..5 (noise std, photons, blur sigma in pixels, contrast factor,
# brightness shift, pixel block size, JPEG quality, rotation degrees).
_LEVELS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.10, 0.13),
    "shot_noise": (250.0, 100.0, 50.0, 25.0, 12.0),  # photons per unit intensity: fewer is noisier
    "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.3),
    "contrast": (0.75, 0.6, 0.45, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "pixelate": (2, 3, 4, 6, 8),  # block size in pixels
    "jpeg": (80, 60, 40, 25, 12),
    "rotation": (5.0, 10.0, 15.0, 20.0, 30.0),
}


def _gaussian_noise(images: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    return images + level * torch.randn(images.shape, generator=generator)


def _shot_noise(images: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    return torch.poisson(images * level, generator=generator) / level


def _gaussian_blur(images: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * level)))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * level**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)


def _contrast(images: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    means = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - means) * level + means


def _brightness(images: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    return images + level


def _pixelate(images: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[-2:]
    blocks = F.avg_pool2d(images, level, stride=level, ceil_mode=True)
    return blocks.repeat_interleave(level, dim=-2).repeat_interleave(level, dim=-1)[..., :height, :width]


def _jpeg(images: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    out = []
    for image in images:
        array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        mode = "L" if array.shape[-1] == 1 else "RGB"
        buffer = io.BytesIO()
        Image.fromarray(array.squeeze(-1) if mode == "L" else array, mode=mode).save(buffer, "JPEG", quality=level)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255
        out.append(torch.from_numpy(decoded.reshape(array.shape)).permute(2, 0, 1))
    return torch.stack(out).to(images.dtype)


def _rotation(images: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, (images.shape[0],), generator=generator) * 2 - 1  # rotate left or right
    angles = torch.deg2rad(signs * level)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


CORRUPTIONS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "jpeg": _jpeg,
    "rotation": _rotation,
}


def corrupt(images: torch.Tensor, corruption: str, severity: int, seed: int = 0) -> torch.Tensor:
    """
    Apply one corruption at one severity.

    Args:
        images (`torch.Tensor`): `(N, C, H, W)` or `(C, H, W)` images with values in [0, 1].
        corruption (`str`): One of `CORRUPTIONS`: gaussian_noise, shot_noise, gaussian_blur, contrast, brightness,
            pixelate, jpeg, rotation.
        severity (`int`): 1 (mild) to 5 (strong).
        seed (`int`, *optional*, defaults to 0): Seed of the random parts (noise, rotation direction).

    Returns:
        `torch.Tensor`: Corrupted images, same shape, clipped to [0, 1].
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {corruption!r}; choose from {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ValueError(f"severity={severity} must be one of {SEVERITIES}.")
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    if batch.dim() != 4 or not torch.is_floating_point(batch):
        raise ValueError(
            f"images must be a float tensor (N, C, H, W) or (C, H, W) in [0, 1], got {tuple(images.shape)}."
        )
    generator = torch.Generator().manual_seed(seed)
    corrupted = CORRUPTIONS[corruption](batch.cpu(), _LEVELS[corruption][severity - 1], generator).clamp(0, 1)
    return corrupted[0] if single else corrupted


def corruption_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of one image's corruption: fixed by the image's index, the corruption and the severity only."""
    return (seed * 1_000_003 + zlib.crc32(f"{corruption}/{severity}".encode()) * 65_537 + index) % 2**63


def corrupted_splits(
    images: torch.Tensor,
    labels,
    preprocess=None,
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS),
    severities: tuple[int, ...] = SEVERITIES,
    seed: int = 0,
) -> dict:
    """
    Corrupted versions of a test set, one split per corruption and severity, named `"<corruption>/<severity>"`, for
    `evaluate_ensemble(..., datasets={"test": ..., **corrupted_splits(...)})` and `summarize_robustness`. The clean
    images are stored once; each split corrupts its rows when they are read (`with_transform`), and image `i` always
    gets the same corruption whatever the batch or the other splits.

    Args:
        images (`torch.Tensor`): `(N, C, H, W)` test images in [0, 1], before normalisation. The corruption
            strengths (noise, blur in pixels, block sizes, rotation) are calibrated for small images (32-64 px).
        labels: `(N,)` labels.
        preprocess (`Callable`, *optional*): Turns a batch of [0, 1] images into the model's `pixel_values` (e.g.
            resizing and normalising like the image processor). Default: the images as they are.
        corruptions (`tuple[str]`, *optional*): Which corruptions (default: all of `CORRUPTIONS`).
        severities (`tuple[int]`, *optional*): Which severities (default: 1..5).
        seed (`int`, *optional*, defaults to 0): Base seed of the random corruptions.
    """
    from datasets import Dataset

    clean = Dataset.from_dict(
        {"image": images.numpy(), "labels": torch.as_tensor(labels).tolist(), "index": list(range(len(images)))}
    )

    def transform_for(corruption: str, severity: int):
        def transform(batch):
            pixels = torch.stack(
                [
                    corrupt(torch.as_tensor(np.asarray(image, dtype=np.float32)), corruption, severity,
                            corruption_seed(seed, corruption, severity, index))
                    for image, index in zip(batch["image"], batch["index"])
                ]
            )  # fmt: skip
            pixels = preprocess(pixels) if preprocess is not None else pixels
            return {"pixel_values": pixels, "labels": torch.as_tensor(batch["labels"])}

        return transform

    return {f"{c}/{s}": clean.with_transform(transform_for(c, s)) for c in corruptions for s in severities}


def summarize_robustness(rows: list[dict], metric: str = "accuracy") -> dict[str, dict[str, float]]:
    """
    Mean of `metric` over severities per corruption, and over all corrupted splits (`"mean"`), for each model of an
    `evaluate_ensemble` table whose splits come from `corrupted_splits`.

    Returns:
        `dict`: `{corruption or "mean": {model label: value}}`, with labels like `"ensemble (5)"`, `"member 0"`,
        `"uniform_soup"`; the input of `plots.plot_corruption_bars`.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if "/" not in row["split"]:
            continue
        corruption = row["split"].split("/")[0]
        if row["model"] == "member":
            label = f"member {row['member']}"
        elif row["model"] == "ensemble":
            label = f"ensemble ({row['size']})"
        else:
            label = row["model"]
        for key in (corruption, "mean"):
            values.setdefault(key, {}).setdefault(label, []).append(row[metric])
    return {key: {label: float(np.mean(v)) for label, v in labels.items()} for key, labels in values.items()}
