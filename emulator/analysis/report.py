"""Migration records and the JSON report: per-pass records, the blackout, the summary.

A run writes one JSON document (``Report``) that plots and the estimator read back. Records
are dataclasses serialized with ``asdict``; ``Report.from_json`` rebuilds them and refuses
unknown schema versions and unknown or missing fields, naming them.

Schema history:
    1: first version.
    2: the destination's outcome is its own field (it was scenario["destination"]);
       PassRecord.pages_dirtied is gone (it always equalled remaining_pages);
       the source records where the guest runs now (location) and what `precopy set`
       changed (parameter_changes). Schema 1 reads back.
    3: a mirrored disk: its part of each pass record and of the blackout, the block job
       (block_job) and the summary's "disk". Schemas 1 and 2 read back (no disk).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import tempfile
import textwrap
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Sequence

from emulator.analysis.events import Event
from emulator.core.units import format_bytes, format_count, format_duration, format_rate
from emulator.vm.scenario import Scenario

__all__ = [
    "Blackout",
    "BlockJob",
    "DestinationOutcome",
    "Interval",
    "ParameterChange",
    "PHASES",
    "PassRecord",
    "Phase",
    "Postcopy",
    "Report",
    "SCHEMA_VERSION",
    "STATUSES",
    "format_summary",
    "host_info",
    "summarize",
]

SCHEMA_VERSION = 4
# 1 is upgraded as it is read; 2 lacks only the disk's fields, 3 post-copy's, which default
READABLE_SCHEMAS = (1, 2, 3, 4)
#: lost: the migration failed after a post-copy resume, when neither side had all of the guest
STATUSES: tuple[str, ...] = ("completed", "failed", "cancelled", "lost")
PHASES: tuple[str, ...] = ("setup", "precopy", "blackout", "handover", "resume", "announce", "postcopy")
Status = Literal["completed", "failed", "cancelled", "lost"]


@dataclass
class PassRecord:
    """One pre-copy pass (pass 0 sends every page; pass k the pages dirtied during k-1).

    pass_no: 0-based pass number.
    pages_sent: pages sent in the pass, zero pages included (memory only: the disk's are its own).
    bytes_sent: guest bytes sent, pages_sent x page_size (zero pages included).
    wire_bytes: bytes on the wire after the codec (payloads, page numbers and headers).
    zero_pages: pages sent as zero pages (no payload).
    duration_s: wall time of the pass, seconds.
    bandwidth_bytes_per_s: (wire_bytes + disk_wire_bytes) / duration_s: the link's rate.
    remaining_pages: dirty pages at the end of the pass (distinct pages dirtied during
        it: the size of the next harvest).
    dirty_pages_rate: page writes per second during the pass, as the writers counted them.
    threshold_bytes: the switchover threshold after the pass (bandwidth x downtime limit).
    downtime_limit_s: the downtime limit in force after the pass (a ramp's step, or the limit).
    dirty_limit_throttle_s: seconds each vCPU spent held back by the dirty limit during the
        pass, on average (0 without one).
    throttle_pct: the writers' throttle (auto-converge) during the pass, percent.
    source_cpu_s, destination_cpu_s: CPU seconds each side's migration used during the pass (all its
    threads but the guest's vCPUs)
        (all its threads: migration, codec, ZeroMQ I/O, and on the source the writers).
    disk_*: a mirrored disk's part (storage mirror; all 0 otherwise): blocks sent (zero
        blocks included), their bytes and wire bytes, zero blocks, dirty bytes left at the
        end, block writes per second during the pass; disk_wait_s: the pass's duration if
        the memory alone fitted the budget before it (the disk held the switch-over up).
    """

    pass_no: int
    pages_sent: int
    bytes_sent: int
    wire_bytes: int
    zero_pages: int
    duration_s: float
    bandwidth_bytes_per_s: float
    remaining_pages: int
    dirty_pages_rate: float
    threshold_bytes: float
    throttle_pct: int
    source_cpu_s: float = 0.0
    destination_cpu_s: float = 0.0
    downtime_limit_s: float = 0.0
    dirty_limit_throttle_s: float = 0.0
    disk_blocks_sent: int = 0
    disk_bytes_sent: int = 0
    disk_wire_bytes: int = 0
    disk_zero_blocks: int = 0
    disk_remaining_bytes: int = 0
    disk_writes_rate: float = 0.0
    disk_wait_s: float = 0.0


@dataclass
class Blackout:
    """The stop-and-copy: from pausing the writers until the source hears "resumed".

    total_s: the downtime, seconds (pause -> "resumed" received at the source).
    final_pages: pages sent while paused (the final dirty set), zero pages included.
    final_bytes: guest bytes of those pages, final_pages x page_size.
    final_wire_bytes: bytes on the wire for those pages after the codec.
    final_zero_pages: of final_pages, the zero pages.
    final_send_s: seconds to send the final pages.
    device_state_bytes: vCPU/device state bytes sent.
    device_state_s: seconds to send the device state.
    digest_check_s: seconds the destination spent verifying the memory digest (it says so).
    resume_s: seconds from the digest check to the destination running.
    final_disk_blocks, final_disk_zero_blocks, final_disk_wire_bytes: a mirrored disk's last
        dirty blocks sent while paused, the zero ones among them, their bytes on the wire.
    disk_sync_s: seconds the destination spent writing its copy of the disk through to storage
        and putting it in place (the storage handover).
    """

    total_s: float
    final_pages: int
    final_bytes: int
    final_wire_bytes: int
    final_zero_pages: int
    final_send_s: float
    device_state_bytes: int
    device_state_s: float
    digest_check_s: float
    resume_s: float
    final_disk_blocks: int = 0
    final_disk_zero_blocks: int = 0
    final_disk_wire_bytes: int = 0
    disk_sync_s: float = 0.0


@dataclass
class Postcopy:
    """Post-copy, from the destination's resume until its last missing page arrived.

    missing_pages: pages missing at the resume. pages_requested: of them, the pages the
    destination's vCPUs asked for, each once (QEMU's postcopy-requests counts requests).
    requested_sent: pages the source sent because they were asked for before their push;
    pushed_pages: pages it sent in order. requests: PAGE_REQUEST messages heard.
    wire_bytes, zero_pages: the missing pages on the wire, and how many were zero.
    duration_s: the source's resume (RESUMED heard) to POSTCOPY_DONE heard.
    last_page_s: the destination's resume to its last page placed.
    blocktime_s: time every vCPU was waiting for a page at once (QEMU's postcopy-blocktime).
    vcpu_blocktime_s: each vCPU's time waiting for pages (postcopy-vcpu-blocktime).
    destination_cpu_s: the destination's CPU time from resume to its last page.
    """

    missing_pages: int
    pages_requested: int
    requested_sent: int
    pushed_pages: int
    requests: int
    wire_bytes: int
    zero_pages: int
    duration_s: float
    last_page_s: float
    blocktime_s: float
    vcpu_blocktime_s: list[float] = field(default_factory=list)
    destination_cpu_s: float = 0.0


@dataclass
class BlockJob:
    """The disk mirror, named as QEMU's query-block-jobs names a mirror job.

    device: the disk's name. len: bytes the job had to copy (the disk, plus every block
    dirtied again; it grows while the guest writes); offset: bytes copied (len once
    completed). ready: the dirty blocks left once fitted the downtime budget, at ready_s
    (seconds from the start; None if never). wait_s: pre-copy time spent only because the
    disk had not converged. sync_s: the destination's write-through in the handover.
    speed: the bandwidth cap it ran under (bytes/s, 0 = unlimited).
    """

    device: str
    len: int
    offset: int
    ready: bool
    ready_s: float | None
    wait_s: float
    sync_s: float
    speed: float
    type: str = "mirror"


@dataclass(frozen=True)
class Interval:
    """A pass in progress, sampled every --interval seconds (live only, not in the report).

    pass_no; elapsed_s: since the migration started; pages_sent, pass_pages: of this pass;
    wire_bytes_per_s: on the wire since the last sample; dirty_pages: dirty now (the next
    pass, so far); pass_left_s: the rest of this pass at its rate so far; end_s: the
    migration's end if the next pass were the last (a guess while the guest dirties pages:
    `firm` False); both None before the pass has a rate.
    """

    pass_no: int
    elapsed_s: float
    pages_sent: int
    pass_pages: int
    wire_bytes_per_s: float
    dirty_pages: int
    pass_left_s: float | None
    end_s: float | None
    firm: bool


@dataclass
class ParameterChange:
    """A parameter changed while the migration ran (`precopy set`): when, in which pass, to what."""

    time_s: float
    pass_no: int
    name: str
    value: float | None


@dataclass
class DestinationOutcome:
    """What became of one migration on the destination, as the destination saw it.

    status, reason: as a Report's. digest: the memory digest it verified (None unless
    completed). endpoint: where it listened. pages_applied: pages written into its guest,
    zero pages included. frames_refused: messages from strangers it refused meanwhile.
    blocks_applied: a mirrored disk's blocks written; disk_path: where that disk now is
    (None unless completed).
    """

    status: Status
    reason: str | None = None
    digest: str | None = None
    endpoint: str | None = None
    pages_applied: int = 0
    frames_refused: int = 0
    blocks_applied: int = 0
    disk_path: str | None = None


@dataclass
class Phase:
    """One of the six phases, in seconds from the migration start."""

    phase: str
    start_s: float
    end_s: float

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}: expected one of {', '.join(PHASES)}")
        if self.end_s < self.start_s:
            raise ValueError(
                f"phase {self.phase!r} ends ({self.end_s}) before it starts ({self.start_s})"
            )


@dataclass(kw_only=True)
class Report:
    """Everything one migration run produced.

    scenario: every option of the run and the seed (what was run; None if unknown).
    host: where it ran (``host_info()``).
    destination: the destination's own outcome, when this process heard it (``migrate``).
    parameter_changes: what `precopy set` changed during the run, in order.
    events: what the run warns about (emulator.analysis.events), in order.
    location: where the guest runs after the migration, as the destination announced it.
    phases: the six phases in order, as far as the run got.
    blackout: None if the run never paused the guest.
    switchover_reason: why pre-copy ended: converged, max-passes, max-time or stalled
        (None if it never ended).
    digests_match: source digest at pause == destination digest (None if never compared).
    summary: QEMU query-migrate style totals (``summarize``).
    block_job: the disk mirror (storage mirror), else None.
    postcopy: the post-copy after the resume, once it ended (None: none, or it did not end).
    """

    schema: int = SCHEMA_VERSION
    status: Status
    reason: str | None = None
    scenario: Scenario | None = None
    host: dict[str, Any] = field(default_factory=dict)
    destination: DestinationOutcome | None = None
    location: str | None = None
    parameter_changes: list[ParameterChange] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    passes: list[PassRecord] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    blackout: Blackout | None = None
    switchover_reason: str | None = None
    digests_match: bool | None = None
    source_digest: str | None = None
    destination_digest: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    block_job: BlockJob | None = None
    postcopy: Postcopy | None = None

    def __post_init__(self) -> None:
        if type(self.schema) is not int or self.schema != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported report schema {self.schema!r}: this precopy reads schema"
                f" {SCHEMA_VERSION}"
            )
        if self.status not in STATUSES:
            raise ValueError(
                f"invalid report status {self.status!r}: expected one of {', '.join(STATUSES)}"
            )

    def to_json(self) -> str:
        """The report as standard JSON (NaN and infinity are refused, naming the field)."""
        data = asdict(self)
        if self.scenario is not None:
            data["scenario"] = self.scenario.to_dict()
        bad = _non_finite_path(data, "report")
        if bad is not None:
            raise ValueError(f"{bad} is not finite; JSON cannot hold NaN or infinity")
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Rebuild a report from ``to_json`` output; refuses other schema versions."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a precopy report: invalid JSON ({error})") from None
        if not isinstance(data, dict) or "schema" not in data:
            raise ValueError("not a precopy report: no 'schema' field")
        if type(data["schema"]) is not int or data["schema"] not in READABLE_SCHEMAS:
            raise ValueError(
                f"unsupported report schema {data['schema']!r}: this precopy reads schemas"
                f" {', '.join(map(str, READABLE_SCHEMAS))}"
            )
        if data["schema"] == 1:
            data = _upgraded_from_schema_1(data)
        data = dict(data, schema=SCHEMA_VERSION)
        _check_fields(cls, data, "report")
        data = dict(data)
        if data.get("scenario") is not None:
            try:
                data["scenario"] = Scenario.from_dict(data["scenario"])
            except ValueError as error:
                raise ValueError(f"report.scenario: {error}") from None
        if data.get("destination") is not None:
            data["destination"] = _build(DestinationOutcome, data["destination"], "report.destination")
        for name, record in (("passes", PassRecord), ("phases", Phase), ("parameter_changes", ParameterChange),
                             ("events", Event)):
            data[name] = [_build(record, item, f"report.{name}[{i}]")
                          for i, item in enumerate(_as_list(data.get(name, []), f"report.{name}"))]
        if data.get("blackout") is not None:
            data["blackout"] = _build(Blackout, data["blackout"], "report.blackout")
        if data.get("block_job") is not None:
            data["block_job"] = _build(BlockJob, data["block_job"], "report.block_job")
        if data.get("postcopy") is not None:
            data["postcopy"] = _build(Postcopy, data["postcopy"], "report.postcopy")
        return cls(**data)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON report; atomic, so a reader never sees half a file."""
        target = Path(path)
        text = self.to_json()
        handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as tmp:
                tmp.write(text)
            os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
            os.replace(tmp_name, target)
        except BaseException:
            os.unlink(tmp_name)
            raise

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Report:
        """Read a report written by ``write``."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def _upgraded_from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 report's data as schema 2 holds it."""
    data = dict(data, schema=SCHEMA_VERSION)
    if isinstance(data.get("scenario"), dict):
        data["scenario"] = dict(data["scenario"])
        data["destination"] = data["scenario"].pop("destination", None)
        if not data["scenario"]:
            data["scenario"] = None
    if isinstance(data.get("passes"), list):
        data["passes"] = [{k: v for k, v in item.items() if k != "pages_dirtied"} if isinstance(item, dict) else item
                          for item in data["passes"]]
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _non_finite_path(value: Any, path: str) -> str | None:
    """The path of the first NaN or infinity inside a JSON-like value, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items = ((f"{path}.{key}", item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for item_path, item in items:
        found = _non_finite_path(item, item_path)
        if found is not None:
            return found
    return None


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a JSON array, got {type(value).__name__}")
    return value


def _check_fields(cls: type, data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in data and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")


def _build(cls: type, data: Any, where: str) -> Any:
    _check_fields(cls, data, where)
    return cls(**data)


def summarize(
    passes: Sequence[PassRecord],
    blackout: Blackout | None,
    *,
    status: Status,
    page_size: int,
    total_pages: int,
    setup_s: float,
    total_s: float,
    expected_downtime_s: float | None = None,
    throttle_pct: int | None = None,
    dirty_sync_count: int | None = None,
    unrecorded_wire_bytes: int = 0,
    unrecorded_disk_wire_bytes: int = 0,
    unrecorded_pages: int = 0,
    unrecorded_zero_pages: int = 0,
    disk: Any = None,
    xbzrle_cache: dict[str, Any] | None = None,
    postcopy: Postcopy | None = None,
) -> dict[str, Any]:
    """QEMU query-migrate style totals over the records of a run.

    Derived from the records: the final pages come from ``blackout``; expected downtime
    defaults to the last pass's remaining bytes / its bandwidth; the throttle to the last
    pass's; dirty-sync-count to one harvest per pass plus the blackout's final one.

    ============================ ========================================================
    key                          meaning (unit)
    ============================ ========================================================
    status                       completed / failed / cancelled / lost
    total-time                   migration start to end (ms)
    setup-time                   setup phase (ms)
    downtime                     blackout, pause -> "resumed" heard (ms; None: no pause)
    expected-downtime            remaining bytes / bandwidth after the last pass (ms;
                                 None if unknown)
    cpu-throttle-percentage      auto-converge throttle at the end (%)
    dirty-limit-throttle-time-per-round
                                 the last pass's time each vCPU was held back by the dirty
                                 limit (us; 0 without one)
    passes                       pre-copy passes completed (count)
    compression-ratio            guest bytes sent / wire bytes (None if nothing sent)
    ram.transferred              RAM bytes on the wire, pre-copy + blackout (bytes)
    ram.remaining                dirty bytes not yet sent (bytes; 0 once completed)
    ram.total                    guest memory size (bytes)
    ram.duplicate                zero pages sent (pages)
    ram.normal                   non-zero pages sent (pages)
    ram.normal-bytes             normal x page-size (bytes)
    ram.dirty-pages-rate         page writes per second in the last pass (pages/s)
    ram.mbps                     transferred over (total - setup) time (megabits/s)
    ram.dirty-sync-count         dirty-bitmap harvests (count)
    ram.pages-per-second         pages sent over (total - setup) time (pages/s)
    ram.precopy-bytes            wire bytes sent during pre-copy (bytes)
    ram.downtime-bytes           RAM wire bytes sent during the blackout (bytes)
    ram.page-size                page size (bytes)
    ram.postcopy-bytes           RAM wire bytes sent after a post-copy resume (bytes;
                                 in transferred too)
    ram.postcopy-requests        pages the destination's vCPUs asked for (count)
    postcopy-blocktime           every vCPU waiting for a page at once (ms)
    postcopy-vcpu-blocktime      each vCPU's wait for pages (ms, a list)
    (the postcopy keys only after a post-copy)

    disk.transferred             a mirrored disk's bytes on the wire (bytes); and as ram's:
    disk.remaining, disk.total, disk.duplicate (zero blocks), disk.normal (blocks),
    disk.precopy-bytes, disk.downtime-bytes, disk.dirty-blocks-rate (blocks/s, last
    pass), disk.block-size (bytes), disk.wait-time (pre-copy held up by the disk, ms)
    ============================ ========================================================

    Device state is not RAM: it is in the blackout record, not in ``ram.transferred``.
    unrecorded_wire_bytes, unrecorded_disk_wire_bytes, unrecorded_pages, unrecorded_zero_pages:
    what a pass cut short by a failure sent before it ended (no record holds it): counted in
    transferred and precopy-bytes, and its pages in normal and duplicate.
    disk: the mirrored disk's DiskSpec (emulator.vm.disk), or None: no "disk" key.
    xbzrle_cache: QEMU's xbzrle-cache figures (cache-size, bytes, pages, cache-miss,
    cache-miss-rate, encoding-rate, overflow), or None: no "xbzrle-cache" key.

    cpu.source-s-per-gib, cpu.destination-s-per-gib: each end's CPU seconds per GiB of guest
    memory (and disk) sent in pre-copy, the guest's own vCPUs left out: netperf's "service
    demand" (None when nothing was sent).
    """
    if status not in STATUSES:
        raise ValueError(f"invalid status {status!r}: expected one of {', '.join(STATUSES)}")
    if page_size <= 0:
        raise ValueError(f"page_size must be > 0, got {page_size!r}")
    last = passes[-1] if passes else None

    final_pages = blackout.final_pages if blackout else 0
    final_zero_pages = blackout.final_zero_pages if blackout else 0
    downtime_wire_bytes = blackout.final_wire_bytes if blackout else 0
    postcopy_pages, postcopy_zero_pages, postcopy_wire_bytes = (
        (postcopy.missing_pages, postcopy.zero_pages, postcopy.wire_bytes) if postcopy else (0, 0, 0))
    precopy_wire_bytes = sum(p.wire_bytes for p in passes) + unrecorded_wire_bytes
    transferred = precopy_wire_bytes + downtime_wire_bytes + postcopy_wire_bytes
    pages_sent = sum(p.pages_sent for p in passes) + final_pages + postcopy_pages + unrecorded_pages
    duplicate = sum(p.zero_pages for p in passes) + final_zero_pages + postcopy_zero_pages + unrecorded_zero_pages
    normal = pages_sent - duplicate
    guest_bytes = pages_sent * page_size

    if status == "completed":
        remaining = 0
    elif last is not None:
        remaining = last.remaining_pages * page_size
    else:
        remaining = total_pages * page_size

    if expected_downtime_s is None and last is not None and last.bandwidth_bytes_per_s > 0:
        expected_downtime_s = last.remaining_pages * page_size / last.bandwidth_bytes_per_s
    if throttle_pct is None:
        throttle_pct = last.throttle_pct if last else 0
    if dirty_sync_count is None:
        dirty_sync_count = len(passes) + (1 if blackout else 0)
    transfer_s = total_s - setup_s

    return {
        "status": status,
        "total-time": total_s * 1e3,
        "setup-time": setup_s * 1e3,
        "downtime": blackout.total_s * 1e3 if blackout else None,
        "expected-downtime": (
            expected_downtime_s * 1e3 if expected_downtime_s is not None else None
        ),
        "cpu-throttle-percentage": throttle_pct,
        "dirty-limit-throttle-time-per-round": last.dirty_limit_throttle_s * 1e6 if last else 0.0,
        "passes": len(passes),
        "compression-ratio": guest_bytes / transferred if transferred else None,
        "ram": {
            "transferred": transferred,
            "remaining": remaining,
            "total": total_pages * page_size,
            "duplicate": duplicate,
            "normal": normal,
            "normal-bytes": normal * page_size,
            "dirty-pages-rate": last.dirty_pages_rate if last else 0.0,
            "mbps": transferred * 8 / transfer_s / 1e6 if transfer_s > 0 else 0.0,
            "dirty-sync-count": dirty_sync_count,
            "pages-per-second": pages_sent / transfer_s if transfer_s > 0 else 0.0,
            "precopy-bytes": precopy_wire_bytes,
            "downtime-bytes": downtime_wire_bytes,
            "page-size": page_size,
            **({} if postcopy is None else {"postcopy-bytes": postcopy_wire_bytes,
                                            "postcopy-requests": postcopy.pages_requested}),
        },
        **({} if postcopy is None else {"postcopy-blocktime": postcopy.blocktime_s * 1e3,
                                        "postcopy-vcpu-blocktime": [b * 1e3 for b in postcopy.vcpu_blocktime_s]}),
        **({} if disk is None else {"disk": _disk_summary(passes, blackout, status, disk, unrecorded_disk_wire_bytes)}),
        **({} if xbzrle_cache is None else {"xbzrle-cache": xbzrle_cache}),
        "cpu": _service_demand(passes),
    }


def _service_demand(passes):
    """The summary's "cpu": each end's pre-copy CPU seconds per GiB it moved."""
    gib = sum(p.bytes_sent + p.disk_bytes_sent for p in passes) / (1 << 30)
    return {f"{end}-s-per-gib": sum(getattr(p, f"{end}_cpu_s") for p in passes) / gib if gib else None
            for end in ("source", "destination")}


def _disk_summary(passes, blackout, status, disk, unrecorded_wire_bytes):
    """The summary's "disk": a mirrored disk's totals, named as ram's."""
    last = passes[-1] if passes else None
    precopy = sum(p.disk_wire_bytes for p in passes) + unrecorded_wire_bytes
    downtime = blackout.final_disk_wire_bytes if blackout else 0
    blocks = sum(p.disk_blocks_sent for p in passes) + (blackout.final_disk_blocks if blackout else 0)
    duplicate = sum(p.disk_zero_blocks for p in passes) + (blackout.final_disk_zero_blocks if blackout else 0)
    if status == "completed":
        remaining = 0
    else:
        remaining = last.disk_remaining_bytes if last else disk.size_bytes
    return {
        "transferred": precopy + downtime, "remaining": remaining, "total": disk.size_bytes,
        "duplicate": duplicate, "normal": blocks - duplicate, "precopy-bytes": precopy, "downtime-bytes": downtime,
        "dirty-blocks-rate": last.disk_writes_rate if last else 0.0, "block-size": disk.block_size,
        "wait-time": sum(p.disk_wait_s for p in passes) * 1e3,
    }


