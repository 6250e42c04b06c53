"""Evaluation: metric functions usable in `compute_metrics` (`metrics.py`, and the offline `evaluate` module in
`evaluate_metric/`), `evaluate_ensemble`'s tidy table of members, ensembles and soups (`run_evaluation.py`),
pool-then-calibrate temperature scaling (`calibration.py`), per-sample uncertainty and selective prediction
(`uncertainty.py`), corruptions for robustness under shift (`corruptions.py`), basin diagnostics such as
interpolation barriers (`diagnostics.py`) and plots (`plots.py`).

May import: `tasks`, `storage`, `run`, `ensemble`, `soups`, `cards`.
"""
