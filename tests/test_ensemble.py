import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    MobileNetV2ImageProcessor,
    pipeline,
)

from hf_starsse import (
    EnsembleConfig,
    EnsembleForImageClassification,
    EnsembleForSequenceClassification,
    build_ensemble,
)

from conftest import text_dataset, tokenizer


def member_probs(run_dir, auto_class, inputs, count):
    members = [auto_class.from_pretrained(run_dir / f"members/member-{i:02d}").eval() for i in range(count)]
    with torch.no_grad():
        return torch.stack([member(**inputs).logits.softmax(-1) for member in members])


def text_inputs(n=6):
    data = text_dataset(n, seed=7)
    return {"input_ids": torch.tensor(data["input_ids"]), "attention_mask": torch.tensor(data["attention_mask"])}


def test_text_ensemble_predicts_mean_probabilities(tmp_path, text_run):
    run_dir = text_run.args.output_dir
    model = text_run.save_ensemble(str(tmp_path / "ensemble"))
    assert isinstance(model, EnsembleForSequenceClassification)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ensemble")
    assert isinstance(loaded, EnsembleForSequenceClassification) and loaded.config.num_members == 3
    inputs = text_inputs()
    expected = member_probs(Path(run_dir), AutoModelForSequenceClassification, inputs, 3).mean(0)
    with torch.no_grad():
        output = loaded(**inputs, labels=torch.tensor([0, 1, 2, 0, 1, 2]))
        assert torch.equal(output.member_logits, model(**inputs).member_logits)  # save -> from_pretrained round trip
    assert torch.allclose(output.logits.exp(), expected, atol=1e-6)
    assert output.member_logits.shape == (3, 6, 3)
    nll = -expected.log()[torch.arange(6), torch.tensor([0, 1, 2, 0, 1, 2])].mean()
    assert torch.allclose(output.loss, nll, atol=1e-5)

    classifier = pipeline("text-classification", model=str(tmp_path / "ensemble"), top_k=None)
    text = "w3 w14 w15 w92 w65 w35"
    scores = {result["label"]: result["score"] for result in classifier(text)[0]}
    text_probs = member_probs(
        Path(run_dir), AutoModelForSequenceClassification, tokenizer()(text, return_tensors="pt"), 3
    )
    assert [scores[f"LABEL_{i}"] for i in range(3)] == pytest.approx(text_probs.mean(0)[0].tolist(), abs=1e-6)


def test_manifest_lineage_subsets_and_weights(tmp_path, text_run):
    run_dir = text_run.args.output_dir
    pair = build_ensemble(run_dir, tmp_path / "pair", members=[0, 2])
    config = json.loads((tmp_path / "pair/config.json").read_text())
    assert config["model_type"] == "starsse_ensemble" and config["num_members"] == 2
    assert config["ensemble_method"] == "starsse"
    assert [m["index"] for m in config["members_info"]] == [0, 2]
    assert config["cycle_hyperparameters"]["cycle_learning_rate"] == 1e-2
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_ensemble.")
    assert (tmp_path / "pair/tokenizer.json").is_file() and not (tmp_path / "pair/.training.lock").exists()
    inputs = text_inputs()
    probs = member_probs(Path(run_dir), AutoModelForSequenceClassification, inputs, 3)
    weighted = build_ensemble(run_dir, members=[0, 2], member_weights=[3.0, 1.0])
    with torch.no_grad():
        assert torch.allclose(pair(**inputs).logits.exp(), (probs[0] + probs[2]) / 2, atol=1e-6)
        assert torch.allclose(weighted(**inputs).logits.exp(), 0.75 * probs[0] + 0.25 * probs[2], atol=1e-6)
    with pytest.raises(ValueError, match="positions in 0..2"):
        build_ensemble(run_dir, members=[3])


def test_batch_size_independent(text_run):
    model = build_ensemble(text_run.args.output_dir)
    inputs = text_inputs(8)
    with torch.no_grad():
        whole = model(**inputs).logits
        halves = torch.cat([model(**{k: v[i : i + 4] for k, v in inputs.items()}).logits for i in (0, 4)])
    assert torch.allclose(whole, halves, atol=1e-6)


