"""The embedded default: offline assets (a real pre-trained model and real data from PyPI packages), the demo run and
its report."""

from .assets import fashion_mnist, load_fashion_mnist, pretrained_mobilenet_v2
from .run import TRAINING_DEFAULTS, DemoArguments, demo_defaults, run_demo
from .text_assets import load_newsgroups, newsgroups, pretrained_minilm

__all__ = [
    "DemoArguments",
    "TRAINING_DEFAULTS",
    "demo_defaults",
    "fashion_mnist",
    "load_fashion_mnist",
    "load_newsgroups",
    "newsgroups",
    "pretrained_minilm",
    "pretrained_mobilenet_v2",
    "run_demo",
]
