"""A StarSSE ensemble in seconds, offline: a tiny BERT 'pre-trained' on the spot, a synthetic 3-class task.

    python examples/quickstart.py --output_dir runs/quickstart
    python examples/quickstart.py --output_dir runs/quickstart --ensemble_method sse --num_members 4
    python examples/quickstart.py --output_dir runs/quickstart --members_to_train 0    # then 1, 2 as parallel jobs

Every StarSSETrainingArguments / TrainingArguments field is a command-line option (`--help`). Swap the tiny model
and data for `AutoModelForSequenceClassification.from_pretrained(...)` and your dataset for real use.
"""

import json
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast, HfArgumentParser

from hf_starsse import StarSSETrainer, StarSSETrainingArguments

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]


def pretrained_checkpoint(path: Path) -> Path:
    """Stand-in for a Hub checkpoint: a tiny BERT backbone saved with save_pretrained."""
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        )
        BertModel(config).save_pretrained(path)
        BertTokenizerFast(vocab={token: i for i, token in enumerate(VOCAB)}).save_pretrained(path)
    return path


def synthetic_task(tokenizer: BertTokenizerFast, n: int, seed: int) -> Dataset:
    """Sentences of random words; the label is the most frequent word id modulo 3."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.randint(5, len(VOCAB), (n, 12), generator=generator)
    texts = [" ".join(VOCAB[i] for i in row) for row in words.tolist()]
    labels = (words % 3).mode(dim=1).values.tolist()
    return Dataset.from_dict({"text": texts, "label": labels}).map(
        lambda batch: tokenizer(batch["text"], padding="max_length", max_length=16), batched=True
    )


def main() -> None:
    parser = HfArgumentParser(StarSSETrainingArguments)
    parser.set_defaults(
        num_members=3, num_train_epochs=2, learning_rate=1e-3, cycle_epochs=1, cycle_learning_rate=2e-3,
        per_device_train_batch_size=16, report_to="none", save_strategy="epoch", logging_steps=10, use_cpu=True,
    )  # fmt: skip
    (args,) = parser.parse_args_into_dataclasses()
    checkpoint = pretrained_checkpoint(Path(args.output_dir).parent / "tiny-bert-pretrained")
    tokenizer = BertTokenizerFast.from_pretrained(checkpoint)
    model = BertForSequenceClassification.from_pretrained(checkpoint, num_labels=3)
    trainer = StarSSETrainer(
        model=model,
        args=args,
        train_dataset=synthetic_task(tokenizer, 256, seed=0),
        eval_dataset=synthetic_task(tokenizer, 128, seed=1),
        processing_class=tokenizer,
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    trainer.train()
    manifest = json.loads((Path(args.output_dir) / "ensemble.json").read_text())
    for entry in manifest["members"]:
        print(f"member {entry['index']}: parent {entry['parent']}, seed {entry['seed']}, {entry['steps']} steps, "
              f"{entry['path']} (sha256 {entry['sha256'][:12]})")  # fmt: skip
    print(f"eval of the last member trained: {trainer.evaluate()}")


if __name__ == "__main__":
    main()
