import numpy as np
from PIL import Image

from hf_starsse.evaluation import metrics, plots


def labelled(figure) -> tuple:
    axis = figure.axes[0]
    return axis.get_title(), axis.get_xlabel(), axis.get_ylabel(), axis.get_legend() is not None


def check_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_metric_vs_size(tmp_path):
    rows = [
        {"method": method, "model": "ensemble", "size": size, "split": "test", "accuracy": base + 0.01 * size}
        for method, base in (("starsse", 0.8), ("local_de", 0.78))
        for size in (1, 2, 3)
    ] + [
        {"method": m, "model": "member", "size": 1, "split": "test", "accuracy": 0.8} for m in ("starsse", "local_de")
    ]
    figure = plots.plot_metric_vs_size(rows, tmp_path / "size.png")
    assert all(labelled(figure)) and len(figure.axes[0].lines) == 4
    check_png(tmp_path / "size.png")
    assert [p.name for p in tmp_path.iterdir()] == ["size.png"]  # written through a renamed temporary file


def test_interpolation_reliability_and_corruptions(tmp_path):
    curve = {"alpha": [0, 0.5, 1], "test": {"accuracy": [0.9, 0.7, 0.88], "loss": [0.3, 0.8, 0.35]}}
    figure = plots.plot_interpolation({"member 0 -> 1": curve, "member 0 -> 2": curve}, tmp_path / "interp.png")
    assert all(labelled(figure)) and len(figure.axes[0].lines) == 2
    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.95, 0.05]])
    diagram = metrics.reliability_diagram(probs, np.array([0, 1, 0]), n_bins=10)
    assert all(labelled(plots.plot_reliability(diagram, tmp_path / "reliability.png")))
    bars = {"gaussian_noise": {"ensemble": 0.7, "soup": 0.65}, "contrast": {"ensemble": 0.6, "soup": 0.62}}
    figure = plots.plot_corruption_bars(bars, tmp_path / "corruptions.png")
    assert all(labelled(figure)) and len(figure.axes[0].patches) == 4
    for name in ("interp", "reliability", "corruptions"):
        check_png(tmp_path / f"{name}.png")


def test_corruption_bars_mean_last_and_default_models(tmp_path):
    models = {"member 0": 0.6, "member 1": 0.62, "ensemble (1)": 0.6, "ensemble (2)": 0.66, "uniform_soup": 0.64}
    results = {"mean": models, "gaussian_noise": models, "contrast": models}  # summarize_robustness puts mean first
    figure = plots.plot_corruption_bars(results, tmp_path / "corruptions.png")
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["gaussian_noise", "contrast", "mean"]
    assert [text.get_text() for text in axis.get_legend().get_texts()] == [
        "single model (member 0)", "ensemble of 2", "uniform soup"
    ]  # fmt: skip
    assert len(axis.patches) == 3 * 3 and len({patch.get_facecolor() for patch in axis.patches}) == 3
    ticks = axis.get_xticks()
    assert ticks[2] - ticks[1] > ticks[1] - ticks[0]  # the mean is set apart
    assert len(axis.lines) == 1  # the separating line
    every = plots.plot_corruption_bars(results, tmp_path / "all.png", models=list(models))
    assert len(every.axes[0].patches) == 3 * 5
    check_png(tmp_path / "corruptions.png")


def test_reliability_grid_and_risk_coverage(tmp_path):
    from hf_starsse.evaluation.uncertainty import risk_coverage_curve

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=50)
    labels = rng.integers(0, 3, 50)
    diagram = metrics.reliability_diagram(probs, labels) | {"ece": metrics.expected_calibration_error(probs, labels)}
    grid = {"before": {"ensemble": diagram, "soup": diagram}, "after": {"ensemble": diagram}}
    figure = plots.plot_reliability_grid(grid, tmp_path / "reliability.png")
    visible = [axis for axis in figure.axes if axis.get_visible()]
    assert len(figure.axes) == 4 and len(visible) == 3 and "ECE" in visible[0].get_title()
    curves = {"single": risk_coverage_curve(probs, labels), "ensemble": risk_coverage_curve(probs, labels)}
    figure = plots.plot_risk_coverage(curves, tmp_path / "risk.png")
    assert all(labelled(figure)) and len(figure.axes[0].lines) == 2
    assert "AURC" in figure.axes[0].get_legend().get_texts()[0].get_text()
    for name in ("reliability", "risk"):
        check_png(tmp_path / f"{name}.png")
