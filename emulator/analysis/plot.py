"""Figures as PNG files: one run beside the models' predictions, and a sweep against lambda.

Made with matplotlib's object API on the Agg canvas (``Figure`` + ``savefig``): no
pyplot, no display, no global backend state, so it runs headless and in threads.

- ``run_figure(report)``: bytes sent per pass (measured, geometric, working set; each model's
  passes to its end, MODEL_PASSES_DRAWN says how far); remaining dirty bytes after each pass
  against the switch-over threshold; the timeline of phases and passes with the blackout,
  measured and as each model predicts it.
- ``sweep_figure(rows)``: measured overhead factor against lambda = dirty rate /
  throughput, one panel per pattern, with the rule of thumb's 1.5-3x band and each
  model's curve for each guest size.
- ``drain_figure(report)``: a drain (emulator.running.drain.DrainReport): a Gantt of the
  migrations over time (pre-copy, blackout, failed) above the link's use and its cap.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from emulator.analysis import estimate
from emulator.analysis.report import Report
from emulator.core import units
from emulator.source.policy import PolicyConfig

__all__ = ["drain_figure", "plot_file", "run_figure", "save", "sweep_figure"]

MIB = float(1 << 20)
COLORS = {"measured": "#404040", "geometric": "#d95f02", "working_set": "#1b9e77"}
LABELS = {"measured": "measured", "geometric": "geometric model", "working_set": "working-set model"}
BLACKOUT_COLOR = "#c0392b"
PHASE_COLORS = {"setup": "#bbbbbb", "handover": "#e59866", "resume": "#f5b7b1", "announce": "#d7bde2",
                "postcopy": "#a3d9a5"}
MEMORY_COLORS = ("#1f77b4", "#9467bd", "#e377c2", "#17becf", "#8c564b", "#bcbd22")
# A run's figure draws every measured pass, and each model's passes as far as the longer of its own
# sequence and the run's, but a model's past max(run's passes, MODEL_PASSES_DRAWN) are left out (the
# legend says which): above the default max passes (30), so under the default policy every predicted
# pass shows, while a model that never converges under a high max passes keeps the figure readable.
MODEL_PASSES_DRAWN = 40


def _plain_log_axis(axis) -> None:
    """Log-scale labels as plain numbers (300, 0.01; not 3 x 10^2), minor ones when a decade fills the axis."""

    def minor(value: float, _position) -> str:
        low, high = axis.get_view_interval()
        return f"{value:g}" if 0 < low and high / low <= 12 else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def save(figure: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG; returns the path."""
    path = Path(path)
    figure.savefig(path, format="png", dpi=110)
    return path


# one run ----------------------------------------------------------------------------------------
def _predictions(report: Report) -> dict[str, estimate.ModelPrediction]:
    """Each model's prediction for the run, as an operator would make it (R from pass 0)."""
    try:
        inputs = estimate.inputs_from_report(report)
    except ValueError:
        return {}  # no pass, or unpaced writers: nothing to predict from
    predicted = estimate.estimate(inputs)
    return {name: predicted.model(name) for name in estimate.MODELS}


def _title(report: Report) -> str:
    guest, workload, migration = report.scenario.guest, report.scenario.workload, report.scenario.migration
    rate = workload.rate_pages_per_s
    load = "unpaced" if workload.unpaced else f"{rate * guest.page_size / 1e6:.0f} MB/s dirty"
    if report.passes and not workload.unpaced:
        first = report.passes[0]
        load += f" (lambda {rate * guest.page_size * first.duration_s / first.bytes_sent:.2f})"
    cap = units.format_rate(migration.max_bandwidth_bytes_per_s)
    head = (f"{units.format_bytes(guest.memory_bytes)} guest, {workload.pattern} writer, {load};"
            f" link cap {cap}, {migration.codec}, downtime limit"
            f" {units.format_duration(migration.policy.downtime_limit_s)}")
    tail = f"{report.status}"
    if report.summary:
        tail += f" in {units.format_duration(report.summary['total-time'] / 1e3)}"
    if report.blackout is not None:
        tail += f", blackout {units.format_duration(report.blackout.total_s)}"
    tail += f", {len(report.passes)} passes ({report.switchover_reason or 'no switchover'})"
    return f"{head}\n{tail}"


def _drawn_passes(report: Report, prediction: estimate.ModelPrediction) -> list[estimate.PassPrediction]:
    """The model's passes the figure draws (MODEL_PASSES_DRAWN says which)."""
    return prediction.passes[: max(len(report.passes), MODEL_PASSES_DRAWN)]


