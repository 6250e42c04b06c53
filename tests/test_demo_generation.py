"""`hf-starsse demo --task generation` and the generative benchmark (`benchmarks/generative.py --quick`) end to end,
at tiny sizes, on the real offline assets (SmolLM2-135M-Instruct, 20 Newsgroups); they skip, naming the install
command, without them."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from hf_starsse.cli.main import main
from hf_starsse.demo.assets import DATA_PACKAGE, LM_PACKAGE
from hf_starsse.demo.generation import POST_WORDS
from hf_starsse.demo.lm_assets import LM_INSTALL_COMMAND

lm_assets = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in (LM_PACKAGE, "gguf", DATA_PACKAGE, "sklearn", "peft")),
    reason=f"the generative demo's offline assets are not installed: {LM_INSTALL_COMMAND}",
)


@pytest.fixture(autouse=True)
def cache(asset_cache, monkeypatch):
    monkeypatch.setenv("HF_STARSSE_CACHE", asset_cache)


@lm_assets
@pytest.mark.slow
def test_generation_demo_end_to_end(tmp_path, capsys):
    root = tmp_path / "demo"
    argv = ["demo", "--task", "generation", "--output_dir", str(root), "--num_members", "2", "--train_samples", "16",
            "--test_samples", "4", "--shift_samples", "4", "--calibration_samples", "4", "--cycle_steps", "1",
            "--max_length", "96", "--use_cpu", "true"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[demo 5/5]" in out and "| ensemble (2) |" in out and "| held-out newsgroups/all |" in out
    manifest = json.loads((root / "run/ensemble.json").read_text())
    assert [m["steps"] for m in manifest["members"]] == [2, 1]  # 16 posts / batch 8, then a 1-step cycle
    assert manifest["hyperparameters"]["learning_rate"] == 5e-4  # the generation recipe
    assert (root / "run/members/member-01/adapter_model.safetensors").is_file()  # LoRA members

    rows = json.loads((root / "run/evaluation.json").read_text())
    splits = {row["split"] for row in rows}
    assert splits == {"test", "held-out newsgroups/all", "validation", "test text", "held-out newsgroups/all text"}
    ensemble = next(r for r in rows if r["model"] == "ensemble" and r["size"] == 2 and r["split"] == "test")
    assert 0 <= ensemble["accuracy"] <= 1 and ensemble["nll"] > 0 and ensemble["temperature"] > 0
    text = next(r for r in rows if r["model"] == "uniform_soup" and r["split"] == "test text")
    assert 1 < text["perplexity"] < 1e4 and text["tokens"] > 0
    report = (root / "report/results.md").read_text()
    assert f"first {POST_WORDS} words" in report and "**Perplexity of the posts' text**" in report
    assert "**Generated answers**" in report and report.count("| held-out newsgroups/all | ") >= 3

    tokenizer = AutoTokenizer.from_pretrained(root / "ensemble")
    ensemble_model = AutoModelForCausalLM.from_pretrained(root / "ensemble")
    assert ensemble_model.config.num_members == 2
    generator = pipeline("text-generation", model=ensemble_model, tokenizer=tokenizer)
    messages = [{"role": "user", "content": "Which topic is this post about? My hard drive will not boot."}]
    reply = generator(messages, max_new_tokens=4, do_sample=False)[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and reply["content"]
    soup = AutoModelForCausalLM.from_pretrained(root / "soup")
    assert type(soup).__name__ == "LlamaForCausalLM"


@lm_assets
@pytest.mark.slow
def test_quick_generative_benchmark(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import generative

    threads = torch.get_num_threads()
    results, manifest = tmp_path / "generative.md", tmp_path / "work" / "seed-0" / "starsse" / "ensemble.json"
    argv = ["--quick", "--work-dir", str(tmp_path / "work"), "--results", str(results)]
    try:
        generative.main(argv)
        report, trained = results.read_text(), manifest.stat().st_mtime_ns
        generative.main(argv)  # resumed: every run evaluated, so nothing trains again and the tables are the same
    finally:
        torch.set_num_threads(threads)
    assert manifest.stat().st_mtime_ns == trained
    assert results.read_text().split("| model |", 1)[1] == report.split("| model |", 1)[1]
    models = ("single LoRA fine-tune (member 0)", "StarSSE: mean member", "StarSSE ensemble (2)", "SSE LoRA soup",
              "Local DE ensemble (2)")  # fmt: skip
    for model in models:
        row = next(line for line in report.splitlines() if line.startswith(f"| {model} |"))
        assert len(re.findall(r"\d+\.\d{3} ± \d+\.\d{3}", row)) == len(generative.COLUMNS), row
    assert "Speed goal" in report and "| new tokens/s (one generate / 2 generate calls) |" in report
    assert "| starsse | shift accuracy | member 0 |" in report and "| local_de | nll | its mean member |" in report
    local_de = json.loads((tmp_path / "work" / "seed-0" / "local_de" / "ensemble.json").read_text())["members"]
    assert [member["parent"] for member in local_de] == [None, None]  # independent fine-tunes, member 0 shared
