"""`evaluate_generative`: the tidy table of `evaluate_ensemble` for causal language models.

Two kinds of data evaluate them:

- options (classification by generation, multiple choice): each member scores every option's completion given the
  prompt (the sum of its tokens' log-probabilities) and normalises over the options; the ensemble's distribution is
  the mean of the members' (pool), whose temperature is fitted on a held-out split (then calibrate). The rows hold
  accuracy, NLL, ECE, Brier score and AURC over the option set, as for classifiers;
- held-out text: the NLL per token and the perplexity of members, ensembles (the mean of the members' next-token
  probabilities) and soups.

Members are run one at a time and keep only the log-probabilities of the options and of the text's tokens, never
full-vocabulary logits beyond one batch.
"""

import inspect
import math
import os

import numpy as np
import torch

from ..run.members import load_members
from ..soups.average import member_model, uniform_soup
from ..soups.predict import make_dataloader, model_inputs
from .metrics import softmax
from .predictions import RunPredictions, run_info
from .run_evaluation import evaluation_rows, model_cost, write_evaluation


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _logits_to_keep(model) -> dict:
    """`logits_to_keep=1` where the model takes it (only the last position's logits are needed)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _pad(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows padded to one width (with 0, masked), and their attention mask."""
    width = max(map(len, rows))
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        ids[index, where], mask[index, where] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


@torch.no_grad()
def _score_batch(model, prompts: list[list[int]], options: list[list[list[int]]]) -> torch.Tensor:
    """`(B, C)` log-probabilities of each row's options given its prompt: the prompts run once (left-padded, positions
    from the mask), their KV cache repeated for the options, which run together (right-padded)."""
    device, count = _device(model), len(options[0])
    if any(len(row) != count for row in options):
        raise ValueError("Every row of an option dataset needs the same number of options.")
    ids, mask = _pad(prompts, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    output = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **_logits_to_keep(model)
    )
    first = output.logits[:, -1].float().log_softmax(-1).repeat_interleave(count, 0)
    option_ids, option_mask = (tensor.to(device) for tensor in _pad([o for row in options for o in row], left=False))
    scores = first.gather(1, option_ids[:, :1]).squeeze(1)
    if option_ids.shape[1] > 1:
        cache = output.cache
        cache.batch_repeat_interleave(count)
        steps = torch.arange(option_ids.shape[1], device=device)
        follow = model(
            input_ids=option_ids,
            attention_mask=torch.cat([mask.repeat_interleave(count, 0), option_mask], 1),
            position_ids=positions[:, -1:].repeat_interleave(count, 0) + 1 + steps,
            cache=cache,
            use_cache=False,
        ).logits[:, :-1]
        token_scores = follow.float().log_softmax(-1).gather(2, option_ids[:, 1:, None]).squeeze(2)
        scores = scores + (token_scores * option_mask[:, 1:]).sum(1)
    return scores.view(len(prompts), count).cpu()


def option_log_likelihoods(model, dataset, batch_size: int = 8) -> np.ndarray:
    """
    The log-probability `(N, C)` that `model` gives each option's completion after its prompt.

    Args:
        model (`PreTrainedModel`): A causal language model (an ensemble too: the product of its pooled next-token
            probabilities).
        dataset: Rows with `prompt_ids` and `option_ids` (as made by `tasks.text_generation.option_dataset`).
        batch_size (`int`, *optional*, defaults to 8): Prompts per forward pass.
    """
    model.eval()
    batches = (dataset[start : start + batch_size] for start in range(0, len(dataset), batch_size))
    return torch.cat([_score_batch(model, b["prompt_ids"], b["option_ids"]) for b in batches]).double().numpy()


