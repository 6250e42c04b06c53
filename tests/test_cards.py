"""Model cards: what they say (origin without local paths, metadata, results), and templates shipped in the wheel."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import BertModel

from hf_starsse import StarSSETrainer, build_ensemble, evaluate_ensemble, push_ensemble_to_hub, uniform_soup
from hf_starsse.cards.model_card import save_card_info
from hf_starsse.training.data import DataArguments

from conftest import bert_config, load_text_model, make_args, text_dataset, tokenizer

ROOT = Path(__file__).resolve().parent.parent
WHEEL_MARK = "<!-- rendered from the wheel's template -->"


def test_card_renders_from_the_installed_wheel(tmp_path, text_run):
    """model_cards/ at the repository root is packaged as hf_starsse/model_cards/ and used by the installed copy."""
    source = tmp_path / "source"
    for name in ("hf_starsse", "model_cards"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    template = source / "model_cards/ensemble_card.md"
    template.write_text(template.read_text() + WHEEL_MARK + "\n")  # tells the wheel's template from the checkout's
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True)
    (wheel,) = (tmp_path / "dist").glob("hf_starsse-*.whl")
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    installed = {
        p.relative_to(target).as_posix() for p in (target / "hf_starsse").rglob("*") if p.suffix in (".py", ".md")
    }
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hf_starsse").rglob("*.py")}
    assert in_tree <= installed  # every module ships (a new sub-package must be listed in pyproject.toml)
    assert {"hf_starsse/model_cards/ensemble_card.md", "hf_starsse/model_cards/soup_card.md"} <= installed

    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path = [{str(target)!r}] + [p for p in sys.path if p and p.rstrip("/") != {str(ROOT)!r}]
        import hf_starsse, hf_starsse.cards.model_card
        from hf_starsse import build_ensemble
        build_ensemble({text_run.args.output_dir!r}, {str(tmp_path / "ensemble")!r})
        print(json.dumps([hf_starsse.__file__, str(hf_starsse.cards.model_card.TEMPLATES)]))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    module, templates = json.loads(result.stdout.splitlines()[-1])
    assert Path(module).is_relative_to(target) and Path(templates) == target / "hf_starsse/model_cards"
    card = (tmp_path / "ensemble/README.md").read_text()
    assert card.rstrip().endswith(WHEEL_MARK) and "# StarSSE ensemble of 3" in card


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """A 3-member run trained from a base model in a local directory, evaluated on a test and two shifted splits."""
    root = tmp_path_factory.mktemp("secret-user-dir")
    torch.manual_seed(0)
    BertModel(bert_config()).save_pretrained(root / "my-base")
    tokenizer(root / "my-base")
    trainer = StarSSETrainer(
        model=load_text_model(str(root / "my-base")),
        args=make_args(root / "run"),
        train_dataset=text_dataset(),
        processing_class=tokenizer(),
    )
    trainer.train()
    splits = {
        "test": text_dataset(16, seed=3),
        "noise/1": text_dataset(16, seed=4),
        "noise/2": text_dataset(16, seed=5),
    }
    evaluate_ensemble(root / "run", splits)
    return root / "run"


def assert_no_local_path(out: Path, uploads, root: Path) -> set[str]:
    """Every file of a dry run (`dry_run_dir=out`) is one planned, and none names `root` or another local path;
    returns their names."""
    assert all(upload.commit is None for upload in uploads)  # a dry run
    files = [file for file in out.rglob("*") if file.is_file()]
    names = {file.relative_to(out).as_posix() for file in files}
    assert names == {f"{u.repo_id.replace('/', '--')}/{name}" for u in uploads for name in u.files}
    for file in files:
        if file.suffix in (".md", ".json", ".csv", ".txt"):
            text = file.read_text()
            for private in (str(root), root.name, str(Path.home()), "/tmp/"):
                assert private not in text, (file, private)
        if file.suffix == ".json":
            strings = re.findall(r'"((?:[^"\\]|\\.)*)"', file.read_text())
            assert not [s for s in strings if os.path.isabs(s)], file
    return names


def test_no_local_path_in_any_pushed_file(local_run, tmp_path):
    root = local_run.parent
    assert json.loads((local_run / "ensemble.json").read_text())["base_model"] == str(root / "my-base")
    out = tmp_path / "planned"
    uploads = push_ensemble_to_hub(
        local_run, "team/ens", soup_repo_id="team/soup", members_as_subfolders=True, dry_run_dir=out
    )
    names = assert_no_local_path(out, uploads, root)
    assert {"team--ens/README.md", "team--ens/config.json", "team--ens/ensemble.json", "team--soup/soup.json"} <= names
    card = (out / "team--ens/README.md").read_text()
    assert "(my-base) with **StarSSE**" in card  # the local base model by its directory's name
    assert json.loads((out / "team--ens/ensemble.json").read_text())["base_model"] == "my-base"
    assert json.loads((out / "team--soup/soup.json").read_text())["members"] == [f"member-0{i}" for i in range(3)]


def test_no_local_path_in_pushed_adapter_files(lora_run, tmp_path):
    root, out = lora_run.parent, tmp_path / "planned"
    peft_card = (lora_run / "members/member-00/README.md").read_text()
    assert f"base_model: {root / 'lora-base'}" in peft_card  # PEFT's card of a member names the base by its path
    uploads = push_ensemble_to_hub(
        lora_run,
        "team/ens",
        soup_repo_id="team/soup",
        members_as_subfolders=True,
        base_model="org/tiny-bert",
        dry_run_dir=out,
    )
    names = assert_no_local_path(out, uploads, root)
    assert {
        "team--ens/adapters/member_0/adapter_config.json",
        "team--ens/members/member-00/adapter_config.json",
    } <= names
    assert "team--ens/members/member-00/README.md" not in names
    card = (out / "team--ens/README.md").read_text()
    assert "(lora-base) with **StarSSE**" in card and '"org/tiny-bert", num_labels=3' in card
    assert json.loads((out / "team--ens/ensemble.json").read_text())["base_model"] == "org/tiny-bert"


def megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.3g} MB"


def test_adapter_card_metadata_field_by_field(lora_run, tmp_path):
    build_ensemble(lora_run, tmp_path / "plain")
    plain = ModelCard.load(tmp_path / "plain/README.md")
    assert plain.data.base_model is None and "base_model_relation" not in plain.data.to_dict()  # a local base
    assert plain.data.tags == ["hf_starsse", "starsse", "ensemble", "text-classification", "peft", "lora"]
    assert '"path/to/base", num_labels=3' in plain.text  # until a Hub id is known (see hub.push_ensemble_to_hub)

    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    save_card_info(run, base_model="org/tiny-bert", datasets=["stanfordnlp/imdb"], dataset_name="IMDB")
    build_ensemble(run, tmp_path / "ensemble")
    card = ModelCard.load(tmp_path / "ensemble/README.md")
    data = card.data
    assert (data.library_name, data.pipeline_tag) == ("transformers", "text-classification")
    assert (data.base_model, data.base_model_relation) == ("org/tiny-bert", "adapter")
    assert data.tags == [
        "hf_starsse",
        "starsse",
        "ensemble",
        "text-classification",
        "peft",
        "lora",
        "base_model:adapter:org/tiny-bert",
    ]
    assert data.datasets == ["stanfordnlp/imdb"]
    row = next(
        r for r in json.loads((run / "evaluation.json").read_text()) if r["model"] == "ensemble" and r["size"] == 3
    )
    (result,) = data.eval_results
    assert (result.dataset_type, result.dataset_name, result.metric_value) == (
        "stanfordnlp/imdb",
        "IMDB",
        row["accuracy"],
    )

    text = " ".join(card.text.split())
    adapter = load_file(run / "members/member-00/adapter_model.safetensors")
    member = sum(tensor.numel() * tensor.element_size() for tensor in adapter.values())
    base = (lora_run.parent / "lora-base/model.safetensors").stat().st_size
    assert 0 < member < base / 10
    sizes = f"rank 4: {megabytes(member)} per member, over a base model of {megabytes(base)}."
    assert f"Each member is a LORA adapter of {sizes}" in text
    total = f"{megabytes(3 * member)} in all, where 3 fine-tuned copies of the base model would take"
    assert f"The 3 adapters take {total} {megabytes(3 * base)}." in text
    assert "This repository holds the adapters, not the base model." in text
    assert 'PeftModel.from_pretrained(base, "path/to/ensemble", subfolder="adapters/member_0")' in text


def test_card_metadata_field_by_field(local_run, tmp_path):
    build_ensemble(local_run, tmp_path / "plain")
    plain = ModelCard.load(tmp_path / "plain/README.md").data
    assert plain.base_model is None and plain.datasets is None  # a local directory is no Hub id
    assert {r.dataset_name for r in plain.eval_results} == {"custom"}

    save_card_info(
        local_run, base_model="google-bert/bert-base-uncased", datasets=["stanfordnlp/imdb"], dataset_name="IMDB"
    )
    rows = json.loads((local_run / "evaluation.json").read_text())
    try:
        build_ensemble(local_run, tmp_path / "ensemble")
        uniform_soup(local_run, tmp_path / "soup")
    finally:
        (local_run / "card_info.json").unlink()
    for kind, tags, model in (("ensemble", "ensemble", "ensemble"), ("soup", "model-soup", "uniform_soup")):
        card = ModelCard.load(tmp_path / kind / "README.md")
        data = card.data
        assert data.base_model == "google-bert/bert-base-uncased"
        assert data.datasets == ["stanfordnlp/imdb"]
        assert data.pipeline_tag == "text-classification" and data.library_name == "transformers"
        assert data.tags == ["hf_starsse", "starsse", tags, "text-classification"]
        expected = [r for r in rows if r["model"] == model and r["size"] == 3 and "/" not in r["split"]]
        assert [(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in data.eval_results] == [
            ("text-classification", "stanfordnlp/imdb", "IMDB", "test")
        ]  # shifted splits stay out of model-index
        assert [r.metric_value for r in data.eval_results] == [expected[0]["accuracy"]]
        assert "(google-bert/bert-base-uncased)" in card.text and "On IMDB." in card.text


def test_short_results_table_leads(local_run, tmp_path):
    build_ensemble(local_run, tmp_path / "ensemble")
    text = ModelCard.load(tmp_path / "ensemble/README.md").text
    rows = json.loads((local_run / "evaluation.json").read_text())
    short = text[text.index("## Results") :].split("\n## ")[0]
    lines = [line for line in short.splitlines() if line.startswith("| ") and "---" not in line][1:]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert [row[:2] for row in cells] == [
        [split, model]
        for split in ("test", "shifted (mean of 2)")
        for model in ("single model", "ensemble of 3", "uniform soup")
    ]
    shifted = [r["accuracy"] for r in rows if r["model"] == "ensemble" and r["size"] == 3 and "/" in r["split"]]
    assert cells[4][2] == f"{sum(shifted) / 2:.4f}"
    member_0 = next(r for r in rows if r["model"] == "member" and r["member"] == 0 and r["split"] == "test")
    assert cells[0][2] == f"{member_0['accuracy']:.4f}"
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Results", "## How to use", "## Method", "## Members", "## All results", "## Citation"]
    full = text[text.index("## All results") :]
    assert "<details>" in full and "| noise/2 | member 2 | 1 |" in full and "| test | ensemble | 3 |" in full


def test_save_card_info_refuses_paths_as_hub_ids(local_run):
    with pytest.raises(ValueError, match="base_model='/models/bert' is not a Hub id"):
        save_card_info(local_run, base_model="/models/bert")
    with pytest.raises(ValueError, match="datasets='./data' is not a Hub id"):
        save_card_info(local_run, datasets=["./data"])
    assert not (local_run / "card_info.json").exists()


def test_hub_ids_reach_the_metadata_by_themselves(tmp_path, pretrained_bert):
    model = load_text_model(pretrained_bert)
    model.config._name_or_path = "org/tiny-bert"  # as loaded from the Hub: the manifest records the id
    StarSSETrainer(model=model, args=make_args(tmp_path / "run", num_members=2), train_dataset=text_dataset()).train()
    build_ensemble(tmp_path / "run", tmp_path / "ensemble")
    card = ModelCard.load(tmp_path / "ensemble/README.md")
    assert card.data.base_model == "org/tiny-bert" and "(org/tiny-bert)" in card.text

    hub_data = DataArguments(model_name_or_path=pretrained_bert, dataset="stanfordnlp/imdb", dataset_name="IMDB")
    assert hub_data.card_info() == {"base_model": None, "datasets": ["stanfordnlp/imdb"], "dataset_name": "IMDB"}
    local_data = DataArguments(model_name_or_path=pretrained_bert, dataset=str(tmp_path / "run/ensemble.json"))
    assert local_data.card_info()["datasets"] is None  # a local file is no Hub id
