"""Process coordination: the rendezvous of branch-parallel processes is bounded and names the silent ones, and the
accelerate state switch that lets one process train on its own still does what it relies on."""

import threading
import time

import pytest
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from transformers import TrainingArguments

from hf_starsse.run.coordination import (
    Rendezvous,
    branch_share,
    main_process_only,
    on_main_process,
    single_process_state,
)


def test_a_silent_process_is_named_instead_of_waited_for(tmp_path):
    rendezvous = Rendezvous(tmp_path / ".processes")
    rendezvous.report(0, {"members": [1], "error": None})
    stop = threading.Event()

    def slow_process_1():  # alive (heartbeat), reports late
        with rendezvous.heartbeat(1, interval=0.05):
            stop.wait(5)

    worker = threading.Thread(target=slow_process_1)
    worker.start()
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"Processes \[2\] sent neither a report nor a heartbeat for 0.5 s"
                           r".*processes \[1\] are still training"):  # fmt: skip
            rendezvous.wait(3, timeout=0.5, poll_seconds=0.02)
    finally:
        stop.set()
        worker.join()
    assert time.monotonic() - start < 3  # bounded by the timeout, not by the slow process


def test_a_slow_but_alive_process_is_waited_for(tmp_path):
    rendezvous = Rendezvous(tmp_path / ".processes")
    rendezvous.report(0, {"members": [1], "error": None})

    def slow_process_1():
        with rendezvous.heartbeat(1, interval=0.05):
            time.sleep(1.0)  # twice the timeout, but beating
        rendezvous.report(1, {"members": [2], "error": None})

    worker = threading.Thread(target=slow_process_1)
    worker.start()
    reports = rendezvous.wait(2, timeout=0.5, poll_seconds=0.02)
    worker.join()
    assert reports == [{"members": [1], "error": None}, {"members": [2], "error": None}]


def test_single_process_state_switch_matches_accelerate():
    """Fails loudly if an accelerate upgrade stops reading process counts from the shared state this switch sets."""
    Accelerator(cpu=True)  # initialise the shared states as a launch does
    launch = dict(PartialState._shared_state), dict(AcceleratorState._shared_state)
    PartialState._shared_state["num_processes"] = 4  # pretend to be process 2 of 4
    PartialState._shared_state["process_index"] = 2
    try:
        with single_process_state():
            state = PartialState()
            assert (state.num_processes, state.process_index, state.is_main_process) == (1, 0, True)
            assert state.distributed_type == DistributedType.NO
            assert AcceleratorState().num_processes == 1
            accelerator = Accelerator(cpu=True)
            assert branch_share(accelerator, [1, 2, 3]) == [1, 2, 3]  # one process trains every branch
        assert PartialState().num_processes == 4 and PartialState().process_index == 2  # the launch comes back
    finally:
        PartialState._shared_state.clear()
        PartialState._shared_state.update(launch[0])
        AcceleratorState._shared_state.clear()
        AcceleratorState._shared_state.update(launch[1])


def test_single_process_state_refuses_an_unknown_accelerate_layout(monkeypatch):
    Accelerator(cpu=True)
    monkeypatch.delitem(PartialState._shared_state, "process_index")
    with pytest.raises(RuntimeError, match=r"accelerate's shared state has no \['process_index'\]"):
        with single_process_state():
            pass


def test_main_process_work_survives_a_later_training_arguments(tmp_path):
    """A `TrainingArguments` set up after a trainer empties accelerate's `AcceleratorState` (transformers resets it);
    main-process work (saving an ensemble, recording a member) must still run."""
    accelerator = Accelerator(cpu=True)
    assert TrainingArguments(output_dir=str(tmp_path), use_cpu=True).device.type == "cpu"  # resets the state
    with pytest.raises(AttributeError):
        accelerator.num_processes  # what the main-process helpers used to read  # noqa: B018
    assert main_process_only(lambda: 7) == 7
    assert on_main_process(lambda: "done") == "done"
