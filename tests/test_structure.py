"""The package's layout: one place for the image/text decision, public names kept where they were, and no private
name imported from another module."""

import ast
from pathlib import Path

import hf_starsse
from hf_starsse.tasks import IMAGE_CLASSIFICATION, TEXT_CLASSIFICATION, model_type_does, task_of_architecture

PACKAGE = Path(hf_starsse.__file__).parent


def test_task_of_architecture_and_model_type():
    assert task_of_architecture("BertForSequenceClassification") == TEXT_CLASSIFICATION
    assert task_of_architecture("MobileNetV2ForImageClassification") == IMAGE_CLASSIFICATION
    assert task_of_architecture("EnsembleForImageClassification") == IMAGE_CLASSIFICATION
    assert task_of_architecture("BertModel") is None and task_of_architecture(None) is None
    assert model_type_does("bert", TEXT_CLASSIFICATION) and not model_type_does("bert", IMAGE_CLASSIFICATION)
    assert model_type_does("mobilenet_v2", IMAGE_CLASSIFICATION)


def test_moved_names_are_still_importable_from_run_dir():
    from hf_starsse import run_dir

    for name in ("atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir", "fsync_files",
                 "load_state", "load_weights", "pickle_weight_files", "untied_missing", "weight_files",
                 "weights_sha256", "RunDirectory", "run_manifest", "MANIFEST_NAME"):  # fmt: skip
        assert hasattr(run_dir, name), name
    assert hf_starsse.load_base_model.__module__ == "hf_starsse.weights"


def test_no_private_name_is_imported_across_modules():
    private = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            is_ours = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_starsse"))
            if is_ours:
                private += [
                    f"{path.name}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.endswith("__")
                ]
    assert private == []
