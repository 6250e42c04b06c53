"""Publishing on the Hugging Face Hub: `push_ensemble_to_hub` (`publish.py`) uploads an ensemble, its soup and
members with their cards; adapter ensembles go up as subfolders over a base named by its Hub id (`adapters.py`).
Tokens are never printed or stored.

May import: `storage`, `adapters`, `run`, `cards`, `ensemble`, `soups`.
"""