def _model_label(name: str, prediction: estimate.ModelPrediction, drawn: list[estimate.PassPrediction], *,
                 final: bool = False) -> str:
    """The model's legend label, noting the passes left out and, with `final`, a missing final pass."""
    notes = []
    if len(drawn) < len(prediction.passes):
        notes.append(f"passes {len(drawn)}-{len(prediction.passes) - 1} not drawn")
    if final and prediction.aborted:
        notes.append("aborts: no final pass")
    return f"{LABELS[name]} ({'; '.join(notes)})" if notes else LABELS[name]


def _bar_series(report: Report, models: dict[str, estimate.ModelPrediction]
                ) -> dict[str, tuple[str, list[float], float | None]]:
    """Each series' label, bytes sent in each drawn pass, and bytes of its final pass (None: it has none)."""
    series = {"measured": (LABELS["measured"], [p.bytes_sent for p in report.passes],
                           report.blackout.final_bytes if report.blackout else None)}
    for name, prediction in models.items():
        drawn = _drawn_passes(report, prediction)
        series[name] = (_model_label(name, prediction, drawn, final=True), [p.bytes for p in drawn],
                        None if prediction.aborted else prediction.final_bytes)
    return series


def _bytes_per_pass(ax, report: Report, models: dict[str, estimate.ModelPrediction]) -> None:
    series = _bar_series(report, models)
    longest = max(len(passes) for _, passes, _ in series.values())  # the final slot follows it
    width = 0.8 / len(series)
    bottom = ax.get_xaxis_transform()  # x in data, y in axes fractions
    for slot, (name, (label, passes, final)) in enumerate(series.items()):
        offset = (slot - (len(series) - 1) / 2) * width
        xs = [i + offset for i in range(len(passes))]
        heights = [b / MIB for b in passes]
        if final is not None:
            xs.append(longest + offset)
            heights.append(final / MIB)
        ax.bar([x for x, h in zip(xs, heights) if h > 0], [h for h in heights if h > 0], width=width,
               color=COLORS[name], label=label, edgecolor="white", linewidth=0.3)
        for x, h in zip(xs, heights):
            if h <= 0:  # really sent nothing: no bar to see, say it instead (a missing value is not in xs)
                ax.text(x, 0.02, "0", transform=bottom, ha="center", fontsize=8, color=COLORS[name])
    # linear from zero, so a pass of 45% of pass 0 looks like 45%, and near-equal bars look equal
    ax.set_ylim(bottom=0)
    ax.set_ylabel("MiB sent")
    ax.set_title("bytes per pass (last group: the final pass, in the blackout)", fontsize=10, loc="left")
    step = max(1, math.ceil(longest / 16))
    ticks = list(range(0, longest, step))
    ax.set_xticks(ticks + [longest], [str(t) for t in ticks] + ["final"])
    ax.set_xlim(-0.5, longest + 0.5)
    ax.set_xlabel("pass")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
    ax.grid(axis="y", alpha=0.3)


