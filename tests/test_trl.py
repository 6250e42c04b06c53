"""StarSSE, SSE and Local DE through TRL's `SFTTrainer` (issue 28, item 2): `StarSSESFTTrainer` trains K members of
a tiny Llama built from config on text, chat-message and prompt-completion rows that SFTTrainer tokenizes, full and
LoRA (`peft_config`), into the usual run directory; their ensemble generates. `hf_starsse` imports without `trl`."""

import json
import subprocess
import sys

import pytest
import torch
from datasets import Dataset

from hf_starsse import AdapterEnsembleForCausalLM, EnsembleForCausalLM, StarSSETrainingArguments, build_ensemble

from test_causal_lm import PROMPT, WORDS, parents_and_steps, pretrained_lm, word_tokenizer

trl = pytest.importorskip("trl", reason="StarSSESFTTrainer needs the optional trl: pip install 'hf_starsse[trl]'")
from hf_starsse import StarSSESFTConfig, StarSSESFTTrainer  # noqa: E402

CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"


def sentences(n: int = 16) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 9, (n,), generator=generator).tolist()
    return [" ".join(f"w{i}" for i in torch.randint(0, 96, (k,), generator=generator).tolist()) for k in lengths]


def rows(kind: str) -> Dataset:
    """16 short rows: `"text"`, chat `"messages"` (a user and an assistant turn) or `"prompt"`/`"completion"`."""
    texts = sentences()
    if kind == "text":
        return Dataset.from_dict({"text": texts})
    halves = [(text.split()[:2], text.split()[2:]) for text in texts]
    if kind == "messages":
        turns = [[{"role": "user", "content": " ".join(a)}, {"role": "assistant", "content": " ".join(b)}]
                 for a, b in halves]  # fmt: skip
        return Dataset.from_dict({"messages": turns})
    return Dataset.from_dict(
        {"prompt": [" ".join(a) for a, _ in halves], "completion": [" " + " ".join(b) for _, b in halves]}
    )


def sft_args(run, **kwargs) -> StarSSESFTConfig:
    defaults = dict(per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-3, report_to="none",
                    save_strategy="no", logging_steps=1, use_cpu=True, bf16=False, disable_tqdm=True, seed=0,
                    num_members=3, cycle_steps=2, cycle_learning_rate=2e-3, max_length=16)  # fmt: skip
    return StarSSESFTConfig(output_dir=str(run), **{**defaults, **kwargs})


def sft_trainer(tmp_path, kind: str = "text", **kwargs) -> StarSSESFTTrainer:
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    model = pretrained_lm("llama", tmp_path / "base")
    peft_config = kwargs.pop("peft_config", None)
    return StarSSESFTTrainer(model=model, args=sft_args(tmp_path / "run", **kwargs), train_dataset=rows(kind),
                             processing_class=tokenizer, peft_config=peft_config)  # fmt: skip


def member_logs(run, member: int) -> list[dict]:
    state = json.loads((run / "members" / f"member-{member:02d}" / "trainer_state.json").read_text())
    return [log for log in state["log_history"] if "num_tokens" in log]


@pytest.mark.parametrize("kind", ["text", "messages"])
def test_starsse_members_trained_by_sft_trainer_generate(tmp_path, kind):
    trainer = sft_trainer(tmp_path, kind)
    assert trainer.train().metrics["train_members"] == 3
    run = tmp_path / "run"
    assert parents_and_steps(run) == [(0, None, 2), (1, 0, 2), (2, 0, 2)]
    assert all((run / "members" / f"member-{k:02d}" / "model.safetensors").is_file() for k in range(3))
    header = json.loads((run / "ensemble.json").read_text())
    assert header["hyperparameters"]["loss_type"] == "nll" and header["hyperparameters"]["max_length"] == 16
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])  # every member trains one epoch
    for member in range(3):  # SFTTrainer's logs, per member: its own token count
        logs = member_logs(run, member)
        assert [log["member"] for log in logs] == [member, member]
        assert 0 < logs[0]["num_tokens"] < logs[1]["num_tokens"] == tokens
        assert "mean_token_accuracy" in logs[0]
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    assert isinstance(ensemble, EnsembleForCausalLM) and ensemble.config.num_members == 3
    generated = ensemble.generate(PROMPT, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, 8) and torch.equal(generated[:, :4], PROMPT) and generated.max() < len(WORDS)


@pytest.mark.parametrize("method", ["starsse", "local_de"])
def test_lora_members_from_peft_config_on_prompt_completion_rows(tmp_path, method):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
    trainer = sft_trainer(tmp_path, "prompt_completion", peft_config=config, ensemble_method=method)
    assert trainer.completion_only_loss  # SFTTrainer's default for prompt-completion rows
    prompt_length = len(rows("prompt_completion")[0]["prompt"].split())
    labels = trainer.train_dataset[0]["labels"]  # the prompt's tokens are left out of the loss
    assert labels[:prompt_length] == [-100] * prompt_length and -100 not in labels[prompt_length:]
    trainer.train()
    run = tmp_path / "run"
    parents = {"starsse": [0, 0], "local_de": [None, None]}[method]
    assert parents_and_steps(run) == [(0, None, 2), (1, parents[0], 2), (2, parents[1], 2)]
    for member in range(3):
        files = {path.name for path in (run / "members" / f"member-{member:02d}").iterdir()}
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    assert isinstance(ensemble, AdapterEnsembleForCausalLM)
    assert ensemble.generate(PROMPT, max_new_tokens=3, do_sample=False).shape == (2, 7)


def test_sse_chain_and_resume(tmp_path):
    sft_trainer(tmp_path, ensemble_method="sse", num_members=2).train()
    assert parents_and_steps(tmp_path / "run") == [(0, None, 2), (1, 0, 2)]
    again = sft_trainer(tmp_path, ensemble_method="sse", num_members=2).train()  # complete members are skipped
    assert again.global_step == 0
    with pytest.raises(ValueError, match="loss_type"):  # an SFT field that changes the members is part of the run
        sft_trainer(tmp_path, ensemble_method="sse", num_members=2, loss_type="dft").train()


def test_config_merges_both_dataclasses(tmp_path):
    args = StarSSESFTConfig(output_dir=str(tmp_path), use_cpu=True, num_members=4, cycle_steps=3, hub_token="SECRET")
    assert (args.learning_rate, args.num_members, args.ensemble_method, args.max_length) == (2e-5, 4, "starsse", 1024)
    assert "SECRET" not in repr(args)
    with pytest.raises(ValueError, match="num_members=0 must be at least 1"):
        StarSSESFTConfig(output_dir=str(tmp_path), use_cpu=True, num_members=0)


def test_starsse_training_arguments_are_refused_with_the_fix(tmp_path):
    args = StarSSETrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, num_members=2)
    with pytest.raises(TypeError, match="takes a StarSSESFTConfig"):
        StarSSESFTTrainer(model=pretrained_lm("llama", tmp_path / "base"), args=args, train_dataset=rows("text"))


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_does_not_need_trl():
    without_trl = "import sys; sys.modules['trl'] = None; import hf_starsse; "
    result = run_python(without_trl + "print(hf_starsse.StarSSETrainer.__name__); hf_starsse.StarSSESFTTrainer")
    assert result.stdout.strip() == "StarSSETrainer"
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: StarSSESFTTrainer and StarSSESFTConfig need TRL: pip install 'hf_starsse[trl]'"
    )
    result = run_python("import sys, hf_starsse; print('trl' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr
