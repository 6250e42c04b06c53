"""hf_starsse classification metrics as an `evaluate` module, loaded by path (offline):

import evaluate, hf_starsse
metric = evaluate.load(hf_starsse.metrics.EVALUATE_MODULE)
metric.compute(predictions=probs, references=labels)  # probs: (N, C) probabilities, labels: (N,) classes
"""

import datasets
import evaluate
import numpy as np

from hf_starsse.evaluation.metrics import classification_metrics  # absolute: `evaluate` loads this file by path

_DESCRIPTION = "Accuracy, mean per-class accuracy, NLL, expected calibration error, Brier score and entropy."
_CITATION = """@inproceedings{sadrtdinov2023stay,
  title = {To Stay or Not to Stay in the Pre-train Basin: Insights on Ensembling in Transfer Learning},
  author = {Sadrtdinov, Ildus and Pozdeev, Dmitrii and Vetrov, Dmitry and Lobacheva, Ekaterina},
  booktitle = {Advances in Neural Information Processing Systems},
  year = {2023}
}"""
_INPUTS = """
Args:
    predictions: (N, C) predicted probabilities (rows sum to 1).
    references: (N,) integer labels.
    n_bins: number of equal-width confidence bins of the ECE (default 15).
"""


class StarsseMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, n_bins=15):
        return classification_metrics(np.asarray(predictions), np.asarray(references), n_bins)
