"""Sweeps: a grid of migrations given as data, run one by one, measured against the estimates.

A grid is a dict of settings (a TOML file, or ranges on the command line). A value is one
setting or a list of them; the runs are the product of the lists, in the order the keys
come, each repeated ``repeats`` times with seeds ``seed``, ``seed + 1``, ... A TOML file
may hold several ``[[grid]]`` tables: each is a product of its own, with the top-level
keys as defaults, and the runs are their union.

Keys: every option of ``precopy migrate`` (emulator.shell.run_options), named as the option with
underscores (``--max-bandwidth`` is ``max_bandwidth``) and read with the same units, plus

    lambda      the dirty rate as a share of the bandwidth cap (instead of dirty_rate):
                dirty rate = lambda x max_bandwidth / page size (page writes/s)
    repeats     runs per point
    guests      makes the run a drain (emulator.running.drain) of that many guests alike, to a
                serving receiver on this machine, max_bandwidth their shared budget
    max_concurrent  K, the drain's migrations at once (default 2)

A missing key takes ``precopy migrate``'s default.

Each run writes its JSON report; the CSV has one row per run: its inputs, what was
measured, and each model's prediction (emulator.analysis.estimate) made as an operator would,
from the run's pass-0 throughput. The measured overhead factor is the time from the
start of pre-copy to the end of the blackout over M / (pass-0 throughput): setup is left
out, since in the emulator it is mostly the destination preallocating its memory, which
none of the models covers (the CSV has total_s with setup too).
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.analysis import estimate
from emulator.core import fields, units
from emulator.shell import run_options
from emulator.vm.scenario import Scenario

__all__ = [
    "COLUMNS",
    "SweepRun",
    "expand",
    "load_grid",
    "read_csv",
    "row_for",
    "run_sweep",
    "summary_text",
    "write_csv",
]

# The keys a sweep adds to the run options' (emulator.shell.run_options): each key's rule and example.
_SWEEP_KEYS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "lambda": (lambda value: float(fields.real(0, below=True)(value)), "0.6"),  # dirty rate / bandwidth
    "repeats": (fields.whole(1), "3"),
    "guests": (fields.whole(1, 256), "4"),
    "max_concurrent": (fields.whole(1, 256), "2"),
}
_DRAIN_KEYS = ("guests", "max_concurrent")
KEYS = (*run_options.OPTIONS, *_SWEEP_KEYS)


def _read(key: str, value: Any) -> Any:
    if key in _SWEEP_KEYS:
        return _SWEEP_KEYS[key][0](value)
    return run_options.OPTIONS[key].value(value)


def _example(key: str) -> str:
    """`key = value` as a grid file writes it: numbers bare, the rest quoted."""
    text = _SWEEP_KEYS[key][1] if key in _SWEEP_KEYS else run_options.OPTIONS[key].example
    try:
        float(text)
    except ValueError:
        if text not in ("true", "false"):
            text = repr(text)
    return f"{key} = {text}"


@dataclass(frozen=True)
class SweepRun:
    """One migration of a sweep: its scenario, which repeat it is, its nominal lambda."""

    index: int
    scenario: Scenario
    repeat: int
    lambda_nominal: float | None  # dirty rate / bandwidth cap; None without a cap
    guests: int | None = None  # a drain of that many guests alike (the cap is their shared budget)
    max_concurrent: int | None = None  # and K

    @property
    def is_drain(self) -> bool:
        return self.guests is not None

    @property
    def name(self) -> str:
        """A file stem that says what the run is: 007-1GiB-uniform-lam0.60-s0."""
        s = self.scenario
        memory = units.compact_size(s.guest.memory_bytes)
        if self.lambda_nominal is not None:
            load = f"lam{self.lambda_nominal:.2f}"
        elif s.workload.unpaced:
            load = "max"
        else:
            load = f"{s.workload.rate_pages_per_s:.0f}pps"
        drained = f"-g{self.guests}k{self.max_concurrent}" if self.is_drain else ""
        return f"{self.index:03d}-{memory}-{s.workload.pattern}-{load}-{s.migration.codec}{drained}-s{s.guest.seed}"

    def describe(self) -> str:
        """One line: memory, pattern, load, bandwidth, codec, downtime limit, seed."""
        s = self.scenario
        load = (f"lambda {self.lambda_nominal:.2f}" if self.lambda_nominal is not None
                else "unpaced" if s.workload.unpaced else f"{s.workload.rate_pages_per_s:,.0f} pages/s")
        drained = f"drain of {self.guests} guests, {self.max_concurrent} at once: " if self.is_drain else ""
        return (f"{drained}{units.format_bytes(s.guest.memory_bytes)} {s.workload.pattern} {load}"
                f" at {units.format_rate(s.migration.max_bandwidth_bytes_per_s)} {s.migration.codec},"
                f" downtime limit {units.format_duration(s.migration.policy.downtime_limit_s)}, seed {s.guest.seed}"
                + "".join(f", {strategy}" for strategy in strategies(s)))


def strategies(scenario) -> list[str]:
    """The convergence strategies a scenario runs, in words (none: an empty list)."""
    options, ramp = scenario.migration, scenario.migration.policy.downtime_ramp
    return [text for on, text in (
        (options.auto_converge, "auto-converge"),
        (options.dirty_limit_bytes_per_s is not None,
         f"dirty-limit {units.format_rate(options.dirty_limit_bytes_per_s)}"),
        (ramp is not None, ramp and f"downtime ramp {ramp.steps} steps of {units.format_duration(ramp.delay_s_per_gib)}/GiB"),
        (options.xbzrle, f"xbzrle {units.format_bytes(options.xbzrle_cache_bytes)}"),
        (options.postcopy, "post-copy" + ("" if options.postcopy_after_passes is None else
                                          f" after {units.format_count(options.postcopy_after_passes, 'pass')}")),
    ) if on]


# the grid ------------------------------------------------------------------------------------
def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """Read a TOML grid file: a list of grids (top-level keys merged into each [[grid]])."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: invalid TOML: {error}") from None
    return grids_from_data(data, where=str(path))