@torch.no_grad()
def token_log_likelihoods(model, dataset, data_collator=None, batch_size: int = 8) -> np.ndarray:
    """
    The log-probability `(M,)` that `model` gives each labelled next token of `dataset`: its `labels` (from the
    collator, e.g. `DataCollatorForLanguageModeling(tokenizer, mlm=False)`, or a column; `-100` left out), else its
    `input_ids` where `attention_mask` is 1.

    Args:
        model (`PreTrainedModel`): A causal language model.
        dataset: Tokenized text.
        data_collator (`Callable`, *optional*): Batches rows (default: `default_data_collator`).
        batch_size (`int`, *optional*, defaults to 8): Rows per forward pass.
    """
    model.eval()
    device, positions = _device(model), "position_ids" in inspect.signature(model.forward).parameters
    values = []
    for batch in make_dataloader(model, dataset, data_collator, batch_size):
        inputs, labels = model_inputs(model, batch, device), batch.get("labels", batch["input_ids"]).to(device)
        kept = labels[:, 1:] != -100
        if "attention_mask" in inputs:  # padding on either side: no token scored from or at a padded position
            mask = inputs["attention_mask"]
            kept &= mask[:, 1:].bool() & mask[:, :-1].bool()
            if positions:
                inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        log_probs = model(**inputs).logits[:, :-1].float().log_softmax(-1)
        values.append(log_probs.gather(2, labels[:, 1:].clamp(min=0)[..., None]).squeeze(2)[kept].cpu())
    return torch.cat(values).double().numpy()


def _text_row(token_scores: np.ndarray) -> dict:
    nll = float(-token_scores.mean())
    return {"token_nll": nll, "perplexity": math.exp(nll), "tokens": len(token_scores)}


def _text_rows(predictions: RunPredictions, text: dict) -> list[dict]:
    """Per model and text split: NLL per token, perplexity and token count. `text` maps each split to the members'
    token log-probabilities `(K, M)` and, under `soups`, each soup's `(M,)`."""
    rows = []
    for model, member, size in predictions.models():
        for split, scores in text.items():
            if model == "member":
                values = scores["members"][predictions.indices.index(member)]
            elif model == "ensemble":
                values = torch.logsumexp(torch.from_numpy(scores["members"][:size]), 0).numpy() - math.log(size)
            else:
                values = scores["soups"][model]
            row = {"method": predictions.method, "model": model, "member": member, "size": size, "split": split}
            rows.append(row | _text_row(values) | {"steps": model_cost(predictions, model, member, size)})
    return rows


def predict_generative(
    source,
    option_datasets: dict | None = None,
    text_datasets: dict | None = None,
    *,
    soups: tuple[str, ...] = ("uniform",),
    data_collator=None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
) -> tuple[RunPredictions, dict]:
    """
    Every member's and soup's option probabilities (a `RunPredictions` over the options) and token log-probabilities
    of the text splits (`{split: {"members": (K, M), "soups": {name: (M,)}}}`); arguments as in
    [`evaluate_generative`].
    """
    option_datasets, text_datasets = option_datasets or {}, text_datasets or {}
    if not option_datasets and not text_datasets:
        raise ValueError("Pass option_datasets (prompts and options) and/or text_datasets (held-out text).")
    empty = [split for split, data in {**option_datasets, **text_datasets}.items() if len(data) == 0]
    if empty:
        raise ValueError(f"Evaluation splits {empty} are empty.")
    if set(soups) - {"uniform"}:
        raise ValueError("Causal language models are evaluated with soups=('uniform',) or (); no greedy soup here.")
    member_dirs = load_members(source, allow_pickle)
    predictions = RunPredictions(*run_info(source, len(member_dirs)), labels={}, members={})
    predictions.labels = {split: np.asarray(data["label"]) for split, data in option_datasets.items()}
    predictions.examples = {split: np.arange(len(labels)) for split, labels in predictions.labels.items()}
    text = {split: {"members": [], "soups": {}} for split in text_datasets}

    def run(model, add_options, add_text) -> None:
        for split, data in option_datasets.items():
            add_options(split, softmax(option_log_likelihoods(model, data, batch_size)))
        for split, data in text_datasets.items():
            add_text(split, token_log_likelihoods(model, data, data_collator, batch_size))

    members = {split: [] for split in option_datasets}
    for member in member_dirs:
        run(member_model(member, device), lambda s, p: members[s].append(p), lambda s, v: text[s]["members"].append(v))
    predictions.members = {split: np.stack(probs) for split, probs in members.items()}
    for split in text:
        text[split]["members"] = np.stack(text[split]["members"])
    if "uniform" in soups:
        soup = uniform_soup(member_dirs, device=device, allow_pickle=allow_pickle)
        by_split = {}
        run(soup, by_split.__setitem__, lambda s, v: text[s]["soups"].__setitem__("uniform_soup", v))
        predictions.soups["uniform_soup"] = (len(member_dirs), by_split)
    return predictions, text


