"""Every text a command prints about a migration, rendered in one place.

A run's summary (`format_summary`, what `migrate`, `send` and `report` print), an
estimate (`format_estimate`), a drain (`format_drain`), a finished pass and a pass in progress (the live display's
lines), the start banner (`describe_scenario`), `precopy status` (`format_status`) and a
check's verdict (`format_verdict`). Each takes records (emulator.analysis.report) or the
dicts the engines answer with and returns lines within COLUMNS, where it can; the live
display, the drain board and the commands only print them.
"""

from __future__ import annotations

import math
import textwrap

from emulator.analysis.estimate import MODELS, UNMODELLED, DirtyBehaviour, Estimate, EstimateInputs
from emulator.analysis.report import Report
from emulator.core.units import compact_size, format_bytes, format_count, format_duration, format_rate

COLUMNS = 100  # the widest line the display writes


def _pages_rate(pages_per_s: float) -> str:
    return f"{pages_per_s:,.0f} pages/s"


def _ms(value: float | None) -> str:
    return "-" if value is None else format_duration(value / 1e3)


def format_parameter(name: str, value: float | None) -> str:
    """A value `precopy set` gave a running migration (emulator.running.control.SETTABLE), in its unit."""
    return format_duration(value) if name == "downtime_limit_s" else format_rate(value)


def _disk_lines(report: Report) -> list[str]:
    """The mirrored disk's lines of the summary (none without a mirror)."""
    disk, job = report.summary.get("disk"), report.block_job
    if disk is None or job is None:
        return []
    ready = f"ready at {format_duration(job.ready_s)}" if job.ready else "never ready"
    return [
        f"disk         {format_bytes(disk['transferred'])} on the wire for a {format_bytes(disk['total'])} disk, "
        f"{disk['normal']:,} blocks + {disk['duplicate']:,} zero",
        f"block job    mirror {job.device}: offset {format_bytes(job.offset)} of len {format_bytes(job.len)}, "
        f"{ready}; waited {format_duration(job.wait_s)} for it, write-through {format_duration(job.sync_s)}",
    ]


def _transferred_line(summary) -> str:
    """Every byte on the wire and its rate (the pass table's unit, not QEMU's Mbit/s); with a mirrored disk,
    the memory's and the disk's parts."""
    ram, disk = summary["ram"], summary.get("disk")
    if disk is None:
        return f"transferred  {format_bytes(ram['transferred'])} on the wire at {format_rate(ram['mbps'] * 1e6 / 8)}"
    moved = ram["transferred"] + disk["transferred"]
    transfer_s = (summary["total-time"] - summary["setup-time"]) / 1e3
    rate = format_rate(moved / transfer_s) if transfer_s > 0 else "-"
    return (f"transferred  {format_bytes(moved)} on the wire at {rate} (memory {format_bytes(ram['transferred'])}, "
            f"disk {format_bytes(disk['transferred'])})")