def _positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The points a log axis can show (y > 0)."""
    kept = [(x, y) for x, y in zip(xs, ys) if y > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def _remaining(ax, report: Report, models: dict[str, estimate.ModelPrediction]) -> None:
    page = report.scenario.guest.page_size
    numbers = [p.pass_no for p in report.passes]
    ax.plot(*_positive(numbers, [p.remaining_pages * page / MIB for p in report.passes]), "o-",
            color=COLORS["measured"], label="remaining, measured", zorder=3)
    # the threshold as a stair: each pass's value across its whole slot (one pass is a line too)
    stairs = [(n + side, p.threshold_bytes / MIB) for n, p in zip(numbers, report.passes) for side in (-0.5, 0.5)]
    ax.plot(*_positive([x for x, _ in stairs], [y for _, y in stairs]), color=BLACKOUT_COLOR, linestyle=":",
            label="threshold (bandwidth x downtime limit)")
    longest = len(report.passes)
    for name, prediction in models.items():
        drawn = _drawn_passes(report, prediction)
        longest = max(longest, len(drawn))
        ax.plot(*_positive([p.pass_no for p in drawn], [p.remaining_bytes / MIB for p in drawn]),
                "--", marker=".", color=COLORS[name], label=f"remaining, {_model_label(name, prediction, drawn)}")
    if report.switchover_reason and report.passes:
        last = report.passes[-1]
        note = f"switch-over: {report.switchover_reason}"
        if last.remaining_pages:
            ax.annotate(note, (last.pass_no, last.remaining_pages * page / MIB), textcoords="offset points",
                        xytext=(-4, 10), ha="right", fontsize=8)  # inside the axes, left of the last point
        else:
            ax.text(last.pass_no, 0.05, f"nothing dirty after pass {last.pass_no}: {note}",
                    transform=ax.get_xaxis_transform(), fontsize=8)
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_ylabel("MiB dirty")
    ax.set_xlim(-0.5, longest - 0.5)
    if longest <= 16:
        ax.set_xticks(range(longest))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("after pass")
    ax.set_title("remaining dirty bytes after each pass, against the switch-over threshold", fontsize=10, loc="left")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never on them
    ax.grid(alpha=0.3, which="both")


def _pass_spans(start_s: float, durations: list[float]) -> list[tuple[float, float]]:
    spans, at = [], start_s
    for duration in durations:
        spans.append((at, duration))
        at += duration
    return spans


def _timeline(ax, report: Report, models: dict[str, estimate.ModelPrediction]) -> None:
    rows = [("measured", None)] + [(LABELS[name], prediction) for name, prediction in models.items()]
    precopy_start = next((p.start_s for p in report.phases if p.phase == "precopy"), 0.0)
    height = 0.6
    for y, (label, prediction) in enumerate(reversed(rows)):
        if prediction is None:
            for phase in report.phases:
                if phase.phase in PHASE_COLORS:
                    ax.broken_barh([(phase.start_s, phase.end_s - phase.start_s)], (y - height / 2, height),
                                   color=PHASE_COLORS[phase.phase])
            durations = [p.duration_s for p in report.passes]
            blackout = report.blackout.total_s if report.blackout else None
        else:
            durations = [p.duration_s for p in prediction.passes]
            blackout = None if prediction.aborted else prediction.blackout_s
        spans = _pass_spans(precopy_start, durations)
        ax.broken_barh(spans, (y - height / 2, height),
                       facecolors=[("#5b8db8" if i % 2 == 0 else "#9cc3e4") for i in range(len(spans))])
        end = precopy_start + sum(durations)
        if blackout is not None:
            ax.broken_barh([(end, max(blackout, 1e-4))], (y - height / 2, height), color=BLACKOUT_COLOR)
            ax.annotate(f"blackout {units.format_duration(blackout)}", (end + blackout, y),
                        textcoords="offset points", xytext=(4, -3), fontsize=8, color=BLACKOUT_COLOR)
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("seconds from the migration start")
    ax.set_title("timeline: pre-copy passes (alternating blue), blackout (red)", fontsize=10, loc="left")
    handles = [Patch(color=color, label=name) for name, color in PHASE_COLORS.items()]
    handles += [Patch(color="#5b8db8", label="pre-copy pass"), Patch(color=BLACKOUT_COLOR, label="blackout")]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=len(handles))
    ax.grid(axis="x", alpha=0.3)
    right = max(ax.get_xlim()[1], max((p.end_s for p in report.phases), default=0.0))
    ax.set_xlim(0, right * 1.12)


def run_figure(report: Report) -> Figure:
    """Three panels for one run: bytes per pass, remaining vs threshold, the timeline."""
    models = _predictions(report)
    figure = Figure(figsize=(10, 11), layout="constrained")
    top, middle, bottom = figure.subplots(3, 1, height_ratios=[3, 3, 2])
    figure.suptitle(_title(report), fontsize=10)
    if report.passes:
        _bytes_per_pass(top, report, models)
        _remaining(middle, report, models)
    _timeline(bottom, report, models)
    return figure


# a sweep ----------------------------------------------------------------------------------------
def _curve_inputs(rows: list[dict[str, Any]]) -> estimate.EstimateInputs:
    """Model inputs standing for a group of runs (one guest size, one pattern): median throughput."""
    first = rows[0]
    policy = PolicyConfig(downtime_limit_s=first["downtime_limit_s"], max_passes=first["max_passes"])
    return estimate.EstimateInputs(
        memory_bytes=first["memory_bytes"],
        bandwidth_bytes_per_s=statistics.median(row["pass0_throughput_bytes_per_s"] for row in rows),
        dirty=estimate.DirtyBehaviour(0.0, first["pattern"], first["hot_fraction"], first["hot_share"]),
        page_size=first["page_size"], device_state_bytes=first["device_state_bytes"] or 0, policy=policy,
    )


def model_curve(inputs: estimate.EstimateInputs, model: str, lambdas: list[float]) -> list[float]:
    """A model's overhead factor at each lambda (dirty rate = lambda x R / page size)."""
    factors = []
    for lam in lambdas:
        dirty = estimate.DirtyBehaviour(lam * inputs.throughput_bytes_per_s / inputs.page_size, inputs.dirty.pattern,
                                        inputs.dirty.hot_fraction, inputs.dirty.hot_share)
        varied = estimate.EstimateInputs(inputs.memory_bytes, inputs.bandwidth_bytes_per_s, dirty, inputs.page_size,
                                         inputs.compression_ratio, inputs.device_state_bytes, inputs.policy)
        factors.append(getattr(estimate, model)(varied).factor)
    return factors


