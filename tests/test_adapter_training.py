"""StarSSETrainer with PEFT (LoRA) members: starting adapters per method, LR traces, a frozen base never written per
member, resume, members_to_train, base identity, and the models refused."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import Recorder, StopAt, train_text
from transformers import BertModel, MobileNetV2Config, MobileNetV2ForImageClassification

from hf_starsse import StarSSETrainer, build_ensemble, uniform_soup
from hf_starsse.soups.batchnorm import BatchNormRecalibrationCallback

from conftest import bert_config, image_dataset, load_image_model, load_text_model, make_args, text_dataset, tokenizer

peft = pytest.importorskip("peft")

METHODS = ["starsse", "sse", "local_de"]
LORA = dict(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])


def lora_model(base: str, seed: int = 0, **config):
    return peft.get_peft_model(load_text_model(base, seed), peft.LoraConfig(**{**LORA, **config}))


def train_lora(run_dir, base, callbacks=(), config=None, **kwargs):
    trainer = StarSSETrainer(
        model=lora_model(base, **(config or {})),
        args=make_args(run_dir, **kwargs),
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
        callbacks=list(callbacks),
    )
    return trainer, trainer.train()


def adapter(run_dir, member: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "members" / f"member-{member:02d}" / "adapter_model.safetensors"))


def start_adapter(start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter part of a recorded PeftModel state dict, named as in adapter_model.safetensors."""
    return {
        key.replace(".default", "").replace(".modules_to_save", ""): value
        for key, value in start.items()
        if "lora_" in key or ".modules_to_save." in key
    }


def base_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the frozen base's tensors in a PeftModel state dict (adapter and head copies left out)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        if "lora_" not in key and ".modules_to_save." not in key:
            digest.update(key.encode() + state[key].numpy().tobytes())
    return digest.hexdigest()


def assert_same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), [key for key in a if not torch.equal(a[key], b[key])]


@pytest.fixture(scope="module")
def lora_base(tmp_path_factory, pretrained_bert) -> str:
    """A copy of the tiny BERT backbone for these tests alone (one test changes its weights)."""
    path = tmp_path_factory.mktemp("lora_base") / "tiny-bert"
    shutil.copytree(pretrained_bert, path)
    return str(path)