def format_summary(report: Report) -> str:
    """A readable multi-line summary of a report."""
    summary = report.summary
    ram = summary.get("ram", {})
    page_size = ram.get("page-size")
    status = report.status + (f" ({report.reason})" if report.reason else "")
    lines = [f"status       {status}"]
    if summary:
        lines.append(
            f"total time   {_ms(summary['total-time'])}"
            f" (setup {_ms(summary['setup-time'])})"
        )
        lines.append(
            f"downtime     {_ms(summary['downtime'])}"
            f" (expected {_ms(summary['expected-downtime'])})"
        )
        ratio = summary["compression-ratio"]
        compressed = ratio is not None and report.scenario is not None and report.scenario.migration.codec != "raw"
        lines.append(_transferred_line(summary) + (f", compression ratio {ratio:.2f}" if compressed else ""))
        lines.append(
            f"pages        {ram['normal']:,} normal, {ram['duplicate']:,} zero,"
            f" {format_count(ram['dirty-sync-count'], 'harvest')}"
        )
        if summary["cpu-throttle-percentage"]:
            lines.append(f"throttle     {summary['cpu-throttle-percentage']}%")
        cpu = summary.get("cpu", {})  # (not in reports of schema 4 and older)
        if cpu.get("source-s-per-gib") is not None:
            lines.append(f"cpu          {cpu['source-s-per-gib']:.3f} s per GiB moved on the source, "
                         f"{cpu['destination-s-per-gib']:.3f} on the destination (pre-copy)")
        lines += _disk_lines(report)
    mirrored = report.block_job is not None
    ramped = report.scenario is not None and report.scenario.migration.policy.downtime_ramp is not None
    if report.passes:
        header = (
            f"{'pass':>4} {'sent':>10} {'wire':>10} {'remaining':>10}"
            f" {'bandwidth':>11} {'dirty rate':>16}"
        ) + (f" {'disk sent':>10} {'disk left':>10}" if mirrored else "") + (f" {'limit':>8}" if ramped else "")
        lines += ["", header]
        for rec in report.passes:
            remaining = (
                format_bytes(rec.remaining_pages * page_size)
                if page_size
                else f"{rec.remaining_pages} pages"
            )
            disk = (f" {format_bytes(rec.disk.bytes_sent):>10} {format_bytes(rec.disk.remaining_bytes):>10}"
                    if rec.disk else " " * 22 if mirrored else "") + (f" {format_duration(rec.downtime_limit_s):>8}" if ramped else "")
            lines.append(
                f"{rec.pass_no:>4} {format_bytes(rec.bytes_sent):>10}"
                f" {format_bytes(rec.wire_bytes):>10} {remaining:>10}"
                f" {format_rate(rec.bandwidth_bytes_per_s):>11}"
                f" {_pages_rate(rec.dirty_pages_rate):>16}{disk}"
            )
    if report.blackout is not None:
        b = report.blackout
        disk = f" and {b.disk.blocks:,} disk blocks ({format_bytes(b.disk.wire_bytes)})" if b.disk else ""
        lines += [
            "",
            f"blackout     {format_duration(b.total_s)}: {b.final_pages:,} pages"
            f" ({format_bytes(b.final_wire_bytes)} on the wire){disk}"
            f" in {format_duration(b.final_send_s)}",
            f"             device state {format_bytes(b.device_state_bytes)}"
            f" in {format_duration(b.device_state_s)},"
            f" digest check {format_duration(b.digest_check_s)},"
            f" resume {format_duration(b.resume_s)}",
        ]
    cache = summary.get("xbzrle-cache") if summary else None
    if cache is not None:
        lines.append(f"xbzrle       {cache['pages']:,} pages as deltas ({format_bytes(cache['bytes'])}), cache "
                     f"{format_bytes(cache['cache-size'])}, {cache['cache-miss-rate']:.0%} misses, encoding rate "
                     f"{cache['encoding-rate']:.1f}, {cache['overflow']:,} overflows")
    if report.postcopy is not None:
        pc = report.postcopy
        lines += [
            f"post-copy    {pc.missing_pages:,} pages missing at resume, the last there after "
            f"{format_duration(pc.last_page_s)}; {pc.pages_requested:,} asked for in "
            f"{format_count(pc.requests, 'request')}, {pc.pushed_pages:,} pushed",
            f"             vCPUs waited {', '.join(format_duration(b) for b in pc.vcpu_blocktime_s)} "
            f"(all at once {format_duration(pc.blocktime_s)})",
        ]
    if report.digests_match is None:
        digests = "not compared"
    elif report.digests_match:
        digests = f"match ({report.source_digest})"
    else:
        digests = (
            f"MISMATCH (source {report.source_digest},"
            f" destination {report.destination_digest})"
        )
    if report.switchover_reason:
        lines.append(f"switchover   {report.switchover_reason}")
    for change in report.parameter_changes:
        lines.append(f"set          {change.name} to {format_parameter(change.name, change.value)} at "
                     f"{format_duration(change.time_s)} "
                     f"(pass {change.pass_no})")
    lines.append(f"digests      {digests}")
    for event in report.events:
        lines += textwrap.wrap(f"{event.name}: {format_duration(event.measured_s)} past the "
                               f"{format_duration(event.threshold_s)} threshold; likely cause: {event.cause}",
                               100, initial_indent="warning      ", subsequent_indent=" " * 13)
    return "\n".join(lines)