def sweep_figure(rows: list[dict[str, Any]]) -> Figure:
    """Measured overhead factor against lambda, a panel per pattern, with the band and the models."""
    measured = [row for row in rows if row.get("measured_factor") is not None]
    if not measured:
        raise ValueError("no measured run in the sweep: nothing to plot")
    patterns = list(dict.fromkeys(row["pattern"] for row in measured))
    memories = sorted({row["memory_bytes"] for row in measured})
    color = {memory: MEMORY_COLORS[i % len(MEMORY_COLORS)] for i, memory in enumerate(memories)}
    top_lambda = max(1.0, max(row["lambda"] for row in measured) * 1.05)
    lambdas = [top_lambda * i / 240 for i in range(241)]
    figure = Figure(figsize=(6 * len(patterns) + 1, 5.5), layout="constrained")
    axes = figure.subplots(1, len(patterns), sharey=True, squeeze=False)[0]
    highest = max(row["measured_factor"] for row in measured)
    for ax, pattern in zip(axes, patterns):
        ax.axhspan(*estimate.THUMB_FACTORS, color="#f6e3a1", alpha=0.6, zorder=0, gid="rule-of-thumb")
        for memory in memories:
            group = [row for row in measured if row["pattern"] == pattern and row["memory_bytes"] == memory]
            if not group:
                continue
            inputs = _curve_inputs(group)
            working = model_curve(inputs, "working_set", lambdas)
            highest = max(highest, max(working))
            ax.plot(lambdas, working, "-", color=color[memory], linewidth=1.4)
            ax.plot(lambdas, model_curve(inputs, "geometric", lambdas), "--", color=color[memory], linewidth=1.0)
            ax.plot([row["lambda"] for row in group], [row["measured_factor"] for row in group], "o",
                    color=color[memory], markeredgecolor="black", markersize=7, zorder=3)
        hot = next((row for row in measured if row["pattern"] == pattern), None)
        detail = (f" ({hot['hot_fraction']:.0%} of pages get {hot['hot_share']:.0%} of writes)"
                  if pattern == "hotset" and hot else "")
        ax.set_title(f"{pattern} writer{detail}", fontsize=10)
        ax.set_xlabel("lambda = dirty rate / throughput of pass 0")
        ax.set_xlim(0, top_lambda)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_yscale("log")
    axes[0].set_ylim(0.9, max(4.0, highest * 1.25))
    ticks = [t for t in (1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30) if t <= max(4.0, highest * 1.25)]
    axes[0].set_yticks(ticks, [f"{t:g}" for t in ticks])
    axes[0].minorticks_off()
    axes[0].set_ylabel("overhead factor = time / (M / R)")
    handles = [Line2D([], [], marker="o", linestyle="", color=color[m], markeredgecolor="black",
                      label=f"measured, {units.format_bytes(m)}") for m in memories]
    handles += [Line2D([], [], color="black", linestyle="-", label="working-set model"),
                Line2D([], [], color="black", linestyle="--", label="geometric model"),
                Patch(color="#f6e3a1", label="rule of thumb 1.5-3x")]
    axes[-1].legend(handles=handles, fontsize=8, loc="upper left")
    cap = {row["bandwidth_cap_bytes_per_s"] for row in measured}
    caps = ", ".join(units.format_rate(c) for c in sorted(c for c in cap if c is not None)) or "unlimited"
    figure.suptitle(f"Measured pre-copy overhead against the estimates: {len(measured)} runs, link cap {caps}",
                    fontsize=11)
    return figure


# convergence strategies -------------------------------------------------------------------------
def compares_strategies(rows: list[dict[str, Any]]) -> bool:
    """A sweep whose runs differ in their convergence strategies (bench/strategies.toml)."""
    return len({row.get("strategies") for row in rows}) > 1