def test_image_ensemble_and_pipeline(tmp_path, image_run):
    image_run.save_ensemble(str(tmp_path / "ensemble"))
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "ensemble")
    assert isinstance(loaded, EnsembleForImageClassification)
    image = Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype("uint8"))
    processor = MobileNetV2ImageProcessor.from_pretrained(tmp_path / "ensemble")
    inputs = {"pixel_values": processor(image, return_tensors="pt")["pixel_values"]}
    run_dir = Path(image_run.args.output_dir)
    expected = member_probs(run_dir, AutoModelForImageClassification, inputs, 2).mean(0)[0]
    classifier = pipeline("image-classification", model=str(tmp_path / "ensemble"), top_k=None)
    scores = {result["label"]: result["score"] for result in classifier(image)}
    assert [scores[f"LABEL_{i}"] for i in range(3)] == pytest.approx(expected.tolist(), abs=1e-6)


def test_loads_as_remote_code_without_the_library(tmp_path, text_run):
    build_ensemble(text_run.args.output_dir, tmp_path / "ensemble")
    inputs = text_inputs()
    with torch.no_grad():
        expected = build_ensemble(text_run.args.output_dir)(**inputs).logits
    torch.save(inputs, tmp_path / "inputs.pt")
    script = f"""
import sys
sys.modules["hf_starsse"] = None  # the library is not installed
import torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "ensemble")!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
with torch.no_grad():
    torch.save(model(**inputs).logits, {str(tmp_path / "logits.pt")!r})
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.allclose(torch.load(tmp_path / "logits.pt", weights_only=True), expected, atol=1e-6)


def test_mismatched_members_refused(tmp_path, text_run):
    from test_soups import copy_member

    member = Path(text_run.args.output_dir) / "members/member-00"
    relabelled = copy_member(member, tmp_path / "relabelled", config_edit=lambda c: c.update(id2label={"0": "x"}))
    with pytest.raises(ValueError, match="relabelled.*'id2label'"):
        build_ensemble([member, relabelled], tmp_path / "ensemble")
    assert not (tmp_path / "ensemble").exists()


def test_config_validation():
    with pytest.raises(ValueError, match="combine='max' is unknown"):
        EnsembleConfig(member_config={"model_type": "bert"}, combine="max")
    with pytest.raises(ValueError, match="member_weights"):
        EnsembleConfig(member_config={"model_type": "bert"}, num_members=2, member_weights=[1.0])


def test_tied_weights_survive_the_round_trip(tmp_path):
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig(
        vocab_size=99, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, num_labels=3, max_position_embeddings=32,
    )  # fmt: skip
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        BartForSequenceClassification(config).save_pretrained(tmp_path / f"m{seed}")
        members.append(tmp_path / f"m{seed}")
    built = build_ensemble(members, tmp_path / "ensemble")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ensemble")
    shared = loaded.members[1].model
    assert shared.encoder.embed_tokens.weight is shared.shared.weight
    input_ids = torch.tensor([[5, 6, 7, 2], [8, 9, 10, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=input_ids).member_logits, built(input_ids=input_ids).member_logits)
        logits, member_logits, *uncertainty = built(input_ids=input_ids, return_dict=False)
    assert member_logits.shape == (2, 2, 3) and torch.allclose(logits, built(input_ids=input_ids).logits)
    assert [values.shape for values in uncertainty] == [(2,)] * 4  # entropy, expected entropy, MI, disagreement


@pytest.mark.parametrize(
    "config_edit,message",
    [
        (
            lambda c: c.update(architectures=["BertForMaskedLM"]),
            "of no task family ensembles support",
        ),
    ],
)
def test_unsupported_members_refused(tmp_path, text_run, config_edit, message):
    from test_soups import copy_member

    member = copy_member(Path(text_run.args.output_dir) / "members/member-00", tmp_path / "m", config_edit=config_edit)
    with pytest.raises(ValueError, match=message):
        build_ensemble([member])


def test_duplicate_positions_refused(text_run):
    with pytest.raises(ValueError, match="distinct positions"):
        build_ensemble(text_run.args.output_dir, members=[0, 0])


def test_sharded_members(tmp_path, text_run):
    from hf_starsse import uniform_soup

    members = []
    for index in range(2):
        model = AutoModelForSequenceClassification.from_pretrained(
            Path(text_run.args.output_dir) / f"members/member-{index:02d}"
        )
        model.save_pretrained(tmp_path / f"m{index}", max_shard_size="100KB")
        members.append(tmp_path / f"m{index}")
    assert len(list(members[0].glob("*.safetensors"))) > 1
    expected = build_ensemble(text_run.args.output_dir, members=[0, 1])
    inputs = text_inputs()
    with torch.no_grad():
        assert torch.equal(build_ensemble(members)(**inputs).logits, expected(**inputs).logits)
    soup = uniform_soup(members)
    reference = uniform_soup([Path(text_run.args.output_dir) / f"members/member-0{i}" for i in range(2)])
    for key, value in soup.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
