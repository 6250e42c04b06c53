import pytest
import torch

from hf_starsse.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt


@pytest.fixture(scope="module")
def images():
    """Natural-looking test images: smooth random fields (blurred noise) plus a sharp-edged disc, in [0.1, 0.9]."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(4, 3, 12, 12, generator=generator)
    smooth = torch.nn.functional.interpolate(noise, size=(48, 48), mode="bicubic", align_corners=False)
    y, x = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    disc = (((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.1).float()
    return (0.7 * smooth.clamp(0, 1) + 0.3 * disc).clamp(0, 1) * 0.8 + 0.1


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_in_range_and_shape(images, name):
    first = corrupt(images, name, 3, seed=7)
    assert torch.equal(first, corrupt(images, name, 3, seed=7))
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    assert corrupt(images[0], name, 3, seed=7).shape == images[0].shape


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_monotone_in_severity(images, name):
    distances = [(corrupt(images, name, s, seed=0) - images).abs().mean().item() for s in SEVERITIES]
    assert distances[0] > 0
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_bad_arguments(images):
    with pytest.raises(ValueError, match="Unknown corruption 'fog'"):
        corrupt(images, "fog", 1)
    with pytest.raises(ValueError, match="severity=6"):
        corrupt(images, "contrast", 6)
    with pytest.raises(ValueError, match="float tensor"):
        corrupt(torch.zeros(2, 2, dtype=torch.uint8), "contrast", 1)


def test_corrupted_splits_and_summary(images):
    from hf_starsse.evaluation.corruptions import corrupted_splits, corruption_seed, summarize_robustness

    splits = corrupted_splits(images, [0, 1, 2, 0], corruptions=("contrast", "gaussian_noise"), severities=(1, 5))
    assert list(splits) == ["contrast/1", "contrast/5", "gaussian_noise/1", "gaussian_noise/5"]
    noisy = splits["gaussian_noise/5"][:]["pixel_values"]
    expected = torch.stack([corrupt(image, "gaussian_noise", 5, corruption_seed(0, "gaussian_noise", 5, i))
                            for i, image in enumerate(images)])  # fmt: skip
    assert torch.allclose(noisy, expected)
    assert torch.allclose(splits["gaussian_noise/5"][2:3]["pixel_values"][0], noisy[2])  # per image, not per batch
    alone = corrupted_splits(images, [0, 1, 2, 0], corruptions=("gaussian_noise",), severities=(5,))
    assert torch.equal(alone["gaussian_noise/5"][:]["pixel_values"], noisy)  # independent of the other splits
    assert splits["contrast/1"][:]["labels"].tolist() == [0, 1, 2, 0]
    halved = corrupted_splits(
        images, [0, 1, 2, 0], preprocess=lambda x: x / 2, corruptions=("contrast",), severities=(1,)
    )
    assert torch.allclose(halved["contrast/1"][:]["pixel_values"], corrupt(images, "contrast", 1) / 2)
    rows = [
        {"split": split, "model": model, "member": member, "size": size, "accuracy": accuracy}
        for split, accuracy in (("contrast/1", 0.9), ("contrast/5", 0.5), ("jpeg/1", 0.8), ("test", 1.0))
        for model, member, size in (("ensemble", None, 3), ("member", 0, 1))
    ]
    summary = summarize_robustness(rows)
    assert summary["contrast"]["ensemble (3)"] == pytest.approx(0.7)
    assert summary["mean"]["member 0"] == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert set(summary) == {"contrast", "jpeg", "mean"}  # the clean "test" split is not a corruption
