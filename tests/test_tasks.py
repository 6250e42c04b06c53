"""The task registry: what each family declares exists, and the questions the rest of the package asks of it."""

import pytest
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from hf_starsse.tasks import (
    FAMILIES,
    family_for_input,
    family_of_architecture,
    family_of_peft_task_type,
)


def test_family_of_architecture_and_model_type():
    text, image = family_for_input("text"), family_for_input("image")
    assert (text.name, image.name) == ("text-classification", "image-classification")
    assert family_of_architecture("BertForSequenceClassification") is text
    assert family_of_architecture("MobileNetV2ForImageClassification") is image
    assert family_of_architecture("EnsembleForImageClassification") is image
    assert family_of_architecture("AdapterEnsembleForSequenceClassification") is text
    assert family_of_architecture("BertModel") is None and family_of_architecture(None) is None
    assert text.covers_model_type("bert") and not image.covers_model_type("bert")
    assert image.covers_model_type("mobilenet_v2")
    assert family_of_peft_task_type("SEQ_CLS") is text and family_of_peft_task_type(None) is None
    assert text.auto_model_class() is AutoModelForSequenceClassification
    assert image.auto_model_class() is AutoModelForImageClassification
    with pytest.raises(
        ValueError,
        match="No task family is prepared from 'audio' data; hf_starsse prepares choices, image, questions, text",
    ):
        family_for_input("audio")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_every_family_is_wired_up(family):
    """What a family names exists: its Auto class loads its ensembles, its pipeline task routes to its ensemble
    pipeline."""
    from transformers.pipelines import SUPPORTED_TASKS

    from hf_starsse import ensemble
    from hf_starsse.ensemble.pipelines import ENSEMBLE_PIPELINES

    for name in (family.ensemble_class, family.adapter_ensemble_class):
        model_class = getattr(ensemble, name)
        assert model_class in family.auto_model_class()._model_mapping.values()
    if family.ensemble_pipeline is None:  # transformers has no pipeline for the task, or its stock one serves
        assert "Dispatch" not in str(SUPPORTED_TASKS.get(family.name, {}).get("impl"))
    else:
        assert SUPPORTED_TASKS[family.name]["impl"].__name__.endswith("Dispatch")
        assert family.ensemble_pipeline in ENSEMBLE_PIPELINES


def test_the_family_of_the_cli_from_task_model_or_data():
    from hf_starsse.tasks import family_for_model, family_for_task

    assert family_for_task("token-classification").name == "token-classification"
    with pytest.raises(ValueError, match="--task 'ner' is not a task family; choose one of text-classification, tok"):
        family_for_task("ner")
    with pytest.raises(ValueError, match="--task 'audio-classification' has no data preparation in the CLI yet"):
        family_for_task("audio-classification")
    assert family_for_model("BertForTokenClassification", images=False).name == "token-classification"
    assert family_for_model("EnsembleForQuestionAnswering", images=False).name == "question-answering"
    assert family_for_model("BertModel", images=False).name == "text-classification"  # no head: the data's
    assert family_for_model(None, images=True).name == "image-classification"
    # a head whose data is not the dataset's: the data's family (the model check then names the mismatch)
    assert family_for_model("MobileNetV2ForImageClassification", images=False).name == "text-classification"
    assert family_for_model("Wav2Vec2ForSequenceClassification", images=False).name == "text-classification"
