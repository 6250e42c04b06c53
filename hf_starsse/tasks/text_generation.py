"""Text generation with causal language models: `AutoModelForCausalLM`, the `text-generation` pipeline. Members'
next-token probabilities are pooled at every position; `generate()` decodes from the pooled distribution with one KV
cache per member. Labels are the input tokens themselves, usually made by the collator (e.g.
`DataCollatorForLanguageModeling(tokenizer, mlm=False)`, padding masked with `-100`); the model shifts them."""

import json
import re
import string
from dataclasses import dataclass
from functools import partial

import datasets
import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .base import TaskFamily

# The data options that make a run's prompts (see `PromptFormat`), recorded with the run (`save_card_info(prompt=)`).
PROMPT_OPTIONS = ("completion_column", "prompt_template", "chat_template", "max_length")


def check_next_token_labels(dataset, column: str, model) -> None:
    """`TaskFamily.check_labels` of causal language models: a list of token ids of the model's vocabulary (or `-100`,
    ignored) per row, as long as the row's input."""
    rows, vocab_size = dataset[column], model.config.get_text_config().vocab_size
    if rows and not isinstance(rows[0], list):
        raise ValueError(
            f"train_dataset column {column!r} holds one label per row ({rows[0]!r}, ...), but a causal language model "
            "learns the next token at every position: give a token-id list per row (e.g. a copy of input_ids), or "
            "drop the column and let DataCollatorForLanguageModeling(tokenizer, mlm=False) make the labels."
        )
    inputs = dataset[model.main_input_name]
    ragged = next((index for index, (row, ids) in enumerate(zip(rows, inputs)) if len(row) != len(ids)), None)
    if ragged is not None:
        raise ValueError(
            f"train_dataset row {ragged} has {len(rows[ragged])} labels for {len(inputs[ragged])} input tokens: a "
            "causal language model's labels are its input tokens (the model shifts them), -100 where none applies."
        )
    outside = sorted({v for row in rows for v in row if v != -100 and not 0 <= v < vocab_size})
    if outside:
        raise ValueError(
            f"train_dataset column {column!r} holds token ids {outside[:5]} outside the model's vocabulary of "
            f"{vocab_size} (or -100 for tokens without a label): tokenize with the model's own tokenizer."
        )


