"""Ensemble inference and soup building: speed and memory.

1. Ensemble throughput: `EnsembleFor...Classification` (one call, members looped inside) against K separate calls of
   the single member models on the same batch, probabilities averaged by hand.
2. Loop vs vmap: the same members run by the loop, or stacked (`torch.func.stack_module_state`) and run by one
   `functional_call` under `vmap`; the library keeps the loop unless vmap wins.
3. Soups: build time and peak RSS of `uniform_soup` for K in {2, 4, 8}, each in a fresh process (glibc's mmap
   threshold fixed, so that RSS follows live memory rather than the allocator's retained heap).

Timed calls alternate between the contenders so that both see the same machine load.

    python benchmarks/inference_and_soups.py    # writes benchmarks/results/inference_and_soups.md
"""

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state, vmap
from transformers import BertConfig, BertForSequenceClassification, MobileNetV2Config
from transformers.utils import logging

from hf_starsse import EnsembleConfig, EnsembleForImageClassification, EnsembleForSequenceClassification

from results_table import write_results

RESULTS = Path(__file__).parent / "results" / "inference_and_soups.md"
SOUP_SCRIPT = """
import re, sys, time
from hf_starsse import uniform_soup
start = time.perf_counter()
uniform_soup(sys.argv[1:])
status = open("/proc/self/status").read()  # VmHWM: this process's peak RSS (ru_maxrss can carry the parent's)
print(time.perf_counter() - start, int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024)
"""


def text_case(members: int, batch: int):
    config = BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, num_labels=5
    )
    ensemble = EnsembleForSequenceClassification(EnsembleConfig(member_config=config.to_dict(), num_members=members))
    return "BERT (2 layers, hidden 128), 64 tokens", ensemble, {"input_ids": torch.randint(0, 30000, (batch, 64))}


def image_case(members: int, batch: int):
    config = MobileNetV2Config(image_size=64, depth_multiplier=0.35, num_labels=10)
    ensemble = EnsembleForImageClassification(EnsembleConfig(member_config=config.to_dict(), num_members=members))
    return "MobileNetV2 (x0.35), 64 px", ensemble, {"pixel_values": torch.randn(batch, 3, 64, 64)}


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def race(contenders: dict, repeats: int) -> dict:
    """Median seconds of each contender, calls alternating."""
    for fn in contenders.values():
        fn()  # warm-up
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(seconds(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def vmapped(ensemble, inputs):
    """A function computing member logits `(K, batch, labels)` in one functional call over stacked parameters."""
    params, buffers = stack_module_state(list(ensemble.members))
    base = copy.deepcopy(ensemble.members[0]).to("meta")

    def member_logits(p, b, x):
        return functional_call(base, (p, b), args=(), kwargs=x).logits

    return lambda: vmap(member_logits, in_dims=(0, 0, None))(params, buffers, inputs)


@torch.no_grad()
def compare(case, members: int, batch: int, repeats: int) -> tuple[str, str]:
    """Table rows (throughput, loop vs vmap) for one model and batch size."""
    name, ensemble, inputs = case(members, batch)
    ensemble.eval()

    def separate():
        return torch.stack([member(**inputs).logits.softmax(-1) for member in ensemble.members]).mean(0)

    stacked = vmapped(ensemble, inputs)
    assert torch.allclose(ensemble(**inputs).logits.exp(), separate(), atol=1e-5)
    note = "outputs agree" if torch.allclose(ensemble(**inputs).member_logits, stacked(), atol=1e-4) else "DIFFER"
    t = race({"ensemble": lambda: ensemble(**inputs), "separate": separate, "vmap": stacked}, repeats)
    return (
        f"| {name} | {batch} | {batch / t['ensemble']:.0f} | {batch / t['separate']:.0f} | "
        f"{t['ensemble'] / t['separate']:.2f} |",
        f"| {name} | {batch} | {t['ensemble'] * 1e3:.1f} | {t['vmap'] * 1e3:.1f} | {t['vmap'] / t['ensemble']:.2f} "
        f"| {note} |",
    )


def soup_rows(counts: list[int]) -> tuple[list[str], float]:
    config = BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_labels=3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(max(counts)):
            torch.manual_seed(seed)
            BertForSequenceClassification(config).save_pretrained(f"{tmp}/m{seed}")
        model_mb = Path(f"{tmp}/m0/model.safetensors").stat().st_size / 2**20
        for count in counts:
            members = [f"{tmp}/m{seed}" for seed in range(count)]
            # a fixed mmap threshold makes glibc return freed tensors at once: RSS then tracks live memory
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(
                [sys.executable, "-c", SOUP_SCRIPT, *members], capture_output=True, text=True, env=env
            )
            if out.returncode:
                raise RuntimeError(out.stderr[-2000:])
            build_s, peak_mb = map(float, out.stdout.split()[-2:])
            rows.append(f"| {count} | {count * model_mb:.0f} | {build_s:.2f} | {peak_mb:.0f} |")
    return rows, model_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--soup-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.set_verbosity_error()
    torch.manual_seed(0)
    rows = [compare(case, args.members, b, args.repeats) for case in (text_case, image_case) for b in args.batch_sizes]
    throughput, stacking = [row[0] for row in rows], [row[1] for row in rows]
    soups, model_mb = soup_rows(args.soup_sizes)
    lines = [
        "# Ensemble inference and soups",
        "",
        f"{date.today()}, `python benchmarks/inference_and_soups.py --members {args.members} --batch-sizes "
        f"{' '.join(map(str, args.batch_sizes))} --repeats {args.repeats} --soup-sizes "
        f"{' '.join(map(str, args.soup_sizes))}`",
        f"on {platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}, CPU, no_grad, "
        f"K = {args.members}; medians of {args.repeats} alternating calls.",
        "",
        "Ensemble model vs K separate single-model calls (same batch, probabilities averaged by hand):",
        "",
        "| model | batch | ensemble (samples/s) | separate calls (samples/s) | time ratio |",
        "|---|---:|---:|---:|---:|",
        *throughput,
        "",
        "Members looped (the library's path) vs stacked parameters under `vmap`:",
        "",
        "| model | batch | loop (ms) | vmap (ms) | vmap / loop | check |",
        "|---|---:|---:|---:|---:|---|",
        *stacking,
        "",
        f"Uniform soups of a {model_mb:.0f} MB BERT (4 layers, hidden 256), each built in a fresh process:",
        "",
        "| members K | members on disk (MB) | build time (s) | peak RSS (MB) |",
        "|---:|---:|---:|---:|",
        *soups,
        "",
    ]
    write_results(lines, args.output)


if __name__ == "__main__":
    main()
