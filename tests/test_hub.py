import json
import os
import re
import shutil
import uuid
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import AutoModelForSequenceClassification, TrainingArguments

from hf_starsse import StarSSETrainer, build_ensemble, greedy_soup, push_ensemble_to_hub, uniform_soup
from hf_starsse.cards.model_card import save_card_info
from hf_starsse.ensemble import AdapterEnsembleConfig
from hf_starsse.evaluation.run_evaluation import evaluate_ensemble
from hf_starsse.hub.publish import model_files

from conftest import load_text_model, make_args, text_dataset, tokenizer
from hub_server import LocalHub

FAKE_TOKEN = "hf_FAKEtokenXYZ0123456789abcdefghij"
LOADABLE = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
HUB_BASE = "org/tiny-bert"  # the Hub id declared for the LoRA run's base model, which it knows by a local path
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}


def assert_token_never_leaked(hub: LocalHub, *texts: str, roots=()) -> None:
    """The token reached the server in every request's Authorization header, and nowhere else."""
    writes = [auth for method, _, auth in hub.requests if method == "POST"]
    assert writes and all(auth == f"Bearer {FAKE_TOKEN}" for auth in writes)
    assert all(FAKE_TOKEN.encode() not in content for commit in hub.commits for content in commit.files.values())
    assert all(FAKE_TOKEN not in text for text in texts)
    for root in roots:
        for file in Path(root).rglob("*"):
            assert not file.is_file() or FAKE_TOKEN.encode() not in file.read_bytes(), file


def write_files(files: dict[str, bytes], target: Path) -> Path:
    """A repository's files written into `target`, as a download places them."""
    for name, content in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(content)
    return target


def check_card(content: bytes, repo_id: str, tmp_path: Path) -> ModelCard:
    """The card parses, its metadata is complete and consistent, and its usage examples load from the repository."""
    (tmp_path / "README.md").write_bytes(content)
    card = ModelCard.load(tmp_path / "README.md")
    metadata = card.data.to_dict()
    assert card.data.library_name == "transformers" and "hf_starsse" in card.data.tags
    assert ModelCardData(**metadata).to_dict() == metadata
    model_name, results = model_index_to_eval_results(metadata["model-index"])
    assert model_name and results[0].metric_type == "accuracy" and results[0].dataset_split == "test"
    assert f'from_pretrained("{repo_id}"' in card.text and "path/to/" not in card.text
    return card


def test_ensemble_and_soup_cards(tmp_path, text_run):
    run = text_run.args.output_dir
    rows = evaluate_ensemble(run, {"test": text_dataset(n=16, seed=3)}, output_dir=run)
    build_ensemble(run, tmp_path / "ensemble")
    card = ModelCard.load(tmp_path / "ensemble/README.md")
    assert card.data.library_name == "transformers" and card.data.base_model is None  # a local path is not an id
    assert {"hf_starsse", "starsse", "ensemble", "text-classification"} <= set(card.data.tags)
    (result,) = card.data.eval_results
    full = next(r for r in rows if r["model"] == "ensemble" and r["size"] == 3)
    assert (result.metric_type, result.dataset_split) == ("accuracy", "test")
    assert result.metric_value == full["accuracy"] and card.data.model_name
    assert "| 2 | 0 | 2 | 3 |" in card.text  # member 2: parent 0, seed 2, 3 steps
    assert "trust_remote_code=True" in card.text and "sadrtdinov2023stay" in card.text
    assert "| test | uniform_soup | 3 |" in card.text

    uniform_soup(run, tmp_path / "soup")
    soup = ModelCard.load(tmp_path / "soup/README.md")
    assert {"hf_starsse", "model-soup"} <= set(soup.data.tags)
    assert soup.data.eval_results[0].metric_value == next(r for r in rows if r["model"] == "uniform_soup")["accuracy"]
    members = [Path(run) / f"members/member-0{i}" for i in range(3)]
    _, chosen = greedy_soup(members, text_dataset(n=16, seed=4), out_dir=tmp_path / "greedy")
    greedy = ModelCard.load(tmp_path / "greedy/README.md")
    assert (
        "greedy model soup" in greedy.text
        and f"chosen by the greedy soup: {', '.join(map(str, chosen))}" in greedy.text
    )
    assert greedy.data.eval_results is None  # no evaluation next to a list of member directories


