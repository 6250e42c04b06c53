"""Generative members (issue 28, items 2 and 3): StarSSE, SSE and Local DE train causal language models, full and
LoRA, with the usual collators; their ensembles (`EnsembleForCausalLM`, `AdapterEnsembleForCausalLM`) pool the
members' next-token probabilities and generate through transformers' GenerationMixin with one KV cache per member.
Tiny GPT-2 and Llama models built from config, a word-level tokenizer, token-id rows."""

import json
from contextlib import contextmanager

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    pipeline,
)

from hf_starsse import (
    AdapterEnsembleForCausalLM,
    EnsembleForCausalLM,
    StarSSETrainer,
    build_ensemble,
    calibrate_ensemble,
    greedy_soup,
    load_members,
    uniform_soup,
)
from hf_starsse.ensemble import MemberBatchCache
from hf_starsse.soups.predict import output_rows, predicts_next_token
from hf_starsse.tasks.checks import collator_makes_labels

from conftest import make_args

WORDS = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(96)]
N, PROMPT = 24, torch.tensor([[5, 17, 42, 8], [60, 3, 3, 91]])


def word_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `WORDS` (`pad=False`: without a padding token, as GPT-2's)."""
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>" if pad else None
    )


def pretrained_lm(architecture: str, path) -> torch.nn.Module:
    """A tiny causal LM of `architecture` ("gpt2" or "llama"), saved to `path` and loaded back as a pre-trained
    checkpoint. No end-of-sequence token: generation runs to `max_new_tokens` unless a test stops it."""
    torch.manual_seed(0)
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=len(WORDS), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                            bos_token_id=None, eos_token_id=None, pad_token_id=0)  # fmt: skip
        model_class = GPT2LMHeadModel
    else:
        config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=None,
                             pad_token_id=0)  # fmt: skip
        model_class = LlamaForCausalLM
    model_class(config).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return model_class.from_pretrained(path)


def token_rows(labels: bool = False) -> Dataset:
    """`N` rows of 4 to 8 token ids (`labels`: packed rows of 6 with a copy as labels, the first one ignored)."""
    generator = torch.Generator().manual_seed(0)
    if labels:
        ids = torch.randint(3, len(WORDS), (N, 6), generator=generator).tolist()
        return Dataset.from_dict({"input_ids": ids, "labels": [[-100] + row[1:] for row in ids]})
    lengths = torch.randint(4, 9, (N,), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": [torch.randint(3, len(WORDS), (n,), generator=generator).tolist()
                                            for n in lengths]})  # fmt: skip


def train(model, run, data=None, tokenizer=None, **kwargs):
    tokenizer = tokenizer or word_tokenizer()
    trainer = StarSSETrainer(
        model=model, args=make_args(run, **{"cycle_steps": 2, **kwargs}), train_dataset=token_rows() if data is None
        else data, data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer,
    )  # fmt: skip
    return trainer.train()


def parents_and_steps(run) -> list[tuple]:
    return [(m["index"], m["parent"], m["steps"]) for m in json.loads((run / "ensemble.json").read_text())["members"]]


def lora(model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
    return peft.get_peft_model(model, config)


@pytest.fixture(scope="module")
def full_ensemble(tmp_path_factory) -> tuple:
    """A K=3 StarSSE run of full GPT-2 members and its saved ensemble: (ensemble, its directory, the members)."""
    root = tmp_path_factory.mktemp("gpt2")
    train(pretrained_lm("gpt2", root / "base"), root / "run")
    assert parents_and_steps(root / "run") == [(0, None, 3), (1, 0, 2), (2, 0, 2)]
    ensemble = build_ensemble(root / "run", root / "ensemble")
    members = [GPT2LMHeadModel.from_pretrained(member).eval() for member in load_members(root / "run")]
    return ensemble, root / "ensemble", members


@pytest.fixture(scope="module")
def adapter_ensemble(tmp_path_factory) -> tuple:
    """A K=3 StarSSE run of LoRA members of a Llama and its adapter ensemble: (ensemble, its directory, members)."""
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("llama_lora")
    train(lora(pretrained_lm("llama", root / "base")), root / "run")
    assert parents_and_steps(root / "run") == [(0, None, 3), (1, 0, 2), (2, 0, 2)]
    ensemble = build_ensemble(root / "run", root / "ensemble")
    members = [
        peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(root / "base"), str(member)).eval()
        for member in load_members(root / "run")
    ]
    return ensemble, root / "ensemble", members


@pytest.fixture(params=["full", "adapters"])
def ensemble_and_members(request) -> tuple:
    return request.getfixturevalue({"full": "full_ensemble", "adapters": "adapter_ensemble"}[request.param])


