"""The source: migrates a running guest through the six phases and reports what happened.

A Source is the run's context: the scenario, the link and its protocol engine, the
streams it moves (emulator.source.streams: the guest's memory, and a mirrored disk's blocks),
the rate caps, the Recorder that builds the report (emulator.source.recorder), and the
guest's writers. Setup and announce are its own; pre-copy, stop-and-copy and post-copy
are phases over it (emulator.source.phases). It sends each stream's units in batches (zero
ones as numbers only), looking at the control socket every CONTROL_CHECK_S while it
sends, so a destination that stops (its ABORT, or its connection closing) is known
within a fraction of a second, even while its data channels are full; and it answers `precopy
status` and `set` from another thread (emulator.running.control).

The memory check: with verify "incremental" the digests are the running digests of
every unit as sent, and after the destination resumed the source re-hashes its paused
memory (and disk): equal to what it sent proves no write escaped the dirty tracking.
Any failure before the handover (COMPLETE, or post-copy's MISSING, sent) resumes the
source's writers: the guest keeps running here, unharmed. From the handover on the
destination may resume the guest at any moment, so the source never resumes it again: a
failure then (no RESUMED within the timeout) leaves its copy paused, never running in two
places, and a Ctrl-C is too late to cancel. After a post-copy resume until POSTCOPY_DONE
neither side has the whole guest: a failure loses it (status "lost").
"""

import dataclasses
import hashlib
import queue
import time
import uuid

import numpy as np

from emulator.analysis.report import ParameterChange
from emulator.analysis.text import format_parameter
from emulator.core.errors import Cancelled, MigrationError, Mismatch, PeerAborted, PeerTimeout, Refused
from emulator.dataplane.codecs import codec_from_name
from emulator.source.phases import IntervalSampler, PostcopyPhase, Precopy, StopAndCopy
from emulator.source.progress import watching
from emulator.source.ratelimit import make_limiter
from emulator.source.recorder import Recorder
from emulator.source.streams import DiskStream, Stream
from emulator.wire.protocol import MsgType
from emulator.wire.protocol_engines import SourceProtocol, aborted
from kernels import bitmap, xbzrle

CONTROL_CHECK_S = 0.1  # while it sends, the source looks for an ABORT (or a closed connection) this often