@pytest.mark.parametrize("method", METHODS)
def test_starting_adapters_and_a_frozen_base(tmp_path, lora_base, method):
    recorder = Recorder()
    trainer, _ = train_lora(tmp_path / "run", lora_base, [recorder], ensemble_method=method)
    run = tmp_path / "run"
    bases = {base_digest(start) for start in recorder.starts} | {base_digest(trainer.model.state_dict())}
    assert len(bases) == 1  # the base never changes
    for member in range(3):
        files = {path.name for path in (run / "members" / f"member-{member:02d}").iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
        assert "model.safetensors" not in files  # the base is never written per member
        config = json.loads((run / "members" / f"member-{member:02d}" / "config.json").read_text())
        assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 3
        assert all("lora_" in key or "classifier" in key for key in adapter(run, member))
    starts = [start_adapter(start) for start in recorder.starts]
    assert all(not torch.any(value) for key, value in starts[0].items() if "lora_B" in key)  # PEFT's B = 0
    for member in (1, 2):
        if method == "starsse":
            assert_same(starts[member], adapter(run, 0))
        elif method == "sse":
            assert_same(starts[member], adapter(run, member - 1))
        else:  # a fresh LoRA (new A, B = 0) and a new head, drawn with the member's seed
            for key, value in starts[member].items():
                if "lora_B" in key:
                    assert not torch.any(value), key
                elif key.endswith("weight"):  # (the head's bias starts at 0 in every member)
                    assert all(not torch.equal(value, starts[other][key]) for other in range(member)), key
    finals = [adapter(run, member) for member in range(3)]
    assert not torch.equal(
        finals[1]["base_model.model.classifier.weight"], finals[2]["base_model.model.classifier.weight"]
    )


@pytest.mark.parametrize("method", METHODS)
def test_learning_rates_and_optimizer_state_as_for_full_models(tmp_path, pretrained_bert, method):
    settings = dict(
        ensemble_method=method, lr_scheduler_type="constant", cycle_steps=5, cycle_warmup_ratio=0.4,
        reset_optimizer_each_cycle=False,
    )  # fmt: skip
    full, lora = Recorder(), Recorder()
    train_text(tmp_path / "full", pretrained_bert, [full], **settings)
    train_lora(tmp_path / "lora" / "run", pretrained_bert, [lora], **settings)
    assert lora.lrs == full.lrs and len(lora.lrs) == 3
    for member in (1, 2):
        carried = lora.optimizer_states[member]
        if method == "local_de":
            assert carried == {}
            continue
        parent = 0 if method == "starsse" else member - 1
        saved = torch.load(tmp_path / f"lora/run/members/member-0{parent}/optimizer_state.pt", weights_only=True)
        assert len(carried) == len(saved["state"]) > 0
        for state, saved_state in zip(carried.values(), saved["state"].values()):
            assert torch.equal(state["exp_avg"], saved_state["exp_avg"])


@pytest.mark.parametrize("method", ["starsse", "local_de"])
def test_resume_after_a_kill_mid_member(tmp_path, lora_base, method):
    settings = dict(ensemble_method=method, cycle_steps=5, save_strategy="steps", save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train_lora(tmp_path / "run", lora_base, [StopAt(member=2, step=3)], **settings)
    run = tmp_path / "run"
    assert (run / "members/member-02/checkpoints/checkpoint-2/adapter_model.safetensors").is_file()
    recorder = Recorder()
    _, output = train_lora(run, lora_base, [recorder], **settings)
    steps = 6 if method == "local_de" else 5
    assert recorder.members == [2] and output.global_step == steps and len(recorder.lrs[0]) == steps - 2
    train_lora(tmp_path / "reference", lora_base, **settings)
    for member in range(3):
        assert_same(adapter(run, member), adapter(tmp_path / "reference", member))


def test_members_to_train_then_ensemble_and_soup(tmp_path, lora_base):
    run = tmp_path / "run"
    train_lora(run, lora_base, members_to_train=[0])
    train_lora(run, lora_base, members_to_train=[2])
    train_lora(run, lora_base, members_to_train=[1])
    entries = json.loads((run / "ensemble.json").read_text())["members"]
    assert [(e["index"], e["parent"], e["seed"]) for e in entries] == [(0, None, 0), (1, 0, 1), (2, 0, 2)]
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    assert type(ensemble).__name__ == "AdapterEnsembleForSequenceClassification"
    batch = tokenizer()(["w1 w2 w3", "w4 w5"], padding=True, return_tensors="pt")
    assert ensemble(**batch).logits.shape == (2, 3)
    soup = uniform_soup(run, tmp_path / "soup")
    assert type(soup).__name__ == "BertForSequenceClassification"


def test_the_run_header_pins_the_base_model(tmp_path, lora_base):
    run = tmp_path / "run"
    train_lora(run, lora_base, num_members=2)
    header = json.loads((run / "ensemble.json").read_text())
    assert header["base_model"] == lora_base and header["base_model_revision"] is None
    assert (
        header["base_model_sha256"] == hashlib.sha256(open(f"{lora_base}/model.safetensors", "rb").read()).hexdigest()
    )
    assert header["adapter"]["peft_type"] == "LORA" and header["adapter"]["r"] == 4
    assert header["adapter"]["target_modules"] == ["query", "value"]
    with pytest.raises(ValueError, match="adapter.r: 4 there, 8 now"):
        train_lora(run, lora_base, num_members=2, config=dict(r=8))

    original = open(f"{lora_base}/model.safetensors", "rb").read()
    torch.manual_seed(99)
    BertModel(bert_config()).save_pretrained(lora_base)  # the base at that path is now another model
    try:
        with pytest.raises(ValueError, match="base_model_sha256"):
            train_lora(run, lora_base, num_members=3)
        with pytest.raises(ValueError, match="is not the one the adapters of .* were trained on"):
            build_ensemble(run, tmp_path / "ensemble")
    finally:
        open(f"{lora_base}/model.safetensors", "wb").write(original)
    assert build_ensemble(run, tmp_path / "ensemble") is not None

    # a copy given as base_model= is checked too: another model is refused, a copy of the base is used
    torch.manual_seed(99)
    BertModel(bert_config()).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="is not the one the adapters of .* were trained on"):
        build_ensemble(run, base_model=str(tmp_path / "other"))
    shutil.copytree(lora_base, tmp_path / "copy")
    assert build_ensemble(run, base_model=str(tmp_path / "copy")).config.base_model == str(tmp_path / "copy")


def test_full_model_and_adapter_members_never_share_a_run(tmp_path, lora_base):
    train_text(tmp_path / "full", lora_base, num_members=2)
    with pytest.raises(ValueError, match="holds a run of full-model members, but this run trains PEFT adapter"):
        train_lora(tmp_path / "full" / "run", lora_base, num_members=2)
    train_lora(tmp_path / "lora" / "run", lora_base, num_members=2)
    with pytest.raises(ValueError, match="holds a run of PEFT adapter members, but this run trains full-model"):
        train_text(tmp_path / "lora", lora_base, num_members=2)
    trainer = StarSSETrainer(
        model=load_text_model(lora_base), args=make_args(tmp_path / "adopt"), train_dataset=text_dataset()
    )
    with pytest.raises(ValueError, match="holds a PEFT adapter but the model being trained is a full model"):
        trainer.adopt_member(tmp_path / "lora" / "run" / "members" / "member-00")


@pytest.mark.parametrize("with_model_init", [False, True])
def test_lora_image_members_with_batchnorm(tmp_path, with_model_init):
    # tf_padding=False: transformers' TF-style padding reads the convolution's stride, which a LoRA wrapper hides
    config = MobileNetV2Config(num_channels=3, image_size=16, depth_multiplier=0.25, num_labels=10, tf_padding=False)
    MobileNetV2ForImageClassification(config).save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*expand_1x1\.convolution", modules_to_save=["classifier"]
    )

    def model_init():
        return peft.get_peft_model(load_image_model(str(tmp_path / "base")), lora)

    base = base_digest(model_init().state_dict())
    trainer = StarSSETrainer(
        **(dict(model_init=model_init) if with_model_init else dict(model=model_init())),
        args=make_args(tmp_path / "run", num_members=2, per_device_train_batch_size=4, ensemble_method="local_de"),
        train_dataset=image_dataset(),
        callbacks=[BatchNormRecalibrationCallback()],
    )
    trainer.train()
    assert base_digest(trainer.model.state_dict()) == base  # BatchNorm statistics included: the base is held fixed
    batchnorms = [module for module in trainer.model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert batchnorms and not any(module._forward_pre_hooks for module in batchnorms)  # held only while training
    saved = adapter(tmp_path / "run", 1)
    assert any("lora_A" in key for key in saved) and "base_model.model.classifier.weight" in saved
    assert not any("running_mean" in key for key in saved)  # BatchNorm statistics belong to the frozen base
    ensemble = build_ensemble(tmp_path / "run", tmp_path / "ensemble")
    assert ensemble(pixel_values=image_dataset(4)[:4]["pixel_values"]).logits.shape == (4, 3)


def two_adapters(base):
    model = lora_model(base)
    model.add_adapter("other", peft.LoraConfig(**LORA))
    return model


def prompt_tuning(base):
    return peft.get_peft_model(
        load_text_model(base), peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2)
    )


