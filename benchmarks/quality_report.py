"""The quality benchmark's report: tables and plots from the results of `quality.py` (one dict per task)."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from hf_starsse.evaluation import plots  # noqa: F401  (selects the Agg backend: files only)

import protocol
from results_table import write_results

NAMES = {"local_de": "Local DE", "sse": "SSE", "starsse": "StarSSE"}
BEHAVIOURS = ("more local", "optimal", "more semi-local")
COLOURS = {"more local": "tab:blue", "optimal": "tab:green", "more semi-local": "tab:red", "local_de": "tab:gray",
           "sse": "tab:orange", "starsse": "tab:purple"}  # fmt: skip
METRICS = ("accuracy", "nll", "ece", "ece_calibrated", "aurc")
HEADERS = {"accuracy": "acc", "nll": "NLL", "ece": "ECE", "ece_calibrated": "ECE calibrated", "aurc": "AURC"}


def split_metric(evaluation: dict, kind: str, index: int, metric: str, shift: bool) -> float:
    """One metric of `kind` (member, ensemble, soup) number `index`, on the test split or averaged over the shift
    splits (every corruption and severity for images, the held-out newsgroups for text)."""
    splits = [name for name in evaluation["splits"] if (name != "test") == shift]
    return float(np.mean([evaluation["splits"][name][kind][index][metric] for name in splits]))


def per_seed(final: dict, method: str, kind: str, index: int, metric: str, shift: bool) -> dict:
    return {seed: split_metric(runs[method], kind, index, metric, shift) for seed, runs in final.items()}


def steps(final: dict, method: str, size: int) -> float:
    return float(np.mean([sum(runs[method]["steps"][:size]) for runs in final.values()]))


def mean_std(values: dict) -> str:
    array = np.array(list(values.values()))
    return f"{array.mean():.4f} ± {array.std(ddof=1) if len(array) > 1 else 0.0:.4f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def final_table(final: dict, members: int) -> list[str]:
    """Mean ± std over seeds at size K (and the single model), in distribution and under shift."""
    header = ["model", *(f"{split} {HEADERS[m]}" for split in ("test", "shift") for m in METRICS),
              "optimizer steps"]  # fmt: skip
    models = [("Single model (member 0)", "starsse", "member", 0, 1)]
    for method, name in NAMES.items():
        models += [(f"{name} ensemble ({members})", method, "ensemble", members - 1, members),
                   (f"{name} uniform soup ({members})", method, "soup", members - 1, members)]  # fmt: skip
    rows = []
    for label, method, kind, index, size in models:
        values = [mean_std(per_seed(final, method, kind, index, metric, shift)) for shift in (False, True)
                  for metric in METRICS]  # fmt: skip
        rows.append([label, *values, f"{steps(final, method, size):.0f}"])
    return table(header, rows)


def mean_metrics(final: dict, method: str, kind: str, index: int, shift: bool) -> dict[str, float]:
    """Every metric of one model, mean over seeds."""
    names = next(iter(final.values()))[method]["splits"]["test"][kind][index]
    return {m: float(np.mean(list(per_seed(final, method, kind, index, m, shift).values()))) for m in names}


def calibration_goal_line(final: dict, members: int) -> str:
    """Whether pool-then-calibrate reaches its goal (`protocol.calibration_goal`), per method, test and shift."""
    verdicts, parts = [], []
    for shift in (False, True):
        cells = []
        for method, name in NAMES.items():
            goal = protocol.calibration_goal(
                mean_metrics(final, method, "ensemble", members - 1, shift),
                [mean_metrics(final, method, "member", k, shift) for k in range(members)],
                [mean_metrics(final, method, "soup", members - 1, shift)],
            )
            verdicts.append(goal["holds"])
            cells.append(f"{name} {'holds' if goal['holds'] else 'fails'} (ECE {goal['ece']:.4f} vs best member "
                         f"{goal['best_member_ece']:.4f}; NLL {goal['nll']:.4f} vs lowest other "
                         f"{goal['lowest_other_nll']:.4f})")  # fmt: skip
        parts.append(f"{'shift' if shift else 'test'}: " + ", ".join(cells))
    return (f"**Calibration goal**: the calibrated ensemble's ECE at or below the best member's while its NLL stays "
            f"the lowest (below each member's and the uniform soup's, raw or calibrated; temperatures fitted on the "
            f"validation split; means over seeds). It holds in {sum(verdicts)} of {len(verdicts)} cases: "
            + "; ".join(parts) + ".")  # fmt: skip


def paired_table(final: dict, members: int) -> list[str]:
    """Paired differences (same seed) at size K: each pair of methods, and each method minus the single model."""
    pairs = [("starsse", "sse"), ("starsse", "local_de"), ("sse", "local_de")]
    rows = []
    for kind in ("ensemble", "soup"):
        label = "ensemble" if kind == "ensemble" else "uniform soup"
        comparisons = [(f"{NAMES[a]} {label} − {NAMES[b]} {label}", a, b, kind) for a, b in pairs]
        comparisons += [(f"{NAMES[m]} {label} − single model", m, None, kind) for m in NAMES]
        for text, a, b, kind_a in comparisons:
            cells = []
            for shift in (False, True):
                for metric in ("accuracy", "nll"):
                    values = per_seed(final, a, kind_a, members - 1, metric, shift)
                    baseline = per_seed(final, b or "starsse", kind_a if b else "member", members - 1 if b else 0,
                                        metric, shift)  # fmt: skip
                    mean, std = protocol.paired_difference(values, baseline)
                    cells.append(f"{mean:+.4f} ± {std:.4f}")
            rows.append([text, *cells])
    return table(["difference", "test acc", "test NLL", "shift acc", "shift NLL"], rows)


def size_table(final: dict, members: int) -> list[str]:
    """Accuracy of ensembles and uniform soups of size 1..K (mean over seeds), test and shift."""
    rows = []
    for method, name in NAMES.items():
        for kind in ("ensemble", "soup"):
            for shift in (False, True):
                values = [np.mean(list(per_seed(final, method, kind, k, "accuracy", shift).values()))
                          for k in range(members)]  # fmt: skip
                rows.append([f"{name} {kind}", "shift" if shift else "test", *(f"{v:.4f}" for v in values)])
    return table(["model", "split", *(str(k) for k in range(1, members + 1))], rows)


def plot_final(result: dict, members: int, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    sizes = range(1, members + 1)
    for axis, shift in zip(axes, (False, True)):
        for method, name in NAMES.items():
            for kind, style in (("ensemble", "-"), ("soup", "--")):
                values = [np.mean(list(per_seed(result["final"], method, kind, k, "accuracy", shift).values()))
                          for k in range(members)]  # fmt: skip
                axis.plot(sizes, values, style, marker="o", color=COLOURS[method], label=f"{name} {kind}")
        axis.set_title(f"{'shift' if shift else 'test'}: accuracy vs size (mean over seeds)")
        axis.set_xlabel("members")
        axis.set_xticks(list(sizes))
        axis.grid(alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_behaviours(behaviours: dict, method: str, members: int, path: Path) -> None:
    """The paper's Fig. 1/4 (ensemble and soup accuracy vs size), Fig. 3 (each member) and Fig. 2 (member 0 ->
    member k) for the three behaviours of one method, on the test split."""
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    for name in BEHAVIOURS:
        entry, colour = behaviours[name], COLOURS[name]
        cell = entry["cell"]
        label = f"{name} (LR x{cell['lr_ratio']:g}, length x{cell['length_ratio']:g})"
        evaluation = entry["evaluation"]
        sizes = range(1, members + 1)
        for kind, style in (("ensemble", "-"), ("soup", "--")):
            values = [split_metric(evaluation, kind, k, "accuracy", False) for k in range(members)]
            axes[0].plot(sizes, values, style, marker="o", color=colour, label=f"{label} {kind}")
        axes[1].plot(range(members), [split_metric(evaluation, "member", k, "accuracy", False)
                                      for k in range(members)], marker="o", color=colour, label=label)  # fmt: skip
        for curve in entry["interpolation"]:
            axes[2].plot(curve["alpha"], curve["accuracy"], color=colour, alpha=0.4 + 0.6 / curve["member"],
                         label=label if curve["member"] == 1 else None)  # fmt: skip
    axes[0].set(title="ensemble (—) and uniform soup (--) accuracy", xlabel="size")
    axes[1].set(title="accuracy of each member", xlabel="member index (0: the first model)")
    axes[2].set(title="member 0 → member k (k = 1..K-1)", xlabel="interpolation α")
    axes[0].set_xticks(list(range(1, members + 1)))
    axes[1].set_xticks(list(range(members)))
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.set_ylabel("test accuracy")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    figure.suptitle(f"{NAMES[method]}: the three behaviours")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def grid_table(grid: dict) -> list[str]:
    rows = [[f"{c['lr_ratio']:g}", f"{c['length_ratio']:g}", f"{c['ensemble_accuracy']:.4f}",
             f"{c['ensemble_nll']:.4f}", f"{c['member_accuracy']:.4f}", f"{c['barrier']:.4f}"]
            for c in sorted(grid["cells"], key=lambda c: (c["length_ratio"], c["lr_ratio"]))]  # fmt: skip
    return table(["cycle LR ratio", "cycle length ratio", "ensemble acc", "ensemble NLL", "mean member acc",
                  "barrier (member 0 → 1)"], rows)  # fmt: skip


def behaviour_table(behaviours: dict, members: int) -> list[str]:
    rows = []
    for name in BEHAVIOURS:
        entry = behaviours[name]
        evaluation, cell = entry["evaluation"], entry["cell"]
        member_acc = np.mean([split_metric(evaluation, "member", k, "accuracy", False) for k in range(1, members)])
        barriers = [curve["barrier"] for curve in entry["interpolation"]]
        rows.append([name, f"{cell['lr_ratio']:g}", f"{cell['length_ratio']:g}",
                     f"{split_metric(evaluation, 'ensemble', members - 1, 'accuracy', False):.4f}",
                     f"{split_metric(evaluation, 'soup', members - 1, 'accuracy', False):.4f}", f"{member_acc:.4f}",
                     " / ".join(f"{b:.3f}" for b in barriers)])  # fmt: skip
    return table(["behaviour", "LR ratio", "length ratio", f"ensemble ({members}) acc", f"soup ({members}) acc",
                  "members 1.. mean acc", "barriers 0→k"], rows)  # fmt: skip


def task_section(name: str, result: dict, options, prefix: Path) -> list[str]:
    members, sizes, convergence = options.members, result["sizes"], result["convergence"]
    lines = [f"## {name.capitalize()}", ""]
    if name == "image":
        lines.append(f"ImageNet MobileNetV2 (torchvision weights) on Fashion-MNIST at {sizes['image_size']} px: "
                     f"{result['train_samples']} training images, {sizes['validation']} validation images (carved "
                     f"from the training file), {sizes['test']} test images; shift: the first {sizes['shift']} test "
                     f"images under 8 corruptions x severities {', '.join(map(str, sizes['severities']))}, metrics "
                     "averaged over all of them. Member 0: SGD (momentum 0.9)")  # fmt: skip
    else:
        lines.append(f"all-MiniLM-L6-v2 on 20 Newsgroups, 4 families ({', '.join(result['classes'])}; "
                     f"`hf_starsse/demo/text_assets.py`), {sizes['max_length']} tokens: {result['train_samples']} "
                     f"training posts, {sizes['validation']} validation posts, {sizes['test']} test posts of the "
                     f"trained-on newsgroups; shift: {sizes['shift']} posts of held-out sibling newsgroups (same "
                     "families, new sub-topics: a sub-population shift). Member 0: AdamW")  # fmt: skip
    lines[-1] += (f", peak lr {sizes['learning_rate']:g}, batch {sizes['batch']}, linear decay to zero; Local DE "
                  "members repeat it with fresh heads and their own seeds. SSE/StarSSE cycles: cosine to zero, "
                  "restarting at the cycle LR.")  # fmt: skip
    if result.get("size_note"):
        lines[-1] += " " + result["size_note"]
    lines[-1] += f" Wall time: {result['wall_seconds'] / 60:.0f} min from the task's first start to its results."
    history = ", ".join(f"{k} epochs: {v:.4f}" for k, v in convergence["history"].items())
    verdict = "converged" if convergence["converged"] else "NOT converged within the doublings allowed"
    lines += ["", f"**Member 0** (validation accuracy by length: {history}): {convergence['epochs']:g} epochs "
              f"({convergence['steps']} optimizer steps), {verdict} by the rule (doubling raises validation "
              f"accuracy by < {protocol.CONVERGENCE_TOLERANCE * 100:g} points).", ""]  # fmt: skip
    for method in ("sse", "starsse"):
        grid = result["grids"][method]
        extended = f"; LR ratios added: {grid['extensions']}" if grid["extensions"] else ""
        interior = "interior" if grid["interior"] else "still at the edge (extension limit reached)"
        lines += [f"**{NAMES[method]} grid** (validation, {members} members; best cell {interior}{extended}):", "",
                  *grid_table(grid), "", f"**{NAMES[method]} behaviours** (test split):", "",
                  *behaviour_table(result["behaviours"][method], members), "",
                  f"![{prefix.name}_{name}_{method}_behaviours.png]({prefix.name}_{name}_{method}_behaviours.png)",
                  ""]  # fmt: skip
        plot_behaviours(result["behaviours"][method], method, members,
                        prefix.parent / f"{prefix.name}_{name}_{method}_behaviours.png")  # fmt: skip
    final = result["final"]
    optimum = {m: result["grids"][m]["behaviours"]["optimal"] for m in ("sse", "starsse")}
    lines += [f"**Final comparison** on test and shift, seeds {', '.join(map(str, final))} (mean ± sample std), "
              "each method at its own optimum ("
              + "; ".join(f"{NAMES[m]}: LR x{c['lr_ratio']:g}, length x{c['length_ratio']:g}"
                          for m, c in optimum.items()) + "):", "",
              *final_table(final, members), "", "ECE calibrated: after one temperature per model (for an ensemble, "
              "of the pooled prediction) fitted on the validation split; AURC: area under the risk-coverage curve of "
              "the max probability (lower is better).", "", calibration_goal_line(final, members), "",
              "Accuracy by ensemble / soup size (mean over seeds):", "",
              *size_table(final, members), "", "Paired differences (same seed, same member 0; mean ± std):", "",
              *paired_table(final, members), "", f"![{prefix.name}_{name}_final.png]({prefix.name}_{name}_final.png)",
              ""]  # fmt: skip
    plot_final(result, members, prefix.parent / f"{prefix.name}_{name}_final.png")
    return lines


def write_report(results: dict, options, output: Path, command: str, environment: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    prefix = output.with_suffix("")
    lines = [
        "# Ensemble quality: the paper's protocol (single model, Local DE, SSE, StarSSE)",
        "",
        f"`{command}` ({environment}; each task's wall time, from its first start to its results, is in its "
        "section). "
        f"K = {options.members}; grids: cycle LR ratios {options.lr_ratios} (extended until the best cell is "
        f"interior, at most {options.max_extensions} more) x cycle length ratios {options.length_ratios}.",
        "",
    ]
    for name, result in results.items():
        lines += task_section(name, result, options, prefix)
    write_results(lines, output)