class Source:
    """Migrates `guest` (running `workload`) over `link` according to `scenario`.

    progress: an emulator.source.progress.Progress (or an object with some of its methods), or None.
    link_budget: a limiter (emulator.source.ratelimit) other migrations draw from too, as a
    drain's migrations share one cap on the link; each data message takes from it
    after this migration's own cap.
    disk, disk_writer: the guest's DiskImage (emulator.vm.disk) and its running writer, if it has a
    disk; storage mirror copies it, and both writers pause in the blackout.
    """

    def __init__(self, scenario, guest, workload, link, *, progress=None, link_budget=None, disk=None,
                 disk_writer=None, clock=time.monotonic):
        if (disk is None) != (scenario.disk is None):
            raise ValueError("a guest with a disk in its scenario needs its DiskImage, and only then")
        self.scenario, self.options = scenario, scenario.migration
        self.guest, self.workload, self.link = guest, workload, link
        self.progress, self.clock = watching(progress), clock
        codec, incremental = codec_from_name(self.options.codec), self.options.verify == "incremental"
        self.limiter = make_limiter(self.options.max_bandwidth_bytes_per_s)
        self.link_budget = link_budget
        self.disk_writer = disk_writer
        self.xbzrle = xbzrle.Cache(self.options.xbzrle_cache_bytes, guest.page_size) if self.options.xbzrle else None
        self.memory = Stream(guest, workload, codec, self.options.batch_pages, incremental, self.xbzrle)
        mirrored = scenario.mirrored_disk
        self.disk = DiskStream(disk, disk_writer, codec, scenario.disk_batch_blocks, incremental) if mirrored \
            else None
        self.streams = [stream for stream in (self.disk, self.memory) if stream is not None]  # the disk first
        self.protocol = SourceProtocol(self.options.channels, guest.page_size, mirrored and mirrored.block_size,
                                       guest.n_pages, preempt=self.options.postcopy_preempt)
        self.record = None  # the run's Recorder, once it runs
        self.paused = False
        self.handed_over = False  # COMPLETE (or MISSING) sent: the destination may resume the guest from then on
        self.decision = self.setup_s = self.expected_downtime_s = self.location = self.session_id = None
        self.backlog = None  # post-copy's missing pages (emulator.vm.postcopy.Backlog), once the guest moved
        self.postcopy_complete = False  # every missing page arrived, and the digests matched
        self.policy_in_force = self.options.policy  # precopy set may change its downtime limit, and the cap
        self._control_checked_at = 0.0  # when the control socket was last looked at mid-pass
        link.while_full = self.check_control  # a full data channel: a destination that stopped says so
        self._changes = queue.SimpleQueue()  # from the control thread to this one
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
        """Migrate; return the Report (status completed, failed, cancelled or lost)."""
        self.record = Recorder(self.clock, self.progress)
        self.progress.migrating(self.guest)
        failure = None
        try:
            self._setup()
            decision = Precopy(self).run()
            if decision.action == "abort":
                raise MigrationError(f"pre-copy {decision.reason}: remaining dirty set did not shrink "
                                     f"for {self.options.policy.stall_passes} passes (on-stall abort)")
            if decision.action == "postcopy":
                PostcopyPhase(self).run()
            else:
                StopAndCopy(self).run()
                self.announce()
            self._confirm_source_copy()
        except KeyboardInterrupt:
            if self.protocol.destination_resumed and not self.live_postcopy:  # the guest moved, verified: too late
                self.progress.message("too late to cancel: the guest runs on the destination")
            else:
                failure = Cancelled("cancelled by the user on the source")
        except MigrationError as error:
            failure = error
        finally:
            for stream in self.streams:
                stream.close()
        status = "completed"
        if failure:
            status = "lost" if self.live_postcopy else failure.status
            self._abort(failure)
        return self.record.report(
            status, failure.reason if failure else None, scenario=self.scenario, memory=self.memory, disk=self.disk,
            setup_s=self.setup_s, expected_downtime_s=self.expected_downtime_s, decision=self.decision,
            location=self.location, xbzrle_cache=self.xbzrle and xbzrle_figures(self.xbzrle),
            rate_bytes_per_s=self.limiter.rate_bytes_per_s)

    def _abort(self, failure):
        """Tell the destination why (best effort, unless it knows) and keep the guest running here."""
        frames = None if failure.answered else self.protocol.abort(failure.reason, isinstance(failure, Cancelled))
        if frames is not None:
            try:
                self.link.send_control(frames)
            except MigrationError:
                pass
        moved = self.protocol.destination_resumed  # whatever came with it: the guest may run there now
        if self.paused and not self.handed_over:
            self._resume_writers()
            self.paused = False
        if self.live_postcopy:
            self.progress.message(f"guest LOST: {failure.reason}; it ran on the destination without all its pages, "
                                  "and the source's copy stays paused")
        elif moved:
            self.progress.message(f"migration failed: {failure.reason}; the destination said it resumed, so the "
                                  "source's copy stays paused")
        elif self.handed_over:
            self.progress.message(f"migration failed: {failure.reason}; the destination had all it needed to resume "
                                  "the guest and may run it, so the source's copy stays paused: resume it here only "
                                  "if the destination's outcome says it did not")
        else:
            self.progress.message(f"migration stopped: {failure.reason}; the guest keeps running on the source")

    # phase 1: setup ----------------------------------------------------------
    def _setup(self):
        self.record.timeline.begin("setup")
        self.session_id = uuid.uuid4().hex
        self.link.send_control(self.protocol.hello(self.scenario.to_dict(), self.session_id))
        reply = self.recv_control()
        if reply.type == MsgType.REFUSE:
            raise Refused(reply.field("reason", str), by="destination")
        self.link.open_data(reply.field("data", list), self.options.batch_pages * self.guest.page_size)
        self.setup_s = self.record.timeline.now()

    # phase 2: pre-copy ---------------------------------------------------------
    def send_units(self, numbers, counter, stream, resent=None):
        """Send `numbers` of `stream` (zero ones as numbers only, the rest through its codec), counted in
        `counter`. resent: may go as XBZRLE deltas (default: in any pass after the first)."""
        every_s = self.progress.interval_s
        sampler = IntervalSampler(self, len(numbers), every_s) if every_s and not self.paused and not stream.disk \
            else None
        resent = self.protocol.pass_no > 0 if resent is None else resent
        if not stream.disk:
            self.progress.sending(numbers, counter)
        for batch in stream.encoder.batches(numbers, resent):
            counter.count(batch, self.send_data(batch), stream)
            if sampler:
                sampler.sample(counter)
        self.limiter.settle()  # the pass lasts until a capped link would have carried its last byte

    def send_data(self, batch, preempt=False):
        """Send one batch (preempt: on the preempt channel); return its bytes on the wire. The control socket is
        looked at every CONTROL_CHECK_S meanwhile, even while the channel is full (module doc)."""
        self.apply_changes()
        channel, frames = self.protocol.data(batch, preempt)
        wire = sum(memoryview(frame).nbytes for frame in frames)
        self.limiter.consume(wire)
        if self.link_budget is not None:
            self.link_budget.consume(wire)
        if self.clock() >= self._control_checked_at + CONTROL_CHECK_S:
            self.check_control()
        try:
            self.link.send_data(channel, frames)
        except PeerTimeout:
            self.check_control()  # a destination that gave up says why before it stops reading
            raise
        return wire

    # status and live parameters (emulator.running.control) -------------------------------
    def status(self):
        """Where the migration is now, as `precopy status` shows it (called from the control thread)."""
        record = self.record
        counter, passes = (record.unrecorded, list(record.passes)) if record else (None, [])
        last = passes[-1] if passes else None
        phases = record.timeline.phases if record else []
        return {
            "phase": phases[-1].phase if phases else "starting",
            "elapsed_s": record.timeline.now() if record else 0.0, "pass": self.protocol.pass_no,
            "pass_pages_sent": counter.memory.units if counter else 0, "page_size": self.guest.page_size,
            "total_pages": self.guest.n_pages,
            "remaining_pages": self._remaining_pages(counter),
            "transferred_bytes": sum(p.total_wire_bytes for p in passes) + (counter.wire_bytes if counter else 0),
            "bandwidth_bytes_per_s": last.bandwidth_bytes_per_s if last else None,
            "dirty_pages_rate": last.dirty_pages_rate if last else None,
            "downtime_limit_s": self.policy_in_force.downtime_limit_s,
            "max_bandwidth_bytes_per_s": self.limiter.rate_bytes_per_s,
            "disk_remaining_bytes": self.disk.remaining_bytes() if self.disk else None,
            "disk_bytes": self.disk.image.spec.size_bytes if self.disk else None,
        }

    def _remaining_pages(self, counter):
        """Pages left to send: in post-copy the backlog's; in pass 0 those not sent yet (it sends in ascending
        order) and those dirtied again among the sent; later, the dirty ones."""
        if self.live_postcopy:
            return self.backlog.unsent_pages()
        if counter is None or self.paused or self.record.passes:  # not in pass 0
            return self.guest.dirty_count()
        sent = min(counter.memory.units, self.guest.n_pages)
        return self.guest.n_pages - sent + bitmap.count_dirty(self.guest.dirty[: sent // bitmap.WORD_BITS])

    def change(self, name, value):
        """Make `name` (emulator.running.control.SETTABLE, value checked) `value`, from the next data message on."""
        self._changes.put((name, value))

    def apply_changes(self):
        while not self._changes.empty():
            name, value = self._changes.get()
            if name == "downtime_limit_s":
                self.policy_in_force = dataclasses.replace(self.policy_in_force, downtime_limit_s=value)
            else:
                self.limiter = make_limiter(value)
            self.record.parameter_changes.append(ParameterChange(self.record.timeline.now(), self.protocol.pass_no,
                                                                 name, value))
            self.progress.message(f"set {name} to {format_parameter(name, value)} in pass {self.protocol.pass_no}")

    # phases 3-5: the switch-over (blackout, handover, resume) ---------------------------
    def pause_writers(self):
        for stream in self.streams:
            if stream.writer is not None:
                stream.writer.pause()

    def _resume_writers(self):
        for stream in self.streams:
            if stream.writer is not None:
                stream.writer.resume()

    def warn_if_long(self, blackout):
        self.record.warn_if_long(blackout, self.options.blackout_warning_s, self.policy_in_force.downtime_limit_s,
                                 self.decision.reason, self.limiter.rate_bytes_per_s)

    def _confirm_source_copy(self):
        """Incremental check, after the fact: the paused memory (and disk) must hash to what was sent."""
        if self.memory.running_digest is None:
            return
        for stream, what, tracking in ((self.memory, "memory", "dirty tracking"),
                                       (self.disk, "disk", "dirty-block tracking")):
            if stream is None:
                continue
            stream.paused_digest = stream.memory.digest()
            if stream.paused_digest != stream.sent_digest:
                sent = "pages" if what == "memory" else "blocks"
                raise Mismatch(f"the source {what} at pause ({stream.paused_digest}) differs from the {sent} sent "
                               f"({stream.sent_digest}): a write escaped the {tracking}")

    # phase 6: announce ----------------------------------------------------------
    def announce(self):
        self.record.timeline.begin("announce")
        announce = self.recv_past_interrupts()
        self.location = announce.field("location", str)
        self.progress.message(f"guest running on the destination: {self.location}")

    # messages ------------------------------------------------------------------
    def check_control(self):
        """Mid-pass: act on an ABORT the destination may have sent (only heartbeats are due otherwise)."""
        self._control_checked_at = self.clock()
        while self.link.control_pending():
            self._receive_one()

    def recv_past_interrupts(self):
        """recv_control once the guest is handed over: a Ctrl-C then is too late to cancel (the destination may
        run the guest already), so it is said and the answer still awaited (within the timeout, as always)."""
        while True:
            try:
                return self.recv_control()
            except KeyboardInterrupt:
                self.progress.message("too late to cancel: the destination has what it needs to resume the guest; "
                                      "waiting for its answer")

    def recv_control(self):
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


def xbzrle_figures(cache):
    """An XBZRLE cache as QEMU's query-migrate "xbzrle-cache" shows it."""
    return {"cache-size": cache.slots * cache.page_size, "bytes": cache.delta_bytes, "pages": cache.delta_pages,
            "cache-miss": cache.misses, "cache-miss-rate": cache.misses / cache.looked_up if cache.looked_up else 0.0,
            "encoding-rate": cache.delta_pages * cache.page_size / cache.delta_bytes if cache.delta_bytes else 0.0,
            "overflow": cache.overflows}
