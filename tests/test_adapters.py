"""PEFT adapter members (LoRA and others): ensembles over one base, exact LoRA soups, bad inputs, peft optional."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    MobileNetV2ImageProcessor,
    pipeline,
)

from hf_starsse import build_ensemble, greedy_soup, load_members, uniform_soup

from conftest import NUM_LABELS, image_dataset, load_image_model, load_text_model, text_dataset, tokenizer

peft = pytest.importorskip("peft")

TEXT_LORA = dict(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
# 1x1 convolutions and the first (3x3, ungrouped) one; the depthwise ones have groups > 1, which PEFT cannot merge
IMAGE_LORA = dict(
    r=4,
    lora_alpha=8,
    target_modules=r".*(first_conv|expand_1x1|reduce_1x1)\.convolution",
    modules_to_save=["classifier"],
)


def randomize_adapters(model, seed: int) -> None:
    """Non-zero, member-specific LoRA B (and A, head) as after training: LoRA's own init makes B = 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def save_adapters(load_model, root: Path, count: int, config: dict, processor=None, seed: int = 0) -> list[Path]:
    """`count` adapter directories over one base, as PEFT saves them (plus processor files when given)."""
    members = []
    for index in range(count):
        model = peft.get_peft_model(
            load_model(), peft.get_peft_config(dict(config, peft_type=config.get("peft_type", "LORA")))
        )
        randomize_adapters(model, seed + index)
        model.save_pretrained(root / f"adapter-{index}")
        if processor is not None:
            processor.save_pretrained(root / f"adapter-{index}")
        members.append(root / f"adapter-{index}")
    return members


def merged_members(load_model, members: list[Path]) -> list[torch.nn.Module]:
    """Each member merged into its own copy of the base: the reference the adapter paths must reproduce."""
    return [peft.PeftModel.from_pretrained(load_model(), str(member)).merge_and_unload().eval() for member in members]


def mean_probs(models, inputs) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(**inputs).logits.softmax(-1) for model in models]).mean(0)


def float64_mean_state(models) -> dict:
    states = [model.state_dict() for model in models]
    return {
        key: (sum(state[key].double() for state in states) / len(states)).to(tensor.dtype)
        if tensor.is_floating_point()
        else tensor
        for key, tensor in states[0].items()
    }


