"""Coordination of the processes of a launch: work done by the main process only (its result or error reaching
every process), each process's share of the StarSSE branches, a file-based rendezvous that cannot wait forever, and
the switch that lets one process of a launch train on its own.

Processes that train branches for different lengths of time meet in the run directory (`.processes/`) rather than
in a collective call, which would time out after `ddp_timeout`. While it trains, each process beats a heartbeat
there; a process whose heartbeat stops for `timeout` seconds without a report is named in the error.
"""

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, broadcast_object_list

from ..storage.atomic_io import atomic_write_json

# What `single_process_state` changes in accelerate's shared state (its `PartialState`/`AcceleratorState` are
# borgs: every instance reads these dict entries).
SWITCHED_STATE = {
    "distributed_type": DistributedType.NO,
    "num_processes": 1,
    "process_index": 0,
    "local_process_index": 0,
}


def on_main_process(fn: Callable):
    """
    Run `fn` on the main process only; every process gets its result, or raises the error it raised. The processes
    are the launch's (`PartialState`): unlike an accelerator's `AcceleratorState`, it stays valid when a later
    `TrainingArguments` resets accelerate's state (e.g. a second experiment in the same Python session).
    """
    state = PartialState()
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as err:  # re-raised on every process below, so that none waits forever
            error = err
    if state.num_processes > 1:
        payload = [None if error else result, error]
        broadcast_object_list(payload, from_process=0)
        result = result if state.is_main_process else payload[0]
        error = payload[1]
    if error is not None:
        raise error
    return result


def main_process_only(fn: Callable):
    """Run `fn` on the main process and return its result there (`None` elsewhere); errors reach every process."""
    result = []
    on_main_process(lambda: result.append(fn()))
    return result[0] if result else None


def branch_share(accelerator: Accelerator, branches: list[int]) -> list[int]:
    """This process's share of `branches` (contiguous, as even as possible, the first processes taking more)."""
    with accelerator.split_between_processes(branches) as share:
        return list(share)


@contextmanager
def single_process_state() -> Iterator[None]:
    """
    Make accelerate's shared state describe a single process (no distributed backend, process 0 of 1) inside the
    block, and restore the launch's state afterwards. accelerate has no public way to do this; the keys it relies on
    are checked first, so that an accelerate release that renames them fails here, loudly, instead of training
    every branch data-parallel.

    Raises:
        `RuntimeError`: when accelerate's shared state does not have the keys this switch sets.
    """
    states = (PartialState._shared_state, AcceleratorState._shared_state)
    for state in states:
        missing = [key for key in SWITCHED_STATE if state and key not in state]
        if missing:
            raise RuntimeError(
                f"accelerate's shared state has no {missing}: this accelerate release changed what branch_parallel "
                "relies on. Train with branch_parallel=False (or members_to_train jobs), and report it to hf_starsse."
            )
    saved = [dict(state) for state in states]
    for state in states:
        state.update(SWITCHED_STATE)
    try:
        yield
    finally:
        for state, values in zip(states, saved):
            state.clear()
            state.update(values)


class Rendezvous:
    """
    Processes meeting through files in `directory`: each one reports (a JSON-serialisable dict) when done, and beats
    a heartbeat while it works.

    Args:
        directory (`str` or `os.PathLike`): A directory all processes see (shared filesystem for several nodes).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _report_path(self, process: int) -> Path:
        return self.directory / f"process-{process}.json"

    def _heartbeat_path(self, process: int) -> Path:
        return self.directory / f"process-{process}.alive"

    def clear(self) -> None:
        """Remove the reports and heartbeats of an earlier meeting (e.g. of a launch that crashed)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def report(self, process: int, report: dict[str, Any]) -> None:
        """Write process `process`'s report for `wait`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._report_path(process), report)

    @contextmanager
    def heartbeat(self, process: int, interval: float = 5.0) -> Iterator[None]:
        """Beat process `process`'s heartbeat every `interval` seconds (in a thread) while the block runs."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()

        def beat():
            count = 0
            while True:
                count += 1
                atomic_write_json(self._heartbeat_path(process), count)
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=beat, daemon=True, name=f"hf_starsse-heartbeat-{process}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _beat(self, process: int) -> str | None:
        try:
            return self._heartbeat_path(process).read_text()
        except OSError:
            return None

    def wait(self, num_processes: int, timeout: float, poll_seconds: float = 0.5) -> list[dict[str, Any]]:
        """
        Wait until processes `0..num_processes-1` have reported, and return their reports. A process may take as long
        as it needs while its heartbeat goes on; one that neither reports nor beats for `timeout` seconds is silent.

        Raises:
            `TimeoutError`: naming the silent processes (and those still working).
        """
        last_change = {process: (self._beat(process), time.monotonic()) for process in range(num_processes)}
        while True:
            pending = [process for process in range(num_processes) if not self._report_path(process).is_file()]
            if not pending:
                return [json.loads(self._report_path(process).read_text()) for process in range(num_processes)]
            now, silent = time.monotonic(), []
            for process in pending:
                beat, since = last_change[process]
                if self._beat(process) != beat:
                    last_change[process] = (self._beat(process), now)
                elif now - since > timeout:
                    silent.append(process)
            if silent:
                working = [process for process in pending if process not in silent]
                raise TimeoutError(
                    f"Processes {silent} sent neither a report nor a heartbeat for {timeout:g} s (killed or hung?)"
                    f"{f'; processes {working} are still training' if working else ''}. The members they finished "
                    "are recorded: run the launch again to train the missing ones."
                )
            time.sleep(poll_seconds)
