"""The `hf-starsse` command line (`main.py`): its commands and their argument dataclasses, and the `--use_peft` /
`--lora_*` options (`peft_args.py`). Models and datasets by Hub id or local path are prepared for training by
`training/data.py`, which the demo, the examples and the benchmarks share.

May import: every package.
"""
