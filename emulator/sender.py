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
"""

import dataclasses
import hashlib
import queue
import threading
import time
import uuid

import numpy as np

from emulator import events, policy, protocol
from emulator.batches import BatchEncoder
from emulator.codecs import codec_from_name
from emulator.digest import RunningDigest
from emulator.errors import Cancelled, MigrationError, Mismatch, PeerAborted, PeerTimeout, Refused
from emulator.protocol import MsgType
from emulator.protocol_engines import SourceProtocol, aborted
from emulator.ratelimit import make_limiter
from emulator.report import (Blackout, Interval, ParameterChange, PassRecord, Phase, Report, format_parameter,
                             host_info, summarize)
from kernels import bitmap

CONTROL_CHECK_BATCHES = 16  # look for an ABORT from the destination every this many messages


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
    """What one pass (or the blackout) put on the wire."""

    def __init__(self):
        self.pages = 0
        self.zero_pages = 0
        self.wire_bytes = 0


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
            firm=not source.scenario.workload.rate_pages_per_s,
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
    """

    def __init__(self, scenario, guest, workload, link, *, progress=None, link_budget=None, clock=time.monotonic):
        self.scenario = scenario
        self.options = scenario.migration
        self.guest, self.workload, self.link = guest, workload, link
        self.progress, self.clock = progress, clock
        self.codec = codec_from_name(self.options.codec)
        self.limiter = make_limiter(self.options.max_bandwidth_bytes_per_s)
        self.link_budget = link_budget
        self.protocol = SourceProtocol(self.options.channels, guest.page_size)
        self.passes = []
        self.unrecorded = None  # the _PassCounter of a pass (or blackout) still being sent
        self.paused = False
        self.blackout = None
        self.events = []  # what the run warns about (emulator.events)
        self.source_digest = self.destination_digest = self.paused_memory_digest = None
        self.setup_s = self.expected_downtime_s = self.decision = self.location = self.timeline = None
        self.policy_in_force = self.options.policy  # precopy set may change its downtime limit, and the cap
        self.parameter_changes = []
        self._changes = queue.SimpleQueue()  # from the control thread to this one
        # as many numbers as the bitmap has bits: its last word may reach past the last page
        self.harvest_buffer = np.empty(guest.dirty.size * bitmap.WORD_BITS, dtype=np.int64)
        self.incremental = self.options.verify == "incremental"
        self.running_digest = RunningDigest(guest.n_pages, guest.page_size) if self.incremental else None
        self.encoder = BatchEncoder(guest, self.codec, self.options.batch_pages, self.running_digest)
        # made now, not in the blackout: the vCPU/device state is opaque, its size is what matters
        self.device_state = np.random.default_rng(scenario.guest.seed).bytes(self.options.device_state_bytes)
        self.device_state_digest = hashlib.blake2b(self.device_state, digest_size=16).hexdigest()

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
            self._blackout()
            self._announce()
            self._confirm_source_memory()
        except KeyboardInterrupt:
            failure = Cancelled("cancelled by the user on the source")
        except MigrationError as error:
            failure = error
        finally:
            self.encoder.close()
        if failure:
            self._abort(failure)
        self.timeline.end_current()
        return self._report(failure.status if failure else "completed", failure.reason if failure else None)

    def _abort(self, failure):
        """Tell the destination why (best effort, unless it knows) and keep the guest running here."""
        frames = None if failure.answered else self.protocol.abort(failure.reason, isinstance(failure, Cancelled))
        if frames is not None:
            try:
                self.link.send_control(frames)
            except MigrationError:
                pass
        if self.paused:
            self.workload.resume()
            self.paused = False
        if self.progress:
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
        while True:
            started, cpu_started = self.clock(), time.process_time()
            writes_before = self.workload.writes
            harvested = self.guest.harvest(self.harvest_buffer)
            to_send = np.arange(self.guest.n_pages, dtype=np.int64) if pass_no == 0 else harvested
            counter = self._send_pages(to_send)
            self.link.send_control(self.protocol.pass_end(counter.pages))
            ack = self._recv_control()
            duration_s = max(self.clock() - started, 1e-9)
            remaining = self.guest.dirty_count()
            sent_bytes += counter.pages * self.guest.page_size
            sent_s += duration_s
            bandwidth = sent_bytes / sent_s  # guest bytes/s over all passes: what moves remaining pages
            remaining_history.append(remaining * self.guest.page_size)
            self._apply_changes()
            decision = policy.decide(self.policy_in_force, remaining_history, bandwidth,
                                     self.timeline.now() - self.setup_s)
            record = PassRecord(
                pass_no=pass_no, pages_sent=counter.pages, bytes_sent=counter.pages * self.guest.page_size,
                wire_bytes=counter.wire_bytes, zero_pages=counter.zero_pages, duration_s=duration_s,
                bandwidth_bytes_per_s=counter.wire_bytes / duration_s, remaining_pages=remaining,
                dirty_pages_rate=(self.workload.writes - writes_before) / duration_s,
                threshold_bytes=decision.threshold_bytes, throttle_pct=self.workload.throttle_pct,
                source_cpu_s=time.process_time() - cpu_started,
                destination_cpu_s=ack.field("cpu_s", (int, float)),
            )
            self.passes.append(record)
            self.unrecorded = None
            self.expected_downtime_s = policy.expected_downtime_s(remaining * self.guest.page_size, bandwidth)
            if self.progress:
                self.progress.pass_done(record, self.guest.page_size, self.guest.n_pages)
                if pass_no == 0:
                    self._say_if_cpu_bound(record)
                if decision.reason in ("stalled", "max-passes", "max-time"):
                    self.progress.message(f"pre-copy {decision.reason}: {decision.action}")
            if decision.action != "continue":
                self.decision = decision
                return decision
            if self.options.auto_converge:
                self._throttle(record)
            pass_no += 1

    def _say_if_cpu_bound(self, record):
        """Pass 0 well below the rate cap: this machine's CPU set the pace, not the capped link."""
        held_back = events.cpu_bound(record, self.limiter.rate_bytes_per_s)
        if held_back:
            self.progress.message(f"{held_back}: this machine's CPU, not the cap, set the pace")

    def _throttle(self, record):
        """Auto-converge: slow the vCPUs when a pass dirtied more than it could afford."""
        throttle = policy.next_throttle_pct(self.workload.throttle_pct, record.remaining_pages * self.guest.page_size,
                                            record.bytes_sent)
        if throttle != self.workload.throttle_pct:
            self.workload.set_throttle(throttle)
            if self.progress:
                self.progress.message(f"auto-converge: vCPUs throttled to {throttle}%")

    def _send_pages(self, page_numbers):
        """Send `page_numbers`: zero pages as numbers only, the rest through the codec."""
        counter = self.unrecorded = _PassCounter()  # until a record holds it (a failure may come first)
        every_s = getattr(self.progress, "interval_s", 0)  # a progress without intervals, or with 0, has none
        sampler = _IntervalSampler(self, len(page_numbers), every_s) if every_s and not self.paused else None
        for index, batch in enumerate(self.encoder.batches(page_numbers)):
            if index % CONTROL_CHECK_BATCHES == 0:
                self._check_control()
            if batch.kind == MsgType.ZERO_PAGES:
                counter.zero_pages += batch.pages
            self._send_data(batch, counter)
            counter.pages += batch.pages
            if sampler:
                sampler.sample(counter)
        self.limiter.settle()  # the pass lasts until a capped link would have carried its last byte
        return counter

    def _send_data(self, batch, counter):
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
        counter.wire_bytes += wire

    # status and live parameters (emulator.control) -------------------------------
    def status(self):
        """Where the migration is now, as `precopy status` shows it (called from the control thread)."""
        counter, passes = self.unrecorded, list(self.passes)
        last = passes[-1] if passes else None
        return {
            "phase": self.timeline.phases[-1].phase if self.timeline and self.timeline.phases else "starting",
            "elapsed_s": self.timeline.now() if self.timeline else 0.0, "pass": self.protocol.pass_no,
            "pass_pages_sent": counter.pages if counter else 0, "page_size": self.guest.page_size,
            "total_pages": self.guest.n_pages, "remaining_pages": self.guest.dirty_count(),
            "transferred_bytes": sum(p.wire_bytes for p in passes) + (counter.wire_bytes if counter else 0),
            "bandwidth_bytes_per_s": last.bandwidth_bytes_per_s if last else None,
            "dirty_pages_rate": last.dirty_pages_rate if last else None,
            "downtime_limit_s": self.policy_in_force.downtime_limit_s,
            "max_bandwidth_bytes_per_s": self.limiter.rate_bytes_per_s,
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
    def _blackout(self):
        pause_at = self.clock()
        self.workload.pause()
        self.paused = True
        self.timeline.begin("blackout")
        self.link.send_control(self.protocol.switchover(self.decision.reason))
        final = self.guest.harvest(self.harvest_buffer)
        if self.incremental:
            counter = self._send_pages(final)
            self.source_digest = self.running_digest.value()
        else:
            digest = {}
            digester = threading.Thread(target=lambda: digest.update(value=self.guest.digest()), name="source-digest")
            digester.start()  # hashes the paused memory while the final pages travel
            counter = self._send_pages(final)
            digester.join()
            self.source_digest = digest["value"]
        device_started = self.clock()
        self.link.send_control(self.protocol.device_state(self.device_state))
        device_state_s = self.clock() - device_started
        token = uuid.uuid4().hex
        self.link.send_control(self.protocol.complete(counter.pages, self.source_digest, self.device_state_digest, token))
        self.timeline.begin("handover")
        resumed = self._recv_control()
        resumed_at = self.clock()
        self.paused = False  # the guest runs on the destination now: whatever follows, it must not run here too
        self.destination_digest = resumed.field("digest", str)
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
        )
        self.unrecorded = None  # the blackout record holds the final pass
        self._warn_if_long(self.blackout)
        if self.destination_digest != self.source_digest:
            raise Mismatch(f"the destination resumed with memory digest {self.destination_digest}, the "
                           f"source's is {self.source_digest}: its memory is not the guest's (the source's "
                           "copy stays paused, so the guest never runs twice)")

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
        """The next control message that is not a heartbeat, checked by the protocol engine."""
        while True:
            message = self._receive_one()
            if message.type != MsgType.HEARTBEAT:
                return message

    def _receive_one(self):
        message = self.protocol.receive(self.link.recv_control())
        if message.type == MsgType.ABORT:
            reason, cancelled = aborted(message)
            raise PeerAborted(reason, "destination", cancelled)
        return message

    # the report --------------------------------------------------------------------
    def _report(self, status, reason):
        total_s = self.timeline.now()
        setup_s = total_s if self.setup_s is None else self.setup_s
        matched = None if self.destination_digest is None else self.source_digest == self.destination_digest
        if self.paused_memory_digest not in (None, self.source_digest):
            matched = False
        summary = summarize(
            self.passes, self.blackout, status=status, page_size=self.guest.page_size,
            total_pages=self.guest.n_pages, setup_s=setup_s, total_s=total_s,
            expected_downtime_s=self.expected_downtime_s,
            unrecorded_wire_bytes=self.unrecorded.wire_bytes if self.unrecorded else 0,
        )
        decision = self.decision
        return Report(
            status=status, reason=reason, scenario=self.scenario, host=host_info(), location=self.location,
            passes=self.passes, phases=self.timeline.phases, blackout=self.blackout,
            switchover_reason=decision.reason if decision else None, digests_match=matched,
            source_digest=self.source_digest, destination_digest=self.destination_digest, summary=summary,
            parameter_changes=self.parameter_changes, events=self.events,
        )
