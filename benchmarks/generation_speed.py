"""Generation speed and peak memory of an adapter ensemble of causal LMs against K separate `generate` calls.

The adapter ensemble (`AdapterEnsembleForCausalLM`: the base model held once with K LoRA adapters) decodes greedily
from its members' mean next-token probabilities in one `generate` call; with a KV cache its LoRA members run as one
mixed-adapter batch (`batch_members`, the default), and the benchmark times it with its members one after the other
too (`batch_members = False`, each with its own cache). The alternative a user has: each member merged into the base
(PEFT's `merge_and_unload`) and K separate greedy `generate` calls. Every path generates exactly `max_new_tokens`
tokens per prompt (`min_new_tokens` equal to it); timed calls alternate between the paths so that all see the same
machine load. Peak memory: a fresh process builds the adapter ensemble, or ONE merged member, and generates; on CPU
its peak RSS, on a GPU `torch.cuda.max_memory_allocated`. The bytes of the models' parameters and buffers are the
noise-free second figure.

Goals (issue): the ensemble's new tokens/s at least 0.95x those of the K separate calls (their time over the
ensemble's), and its peak memory at most 1.2x one model's for K = 4.

    python benchmarks/generation_speed.py    # SmolLM2-135M-Instruct, K = 4: benchmarks/results/generation_speed.md
    python benchmarks/generation_speed.py --quick    # a tiny Llama built from config, printed: seconds
"""

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import peft
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging

from hf_starsse import build_ensemble
from hf_starsse.demo.lm_assets import pretrained_smollm2

from results_table import write_results

RESULTS = Path(__file__).parent / "results" / "generation_speed.md"
ROOT = Path(__file__).resolve().parents[1]
SPEED_GOAL, MEMORY_GOAL, MEMORY_GOAL_MEMBERS = 0.95, 1.2, 4
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
LORA_B_STD = 0.02
PROMPTS = [
    "The three primary colours are",
    "Write a short poem about the sea.",
    "Explain in one sentence why the sky is blue.",
    "def fibonacci(n):",
]
QUICK_WORDS = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(96)]
QUICK_PROMPTS = ["w5 w17 w42 w8", "w60 w3", "w11 w12 w13"]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
PATHS = ("ensemble", "looped", "separate")
"""The timed paths: the adapter ensemble (members batched), the same with its members one after the other, and K
separate calls of the merged members."""
CHILD = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); from generation_speed import load_and_generate as run; "
    "print(run(*json.loads(sys.argv[2])))"
)


@dataclass
class GenerationMeasurement:
    """
    Args:
        num_members (`int`): K, the ensemble's adapters.
        num_prompts (`int`): Prompts generated from in one batch (left-padded).
        max_new_tokens (`int`): New tokens each path was asked for per prompt.
        repeats (`int`): Timed calls of each path (after one warm-up each), alternating.
        device (`str`): Where the models ran.
        seconds (`dict[str, float]`): Median seconds of each path in `PATHS`.
        new_tokens (`dict[str, list[int]]`): New tokens per prompt of each path's `generate` calls (`"separate"`: one
            per merged member).
        memory_kind (`str`): What the peaks are: `"peak RSS"` (CPU) or `"CUDA max allocated"`.
        ensemble_peak_mb, single_peak_mb (`float`): Peak memory of a fresh process that builds the adapter ensemble,
            or one merged member, and generates.
        ensemble_weight_bytes, single_weight_bytes (`int`): Bytes of the parameters and buffers of the adapter
            ensemble (base + K adapters) and of one merged member.
    """

    num_members: int
    num_prompts: int
    max_new_tokens: int
    repeats: int
    device: str
    seconds: dict[str, float]
    new_tokens: dict[str, list[int]]
    memory_kind: str
    ensemble_peak_mb: float
    single_peak_mb: float
    ensemble_weight_bytes: int
    single_weight_bytes: int

    def tokens_per_second(self, path: str) -> float:
        """New tokens of one output per prompt per second (`"separate"`: the K calls together make one)."""
        return self.num_prompts * self.max_new_tokens / self.seconds[path]

    def speed_ratio(self, path: str = "ensemble") -> float:
        """The tokens/s of an ensemble path over those of the K separate calls (their time over the ensemble's)."""
        return self.seconds["separate"] / self.seconds[path]

    @property
    def memory_ratio(self) -> float:
        return self.ensemble_peak_mb / self.single_peak_mb

    @property
    def weights_ratio(self) -> float:
        return self.ensemble_weight_bytes / self.single_weight_bytes


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """The tokenizer, padding on the left (decoder-only batches); its end-of-sequence token pads if no token does."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_inputs(tokenizer, prompts: list[str], device: str):
    """The prompts as one left-padded batch on `device`."""
    return tokenizer(prompts, return_tensors="pt", padding=True).to(device)


def greedy_kwargs(tokenizer, max_new_tokens: int) -> dict:
    """Greedy decoding of exactly `max_new_tokens` tokens (the end-of-sequence token is suppressed until then)."""
    return dict(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id)  # fmt: skip


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (tied ones once) and buffers."""
    return sum(tensor.numel() * tensor.element_size() for tensor in [*model.parameters(), *model.buffers()])


