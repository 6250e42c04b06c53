"""The low-level PEFT interface (the way transformers keeps `integrations/peft.py`): telling adapter directories and
PEFT models apart, checking that K adapters fit one base, resolving and hashing the base, loading the base once with
K adapters. peft is imported lazily (`require_peft`), so the library imports without it.

The PEFT pieces of each concern live with that concern and call this interface: adapter training in
`training/adapters.py`, exact LoRA soups in `soups/lora.py`, adapter ensembles in
`ensemble/modeling_adapter_ensemble.py`, adapter publishing in `hub/adapters.py`, the `--lora_*` options in
`cli/peft_args.py`.

May import: `tasks`, `storage`, `errors`.
"""
