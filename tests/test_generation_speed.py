"""benchmarks/generation_speed.py at its `--quick` sizes: a tiny Llama built from config with random LoRA adapters;
the measurement's properties (token counts, ratios, memory, weight bytes) and the goals' verdicts, no timing
thresholds."""

import math
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("peft")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import generation_speed

    return generation_speed


def measurement(bench, **values):
    fields = dict(num_members=4, num_prompts=2, max_new_tokens=8, repeats=3, device="cpu",
                  seconds={"ensemble": 1.0, "looped": 2.0, "separate": 1.5}, new_tokens={}, memory_kind="peak RSS",
                  ensemble_peak_mb=1100.0, single_peak_mb=1000.0, ensemble_weight_bytes=2**20,
                  single_weight_bytes=2**20)  # fmt: skip
    return bench.GenerationMeasurement(**{**fields, **values})


def test_quick_measurement_of_both_paths(bench, tmp_path):
    base = bench.tiny_llama(tmp_path / "base")
    adapters = bench.random_lora_adapters(base, tmp_path, 2)
    result = bench.measure_generation(base, adapters, base, bench.QUICK_PROMPTS, max_new_tokens=4, repeats=1)
    assert result.new_tokens == {"ensemble": [4], "looped": [4], "separate": [4, 4]}
    for path in bench.PATHS:
        assert result.tokens_per_second(path) > 0 and math.isfinite(result.speed_ratio(path)), path
    assert result.speed_ratio() > 0 and result.speed_ratio("separate") == 1
    assert result.memory_kind == "peak RSS" and result.ensemble_peak_mb > 0 and result.single_peak_mb > 0
    adapter_bytes = sum(t.numel() * t.element_size() for a in adapters
                        for t in load_file(a / "adapter_model.safetensors").values())  # fmt: skip
    assert result.ensemble_weight_bytes - result.single_weight_bytes == adapter_bytes
    lines = bench.render_markdown(result)
    assert lines[0].startswith("| cpu | adapter ensemble (base + 2 LoRA adapters) | 2 merged members |")
    assert lines[-1].startswith("Speed goal") and lines[-1].count("**met**") + lines[-1].count("**not met**") == 2
    assert lines[-1].endswith("(measured at K = 2; the goal is stated for K = 4).")


@pytest.mark.parametrize(
    "values, speed, memory",
    [({}, "**met** (1.50x)", "**met** (1.10x)."),
     ({"seconds": {"ensemble": 2.0, "looped": 2.0, "separate": 1.8}}, "**not met** (0.90x)", "**met** (1.10x)."),
     ({"ensemble_peak_mb": 1250.0}, "**met** (1.50x)", "**not met** (1.25x).")],
)  # fmt: skip
def test_goal_verdicts(bench, values, speed, memory):
    sentence = bench.render_markdown(measurement(bench, **values))[-1]
    assert f"separate generate calls): {speed}. Memory goal" in sentence and sentence.endswith(memory)
