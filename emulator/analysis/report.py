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
    4: post-copy (Report.postcopy, the summary's postcopy keys), each pass's CPU seconds
       per end, the downtime limit in force and the dirty limit's throttle per pass, the
       summary's "cpu" and "xbzrle-cache". Schema 3 reads back (their defaults).
    5: a pass record and the blackout hold a mirrored disk's part as a record of its own
       (PassRecord.disk, Blackout.disk; None without a mirror), where schemas 3 and 4 held
       flat disk_* fields, all 0 without one. Schemas 1-4 read back. DiskPass gained
       write_back_bytes_per_s later in schema 5, and Postcopy recoveries and paused_s (optional:
       a report without them reads back).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import tempfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NotRequired, Sequence, TypedDict

from emulator.analysis.events import Event
from emulator.vm.scenario import Scenario

__all__ = [
    "Blackout",
    "BlockJob",
    "DestinationOutcome",
    "DiskFinal",
    "DiskPass",
    "Interval",
    "ParameterChange",
    "PHASES",
    "PassRecord",
    "Phase",
    "Postcopy",
    "Report",
    "SCHEMA_VERSION",
    "STATUSES",
    "Summary",
    "host_info",
    "summarize",
]

SCHEMA_VERSION = 5
# 1 is upgraded as it is read, 3 and 4 lift their flat disk_* fields into records;
# 2 lacks only the disk's fields, 3 post-copy's, which default
READABLE_SCHEMAS = (1, 2, 3, 4, 5)
#: the flat fields of schemas 3 and 4 that schema 5 holds in DiskPass and DiskFinal
_FLAT_DISK_PASS = {"disk_blocks_sent": "blocks_sent", "disk_bytes_sent": "bytes_sent",
                   "disk_wire_bytes": "wire_bytes", "disk_zero_blocks": "zero_blocks",
                   "disk_remaining_bytes": "remaining_bytes", "disk_writes_rate": "writes_rate",
                   "disk_wait_s": "wait_s"}
_FLAT_DISK_FINAL = {"final_disk_blocks": "blocks", "final_disk_zero_blocks": "zero_blocks",
                    "final_disk_wire_bytes": "wire_bytes", "disk_sync_s": "sync_s"}
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
    bandwidth_bytes_per_s: the wire bytes of every stream (memory, and a disk's) / duration_s:
        the link's rate.
    remaining_pages: dirty pages at the end of the pass (distinct pages dirtied during
        it: the size of the next harvest).
    dirty_pages_rate: page writes per second during the pass, as the writers counted them.
    threshold_bytes: the switchover threshold after the pass (bandwidth x downtime limit),
        for the memory and a mirrored disk together.
    downtime_limit_s: the downtime limit in force after the pass (a ramp's step, or the limit).
    dirty_limit_throttle_s: seconds each vCPU spent held back by the dirty limit during the
        pass, on average (0 without one).
    throttle_pct: the writers' throttle (auto-converge) during the pass, percent.
    source_cpu_s, destination_cpu_s: CPU seconds each side's migration used during the pass:
        all its threads (migration, codec, ZeroMQ I/O) but the guest's vCPUs.
    disk: a mirrored disk's part of the pass (storage mirror), else None.
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
    disk: DiskPass | None = None

    @property
    def total_bytes_sent(self) -> int:
        """Guest bytes of every stream sent in the pass: the memory's, and a mirrored disk's."""
        return self.bytes_sent + (self.disk.bytes_sent if self.disk else 0)

    @property
    def total_wire_bytes(self) -> int:
        """Bytes on the wire of every stream in the pass."""
        return self.wire_bytes + (self.disk.wire_bytes if self.disk else 0)


@dataclass
class DiskPass:
    """A mirrored disk's part of one pass.

    blocks_sent: blocks sent, zero blocks included; bytes_sent: their bytes; wire_bytes:
    their bytes on the wire; zero_blocks: of blocks_sent, the zero ones; remaining_bytes:
    dirty bytes left at the end of the pass; writes_rate: block writes per second during
    it; wait_s: the pass's duration if the memory alone fitted the budget before it (the
    disk held the switch-over up), else 0; write_back_bytes_per_s: the rate at which the
    destination last wrote its copy through to storage, as its PASS_END said (None: not
    measured yet, or not said).
    """

    blocks_sent: int
    bytes_sent: int
    wire_bytes: int
    zero_blocks: int
    remaining_bytes: int
    writes_rate: float
    wait_s: float = 0.0
    write_back_bytes_per_s: float | None = None


@dataclass
class DiskFinal:
    """A mirrored disk's part of the blackout.

    blocks: its last dirty blocks, sent while paused; zero_blocks: the zero ones among them;
    wire_bytes: their bytes on the wire; sync_s: seconds the destination spent writing its
    copy of the disk through to storage and putting it in place (the storage handover).
    """

    blocks: int
    zero_blocks: int
    wire_bytes: int
    sync_s: float


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
    disk: a mirrored disk's part (storage mirror), else None.
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
    disk: DiskFinal | None = None


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
    recoveries: times the link broke and the migration went on over a new connection (QEMU's
    postcopy-recover); paused_s: the time it spent paused, waiting for those.
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
    recoveries: int = 0
    paused_s: float = 0.0


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


RamSummary = TypedDict("RamSummary", {
    "transferred": int, "remaining": int, "total": int, "duplicate": int, "normal": int, "normal-bytes": int,
    "dirty-pages-rate": float, "mbps": float, "dirty-sync-count": int, "pages-per-second": float,
    "precopy-bytes": int, "downtime-bytes": int, "page-size": int,
    "postcopy-bytes": NotRequired[int], "postcopy-requests": NotRequired[int],
})
DiskSummary = TypedDict("DiskSummary", {
    "transferred": int, "remaining": int, "total": int, "duplicate": int, "normal": int, "precopy-bytes": int,
    "downtime-bytes": int, "dirty-blocks-rate": float, "block-size": int, "wait-time": float,
})
CpuSummary = TypedDict("CpuSummary", {"source-s-per-gib": float | None, "destination-s-per-gib": float | None})
Summary = TypedDict("Summary", {
    "status": str, "total-time": float, "setup-time": float, "downtime": float | None,
    "expected-downtime": float | None, "cpu-throttle-percentage": int, "dirty-limit-throttle-time-per-round": float,
    "passes": int, "compression-ratio": float | None, "ram": RamSummary, "cpu": CpuSummary,
    "postcopy-blocktime": NotRequired[float], "postcopy-vcpu-blocktime": NotRequired[list[float]],
    "disk": NotRequired[DiskSummary], "xbzrle-cache": NotRequired[dict[str, Any]],
})
Summary.__doc__ = """A run's totals, named and measured as QEMU's query-migrate names them (``summarize``).

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

    cpu.source-s-per-gib, cpu.destination-s-per-gib: each end's CPU seconds per GiB of guest
    memory (and disk) sent in pre-copy, the guest's own vCPUs left out: netperf's "service
    demand" (None when nothing was sent).
"""


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
    summary: Summary | dict[str, Any] = field(default_factory=dict)  # empty until the run is summarized
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
        if data["schema"] in (3, 4):
            data = _disk_records_from_flat(data)
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


def _disk_records_from_flat(data: dict[str, Any]) -> dict[str, Any]:
    """A schema 3 or 4 report's data with each pass's and the blackout's flat disk_* fields as records
    (the records only where the run had a mirror: block_job)."""
    mirrored = data.get("block_job") is not None

    def lifted(item, names):
        if not isinstance(item, dict):
            return item  # refused, naming it, as it is built
        flat = {new: item[old] for old, new in names.items() if old in item}
        kept = {key: value for key, value in item.items() if key not in names}
        return dict(kept, disk=flat if mirrored else None)

    data = dict(data)
    if isinstance(data.get("passes"), list):
        data["passes"] = [lifted(item, _FLAT_DISK_PASS) for item in data["passes"]]
    if data.get("blackout") is not None:
        data["blackout"] = lifted(data["blackout"], _FLAT_DISK_FINAL)
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
    data = dict(data)
    for name, record in _RECORDS_INSIDE.get(cls, {}).items():
        if data.get(name) is not None:
            data[name] = _build(record, data[name], f"{where}.{name}")
    return cls(**data)


#: the records a record holds, by field: built from their JSON objects in turn
_RECORDS_INSIDE: dict[type, dict[str, type]] = {PassRecord: {"disk": DiskPass}, Blackout: {"disk": DiskFinal}}


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
) -> Summary:
    """QEMU query-migrate style totals over the records of a run.

    Derived from the records: the final pages come from ``blackout``; expected downtime
    defaults to the last pass's remaining bytes / its bandwidth; the throttle to the last
    pass's; dirty-sync-count to one harvest per pass plus the blackout's final one.

    Its keys, units and meanings: Summary.

    Device state is not RAM: it is in the blackout record, not in ``ram.transferred``.
    unrecorded_wire_bytes, unrecorded_disk_wire_bytes, unrecorded_pages, unrecorded_zero_pages:
    what a pass cut short by a failure sent before it ended (no record holds it): counted in
    transferred and precopy-bytes, and its pages in normal and duplicate.
    disk: the mirrored disk's DiskSpec (emulator.vm.disk), or None: no "disk" key.
    xbzrle_cache: QEMU's xbzrle-cache figures (cache-size, bytes, pages, cache-miss,
    cache-miss-rate, encoding-rate, overflow), or None: no "xbzrle-cache" key.
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
    gib = sum(p.total_bytes_sent for p in passes) / (1 << 30)
    return {f"{end}-s-per-gib": sum(getattr(p, f"{end}_cpu_s") for p in passes) / gib if gib else None
            for end in ("source", "destination")}


def _disk_summary(passes, blackout, status, disk, unrecorded_wire_bytes):
    """The summary's "disk": a mirrored disk's totals, named as ram's."""
    parts = [p.disk for p in passes if p.disk is not None]
    final = blackout.disk if blackout is not None and blackout.disk is not None else DiskFinal(0, 0, 0, 0.0)
    precopy = sum(part.wire_bytes for part in parts) + unrecorded_wire_bytes
    blocks = sum(part.blocks_sent for part in parts) + final.blocks
    duplicate = sum(part.zero_blocks for part in parts) + final.zero_blocks
    if status == "completed":
        remaining = 0
    else:
        remaining = parts[-1].remaining_bytes if parts else disk.size_bytes
    return {
        "transferred": precopy + final.wire_bytes, "remaining": remaining, "total": disk.size_bytes,
        "duplicate": duplicate, "normal": blocks - duplicate, "precopy-bytes": precopy,
        "downtime-bytes": final.wire_bytes, "dirty-blocks-rate": parts[-1].writes_rate if parts else 0.0,
        "block-size": disk.block_size, "wait-time": sum(part.wait_s for part in parts) * 1e3,
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


