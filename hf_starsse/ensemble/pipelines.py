"""`pipeline()` for ensembles: the stock text / image classification pipelines plus a call-time option,
`return_uncertainty=True`, that adds each input's uncertainty to its results.

```python
classifier = pipeline("text-classification", model="out/ensemble")
classifier("some text", return_uncertainty=True)
# [{"label": "positive", "score": 0.71, "predictive_entropy": 0.62, "expected_entropy": 0.55,
#   "mutual_information": 0.07, "disagreement": 0.2}]
```

Registered on import for the pipeline task of every task family (`hf_starsse.tasks`) through a dispatcher that builds
the stock pipeline class (unchanged) for every model that is not an ensemble, and its ensemble subclass otherwise.
"""

import numpy as np
from transformers import (
    AudioClassificationPipeline,
    ImageClassificationPipeline,
    TextClassificationPipeline,
    TokenClassificationPipeline,
)
from transformers.pipelines import SUPPORTED_TASKS

from ..tasks import FAMILIES
from .modeling_ensemble import EnsemblePreTrainedModel

UNCERTAINTY_KEYS = ("predictive_entropy", "expected_entropy", "mutual_information", "disagreement")


class UncertaintyMixin:
    """Adds `return_uncertainty` (call-time, default `False`) to a classification pipeline of an ensemble: each
    result entry gets its input's uncertainty, its label's for multi-label members, and the members' `variance` for
    regression."""

    def _sanitize_parameters(self, return_uncertainty: bool | None = None, **kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        if return_uncertainty is not None:
            postprocess["return_uncertainty"] = return_uncertainty
        return preprocess, forward, postprocess

    def postprocess(self, model_outputs, return_uncertainty: bool = False, **kwargs):
        result = super().postprocess(model_outputs, **kwargs)
        if not return_uncertainty:
            return result
        present = [key for key in (*UNCERTAINTY_KEYS, "variance") if model_outputs.get(key) is not None]
        label2id = self.model.config.label2id
        for entry in [result] if isinstance(result, dict) else result:
            for key in present:  # one value per input, or per label (multi-label, regression)
                values = model_outputs[key].reshape(-1)
                entry[key] = float(values[label2id.get(entry["label"], 0)] if len(values) > 1 else values[0])
        return result


class EnsembleTextClassificationPipeline(UncertaintyMixin, TextClassificationPipeline):
    """`TextClassificationPipeline` for ensembles: `return_uncertainty=True` adds the uncertainty of each input to
    each of its label entries (`predictive_entropy`, `expected_entropy`, `mutual_information`, `disagreement`)."""

    stock = TextClassificationPipeline


class EnsembleImageClassificationPipeline(UncertaintyMixin, ImageClassificationPipeline):
    """`ImageClassificationPipeline` for ensembles, with `return_uncertainty` (see the text pipeline)."""

    stock = ImageClassificationPipeline


def _dispatcher(stock: type, ensemble: type) -> type:
    """A class `pipeline()` can take as a task's implementation: it builds `ensemble` for ensemble models and the
    unchanged `stock` class for every other model (the loaders `pipeline()` reads are the stock class's)."""

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        target = ensemble if isinstance(model, EnsemblePreTrainedModel) else stock
        return target(*args, **kwargs)

    return type(f"{stock.__name__}Dispatch", (stock,), {"__new__": __new__, "__doc__": _dispatcher.__doc__})


class EnsembleAudioClassificationPipeline(UncertaintyMixin, AudioClassificationPipeline):
    """`AudioClassificationPipeline` for ensembles, with `return_uncertainty` (see the text pipeline)."""

    stock = AudioClassificationPipeline


class EnsembleTokenClassificationPipeline(UncertaintyMixin, TokenClassificationPipeline):
    """`TokenClassificationPipeline` for ensembles, with every `aggregation_strategy`: `return_uncertainty=True` adds
    to each entity (a token, a word or a group of them) the mean uncertainty of its tokens (their character spans
    within the entity's; a fast tokenizer gives them)."""

    stock = TokenClassificationPipeline

    def _forward(self, model_inputs):
        captured = {}

        def keep(module, args, output):
            captured.update({key: output[key][0].float().cpu() for key in UNCERTAINTY_KEYS})

        handle = self.model.register_forward_hook(keep)
        try:
            outputs = super()._forward(model_inputs)
        finally:
            handle.remove()
        return {**outputs, **captured}

    def postprocess(self, all_outputs, return_uncertainty: bool = False, **kwargs):
        entities = TokenClassificationPipeline.postprocess(self, all_outputs, **kwargs)
        if not return_uncertainty:
            return entities
        if all_outputs[0]["offset_mapping"] is None:
            raise ValueError("return_uncertainty=True maps tokens to entities by their offsets: use a fast tokenizer.")
        spans = np.concatenate([outputs["offset_mapping"][0].numpy() for outputs in all_outputs])
        special = np.concatenate([outputs["special_tokens_mask"][0].numpy() for outputs in all_outputs]).astype(bool)
        values = {key: np.concatenate([outputs[key].numpy() for outputs in all_outputs]) for key in UNCERTAINTY_KEYS}
        for entity in entities:
            inside = ~special & (spans[:, 0] >= entity["start"]) & (spans[:, 1] <= entity["end"])
            entity.update(
                {key: float(value[inside].mean()) if inside.any() else None for key, value in values.items()}
            )
        return entities


ENSEMBLE_PIPELINES = {
    cls.__name__: cls
    for cls in (
        EnsembleTextClassificationPipeline,
        EnsembleTokenClassificationPipeline,
        EnsembleImageClassificationPipeline,
        EnsembleAudioClassificationPipeline,
    )
}


def register_pipelines() -> None:
    """Route `pipeline(<task>, model=<ensemble>)` to the ensemble pipeline of the task's family (idempotent; other
    models keep the stock pipelines)."""
    for family in (family for family in FAMILIES if family.ensemble_pipeline is not None):
        ensemble = ENSEMBLE_PIPELINES[family.ensemble_pipeline]
        stock = ensemble.stock  # the pipeline class it extends, which every other model keeps
        current = SUPPORTED_TASKS[family.name]["impl"]
        if not (isinstance(current, type) and current.__name__ == f"{stock.__name__}Dispatch"):
            SUPPORTED_TASKS[family.name]["impl"] = _dispatcher(stock, ensemble)


__all__ = [
    "EnsembleAudioClassificationPipeline",
    "EnsembleImageClassificationPipeline",
    "EnsembleTextClassificationPipeline",
    "EnsembleTokenClassificationPipeline",
    "UNCERTAINTY_KEYS",
    "register_pipelines",
]