def evaluate_generative(
    source,
    option_datasets: dict | None = None,
    text_datasets: dict | None = None,
    *,
    soups: tuple[str, ...] = ("uniform",),
    calibration_split: str | None = None,
    data_collator=None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    output_dir: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> list[dict]:
    """
    Evaluate every member, the ensemble of the first `size` members for `size` in 1..K, and the uniform soup of a run
    of causal language models, on option data and on held-out text.

    Args:
        source (`str`, `os.PathLike` or `list`): A run directory (hashes verified) or a list of member directories
            (full checkpoints or LoRA adapters).
        option_datasets (`dict`, *optional*): Classification by generation, by split: rows with `prompt_ids`,
            `option_ids` and `label` (`tasks.text_generation.option_dataset` makes them from prompts and answers).
        text_datasets (`dict`, *optional*): Held-out text by split, tokenized (`input_ids`, `attention_mask`, and
            `labels` or a collator that makes them).
        soups (`tuple[str]`, *optional*, defaults to `("uniform",)`): `("uniform",)`, or `()` for no soup.
        calibration_split (`str`, *optional*): An option split (held out, never a test split) on which each model's
            temperature over the options is fitted after pooling: adds `temperature`, `nll_calibrated` and
            `ece_calibrated` to the option rows.
        data_collator (`Callable`, *optional*): Batches the text rows.
        batch_size (`int`, *optional*, defaults to 8): Rows per forward pass.
        device (`str` or `torch.device`, *optional*): Where models run (default: CPU).
        output_dir (`str` or `os.PathLike`, *optional*): Where `evaluation.csv` and `evaluation.json` are written
            (default: the run directory, when `source` is one).
        allow_pickle (`bool`, *optional*, defaults to `False`): Accept members with only pickle weights.

    Returns:
        `list[dict]`: Rows as in [`evaluate_ensemble`]: per (model, size, split) of the option splits, accuracy, NLL,
        ECE, Brier score, `aurc` and selective accuracies over the options (diversity and gains for ensembles); per
        text split, `token_nll`, `perplexity` and `tokens`; every row with its optimizer `steps`.

    Example:
    ```python
    from hf_starsse.evaluation.generative import evaluate_generative
    from hf_starsse.tasks.text_generation import PromptFormat, option_dataset

    formatter = PromptFormat(tokenizer, template="{text}\\n\\nTopic:", chat=True)
    rows = evaluate_generative(
        "runs/lm",
        option_datasets={"validation": option_dataset(validation, formatter, "label"),
                         "test": option_dataset(test, formatter, "label")},
        calibration_split="validation",
    )
    ```
    """
    if calibration_split is not None and calibration_split not in (option_datasets or {}):
        raise ValueError(f"calibration_split={calibration_split!r} is not one of option_datasets.")
    predictions, text = predict_generative(
        source,
        option_datasets,
        text_datasets,
        soups=soups,
        data_collator=data_collator,
        batch_size=batch_size,
        device=device,
        allow_pickle=allow_pickle,
    )
    rows = (evaluation_rows(predictions, calibration_split) if predictions.labels else []) + _text_rows(
        predictions, text
    )
    if output_dir is None and isinstance(source, (str, os.PathLike)):
        output_dir = source
    if output_dir is not None:
        write_evaluation(rows, output_dir)
    return rows
