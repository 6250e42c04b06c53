"""`hf-starsse demo --task text`: the demo's task-specific parts for text (all-MiniLM-L6-v2 on four 20 Newsgroups
families, evaluated on later posts of the trained-on newsgroups and, as the shift, of held-out sibling newsgroups;
see `text_assets`)."""

import datasets

from ..training.data import DataArguments, PreparedTask
from .text_assets import NEWSGROUP_FAMILIES, load_sms_spam, newsgroups, pretrained_minilm

# The text demo's recipe, over the image demo's (sized to finish in under 5 minutes on 2 CPU cores). Its cycles are
# the best cell within that time of a sweep at the demo's size, scored on validation posts
# (benchmarks/results/text_demo_sweep.md): cycles of half an epoch at member 0's peak learning rate (the best cell
# overall, 1.5-epoch cycles, takes the demo to 6.4 minutes).
TEXT_TRAINING_DEFAULTS = dict(
    output_dir="runs/demo-text",
    num_train_epochs=3,
    learning_rate=1.5e-4,  # MiniLM's pooler starts poor: it needs more than BERT's usual 2e-5..5e-5
    cycle_epochs=0.5,
    cycle_learning_rate=1.5e-4,
    optim="adamw_torch",
    optim_args=None,
    per_device_train_batch_size=16,
    logging_steps=10,
)
TEXT_DEMO_DEFAULTS = dict(train_samples=320, test_samples=400, shift_samples=400)
SHIFT_SPLIT = "held-out newsgroups/all"  # a "/" marks a shift split in the report (like "<corruption>/<severity>")


def text_data_arguments(model: str | None, dataset: str | None, train_samples: int, max_length: int) -> DataArguments:
    """The text demo's model and data: the given ones, else all-MiniLM-L6-v2 and the 20 Newsgroups families."""
    return DataArguments(
        model_name_or_path=model or str(pretrained_minilm()),
        dataset=dataset or str(newsgroups()),
        max_train_samples=train_samples,
        max_length=max_length,
    )


def text_evaluation_sets(task: PreparedTask, test_split: str, test_samples: int, shift_samples: int) -> dict:
    """The first `test_samples` test posts, and the first `shift_samples` posts of the held-out newsgroups (the
    dataset's `shift` split, when it has one), prepared like the training data."""
    sets = {"test": task.splits[test_split]}
    if "shift" in task.splits:
        sets[SHIFT_SPLIT] = task.splits["shift"]
    limits = {"test": test_samples, SHIFT_SPLIT: shift_samples}
    return {name: task.prepare(split.select(range(min(limits[name], len(split))))) for name, split in sets.items()}


def sms_spam_ood(task: PreparedTask, samples: int, max_length: int) -> datasets.Dataset:
    """The first `samples` messages of the SMS Spam Collection, a far out-of-distribution set for newsgroup posts,
    tokenized like the training data (labels `-1`: no class of the task)."""
    texts = load_sms_spam()["text"][:samples]
    encoded = task.processing_class(texts, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({**encoded, "labels": [-1] * len(texts)})


def text_notes(data: DataArguments, task: PreparedTask, evaluation: dict) -> list[str]:
    """The report's description of the text demo's data."""
    sizes = {name: len(dataset) for name, dataset in evaluation.items()}
    families = ", ".join(
        f"{family} ({' '.join(trained)} -> {' '.join(held_out)})"
        for family, (trained, held_out) in NEWSGROUP_FAMILIES.items()
    )
    return [
        f"Model `{data.model_name_or_path}`, data `{data.dataset}` ({len(task.train_dataset)} training texts, "
        f"{sizes['test']} test texts, {data.max_length} tokens; shift: {sizes.get(SHIFT_SPLIT, 0)} texts of "
        "held-out sibling newsgroups, same labels).",
        f"Families (trained-on newsgroups -> held-out newsgroups of the shift set): {families}. `shift_*`: the "
        "held-out newsgroups.",
    ]