def _strategy_lines(inputs: EstimateInputs) -> list[str]:
    """What the models do of the convergence strategies given (each one they model; none other is)."""
    from emulator.core.units import format_duration

    lines = []
    ramp = inputs.policy.downtime_ramp
    if ramp is not None:
        lines.append(f"strategy     downtime ramp: {ramp.steps} steps of {format_duration(ramp.delay_s_per_gib)} per "
                     f"GiB up to the limit (modelled)")
    if inputs.dirty_limit_pages_per_s is not None:
        lines.append(f"strategy     dirty-limit: page writes held to {inputs.dirty_limit_pages_per_s:,.0f}/s in all "
                     "from the first pass dirtying over half of what it sent (modelled)")
    for name in inputs.unmodelled:
        lines.append(f"strategy     {name}: not modelled ({UNMODELLED[name]})")
    return lines


_MODEL_LABELS = {"geometric": "geometric", "working_set": "working set"}


def _pattern_text(dirty: DirtyBehaviour, units: str) -> str:
    if dirty.pattern == "hotset":
        return f"hotset ({dirty.hot_fraction:.0%} of {units} get {dirty.hot_share:.0%} of writes)"
    return dirty.pattern


def format_estimate(result: Estimate) -> str:
    """A readable multi-line account of an estimate: inputs, the three answers, pages (and blocks) per pass."""
    from emulator.core.units import format_bytes, format_duration, format_rate

    inputs = result.inputs
    dirty, disk = inputs.dirty, inputs.disk
    config = inputs.policy
    stall = f", stall = {config.stall_passes} passes without a new minimum" if config.stall_passes else ""
    max_time = f", max time {format_duration(config.max_time_s)}" if config.max_time_s is not None else ""
    thumb = result.rule_of_thumb
    lines = [
        f"memory       {format_bytes(inputs.memory_bytes)} ({inputs.n_pages:,} pages of {inputs.page_size} B)",
        f"throughput   R = {format_rate(inputs.throughput_bytes_per_s)}"
        f" (link {format_rate(inputs.bandwidth_bytes_per_s)} x compression {inputs.compression_ratio:.2f})",
        f"dirty rate   D = {dirty.rate_pages_per_s:,.0f} page writes/s = {format_rate(inputs.dirty_bytes_per_s)},"
        f" {_pattern_text(dirty, 'pages')}",
        f"lambda       D / R = {result.lam:.3f}",
    ]
    if disk is not None:
        share = disk.write_bytes_per_s / inputs.throughput_bytes_per_s
        lines += [
            f"disk         {format_bytes(disk.size_bytes)} ({disk.n_blocks:,} blocks of"
            f" {format_bytes(disk.block_size)}), mirrored alongside memory over the same link",
            f"disk writes  {disk.dirty.rate_pages_per_s:,.1f} block writes/s = {format_rate(disk.write_bytes_per_s)}"
            f" ({share:.3f} of R), {_pattern_text(disk.dirty, 'blocks')}",
        ]
    base = "M / R" if disk is None else "(M + disk) / R"
    lines += [
        f"policy       downtime limit {format_duration(config.downtime_limit_s)}"
        f" (threshold {format_bytes(inputs.throughput_bytes_per_s * config.downtime_limit_s)}),"
        f" max passes {config.max_passes}{max_time}{stall}",
        *_strategy_lines(inputs),
        "",
        f"rule of thumb  {base} = {format_duration(thumb.base_s)}; x {thumb.factor_low:g} to {thumb.factor_high:g}"
        f" = {format_duration(thumb.low_s)} to {format_duration(thumb.high_s)}",
        "",
        f"{'model':<12} {'passes':>6}  {'switch-over':<11} {'sent':>10} {'pre-copy':>10} {'blackout':>9}"
        f" {'total':>10} {'factor':>6}",
    ]
    for name in MODELS:
        p = result.model(name)
        reason = p.switchover_reason + (" (abort)" if p.aborted else "")
        lines.append(
            f"{_MODEL_LABELS[name]:<12} {len(p.passes):>6}  {reason:<11} {format_bytes(p.total_bytes):>10}"
            f" {format_duration(p.precopy_s):>10} {format_duration(p.blackout_s):>9}"
            f" {format_duration(p.total_s):>10} {p.factor:>6.2f}"
        )
    geo, ws = result.geometric, result.working_set
    if disk is not None:
        added = [f"{'+' if result.disk_adds_s[name] >= 0 else '-'}"
                 f"{format_duration(abs(result.disk_adds_s[name]))} ({_MODEL_LABELS[name]})" for name in MODELS]
        lines += ["", f"the {format_bytes(disk.size_bytes)} disk adds {added[0]}, {added[1]} to the total time"
                      " (vs the same guest without it)"]
    # columns: each model's pages, then (with a disk) each model's blocks
    header = f"{'pages sent':<10} {'geometric':>14} {'working set':>14}"
    columns = [(geo, "pages", 14), (ws, "pages", 14)]
    if disk is not None:
        header += f"  {'blocks: geometric':>18} {'working set':>14}"
        columns += [(geo, "disk_blocks", 19), (ws, "disk_blocks", 14)]
    lines += ["", header]
    for number in range(max(len(geo.passes), len(ws.passes))):
        cells = [f"{getattr(m.passes[number], unit):>{width},.0f}" if number < len(m.passes) else f"{'':>{width}}"
                 for m, unit, width in columns]
        lines.append(f"{'pass ' + str(number):<10} {' '.join(cells)}".rstrip())
    final = {"pages": "final_pages", "disk_blocks": "final_disk_blocks"}
    finals = [f"{'-' if m.aborted else format(getattr(m, final[unit]), ',.0f'):>{width}}" for m, unit, width in columns]
    lines.append(f"{'blackout':<10} {' '.join(finals)}")
    return "\n".join(lines)


