"""Training works for whatever `Trainer` trains, beyond StarSSE with full members (issue 27, item 1): LoRA members of
the newer task families, SSE and Local DE, resume and job arrays (`members_to_train`); and adapter ensembles over
one base for each of those families, through their Auto class, their outputs and their stock pipeline (item 2).

Methods run for token classification and extractive QA only: their heads and labels are the ones the other families
do not share (per-token labels padded by a collator, two position heads); the method's member plan is the same for
every family and is tested in depth on sequence classification (test_trainer.py, test_adapter_training.py).
Branch-parallel training (one process per branch) is left to test_distributed.py, which launches processes: too slow to
repeat per family; job arrays share its run-directory locking and run here in one process."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from test_task_families import build_family
from test_trainer import Recorder, StopAt
from transformers import AutoConfig, BertForMaskedLM, Wav2Vec2FeatureExtractor, default_data_collator, pipeline
from transformers.pipelines import SUPPORTED_TASKS

from hf_starsse import StarSSETrainer, build_ensemble, load_members
from hf_starsse.tasks import family_of_architecture

from conftest import make_args, tokenizer

peft = pytest.importorskip("peft")

NEW_FAMILIES = ["multi_label", "regression", "token", "multiple_choice", "question_answering", "audio"]
# The head modules each family's members train and save (PEFT's task_type adds them; without one, modules_to_save).
HEADS = {"question_answering": {"qa_outputs"}, "audio": {"projector", "classifier"}}
HEADS.update({family: {"classifier"} for family in NEW_FAMILIES if family not in HEADS})
LABEL_KEYS = ("labels", "start_positions", "end_positions")
TEXT = "w5 w6 w7 w8 w9"
# The call options of each family's stock pipeline: every label's score, or a regression's raw value.
PIPELINE_OPTIONS = {
    "audio": dict(top_k=None),
    "multi_label": dict(top_k=None),
    "regression": dict(function_to_apply="none"),
}


def seeded_family(family: str, pretrained_bert: str) -> tuple:
    """`build_family` with the new head drawn from seed 0, so that two runs start alike."""
    torch.manual_seed(0)
    return build_family(family, pretrained_bert)


def processor(family: str):
    return Wav2Vec2FeatureExtractor(return_attention_mask=False) if family == "audio" else tokenizer()


def lora_model(family: str, pretrained_bert: str, base_dir) -> tuple:
    """A LoRA model of `family` with the family's PEFT task_type where PEFT has one (else its head in
    modules_to_save), its data and collator. A model built from config is saved to `base_dir` first: adapters name
    their base by its path."""
    model, data, collator = seeded_family(family, pretrained_bert)
    if not model.name_or_path:
        model.save_pretrained(base_dir)
        model = type(model).from_pretrained(base_dir)
    task_type = family_of_architecture(type(model).__name__).peft_task_type
    config = peft.LoraConfig(
        r=4, lora_alpha=8, task_type=task_type, modules_to_save=None if task_type else sorted(HEADS[family]),
        target_modules=["q_proj", "v_proj"] if family == "audio" else ["query", "value"],
    )  # fmt: skip
    return peft.get_peft_model(model, config), data, collator


def train(built: tuple, run, callbacks=(), processing_class=None, **kwargs):
    """Train the (model, data, collator) `built` into `run` with K=3 and short cycles unless `kwargs` say otherwise."""
    model, data, collator = built
    trainer = StarSSETrainer(
        model=model, args=make_args(run, **{"cycle_steps": 2, **kwargs}), train_dataset=data, data_collator=collator,
        processing_class=processing_class, callbacks=list(callbacks),
    )  # fmt: skip
    return trainer.train()


def member_file(run, member: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / "members" / f"member-{member:02d}" / name))


def parents_and_steps(run) -> list[tuple]:
    return [(m["index"], m["parent"], m["steps"]) for m in json.loads((run / "ensemble.json").read_text())["members"]]


def model_inputs(data, collator, count: int = 4) -> tuple[dict, dict]:
    """The first `count` rows as a batch: the model inputs and the labels."""
    batch = (collator or default_data_collator)([data[index] for index in range(count)])
    return {k: v for k, v in batch.items() if k not in LABEL_KEYS}, {k: v for k, v in batch.items() if k in LABEL_KEYS}


def probabilities(family: str, output) -> dict[str, torch.Tensor]:
    """What the members' outputs are averaged as: softmax probabilities (of each start and end for QA), per-label
    sigmoids (multi-label) or values (regression); the ensemble's own logits map to its pooled ones the same way."""
    if family == "question_answering":
        return {side: output[f"{side}_logits"].softmax(-1) for side in ("start", "end")}
    logits = output["logits"]
    return {"logits": {"regression": logits, "multi_label": logits.sigmoid()}.get(family, logits.softmax(-1))}