def loha(base):
    config = peft.LoHaConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    return peft.get_peft_model(load_text_model(base, seed=None), config)


def unnamed_base(base):
    from transformers import BertForSequenceClassification

    return peft.get_peft_model(BertForSequenceClassification(bert_config(num_labels=3)), peft.LoraConfig(**LORA))


@pytest.mark.parametrize(
    "make_model, method, message",
    [
        (two_adapters, "starsse", "holds 2 adapters"),
        (prompt_tuning, "starsse", "PROMPT_TUNING .prompt learning. adapters are not supported"),
        (unnamed_base, "starsse", "base has no name or path"),
        (lambda base: lora_model(base, init_lora_weights="pissa"), "starsse", "'pissa' rewrites the base model's"),
        (loha, "local_de", "not for LOHA with init_lora_weights=True. Pass model_init"),
    ],
)
def test_peft_models_that_cannot_be_members_are_refused(tmp_path, lora_base, make_model, method, message):
    with pytest.raises(ValueError, match=message) as error:
        StarSSETrainer(model=make_model(lora_base), args=make_args(tmp_path / "run", ensemble_method=method),
                       train_dataset=text_dataset())  # fmt: skip
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "ensemble.json").exists()


def test_an_unnamed_base_is_refused_for_a_single_member_too(tmp_path, lora_base):
    with pytest.raises(ValueError, match="base has no name or path"):
        StarSSETrainer(model=unnamed_base(lora_base), args=make_args(tmp_path / "run", num_members=1))


