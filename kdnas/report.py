"""What a search found: a self-contained HTML report, and the tables behind it.

    python -m kdnas.report --study fashion             # runs/fashion/report.html, trials.csv, pareto.csv
    python -m kdnas.report --study smoke --out /tmp/smoke

Everything starts from one pandas DataFrame, ``kdnas.results.trials_frame(study)``: one row per trial
with its parameters, measurements, status and Pareto flags. The CSV files are that frame; every figure is drawn
from it afterwards (importances and the parallel-coordinates view come from Optuna's own functions).
The report answers "which student, at what cost, and what did distillation buy?": accuracy against
parameters and latency with the Pareto fronts joined, the front without distillation against the
front with it, hypervolume over trials, hyperparameter importances, and the study's settings.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdnas.cli import add_common_arguments, add_storage_argument, add_study_argument, run_cli
from kdnas.config import LATENCY_ROUND_RUNS, METRICS, ChoiceParam, Knob, LatencyConfig, StudyConfig
from kdnas.errors import KdnasError
from kdnas.files import write_text
from kdnas.progress import duration, percent
from kdnas.results import (
    COMPARABLE_SIZE,
    FRONT_COLUMNS,
    HYPERVOLUME_MARGIN,
    NO_KD_ALPHA,
    hypervolume_history,
    hypervolume_reference,
    kd_gain,
    kd_pairs,
    pareto_front,
    pareto_table,
    trials_frame,
)
from kdnas.rundir import load_run
from kdnas.status import TrialStatus, count_line
from kdnas.study import stored_data_info

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import plotly.graph_objects as go

__all__ = ["write_report", "build_parser", "main"]

log = logging.getLogger(__name__)

_FAINT = "rgba(120, 120, 120, 0.35)"
_FRONT = "#d62728"
_KD = "#1f77b4"
_NO_KD = "#ff7f0e"
# Each cost's axis label; the report draws accuracy against params and latency (always measured) and
# against each other cost the study optimises.
_COST_LABELS = {
    "params": "parameters",
    "latency_ms": "latency (ms)",
    "macs": "multiply-accumulates per image",
    "size_kb": "ONNX file size (KiB)",
}


# ---------------------------------------------------------------------------------------------------
# Figures, drawn from the frame
# ---------------------------------------------------------------------------------------------------


def _hover(row: Any) -> str:
    """One trial's hover text: what it is, what it scored, what it costs."""
    lines = [f"<b>trial {row.trial}</b> {html.escape(str(row.arch))} ({row.status})"]
    if isinstance(getattr(row, "alpha_decay", None), str):
        decay = row.alpha_decay if row.alpha_decay == "none" else f"{row.alpha_decay}({row.decay_rate:.2g})"
        lines.append(f"T={row.temperature:.2g}  alpha={row.alpha:.2g}  decay={decay}")
    if not math.isnan(row.val_accuracy):
        lines.append(f"val accuracy {100 * row.val_accuracy:.2f}%")
    if not math.isnan(row.params):
        lines.append(f"{int(row.params):,} params, {row.macs / 1e6:.2f} MMACs")
    if not math.isnan(row.latency_ms):
        lines.append(f"latency {row.latency_ms:.3f} ms")
    if not math.isnan(row.size_kb):
        lines.append(f"ONNX file {row.size_kb:,.1f} KiB")
    if row.reason:
        lines.append(html.escape(str(row.reason)))
    return "<br>".join(lines)


def _scatter(rows: pd.DataFrame, x: str, name: str, **style: Any) -> go.Scatter:
    import plotly.graph_objects as go

    return go.Scatter(
        x=rows[x],
        y=100 * rows["val_accuracy"],
        name=name,
        text=[_hover(r) for r in rows.itertuples()],
        hovertemplate="%{text}<extra></extra>",
        **style,
    )