def grids_from_data(data: dict[str, Any], where: str = "grid") -> list[dict[str, Any]]:
    """Split TOML-like data into grids: each [[grid]] table over the top-level defaults."""
    top = {key: value for key, value in data.items() if key != "grid"}
    tables = data.get("grid", [{}])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError(f"{where}: 'grid' must be an array of tables ([[grid]])")
    grids = []
    for number, table in enumerate(tables):
        merged = {**top, **table}
        _check_keys(merged, f"{where}" + (f" [[grid]] #{number + 1}" if "grid" in data else ""))
        grids.append(merged)
    return grids


def _check_keys(grid: dict[str, Any], where: str) -> None:
    unknown = sorted(set(grid) - set(KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}: expected some of {', '.join(KEYS)}")
    if "dirty_rate" in grid and "lambda" in grid:
        raise ValueError(f"{where}: give dirty_rate or lambda, not both")


def _axis(grid: dict[str, Any], key: str, where: str) -> list[Any]:
    """The parsed values of one key (a list, even for a single value)."""
    values = grid[key] if isinstance(grid[key], list) else [grid[key]]
    if not values:
        raise ValueError(f"{where}: {key} is an empty list")
    parsed = []
    for value in values:
        try:
            parsed.append(_read(key, value))
        except ValueError as error:
            raise ValueError(f"{where}: {key} = {value!r}: {error} (example: {_example(key)})") from None
    return parsed


def expand(grids: list[dict[str, Any]], where: str = "grid") -> list[SweepRun]:
    """Every run of the grids, numbered from 1, as scenarios ready to migrate."""
    runs: list[SweepRun] = []
    for grid in grids:
        _check_keys(grid, where)
        repeats = _axis(grid, "repeats", where)[0] if "repeats" in grid else 1
        keys = [key for key in grid if key != "repeats"]
        axes = [_axis(grid, key, where) for key in keys]
        for combination in itertools.product(*axes):
            point = dict(zip(keys, combination))
            for repeat in range(repeats):
                runs.append(_build_run(len(runs) + 1, point, repeat, where))
    return runs


def _build_run(index: int, point: dict[str, Any], repeat: int, where: str) -> SweepRun:
    values = {key: value for key, value in point.items() if key not in ("lambda", *_DRAIN_KEYS)}
    values["seed"] = point.get("seed", 0) + repeat
    lam = point.get("lambda")
    try:
        bandwidth = run_options.OPTIONS["max_bandwidth"].resolve(point.get("max_bandwidth"), point)  # a share too
        if lam is not None:
            if bandwidth is None:
                raise ValueError("lambda needs a bandwidth cap (dirty rate = lambda x max_bandwidth)")
            values["dirty_rate"] = lam * bandwidth / point.get("page_size", 4096)
        scenario = run_options.scenario_from(values, name=lambda option: option.key)
        rate = scenario.workload.rate_pages_per_s
        if lam is None and bandwidth is not None and not math.isinf(rate):
            lam = rate * scenario.guest.page_size / bandwidth
    except ValueError as error:
        shown = ", ".join(f"{key}={value!r}" for key, value in point.items())
        raise ValueError(f"{where}: run {index} ({shown}): {error}") from None
    if "max_concurrent" in point and "guests" not in point:
        raise ValueError(f"{where}: max_concurrent is a drain's: give guests too (example: guests = [2, 4, 8])")
    guests = point.get("guests")
    return SweepRun(index, scenario, repeat, lam, guests, point.get("max_concurrent", 2) if guests else None)


# one row per run -------------------------------------------------------------------------------
# (column, type): the CSV's columns in order; read_csv converts with the type.
COLUMNS: tuple[tuple[str, type], ...] = (
    ("run", int), ("name", str), ("report", str), ("repeat", int), ("seed", int),
    # inputs
    ("memory_bytes", int), ("page_size", int), ("fill", str), ("pattern", str), ("hot_fraction", float),
    ("hot_share", float), ("vcpus", int), ("dirty_rate_pages_per_s", float), ("dirty_rate_bytes_per_s", float),
    ("bandwidth_cap_bytes_per_s", float), ("codec", str), ("channels", int), ("downtime_limit_s", float),
    ("max_passes", int), ("device_state_bytes", int), ("lambda_nominal", float),
    ("storage", str), ("disk_bytes", int), ("disk_write_rate_bytes_per_s", float),
    ("auto_converge", str), ("dirty_limit_bytes_per_s", float), ("downtime_ramp", str), ("xbzrle", str),
    ("xbzrle_cache_bytes", int), ("strategies", str),
    # measured
    ("status", str), ("reason", str), ("switchover_reason", str), ("digests_match", str), ("passes", int),
    ("total_s", float), ("setup_s", float), ("migration_s", float), ("blackout_s", float),
    ("final_pages", int), ("guest_bytes", int), ("wire_bytes", int), ("pass0_throughput_bytes_per_s", float),
    ("lambda", float), ("base_s", float), ("measured_factor", float),
    ("disk_wire_bytes", int), ("disk_final_blocks", int), ("disk_wait_s", float), ("disk_sync_s", float),
    ("guest_slowdown", float), ("final_throttle_pct", int), ("xbzrle_pages", int), ("xbzrle_cache_miss_rate", float),
    ("postcopy_missing_pages", int), ("postcopy_pages_requested", int), ("postcopy_last_page_s", float),
    ("postcopy_blocktime_s", float), ("postcopy_vcpu_blocktime_s", float),
    # models
    ("thumb_low_s", float), ("thumb_high_s", float), ("thumb_verdict", str), ("thumb_error", float),
    ("geometric_factor", float), ("geometric_error", float), ("geometric_passes", int),
    ("geometric_converges", str), ("geometric_blackout_s", float),
    ("working_set_factor", float), ("working_set_error", float), ("working_set_passes", int),
    ("working_set_converges", str), ("working_set_blackout_s", float),
    # drains (guests given): the drain's time, its worst blackout, and the forecast (emulator.analysis.drain_estimate)
    ("guests", int), ("max_concurrent", int), ("drain_s", float), ("worst_blackout_s", float),
    ("drain_forecast_s", float), ("drain_forecast_error", float),
)
_COLUMN_NAMES = tuple(name for name, _ in COLUMNS)


def _phase_length(report, name: str) -> float | None:
    for phase in report.phases:
        if phase.phase == name:
            return phase.end_s - phase.start_s
    return None


def thumb_verdict(factor: float, low: float = estimate.THUMB_FACTORS[0],
                  high: float = estimate.THUMB_FACTORS[1]) -> tuple[str, float]:
    """Where a measured factor falls against the band: (below|within|above, relative distance to it)."""
    if factor < low:
        return "below", factor / low - 1
    if factor > high:
        return "above", factor / high - 1
    return "within", 0.0


def _inputs_row(run: SweepRun, report_name: str) -> dict[str, Any]:
    """A CSV row with the run's inputs filled in."""
    s = run.scenario
    page = s.guest.page_size
    rate = s.workload.rate_pages_per_s
    row: dict[str, Any] = dict.fromkeys(_COLUMN_NAMES)
    row.update(
        run=run.index, name=run.name, report=report_name, repeat=run.repeat, seed=s.guest.seed,
        memory_bytes=s.guest.memory_bytes, page_size=page, fill=s.guest.fill, pattern=s.workload.pattern,
        hot_fraction=s.workload.hot_fraction, hot_share=s.workload.hot_share, vcpus=s.workload.vcpus,
        dirty_rate_pages_per_s=rate, dirty_rate_bytes_per_s=rate * page,
        bandwidth_cap_bytes_per_s=s.migration.max_bandwidth_bytes_per_s, codec=s.migration.codec,
        channels=s.migration.channels, downtime_limit_s=s.migration.policy.downtime_limit_s,
        max_passes=s.migration.policy.max_passes, device_state_bytes=s.migration.device_state_bytes,
        lambda_nominal=run.lambda_nominal, guests=run.guests, max_concurrent=run.max_concurrent,
        storage=s.migration.storage, disk_bytes=s.disk and s.disk.size_bytes,
        disk_write_rate_bytes_per_s=s.disk and s.disk.write_rate_bytes_per_s,
        auto_converge=str(s.migration.auto_converge).lower(), dirty_limit_bytes_per_s=s.migration.dirty_limit_bytes_per_s,
        downtime_ramp=None if s.migration.policy.downtime_ramp is None else
        f"{s.migration.policy.downtime_ramp.steps}:{s.migration.policy.downtime_ramp.delay_s_per_gib:g}s",
        xbzrle=str(s.migration.xbzrle).lower(),
        xbzrle_cache_bytes=s.migration.xbzrle_cache_bytes if s.migration.xbzrle else None,
        strategies=", ".join(strategies(s)) or "none",
    )
    return row


def guest_slowdown(report) -> float | None:
    """The share of its writes the guest lost while it moved, to a throttle or a dirty limit in pre-copy and
    to waits for pages in post-copy: 1 - the writes made / the writes its rate asks for over pre-copy and
    post-copy (each vCPU makes none while it waits). None for an unpaced or idle guest."""
    rate = report.scenario.workload.rate_pages_per_s
    precopy_s = sum(p.duration_s for p in report.passes)
    if not rate or math.isinf(rate) or not precopy_s:
        return None
    made = sum(p.dirty_pages_rate * p.duration_s for p in report.passes)
    asked_s = precopy_s
    postcopy = report.postcopy
    if postcopy is not None:
        asked_s += postcopy.duration_s
        made += rate * (postcopy.duration_s - sum(postcopy.vcpu_blocktime_s) / report.scenario.workload.vcpus)
    return 1 - made / (rate * asked_s)


def row_for(run: SweepRun, report, report_name: str) -> dict[str, Any]:
    """The CSV row of one run (a Report), with every model's prediction and its error."""
    s = run.scenario
    rate = s.workload.rate_pages_per_s
    page = s.guest.page_size
    row = _inputs_row(run, report_name)
    row.update(
        status=report.status, reason=report.reason, switchover_reason=report.switchover_reason,
        digests_match=None if report.digests_match is None else str(report.digests_match).lower(),
        passes=len(report.passes),
    )
    summary = report.summary
    if summary:
        row.update(total_s=summary["total-time"] / 1e3, setup_s=summary["setup-time"] / 1e3,
                   guest_bytes=(summary["ram"]["normal"] + summary["ram"]["duplicate"]) * page,
                   wire_bytes=summary["ram"]["transferred"])
    if report.blackout is not None:
        row.update(blackout_s=report.blackout.total_s, final_pages=report.blackout.final_pages)
    if report.passes:
        row.update(guest_slowdown=guest_slowdown(report), final_throttle_pct=report.passes[-1].throttle_pct)
    if "xbzrle-cache" in summary:
        row.update(xbzrle_pages=summary["xbzrle-cache"]["pages"],
                   xbzrle_cache_miss_rate=summary["xbzrle-cache"]["cache-miss-rate"])
    if report.postcopy is not None:
        postcopy = report.postcopy
        row.update(postcopy_missing_pages=postcopy.missing_pages, postcopy_pages_requested=postcopy.pages_requested,
                   postcopy_last_page_s=postcopy.last_page_s, postcopy_blocktime_s=postcopy.blocktime_s,
                   postcopy_vcpu_blocktime_s=sum(postcopy.vcpu_blocktime_s) / len(postcopy.vcpu_blocktime_s))
    if report.block_job is not None:
        row.update(disk_wire_bytes=summary["disk"]["transferred"], disk_wait_s=report.block_job.wait_s,
                   disk_sync_s=report.block_job.sync_s,
                   disk_final_blocks=report.blackout.disk.blocks if report.blackout else None)
    precopy_s = _phase_length(report, "precopy")
    if report.status == "completed" and report.blackout is not None and precopy_s is not None:
        # until the guest runs on the destination with all of its memory: post-copy's last page included
        row["migration_s"] = precopy_s + report.blackout.total_s + (report.postcopy.duration_s if report.postcopy
                                                                    else 0.0)
    disk = s.mirrored_disk
    if not report.passes or math.isinf(rate) or (disk is not None and math.isinf(disk.write_rate_bytes_per_s)):
        return row  # a writer flat out has no rate for the models
    inputs = estimate.inputs_from_report(report)
    predicted = estimate.estimate(inputs)
    row.update(pass0_throughput_bytes_per_s=inputs.throughput_bytes_per_s, base_s=inputs.base_time_s,
               thumb_low_s=predicted.rule_of_thumb.low_s, thumb_high_s=predicted.rule_of_thumb.high_s)
    row["lambda"] = inputs.lam  # D / R with R measured: what the models are given
    for model in estimate.MODELS:
        prediction = predicted.model(model)
        row[f"{model}_factor"] = prediction.factor
        row[f"{model}_passes"] = len(prediction.passes)
        row[f"{model}_converges"] = str(prediction.converges).lower()
        row[f"{model}_blackout_s"] = prediction.blackout_s
    if row["migration_s"] is not None and report.postcopy is None:  # the models are of pre-copy: not comparable
        measured = row["migration_s"] / inputs.base_time_s
        row["measured_factor"] = measured
        row["thumb_verdict"], row["thumb_error"] = thumb_verdict(measured)
        for model in estimate.MODELS:
            row[f"{model}_error"] = row[f"{model}_factor"] / measured - 1
    return row


def row_for_drain(run: SweepRun, report, report_name: str) -> dict[str, Any]:
    """The CSV row of a drain run (a DrainReport), with the forecast for it and its error.

    The forecast takes the run's cap as the link, the compression the guests' reports
    measured, and their median setup time."""
    from emulator.analysis import drain_estimate

    row = _inputs_row(run, report_name)
    reports = [guest.report for guest in report.guests if guest.report is not None]
    blackouts = [r.blackout.total_s for r in reports if r.blackout is not None]
    row.update(status=report.status, total_s=report.total_s, drain_s=report.total_s,
               blackout_s=statistics.fmean(blackouts) if blackouts else None,
               worst_blackout_s=max(blackouts) if blackouts else None,
               digests_match=str(all(r.digests_match for r in reports) and len(reports) == run.guests).lower())
    s, cap = run.scenario, run.scenario.migration.max_bandwidth_bytes_per_s
    measured = [r for r in reports if r.summary and r.summary["ram"]["transferred"]]
    if report.status != "completed" or cap is None or not measured or s.workload.unpaced:
        return row
    guest_bytes = sum((r.summary["ram"]["normal"] + r.summary["ram"]["duplicate"]) * s.guest.page_size
                      for r in measured)
    inputs = estimate.EstimateInputs(
        memory_bytes=s.guest.memory_bytes, bandwidth_bytes_per_s=cap,
        dirty=estimate.DirtyBehaviour.of(s.workload),
        page_size=s.guest.page_size, compression_ratio=guest_bytes / sum(r.summary["ram"]["transferred"]
                                                                          for r in measured),
        device_state_bytes=s.migration.device_state_bytes, policy=s.migration.policy)
    setup_s = statistics.median(r.summary["setup-time"] / 1e3 for r in measured)
    forecast = drain_estimate.forecast([inputs] * run.guests, cap, run.max_concurrent, setup_s)
    row.update(drain_forecast_s=forecast.total_s, drain_forecast_error=forecast.total_s / report.total_s - 1)
    return row


# the CSV ----------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write rows (dicts keyed by COLUMNS) as CSV; None becomes an empty cell."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_COLUMN_NAMES)
        for row in rows:
            writer.writerow([_cell(row.get(name)) for name in _COLUMN_NAMES])
    tmp.replace(path)  # a reader never sees half a table


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a sweep CSV back: typed values, None for empty cells."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        present = reader.fieldnames or []
        missing = [name for name in ("lambda", "measured_factor", "memory_bytes") if name not in present]
        if missing:
            raise ValueError(f"{path}: not a sweep CSV (no column {', '.join(missing)})")
        types = dict(COLUMNS)
        rows = []
        for number, raw in enumerate(reader, start=2):
            row = {}
            for name, text in raw.items():
                kind = types.get(name, str)
                try:
                    row[name] = None if text in ("", None) else kind(float(text)) if kind is int else kind(text)
                except ValueError:
                    raise ValueError(f"{path}:{number}: column {name}: {text!r} is not a {kind.__name__}") from None
            rows.append(row)
    return rows


# running ----------------------------------------------------------------------------------------
def run_sweep(runs: list[SweepRun], out_dir: str | Path, *, migrate=None, drain=None,
              progress=None) -> list[dict[str, Any]]:
    """Migrate every run; write out_dir/reports/NAME.json, out_dir/sweep.csv and out_dir/summary.txt.

    migrate: the engine (default emulator.running.children.migrate); drain: for drain runs, called
    with (guests, options), returning a DrainReport (default emulator.running.children.drain_here);
    progress: an object with
    started(run, total) and finished(run, total, row, seconds), or None. The CSV is
    rewritten after every run, so an interrupted sweep keeps what it measured. A run
    cancelled by the user (its report says so) ends the sweep: KeyboardInterrupt, once
    that run's row is written. Returns the rows.
    """
    if migrate is None:
        from emulator.running.children import migrate
    if drain is None:
        from emulator.running.children import drain_here as drain
    out = Path(out_dir)
    reports = out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for run in runs:
        if progress:
            progress.started(run, len(runs))
        began = time.monotonic()
        report_name = f"reports/{run.name}.json"
        if run.is_drain:
            report = drain(*_drain_of(run))
            report.write(out / report_name)
            row = row_for_drain(run, report, report_name)
        else:
            report = migrate(run.scenario)
            report.write(out / report_name)
            row = row_for(run, report, report_name)
        rows.append(row)
        write_csv(rows, out / "sweep.csv")
        if progress:
            progress.finished(run, len(runs), row, time.monotonic() - began)
        if report.status == "cancelled":  # Ctrl-C or SIGTERM stopped this run: it stops the sweep too
            (out / "summary.txt").write_text(summary_text(rows), encoding="utf-8")
            raise KeyboardInterrupt(f"sweep cancelled during run {run.index} of {len(runs)}; "
                                    f"{out / 'sweep.csv'} holds the runs so far")
    (out / "summary.txt").write_text(summary_text(rows), encoding="utf-8")
    return rows


def _drain_of(run: SweepRun):
    """(guests, DrainOptions) of a drain run: its scenario's guests alike, seeds apart, the cap shared."""
    import dataclasses

    from emulator.running.drain import DrainGuest, DrainOptions

    s = run.scenario
    alone = dataclasses.replace(s.migration, max_bandwidth_bytes_per_s=None)
    guests = [DrainGuest(f"guest{number + 1}", dataclasses.replace(
        s, guest=dataclasses.replace(s.guest, seed=s.guest.seed + number),
        workload=dataclasses.replace(s.workload, seed=s.workload.seed + number), migration=alone))
        for number in range(run.guests)]
    return guests, DrainOptions(("tcp://127.0.0.1:0",), run.max_concurrent,
                                max_bandwidth_bytes_per_s=s.migration.max_bandwidth_bytes_per_s)


# the summary ------------------------------------------------------------------------------------
def _percent(value: float) -> str:
    return f"{value * 100:+.0f}%"


def _drain_summary(drains: list[dict[str, Any]]) -> list[str]:
    lines = [f"{len(drains)} drains", "",
             f"{'run':>4} {'guests':>6} {'K':>3} {'status':<10} {'drain':>9} {'worst blackout':>15} {'forecast':>18}"]
    for row in drains:
        forecast = (f"{units.format_duration(row['drain_forecast_s'])} ({_percent(row['drain_forecast_error'])})"
                    if row.get("drain_forecast_s") is not None else "-")
        worst = units.format_duration(row["worst_blackout_s"]) if row.get("worst_blackout_s") is not None else "-"
        lines.append(f"{row['run']:>4} {row['guests']:>6} {row['max_concurrent']:>3} {row['status']:<10} "
                     f"{units.format_duration(row['drain_s']):>9} {worst:>15} {forecast:>18}")
    return lines


def summary_text(rows: list[dict[str, Any]]) -> str:
    """How well each model did: a line per run, then per model the errors, and the rule of thumb."""
    drains = [row for row in rows if row.get("guests") is not None]
    rows = [row for row in rows if row.get("guests") is None]
    measured = [row for row in rows if row.get("measured_factor") is not None]
    lines = [f"{len(rows)} runs, {len(measured)} measured"
             + (f" ({len(rows) - len(measured)} failed or not comparable)" if len(measured) < len(rows) else "")]
    if drains:
        lines = (_drain_summary(drains) + ([""] + lines if rows else []))
    if not measured:
        return "\n".join(lines) + "\n"
    lines += ["", f"{'run':>4} {'memory':>9} {'pattern':<10} {'lambda':>6} {'passes':>6} {'time':>9} {'blackout':>9}"
                  f" {'factor':>6}  {'1.5-3x':<7} {'geometric':>15} {'working set':>15}"]
    for row in measured:
        lines.append(
            f"{row['run']:>4} {units.format_bytes(row['memory_bytes']):>9} {row['pattern']:<10} {row['lambda']:>6.2f}"
            f" {row['passes']:>6} {units.format_duration(row['migration_s']):>9}"
            f" {units.format_duration(row['blackout_s']):>9} {row['measured_factor']:>6.2f}  {row['thumb_verdict']:<7}"
            f" {row['geometric_factor']:>6.2f} ({_percent(row['geometric_error']):>6})"
            f" {row['working_set_factor']:>6.2f} ({_percent(row['working_set_error']):>6})"
        )
    lines.append("")
    factors = [row["measured_factor"] for row in measured]
    lines.append(f"measured overhead factor {min(factors):.2f} to {max(factors):.2f}"
                 f" (median {statistics.median(factors):.2f})"
                 f", lambda {min(r['lambda'] for r in measured):.2f} to {max(r['lambda'] for r in measured):.2f}")
    for model, label in (("geometric", "geometric"), ("working_set", "working set")):
        errors = [row[f"{model}_error"] for row in measured]
        worst = max(measured, key=lambda row: abs(row[f"{model}_error"]))
        within = sum(abs(e) <= 0.10 for e in errors)
        lines.append(
            f"{label:<12} mean |error| {statistics.fmean(abs(e) for e in errors) * 100:.1f}%,"
            f" within 10%: {within}/{len(errors)}, worst {_percent(worst[f'{model}_error'])}"
            f" (run {worst['run']}: {worst['pattern']}, lambda {worst['lambda']:.2f})"
        )
    verdicts = {verdict: [row for row in measured if row["thumb_verdict"] == verdict]
                for verdict in ("below", "within", "above")}
    parts = []
    for verdict, members in verdicts.items():
        if members:
            spread = [r["measured_factor"] for r in members]
            span = f"factor {min(spread):.2f}-{max(spread):.2f}"
            parts.append(f"{len(members)} {verdict} ({span})")
    lines.append(f"rule of thumb 1.5-3x: {', '.join(parts)}")
    return "\n".join(lines) + "\n"