def peak_memory_mb(device: str) -> float:
    """This process's peak memory (MB): CUDA's max allocated on a GPU; else the peak RSS, read from Linux's VmHWM
    where there is one, since `ru_maxrss` starts from the parent's peak in a child made by fork and exec."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        return int(re.search(r"VmHWM:\s+(\d+)", status.read_text()).group(1)) / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def load_model(kind: str, base_dir: str | os.PathLike, adapter_dirs: list) -> torch.nn.Module:
    """The adapter ensemble of `adapter_dirs` over `base_dir` (`kind="ensemble"`), or the first adapter merged into
    the base (`kind="merged"`: one model)."""
    if kind == "ensemble":
        return build_ensemble([Path(path) for path in adapter_dirs], base_model=str(base_dir))
    return merged_member(Path(base_dir), Path(adapter_dirs[0]))


def load_and_generate(kind: str, base_dir: str, adapter_dirs: list[str], tokenizer_dir: str, prompts: list[str],
                      max_new_tokens: int, device: str) -> float:  # fmt: skip
    """`load_model(kind, ...)`, generate from `prompts`, and return this process's peak memory (MB). Run in a fresh
    process by `fresh_process_peak_mb`."""
    model = load_model(kind, base_dir, adapter_dirs).to(device)
    tokenizer = load_tokenizer(tokenizer_dir)
    new_tokens(model, prompt_inputs(tokenizer, prompts, device), greedy_kwargs(tokenizer, max_new_tokens))
    return peak_memory_mb(device)


def fresh_process_peak_mb(*args) -> float:
    """`load_and_generate(*args)` in a fresh Python process (glibc's mmap threshold fixed, so that RSS follows live
    memory rather than the allocator's retained heap)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-c", CHILD, str(Path(__file__).parent), json.dumps(args)]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.split()[-1])


def race(paths: dict[str, Callable[[], object]], repeats: int, device: str, clock=time.perf_counter) -> dict:
    """Median seconds of each path over `repeats` calls; the order of the paths flips at every repeat, so that all
    see the same machine load."""
    times = {name: [] for name in paths}
    for repeat in range(repeats):
        for name in list(paths)[:: -1 if repeat % 2 else 1]:
            start = clock()
            paths[name]()
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def new_tokens(model, inputs, options: dict) -> int:
    """Generate from `inputs`; return the number of new tokens per prompt."""
    return model.generate(**inputs, **options).shape[1] - inputs["input_ids"].shape[1]


def looped_new_tokens(ensemble, inputs, options: dict) -> int:
    """`new_tokens` of the adapter ensemble with its members one after the other (`batch_members = False`)."""
    ensemble.batch_members = False
    try:
        return new_tokens(ensemble, inputs, options)
    finally:
        del ensemble.batch_members


def side_by_side(ensemble, members: list, inputs, options: dict, repeats: int, device: str, clock) -> tuple:
    """Median seconds and new tokens per prompt of each path in `PATHS`, after one warm-up call of each."""
    paths = {
        "ensemble": lambda: [new_tokens(ensemble, inputs, options)],
        "looped": lambda: [looped_new_tokens(ensemble, inputs, options)],
        "separate": lambda: [new_tokens(member, inputs, options) for member in members],
    }
    counts = {name: run() for name, run in paths.items()}
    return race(paths, repeats, device, clock), counts


def merged_member(base_dir: Path, adapter_dir: Path) -> torch.nn.Module:
    """A LoRA member merged into its base (PEFT's `merge_and_unload`): a plain causal LM, in eval mode."""
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    return peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def measure_generation(
    base_dir: str | os.PathLike,
    adapter_dirs: list[str | os.PathLike],
    tokenizer_dir: str | os.PathLike,
    prompts: list[str],
    max_new_tokens: int = 32,
    repeats: int = 3,
    device: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> GenerationMeasurement:
    """
    Time the adapter ensemble's greedy `generate` (members batched, and one after the other) against K separate
    greedy `generate` calls of the merged members (side by side, alternating), and measure the peak memory of the
    ensemble and of one merged member, each built and generating in a fresh process.

    Args:
        base_dir (`str` or `os.PathLike`): The base causal LM the adapters were trained on.
        adapter_dirs (`list`): The K LoRA adapter directories (as PEFT saves them).
        tokenizer_dir (`str` or `os.PathLike`): The tokenizer's directory.
        prompts (`list[str]`): Prompts, generated from in one left-padded batch.
        max_new_tokens (`int`, *optional*, defaults to 32): New tokens per prompt, on both paths.
        repeats (`int`, *optional*, defaults to 3): Timed calls of each path.
        device (`str`, *optional*): Where to run (default: `"cuda"` if available, else `"cpu"`).
        clock (`Callable`, *optional*, defaults to `time.perf_counter`): The timer (e.g. `time.process_time`: CPU
            time, steadier on a shared machine with one thread).

    Returns:
        [`GenerationMeasurement`]: Times, tokens/s, new-token counts, peak memory and weight bytes of the paths.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base_dir, adapter_dirs = Path(base_dir), [Path(path) for path in adapter_dirs]
    tokenizer = load_tokenizer(tokenizer_dir)
    inputs = prompt_inputs(tokenizer, prompts, device)
    options = greedy_kwargs(tokenizer, max_new_tokens)
    ensemble = load_model("ensemble", base_dir, adapter_dirs).to(device)
    members = [merged_member(base_dir, path).to(device) for path in adapter_dirs]
    seconds, counts = side_by_side(ensemble, members, inputs, options, repeats, device, clock)
    weights = weight_bytes(ensemble), weight_bytes(members[0])
    del ensemble, members  # freed before the fresh processes load theirs
    paths = [str(base_dir), [str(path) for path in adapter_dirs], str(tokenizer_dir), prompts, max_new_tokens, device]
    peaks = [fresh_process_peak_mb(kind, *paths) for kind in ("ensemble", "merged")]
    return GenerationMeasurement(
        num_members=len(adapter_dirs), num_prompts=len(prompts), max_new_tokens=max_new_tokens, repeats=repeats,
        device=device, seconds=seconds, new_tokens=counts,
        memory_kind="CUDA max allocated" if device.startswith("cuda") else "peak RSS", ensemble_peak_mb=peaks[0],
        single_peak_mb=peaks[1], ensemble_weight_bytes=weights[0], single_weight_bytes=weights[1],
    )  # fmt: skip


def verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def render_markdown(result: GenerationMeasurement) -> list[str]:
    """Markdown lines: a table of the paths' speed, peak memory and weights, and one sentence per goal saying whether
    it is met."""
    k, mb, speed = result.num_members, 2**20, result.speed_ratio()
    memory_scope = "" if k == MEMORY_GOAL_MEMBERS else f" (measured at K = {k}; the goal is stated for K = 4)"
    return [
        f"| {result.device} | adapter ensemble (base + {k} LoRA adapters) | {k} merged members | ratio | goal |",
        "|---|---:|---:|---:|---:|",
        f"| new tokens/s (one generate / {k} generate calls) | {result.tokens_per_second('ensemble'):.1f} | "
        f"{result.tokens_per_second('separate'):.1f} | {speed:.2f} | >= {SPEED_GOAL} |",
        f"| median seconds for {result.num_prompts} prompts x {result.max_new_tokens} new tokens | "
        f"{result.seconds['ensemble']:.2f} | {result.seconds['separate']:.2f} | | |",
        f"| new tokens/s, the ensemble's members one after the other (`batch_members = False`) | "
        f"{result.tokens_per_second('looped'):.1f} | | {result.speed_ratio('looped'):.2f} | |",
        f"| {result.memory_kind} (MB; right: ONE merged member) | {result.ensemble_peak_mb:.0f} | "
        f"{result.single_peak_mb:.0f} | {result.memory_ratio:.2f} | <= {MEMORY_GOAL} |",
        f"| weights: parameters + buffers (MB; right: ONE merged member) | {result.ensemble_weight_bytes / mb:.2f} | "
        f"{result.single_weight_bytes / mb:.2f} | {result.weights_ratio:.3f} | |",
        "",
        f"Speed goal (the ensemble's tokens/s >= {SPEED_GOAL}x those of {k} separate generate calls): "
        f"{verdict(speed >= SPEED_GOAL)} ({speed:.2f}x). Memory goal (the ensemble's {result.memory_kind} <= "
        f"{MEMORY_GOAL}x one model's at K = {MEMORY_GOAL_MEMBERS}): {verdict(result.memory_ratio <= MEMORY_GOAL)} "
        f"({result.memory_ratio:.2f}x){memory_scope}.",
    ]


def tiny_llama(path: Path) -> Path:
    """A tiny Llama (2 layers, hidden size 32) built from config, with a word-level tokenizer, saved to `path`."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(QUICK_WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=2,
                         pad_token_id=0)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(QUICK_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(path)
    return path


def random_lora_adapters(base_dir: Path, out_dir: Path, count: int) -> list[Path]:
    """`count` LoRA adapters of `LORA` over `base_dir`, untrained but different: `lora_B` drawn from N(0, 0.02^2)
    (seed k for adapter k) instead of PEFT's zeros."""
    adapter_dirs = []
    for index in range(count):
        torch.manual_seed(index)
        model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), peft.LoraConfig(**LORA))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, LORA_B_STD)
        model.save_pretrained(out_dir / f"adapter-{index}")
        adapter_dirs.append(out_dir / f"adapter-{index}")
    return adapter_dirs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="A tiny Llama built from config: a smoke test.")
    parser.add_argument("--results", type=Path, default=None, help=f"Default: {RESULTS} (--quick: print only).")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="cpu: process time (steadier, one thread)")
    return parser.parse_args(argv)