@dataclass(frozen=True)
class PromptFormat:
    """
    How dataset rows become a causal LM's prompts and completions: the same token ids in training and in option
    scoring (`hf_starsse.evaluation.generative`).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        template (`str`, *optional*): The prompt, formatted from each row's columns (`str.format`), e.g.
            `"{text}\\n\\nTopic:"`; default: the row's `prompt` column.
        chat (`bool`, *optional*, defaults to `False`): Wrap prompt and completion in the tokenizer's chat template,
            as one user turn and the assistant's answer.
        max_length (`int`, *optional*): Prompt and completion together are cut to this many tokens by dropping the
            start of the row's text (a chat template's header and the prompt's end, next to the answer, are kept).
    """

    tokenizer: object
    template: str | None = None
    chat: bool = False
    max_length: int | None = None

    def text(self, row: dict) -> str:
        """The prompt of `row`, before any chat template."""
        try:
            return self.template.format(**row) if self.template else row["prompt"]
        except KeyError as err:
            if self.template:
                raise ValueError(
                    f"The prompt template names column {err.args[0]!r}, which the data lacks (columns: {list(row)})."
                ) from None
            raise ValueError(
                f"No 'prompt' column in {list(row)}: set a prompt template, e.g. --prompt_template '{{text}}'."
            ) from None

    def _split(self, text: str, answer: str) -> tuple[str, str]:
        """The prompt and the completion, as text."""
        if not self.chat:
            return text, answer + (self.tokenizer.eos_token or "")
        turn = [{"role": "user", "content": text}]
        prompt = self.tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template([*turn, {"role": "assistant", "content": answer}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("The tokenizer's chat template writes the prompt differently once an answer follows.")
        return prompt, full[len(prompt) :]

    def _prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer(self._split(text, "")[0], add_special_tokens=not self.chat).input_ids  # chat: in it

    def encode(self, row: dict, answers: list[str]) -> tuple[list[int], list[list[int]]]:
        """
        The token ids of `row`'s prompt and of each of its possible `answers` (one in training, every option in
        option scoring), the prompt cut so that it fits `max_length` with the longest answer (see `_cut`).
        """
        text = self.text(row)
        prompt_ids = self._prompt_ids(text)
        completions = [self.tokenizer(self._split(text, a)[1], add_special_tokens=False).input_ids for a in answers]
        if self.max_length is not None:
            room = self.max_length - max(map(len, completions))
            if room <= 0:
                raise ValueError(
                    f"max_length={self.max_length} leaves no room for a prompt before an answer of "
                    f"{max(map(len, completions))} tokens: raise --max_length."
                )
            if len(prompt_ids) > room:
                prompt_ids = self._cut(row, prompt_ids, room)
        return prompt_ids, completions

    def _cut(self, row: dict, prompt_ids: list[int], room: int) -> list[int]:
        """`prompt_ids` cut to `room` tokens: its first tokens that a row of empty columns also starts with (a chat
        template's header, a beginning-of-sequence token) stay, the tokens right after them go (the row's text)."""
        empty = self._prompt_ids(self.text(dict.fromkeys(row, "")))
        head = next((i for i, (a, b) in enumerate(zip(empty, prompt_ids)) if a != b), min(len(empty), len(prompt_ids)))
        head = min(head, room)
        return prompt_ids[:head] + prompt_ids[len(prompt_ids) - (room - head) :]


def pad_completions(features: list[dict], pad_token_id: int) -> dict:
    """Batch rows of `input_ids` and `labels` (`-100` over the prompt), padded on the right: `attention_mask` 0 and
    labels `-100` over the padding."""
    width = max(len(row["input_ids"]) for row in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for row in features:
        padding = width - len(row["input_ids"])
        batch["input_ids"].append(list(row["input_ids"]) + [pad_token_id] * padding)
        batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * padding)
        batch["labels"].append(list(row["labels"]) + [-100] * padding)
    return {name: torch.tensor(values) for name, values in batch.items()}


def _answer_names(train, column: str):
    """A function from a batch of `column` values to answer texts (a `ClassLabel`'s names, else the values)."""
    feature = train.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return lambda values: [feature.int2str(value) for value in values]
    return lambda values: [str(value) for value in values]


def prompt_format(data, tokenizer) -> PromptFormat:
    """The `PromptFormat` of the CLI's options `data` (`--prompt_template`, `--chat_template`, `--max_length`)."""
    return PromptFormat(tokenizer, data.prompt_template, data.chat_template, data.max_length)


def completion_column(data, train) -> str | None:
    """The column of the answers: `--completion_column`, else `completion` when the data has it (`None`: plain
    language modelling of the text column)."""
    column = data.completion_column or ("completion" if "completion" in train.column_names else None)
    if column is not None and column not in train.column_names:
        raise ValueError(f"No completion column {column!r} in {train.column_names}; set --completion_column.")
    if column is None and data.prompt_template is not None:
        raise ValueError("--prompt_template makes prompts for answers: set --completion_column (the answer column).")
    return column


def prepare_language_modeling(data, train, to_ids) -> tuple:
    """
    Prepare text for a causal LM (`to_ids` is not used). With a completion column (`--completion_column`, default
    `completion`; a `ClassLabel` gives its names): prompt (`--prompt_template`, default the `prompt` column, with
    `--chat_template` in the tokenizer's chat template) then completion, the loss on the completion only. Else the
    text column (`--text_column`, default `text`), truncated to `--max_length`, every token learned, labels made by
    `DataCollatorForLanguageModeling`.
    """
    tokenizer = AutoTokenizer.from_pretrained(data.model_name_or_path)
    answers = completion_column(data, train)
    if answers is None:
        column = data.text_column or "text"
        if column not in train.column_names:
            raise ValueError(f"No text column {column!r} in {train.column_names}; set --text_column.")

        def tokenize(batch):
            return tokenizer(batch[column], truncation=True, max_length=data.max_length)

        def prepare(dataset):
            return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)

        return prepare, tokenizer, DataCollatorForLanguageModeling(tokenizer, mlm=False)
    formatter, names = prompt_format(data, tokenizer), _answer_names(train, answers)

    def encode(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        encoded = {"input_ids": [], "labels": []}
        for row, answer in zip(rows, names(batch[answers])):
            prompt_ids, (completion_ids,) = formatter.encode(row, [answer])
            encoded["input_ids"].append(prompt_ids + completion_ids)
            encoded["labels"].append([-100] * len(prompt_ids) + completion_ids)
        return encoded

    def prepare(dataset):
        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)

    pad = next((token for token in (tokenizer.pad_token_id, tokenizer.eos_token_id) if token is not None), 0)
    return prepare, tokenizer, partial(pad_completions, pad_token_id=pad)  # padding is masked: any token will do


TEXT_GENERATION = TaskFamily(
    name="text-generation",
    auto_class="AutoModelForCausalLM",
    model_mapping=MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    ensemble_class="EnsembleForCausalLM",
    adapter_ensemble_class="AdapterEnsembleForCausalLM",
    ensemble_pipeline=None,  # the stock TextGenerationPipeline generates with the ensemble as with any causal LM
    raw_input="text",
    combination=(
        "the mean of the members' next-token probabilities at every position; the model returns it as logits "
        "`log(mean_k softmax(z_k))` of shape (batch, tokens, vocabulary), with the uncertainty of each token, and "
        "`generate()` decodes from it (greedy, sampling, beam search) with the members' KV caches (LoRA adapters "
        "decode as one batch over the base)"
    ),
    # answer options (a ClassLabel completion): accuracy, NLL, ECE, AURC over them; held-out text: token NLL
    metrics=("accuracy", "nll", "ece", "aurc", "perplexity", "token_nll"),
    peft_task_type="CAUSAL_LM",
    keeps_raw_columns=False,
    prepare_data=prepare_language_modeling,
    check_labels=check_next_token_labels,
    wrong_model="Dataset {source} holds text to generate but {model} is a {model_type!r} model, which does not "
    "generate text. Use a causal language model (AutoModelForCausalLM).",
    label_columns=(),
    class_labels=False,
    head="language_modeling",
    pipeline_usage='generator = pipeline("{task}", model="{repo_id}")\n'
    'print(generator("Once upon a time", max_new_tokens=32)[0]["generated_text"])',
)


def prompted_usage(repo_id: str, prompt: dict) -> str:
    """The lines of a card that run the `text-generation` pipeline on a prompt made as in training (`prompt`: the
    run's `PROMPT_OPTIONS`): the template over placeholder columns, in a chat turn where training used one."""
    template = prompt.get("prompt_template")
    if template:
        fields = (re.match(r"[^.[]*", name).group() for _, name, _, _ in string.Formatter().parse(template) if name)
        values = ", ".join(f'{json.dumps(column)}: "..."' for column in dict.fromkeys(fields))  # the row's columns
        made = f"prompt = {template!r}.format_map({{{values}}})  # made as in training"
    else:
        made = 'prompt = "..."  # as the training rows\' prompt column'
    lines = [f'generator = pipeline("text-generation", model="{repo_id}")', made]
    if prompt.get("chat_template"):
        lines.append('messages = [{"role": "user", "content": prompt}]')
        lines.append('print(generator(messages, max_new_tokens=16)[0]["generated_text"][-1]["content"])')
    else:
        lines.append('print(generator(prompt, max_new_tokens=16, return_full_text=False)[0]["generated_text"])')
    return "\n".join(lines)


def option_dataset(dataset, formatter: PromptFormat, column: str, options: list[str] | None = None):
    """
    `dataset` as classification by generation (for `hf_starsse.evaluation.generative`): per row the token ids of its
    prompt (`prompt_ids`), of each option's completion (`option_ids`) and the index of the row's answer among the
    options (`label`).

    Args:
        dataset (`datasets.Dataset`): Rows with the prompt's columns and the answer column.
        formatter (`PromptFormat`): How rows become prompts and completions, as in training.
        column (`str`): The answer column (a `ClassLabel`, or the answers' text).
        options (`list[str]`, *optional*): The answers scored (default: the `ClassLabel`'s names).
    """
    feature = dataset.features[column]
    if options is None:
        if not isinstance(feature, datasets.ClassLabel):
            raise ValueError(f"Column {column!r} is no ClassLabel: pass the options to score.")
        options = list(feature.names)
    names = _answer_names(dataset, column)
    labels = names(dataset[column])
    unknown = sorted(set(labels) - set(options))
    if unknown:
        raise ValueError(f"Answers {unknown[:5]} of column {column!r} are not among the options {options}.")

    def encode(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        encoded = [formatter.encode(row, options) for row in rows]
        if any(not ids for _, completions in encoded for ids in completions):
            raise ValueError(f"An option of {options} has no tokens: every option must be scored by some token.")
        return {"prompt_ids": [prompt for prompt, _ in encoded], "option_ids": [ids for _, ids in encoded]}

    scored = dataset.map(encode, batched=True, remove_columns=dataset.column_names)
    return scored.add_column("label", [options.index(answer) for answer in labels])


def evaluation_data(data, train, splits: dict, prepare, tokenizer, options: list[str] | None = None) -> tuple:
    """
    What `hf_starsse.evaluation.generative.evaluate_generative` scores of raw splits (the CLI's `evaluate`): with a
    completion column that is a `ClassLabel`, or with `options`, option datasets (`option_dataset`); else the splits
    as prepared for training: the completions' tokens, or every token of the text column.

    Args:
        data (`DataArguments`): The CLI's options (completion column, prompt template, chat template, max length).
        train (`datasets.Dataset`): The training split (its columns and features).
        splits (`dict`): The raw splits to evaluate, by name.
        prepare (`Callable`): Prepares a raw split for training (from `prepare_language_modeling`).
        tokenizer (`PreTrainedTokenizerBase`): The members' tokenizer.
        options (`list[str]`, *optional*): The answers to score (default: the completion column's `ClassLabel`
            names).

    Returns:
        `tuple[dict, dict]`: The option datasets and the text datasets, by split (one of the two empty).
    """
    column = completion_column(data, train)
    if column is not None and (options or isinstance(train.features[column], datasets.ClassLabel)):
        formatter = prompt_format(data, tokenizer)
        return {name: option_dataset(split, formatter, column, options) for name, split in splits.items()}, {}
    if options:
        raise ValueError("Answer options are scored after a prompt: set --completion_column (the answer column).")
    return {}, {name: prepare(split) for name, split in splits.items()}
