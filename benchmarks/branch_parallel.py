"""Wall time of the StarSSE branch phase: one process training the branches in turn, against branch-parallel
processes (`branch_parallel=True` under torchrun) sharing the same cores.

Member 0 is trained once; every timed run starts from a copy of that run directory and trains members 1..K-1. The
runs in turn are one process with one intra-op thread per core, or with one thread; the parallel run is one process
per core with one thread each (torchrun's default), so it uses the same cores as the first. Runs alternate so that all
three see the same machine load; the table reports every repeat and the median speed-ups.

    python benchmarks/branch_parallel.py            # writes benchmarks/results/branch_parallel.md
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from transformers.utils import logging

from hf_starsse import StarSSETrainer, StarSSETrainingArguments

from results_table import write_results
from trainer_overhead import common_args, make_data, make_model

RESULTS = Path(__file__).parent / "results" / "branch_parallel.md"
MEMBER_0_STEPS = 10


def training_args(run_dir: Path, options: argparse.Namespace, members: list[int]) -> StarSSETrainingArguments:
    return StarSSETrainingArguments(
        **common_args(str(run_dir), MEMBER_0_STEPS),
        num_members=options.members,
        cycle_steps=options.cycle_steps,
        cycle_learning_rate=2e-4,
        members_to_train=members,
        branch_parallel=options.branch_parallel,
    )


def train(run_dir: Path, options: argparse.Namespace, members: list[int]) -> float:
    """Train `members` into `run_dir`; the seconds `train()` took (for parallel branches: until all processes met)."""
    data = make_data(16 * 20, options.seq_len)
    trainer = StarSSETrainer(
        make_model(options.hidden_size), training_args(run_dir, options, members), train_dataset=data
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def time_branches(member_0_run: Path, options: argparse.Namespace, processes: int, threads: int) -> tuple:
    """Train the branches on a copy of `member_0_run`: (seconds in `train()` on the main process, launch seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(member_0_run, run_dir)
        worker = [str(Path(__file__)), "--worker", str(run_dir), *options.worker_options]
        if processes == 1:
            command = [sys.executable, *worker]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            command += [*worker, "--branch-parallel"]
        start = time.perf_counter()
        subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, check=True, capture_output=True)
        launch = time.perf_counter() - start
        return json.loads((Path(tmp) / "time.json").read_text()), launch


def worker(options: argparse.Namespace) -> None:
    seconds = train(options.worker, options, list(range(1, options.members)))
    if int(os.environ.get("RANK", 0)) == 0:
        (options.worker.parent / "time.json").write_text(json.dumps(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5, help="ensemble size K: K-1 branches are timed")
    parser.add_argument("--cycle-steps", type=int, default=30, help="optimizer steps of each branch")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--branch-parallel", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    logging.set_verbosity_error()
    if options.worker is not None:
        return worker(options)
    options.cores = os.cpu_count()
    if options.cores % options.processes:
        parser.error(f"--processes must divide the {options.cores} cores, so that both runs use all of them")
    options.worker_options = [
        *("--members", str(options.members), "--cycle-steps", str(options.cycle_steps)),
        *("--hidden-size", str(options.hidden_size), "--seq-len", str(options.seq_len)),
    ]
    contenders = [(1, options.cores), (1, 1), (options.processes, options.cores // options.processes)]
    rows, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        member_0_run = Path(tmp) / "run"
        options.branch_parallel = False
        train(member_0_run, options, [0])
        time_branches(member_0_run, options, 1, 1)  # warm-up: first-call costs (file cache, allocator) hit none
        for repeat in range(options.repeats):
            times = [time_branches(member_0_run, options, *contender) for contender in contenders]
            rows.append((repeat + 1, *(seconds for seconds, _ in times)))
            overheads = [launch - seconds for seconds, launch in times]
            print(f"repeat {repeat + 1}: " + ", ".join(f"{seconds:.1f}s" for seconds, _ in times), file=sys.stderr)
    speed_ups = [statistics.median(row[column] / row[3] for row in rows) for column in (1, 2)]
    branches = options.members - 1
    lines = [
        "# Branch-parallel StarSSE: wall time of the branch phase",
        "",
        f"{date.today()}, `python benchmarks/branch_parallel.py --members {options.members} --cycle-steps "
        f"{options.cycle_steps} --hidden-size {options.hidden_size} --seq-len {options.seq_len} --processes "
        f"{options.processes} --repeats {options.repeats}`",
        f"on {platform.machine()} with {options.cores} cores, torch {torch.__version__}, CPU only (no GPU was "
        f"available for this benchmark). The machine was shared with other jobs (1-minute load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after), so the three runs alternate and the table gives "
        "every repeat.",
        "",
        f"{branches} StarSSE branches of {options.cycle_steps} optimizer steps each (BERT, 4 layers, hidden "
        f"{options.hidden_size}, batch 16, {options.seq_len} tokens) from one member 0, trained by one process in "
        f"turn ({options.cores} threads, or 1 thread), or by `torchrun --nproc_per_node {options.processes}` with "
        f"`branch_parallel=True` ({options.processes} processes of {options.cores // options.processes} thread(s)). "
        "Times are of `train()` on the main process: the whole branch phase, for the parallel run until every "
        "process has finished. Launch overhead (interpreter, imports, process group) comes on top: "
        f"{overheads[0]:.1f} s, {overheads[1]:.1f} s and {overheads[2]:.1f} s in the last repeat.",
        "",
        f"| repeat | in turn, {options.cores} threads (s) | in turn, 1 thread (s) | branch-parallel (s) | speed-up vs "
        f"{options.cores} threads | speed-up vs 1 thread |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {r} | {a:.1f} | {b:.1f} | {p:.1f} | {a / p:.2f} | {b / p:.2f} |" for r, a, b, p in rows],
        "",
        f"**Median speed-up of the branch phase with {options.processes} processes on {options.cores} cores: "
        f"{speed_ups[0]:.2f}** against one process using every core, {speed_ups[1]:.2f} against one single-threaded "
        "process.",
        "",
        "When the load exceeds the number of cores, a process whose intra-op threads wait for each other (the run in "
        "turn with one thread per core) loses far more time than single-threaded processes, so the speed-up against "
        "it overstates what branch parallelism itself brings; the speed-up against one single-threaded process is "
        "the conservative figure. On an idle machine, or with one GPU per process, the branch phase is expected to "
        "take about ceil((K-1)/N) instead of K-1 cycle times; this was not measured here.",
        "",
    ]
    write_results(lines, options.output)


if __name__ == "__main__":
    main()
