"""`hf-starsse demo --task generation`: LoRA StarSSE members of SmolLM2-135M-Instruct asked, in its chat template,
which family a 20 Newsgroups post is about (the text demo's task, `text_assets`), scored by the probabilities of the
four answers (`evaluation.generative`), the held-out sibling newsgroups as the shift; the report adds the perplexity
of the posts and the ensemble's generated answers to a few posts."""

import dataclasses
import time
from pathlib import Path

import datasets
import torch
from transformers import DataCollatorForLanguageModeling

from ..adapters.peft import require_peft
from ..cards.model_card import save_card_info
from ..evaluation.generative import evaluate_generative
from ..tasks.text_generation import TEXT_GENERATION, option_dataset, prompt_format
from ..training.arguments import StarSSETrainingArguments
from ..training.data import DataArguments, prepare_task
from ..training.trainer import StarSSETrainer
from .lm_assets import pretrained_smollm2
from .report import markdown_table, versus_member0, write_report
from .text import SHIFT_SPLIT
from .text_assets import NEWSGROUP_FAMILIES, newsgroups
from .uncertainty_report import CALIBRATION_SPLIT

QUESTION = "Which topic is this post about: computers, recreation, science or politics? Answer with one word."
PROMPT_TEMPLATE = "{text}\n\n" + QUESTION
POST_WORDS = 40  # each post's first words: prompts of about 100 tokens in the chat template
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
# The generative demo's recipe (sized to finish in about 6 minutes on 2 CPU cores, see the README): LoRA members
# (r = 8 on the attention's query and value projections), member 0 one epoch, 3 cycles of 0.4 epochs branching from it.
GENERATION_TRAINING_DEFAULTS = dict(
    output_dir="runs/demo-generation",
    num_members=4,
    num_train_epochs=1,
    learning_rate=5e-4,
    cycle_epochs=0.4,
    cycle_learning_rate=5e-4,
    optim="adamw_torch",
    optim_args=None,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    logging_steps=10,
)
GENERATION_DEMO_DEFAULTS = dict(
    train_samples=320, test_samples=80, shift_samples=80, calibration_samples=80, max_length=128
)
SHOWN_POSTS = 3  # posts of each evaluated split whose generated answer the report shows


def _phase(number: int, text: str) -> None:
    print(f"[demo {number}/5] {text}", flush=True)


def shortened_posts(path: Path) -> Path:
    """The four-family 20 Newsgroups task with each post cut to its first `POST_WORDS` words, saved to `path`."""
    splits = datasets.load_from_disk(str(newsgroups()))
    splits.map(lambda row: {"text": " ".join(row["text"].split()[:POST_WORDS])}).save_to_disk(str(path))
    return path


def generation_data_arguments(model: str | None, data_dir: Path, max_length: int, train_samples: int) -> DataArguments:
    """The generative demo's model and data: SmolLM2-135M-Instruct (or `model`) and the posts cut to `POST_WORDS`
    words (saved to `data_dir`), asked `QUESTION` in the chat template, the family's name as the answer."""
    return DataArguments(
        model_name_or_path=model or str(pretrained_smollm2()),
        dataset=str(shortened_posts(data_dir)),
        completion_column="label",
        prompt_template=PROMPT_TEMPLATE,
        chat_template=True,
        max_length=max_length,
        max_train_samples=train_samples,
    )


def evaluation_sets(task, data: DataArguments, demo) -> tuple[dict, dict]:
    """The option sets (test posts, held-out newsgroups as `SHIFT_SPLIT`, validation posts to calibrate on) and the
    posts' text for perplexity (test and shift), the first N of each split."""
    splits = task.splits
    sources = {
        "test": (splits["test"], demo.test_samples),
        SHIFT_SPLIT: (splits["shift"], demo.shift_samples),
        CALIBRATION_SPLIT: (splits["validation"], demo.calibration_samples),
    }
    chosen = {name: split.select(range(min(limit, len(split)))) for name, (split, limit) in sources.items()}
    formatter = prompt_format(data, task.processing_class)
    options = {name: option_dataset(split, formatter, "label") for name, split in chosen.items()}

    def tokenize(batch):
        return task.processing_class(batch["text"], truncation=True, max_length=data.max_length)

    text = {
        f"{name} text": chosen[name].map(tokenize, batched=True, remove_columns=chosen[name].column_names)
        for name in ("test", SHIFT_SPLIT)
    }
    return options, text


def generated_answers(ensemble_dir: Path, task, data: DataArguments, demo) -> list[str]:
    """A Markdown table of the ensemble's greedy answers to the first `SHOWN_POSTS` test and shift posts."""
    model = TEXT_GENERATION.auto_model_class().from_pretrained(ensemble_dir).eval()
    tokenizer, formatter = task.processing_class, prompt_format(data, task.processing_class)
    lines = ["", "**Generated answers** (the ensemble, greedy):", "", "| split | post | family | answer |",
             "|---|---|---|---|"]  # fmt: skip
    for name, split in (("test", "test"), (SHIFT_SPLIT, "shift")):
        for row in task.splits[split].select(range(SHOWN_POSTS)):
            prompt_ids, _ = formatter.encode(row, [""])
            with torch.no_grad():
                output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=6, do_sample=False)
            answer = tokenizer.decode(output[0, len(prompt_ids) :], skip_special_tokens=True).strip()
            post = " ".join(row["text"].split()[:12]).replace("|", "/")
            family = task.splits[split].features["label"].int2str(row["label"])
            lines.append(f"| {name} | {post} ... | {family} | {answer} |")
    return lines


