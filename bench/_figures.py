"""What bench/methods.py prints and draws from a comparison's finished runs: per method the final
hypervolumes and the compute to reach random search's, the retrained students by size, kdnas minus each method
paired by seed, every seed alone, what distillation is worth by size, and hypervolume against compute as a
self-contained HTML page."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING

from _kd_effect import kd_effect
from _runs import compute_curve, first_reach

from kdnas.files import write_text
from kdnas.progress import percent
from kdnas.results import hypervolume_history
from kdnas.status import BUDGET_STATUSES, TrialStatus

if TYPE_CHECKING:
    from methods import MethodRun

# Two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond the table).
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def report(runs: dict, methods: dict[str, str], sizes: list[str], epochs: int, figure: Path, study: str) -> None:
    """Print every section and write the figure for the finished ``runs`` (by (method, seed): whole seeds,
    random search's among them) of the ``methods`` reported (name: label), students within ``sizes``
    parameters retrained for ``epochs``."""
    runs, own = one_machine_latencies(runs)
    curves = {key: _curves(run) for key, run in runs.items()}
    seeds = len({seed for _, seed in runs})
    names = list(methods)
    _print_teachers(runs)
    _print_hypervolumes(names, seeds, runs, curves, own)
    _print_students(names, seeds, sizes, epochs, runs)
    if "kdnas" in names and len(names) > 1:
        _print_paired(names, seeds, sizes, runs, curves)
    _print_per_seed(names, seeds, sizes, runs, curves)
    _print_kd_effect(seeds, sizes, runs)
    _write_figure(figure, methods, seeds, curves, study)


def one_machine_latencies(runs: dict) -> tuple[dict, int]:
    """``runs`` with every network at the latency that random search's seed-0 machine timed it at, and its
    reference: runs read from records may come from other machines, where networks' latencies relative to the
    reference differ, so each machine's hypervolumes would measure another yardstick. Every run timed on that
    machine (the same reference: the same latency table) adds the networks it timed. Also how many runs
    keep their own machine's latencies: those with a network it never timed."""
    reference = runs["random", 0].references["latency_ms"]
    table = {}
    for run in runs.values():
        if run.references["latency_ms"] == reference:
            timed = run.frame[run.frame["latency_ms"].notna()]
            table.update(zip(timed["arch"], timed["latency_ms"], strict=True))
    same, own = {}, 0
    for key, run in runs.items():
        timed = run.frame["latency_ms"].notna()
        if run.references["latency_ms"] == reference:
            same[key] = run
        elif not run.frame["arch"][timed].isin(table).all():
            same[key], own = run, own + 1
        else:
            frame = run.frame.assign(latency_ms=run.frame["arch"].map(table).where(timed))
            same[key] = dataclasses.replace(run, frame=frame, references={**run.references, "latency_ms": reference})
    return same, own


def _curves(run: MethodRun) -> dict[str, list[float]]:
    """Cumulative compute and both hypervolumes after each row of a method's frame."""
    cost, hv_params = compute_curve(run.frame, run.cfg, run.references["train_images"])
    hv_latency = hypervolume_history(run.frame, run.references["latency_ms"], "latency_ms").tolist()
    return {"compute": cost, "params": hv_params, "latency_ms": hv_latency}


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% interval (Student's t; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T975.get(n - 1, 1.96) * sd / math.sqrt(n)


def with_interval(values: list[float], spec: str, scale: float = 1.0, unit: str = "") -> str:
    """'mean +- half-width' of the scaled values in format `spec`; one value has no interval to show."""
    mean, half = mean_interval([scale * value for value in values])
    shown = f"{half:{spec.replace('+', '')}}".strip() + unit if len(values) > 1 else "-"
    return f"{mean:{spec}}{unit} +- {shown}"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _print_teachers(runs: dict) -> None:
    """The teacher every run distilled from: one, unless runs read from records trained it on other machines
    (its training is seeded, but floating-point sums differ between CPUs), which makes their seeds differ."""
    teachers = collections.Counter(
        (run.teacher["weights_sha256"], run.teacher["test_accuracy"]) for run in runs.values()
    )
    described = [
        f"{percent(accuracy)} test accuracy, weights {sha[:12]} ({count} of {len(runs)} runs)"
        for (sha, accuracy), count in teachers.most_common()
    ]
    print(f"\nteacher{'s' if len(described) > 1 else ''}: {'; '.join(described)}")


def _print_hypervolumes(methods: list[str], seeds: int, runs: dict, curves: dict, own: int) -> None:
    params = sorted({run.references["params"] for run in runs.values()})
    latencies = sorted({round(run.references["latency_ms"], 3) for run in runs.values()})
    machines = " as random search's seed-0 machine timed every network"
    if own:
        machines = f"{machines}, and {own} run(s) timed elsewhere, with a network it never timed, at their own"
    print(
        "\n== hypervolume at the end, every method given random search's compute on each seed "
        f"(mean +- 95% interval over {_seeds(seeds)}); "
        f"references: 0% accuracy at {', '.join(f'{p:,.0f}' for p in params)} parameters, "
        f"at {', '.join(f'{ms:.3f}' for ms in latencies)} ms{machines}; compute in TFLOP; trials that cost training"
    )
    print(
        f"{'method':<13} {'HV params':>17} {'HV latency':>17} {'TFLOP':>16} {'trials':>6}   "
        "to reach random's final HV (params)"
    )
    for method in methods:
        trials = sum(runs[method, s].trials for s in range(seeds)) / seeds
        hv_p = with_interval([curves[method, s]["params"][-1] for s in range(seeds)], ".4f")
        hv_l = with_interval([curves[method, s]["latency_ms"][-1] for s in range(seeds)], ".4f")
        spent = with_interval([curves[method, s]["compute"][-1] for s in range(seeds)], ".3g", 1e-12)
        shares = [share for s in range(seeds) if (share := _reach_share(curves, method, s)) is not None]
        if shares:
            share = with_interval(shares, ".0f", 100, "%")
            reach = f"{share} of random's compute ({len(shares)} of {_seeds(seeds)})"
        else:
            reach = f"not reached (0 of {_seeds(seeds)})"
        print(f"{method:<13} {hv_p:>17} {hv_l:>17} {spent:>16} {trials:6.1f}   {reach}")


def _reach_share(curves: dict, method: str, seed: int) -> float | None:
    """The share of random search's compute a method spent to first reach random's final hypervolume
    (accuracy vs parameters) on a seed, or None where it never did."""
    goal = curves["random", seed]
    found = first_reach(curves[method, seed]["compute"], curves[method, seed]["params"], goal["params"][-1])
    return None if found is None else found / goal["compute"][-1]


def _print_students(methods: list[str], seeds: int, sizes: list[str], epochs: int, runs: dict) -> None:
    """Per method and size: the student it would hand over (best validation accuracy within the size), retrained."""
    print(
        f"\n== test accuracy of the student each method hands over within a size (its best by validation "
        f"accuracy), trained again for {epochs} epochs; mean +- 95% interval over seeds (seeds with one)"
    )
    print(f"{'method':<13} " + " ".join(f"{f'<= {int(size):,}':>22}" for size in sizes))
    for method in methods:
        cells = []
        for size in sizes:
            students = [runs[method, seed].students.get(size) for seed in range(seeds)]
            accuracies = [student["test_accuracy"] for student in students if student]
            if accuracies:
                cells.append(f"{with_interval(accuracies, '6.2f', 100)}% ({len(accuracies)})")
            else:
                cells.append("-")
        print(f"{method:<13} " + " ".join(f"{cell:>22}" for cell in cells))


def _print_paired(methods: list[str], seeds: int, sizes: list[str], runs: dict, curves: dict) -> None:
    """kdnas minus every other method, seed by seed: a difference's interval is narrower than two methods'
    intervals side by side, since a seed's data split and teacher are shared by all its methods."""
    print(
        "\n== kdnas minus each method, paired by seed: final hypervolumes, and test accuracy (points) of the "
        "students handed over within a size; mean +- 95% interval (seeds where kdnas is ahead / seeds compared)"
    )
    print(
        f"{'method':<13} {'HV params':>24} {'HV latency':>24} "
        + " ".join(f"{f'<= {int(size):,}':>22}" for size in sizes)
    )

    def cell(differences: list[float], digits: int, width: int) -> str:
        if not differences:
            return f"{'-':>{width}}"
        ahead = sum(d > 0 for d in differences)
        text = f"{with_interval(differences, f'+.{digits}f')} ({ahead}/{len(differences)})"
        return f"{text:>{width}}"

    for method in methods:
        if method == "kdnas":
            continue
        cells = [
            cell([curves["kdnas", s][cost][-1] - curves[method, s][cost][-1] for s in range(seeds)], 4, 24)
            for cost in ("params", "latency_ms")
        ]
        for size in sizes:
            pairs = [(runs["kdnas", s].students.get(size), runs[method, s].students.get(size)) for s in range(seeds)]
            differences = [
                100 * (ours["test_accuracy"] - theirs["test_accuracy"]) for ours, theirs in pairs if ours and theirs
            ]
            cells.append(cell(differences, 2, 22))
        print(f"{method:<13} " + " ".join(cells))


def _print_per_seed(methods: list[str], seeds: int, sizes: list[str], runs: dict, curves: dict) -> None:
    """Every figure of the sections above for each seed alone: with few seeds a mean and its interval hide
    whether one method leads on every seed or on one by much."""
    print(
        "\n== per seed: final hypervolumes, compute (TFLOP), trials that cost training, share of random's compute "
        "to reach its final HV (params), test accuracy (%) of the retrained student handed over within a size"
    )
    print(
        f"{'method':<13} {'seed':>4} {'HV params':>9} {'HV latency':>10} {'TFLOP':>8} {'trials':>6} {'stopped':>7} "
        f"{'duplicates':>10} {'networks':>8} {'reach':>6} " + " ".join(f"{f'<= {int(size):,}':>10}" for size in sizes)
    )
    for method in methods:
        for seed in range(seeds):
            run, curve, share = runs[method, seed], curves[method, seed], _reach_share(curves, method, seed)
            statuses = run.frame["status"].value_counts()
            students = [run.students.get(size) for size in sizes]
            print(
                f"{method:<13} {seed:>4} {curve['params'][-1]:9.4f} {curve['latency_ms'][-1]:10.4f} "
                f"{curve['compute'][-1] / 1e12:8.2f} {run.trials:6d} {statuses.get(TrialStatus.STOPPED, 0):7d} "
                f"{statuses.get(TrialStatus.DUPLICATE, 0):10d} {_networks(run.frame):8d} "
                f"{'-' if share is None else f'{100 * share:.1f}%':>6} "
                + " ".join(f"{100 * s['test_accuracy']:10.2f}" if s else f"{'-':>10}" for s in students)
            )


def _networks(frame) -> int:
    """Distinct architectures a run's search trained (arch-then-kd's distilled retrains are not others)."""
    trained = frame[frame["status"].isin(BUDGET_STATUSES)]
    if "retrain_of" in trained:
        trained = trained[trained["retrain_of"].isna()]
    return trained["arch"].nunique()


def _print_kd_effect(seeds: int, sizes: list[str], runs: dict) -> None:
    import pandas as pd

    frame = pd.concat([runs["random", s].frame for s in range(seeds)])
    effect = kd_effect(frame, [int(size) for size in sizes])
    print(
        "\n== what distillation is worth by size, fitted to random search's trials (an unbiased sample of the joint "
        "space): val accuracy ~ log params + a + a^2 + a log params + log T, a = alpha averaged over training "
        "(decay applied); fitted value [95% bootstrap interval]"
    )
    if effect is None:
        print("too few finished trials to fit")
        return
    print(f"{effect.trials} trials")
    print(f"{'params':>9}  {'best a':>18}  {'its gain (points)':>24}  {'gain of a = 0.9, no decay (points)':>34}")

    def cell(value: tuple[float, float, float], scale: float, sign: str) -> str:
        return f"{scale * value[0]:{sign}.2f} [{scale * value[1]:{sign}.2f}, {scale * value[2]:{sign}.2f}]"

    for size in effect.sizes:
        print(
            f"{size.params:>9,}  {cell(size.best_alpha, 1, ''):>18}  {cell(size.best_gain, 100, '+'):>24}  "
            f"{cell(size.usual_gain, 100, '+'):>34}"
        )
    print(f"doubling T: {cell(effect.per_temperature_doubling, 100, '+')} points")


def _write_figure(path: Path, methods: dict[str, str], seeds: int, curves: dict, study: str) -> None:
    """Hypervolume against compute, mean and 95% band over seeds per method, in one self-contained page."""
    import plotly.graph_objects as go
    from plotly.colors import hex_to_rgb, qualitative
    from plotly.offline import get_plotlyjs

    divs = []
    for cost, title, name in (("params", "parameters", "fig-params"), ("latency_ms", "latency", "fig-latency")):
        figure = go.Figure()
        means = []
        for colour, method in zip(itertools.cycle(qualitative.Plotly), methods):
            runs = [curves[method, s] for s in range(seeds)]
            # From the compute where every seed has a trial on: before it, the mean would mix in zeros.
            start = max(run["compute"][0] for run in runs)
            grid = sorted({c for run in runs for c in run["compute"] if c >= start})
            bands = [mean_interval([_value_at(run["compute"], run[cost], x) for run in runs]) for x in grid]
            x = [c / 1e12 for c in grid]
            step = {"x": x, "mode": "lines", "line_shape": "hv", "legendgroup": method}
            # The band: its upper edge, then its lower edge filled up to it ("tonexty"), both as steps like the
            # mean, in the method's colour, so a click on the legend hides a method's band with its line. A
            # hypervolume lies in [0, 1]: the band (Student's t, wide over few seeds) is clipped to it.
            edge = {**step, "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip"}
            figure.add_trace(go.Scatter(**edge, y=[min(m + h, 1.0) for m, h in bands]))
            lower = [max(m - h, 0.0) for m, h in bands]
            # Faint, so that five overlapping bands stay readable.
            red, green, blue = hex_to_rgb(colour)
            faint = f"rgba({red}, {green}, {blue}, 0.15)"
            figure.add_trace(go.Scatter(**edge, y=lower, fill="tonexty", fillcolor=faint))
            mean = [m for m, _ in bands]
            means += mean
            figure.add_trace(go.Scatter(**step, y=mean, name=methods[method], line={"color": colour}))
        # The axis spans the means, not the bands, which would flatten the curves on few seeds.
        pad = max(0.05 * (max(means) - min(means)), 0.005)
        figure.update_yaxes(range=[min(means) - pad, max(means) + pad])
        figure.update_layout(
            title=f"{study}: hypervolume of (accuracy, {title}) against training compute, mean and 95% band "
            f"over {_seeds(seeds)}",
            xaxis_title="training compute (TFLOP)",
            yaxis_title="hypervolume",
            template="plotly_white",
            # Below the plot, so the curves get the page's width (the five names are long).
            legend={"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0},
            height=560,
        )
        divs.append(figure.to_html(full_html=False, include_plotlyjs=False, div_id=name))
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>kdnas methods: {study}</title>"
        f"<script>{get_plotlyjs()}</script></head><body>{''.join(divs)}</body></html>"
    )
    write_text(path, page)
    print(f"\nfigure: {path}")


def _value_at(compute: list[float], values: list[float], x: float) -> float:
    """A step curve's value at compute ``x`` (0 before its first point)."""
    found = 0.0
    for c, v in zip(compute, values, strict=True):
        if c > x:
            break
        found = v
    return found