def _tradeoff_figure(df: pd.DataFrame, size: str, teacher: dict[str, Any] | None) -> go.Figure:
    """Accuracy against one cost (log axis): the 2-D front joined, the rest faint, untrained trials in a strip."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    front_col, label = FRONT_COLUMNS[size], _COST_LABELS[size]
    has_size = df[size].notna()
    trained = df[
        has_size & df["val_accuracy"].notna() & (df["status"] != TrialStatus.DUPLICATE)
    ]  # a duplicate is its twin
    untrained = df[has_size & df["val_accuracy"].isna()]
    rows = 2 if len(untrained) else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, row_heights=[0.88, 0.12][:rows], vertical_spacing=0.03)
    others = trained[~trained[front_col]]
    faint = dict(color=_FAINT, size=8)
    top = dict(row=1, col=1)
    fig.add_trace(
        _scatter(others[others["status"] == TrialStatus.COMPLETE], size, "dominated", mode="markers", marker=faint),
        **top,
    )
    stopped = others[others["status"] != TrialStatus.COMPLETE]
    if len(stopped):
        marker = dict(faint, symbol="triangle-down")
        fig.add_trace(_scatter(stopped, size, "stopped early", mode="markers", marker=marker), **top)
    front = trained[trained[front_col]].sort_values(size)
    line, marker = dict(color=_FRONT, shape="hv"), dict(color=_FRONT, size=11, line=dict(color="white", width=1))
    fig.add_trace(_scatter(front, size, "Pareto front", mode="lines+markers", line=line, marker=marker), **top)
    if len(untrained):
        fig.add_trace(
            go.Scatter(
                x=untrained[size],
                y=["not trained"] * len(untrained),
                mode="markers",
                name="rejected / failed",
                marker=dict(color=_FAINT, size=9, symbol="x"),
                text=[_hover(r) for r in untrained.itertuples()],
                hovertemplate="%{text}<extra></extra>",
            ),
            row=2,
            col=1,
        )
    if teacher:
        accuracy = 100 * teacher["val_accuracy"]
        fig.add_hline(
            y=accuracy,
            line=dict(color="black", dash="dash", width=1),
            annotation_text=f"teacher: {accuracy:.2f}% val, {teacher['params']:,} params",
            annotation_position="bottom left",
            **top,
        )
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text=label, row=rows, col=1)
    fig.update_yaxes(title_text="val accuracy (%)", **top)
    fig.update_layout(
        title=f"Validation accuracy vs {label}",
        height=520 if rows == 2 else 460,
        hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
        margin=dict(t=80, b=50),
    )
    return fig


def _lone_words(row: Any) -> str:
    """Which side of a ``kd_gain`` row has no trial, in words."""
    missing = "without distillation" if math.isnan(row.no_kd) else "with distillation"
    return f"no student {missing} of {row.smallest:,} to {row.params:,} params"


def _kd_table_html(gain: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """The comparison behind the figure: per size, both students and the distilled one's settings; then the
    architectures trained both ways."""
    rows = []
    for row in gain.itertuples():
        kd = "-" if math.isnan(row.kd) else f"{100 * row.kd:.2f}% (trial {row.kd_trial:.0f})"
        settings = "" if math.isnan(row.kd) else f"T {row.temperature:.2g}, alpha {row.alpha:.2g}, {row.alpha_decay}"
        no_kd = "-" if math.isnan(row.no_kd) else f"{100 * row.no_kd:.2f}% (trial {row.no_kd_trial:.0f})"
        gained = _lone_words(row) if math.isnan(row.gain) else f"{100 * row.gain:+.2f} points"
        cells = (f"{row.smallest:,} to {row.params:,}", no_kd, kd, settings, gained)
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("params", "without KD", "with KD", "its settings", "gain"))
    parts = [f'<table class="pareto"><tr>{head}</tr>{"".join(rows)}</table>']
    if len(pairs):
        paired = "".join(
            f"<tr><td>{html.escape(str(p.arch))}</td><td>{p.params:,.0f}</td><td>{100 * p.no_kd:.2f}%</td>"
            f"<td>{100 * p.kd:.2f}%</td><td>{100 * p.gain:+.2f} points</td></tr>"
            for p in pairs.itertuples()
        )
        head = "".join(f"<th>{h}</th>" for h in ("architecture", "params", "without KD", "with KD", "gain"))
        parts.append(
            '<p class="why">The same architectures trained both ways (the best of each):</p>'
            f'<table class="pareto"><tr>{head}</tr>{paired}</table>'
        )
    return "\n".join(parts)


def _kd_figure(df: pd.DataFrame, gain: pd.DataFrame) -> go.Figure:
    """Fronts without and with distillation, and the accuracy distillation added at each size."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    done = df[df["status"] == TrialStatus.COMPLETE]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.06)
    for distilled, name, color in (
        (False, f"no distillation (alpha < {NO_KD_ALPHA})", _NO_KD),
        (True, "with distillation", _KD),
    ):
        group = done[done["distilled"] == distilled]
        front = pareto_front(group, "params")
        fig.add_trace(
            _scatter(
                group, "params", name, mode="markers", showlegend=False, marker=dict(color=color, size=7, opacity=0.3)
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            _scatter(
                front,
                "params",
                f"{name}: front",
                mode="lines+markers",
                line=dict(color=color, shape="hv"),
                marker=dict(color=color, size=10),
            ),
            row=1,
            col=1,
        )
    both = gain.dropna(subset=["gain"])
    fig.add_trace(
        go.Scatter(  # markers, not bars: a bar's width means nothing on a log axis
            x=both["params"],
            y=100 * both["gain"],
            mode="markers+text",
            name="gain from distillation",
            marker=dict(size=11, color=["#2ca02c" if g >= 0 else "#d62728" for g in both["gain"]]),
            text=[f"{100 * g:+.1f}" for g in both["gain"]],
            textposition="middle right",
            hovertemplate="within %{x:,} params: %{y:+.2f} points<extra></extra>",
        ),
        row=2,
        col=1,
    )
    lone = gain[gain["gain"].isna()]
    fig.add_trace(
        go.Scatter(
            x=lone["params"],
            y=[0.0] * len(lone),
            mode="markers",
            name="no student of comparable size on the other side",
            marker=dict(size=9, symbol="x", color="grey"),
            hovertext=[_lone_words(row) for row in lone.itertuples()],
            hoverinfo="text",
        ),
        row=2,
        col=1,
    )
    fig.add_hline(y=0, line=dict(color="grey", width=1), row=2, col=1)
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="parameters", row=2, col=1)
    fig.update_yaxes(title_text="val accuracy (%)", row=1, col=1)
    fig.update_yaxes(title_text="gain (points)", rangemode="tozero", row=2, col=1)
    fig.update_layout(
        title="What distillation bought: best accuracy at comparable sizes",
        height=560,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
        margin=dict(t=80, b=50),
    )
    return fig


