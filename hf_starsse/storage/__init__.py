"""Files every other package reads or writes: atomic writes (`atomic_io.py`), weight files, their hashes and loading
them without pickles (`weights.py`), and model directories saved atomically with their processor files
(`saving.py`).

May import: `errors` only.
"""
