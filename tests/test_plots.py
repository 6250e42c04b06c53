import numpy as np
from PIL import Image

from hf_starsse import metrics, plots


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