def _hypervolume_figure(history: pd.Series, reference_params: int) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(
            x=history.index,
            y=history.to_numpy(),
            mode="lines+markers",
            line=dict(shape="hv"),
            hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>",
        )
    )
    fig.update_xaxes(tick0=0, dtick=max(1, len(history) // 10))  # whole trial numbers
    fig.update_layout(
        title=f"Hypervolume of (accuracy, parameters); reference: 0% at {reference_params:,} params",
        xaxis_title="trial",
        yaxis_title="normalised hypervolume",
        height=380,
        margin=dict(t=60),
    )
    return fig


def _optuna_figure(draw: Callable[[], go.Figure], what: str) -> tuple[go.Figure | None, str]:
    """An Optuna figure, or a note saying why it is missing (too few trials, constant parameters)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "importances of params to achieve low target": we negate it
            return draw(), ""
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return None, f"No {what}: {err}"


def _importance_figure(study: optuna.Study, accuracy_index: int, complete: int) -> tuple[go.Figure | None, str]:
    import optuna

    if complete < 2:
        return None, "No importances: they need at least 2 complete trials."
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()  # deterministic: no seed to fix

    def draw() -> go.Figure:
        fig = optuna.visualization.plot_param_importances(
            study, evaluator=evaluator, target=lambda t: -t.values[accuracy_index], target_name="val accuracy"
        )
        fig.update_layout(title="Hyperparameter importance for validation accuracy (PED-ANOVA)", height=380)
        return fig

    fig, note = _optuna_figure(draw, "importances")
    if fig is not None and complete < 20:
        note = f"Only {complete} complete trials: read these importances as rough."
    return fig, note


def _parallel_figure(study: optuna.Study, df: pd.DataFrame, accuracy_index: int) -> tuple[go.Figure | None, str]:
    import optuna

    done = df[df["status"] == TrialStatus.COMPLETE]
    params = [p for p in ("temperature", "alpha", "alpha_decay", "decay_rate") if p in df and done[p].notna().any()]
    if not params:
        return None, "No parallel coordinates: no complete trial has distillation parameters."

    def draw() -> go.Figure:
        fig = optuna.visualization.plot_parallel_coordinate(
            study, params=params, target=lambda t: 100 * t.values[accuracy_index], target_name="val accuracy (%)"
        )
        # Optuna colours the best trials near white: a grey background keeps them visible.
        fig.update_layout(
            title="Distillation hyperparameters against validation accuracy", height=420, plot_bgcolor="#d8dee6"
        )
        return fig

    return _optuna_figure(draw, "parallel coordinates")


# ---------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------


def _range(p: Knob) -> str:
    """A knob or KD value as a study file would give it, shortly: ``8..32 step 4``, ``{3, 5}``, ``4``."""
    if isinstance(p, int):
        return str(p)
    if isinstance(p, ChoiceParam):
        return "{" + ", ".join(str(c).lower() if isinstance(c, bool) else c for c in p.choices) + "}"
    if p.choices is not None:
        return "{" + ", ".join(f"{c:g}" for c in p.choices) + "}"
    if p.low == p.high:
        return f"{p.low:g}"
    extra = " log" if p.log else f" step {p.step:g}" if p.step else ""
    return f"{p.low:g}..{p.high:g}{extra}"


def _settings(study: optuna.Study, cfg: StudyConfig, df: pd.DataFrame) -> list[tuple[str, str]]:
    """The header's label/value pairs (values are plain text, escaped later)."""
    t, s, kd, r, lat = cfg.teacher, cfg.student, cfg.kd, cfg.train, cfg.latency
    teacher = study.user_attrs.get("teacher")
    data = cfg.data
    subset = f", first {data.limit_train:,} training images" if data.limit_train else ""
    objectives = ", ".join(f"{m} ({METRICS[m][:3]})" for m in cfg.objectives.metrics)
    c = cfg.constraints
    limits = [
        f"params <= {c.max_params:,}" if c.max_params else "",
        f"latency <= {c.max_latency_ms} ms" if c.max_latency_ms else "",
        f"MACs <= {c.max_macs:,}" if c.max_macs else "",
        f"ONNX size <= {c.max_size_kb:g} KiB" if c.max_size_kb else "",
    ]
    rows = [
        ("dataset", f"{data.dataset}{subset}, {data.val_fraction:.0%} held out for validation (seed {data.seed})"),
        (
            "teacher",
            (
                f"{teacher.get('label') or t.source}: {teacher['params']:,} params, "
                f"val {percent(teacher['val_accuracy'])}, test {percent(teacher['test_accuracy'])} "
                f"(fingerprint {teacher['fingerprint']})"
                if teacher
                else f"{t.source}: not recorded"
            ),
        ),
        (
            "student space",
            f"{s.family}: " + ", ".join(f"{name} {_range(knob)}" for name, knob in s.knobs.items()),
        ),
        (
            "KD space",
            f"T {_range(kd.temperature)}, alpha {_range(kd.alpha)}, decay "
            f"{{{', '.join(kd.alpha_decay.choices)}}}, rate {_range(kd.decay_rate)}",
        ),
        (
            "student recipe",
            f"{r.epochs} epochs, batch {r.batch_size}, lr {r.lr:g}, momentum {r.momentum:g}, "
            f"weight decay {r.weight_decay:g}, seed {cfg.seed}",
        ),
        ("objectives", objectives + ("; limits: " + ", ".join(x for x in limits if x) if any(limits) else "")),
        (
            "sampler",
            f"{cfg.sampler.name} (seed {cfg.seed}, {cfg.sampler.startup_trials} startup trials), "
            f"budget {cfg.budget.trials} trials",
        ),
        (
            "devices",
            f"training on {study.user_attrs.get('train_device', 'a device not recorded')}; latency "
            f"{_latency_setting(lat)}",
        ),
        ("trials", count_line(df["status"])),
        (
            "compute",
            f"{duration(df['duration_s'].sum())} in trials "
            f"({duration(df['train_seconds'].sum())} of it training students)",
        ),
    ]
    return rows


def _latency_where(lat: LatencyConfig) -> str:
    """Where latency was measured, in a few words."""
    if lat.runtime == "command":
        return f"by the command {lat.command!r}"
    return "on ONNX Runtime (CPU execution provider)" if lat.runtime == "onnxruntime" else f"on torch, {lat.device}"


def _latency_setting(lat: LatencyConfig) -> str:
    """How latency was measured: where, batch, threads and timed runs."""
    runs = "" if lat.runtime == "command" else f", {lat.repeats} timed runs"
    return f"{_latency_where(lat)}, batch {lat.batch_size}, {lat.threads} thread(s){runs}"


def _cost_sections(cfg: StudyConfig) -> list[tuple[str, str, str, str]]:
    """(cost, title, div id, explanation) of each accuracy-vs-cost figure: params and latency, which every
    trial measures, then each other cost the study optimises."""
    lat = cfg.latency
    if lat.runtime == "command":
        latency = f"Latency: the last number the command {lat.command!r} printed for the network's ONNX file."
    else:
        latency = (
            f"Latency: {lat.repeats} forward passes of batch {lat.batch_size} {_latency_where(lat)}, in rounds of "
            f"{LATENCY_ROUND_RUNS} beside the space's other networks; the lowest round median."
        )
    sections = {
        "params": (
            "parameters",
            "fig-params",
            "Each point is a trained student. The red staircase joins the Pareto-optimal ones: no other student is "
            "both smaller and more accurate. Faint points are dominated; crosses below were rejected by the "
            "constraints or failed. Hover a point for its settings.",
        ),
        "latency_ms": ("latency", "fig-latency", html.escape(latency)),
        "macs": ("MACs", "fig-macs", "Multiply-accumulates of one forward pass of one image."),
        "size_kb": (
            "model size",
            "fig-size",
            "The size of the student's ONNX file as kdnas.train writes it (float32 weights), in KiB.",
        ),
    }
    costs = ["params", "latency_ms", *(m for m in cfg.objectives.metrics if m in ("macs", "size_kb"))]
    return [(cost, *sections[cost]) for cost in costs]


def _pareto_html(pareto: pd.DataFrame, teacher: dict[str, Any] | None) -> str:
    """The Pareto table; with a known teacher, each student's validation accuracy against the teacher's,
    and a note naming the students that beat it (on the same validation images)."""
    import pandas as pd

    decay = [
        d if d == "none" else f"{d}({r:.2g})" for d, r in zip(pareto["alpha_decay"], pareto["decay_rate"], strict=True)
    ]
    shown = pd.DataFrame(
        {
            "trial": pareto["trial"],
            "architecture": pareto["arch"],
            "T": pareto["temperature"].map("{:.2f}".format),
            "alpha": pareto["alpha"].map("{:.2f}".format),
            "decay": decay,
            "val acc": pareto["val_accuracy"].map("{:.2%}".format),
            "params": pareto["params"].map("{:,.0f}".format),
            "MMACs": (pareto["macs"] / 1e6).map("{:.2f}".format),
            "latency": pareto["latency_ms"].map("{:.3f} ms".format),
            "train time": pareto["train_seconds"].map("{:.0f} s".format),
        }
    )
    if pareto["size_kb"].notna().any():  # measured only by a study that optimises or bounds it
        shown.insert(shown.columns.get_loc("train time"), "size", pareto["size_kb"].map("{:.1f} KiB".format))
    note = ""
    if teacher:
        lead = 100 * (pareto["val_accuracy"] - teacher["val_accuracy"])
        shown.insert(6, "vs teacher", lead.map("{:+.2f} pt".format))
        beaten = pareto["trial"][lead > 0].tolist()
        if beaten:
            note = (
                f'<p class="note">Trial(s) {", ".join(map(str, beaten))} beat the teacher '
                f"({100 * teacher['val_accuracy']:.2f}% val): a stronger teacher could raise every student.</p>\n"
            )
    return note + shown.to_html(index=False, border=0, classes="pareto", escape=True)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table.settings td:first-child { font-weight: 600; padding-right: 1.5em; vertical-align: top; white-space: nowrap; }
table.settings td { padding: 2px 0; }
table.pareto { border-collapse: collapse; } table.pareto th, table.pareto td { padding: 4px 10px; text-align: right; }
table.pareto tr:nth-child(even) { background: #f4f4f4; } table.pareto th { border-bottom: 2px solid #999; }
p.note { color: #8a5a00; background: #fff6e0; padding: 6px 10px; border-left: 3px solid #e0a000; }
p.why { color: #555; max-width: 70em; }
"""


def _section(title: str, why: str, fig: go.Figure | None, note: str, div_id: str) -> str:
    parts = [f"<h2>{html.escape(title)}</h2>", f'<p class="why">{why}</p>']
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    if fig is not None:
        fig.update_layout(template="plotly_white")
        parts.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=div_id,
                config={"displaylogo": False, "responsive": True},
            )
        )
    return "\n".join(parts)


def _page(study: optuna.Study, cfg: StudyConfig, df: pd.DataFrame) -> str:
    """The whole report as one HTML string, plotly.js included (opens with no network)."""
    from plotly.offline import get_plotlyjs

    complete = int((df["status"] == TrialStatus.COMPLETE).sum())
    accuracy_index = cfg.objectives.metrics.index("val_accuracy")
    teacher = study.user_attrs.get("teacher")
    info = stored_data_info(study, cfg)
    reference = hypervolume_reference(cfg, info.in_channels, info.num_classes, info.image_size)
    gain = kd_gain(df)
    kd_note = ""
    if not (~df["distilled"] & (df["status"] == TrialStatus.COMPLETE)).any():
        kd_note = (
            f"No complete trial without distillation (alpha < {NO_KD_ALPHA}): the gain cannot be measured. "
            "Keep 0 in the [kd] alpha range (the default does) and run more trials."
        )
    elif not (df["distilled"] & (df["status"] == TrialStatus.COMPLETE)).any():
        kd_note = f"No complete trial with distillation: every trial had alpha < {NO_KD_ALPHA}."
    importance, importance_note = _importance_figure(study, accuracy_index, complete)
    parallel, parallel_note = _parallel_figure(study, df, accuracy_index)
    settings = "\n".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _settings(study, cfg, df)
    )
    sections = [
        *(
            _section(f"Accuracy vs {title}", why, _tradeoff_figure(df, cost, teacher), "", div_id)
            for cost, title, div_id, why in _cost_sections(cfg)
        ),
        _section(
            "What distillation bought",
            f"The best accuracy at each size on either front, by students trained without the teacher "
            f"(alpha &lt; {NO_KD_ALPHA}) and with it, each among students of comparable size (at most that many "
            f"parameters and more than 1/{COMPARABLE_SIZE:g} of it); the dots below are the difference, and a "
            "grey x marks a size where one side has no such student.",
            _kd_figure(df, gain),
            kd_note,
            "fig-kd",
        )
        + _kd_table_html(gain, kd_pairs(df)),
        _section(
            "Search progress",
            "Hypervolume of the (accuracy, parameters) front after each trial: the share of the area between "
            f"a reference point (0% accuracy, {reference:,} parameters: {HYPERVOLUME_MARGIN - 1:.0%} above the "
            "largest student the study can keep: the space's largest, or max_params when smaller) and a perfect "
            "student with no parameters that the found students dominate. It rises while the search still finds "
            "better trade-offs.",
            _hypervolume_figure(hypervolume_history(df, reference), reference),
            "",
            "fig-hypervolume",
        ),
        _section(
            "Which hyperparameters mattered",
            "Importance of each parameter for reaching the top decile of "
            "validation accuracy (Optuna's PED-ANOVA over complete trials).",
            importance,
            importance_note,
            "fig-importance",
        ),
        _section(
            "Distillation settings",
            "Each line is a complete trial, coloured by validation accuracy.",
            parallel,
            parallel_note,
            "fig-parallel",
        ),
    ]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kdnas report: {html.escape(cfg.name)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>kdnas study <code>{html.escape(cfg.name)}</code></h1>
<table class="settings">{settings}</table>
<h2>Pareto-optimal students</h2>
<p class="why">Optimal in all objectives ({html.escape(", ".join(cfg.objectives.metrics))}); pick one with
<code>python -m kdnas.export --study {html.escape(cfg.name)} --trial N</code>. Every trial is in trials.csv.</p>
{_pareto_html(pareto_table(df), teacher)}
{"".join(sections)}
</body></html>
"""


def write_report(study: optuna.Study, cfg: StudyConfig, out_dir: Path, df: pd.DataFrame | None = None) -> Path:
    """Write ``report.html``, ``trials.csv`` and ``pareto.csv`` into ``out_dir``; returns the report's path.

    ``df`` is the study's ``trials_frame``, when the caller has it already.

    Raises:
        KdnasError: the study has no complete trial (an empty report would say nothing), or
            ``out_dir`` is not writable.
    """
    df = trials_frame(study) if df is None else df
    if not (df["status"] == TrialStatus.COMPLETE).any():
        raise KdnasError(f"study {cfg.name!r} has no complete trial yet; no report written")
    page = _page(study, cfg, df)
    path = out_dir / "report.html"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "trials.csv", df.to_csv(index=False))
        write_text(out_dir / "pareto.csv", pareto_table(df).to_csv(index=False))
        write_text(path, page)
    except OSError as err:
        raise KdnasError(f"cannot write the report to {out_dir} ({err.strerror}); pass a writable --out") from None
    log.info("report: %s (%d trials, %d Pareto-optimal)", path, len(df), int(df["pareto"].sum()))
    return path


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdnas.report",
        description="Write a study's report.html, trials.csv and pareto.csv into its run directory.",
    )
    add_study_argument(parser)
    parser.add_argument("--out", type=Path, help="the search's run directory (default: runs/<study name>)")
    add_storage_argument(parser)
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        run = load_run(args.study, args.out, args.storage)
        print(write_report(run.study, run.cfg, run.out_dir))
        return 0

    return run_cli(args, command)


if __name__ == "__main__":
    raise SystemExit(main())
