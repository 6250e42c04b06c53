"""The quality benchmark's protocol: its decisions on tiny inputs, and the whole benchmark at `--quick` sizes on the
real offline assets (skipped, naming the install command, when they are missing)."""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from hf_starsse.demo.assets import DATA_PACKAGE, TEXT_MODEL_PACKAGE, WEIGHTS_PACKAGE
from hf_starsse.demo.text_assets import TEXT_INSTALL_COMMAND

import protocol  # noqa: E402


def cell(lr: float, length: float, accuracy: float, member: float, nll: float = 0.5) -> dict:
    return {"lr_ratio": lr, "length_ratio": length, "ensemble_accuracy": accuracy, "ensemble_nll": nll,
            "member_accuracy": member}  # fmt: skip


def test_convergence_rule():
    assert protocol.converged(0.900, 0.904) and protocol.converged(0.904, 0.900)
    assert not protocol.converged(0.900, 0.905) and not protocol.converged(0.87, 0.90)
    assert protocol.converged(0.90, 0.87)  # longer training hurts: it is not under-trained
    assert protocol.member0_length({2.0: 0.80, 4.0: 0.85, 8.0: 0.853}) == (4.0, True)  # 4 -> 8 changes < 0.5 pt
    assert protocol.member0_length({2.0: 0.80, 4.0: 0.85}) == (4.0, False)  # still moving: the longest, flagged
    assert protocol.member0_length({2.0: 0.851, 4.0: 0.85}) == (2.0, True)


def test_lr_grid_grows_until_the_best_cell_is_interior():
    edge_high = [cell(1, 0.5, 0.80, 0.78), cell(2, 0.5, 0.82, 0.79), cell(4, 0.5, 0.84, 0.77)]
    assert protocol.next_lr_ratio(edge_high, member0_accuracy=0.80, num_classes=4) == 8
    edge_low = [cell(0.5, 0.5, 0.84, 0.8), cell(1, 0.5, 0.82, 0.8), cell(2, 0.5, 0.80, 0.7)]
    assert protocol.next_lr_ratio(edge_low, 0.80, 4) == 0.25
    interior = [cell(1, 0.5, 0.80, 0.8), cell(2, 0.5, 0.84, 0.8), cell(4, 0.5, 0.82, 0.7)]
    assert protocol.next_lr_ratio(interior, 0.80, 4) is None
    # the best cell at the largest LR, but that column no longer trains (members near chance): larger is pointless
    diverged = [cell(1, 0.5, 0.30, 0.30), cell(2, 0.5, 0.31, 0.30), cell(4, 0.5, 0.32, 0.26)]
    assert protocol.next_lr_ratio(diverged, 0.80, 4) is None


def test_three_behaviours_from_a_grid():
    cells = [
        cell(0.5, 0.25, 0.80, 0.79), cell(1, 0.25, 0.81, 0.79), cell(2, 0.25, 0.86, 0.78),
        cell(0.5, 0.5, 0.82, 0.80), cell(1, 0.5, 0.85, 0.79), cell(2, 0.5, 0.84, 0.75),
        cell(4, 0.5, 0.70, 0.60), cell(8, 0.5, 0.40, 0.30), cell(8, 0.25, 0.30, 0.25),
    ]  # fmt: skip
    chosen = protocol.behaviours(cells, member0_accuracy=0.80, num_classes=4)
    assert chosen["optimal"] == cells[2]  # the best validation ensemble: LR x2, length x0.25
    assert chosen["more local"] == cells[0]  # the smallest LR at the optimum's length
    assert chosen["more semi-local"] == cells[2]  # x8 at length 0.25 no longer trains (0.25 < 0.25 + 0.5 * 0.55)
    chosen = protocol.behaviours(cells[3:8], 0.80, 4)
    assert [chosen[k]["lr_ratio"] for k in ("more local", "optimal", "more semi-local")] == [0.5, 1, 4]
    ties = [cell(1, 0.5, 0.85, 0.8, nll=0.4), cell(2, 0.5, 0.85, 0.8, nll=0.3)]
    assert protocol.behaviours(ties, 0.8, 4)["optimal"]["lr_ratio"] == 2  # equal accuracy: the lower NLL


def test_paired_difference():
    mean, std = protocol.paired_difference({0: 0.90, 1: 0.80, 2: 0.85}, {0: 0.85, 1: 0.78, 2: 0.80})
    assert mean == pytest.approx(0.04) and std == pytest.approx(0.017320508, rel=1e-6)
    assert protocol.paired_difference({0: 0.9, 5: 1.0}, {0: 0.8}) == (pytest.approx(0.1), 0.0)  # common seeds only
    with pytest.raises(ValueError, match="No seed in common"):
        protocol.paired_difference({0: 0.9}, {1: 0.8})


def test_temperature_and_calibrated_metrics_on_a_hand_computed_case():
    probs, labels = np.array([[0.8, 0.2]] * 4), np.array([0, 0, 0, 1])
    # the NLL is lowest when every prediction is (0.75, 0.25): log(0.8 / 0.2) / T = log(0.75 / 0.25)
    fitted = protocol.temperature(probs, labels)
    assert fitted == pytest.approx(math.log(4) / math.log(3), rel=1e-4)
    metrics = protocol.evaluation_metrics(probs, labels, fitted)
    assert metrics["ece"] == pytest.approx(0.05) and metrics["ece_calibrated"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["nll_calibrated"] == pytest.approx(-(3 * math.log(0.75) + math.log(0.25)) / 4, rel=1e-6)
    assert metrics["nll_calibrated"] < metrics["nll"] and metrics["accuracy"] == 0.75
    # confidences 0.9 > 0.8 > 0.7 > 0.6, the third wrong: risks 0, 0, 1/3, 1/4 at coverages 1/4..1
    ranked = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    assert protocol.evaluation_metrics(ranked, np.array([0, 0, 1, 0]), 1.0)["aurc"] == pytest.approx(7 / 48)
    with_zero = protocol.evaluation_metrics(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), 2.0)
    assert all(math.isfinite(value) for value in with_zero.values())  # an underflowed probability is clipped