def test_push_run_with_soup_and_members(local_hub, text_run, tmp_path, capfd, caplog):
    run = Path(text_run.args.output_dir)
    evaluate_ensemble(run, {"test": text_dataset(n=16, seed=3)})
    uploads = push_ensemble_to_hub(
        run,
        "team/starsse-ensemble",
        soup_repo_id="team/starsse-soup",
        members_as_subfolders=True,
        private=True,
        revision="v1",
        commit_message="First ensemble",
        token=FAKE_TOKEN,
    )
    assert [upload.repo_id for upload in uploads] == ["team/starsse-ensemble", "team/starsse-soup"]
    assert [(c.repo_id, c.revision, c.message) for c in local_hub.commits] == [
        ("team/starsse-ensemble", "v1", "First ensemble"),
        ("team/starsse-soup", "v1", "First ensemble"),
    ]
    assert all(repo.private for repo in local_hub.repos.values())
    assert local_hub.files("team/starsse-ensemble") == {}  # main untouched: the commit went to the new branch
    files = local_hub.files("team/starsse-ensemble", "v1")
    root = {name for name in files if "/" not in name}
    assert LOADABLE | {"README.md", "ensemble.json", "evaluation.json", "evaluation.csv"} <= root
    assert {"configuration_ensemble.py", "modeling_ensemble.py"} <= root  # remote code, for users without hf_starsse
    for index in range(3):
        member = run / f"members/member-0{index}"
        assert {name.split("/")[-1] for name in files if name.startswith(f"members/member-0{index}/")} >= LOADABLE
        assert files[f"members/member-0{index}/model.safetensors"] == (member / "model.safetensors").read_bytes()
    for name in files | local_hub.files("team/starsse-soup", "v1"):
        assert Path(name).suffix not in {".bin", ".pt", ".pth", ".pkl"} and "checkpoint" not in name, name
        assert Path(name).name not in {"trainer_state.json", "training_args.bin", "optimizer_state.pt"}, name
    manifest = json.loads((run / "ensemble.json").read_text())  # pushed without the base model's local path
    assert json.loads(files["ensemble.json"]) == {**manifest, "base_model": Path(manifest["base_model"]).name}

    downloaded = write_files(files, tmp_path / "downloaded")
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    pushed = AutoModelForSequenceClassification.from_pretrained(downloaded).eval()
    torch.testing.assert_close(pushed(**batch).logits, build_ensemble(run)(**batch).logits)
    card = check_card(files["README.md"], "team/starsse-ensemble", tmp_path)
    assert {"starsse", "ensemble"} <= set(card.data.tags)
    soup = local_hub.files("team/starsse-soup", "v1")
    assert LOADABLE | {"README.md", "soup.json"} <= set(soup)
    assert "model-soup" in check_card(soup["README.md"], "team/starsse-soup", tmp_path).data.tags
    captured = capfd.readouterr()
    assert_token_never_leaked(local_hub, captured.out, captured.err, caplog.text, roots=(tmp_path, run))


def test_dry_run_plans_without_network(local_hub, text_run, tmp_path, capsys):
    run = Path(text_run.args.output_dir)
    uniform_soup(run, tmp_path / "soup")
    (upload,) = push_ensemble_to_hub(tmp_path / "soup", "team/soup", revision="v2", dry_run=True)
    assert local_hub.requests == [] and local_hub.repos == {}  # no server contacted, no token needed
    assert upload.commit is None and upload.revision == "v2"
    assert upload.files["model.safetensors"] == str(tmp_path / "soup/model.safetensors")
    assert upload.files["README.md"] == "<model card>/README.md" and "soup.json" in upload.files
    (upload,) = push_ensemble_to_hub(run, "team/ens", members_as_subfolders=True, dry_run=True)
    assert upload.files["config.json"] == f"<ensemble built from {run}>/config.json"
    assert upload.files["members/member-02/model.safetensors"] == str(run / "members/member-02/model.safetensors")
    text = upload.describe()
    assert text.splitlines()[0] == "team/ens (revision main, visibility by default): 'Upload ensemble with hf_starsse'"
    member = re.escape(f"{run}/members/member-01/config.json")
    assert re.search(rf"\n  members/member-01/config.json +<- {member}\n", text)
    assert local_hub.requests == []


