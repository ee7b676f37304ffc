"""The source: migrates a running guest through the six phases and reports what happened.

Pre-copy: pass 0 sends every page; pass k sends the pages harvested from the
dirty bitmap, i.e. dirtied since the previous harvest. Each pass ends with
PASS_END and waits for the destination's PASS_END: all of the pass is then
applied on the destination, so a page resent in the next pass can never be
overtaken by its older copy on another channel (QEMU's multifd syncs each
iteration for the same reason), and the pass duration includes the transfer,
not only the queueing. The policy decides after each pass.

Blackout: pause the writers (pause() returns once none touches memory),
harvest the final dirty set, send it and the device state, then COMPLETE with
the memory digest: the running digest of every page as sent (verify
"incremental"), or a hash of all the paused memory (verify "full"). The
destination verifies, resumes and says so; the downtime ends when the source
hears RESUMED. With an incremental check the source then re-hashes its paused
memory: equal to the running digest proves no write escaped the dirty
tracking. Any failure before RESUMED resumes the source's writers: the guest
keeps running here, unharmed.

Storage mirror (shared-nothing): each pass sends the guest's dirty disk blocks
(pass 0 every block), then its memory pages, each set harvested just before it
is sent, on the same channels and under the same cap; the policy weighs the
memory and the disk left together, so the switch-over waits for the disk too.
The disk goes first, as a block mirror runs before the memory migration: memory
dirtied while a large disk crosses pass 0 is not sent twice.
The blackout sends the last dirty blocks, COMPLETE carries the disk's digest,
and the destination writes its copy through to storage and puts it in place
before it resumes (the handover). The source's disk is only ever read.

Post-copy (emulator.postcopy): when pre-copy cannot converge, or after the passes
asked for, the blackout sends only the device state and the list of missing pages
(MISSING); the downtime ends when the destination resumes without them. Then every
missing page is sent once, those its vCPUs ask for (PAGE_REQUEST) before the next
push, the rest in ascending order. On a capped link a push message is what the cap
carries in POSTCOPY_PUSH_S, so a request waits behind little; uncapped, a message
is a full batch (smaller ones cost more per byte than the wait they save).
POSTCOPY_END closes them with the running digest, and the
destination's POSTCOPY_DONE says its digest as applied. From the resume until then
neither side has the whole guest: a failure loses it (status "lost").
"""

import dataclasses
import hashlib
import queue
import threading
import time
import uuid

import numpy as np

from emulator import events, policy, postcopy, protocol
from emulator.batches import BatchEncoder
from emulator.codecs import codec_from_name
from emulator.digest import RunningDigest
from emulator.errors import Cancelled, MigrationError, Mismatch, PeerAborted, PeerTimeout, Refused
from emulator.protocol import Flags, MsgType
from emulator.protocol_engines import SourceProtocol, aborted
from emulator.ratelimit import make_limiter
from emulator.threads import CpuMeter
from emulator.report import (Blackout, BlockJob, Interval, ParameterChange, PassRecord, Phase, Postcopy, Report,
                             format_parameter, host_info, summarize)
from emulator.units import format_count, format_rate
from kernels import bitmap, xbzrle

CONTROL_CHECK_BATCHES = 16  # look for an ABORT from the destination every this many messages
POSTCOPY_PUSH_S = 0.002  # a post-copy push message on a capped link: what it carries in this time


class _Timeline:
    """Phase start/end times, relative to the migration start."""

    def __init__(self, clock, progress):
        self.clock, self.progress = clock, progress
        self.start = clock()
        self.phases = []

    def now(self):
        return self.clock() - self.start

    def begin(self, name):
        self.end_current()
        self.phases.append(Phase(name, self.now(), self.now()))
        if self.progress:
            self.progress.phase(name, self.now())

    def end_current(self):
        if self.phases:
            self.phases[-1].end_s = max(self.phases[-1].start_s, self.now())


class _PassCounter:
    """What one pass (or the blackout) put on the wire: memory pages, and a mirrored disk's blocks."""

    def __init__(self):
        self.pages = self.zero_pages = self.wire_bytes = 0
        self.blocks = self.zero_blocks = self.disk_wire_bytes = 0

    def count(self, batch, wire, disk):
        zero = batch.pages if batch.kind == MsgType.ZERO_PAGES else 0
        if disk:
            self.blocks += batch.pages
            self.zero_blocks += zero
            self.disk_wire_bytes += wire
        else:
            self.pages += batch.pages
            self.zero_pages += zero
            self.wire_bytes += wire


