"""Model cards of ensembles and soups, from the templates in the repository's top-level `model_cards/` (shipped in
the wheel as `hf_starsse.model_cards`): metadata, method, members, evaluation results, adapter sizes. Cards are
written by every save (`build_ensemble`, the soups, calibration), not only by a Hub push, so this package sits below
`ensemble/` and `soups/`; the Hub's own publishing is `hub/`.

May import: `tasks`, `storage`, `adapters`, `run`.
"""