def test_local_de_of_other_adapters_with_model_init(tmp_path, lora_base):
    trainer = StarSSETrainer(
        model_init=lambda: loha(lora_base),
        args=make_args(tmp_path / "run", ensemble_method="local_de", num_members=2),
        train_dataset=text_dataset(),
    )
    trainer.train()
    files = [load_file(tmp_path / f"run/members/member-0{m}/adapter_model.safetensors") for m in (0, 1)]
    assert any("hada_w1_a" in key for key in files[0])
    assert not all(torch.equal(files[0][key], files[1][key]) for key in files[0])


def test_a_relative_base_path_is_pinned_absolute(tmp_path, lora_base, monkeypatch):
    shutil.copytree(lora_base, tmp_path / "models" / "tb")
    monkeypatch.chdir(tmp_path)
    train_lora(tmp_path / "run", "models/tb", num_members=2)
    config = json.loads((tmp_path / "run/members/member-01/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "models" / "tb")
    assert json.loads((tmp_path / "run/ensemble.json").read_text())["base_model"] == str(tmp_path / "models" / "tb")
    monkeypatch.chdir(tmp_path / "models")  # another working directory: the base is still found
    assert build_ensemble(tmp_path / "run", tmp_path / "ensemble") is not None


def test_a_newer_peft_config_field_does_not_block_resume(tmp_path, lora_base):
    run = tmp_path / "run"
    train_lora(run, lora_base, num_members=2)
    manifest = json.loads((run / "ensemble.json").read_text())
    del manifest["adapter"]["use_dora"]  # as written by a peft without that field
    (run / "ensemble.json").write_text(json.dumps(manifest))
    recorder = Recorder()
    train_lora(run, lora_base, [recorder], num_members=3)
    assert recorder.members == [2]


def test_an_adopted_peft_save_gets_its_model_config(tmp_path, lora_base):
    model = lora_model(lora_base)
    model.save_pretrained(tmp_path / "plain")  # PEFT alone: no config.json
    trainer = StarSSETrainer(
        model=lora_model(lora_base), args=make_args(tmp_path / "run"), train_dataset=text_dataset()
    )
    trainer.adopt_member(tmp_path / "plain")
    config = json.loads((tmp_path / "run/members/member-00/config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]


def test_a_model_init_that_changes_the_adapter_is_refused(tmp_path, lora_base):
    shared = dict(LORA, modules_to_save=["pooler"])  # one list for every call: PEFT extends it in place

    def model_init():
        return peft.get_peft_model(load_text_model(lora_base, seed=None), peft.LoraConfig(**shared))

    args = make_args(tmp_path / "run", ensemble_method="local_de", num_members=2)
    with pytest.raises(ValueError, match="model_init built member 0 with another PEFT config than the run.s") as error:
        StarSSETrainer(model_init=model_init, args=args, train_dataset=text_dataset()).train()
    assert "\n" not in str(error.value)
    assert json.loads((tmp_path / "run/ensemble.json").read_text())["members"] == []  # before any training