def strategies_figure(rows: list[dict[str, Any]]) -> Figure:
    """Each run's strategies against what they cost: time, blackout, bytes on the wire, the guest's slowdown."""
    done = [row for row in rows if row.get("migration_s") is not None]
    if not done:
        raise ValueError("no completed run in the sweep: nothing to plot")
    labels = [f"{row['run']}. {row['pattern']}: {row['strategies']}" for row in done]
    panels = (("until all memory is there (s)", [row["migration_s"] for row in done], "#5b8db8"),
              ("blackout (s)", [row["blackout_s"] for row in done], BLACKOUT_COLOR),
              ("on the wire (GiB)", [(row["wire_bytes"] or 0) / 2**30 for row in done], "#7fb77e"),
              ("guest slowdown (% of writes lost)", [max(0.0, row["guest_slowdown"] or 0.0) * 100 for row in done],
               "#c9a227"))
    figure = Figure(figsize=(15, 1.2 + 0.45 * len(done)), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True)
    positions = list(range(len(done)))[::-1]
    for ax, (title, values, color) in zip(axes, panels):
        ax.barh(positions, values, color=color)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        for y, value in zip(positions, values):
            ax.annotate(f"{value:.3g}", (value, y), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=7)
    axes[0].set_yticks(positions, labels, fontsize=8)
    caps = {row["bandwidth_cap_bytes_per_s"] for row in done}
    figure.suptitle(f"Convergence strategies: {len(done)} runs, link cap "
                    + ", ".join(units.format_rate(c) for c in sorted(c for c in caps if c is not None)), fontsize=11)
    return figure


# a drain ----------------------------------------------------------------------------------------
def drain_figure(report) -> Figure:
    """The drain's migrations as bars over time (one row per guest, in queue order) above the link's use."""
    figure = Figure(figsize=(10, 3 + 0.35 * len(report.guests)), layout="constrained")
    gantt, link = figure.subplots(2, 1, sharex=True, height_ratios=[max(2, len(report.guests) // 2), 2])
    figure.suptitle(f"drain {report.status}: {len(report.guests)} guests, at most "
                    f"{report.options.max_concurrent} at once, in {units.format_duration(report.total_s)}",
                    fontsize=10)
    height = 0.6
    for y, run in enumerate(reversed(report.guests)):
        if run.started_s is None:
            continue
        end = run.switchover_s if run.switchover_s is not None else run.ended_s
        gantt.broken_barh([(run.started_s, max(end - run.started_s, 1e-3))], (y - height / 2, height),
                          color="#5b8db8" if run.status == "completed" else "#999999")
        if run.switchover_s is not None and run.resumed_s is not None:
            gantt.broken_barh([(run.switchover_s, max(run.resumed_s - run.switchover_s, 1e-3))],
                              (y - height / 2, height), color=BLACKOUT_COLOR)
    gantt.set_yticks(range(len(report.guests)), [f"{run.name} ({run.status})" for run in reversed(report.guests)],
                     fontsize=8)
    gantt.set_title("migrations: pre-copy (blue), blackout (red), failed or cancelled (grey)", fontsize=10,
                    loc="left")
    gantt.grid(axis="x", alpha=0.3)
    if report.link:
        times = [0.0] + [at for at, _ in report.link]
        link.stairs([rate / 1e6 for _, rate in report.link], times, fill=True, color="#9cc3e4",
                    label="bytes through the shared bucket, per 0.5 s")
    cap = report.options.max_bandwidth_bytes_per_s
    if cap:
        link.axhline(cap / 1e6, color=BLACKOUT_COLOR, linestyle="--", label=f"shared cap {units.format_rate(cap)}")
    link.set_ylabel("MB/s on the wire")
    link.set_xlabel("seconds from the drain's start")
    link.legend(fontsize=8, loc="lower right")
    link.grid(alpha=0.3)
    link.set_xlim(0, max(report.total_s, 1e-3) * 1.02)
    return figure


# files ------------------------------------------------------------------------------------------
def plot_file(path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Plot a report (.json) or a sweep (.csv) to OUT_DIR/STEM.png (default: beside it)."""
    path = Path(path)
    target = (Path(out_dir) if out_dir is not None else path.parent) / f"{path.stem}.png"
    if path.suffix == ".csv":
        from emulator.analysis.sweep import read_csv

        rows = read_csv(path)
        figure = strategies_figure(rows) if compares_strategies(rows) else sweep_figure(rows)
    elif path.suffix == ".json":
        figure = _json_figure(path)
    else:
        raise ValueError(f"cannot plot {str(path)!r}: expected a report or a drain report (.json), or a sweep (.csv)")
    return save(figure, target)


def _json_figure(path: Path) -> Figure:
    """A migration's report, or a drain's (its "kind" says so)."""
    import json

    from emulator.running.drain import DrainReport

    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None  # Report.read says what is wrong
    if kind == "drain":
        return drain_figure(DrainReport.from_dict(json.loads(path.read_text(encoding="utf-8"))))
    return run_figure(Report.read(path))