def test_model_files_leave_out_pickles_and_training_files(text_run, tmp_path):
    member = tmp_path / "member"
    shutil.copytree(Path(text_run.args.output_dir) / "members/member-00", member)
    pickles = ("training_args.bin", "optimizer_state.pt", "rng_state.pth")
    for name in (*pickles, ".training.lock", "checkpoints/checkpoint-1/x.json"):
        (member / name).parent.mkdir(parents=True, exist_ok=True)
        (member / name).write_text("x")
    names = {file.name for file in model_files(member)}
    assert LOADABLE <= names and (member / "trainer_state.json").is_file()
    assert names.isdisjoint({"trainer_state.json", "training_args.bin", "optimizer_state.pt", "rng_state.pth"})
    assert not any(name.startswith(".") or name == "x.json" for name in names)


def test_usage_snippet_names_the_repo_only_when_pushed(local_hub, text_run, tmp_path):
    build_ensemble(text_run.args.output_dir, tmp_path / "ensemble")
    local = (tmp_path / "ensemble/README.md").read_text()
    assert 'from_pretrained("path/to/ensemble")' in local and "team/usage" not in local  # a local save: placeholder
    push_ensemble_to_hub(tmp_path / "ensemble", "team/usage", token=FAKE_TOKEN)
    pushed = local_hub.files("team/usage")["README.md"].decode()
    assert (
        'from_pretrained("team/usage")' in pushed and 'pipeline("text-classification", model="team/usage")' in pushed
    )
    assert 'from_pretrained("team/usage", trust_remote_code=True)' in pushed and "path/to/" not in pushed
    assert (tmp_path / "ensemble/README.md").read_text() == local  # the local card is left as it was


@pytest.mark.parametrize(
    "options,message",
    [
        ({"repo_id": "has space/model"}, "repo_id='has space/model' is not a valid Hub repository id"),
        ({"repo_id": "a/b/c"}, "is not a valid Hub repository id"),
        ({"soup_repo_id": "team/ens"}, "soup_repo_id must differ from repo_id"),
        ({"soup_repo_id": "team/-bad-"}, "soup_repo_id='team/-bad-' is not a valid"),
        ({"soup_path": "soup"}, "soup_path needs soup_repo_id"),
        ({"soup_repo_id": "team/soup", "soup_path": "."}, "is not a saved soup"),
        ({}, "No Hugging Face token found: pass token=..., set HF_TOKEN"),
    ],
)
def test_bad_push_inputs_fail_before_any_work(local_hub, text_run, options, message):
    options = {"repo_id": "team/ens", **options}
    with pytest.raises(ValueError, match=re.escape(message)):
        push_ensemble_to_hub(text_run.args.output_dir, **options)
    assert local_hub.requests == []


def test_push_refuses_other_folders(local_hub, pretrained_bert, text_run, tmp_path):
    with pytest.raises(ValueError, match="is neither a run directory"):
        push_ensemble_to_hub(pretrained_bert, "team/x", dry_run=True)
    build_ensemble(text_run.args.output_dir, tmp_path / "ensemble")
    with pytest.raises(ValueError, match="members_as_subfolders needs a run directory"):
        push_ensemble_to_hub(tmp_path / "ensemble", "team/x", members_as_subfolders=True, dry_run=True)
    with pytest.raises(ValueError, match="A saved ensemble holds no soup"):
        push_ensemble_to_hub(tmp_path / "ensemble", "team/x", soup_repo_id="team/y", dry_run=True)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        push_ensemble_to_hub(tmp_path / "missing", "team/x", dry_run=True)


