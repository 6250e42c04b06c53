"""Image classification with a StarSSE ensemble, and its robustness to image corruptions.

    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/image_classification.py \\
        --model_name_or_path google/mobilenet_v2_1.0_224 --dataset uoft-cs/cifar10 --image_column img \\
        --eval_split test --output_dir runs/cifar10 --num_members 5 --num_train_epochs 2 --learning_rate 1e-2 \\
        --cycle_epochs 1 --cycle_learning_rate 2e-2 --per_device_train_batch_size 64 --eval_strategy epoch

The same pipeline as text_classification.py (train, save ensemble and soup, evaluate, push); the evaluation adds a
corrupted copy of the test split per `--corruptions` x `--severities` and prints the mean accuracy of members,
ensembles and soups under corruption. Soups of models with BatchNorm are recalibrated on the training split.
"""

from dataclasses import dataclass, field
from functools import partial

import datasets
import torch
from text_classification import parse_args, run

from hf_starsse.evaluation.corruptions import CORRUPTIONS, corrupted_splits, summarize_robustness
from hf_starsse.training.data import PreparedTask


@dataclass
class RobustnessArguments:
    corruptions: list[str] = field(
        default_factory=lambda: ["gaussian_noise", "contrast", "gaussian_blur"],
        metadata={"help": f"Corruptions of the test split to evaluate on; any of {', '.join(CORRUPTIONS)}."},
    )
    severities: list[int] = field(default_factory=lambda: [1, 3, 5], metadata={"help": "Severities, 1 to 5."})


def corrupted_test_splits(
    task: PreparedTask, test_split: str, column: str | None, options: RobustnessArguments
) -> dict:
    """The test images as the processor sizes them, in [0, 1], corrupted, then normalised like the processor does."""
    test = task.splits[test_split]
    column = column or next(name for name, feature in test.features.items() if isinstance(feature, datasets.Image))
    processor = task.processing_class
    images = processor([image.convert("RGB") for image in test[column]], do_normalize=False, return_tensors="pt")
    mean = torch.tensor(processor.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(processor.image_std).view(1, -1, 1, 1)
    labels = task.prepare(test)[:]["labels"]
    return corrupted_splits(
        images["pixel_values"],
        labels,
        preprocess=lambda pixels: (pixels - mean) / std if processor.do_normalize else pixels,
        corruptions=tuple(options.corruptions),
        severities=tuple(options.severities),
    )


if __name__ == "__main__":
    data, args, options, robustness = parse_args(RobustnessArguments)
    corrupted = partial(corrupted_test_splits, column=data.image_column, options=robustness)
    rows = run(data, args, options, corrupted)
    if rows:
        for model, accuracy in summarize_robustness(rows)["mean"].items():
            print(f"mean accuracy under corruption, {model}: {accuracy:.4f}")