def test_calibration_goal():
    members = [{"ece": 0.03, "nll": 0.50, "nll_calibrated": 0.48}, {"ece": 0.02, "nll": 0.52, "nll_calibrated": 0.47}]
    soup = [{"nll": 0.46, "nll_calibrated": 0.45}]
    goal = protocol.calibration_goal({"ece_calibrated": 0.02, "nll_calibrated": 0.40}, members, soup)
    assert goal == {"ece": 0.02, "best_member_ece": 0.02, "nll": 0.40, "lowest_other_nll": 0.45, "holds": True}
    assert not protocol.calibration_goal({"ece_calibrated": 0.021, "nll_calibrated": 0.40}, members, soup)["holds"]
    assert not protocol.calibration_goal({"ece_calibrated": 0.01, "nll_calibrated": 0.451}, members, soup)["holds"]


assets = pytest.mark.skipif(
    any(
        importlib.util.find_spec(name) is None
        for name in (WEIGHTS_PACKAGE, DATA_PACKAGE, TEXT_MODEL_PACKAGE, "sklearn")
    ),
    reason=f"the benchmark's offline assets are not installed: {TEXT_INSTALL_COMMAND}",
)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the benchmark runs on one thread


@assets
@pytest.mark.slow
def test_quick_benchmark_runs_every_phase_and_resumes(tmp_path, monkeypatch, restore_threads):
    import quality

    monkeypatch.setenv("HF_STARSSE_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results" / "quality.md"
    argv = ["--quick", "--work-dir", str(tmp_path / "work"), "--results", str(results)]
    quality.main(argv)
    report = results.read_text()
    for section in ("## Image", "## Text", "**Member 0**", "**SSE grid**", "**StarSSE behaviours**",
                    "Single model (member 0)", "StarSSE uniform soup (3)", "Paired differences",
                    "test ECE calibrated", "shift AURC", "**Calibration goal**"):  # fmt: skip
        assert section in report, section
    final_rows = [line for line in report.splitlines() if line.startswith("| StarSSE ensemble (3) |")]
    assert len(final_rows) == 2  # image and text
    for row in final_rows:  # 5 metrics x (test, shift) as "mean ± std", then the steps
        cells = [cell.split(" ± ") for cell in row.strip("| ").split(" | ")[1:11]]
        assert all(len(cell) == 2 and all(math.isfinite(float(v)) for v in cell) for cell in cells), row
    assert len(re.findall(r"Wall time: \d+ min from the task's first start to its results", report)) == 2
    started = {name: (tmp_path / "work" / name / "started").read_text() for name in ("image", "text")}
    for name in ("image_final", "text_final", "image_sse_behaviours", "text_starsse_behaviours"):
        assert (results.parent / f"quality_{name}.png").is_file(), name
    text = json.loads((tmp_path / "work/text/results.json").read_text())
    assert set(text["final"]) == {"0", "1000"} and set(text["final"]["0"]) == {"local_de", "sse", "starsse"}
    shift_splits = set(json.loads((tmp_path / "work/image/results.json").read_text())["final"]["0"]["sse"]["splits"])
    assert len(shift_splits) == 1 + 8  # test + 8 corruptions at the quick severity
    assert set(text["behaviours"]["starsse"]) == {"more local", "optimal", "more semi-local"}
    for evaluation in text["final"]["1000"].values():
        assert all(0 < t < 100 for kind in evaluation["temperatures"].values() for t in kind)
        for split in evaluation["splits"].values():
            for entry in (entry for kind in split.values() for entry in kind):
                assert all(math.isfinite(entry[m]) for m in ("ece_calibrated", "nll_calibrated", "aurc"))

    saved = sorted((tmp_path / "work").glob("**/members/member-*/model.safetensors"))
    saved += sorted((tmp_path / "work").glob("**/protocol_*.json"))
    mtimes = [path.stat().st_mtime_ns for path in saved]
    quality.main(argv)  # a rerun reuses every member, cell and evaluation
    assert [path.stat().st_mtime_ns for path in saved] == mtimes
    assert {name: (tmp_path / "work" / name / "started").read_text() for name in started} == started  # from the first
    assert json.loads((tmp_path / "work/text/results.json").read_text())["final"] == text["final"]

    # an evaluation cached before calibration (older key, no calibrated metrics) is recomputed, not used
    old = tmp_path / "work/text/seed1000/local_de/protocol_evaluation.json"
    saved = json.loads(old.read_text())
    saved["key"] = saved["key"][:-1]
    for split in saved["value"]["splits"].values():
        for entry in (entry for kind in split.values() for entry in kind):
            for name in ("ece_calibrated", "nll_calibrated", "aurc"):
                del entry[name]
    del saved["value"]["temperatures"]
    old.write_text(json.dumps(saved))
    quality.main(argv)
    assert json.loads((tmp_path / "work/text/results.json").read_text())["final"] == text["final"]

    # one task alone: its own report, with its default name
    assert quality.parse_args(["--task", "text"]).results == quality.RESULTS / "quality-text.md"
    assert quality.parse_args([]).results == quality.RESULTS / "quality.md"
    quality.main([*argv, "--task", "text", "--results", str(tmp_path / "text.md")])
    report = (tmp_path / "text.md").read_text()
    assert "## Text" in report and "## Image" not in report