def test_trainer_push_to_hub_after_training(local_hub, text_run, monkeypatch, capfd, caplog):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # the token from the environment, as Trainer users set it
    commit = text_run.push_to_hub()
    repo_id = f"tester/{Path(text_run.args.output_dir).name}"  # the Trainer's default: output_dir's name
    assert commit.oid and local_hub.commits[-1].message == "End of training"
    files = local_hub.files(repo_id)
    config = json.loads(files["config.json"])
    assert (config["model_type"], config["num_members"]) == ("starsse_ensemble", 3)
    assert {"README.md", "ensemble.json", "model.safetensors"} <= set(files) and not any("/" in f for f in files)
    future = text_run.push_to_hub(commit_message="Again", blocking=False)
    assert future.result().oid and local_hub.commits[-1].message == "Again"
    captured = capfd.readouterr()
    assert_token_never_leaked(local_hub, captured.out, captured.err, caplog.text, roots=(text_run.args.output_dir,))


def test_push_to_hub_during_training_needs_hub_strategy_end(local_hub, pretrained_bert, tmp_path):
    hub_options = dict(push_to_hub=True, hub_model_id="team/k2", hub_token=FAKE_TOKEN, hub_private_repo=True)
    args = make_args(tmp_path / "refused", num_members=2, **hub_options)
    with pytest.raises(ValueError, match="Set hub_strategy='end'"):
        StarSSETrainer(model=load_text_model(pretrained_bert), args=args, train_dataset=text_dataset())
    args = make_args(tmp_path / "run", num_members=2, hub_strategy="end", hub_revision="dev", **hub_options)
    trainer = StarSSETrainer(model=load_text_model(pretrained_bert), args=args, train_dataset=text_dataset())
    assert local_hub.repos["team/k2"].private is True  # created by the constructor, as Trainer does
    trainer.train()
    assert local_hub.commits == []  # nothing pushed while the members train
    trainer.push_to_hub(commit_message="Two members")
    (commit,) = local_hub.commits
    assert (commit.repo_id, commit.revision, commit.message) == ("team/k2", "dev", "Two members")
    assert json.loads(commit.files["config.json"])["num_members"] == 2


@pytest.mark.parametrize("single", [False, True], ids=["TrainingArguments", "num_members=1"])
def test_without_ensemble_push_is_the_trainers(local_hub, pretrained_bert, tmp_path, monkeypatch, single):
    options = dict(output_dir=str(tmp_path / "plain"), report_to="none", use_cpu=True, hub_token=FAKE_TOKEN)
    args = make_args(num_members=1, **options) if single else TrainingArguments(**options)
    trainer = StarSSETrainer(model=load_text_model(pretrained_bert), args=args, processing_class=tokenizer())
    trainer.push_to_hub(commit_message="Plain")
    files = local_hub.files("tester/plain")
    assert local_hub.commits[0].message == "Plain" and "model.safetensors" in files
    assert "training_args.bin" in files and "ensemble.json" not in files  # Trainer's own upload of output_dir