def assert_close_states(actual: dict, expected: dict, atol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        assert torch.allclose(value.double(), expected[key].double(), atol=atol), key


@pytest.fixture(scope="module")
def text_base(pretrained_bert):
    return lambda: load_text_model(pretrained_bert, seed=99)


@pytest.fixture(scope="module")
def text_adapters(tmp_path_factory, text_base):
    return save_adapters(text_base, tmp_path_factory.mktemp("text_adapters"), 3, TEXT_LORA, tokenizer())


@pytest.fixture(scope="module")
def text_inputs():
    return {"input_ids": torch.tensor(text_dataset(n=6, seed=4)["input_ids"])}


def test_text_adapter_ensemble_is_the_mean_of_the_merged_members(tmp_path, text_base, text_adapters, text_inputs):
    reference = mean_probs(merged_members(text_base, text_adapters), text_inputs)
    model = build_ensemble(text_adapters, tmp_path / "ensemble")
    assert type(model).__name__ == "AdapterEnsembleForSequenceClassification"
    with torch.no_grad():
        output = model(**text_inputs)
    assert output.member_logits.shape == (3, 6, NUM_LABELS)
    assert torch.allclose(output.logits.exp(), reference, atol=1e-5)
    # the base is stored once in memory, never on disk: adapters and a reference
    base_params = [
        name for name, _ in model.named_parameters() if "lora_" not in name and "modules_to_save" not in name
    ]
    assert len(base_params) == len(list(text_base().parameters()))
    saved = tmp_path / "ensemble"
    assert sorted(p.name for p in (saved / "adapters").iterdir()) == ["member_0", "member_1", "member_2"]
    assert not list(saved.glob("*.safetensors")) and not (saved / "base").exists()
    assert not (saved / "adapter_config.json").exists() and (saved / "tokenizer.json").is_file()
    config = json.loads((saved / "config.json").read_text())
    assert (
        config["base_model"]
        == json.loads((text_adapters[0] / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    assert config["peft_type"] == "LORA" and len(config["base_sha256"]) == 64 and config["include_base"] is False
    loaded = AutoModelForSequenceClassification.from_pretrained(saved)
    with torch.no_grad():
        assert torch.allclose(loaded(**text_inputs).logits.exp(), reference, atol=1e-5)
    classify = pipeline("text-classification", model=str(saved), top_k=None)
    scores = classify(["w5 w6 w7 w8"])[0]
    assert len(scores) == NUM_LABELS and abs(sum(s["score"] for s in scores) - 1) < 1e-5
    assert "each member a LORA" in (saved / "README.md").read_text()


def test_adapter_ensemble_keeps_the_full_model_options(text_base, text_adapters, text_inputs):
    models = merged_members(text_base, text_adapters)
    model = build_ensemble(text_adapters, members=[2, 0], member_weights=[3.0, 1.0])
    with torch.no_grad():
        probs = [models[i](**text_inputs).logits.softmax(-1) for i in (2, 0)]
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        output = model(**text_inputs, labels=labels)
    assert torch.allclose(output.logits.exp(), 0.75 * probs[0] + 0.25 * probs[1], atol=1e-5)
    assert torch.allclose(output.loss, torch.nn.functional.nll_loss(output.logits, labels))


@pytest.fixture(scope="module")
def image_base(tmp_path_factory):
    """A tiny MobileNetV2 with a 10-class head (the adapters store their own 3-class head). Without TF padding, like
    the demo's: with it, transformers reads `conv.stride`, which PEFT's LoRA convolutions lack (peft 0.21)."""
    base = tmp_path_factory.mktemp("image_base") / "mobilenet"
    torch.manual_seed(4321)
    config = MobileNetV2Config(num_channels=3, image_size=16, depth_multiplier=0.25, num_labels=10, tf_padding=False)
    MobileNetV2ForImageClassification(config).save_pretrained(base)
    return base


@pytest.fixture(scope="module")
def image_adapters(tmp_path_factory, image_base):
    processor = MobileNetV2ImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    root = tmp_path_factory.mktemp("image_adapters")
    return save_adapters(lambda: load_image_model(image_base), root, 2, IMAGE_LORA, processor, seed=10)


def test_image_adapter_ensemble_with_its_base_included_works_offline(tmp_path, image_base, image_adapters):
    pixels = {"pixel_values": image_dataset(n=5, seed=2)[:]["pixel_values"]}
    reference = mean_probs(merged_members(lambda: load_image_model(image_base), image_adapters), pixels)
    model = build_ensemble(image_adapters, tmp_path / "ensemble", include_base=True)
    assert type(model).__name__ == "AdapterEnsembleForImageClassification"
    assert (tmp_path / "ensemble/base/model.safetensors").is_file()
    build_ensemble(image_adapters, tmp_path / "referencing")
    moved = tmp_path / "moved-base"  # the base is gone from where the adapters say it is
    shutil.move(image_base, moved)
    try:
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "ensemble")
        with torch.no_grad():
            assert torch.allclose(loaded(**pixels).logits.exp(), reference, atol=1e-5)
        classify = pipeline("image-classification", model=str(tmp_path / "ensemble"))
        assert len(classify(PILImage.new("RGB", (20, 20)))) == NUM_LABELS
        with pytest.raises(FileNotFoundError, match="saved without its base .*neither a local directory"):
            AutoModelForImageClassification.from_pretrained(tmp_path / "referencing")
    finally:
        shutil.move(moved, image_base)


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_lora_soups_are_the_mean_of_the_merged_members(tmp_path, text_base, variant):
    config = dict(TEXT_LORA, use_rslora=variant == "rslora", use_dora=variant == "dora")
    members = save_adapters(text_base, tmp_path, 3, config)
    expected = float64_mean_state(merged_members(text_base, members))
    if variant == "dora":
        with pytest.raises(ValueError, match="uses DoRA"):
            uniform_soup(members, tmp_path / "unused", adapter_out_dir=tmp_path / "soup-adapter")
        assert not (tmp_path / "unused").exists()
    soup = uniform_soup(
        members, tmp_path / "soup", adapter_out_dir=None if variant == "dora" else tmp_path / "adapter"
    )
    assert_close_states(soup.state_dict(), expected)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "soup")
    assert type(loaded) is BertForSequenceClassification
    assert_close_states(loaded.state_dict(), expected)
    # averaging A and B apart is another model (mean(B) mean(A) != mean(BA)): the test would notice
    layer = "base_model.model.bert.encoder.layer.0.attention.self.query"
    factors = [load_file(str(member / "adapter_model.safetensors")) for member in members]
    mean_a, mean_b = [sum(f[f"{layer}.lora_{m}.weight"] for f in factors) / 3 for m in "AB"]
    naive = text_base().state_dict()["bert.encoder.layer.0.attention.self.query.weight"] + 2 * mean_b @ mean_a
    assert not torch.allclose(naive, expected["bert.encoder.layer.0.attention.self.query.weight"], atol=1e-3)
    if variant == "dora":
        return
    adapter_config = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert adapter_config["r"] == 3 * TEXT_LORA["r"] and adapter_config["lora_alpha"] == TEXT_LORA["lora_alpha"]
    assert adapter_config["use_rslora"] is (variant == "rslora")
    merged = peft.PeftModel.from_pretrained(text_base(), str(tmp_path / "adapter")).merge_and_unload()
    assert_close_states(merged.state_dict(), expected)
    assert json.loads((tmp_path / "adapter/soup.json").read_text())["rank"] == 12


def test_image_lora_soup_and_greedy_soup(tmp_path, image_base, image_adapters):
    load = lambda: load_image_model(image_base)  # noqa: E731
    expected = float64_mean_state(merged_members(load, image_adapters))
    soup = uniform_soup(image_adapters, tmp_path / "soup", adapter_out_dir=tmp_path / "adapter")
    assert type(soup) is MobileNetV2ForImageClassification
    assert_close_states(soup.state_dict(), expected)
    assert (tmp_path / "soup/preprocessor_config.json").is_file()
    merged = peft.PeftModel.from_pretrained(load(), str(tmp_path / "adapter")).merge_and_unload()
    assert_close_states(merged.state_dict(), expected)
    greedy, chosen = greedy_soup(image_adapters, image_dataset(n=8, seed=5), adapter_out_dir=tmp_path / "greedy")
    chosen_members = merged_members(load, [image_adapters[i] for i in chosen])
    assert_close_states(greedy.state_dict(), float64_mean_state(chosen_members))
    assert json.loads((tmp_path / "greedy/soup.json").read_text())["chosen"] == chosen


def test_other_adapter_types_ensemble_but_do_not_soup(tmp_path, text_base, text_inputs):
    config = dict(peft_type="IA3", task_type="SEQ_CLS", target_modules=["query", "value", "output.dense"],
                  feedforward_modules=["output.dense"])  # fmt: skip
    members = save_adapters(text_base, tmp_path, 2, config)
    model = build_ensemble(members)
    reference = mean_probs(merged_members(text_base, members), text_inputs)
    with torch.no_grad():
        assert torch.allclose(model(**text_inputs).logits.exp(), reference, atol=1e-5)
    with pytest.raises(ValueError, match="is a IA3 adapter: soups are built of LoRA adapters only"):
        uniform_soup(members)
    prompt = save_adapters(text_base, tmp_path / "prompt", 1, dict(peft_type="PROMPT_TUNING", task_type="SEQ_CLS",
                                                                   num_virtual_tokens=2))  # fmt: skip
    with pytest.raises(ValueError, match="PROMPT_TUNING adapter \\(prompt learning\\): not supported"):
        build_ensemble(prompt)


# ----- bad inputs: one clear error each ---------------------------------------------------------------------------


def copy_adapter(source: Path, target: Path, config_edit=None) -> Path:
    shutil.copytree(source, target)
    if config_edit is not None:
        config = json.loads((target / "adapter_config.json").read_text())
        config_edit(config)
        (target / "adapter_config.json").write_text(json.dumps(config))
    return target


def test_adapter_config_mismatch(tmp_path, text_base, text_adapters):
    other = save_adapters(text_base, tmp_path, 1, dict(TEXT_LORA, r=8))[0]
    with pytest.raises(ValueError, match=r"adapter-0 does not match .*differs in 'r' \(8 vs 4\)"):
        build_ensemble([text_adapters[0], other])
    reordered = copy_adapter(text_adapters[1], tmp_path / "reordered", lambda c: c["target_modules"].reverse())
    build_ensemble([text_adapters[0], reordered])  # target_modules is a set: order does not matter


@pytest.mark.parametrize("missing", ["adapter_model.safetensors", "adapter_config.json"])
def test_missing_adapter_file(tmp_path, text_adapters, missing):
    broken = copy_adapter(text_adapters[1], tmp_path / "broken")
    (broken / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"broken is a PEFT adapter directory without {missing}"):
        load_members([text_adapters[0], broken])


def test_adapters_and_full_models_do_not_mix(text_adapters, text_run):
    full = Path(text_run.args.output_dir) / "members/member-00"
    with pytest.raises(ValueError, match="is a PEFT adapter but .*member-00 is a full model"):
        uniform_soup([text_adapters[0], full])


def test_base_missing_offline(tmp_path, text_adapters, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    elsewhere = copy_adapter(
        text_adapters[0], tmp_path / "hub-base", lambda c: c.update(base_model_name_or_path="no-org/no-base")
    )
    with pytest.raises(
        FileNotFoundError, match="base model 'no-org/no-base' is neither a local directory nor available"
    ):
        build_ensemble([elsewhere])
    gone = copy_adapter(
        text_adapters[0], tmp_path / "gone", lambda c: c.update(base_model_name_or_path=str(tmp_path / "x"))
    )
    with pytest.raises(FileNotFoundError, match="neither a local directory nor available from the Hub"):
        uniform_soup([gone])


def test_different_base(tmp_path, pretrained_bert, text_adapters, text_inputs):
    moved = copy_adapter(
        text_adapters[1], tmp_path / "moved", lambda c: c.update(base_model_name_or_path="/elsewhere")
    )
    with pytest.raises(ValueError, match=r"moved adapts base model '/elsewhere' .*share one base model"):
        build_ensemble([text_adapters[0], moved])
    # a saved ensemble refuses a base whose weights changed since it was built
    base = tmp_path / "base"
    shutil.copytree(pretrained_bert, base)
    build_ensemble(text_adapters, tmp_path / "ensemble", base_model=str(base))
    model = BertForSequenceClassification.from_pretrained(base, num_labels=NUM_LABELS)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.add_(0.01)
    model.save_pretrained(base)
    with pytest.raises(ValueError, match="is not the one this adapter ensemble was built on"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "ensemble")
    # and adapters over a base of another architecture do not load into it
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path / "small"
    )
    with pytest.raises(ValueError, match="does not fit the base model .*small"):
        build_ensemble(text_adapters, base_model=str(tmp_path / "small"))


def test_library_works_without_peft(tmp_path, text_run, text_adapters):
    script = """
import sys
sys.modules["peft"] = None  # as if not installed
import hf_starsse
from hf_starsse import build_ensemble, uniform_soup
run, adapter = sys.argv[1], sys.argv[2]
assert build_ensemble(run).config.num_members == 3
uniform_soup(run)
try:
    build_ensemble([adapter])
except ImportError as error:
    print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script, text_run.args.output_dir, str(text_adapters[0])],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "need the peft package: pip install 'hf_starsse[peft]'" in result.stdout


def test_diagnostics_and_evaluation_take_adapter_members(text_base, text_adapters, text_inputs):
    from hf_starsse import evaluate_ensemble
    from hf_starsse.evaluation.diagnostics import member_distances, weight_distance

    merged = merged_members(text_base, text_adapters)
    rows = member_distances(text_adapters, pretrained=text_base())
    # distances between merged members are those of their deltas: the base cancels
    assert rows[2]["to_member_0"] == pytest.approx(weight_distance(merged[2], merged[0]), rel=1e-6)
    assert rows[1]["to_pretrained"] == pytest.approx(weight_distance(merged[1], text_base()), rel=1e-6)
    data = text_dataset(n=12, seed=8)
    results = evaluate_ensemble(text_adapters, {"test": data})
    ensemble = next(r for r in results if r["model"] == "ensemble" and r["size"] == 3)
    with torch.no_grad():
        probs = mean_probs(merged, {"input_ids": torch.tensor(data["input_ids"])})
    nll = torch.nn.functional.nll_loss(probs.log(), torch.tensor(data["labels"])).item()
    assert ensemble["nll"] == pytest.approx(nll, abs=1e-5)
    assert {r["model"] for r in results} == {"member", "ensemble", "uniform_soup"}
