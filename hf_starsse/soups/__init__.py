"""Model soups: uniform and greedy averages of the members' weights (`average.py`), exact LoRA soups of adapter
members (`lora.py`), BatchNorm re-estimation after averaging (`batchnorm.py`), and running a model over a dataset
(`predict.py`, shared with calibration and evaluation).

May import: `tasks`, `storage`, `adapters`, `run`, `cards`.
"""
