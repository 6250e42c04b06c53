import math
import pickle

import pytest
import torch

from hf_starsse import get_cycle_schedule
from hf_starsse.training.schedule import cycle_lr_factor


def lrs(num_cycle_steps, num_warmup_steps, peak=0.1):
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=peak)
    scheduler = get_cycle_schedule(optimizer, num_cycle_steps, num_warmup_steps)
    trace = []
    for _ in range(num_cycle_steps):
        trace.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return trace


def test_cosine_from_peak_to_zero():
    trace = lrs(10, 0)
    assert trace[0] == pytest.approx(0.1)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * step / 10)) for step in range(10)]
    assert trace == pytest.approx(expected)
    assert all(a > b for a, b in zip(trace, trace[1:]))
    assert cycle_lr_factor(10, num_cycle_steps=10, num_warmup_steps=0) == pytest.approx(0.0)


def test_linear_warmup_then_cosine():
    trace = lrs(10, 4)
    assert trace[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert trace[5:] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(1, 6)])


def test_picklable_and_resumable():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = get_cycle_schedule(optimizer, 8, 2)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    pickle.loads(pickle.dumps(scheduler.lr_lambdas[0]))
    resumed_optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    resumed = get_cycle_schedule(resumed_optimizer, 8, 2)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.get_last_lr() == pytest.approx(scheduler.get_last_lr())


@pytest.mark.parametrize("steps,warmup", [(0, 0), (5, 5), (5, -1)])
def test_invalid_lengths(steps, warmup):
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="num_"):
        get_cycle_schedule(optimizer, steps, warmup)