# ----- LoRA members of every newer family, and their adapter ensembles ---------------------------------------------


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def lora_run(request, tmp_path_factory, pretrained_bert) -> tuple:
    """A K=3 StarSSE run of LoRA members of one family: (family, run directory, data, collator)."""
    family, root = request.param, tmp_path_factory.mktemp(f"lora_{request.param}")
    built = lora_model(family, pretrained_bert, root / "base")
    output = train(built, root / "run", processing_class=processor(family))
    assert output.metrics["train_members"] == 3
    return family, root / "run", *built[1:]


def test_lora_members_of_every_family(lora_run):
    family, run, _, _ = lora_run
    assert parents_and_steps(run) == [(0, None, 3), (1, 0, 2), (2, 0, 2)]
    heads = []
    for member in range(3):
        member_dir = run / "members" / f"member-{member:02d}"
        assert not (member_dir / "model.safetensors").exists()  # the base is never written per member
        architecture = json.loads((member_dir / "config.json").read_text())["architectures"][0]
        assert family_of_architecture(architecture) is not None
        saved = member_file(run, member, "adapter_model.safetensors")
        assert any("lora_A" in key for key in saved)
        head = {key: value for key, value in saved.items() if "lora_" not in key}
        assert {key.split(".")[2] for key in head} == HEADS[family]  # base_model.model.<head>.<...>
        heads.append(head)
    assert any(not torch.equal(heads[1][key], heads[2][key]) for key in heads[1])  # branches trained apart


def test_adapter_ensembles_pool_the_members(lora_run, tmp_path):
    family, run, data, collator = lora_run
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    task = family_of_architecture(type(ensemble).__name__)
    assert type(ensemble).__name__ == task.adapter_ensemble_class
    loaded = task.auto_model_class().from_pretrained(tmp_path / "ensemble")
    assert type(loaded) is type(ensemble)
    inputs, labels = model_inputs(data, collator)
    base_dir = json.loads((run / "ensemble.json").read_text())["base_model"]
    members = []
    for member_dir in load_members(run):
        config = AutoConfig.from_pretrained(member_dir)
        base = getattr(transformers, config.architectures[0]).from_pretrained(base_dir, config=config)
        members.append(peft.PeftModel.from_pretrained(base, str(member_dir)).eval())
    with torch.no_grad():
        expected = [probabilities(family, member(**inputs)) for member in members]
        output = loaded(**inputs, **labels)
    for key, value in probabilities(family, output).items():
        torch.testing.assert_close(value, torch.stack([e[key] for e in expected]).mean(0), rtol=1e-5, atol=1e-6)
    assert output.loss is not None and torch.isfinite(output.loss)


def test_adapter_ensembles_in_the_stock_pipelines(lora_run, tmp_path):
    family, run, data, _ = lora_run
    ensemble = build_ensemble(run, tmp_path / "ensemble")
    task = family_of_architecture(type(ensemble).__name__)
    if task.ensemble_pipeline is None:  # multiple choice, extractive QA: transformers has no pipeline for them
        assert task.name not in SUPPORTED_TASKS
        return
    classifier = pipeline(task.name, model=str(tmp_path / "ensemble"))
    if family == "token":
        assert_tagger_scores_are_the_ensembles(classifier, ensemble)
        return
    raw = torch.tensor(data[0]["input_values"]).numpy() if family == "audio" else TEXT
    results = classifier(raw, return_uncertainty=True, **PIPELINE_OPTIONS[family])
    with torch.no_grad():  # the ensemble's probabilities (sigmoids for multi-label; its mean for regression)
        values = probabilities(family, ensemble(**processor(family)(raw, return_tensors="pt")))["logits"][0]
    assert sorted(r["score"] for r in results) == pytest.approx(sorted(values.tolist()), rel=1e-5)
    uncertainty = "variance" if family == "regression" else "mutual_information"
    assert len(results) == len(values) and all(r[uncertainty] >= 0 for r in results)


def assert_tagger_scores_are_the_ensembles(tagger, ensemble) -> None:
    """Every aggregation strategy runs with uncertainty; without aggregation each token's score is the ensemble's
    probability of its label."""
    with torch.no_grad():
        probs = ensemble(**tokenizer()(TEXT, return_tensors="pt")).logits.exp()[0]
    for strategy in ("none", "simple", "first", "average", "max"):
        entities = tagger(TEXT, aggregation_strategy=strategy, ignore_labels=[], return_uncertainty=True)
        assert entities and all(e["mutual_information"] >= 0 and 0 <= e["disagreement"] <= 1 for e in entities)
        if strategy == "none":
            assert [e["score"] for e in entities] == pytest.approx([probs[e["index"]].max().item() for e in entities])