@pytest.mark.filterwarnings("ignore:Could not find a config file in org/tiny-bert")  # PEFT, offline
def test_push_adapter_run_holds_the_adapters_not_the_base(local_hub, lora_run, tmp_path, monkeypatch):
    peft = pytest.importorskip("peft")
    uploads = push_ensemble_to_hub(
        lora_run,
        "team/lora-ensemble",
        soup_repo_id="team/lora-soup",
        members_as_subfolders=True,
        base_model=HUB_BASE,
        token=FAKE_TOKEN,
    )
    assert [upload.repo_id for upload in uploads] == ["team/lora-ensemble", "team/lora-soup"]
    files = local_hub.files("team/lora-ensemble")
    members, adapters = [f"members/member-0{i}" for i in range(3)], [f"adapters/member_{i}" for i in range(3)]
    # the only weights: the adapters, once in the ensemble and once per member; nothing of the base model
    weights = {name for name in files if name.endswith((".safetensors", ".bin"))}
    assert weights == {f"{folder}/adapter_model.safetensors" for folder in members + adapters}
    assert not any(name.startswith("base/") for name in files)
    for member in members:
        assert {name.removeprefix(f"{member}/") for name in files if name.startswith(member)} == (
            ADAPTER_FILES | TOKENIZER_FILES | {"config.json"}
        )  # the member's model config (label names), neither PEFT's card nor the Trainer's files
        weights = (lora_run / member / "adapter_model.safetensors").read_bytes()
        assert files[f"{member}/adapter_model.safetensors"] == weights
        local = json.loads((lora_run / member / "adapter_config.json").read_text())
        assert json.loads(files[f"{member}/adapter_config.json"]) == {**local, "base_model_name_or_path": HUB_BASE}
    config = json.loads(files["config.json"])
    assert (config["model_type"], config["base_model"], config["include_base"]) == (
        "starsse_adapter_ensemble",
        HUB_BASE,
        False,
    )
    assert json.loads(files["ensemble.json"])["base_model"] == HUB_BASE
    card = check_card(files["README.md"], "team/lora-ensemble", tmp_path)
    assert card.data.base_model == HUB_BASE and f'"{HUB_BASE}", num_labels=3' in card.text

    # what was pushed loads: each member with PEFT alone, the ensemble once the base is there (from the Hub: here the
    # local copy its config's sha256 accepts), the soup as a plain model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # PEFT would look the base up on the Hub while loading
    repo, base = write_files(files, tmp_path / "downloaded"), str(lora_run.parent / "lora-base")
    inputs = {"input_ids": torch.tensor(text_dataset(n=6, seed=4)["input_ids"])}
    with torch.no_grad():
        for member, adapter in zip(members, adapters):
            expected = peft.PeftModel.from_pretrained(load_text_model(base), str(lora_run / member)).eval()
            for subfolder in (member, adapter):
                pushed = peft.PeftModel.from_pretrained(load_text_model(base), str(repo), subfolder=subfolder).eval()
                torch.testing.assert_close(pushed(**inputs).logits, expected(**inputs).logits)
        config = AdapterEnsembleConfig.from_pretrained(repo)
        config.base_model = base
        ensemble = AutoModelForSequenceClassification.from_pretrained(repo, config=config)
        torch.testing.assert_close(ensemble(**inputs).logits, build_ensemble(lora_run)(**inputs).logits)
        soup = local_hub.files("team/lora-soup")
        assert LOADABLE | {"README.md", "soup.json"} <= set(soup)  # a separate repository, as for full models
        assert check_card(soup["README.md"], "team/lora-soup", tmp_path).data.base_model == HUB_BASE
        pushed_soup = AutoModelForSequenceClassification.from_pretrained(write_files(soup, tmp_path / "soup")).eval()
        torch.testing.assert_close(pushed_soup(**inputs).logits, uniform_soup(lora_run)(**inputs).logits)


@pytest.mark.parametrize("include_base", [False, True], ids=["adapters-only", "include_base"])
def test_dry_run_of_adapter_ensembles(lora_run, tmp_path, include_base):
    adapters = {f"adapters/member_{i}/{name}" for i in range(3) for name in ADAPTER_FILES}
    base = {"base/config.json", "base/model.safetensors"} if include_base else set()
    expected = {"README.md", "config.json", *TOKENIZER_FILES, *adapters, *base}
    options = {"include_base": True} if include_base else {"base_model": HUB_BASE}
    build_ensemble(lora_run, tmp_path / "saved", include_base=include_base)
    (saved,) = push_ensemble_to_hub(tmp_path / "saved", "team/saved", dry_run=True, **options)
    assert set(saved.files) == expected
    assert saved.files["adapters/member_1/adapter_model.safetensors"] == str(
        tmp_path / "saved/adapters/member_1/adapter_model.safetensors"
    )

    out = tmp_path / "planned"
    ensemble, soup = push_ensemble_to_hub(lora_run, "team/ens", soup_repo_id="team/soup", dry_run_dir=out, **options)
    assert set(ensemble.files) == expected | {"ensemble.json", "evaluation.json", "evaluation.csv"}
    assert ensemble.files["adapters/member_2/adapter_model.safetensors"] == (
        f"<ensemble built from {lora_run}>/adapters/member_2/adapter_model.safetensors"
    )
    assert soup.repo_id == "team/soup" and LOADABLE | {"README.md", "soup.json"} <= set(soup.files)
    written = {file.relative_to(out).as_posix() for file in out.rglob("*") if file.is_file()}
    assert written == {f"{u.repo_id.replace('/', '--')}/{name}" for u in (ensemble, soup) for name in u.files}
    config = json.loads((out / "team--ens/config.json").read_text())
    assert (config["include_base"], config["base_model"]) == (include_base, "lora-base" if include_base else HUB_BASE)
    if include_base:
        copy = (out / "team--ens/base/model.safetensors").read_bytes()
        assert copy == (lora_run.parent / "lora-base/model.safetensors").read_bytes()