class _Mirror:
    """The source's side of a disk mirror: the disk's blocks, what encodes them, their running digest."""

    def __init__(self, scenario, disk, codec):
        self.disk, self.blocks = disk, disk.blocks
        self.block_size = self.blocks.page_size
        incremental = scenario.migration.verify == "incremental"
        self.running_digest = RunningDigest(self.blocks.n_pages, self.block_size) if incremental else None
        self.encoder = BatchEncoder(self.blocks, codec, scenario.disk_batch_blocks, self.running_digest, Flags.DISK)
        self.harvest_buffer = np.empty(self.blocks.dirty.size * bitmap.WORD_BITS, dtype=np.int64)
        self.ready_s = None  # when the dirty blocks left first fitted the downtime budget (QEMU: job ready)
        self.wait_s = 0.0  # pre-copy time spent only because the disk had not converged
        self.sync_s = 0.0  # the destination's write-through of its copy in the handover

    def harvest(self):
        return self.blocks.harvest(self.harvest_buffer)

    def remaining_bytes(self):
        return self.blocks.dirty_count() * self.block_size


class _IntervalSampler:
    """Gives the progress an Interval every `every_s` seconds of one pass."""

    def __init__(self, source, pass_pages, every_s):
        self.source, self.pass_pages, self.every_s = source, pass_pages, every_s
        self.started = self.last = source.clock()
        self.last_wire = 0

    def sample(self, counter):
        now = self.source.clock()
        if now - self.last < self.every_s:
            return
        source = self.source
        rate = counter.pages / max(now - self.started, 1e-9)  # pages/s of this pass so far
        dirty = source.guest.dirty_count()
        pass_left_s = (self.pass_pages - counter.pages) / rate if rate else None
        source.progress.interval(page_size=source.guest.page_size, sample=Interval(
            pass_no=source.protocol.pass_no, elapsed_s=source.timeline.now(), pages_sent=counter.pages,
            pass_pages=self.pass_pages, wire_bytes_per_s=(counter.wire_bytes - self.last_wire) / (now - self.last),
            dirty_pages=dirty, pass_left_s=pass_left_s,
            end_s=None if pass_left_s is None else pass_left_s + dirty / rate,
            firm=not source.scenario.workload.rate_pages_per_s or source.live_postcopy,  # nothing dirties in post-copy
        ))
        self.last, self.last_wire = now, counter.wire_bytes


