from pathlib import Path

from huggingface_hub import ModelCard

from hf_starsse import build_ensemble, greedy_soup, uniform_soup
from hf_starsse.evaluation import evaluate_ensemble

from conftest import text_dataset


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