def test_dry_run_of_a_lora_soup_in_adapter_form(lora_run, tmp_path):
    uniform_soup(lora_run, tmp_path / "soup", adapter_out_dir=tmp_path / "soup-adapter")
    with pytest.raises(ValueError, match="base model is the local directory 'lora-base'"):
        push_ensemble_to_hub(tmp_path / "soup-adapter", "team/soup", dry_run=True)
    out = tmp_path / "planned"
    (upload,) = push_ensemble_to_hub(tmp_path / "soup-adapter", "team/soup", base_model=HUB_BASE, dry_run_dir=out)
    assert set(upload.files) == ADAPTER_FILES | TOKENIZER_FILES | {"soup.json"}  # a PEFT adapter of rank K·r
    adapter = json.loads((out / "team--soup/adapter_config.json").read_text())
    assert (adapter["base_model_name_or_path"], adapter["r"]) == (HUB_BASE, 12)


def test_adapter_push_names_its_base_by_hub_id(local_hub, lora_run, text_run, tmp_path):
    with pytest.raises(ValueError, match="base model is the local directory 'lora-base', which Hub users cannot"):
        push_ensemble_to_hub(lora_run, "team/x", token=FAKE_TOKEN)
    with pytest.raises(ValueError, match=re.escape("base_model='./lora-base' is not a Hub id")):
        push_ensemble_to_hub(lora_run, "team/x", base_model="./lora-base", dry_run=True)
    with pytest.raises(ValueError, match=re.escape("include_base and base_model are for adapter (PEFT) ensembles")):
        push_ensemble_to_hub(text_run.args.output_dir, "team/x", include_base=True, dry_run=True)
    build_ensemble(lora_run, tmp_path / "saved")
    with pytest.raises(ValueError, match="is saved without a copy of its base model"):
        push_ensemble_to_hub(tmp_path / "saved", "team/x", include_base=True, base_model=HUB_BASE, dry_run=True)
    assert local_hub.requests == []

    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    save_card_info(run, base_model=HUB_BASE)  # declared for the run, as for full models
    build_ensemble(run, tmp_path / "declared")
    for source in (run, tmp_path / "declared"):  # the run's card_info.json, the saved ensemble's card
        out = tmp_path / f"plan-{source.name}"
        push_ensemble_to_hub(source, "team/x", dry_run_dir=out)
        assert json.loads((out / "team--x/config.json").read_text())["base_model"] == HUB_BASE
        adapter = json.loads((out / "team--x/adapters/member_0/adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == HUB_BASE
        assert ModelCard.load(out / "team--x/README.md").data.base_model == HUB_BASE


REAL_HUB = os.environ.get("HF_TOKEN") and os.environ.get("HF_STARSSE_TEST_NAMESPACE")


@pytest.mark.skipif(not REAL_HUB, reason="opt-in: set HF_TOKEN and HF_STARSSE_TEST_NAMESPACE to push to the real Hub")
def test_push_to_the_real_hub(text_run):
    api = huggingface_hub.HfApi()
    repo_id = f"{os.environ['HF_STARSSE_TEST_NAMESPACE']}/hf-starsse-test-{uuid.uuid4().hex[:8]}"
    try:
        (upload,) = push_ensemble_to_hub(text_run.args.output_dir, repo_id, private=True, revision="test")
        assert api.model_info(repo_id).private
        assert {"config.json", "model.safetensors", "README.md"} <= set(api.list_repo_files(repo_id, revision="test"))
        assert upload.commit.oid
        card = ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision="test"))
        assert "hf_starsse" in card.data.tags
    finally:
        api.delete_repo(repo_id, missing_ok=True)