# ----- training ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sse", "local_de"])
def test_sse_and_local_de_train_causal_lms(tmp_path, method):
    train(pretrained_lm("llama", tmp_path / "base"), tmp_path / "run", ensemble_method=method)
    expected = {"sse": [(0, None, 3), (1, 0, 2), (2, 1, 2)], "local_de": [(0, None, 3), (1, None, 3), (2, None, 3)]}
    assert parents_and_steps(tmp_path / "run") == expected[method]


def test_lora_members_as_job_arrays(tmp_path):
    """Separate jobs with `members_to_train` share one run directory and train what one run trains."""
    for members in ([0], [2], [1]):
        train(lora(pretrained_lm("llama", tmp_path / "base")), tmp_path / "run", members_to_train=members)
    train(lora(pretrained_lm("llama", tmp_path / "base")), tmp_path / "reference")
    assert parents_and_steps(tmp_path / "run") == parents_and_steps(tmp_path / "reference")
    for jobs, reference in zip(load_members(tmp_path / "run"), load_members(tmp_path / "reference")):
        jobs, reference = (load_file(str(path / "adapter_model.safetensors")) for path in (jobs, reference))
        assert jobs.keys() == reference.keys() and all(torch.equal(jobs[key], reference[key]) for key in jobs)


def test_labels_column_of_packed_rows_trains(tmp_path):
    """Token-id labels per row (e.g. packed sequences), with the default collator."""
    trainer = StarSSETrainer(
        model=pretrained_lm("gpt2", tmp_path / "base"), args=make_args(tmp_path / "run", cycle_steps=2),
        train_dataset=token_rows(labels=True),
    )  # fmt: skip
    assert trainer.train().metrics["train_members"] == 3


@pytest.mark.parametrize(
    "labels, error",
    [
        (lambda ids: ids[:5] + [99], r"token ids \[99\] outside the model's vocabulary of 99"),
        (lambda ids: ids[:-1], r"row 0 has 5 labels for 6 input tokens"),
        (lambda ids: ids[0], r"one label per row .* learns the next token at every position"),
    ],
)
def test_labels_a_causal_lm_cannot_learn_are_refused(tmp_path, labels, error):
    data = token_rows(labels=True).map(lambda row: {"labels": labels(row["input_ids"])})
    with pytest.raises(ValueError, match=error):
        train(pretrained_lm("gpt2", tmp_path / "base"), tmp_path / "run", data=data)
    assert not (tmp_path / "run" / "members").exists()


def test_tokenizer_without_pad_token_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"^data_collator cannot batch .*tokenizer.pad_token = tokenizer.eos_token"):
        train(pretrained_lm("gpt2", tmp_path / "base"), tmp_path / "run", tokenizer=word_tokenizer(pad=False))


# ----- ensembles that generate -------------------------------------------------------------------------------------


@torch.no_grad()
def reference_greedy(members: list, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding from the members' mean next-token probabilities, the whole prefix re-run at every step (left
    padding: positions counted from each row's first token, as `generate()` counts them)."""
    for _ in range(steps):
        inputs = dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
        outputs = [member(**inputs).logits[:, -1] for member in members]
        ids = torch.cat([ids, torch.stack(outputs).softmax(-1).mean(0).argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("padded", [False, True])
def test_greedy_generation_matches_the_members_mean_without_cache(ensemble_and_members, padded):
    """The ensemble runs the prompt, then one new token per step (the members' caches hold the rest); `padded`: the
    second prompt is left-padded."""
    ensemble, _, members = ensemble_and_members
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]) if padded else torch.ones_like(PROMPT)
    prompt = PROMPT * mask
    lengths = []
    handle = ensemble.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        generated = ensemble.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False)
    finally:
        handle.remove()
    assert lengths == [PROMPT.shape[1]] + [1] * 7 and generated.shape == (2, PROMPT.shape[1] + 8)
    assert generated.tolist() == reference_greedy(members, prompt, mask, 8).tolist()


def test_forward_pools_next_token_probabilities_with_uncertainty(ensemble_and_members):
    ensemble, _, members = ensemble_and_members
    ids = torch.tensor([[5, 17, 42, 8, 9, 30]])
    with torch.no_grad():
        output = ensemble(input_ids=ids, labels=ids)
        probs = torch.stack([member(input_ids=ids).logits.softmax(-1) for member in members]).mean(0)
    torch.testing.assert_close(output.logits, probs.log(), rtol=1e-5, atol=1e-6)
    expected_loss = -probs.log()[0, :-1].gather(-1, ids[0, 1:, None]).mean()
    torch.testing.assert_close(output.loss, expected_loss)
    assert output.member_logits.shape == (3, 1, 6, len(WORDS)) and output.cache is None
    for key in ("predictive_entropy", "expected_entropy", "mutual_information", "disagreement"):
        assert output[key].shape == (1, 6) and (output[key] >= 0).all(), key
    assert (output.mutual_information > 0).any()