class Source:
    """Migrates `guest` (running `workload`) over `link` according to `scenario`.

    progress: an object with phase(name, elapsed_s), pass_done(record, page_size,
    total_pages) and message(text), or None; if it has interval_s (> 0) and
    interval(sample), it gets a report.Interval that often during each pass.
    link_budget: a limiter (emulator.ratelimit) other migrations draw from too, as a
    drain's migrations share one cap on the link; each data message takes from it
    after this migration's own cap.
    disk, disk_writer: the guest's DiskImage (emulator.disk) and its running writer, if it has a
    disk; storage mirror copies it, and both writers pause in the blackout.
    """

    def __init__(self, scenario, guest, workload, link, *, progress=None, link_budget=None, disk=None,
                 disk_writer=None, clock=time.monotonic):
        self.scenario = scenario
        self.options = scenario.migration
        self.guest, self.workload, self.link = guest, workload, link
        self.progress, self.clock = progress, clock
        self.codec = codec_from_name(self.options.codec)
        self.limiter = make_limiter(self.options.max_bandwidth_bytes_per_s)
        self.link_budget = link_budget
        mirrored = scenario.mirrored_disk
        if (disk is None) != (scenario.disk is None):
            raise ValueError("a guest with a disk in its scenario needs its DiskImage, and only then")
        self.disk_writer = disk_writer
        self.mirror = _Mirror(scenario, disk, self.codec) if mirrored else None
        self.protocol = SourceProtocol(self.options.channels, guest.page_size, mirrored and mirrored.block_size,
                                       guest.n_pages)
        self.passes = []
        self.unrecorded = None  # the _PassCounter of a pass (or blackout) still being sent
        self.paused = False
        self.blackout = None
        self.backlog = None  # post-copy's missing pages (emulator.postcopy.Backlog), once the guest moved
        self.postcopy_complete = False  # every missing page arrived, and the digests matched
        self.postcopy = None  # the report's Postcopy record
        self.events = []  # what the run warns about (emulator.events)
        self.source_digest = self.destination_digest = self.paused_memory_digest = None
        self.source_disk_digest = self.destination_disk_digest = self.paused_disk_digest = None
        self.setup_s = self.expected_downtime_s = self.decision = self.location = self.timeline = None
        self.policy_in_force = self.options.policy  # precopy set may change its downtime limit, and the cap
        self.parameter_changes = []
        self._changes = queue.SimpleQueue()  # from the control thread to this one
        # as many numbers as the bitmap has bits: its last word may reach past the last page
        self.harvest_buffer = np.empty(guest.dirty.size * bitmap.WORD_BITS, dtype=np.int64)
        self.incremental = self.options.verify == "incremental"
        self.running_digest = RunningDigest(guest.n_pages, guest.page_size) if self.incremental else None
        self.xbzrle = xbzrle.Cache(self.options.xbzrle_cache_bytes, guest.page_size) if self.options.xbzrle else None
        self.encoder = BatchEncoder(guest, self.codec, self.options.batch_pages, self.running_digest,
                                    xbzrle=self.xbzrle)
        # made now, not in the blackout: the vCPU/device state is opaque, its size is what matters
        self.device_state = np.random.default_rng(scenario.guest.seed).bytes(self.options.device_state_bytes)
        self.device_state_digest = hashlib.blake2b(self.device_state, digest_size=16).hexdigest()

    @property
    def live_postcopy(self):
        """The guest runs on the destination without all its pages: a failure loses it."""
        return (self.decision is not None and self.decision.action == "postcopy" and self.protocol.destination_resumed
                and not self.postcopy_complete)

    # the run -------------------------------------------------------------------
    def run(self):
        """Migrate; return the Report (status completed, failed or cancelled)."""
        self.timeline = _Timeline(self.clock, self.progress)
        failure = None
        try:
            self._setup()
            decision = self._precopy()
            if decision.action == "abort":
                raise MigrationError(f"pre-copy {decision.reason}: remaining dirty set did not shrink "
                                     f"for {self.options.policy.stall_passes} passes (on-stall abort)")
            if decision.action == "postcopy":
                self._postcopy()
            else:
                self._blackout()
                self._announce()
            self._confirm_source_memory()
        except KeyboardInterrupt:
            failure = Cancelled("cancelled by the user on the source")
        except MigrationError as error:
            failure = error
        finally:
            self.encoder.close()
            if self.mirror:
                self.mirror.encoder.close()
        status = "completed"
        if failure:
            status = "lost" if self.live_postcopy else failure.status
            self._abort(failure)
        self.timeline.end_current()
        return self._report(status, failure.reason if failure else None)

    def _abort(self, failure):
        """Tell the destination why (best effort, unless it knows) and keep the guest running here."""
        frames = None if failure.answered else self.protocol.abort(failure.reason, isinstance(failure, Cancelled))
        if frames is not None:
            try:
                self.link.send_control(frames)
            except MigrationError:
                pass
        moved = self.protocol.destination_resumed  # whatever came with it: the guest may run there now
        if self.paused and not moved:
            self._resume_writers()
            self.paused = False
        if self.progress and self.live_postcopy:
            self.progress.message(f"guest LOST: {failure.reason}; it ran on the destination without all its pages, "
                                  "and the source's copy stays paused")
        elif self.progress and moved:
            self.progress.message(f"migration failed: {failure.reason}; the destination said it resumed, so the "
                                  "source's copy stays paused")
        elif self.progress:
            self.progress.message(f"migration stopped: {failure.reason}; the guest keeps running on the source")

    # phase 1: setup ----------------------------------------------------------
    def _setup(self):
        self.timeline.begin("setup")
        self.link.send_control(self.protocol.hello(self.scenario.to_dict(), uuid.uuid4().hex))
        reply = self._recv_control()
        if reply.type == MsgType.REFUSE:
            raise Refused(reply.field("reason", str), by="destination")
        self.link.open_data(reply.field("data", list), self.options.batch_pages * self.guest.page_size)
        self.setup_s = self.timeline.now()

    # phase 2: pre-copy ---------------------------------------------------------
    def _precopy(self):
        self.timeline.begin("precopy")
        remaining_history = []
        sent_bytes = sent_s = 0.0
        pass_no = 0
        memory_fitted = False  # the memory left after the last pass fitted the budget: the disk held it up
        while True:
            started, cpu = self.clock(), CpuMeter()
            writes_before = self.workload.writes
            disk_writes_before = self._disk_writes()
            limited_before = self.workload.limited_s
            counter = self.unrecorded = _PassCounter()  # until a record holds it (a failure may come first)
            if self.mirror:
                harvested = self.mirror.harvest()
                blocks = np.arange(self.mirror.blocks.n_pages, dtype=np.int64) if pass_no == 0 else harvested
                self._send_pages(blocks, counter, self.mirror.encoder)
            harvested = self.guest.harvest(self.harvest_buffer)
            to_send = np.arange(self.guest.n_pages, dtype=np.int64) if pass_no == 0 else harvested
            self._send_pages(to_send, counter)
            self.link.send_control(self.protocol.pass_end(counter.pages, counter.blocks))
            ack = self._recv_control()
            duration_s = max(self.clock() - started, 1e-9)
            remaining = self.guest.dirty_count()
            disk_left = self.mirror.remaining_bytes() if self.mirror else 0
            disk_bytes = counter.blocks * self.mirror.block_size if self.mirror else 0
            sent_bytes += counter.pages * self.guest.page_size + disk_bytes
            sent_s += duration_s
            bandwidth = sent_bytes / sent_s  # guest bytes/s over all passes: what moves remaining pages and blocks
            remaining_history.append(remaining * self.guest.page_size + disk_left)
            self._apply_changes()
            decision = policy.decide(self.policy_in_force, remaining_history, bandwidth,
                                     self.timeline.now() - self.setup_s, self.scenario.guest_bytes)
            if self.options.postcopy:
                decision = policy.postcopy_now(decision, pass_no + 1, self.options.postcopy_after_passes) or decision
            record = PassRecord(
                pass_no=pass_no, pages_sent=counter.pages, bytes_sent=counter.pages * self.guest.page_size,
                wire_bytes=counter.wire_bytes, zero_pages=counter.zero_pages, duration_s=duration_s,
                bandwidth_bytes_per_s=(counter.wire_bytes + counter.disk_wire_bytes) / duration_s,
                remaining_pages=remaining, dirty_pages_rate=(self.workload.writes - writes_before) / duration_s,
                threshold_bytes=decision.threshold_bytes, downtime_limit_s=decision.downtime_limit_s,
                throttle_pct=self.workload.throttle_pct,
                dirty_limit_throttle_s=(self.workload.limited_s - limited_before) / self.scenario.workload.vcpus,
                source_cpu_s=cpu.lap(),
                destination_cpu_s=ack.field("cpu_s", (int, float)),
            )
            if self.mirror:
                self._record_disk(record, counter, disk_left, disk_writes_before, memory_fitted)
                memory_fitted = remaining * self.guest.page_size <= decision.threshold_bytes
            self.passes.append(record)
            self.unrecorded = None
            self.expected_downtime_s = policy.expected_downtime_s(remaining * self.guest.page_size, bandwidth)
            if self.progress:
                self.progress.pass_done(record, self.guest.page_size, self.guest.n_pages)
                if pass_no == 0:
                    self._say_if_cpu_bound(record)
                if decision.action == "postcopy":
                    why = f"after {format_count(pass_no + 1, 'pass')}" if decision.reason == "postcopy-after" else \
                        f"pre-copy {decision.reason}"
                    self.progress.message(f"{why}: switching to post-copy")
                elif decision.reason in ("stalled", "max-passes", "max-time"):
                    self.progress.message(f"pre-copy {decision.reason}: {decision.action}")
            if decision.action != "continue":
                self.decision = decision
                return decision
            if self.options.auto_converge:
                self._throttle(record)
            elif self.options.dirty_limit_bytes_per_s is not None:
                self._limit_if_needed(record)
            pass_no += 1

    def _disk_writes(self):
        return self.disk_writer.writes if self.disk_writer is not None else 0

    def _record_disk(self, record, counter, disk_left, writes_before, waiting):
        """The disk's part of a pass record; the block job's readiness and the time spent waiting for it."""
        mirror, block_size = self.mirror, self.mirror.block_size
        record.disk_blocks_sent, record.disk_zero_blocks = counter.blocks, counter.zero_blocks
        record.disk_bytes_sent, record.disk_wire_bytes = counter.blocks * block_size, counter.disk_wire_bytes
        record.disk_remaining_bytes = disk_left
        record.disk_writes_rate = (self._disk_writes() - writes_before) / record.duration_s
        record.disk_wait_s = record.duration_s if waiting else 0.0
        mirror.wait_s += record.disk_wait_s
        if mirror.ready_s is None and disk_left <= record.threshold_bytes:
            mirror.ready_s = self.timeline.now()
            if self.progress:
                self.progress.message(f"disk mirror ready after pass {record.pass_no}: its dirty blocks fit the "
                                      "downtime budget")

    def _say_if_cpu_bound(self, record):
        """Pass 0 well below the rate cap: this machine's CPU set the pace, not the capped link."""
        held_back = events.cpu_bound(record, self.limiter.rate_bytes_per_s)
        if held_back:
            self.progress.message(f"{held_back}: this machine's CPU, not the cap, set the pace")

    def _limit_if_needed(self, record):
        """Dirty-limit: from the first pass that dirtied more than it could afford, each vCPU is held to the limit."""
        if self.workload.dirty_limit_pages_per_s is not None or not policy.needs_slowing(
                record.remaining_pages * self.guest.page_size, record.bytes_sent):
            return
        limit = self.options.dirty_limit_bytes_per_s
        self.workload.set_dirty_limit(limit / self.guest.page_size)
        if self.progress:
            self.progress.message(f"dirty-limit: each vCPU held to {format_rate(limit)} of page writes")

    def _throttle(self, record):
        """Auto-converge: slow the vCPUs when a pass dirtied more than it could afford."""
        throttle = policy.next_throttle_pct(self.workload.throttle_pct, record.remaining_pages * self.guest.page_size,
                                            record.bytes_sent)
        if throttle != self.workload.throttle_pct:
            self.workload.set_throttle(throttle)
            if self.progress:
                self.progress.message(f"auto-converge: vCPUs throttled by {throttle}%")

    def _send_pages(self, page_numbers, counter, encoder=None):
        """Send `page_numbers` (of the disk's blocks with the mirror's encoder): zero pages as numbers only,
        the rest through the codec; return `counter`, where they are counted."""
        encoder = encoder or self.encoder
        disk = encoder is not self.encoder
        every_s = getattr(self.progress, "interval_s", 0)  # a progress without intervals, or with 0, has none
        sampler = _IntervalSampler(self, len(page_numbers), every_s) if every_s and not self.paused and not disk \
            else None
        for index, batch in enumerate(encoder.batches(page_numbers, resent=self.protocol.pass_no > 0)):
            if index % CONTROL_CHECK_BATCHES == 0:
                self._check_control()
            counter.count(batch, self._send_data(batch), disk)
            if sampler:
                sampler.sample(counter)
        self.limiter.settle()  # the pass lasts until a capped link would have carried its last byte
        return counter

    def _send_data(self, batch):
        """Send one batch; return its bytes on the wire."""
        self._apply_changes()
        channel, frames = self.protocol.data(batch)
        wire = sum(memoryview(frame).nbytes for frame in frames)
        self.limiter.consume(wire)
        if self.link_budget is not None:
            self.link_budget.consume(wire)
        try:
            self.link.send_data(channel, frames)
        except PeerTimeout:
            self._check_control()  # a destination that gave up says why before it stops reading
            raise
        return wire

    # status and live parameters (emulator.control) -------------------------------
    def status(self):
        """Where the migration is now, as `precopy status` shows it (called from the control thread)."""
        counter, passes = self.unrecorded, list(self.passes)
        last = passes[-1] if passes else None
        return {
            "phase": self.timeline.phases[-1].phase if self.timeline and self.timeline.phases else "starting",
            "elapsed_s": self.timeline.now() if self.timeline else 0.0, "pass": self.protocol.pass_no,
            "pass_pages_sent": counter.pages if counter else 0, "page_size": self.guest.page_size,
            "total_pages": self.guest.n_pages,
            "remaining_pages": self.backlog.unsent_pages() if self.live_postcopy else self.guest.dirty_count(),
            "transferred_bytes": sum(p.wire_bytes + p.disk_wire_bytes for p in passes)
            + (counter.wire_bytes + counter.disk_wire_bytes if counter else 0),
            "bandwidth_bytes_per_s": last.bandwidth_bytes_per_s if last else None,
            "dirty_pages_rate": last.dirty_pages_rate if last else None,
            "downtime_limit_s": self.policy_in_force.downtime_limit_s,
            "max_bandwidth_bytes_per_s": self.limiter.rate_bytes_per_s,
            "disk_remaining_bytes": self.mirror.remaining_bytes() if self.mirror else None,
            "disk_bytes": self.mirror.disk.spec.size_bytes if self.mirror else None,
        }

    def change(self, name, value):
        """Make `name` (emulator.control.SETTABLE, value checked) `value`, from the next data message on."""
        self._changes.put((name, value))

    def _apply_changes(self):
        while not self._changes.empty():
            name, value = self._changes.get()
            if name == "downtime_limit_s":
                self.policy_in_force = dataclasses.replace(self.policy_in_force, downtime_limit_s=value)
            else:
                self.limiter = make_limiter(value)
            self.parameter_changes.append(ParameterChange(self.timeline.now(), self.protocol.pass_no, name, value))
            if self.progress:
                self.progress.message(f"set {name} to {format_parameter(name, value)} in pass {self.protocol.pass_no}")

    # phases 3-5: blackout, handover, resume ---------------------------------------
    def _writers(self):
        """The guest's vCPUs and its disk writer: all pause in the blackout."""
        return [writer for writer in (self.workload, self.disk_writer) if writer is not None]

    def _pause_writers(self):
        for writer in self._writers():
            writer.pause()

    def _resume_writers(self):
        for writer in self._writers():
            writer.resume()

    def _blackout(self):
        pause_at = self.clock()
        self._pause_writers()
        self.paused = True
        self.timeline.begin("blackout")
        self.link.send_control(self.protocol.switchover(self.decision.reason))
        final = self.guest.harvest(self.harvest_buffer)
        final_blocks = self.mirror.harvest() if self.mirror else None
        if self.incremental:
            counter = self._send_final(final, final_blocks)
            self.source_digest = self.running_digest.value()
            self.source_disk_digest = self.mirror and self.mirror.running_digest.value()
        else:
            digest = {}

            def digests():
                digest.update(memory=self.guest.digest(), disk=self.mirror and self.mirror.blocks.digest())

            digester = threading.Thread(target=digests, name="source-digest")
            digester.start()  # hashes the paused memory (and disk) while the final pages travel
            counter = self._send_final(final, final_blocks)
            digester.join()
            self.source_digest, self.source_disk_digest = digest["memory"], digest["disk"]
        device_started = self.clock()
        self.link.send_control(self.protocol.device_state(self.device_state))
        device_state_s = self.clock() - device_started
        token = uuid.uuid4().hex
        self.link.send_control(self.protocol.complete(counter.pages, self.source_digest, self.device_state_digest,
                                                      token, counter.blocks, self.source_disk_digest))
        self.timeline.begin("handover")
        resumed = self._recv_control()
        resumed_at = self.clock()
        self.paused = False  # the guest runs on the destination now: whatever follows, it must not run here too
        self.destination_digest = resumed.field("digest", str)
        self.destination_disk_digest = resumed.body["disk_digest"]
        if resumed.field("storage_token", str) != token:
            raise protocol.RemoteProtocolError("body.storage_token", "the destination took another storage token")
        self.timeline.begin("resume")
        self.blackout = Blackout(
            total_s=resumed_at - pause_at, final_pages=counter.pages,
            final_bytes=counter.pages * self.guest.page_size, final_wire_bytes=counter.wire_bytes,
            final_zero_pages=counter.zero_pages, final_send_s=resumed.field("final_pages_s", (int, float)),
            device_state_bytes=len(self.device_state), device_state_s=device_state_s,
            digest_check_s=resumed.field("digest_check_s", (int, float)),
            resume_s=resumed.field("resume_s", (int, float)),
            final_disk_blocks=counter.blocks, final_disk_zero_blocks=counter.zero_blocks,
            final_disk_wire_bytes=counter.disk_wire_bytes,
            disk_sync_s=resumed.field("disk_sync_s", (int, float)),
        )
        if self.mirror:
            self.mirror.sync_s = self.blackout.disk_sync_s
        self.unrecorded = None  # the blackout record holds the final pass
        self._warn_if_long(self.blackout)
        if self.destination_digest != self.source_digest:
            raise Mismatch(f"the destination resumed with memory digest {self.destination_digest}, the "
                           f"source's is {self.source_digest}: its memory is not the guest's (the source's "
                           "copy stays paused, so the guest never runs twice)")
        if self.destination_disk_digest != self.source_disk_digest:
            raise Mismatch(f"the destination resumed with disk digest {self.destination_disk_digest}, the "
                           f"source's is {self.source_disk_digest}: its disk is not the guest's")

    def _postcopy(self):
        """Pause, send the device state and the missing pages' list; once the destination resumed, send each
        missing page once (module doc)."""
        pause_at = self.clock()
        self._pause_writers()
        self.paused = True
        self.timeline.begin("blackout")
        token = uuid.uuid4().hex
        self.link.send_control(self.protocol.postcopy(self.decision.reason, self.device_state_digest, token))
        missing = self.guest.harvest(self.harvest_buffer).copy()
        device_started = self.clock()
        self.link.send_control(self.protocol.device_state(self.device_state))
        device_state_s = self.clock() - device_started
        self.link.send_control(self.protocol.missing(missing))
        self.timeline.begin("handover")
        resumed = self._recv_control()
        resumed_at = self.clock()
        self.paused = False  # from now on only the destination runs the guest
        if resumed.field("storage_token", str) != token:
            raise protocol.RemoteProtocolError("body.storage_token", "the destination took another storage token")
        self.timeline.begin("resume")
        self.blackout = Blackout(
            total_s=resumed_at - pause_at, final_pages=0, final_bytes=0, final_wire_bytes=0, final_zero_pages=0,
            final_send_s=resumed.field("final_pages_s", (int, float)), device_state_bytes=len(self.device_state),
            device_state_s=device_state_s, digest_check_s=0.0, resume_s=resumed.field("resume_s", (int, float)))
        self._warn_if_long(self.blackout)
        if self.progress:
            self.progress.message(f"post-copy: the guest resumed on the destination with "
                                  f"{missing.size:,} pages missing")
        self._announce()
        self.timeline.begin("postcopy")
        self._push(missing, resumed_at)

    def _push(self, missing, resumed_at):
        """Send every missing page once, asked-for pages first; POSTCOPY_END; the destination's POSTCOPY_DONE."""
        self.backlog = postcopy.Backlog(missing)
        counter = self.unrecorded = _PassCounter()
        every_s = getattr(self.progress, "interval_s", 0)
        sampler = _IntervalSampler(self, missing.size, every_s) if every_s else None
        rate, batch_pages = self.limiter.rate_bytes_per_s, self.options.batch_pages
        push_pages = min(batch_pages, max(1, int(rate * POSTCOPY_PUSH_S) // self.guest.page_size)) if rate \
            else batch_pages
        while True:
            self._check_control()  # page requests join the backlog
            pages = self.backlog.next_requested()
            if not pages.size:
                pages = self.backlog.next_pushed(push_pages)
                if not pages.size:
                    break
            for batch in self.encoder.batches(pages):  # whole pages: XBZRLE's deltas are for pre-copy
                counter.count(batch, self._send_data(batch), False)
            if sampler:
                sampler.sample(counter)
        self.limiter.settle()
        self.source_digest = self.running_digest.value()
        self.link.send_control(self.protocol.postcopy_end(counter.pages, self.source_digest))
        done = self._recv_control()
        self.destination_digest = done.body["digest"]
        self.postcopy = self._postcopy_record(done, counter, missing.size, self.clock() - resumed_at)
        self.unrecorded = None
        if self.destination_digest != self.source_digest:
            raise Mismatch(f"after post-copy the destination's memory digest is {self.destination_digest}, the "
                           f"source's {self.source_digest}: the guest it runs is not this one")
        self.postcopy_complete = True
        if self.progress:
            self.progress.message(f"post-copy done: {self.postcopy.pages_requested:,} pages asked for, the vCPUs "
                                  f"waited {sum(self.postcopy.vcpu_blocktime_s):.3f} s in all")

    def _postcopy_record(self, done, counter, missing_pages, duration_s):
        blocktimes = done.body["vcpu_blocktime_s"]
        if len(blocktimes) != self.scenario.workload.vcpus or not all(
                type(b) in (int, float) and b >= 0 for b in blocktimes):
            raise protocol.RemoteProtocolError("body.vcpu_blocktime_s", f"expected {self.scenario.workload.vcpus} "
                                                                        f"times >= 0, got {blocktimes!r:.80}")
        return Postcopy(
            missing_pages=missing_pages, pages_requested=done.body["pages_requested"],
            requested_sent=self.backlog.requested_sent, pushed_pages=self.backlog.pushed,
            requests=self.backlog.requests, wire_bytes=counter.wire_bytes, zero_pages=counter.zero_pages,
            duration_s=duration_s, last_page_s=done.body["last_page_s"], blocktime_s=done.body["blocktime_s"],
            vcpu_blocktime_s=[float(b) for b in blocktimes], destination_cpu_s=done.body["cpu_s"])

    def _send_final(self, pages, blocks):
        """The mirrored disk's final dirty blocks, then the final dirty pages: the blackout's counter."""
        counter = self.unrecorded = _PassCounter()
        if self.mirror:
            self._send_pages(blocks, counter, self.mirror.encoder)
        return self._send_pages(pages, counter)

    def _warn_if_long(self, blackout):
        """A blackout past the warning threshold is an event, with its likely cause."""
        threshold = events.blackout_threshold_s(self.options.blackout_warning_s, self.policy_in_force.downtime_limit_s)
        if blackout.total_s <= threshold:
            return
        cause = events.likely_cause(self.passes, self.decision.reason, self.limiter.rate_bytes_per_s,
                                    blackout.final_wire_bytes, blackout.final_send_s)
        event = events.Event("long-blackout", self.timeline.now(), blackout.total_s, threshold, cause)
        self.events.append(event)
        if self.progress:
            self.progress.message(events.warning_text(event))

    def _confirm_source_memory(self):
        """Incremental check, after the fact: the paused memory must hash to what was sent."""
        if not self.incremental:
            return
        self.paused_memory_digest = self.guest.digest()
        if self.paused_memory_digest != self.source_digest:
            raise Mismatch(
                f"the source memory at pause ({self.paused_memory_digest}) differs from the pages sent "
                f"({self.source_digest}): a write escaped the dirty tracking")
        if self.mirror:
            self.paused_disk_digest = self.mirror.blocks.digest()
            if self.paused_disk_digest != self.source_disk_digest:
                raise Mismatch(f"the source disk at pause ({self.paused_disk_digest}) differs from the blocks sent "
                               f"({self.source_disk_digest}): a write escaped the dirty-block tracking")

    # phase 6: announce ----------------------------------------------------------
    def _announce(self):
        self.timeline.begin("announce")
        announce = self._recv_control()
        self.location = announce.field("location", str)
        if self.progress:
            self.progress.message(f"guest running on the destination: {self.location}")

    # messages ------------------------------------------------------------------
    def _check_control(self):
        """Mid-pass: act on an ABORT the destination may have sent (only heartbeats are due otherwise)."""
        while self.link.control_pending():
            self._receive_one()

    def _recv_control(self):
        """The next control message that is not a heartbeat (or a page request), checked by the protocol engine."""
        while True:
            message = self._receive_one()
            if message.type not in (MsgType.HEARTBEAT, MsgType.PAGE_REQUEST):
                return message

    def _receive_one(self):
        message = self.protocol.receive(self.link.recv_control())
        if message.type == MsgType.ABORT:
            reason, cancelled = aborted(message)
            raise PeerAborted(reason, "destination", cancelled)
        if message.type == MsgType.PAGE_REQUEST:
            self.backlog.request(message.page_numbers)
        return message

    # the report --------------------------------------------------------------------
    def _report(self, status, reason):
        total_s = self.timeline.now()
        setup_s = total_s if self.setup_s is None else self.setup_s
        matched = None if self.destination_digest is None else self.source_digest == self.destination_digest
        if self.paused_memory_digest not in (None, self.source_digest):
            matched = False
        if matched is not None and self.mirror and (self.destination_disk_digest != self.source_disk_digest or
                                                    self.paused_disk_digest not in (None, self.source_disk_digest)):
            matched = False  # the memory's digests matched, the disk's did not
        summary = summarize(
            self.passes, self.blackout, status=status, page_size=self.guest.page_size,
            total_pages=self.guest.n_pages, setup_s=setup_s, total_s=total_s,
            expected_downtime_s=self.expected_downtime_s,
            unrecorded_wire_bytes=self.unrecorded.wire_bytes if self.unrecorded else 0,
            unrecorded_disk_wire_bytes=self.unrecorded.disk_wire_bytes if self.unrecorded else 0,
            disk=self.mirror and self.mirror.disk.spec, xbzrle_cache=self._xbzrle_stats(), postcopy=self.postcopy,
        )
        decision = self.decision
        return Report(
            status=status, reason=reason, scenario=self.scenario, host=host_info(), location=self.location,
            passes=self.passes, phases=self.timeline.phases, blackout=self.blackout,
            switchover_reason=decision.reason if decision else None, digests_match=matched,
            source_digest=self.source_digest, destination_digest=self.destination_digest, summary=summary,
            parameter_changes=self.parameter_changes, events=self.events, block_job=self._block_job(status),
            postcopy=self.postcopy,
        )

    def _xbzrle_stats(self):
        """The XBZRLE cache as QEMU's query-migrate "xbzrle-cache" shows it (None without XBZRLE)."""
        cache = self.xbzrle
        if cache is None:
            return None
        return {"cache-size": cache.slots * cache.page_size, "bytes": cache.delta_bytes, "pages": cache.delta_pages,
                "cache-miss": cache.misses, "cache-miss-rate": cache.misses / cache.looked_up if cache.looked_up else 0.0,
                "encoding-rate": cache.delta_pages * cache.page_size / cache.delta_bytes if cache.delta_bytes else 0.0,
                "overflow": cache.overflows}

    def _block_job(self, status):
        """The disk mirror as QEMU's query-block-jobs shows one (None without a mirror)."""
        mirror = self.mirror
        if mirror is None:
            return None
        unrecorded = self.unrecorded.blocks if self.unrecorded else 0
        final = self.blackout.final_disk_blocks if self.blackout else 0
        offset = (sum(p.disk_blocks_sent for p in self.passes) + unrecorded + final) * mirror.block_size
        left = 0 if status == "completed" else mirror.remaining_bytes() if self.passes else mirror.disk.spec.size_bytes
        return BlockJob(device=mirror.disk.spec.name, len=offset + left, offset=offset,
                        ready=mirror.ready_s is not None, ready_s=mirror.ready_s, wait_s=mirror.wait_s,
                        sync_s=mirror.sync_s, speed=self.limiter.rate_bytes_per_s or 0)
