"""Text generation with causal language models: `AutoModelForCausalLM`, the `text-generation` pipeline. Members'
next-token probabilities are pooled at every position; `generate()` decodes from the pooled distribution with one KV
cache per member. Labels are the input tokens themselves, usually made by the collator (e.g.
`DataCollatorForLanguageModeling(tokenizer, mlm=False)`, padding masked with `-100`); the model shifts them."""

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .base import TaskFamily


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
        "`generate()` decodes from it (greedy, sampling, beam search) with one KV cache per member"
    ),
    metrics=("perplexity", "nll"),
    peft_task_type="CAUSAL_LM",
    keeps_raw_columns=False,
    prepare_data=None,
    check_labels=check_next_token_labels,
    wrong_model="Dataset {source} holds text to generate but {model} is a {model_type!r} model, which does not "
    "generate text. Use a causal language model (AutoModelForCausalLM).",
    label_columns=(),
    class_labels=False,
    head="language_modeling",
)