def format_progress_line(record, page_size, total_pages):
    """One line (within 100 columns, indented) for a finished pass: sent, rate, what is left, page writes/s.

    record: a PassRecord; page_size: bytes; total_pages: the guest's page count (for the
    share of memory still dirty).
    """
    remaining_bytes = record.remaining_pages * page_size
    share = 100 * record.remaining_pages / total_pages if total_pages else 0.0
    # the throttle is not repeated here: auto-converge says so in a message when it changes
    return (
        f"pass {record.pass_no:>3}  {format_bytes(record.bytes_sent)} ({format_bytes(record.wire_bytes)} wire)"
        f" in {format_duration(record.duration_s)} at {format_rate(record.bandwidth_bytes_per_s)}"
        f"  left {format_bytes(remaining_bytes)} ({share:.1f}%)  {record.dirty_pages_rate:,.0f} writes/s"
    ) + (_disk_part(record.disk) if record.disk and (record.disk.blocks_sent or record.disk.remaining_bytes) else "")


def _disk_part(disk):
    """A pass's mirrored disk (a DiskPass), on a line of its own under the memory's."""
    return (f"\n            disk {format_bytes(disk.bytes_sent)} ({format_bytes(disk.wire_bytes)} wire)"
            f"  left {format_bytes(disk.remaining_bytes)}  {disk.writes_rate:,.0f} block writes/s"
            + (f"  waited for the disk {format_duration(disk.wait_s)}" if disk.wait_s else ""))


def format_interval_line(sample, page_size):
    """One line (within 100 columns, indented) for a pass in progress (sample: a report.Interval)."""
    done = f"{format_bytes(sample.pages_sent * page_size)} of {format_bytes(sample.pass_pages * page_size)}"
    if sample.pass_left_s is None:
        when = "no rate yet"
    else:
        when = (f"pass left {format_duration(sample.pass_left_s)}, end ~{format_duration(sample.end_s)}"
                + ("" if sample.firm else " (guess)"))
    return (f"  ... {done} at {format_rate(sample.wire_bytes_per_s)}"
            f"  dirty {format_bytes(sample.dirty_pages * page_size)}  {when}")