def test_generate_returns_the_ensembles_scores_and_token_uncertainty(full_ensemble):
    ensemble = full_ensemble[0]
    output = ensemble.generate(PROMPT, max_new_tokens=3, output_scores=True, return_dict_in_generate=True)
    assert len(output.scores) == len(output.mutual_information) == len(output.predictive_entropy) == 3
    with torch.no_grad():
        full = ensemble(input_ids=output.sequences)
    positions = range(PROMPT.shape[1] - 1, PROMPT.shape[1] + 2)  # the positions that predicted each new token
    for step, position in enumerate(positions):
        torch.testing.assert_close(output.scores[step], full.logits[:, position], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(output.mutual_information[step], full.mutual_information[:, position])
        assert output.predictive_entropy[step].shape == (2,) and (output.mutual_information[step] >= 0).all()


def test_sampling_beam_search_and_stopping(ensemble_and_members):
    ensemble = ensemble_and_members[0]
    samples = []
    for _ in range(2):
        torch.manual_seed(0)
        samples.append(ensemble.generate(PROMPT, do_sample=True, top_k=20, max_new_tokens=5))
    assert samples[0].shape == (2, 9) and torch.equal(*samples)
    beam_search = dict(num_beams=2, num_return_sequences=2, max_new_tokens=5, do_sample=False)
    beams = ensemble.generate(PROMPT, **beam_search)
    assert beams.shape == (4, 9) and torch.equal(beams[::2, :4], PROMPT) and torch.equal(beams[1::2, :4], PROMPT)
    assert torch.equal(beams, ensemble.generate(PROMPT, use_cache=False, **beam_search))  # caches follow the beams
    greedy = ensemble.generate(PROMPT[:1], max_new_tokens=6, do_sample=False)
    new = greedy[0, 4:].tolist()
    stopped = ensemble.generate(PROMPT[:1], max_new_tokens=6, do_sample=False, eos_token_id=new[2])
    assert stopped[0].tolist() == greedy[0, : 4 + new.index(new[2]) + 1].tolist()


@contextmanager
def input_shapes(module):
    """The shapes of the `input_ids` of every call of `module` inside the block."""
    shapes = []
    handle = module.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        yield shapes
    finally:
        handle.remove()


def test_lora_members_decode_as_one_batch(adapter_ensemble):
    """With a cache, the K LoRA adapters run as one mixed-adapter batch (one forward of K x batch rows per step, one
    cache); tokens, scores and uncertainty are those of the adapters run one after the other."""
    ensemble = adapter_ensemble[0]
    options = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with input_shapes(ensemble.peft_model) as shapes:
        batched = ensemble.generate(PROMPT, **options)
    assert shapes == [(6, 4)] + [(6, 1)] * 3
    assert type(ensemble(input_ids=PROMPT, use_cache=True).cache) is MemberBatchCache
    ensemble.batch_members = False
    try:
        with input_shapes(ensemble.peft_model) as shapes:
            looped = ensemble.generate(PROMPT, **options)
    finally:
        del ensemble.batch_members
    assert shapes == [(2, 4)] * 3 + [(2, 1)] * 9
    assert torch.equal(batched.sequences, looped.sequences)
    for key in ("scores", "mutual_information"):
        torch.testing.assert_close(batched[key], looped[key], rtol=1e-5, atol=1e-6)


def test_dora_members_decode_one_after_the_other(tmp_path):
    """PEFT's mixed-adapter batch excludes DoRA: those adapters run one after the other, each with its own cache."""
    peft = pytest.importorskip("peft")
    pretrained_lm("llama", tmp_path / "base")
    config = peft.LoraConfig(r=4, use_dora=True, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
    for index in range(2):
        peft.get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path / "base"), config).save_pretrained(
            tmp_path / f"member_{index}"
        )
    ensemble = build_ensemble([tmp_path / "member_0", tmp_path / "member_1"])
    with input_shapes(ensemble.peft_model) as shapes:
        assert ensemble.generate(PROMPT, max_new_tokens=2, do_sample=False).shape == (2, 6)
    assert shapes == [(2, 4)] * 2 + [(2, 1)] * 2


def test_assisted_decoding_is_refused(full_ensemble):
    ensemble, _, members = full_ensemble
    with pytest.raises(ValueError, match=r"^EnsembleForCausalLM.generate\(\) cannot take assistant_model: .*greedy"):
        ensemble.generate(PROMPT, assistant_model=members[0], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"cannot take prompt_lookup_num_tokens"):
        ensemble.generate(PROMPT, prompt_lookup_num_tokens=2, max_new_tokens=2)