def host_info() -> dict[str, Any]:
    """Where the run happened: host, platform, Python, library versions, CPUs."""
    versions: dict[str, str | None] = {}
    for label, distribution in (
        ("precopy", "precopy"),
        ("numpy", "numpy"),
        ("numba", "numba"),
        ("zmq", "pyzmq"),
        ("lz4", "lz4"),
    ):
        try:
            versions[label] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[label] = None
    try:
        import zmq

        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        versions["libzmq"] = None
    try:
        usable_cpus: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        usable_cpus = None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "versions": versions,
    }


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
        lines.append(
            f"transferred  {format_bytes(ram['transferred'])} on the wire"
            f" at {format_rate(ram['mbps'] * 1e6 / 8)}"  # the pass table's unit, not QEMU's Mbit/s
            + (f", compression ratio {ratio:.2f}" if compressed else "")
        )
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
            disk = (f" {format_bytes(rec.disk_bytes_sent):>10} {format_bytes(rec.disk_remaining_bytes):>10}"
                    if mirrored else "") + (f" {format_duration(rec.downtime_limit_s):>8}" if ramped else "")
            lines.append(
                f"{rec.pass_no:>4} {format_bytes(rec.bytes_sent):>10}"
                f" {format_bytes(rec.wire_bytes):>10} {remaining:>10}"
                f" {format_rate(rec.bandwidth_bytes_per_s):>11}"
                f" {_pages_rate(rec.dirty_pages_rate):>16}{disk}"
            )
    if report.blackout is not None:
        b = report.blackout
        disk = (f" and {b.final_disk_blocks:,} disk blocks ({format_bytes(b.final_disk_wire_bytes)})" if mirrored
                else "")
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