def describe_scenario(scenario):
    """Two lines of what a migration runs: the guest and its writers; the codec, channels, cap and limit."""
    guest, workload, migration = scenario.guest, scenario.workload, scenario.migration
    rate = "unpaced" if workload.unpaced else f"{workload.rate_pages_per_s:,.0f} page writes/s"
    return (f"guest {format_bytes(guest.memory_bytes)} of {compact_size(guest.page_size)} pages ({guest.fill}), "
            f"{format_count(workload.vcpus, 'vCPU')} writing {workload.pattern} at {rate}\n"
            f"{migration.codec} over {format_count(migration.channels, 'channel')}, "
            f"bandwidth cap {format_rate(migration.max_bandwidth_bytes_per_s)}, "
            f"downtime limit {format_duration(migration.policy.downtime_limit_s)}" + _describe_disk(scenario))


def _describe_disk(scenario):
    disk = scenario.disk
    if disk is None:
        return ""
    rate = "flat out" if math.isinf(disk.write_rate_bytes_per_s) else format_rate(disk.write_rate_bytes_per_s)
    how = "mirrored (shared-nothing)" if scenario.mirrored_disk else "on shared storage"
    return (f"\ndisk {format_bytes(disk.size_bytes)} of {compact_size(disk.block_size)} blocks ({disk.fill}) {how}, "
            f"written {disk.pattern} at {rate}")


def format_verdict(answer, endpoint):
    """`precopy check`'s text for a destination's Verdict: every problem, each with its fix, within COLUMNS."""
    if answer.compatible:
        lines = [f"compatible: {endpoint} would host this guest"]
    else:
        lines = [f"incompatible: {endpoint} would refuse this guest, for "
                 f"{format_count(len(answer.problems), 'reason')}:"]
        for number, problem in enumerate(answer.problems, 1):
            lines += textwrap.wrap(problem.text, COLUMNS, initial_indent=f"{number:>2}. ", subsequent_indent=" " * 4)
            lines += textwrap.wrap(problem.fix, COLUMNS, initial_indent="    fix: ", subsequent_indent=" " * 9)
    if answer.busy:
        lines.append("busy: it is receiving another migration now; until that ends, a migration is refused as busy")
    return "\n".join(lines)


def format_drain(report):
    """A drain's summary (an emulator.running.drain.DrainReport): the whole, then a line per guest."""
    moved = sum(run.status == "completed" for run in report.guests)
    lines = [f"drain {report.status} in {format_duration(report.total_s)}: {moved} of {len(report.guests)} guests "
             f"moved, at most {report.peak_concurrency} at once (mean {report.mean_concurrency:.1f})",
             f"{'guest':<12} {'status':<11} {'started':>8} {'blackout':>9} {'resumed':>8} {'downtime':>9}  destination"]

    def at(seconds):
        return "-" if seconds is None else f"{seconds:.2f}"

    for run in report.guests:
        blackout = run.report.blackout if run.report else None
        lines.append(f"{run.name:<12} {run.status:<11} {at(run.started_s):>8} {at(run.switchover_s):>9} "
                     f"{at(run.resumed_s):>8} {format_duration(blackout.total_s) if blackout else '-':>9}  "
                     f"{run.destination or '-'}")
        if run.status != "completed" and run.reason:
            lines.append(f"{'':<12} {run.reason}")
    return "\n".join(lines)


def format_status(status):
    """`precopy status`'s text for a running migration's status (emulator.running.control)."""
    page = status["page_size"]
    rate = status["bandwidth_bytes_per_s"]
    lines = [f"phase        {status['phase']} after {format_duration(status['elapsed_s'])}, pass {status['pass']} "
             f"({format_bytes(status['pass_pages_sent'] * page)} of it sent)",
             f"transferred  {format_bytes(status['transferred_bytes'])} on the wire",
             f"remaining    {format_bytes(status['remaining_pages'] * page)} to send "
             f"({status['remaining_pages']:,} of {status['total_pages']:,} pages)"]
    if status["disk_remaining_bytes"] is not None:  # a mirrored disk
        lines.append(f"disk         {format_bytes(status['disk_remaining_bytes'])} dirty of "
                     f"{format_bytes(status['disk_bytes'])} mirrored")
    if rate is not None:
        lines.append(f"last pass    {format_rate(rate)}, {status['dirty_pages_rate']:,.0f} page writes/s")
    lines.append(f"parameters   downtime limit {format_duration(status['downtime_limit_s'])}, "
                 f"bandwidth cap {format_rate(status['max_bandwidth_bytes_per_s'])}")
    return "\n".join(lines)