def test_saved_ensembles_load_with_auto_and_pipeline(ensemble_and_members):
    ensemble, directory, _ = ensemble_and_members
    loaded = AutoModelForCausalLM.from_pretrained(directory)
    assert type(loaded) is type(ensemble) and type(loaded) in (EnsembleForCausalLM, AdapterEnsembleForCausalLM)
    expected = ensemble.generate(PROMPT, max_new_tokens=4, do_sample=False)
    assert torch.equal(loaded.generate(PROMPT, max_new_tokens=4, do_sample=False), expected)
    generator = pipeline("text-generation", model=str(directory))
    result = generator("w2 w14 w39 w5", max_new_tokens=4, do_sample=False, return_tensors=True)[0]
    assert result["generated_token_ids"] == expected[0].tolist()  # the prompt is PROMPT[0]
    text = generator("w2 w14 w39 w5", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("w2 w14 w39 w5") and len(text) > len("w2 w14 w39 w5")
    generator.tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }} {% endfor %}"
    chat = generator([{"role": "user", "content": "w2 w14 w39 w5"}], max_new_tokens=4, do_sample=False)
    assert chat[0]["generated_text"][-1]["role"] == "assistant"


def test_evaluation_refuses_causal_lms_in_one_line_and_training_with_eval_goes_on(tmp_path):
    run = tmp_path / "run"
    model = pretrained_lm("gpt2", tmp_path / "base")
    tokenizer = word_tokenizer()
    args = make_args(run, num_members=2, cycle_steps=2, eval_strategy="steps", eval_steps=2)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = StarSSETrainer(model=model, args=args, train_dataset=token_rows(), eval_dataset=token_rows(),
                             data_collator=collator, processing_class=tokenizer)  # fmt: skip
    trainer.train()  # the running ensemble is not evaluated for causal LMs, and training is not stopped
    assert any("eval_loss" in log for log in trainer.state.log_history)
    with pytest.raises(ValueError, match="'language_modeling' head .* cannot be evaluated or calibrated yet"):
        trainer.evaluate_ensemble()
    with pytest.raises(ValueError, match="cannot be evaluated or calibrated yet"):
        calibrate_ensemble(build_ensemble(run), token_rows(), data_collator=collator)


def test_soups_of_causal_lm_members_generate(tmp_path, full_ensemble, adapter_ensemble):
    """Uniform soups (issue 28, item 4): full members' averaged weights, and LoRA members' exact soup as one merged
    model and as one adapter of rank K·r over the base; both are ordinary causal LMs that generate."""
    peft = pytest.importorskip("peft")
    _, ensemble_dir, members = full_ensemble
    run = ensemble_dir.parent / "run"
    soup = uniform_soup(run, tmp_path / "soup")
    averaged = torch.stack([m.transformer.wte.weight for m in members]).mean(0)
    assert torch.allclose(soup.transformer.wte.weight, averaged, atol=1e-6)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "soup")
    assert type(reloaded) is GPT2LMHeadModel and reloaded.generate(PROMPT, max_new_tokens=3).shape == (2, 7)
    _, adapter_dir, lora_members = adapter_ensemble
    lora_run, base = adapter_dir.parent / "run", adapter_dir.parent / "base"
    merged = uniform_soup(lora_run, tmp_path / "merged", adapter_out_dir=tmp_path / "adapter")
    adapter = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), str(tmp_path / "adapter"))
    assert adapter.peft_config["default"].r == 3 * lora_members[0].peft_config["default"].r
    with torch.no_grad():
        expected = merged(PROMPT).logits
        assert torch.allclose(adapter(PROMPT).logits, expected, atol=1e-4)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        assert type(loaded) is LlamaForCausalLM and torch.allclose(loaded(PROMPT).logits, expected, atol=1e-4)
    assert torch.equal(loaded.generate(PROMPT, max_new_tokens=3, do_sample=False),
                       adapter.generate(input_ids=PROMPT, max_new_tokens=3, do_sample=False))  # fmt: skip
    chosen = greedy_soup(
        run, token_rows(), data_collator=DataCollatorForLanguageModeling(word_tokenizer(), mlm=False)
    )[1]
    assert chosen and set(chosen) <= {0, 1, 2}  # scored by next-token accuracy


def test_rows_of_a_causal_lm_are_next_tokens(full_ensemble):
    _, _, members = full_ensemble
    assert predicts_next_token(members[0]) and not predicts_next_token(torch.nn.Linear(2, 2))
    logits, labels = torch.randn(1, 4, 5), torch.tensor([[-100, 3, 1, -100]])
    rows, targets, _ = output_rows({"logits": logits}, {"labels": labels}, next_token=True)
    assert torch.equal(rows, logits[0, :2]) and targets.tolist() == [3, 1]


def test_labels_made_by_the_collator_from_a_single_row():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=8, n_layer=1, n_head=2))
    collator = DataCollatorForLanguageModeling(word_tokenizer(), mlm=False)
    assert collator_makes_labels(token_rows().select([0]), model, ["labels"], collator)
