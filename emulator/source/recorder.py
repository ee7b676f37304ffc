"""What a source's run leaves behind, as it happens, and the Report built from it.

The Recorder owns the phase timeline, the pass records, the blackout and post-copy
records, the events the run warns about, the parameters changed while it ran, and the
count of a pass still being sent (a failure may end it before a record holds it). The
source writes to it; `report()` turns it, with the streams' digests, into the Report.
"""

from emulator.analysis import events
from emulator.analysis.report import BlockJob, Phase, Report, host_info, summarize


class Timeline:
    """Phase start/end times, relative to the migration start; `progress` hears of each phase."""

    def __init__(self, clock, progress):
        self.clock, self.progress = clock, progress
        self.start = clock()
        self.phases = []

    def now(self):
        return self.clock() - self.start

    def begin(self, name):
        self.end_current()
        self.phases.append(Phase(name, self.now(), self.now()))
        self.progress.phase(name, self.now())

    def end_current(self):
        if self.phases:
            self.phases[-1].end_s = max(self.phases[-1].start_s, self.now())


class Recorder:
    """The records of one source run (module doc); `progress` hears of phases and warnings."""

    def __init__(self, clock, progress):
        self.progress = progress
        self.timeline = Timeline(clock, progress)
        self.passes = []
        self.blackout = self.postcopy = None
        self.events = []
        self.parameter_changes = []
        self.unrecorded = None  # the PassCount of a pass (or blackout) still being sent

    def warn_if_long(self, blackout, warning_s, downtime_limit_s, decision_reason, rate_bytes_per_s):
        """A blackout past the warning threshold is an event, with its likely cause."""
        threshold = events.blackout_threshold_s(warning_s, downtime_limit_s)
        if blackout.total_s <= threshold:
            return
        cause = events.likely_cause(self.passes, decision_reason, rate_bytes_per_s, blackout.final_wire_bytes,
                                    blackout.final_send_s)
        event = events.Event("long-blackout", self.timeline.now(), blackout.total_s, threshold, cause)
        self.events.append(event)
        self.progress.message(events.warning_text(event))

    def report(self, status, reason, *, scenario, memory, disk, setup_s, expected_downtime_s, decision, location,
               xbzrle_cache, rate_bytes_per_s):
        """The Report: `memory` and `disk` are the source's streams (disk None without a mirror)."""
        self.timeline.end_current()
        total_s = self.timeline.now()
        matched = memory.matched()
        if matched is not None and disk is not None and not disk.matched():
            matched = False  # the disk's digests must match as the memory's do
        unrecorded = self.unrecorded
        summary = summarize(
            self.passes, self.blackout, status=status, page_size=memory.unit_bytes, total_pages=memory.units,
            setup_s=total_s if setup_s is None else setup_s, total_s=total_s, expected_downtime_s=expected_downtime_s,
            unrecorded_wire_bytes=unrecorded.memory.wire_bytes if unrecorded else 0,
            unrecorded_disk_wire_bytes=unrecorded.disk.wire_bytes if unrecorded else 0,
            unrecorded_pages=unrecorded.memory.units if unrecorded else 0,
            unrecorded_zero_pages=unrecorded.memory.zero_units if unrecorded else 0,
            disk=disk and disk.image.spec, xbzrle_cache=xbzrle_cache, postcopy=self.postcopy,
        )
        return Report(
            status=status, reason=reason, scenario=scenario, host=host_info(), location=location,
            passes=self.passes, phases=self.timeline.phases, blackout=self.blackout,
            switchover_reason=decision.reason if decision else None, digests_match=matched,
            source_digest=memory.sent_digest, destination_digest=memory.received_digest, summary=summary,
            parameter_changes=self.parameter_changes, events=self.events,
            block_job=disk and self._block_job(status, disk, rate_bytes_per_s), postcopy=self.postcopy,
        )

    def _block_job(self, status, disk, rate_bytes_per_s):
        """The disk mirror as QEMU's query-block-jobs shows one."""
        unrecorded = self.unrecorded.disk.units if self.unrecorded else 0
        final = self.blackout.disk.blocks if self.blackout else 0
        offset = (sum(p.disk.blocks_sent for p in self.passes) + unrecorded + final) * disk.unit_bytes
        left = 0 if status == "completed" else disk.remaining_bytes() if self.passes else disk.image.spec.size_bytes
        return BlockJob(device=disk.image.spec.name, len=offset + left, offset=offset, ready=disk.ready_s is not None,
                        ready_s=disk.ready_s, wait_s=disk.wait_s, sync_s=disk.sync_s, speed=rate_bytes_per_s or 0)