def report(result: GenerationMeasurement, model: str, prompts: list[str], clock: str, command: str) -> list[str]:
    return [
        "# Generation speed and peak memory: adapter ensemble vs K separate generate calls",
        "",
        f"{date.today()}, `{command}`",
        f"on {platform.machine()} ({os.cpu_count()} CPUs), torch threads: {torch.get_num_threads()}, torch "
        f"{torch.__version__}, peft {peft.__version__}. {model}; K = {result.num_members} LoRA adapters (r = "
        f"{LORA['r']}, alpha {LORA['lora_alpha']}, on {' and '.join(LORA['target_modules'])}), untrained: `lora_B` "
        f"drawn from N(0, {LORA_B_STD}^2) so that the adapters differ (speed and memory do not depend on training). "
        f"Greedy decoding of exactly {result.max_new_tokens} new tokens (`min_new_tokens` = `max_new_tokens`) for "
        f"{result.num_prompts} prompts in one left-padded batch: {', '.join(repr(p) for p in prompts)}. Times are "
        f"medians of {result.repeats} calls of each path ({clock} clock), alternating, after one warm-up call each; "
        "tokens/s count the new tokens of one output per prompt (the ensemble's, or what the K separate calls "
        "together stand for). "
        f"{result.memory_kind}: a fresh process builds the adapter ensemble (`build_ensemble`), or merges ONE member "
        "into the base (`merge_and_unload`), and generates the same tokens.",
        "",
        *render_markdown(result),
        "",
        "Why the members are batched: decoding one token per prompt is bound by reading the model's weights (and, "
        "for a tiny model, by each forward's overhead), so K members run one after the other read the base's "
        "weights K times per step, as K separate calls do, and add an adapter switch each; as one mixed-adapter "
        "batch (PEFT's `adapter_names`, K copies of the batch with one KV cache) they read them once.",
        "",
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # PEFT calls a deprecated transformers property
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            base_dir, prompts, model = tiny_llama(Path(tmp) / "base"), QUICK_PROMPTS, "A tiny Llama built from config"
        else:
            base_dir, prompts, model = pretrained_smollm2(), PROMPTS, "SmolLM2-135M-Instruct (float32)"
        adapter_dirs = random_lora_adapters(base_dir, Path(tmp), args.members)
        result = measure_generation(base_dir, adapter_dirs, base_dir, prompts, args.max_new_tokens, args.repeats,
                                    clock=CLOCKS[args.clock])  # fmt: skip
    command = " ".join(["python benchmarks/generation_speed.py", *(sys.argv[1:] if argv is None else argv)])
    lines = report(result, model, prompts, args.clock, command)
    if args.results is None and args.quick:
        print("\n".join(lines))
    else:
        write_results(lines, args.results or RESULTS)


if __name__ == "__main__":
    main()