def test_adapters_of_a_family_without_ensembles_are_refused_in_one_line(tmp_path, pretrained_bert):
    model = peft.get_peft_model(BertForMaskedLM.from_pretrained(pretrained_bert), peft.LoraConfig(r=2))
    model.config.architectures = ["BertForMaskedLM"]
    members = [tmp_path / f"member-{index}" for index in range(2)]
    for member in members:
        model.save_pretrained(member)
        model.config.save_pretrained(member)
    with pytest.raises(ValueError, match=r"'BertForMaskedLM' is of no task family .*token-classification") as error:
        build_ensemble(members)
    assert "\n" not in str(error.value)


def test_a_new_head_the_adapter_does_not_save_is_refused_before_training(tmp_path, pretrained_bert):
    model, data, _ = build_family("multiple_choice", pretrained_bert)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    with pytest.raises(ValueError, match=r"classifier.weight.*LoraConfig\(modules_to_save=\['classifier'\]\)"):
        StarSSETrainer(model=model, args=make_args(tmp_path / "run"), train_dataset=data)
    assert not (tmp_path / "run" / "members").exists()


# ----- SSE and Local DE, resume, job arrays -------------------------------------------------------------------


@pytest.mark.parametrize("family", ["token", "question_answering"])
@pytest.mark.parametrize("method", ["sse", "local_de"])
def test_sse_and_local_de_members_start_where_their_method_says(tmp_path, pretrained_bert, family, method):
    recorder, run = Recorder(), tmp_path / "run"
    train(seeded_family(family, pretrained_bert), run, [recorder], ensemble_method=method)
    head = next(iter(HEADS[family]))
    if method == "sse":  # each cycle starts from the member before it
        assert parents_and_steps(run) == [(0, None, 3), (1, 0, 2), (2, 1, 2)]
        for member in (1, 2):
            saved = member_file(run, member - 1)
            assert all(torch.equal(recorder.starts[member][key], value) for key, value in saved.items())
        return
    assert parents_and_steps(run) == [(0, None, 3), (1, None, 3), (2, None, 3)]
    for member in (1, 2):  # the pre-trained backbone again, with a head of its own
        start, first = recorder.starts[member], recorder.starts[0]
        assert all(torch.equal(start[key], first[key]) for key in start if not key.startswith(head))
        assert not torch.equal(start[f"{head}.weight"], first[f"{head}.weight"])


def test_lora_local_de_draws_a_fresh_qa_head_per_member(tmp_path, pretrained_bert):
    train(
        lora_model("question_answering", pretrained_bert, tmp_path / "base"),
        tmp_path / "run",
        ensemble_method="local_de",
    )
    assert parents_and_steps(tmp_path / "run") == [(0, None, 3), (1, None, 3), (2, None, 3)]
    key = "base_model.model.qa_outputs.weight"
    heads = [member_file(tmp_path / "run", member, "adapter_model.safetensors")[key] for member in range(3)]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    assert type(build_ensemble(tmp_path / "run")).__name__ == "AdapterEnsembleForQuestionAnswering"


def test_an_interrupted_token_classification_run_resumes(tmp_path, pretrained_bert):
    settings = dict(cycle_steps=3, save_strategy="steps", save_steps=1)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # member 2 stops in its second step (before its save), 0 and 1 complete
        train(seeded_family("token", pretrained_bert), run, [StopAt(member=2, step=2)], **settings)
    assert [index for index, *_ in parents_and_steps(run)] == [0, 1]
    assert (run / "members/member-02/checkpoints/checkpoint-1/model.safetensors").is_file()
    recorder = Recorder()
    output = train(seeded_family("token", pretrained_bert), run, [recorder], **settings)
    assert recorder.members == [2] and output.global_step == 3 and len(recorder.lrs[0]) == 2  # from checkpoint-1
    train(seeded_family("token", pretrained_bert), tmp_path / "reference", **settings)
    for member in range(3):
        resumed, reference = member_file(run, member), member_file(tmp_path / "reference", member)
        assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in resumed)


def test_multiple_choice_members_as_job_arrays(tmp_path, pretrained_bert):
    """Separate jobs with `members_to_train` share one run directory and train what one run trains."""
    for members in ([0], [2], [1]):
        train(seeded_family("multiple_choice", pretrained_bert), tmp_path / "run", members_to_train=members)
    train(seeded_family("multiple_choice", pretrained_bert), tmp_path / "reference")
    assert parents_and_steps(tmp_path / "run") == parents_and_steps(tmp_path / "reference")
    for member in range(3):
        jobs, reference = member_file(tmp_path / "run", member), member_file(tmp_path / "reference", member)
        assert all(torch.equal(jobs[key], reference[key]) for key in reference)