def perplexity_section(rows: list[dict]) -> list[str]:
    """The perplexity of the posts' text per model (members, ensemble of all members, soups)."""
    size = max(row["size"] for row in rows)
    table: dict[str, dict] = {}
    for row in rows:
        if row["model"] == "ensemble" and row["size"] != size:
            continue
        label = f"member {row['member']}" if row["model"] == "member" else f"{row['model']} ({row['size']})"
        table.setdefault(label, {"model": label})[row["split"]] = row["perplexity"]
    splits = list(dict.fromkeys(row["split"] for row in rows))
    return ["", "**Perplexity of the posts' text** (lower is better):", "",
            *markdown_table(list(table.values()), ["model", *splits])]  # fmt: skip


def notes(data: DataArguments, task, options: dict) -> list[str]:
    families = ", ".join(
        f"{family} ({' '.join(trained)} -> {' '.join(held_out)})"
        for family, (trained, held_out) in NEWSGROUP_FAMILIES.items()
    )
    sizes = ", ".join(f"{len(split)} {name}" for name, split in options.items())
    return [
        f"Model SmolLM2-135M-Instruct (Q4_1 weights dequantised, slightly below the original checkpoint), LoRA "
        f"members (r={LORA['r']} on {' and '.join(LORA['target_modules'])}); {len(task.train_dataset)} training "
        f'posts, each cut to its first {POST_WORDS} words, asked in the chat template: "{QUESTION}"; at most '
        f"{data.max_length} tokens.",
        f"Scored by the probability of each family's answer (normalised over the four), prompts: {sizes}. "
        f"Families (trained-on newsgroups -> held-out newsgroups of the shift set): {families}.",
        f"Temperatures fitted on the {CALIBRATION_SPLIT} prompts (validation posts).",
    ]


def run_generation_demo(demo, args: StarSSETrainingArguments) -> dict[str, Path]:
    """
    Train LoRA StarSSE (or SSE / Local DE) members of SmolLM2 on the newsgroup-family question, evaluate members,
    ensembles and the uniform soup by the answers' probabilities and the posts' perplexity, in distribution and on
    held-out newsgroups, and save the adapter ensemble, the soup and a report under `args.output_dir`.

    Returns:
        `dict`: The paths of `run`, `ensemble`, `soup` and `report`.
    """
    start, peft = time.perf_counter(), require_peft()
    root = Path(args.output_dir)
    paths = {name: root / name for name in ("run", "ensemble", "soup", "report")}
    _phase(1, "Preparing SmolLM2-135M-Instruct and the newsgroup posts (converted and cached on first use)")
    data = generation_data_arguments(demo.model, root / "data", demo.max_length, demo.train_samples)
    task = prepare_task(data, splits=("train", "validation", "test", "shift"))
    run_args = task.configure(dataclasses.replace(args, output_dir=str(paths["run"])))
    model = peft.get_peft_model(task.model_init(), peft.LoraConfig(**LORA))
    trainer = StarSSETrainer(model=model, args=run_args, **{**task.trainer_kwargs(), "model_init": None})
    _phase(2, f"Training {args.num_members} LoRA members ({args.ensemble_method}) into {paths['run']}")
    trainer.train()
    if trainer.is_world_process_zero():
        save_card_info(paths["run"], base_model="HuggingFaceTB/SmolLM2-135M-Instruct" if demo.model is None else None,
                       dataset_name="20 Newsgroups (four top-level families, as a question)",
                       prompt=data.prompt_options())  # fmt: skip
    _phase(3, "Scoring the answers and the posts' perplexity: members, ensembles, uniform soup")
    options, text = evaluation_sets(task, data, demo)
    collator = DataCollatorForLanguageModeling(task.processing_class, mlm=False)
    rows = evaluate_generative(
        paths["run"],
        options,
        text,
        calibration_split=CALIBRATION_SPLIT,
        data_collator=collator,
        batch_size=args.per_device_eval_batch_size,
    )  # also written to the run directory
    option_rows = [row for row in rows if "perplexity" not in row]
    perplexity_rows = [row for row in rows if "perplexity" in row]
    _phase(4, "Saving the adapter ensemble and the uniform soup with their model cards; generating answers")
    trainer.save_ensemble(str(paths["ensemble"]), overwrite=True)
    trainer.save_soup(str(paths["soup"]), overwrite=True)
    answers = generated_answers(paths["ensemble"], task, data, demo)
    _phase(5, "Writing the report")
    summary = write_report(
        option_rows, paths["report"], notes(data, task, options), [*perplexity_section(perplexity_rows), *answers]
    )
    print("\n".join(markdown_table(summary, ["model", "accuracy", "nll", "ece", "shift_accuracy", "shift_nll"])))
    print("\n".join(versus_member0(summary)[-1:]))
    print("\n".join(answers[2:]))
    for name, path in paths.items():
        print(f"{name:>8}: {path}")
    print(f"Done in {time.perf_counter() - start:.0f} s.")
    return paths
