"""The phases of a source's run, over one run context (the Source): pre-copy, stop-and-copy, post-copy.

Pre-copy: pass 0 sends every unit of every stream; pass k sends those harvested from
the dirty bitmaps, i.e. dirtied since the previous harvest. Each pass ends with
PASS_END and waits for the destination's PASS_END: all of the pass is then applied on
the destination, so a page resent in the next pass can never be overtaken by its older
copy on another channel (QEMU's multifd syncs each iteration for the same reason), and
the pass duration includes the transfer, not only the queueing. The policy decides after
each pass.

Stop-and-copy and post-copy both switch over (`switch_over`, written once): pause the
writers, open the switch, send what must go before the device state, the device state,
then close it, and wait for the destination to resume. Stop-and-copy sends the last
dirty blocks and pages and closes with COMPLETE and the digests; post-copy sends
nothing but the list of missing pages (MISSING), then every missing page once, those
its vCPUs ask for (PAGE_REQUEST) before the next push, the rest in ascending order. On a
capped link a push message is what the cap carries in POSTCOPY_PUSH_S, so a request
waits behind little; uncapped, a message is a full batch (smaller ones cost more per
byte than the wait they save).
"""

import math
import threading
import time
import uuid

import numpy as np

from emulator.analysis import events
from emulator.analysis.report import Blackout, DiskFinal, DiskPass, Interval, PassRecord, Postcopy
from emulator.core.errors import Mismatch, NothingListens, PeerAborted, PeerTimeout
from emulator.core.units import format_count, format_rate
from emulator.dataplane.threads import CpuMeter
from emulator.source import policy
from emulator.source.streams import PassCount
from emulator.vm import postcopy
from emulator.wire import protocol
from emulator.wire.protocol_engines import aborted

POSTCOPY_PUSH_S = 0.002  # a post-copy push message on a capped link: what it carries in this time
RECONNECT_EVERY_S = 0.5  # a post-copy source whose link broke tries to connect again this often
MIN_ATTEMPT_S = 0.5  # and gives each try at least this long to be answered
MISSING_BYTES_PER_PAGE = np.dtype(protocol.PAGE_NUMBER_DTYPE).itemsize


def switch_over(source, opening, send_before_device_state, closing):
    """The switch-over of `source` (the run's context), written once: pause the writers, send the frames
    opening(token) returns (SWITCHOVER or POSTCOPY), call send_before_device_state() (a PassCount of what
    it sent), send the device state, then the frames closing(count, token) returns; wait for RESUMED
    with the storage token. Returns (count, RESUMED, seconds paused, when resumed, seconds the device
    state took)."""
    pause_at = source.clock()
    source.pause_writers()
    source.paused = True
    source.record.timeline.begin("blackout")
    token = uuid.uuid4().hex
    source.link.send_control(opening(token))
    count = send_before_device_state()
    device_started = source.clock()
    source.link.send_control(source.protocol.device_state(source.device_state))
    device_state_s = source.clock() - device_started
    # from here the destination may have what it needs to resume the guest: it never runs here again (set
    # before the send, so that a Ctrl-C landing as COMPLETE leaves cannot resume it here too)
    source.handed_over = True
    source.link.send_control(closing(count, token))
    source.record.timeline.begin("handover")
    resumed = source.recv_past_interrupts()
    resumed_at = source.clock()
    source.paused = False  # the guest runs on the destination now: whatever follows, it must not run here too
    if resumed.field("storage_token", str) != token:
        raise protocol.RemoteProtocolError("body.storage_token", "the destination took another storage token")
    source.record.timeline.begin("resume")
    return count, resumed, resumed_at - pause_at, resumed_at, device_state_s


class IntervalSampler:
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
        rate = counter.memory.units / max(now - self.started, 1e-9)  # pages/s of this pass so far
        dirty = source.guest.dirty_count()
        pass_left_s = (self.pass_pages - counter.memory.units) / rate if rate else None
        source.progress.interval(page_size=source.guest.page_size, sample=Interval(
            pass_no=source.protocol.pass_no, elapsed_s=source.record.timeline.now(),
            pages_sent=counter.memory.units,
            pass_pages=self.pass_pages, wire_bytes_per_s=(counter.wire_bytes - self.last_wire) / (now - self.last),
            dirty_pages=dirty, pass_left_s=pass_left_s,
            end_s=None if pass_left_s is None else pass_left_s + dirty / rate,
            firm=not source.scenario.workload.rate_pages_per_s or source.live_postcopy,  # nothing dirties in post-copy
        ))
        self.last, self.last_wire = now, counter.wire_bytes


def _write_back_rate(ack):
    """The destination's disk write-back rate its PASS_END may give: a number > 0, or None (left out, null)."""
    if ack.body.get("disk_write_back_bytes_per_s") is None:
        return None
    rate = ack.field("disk_write_back_bytes_per_s", (int, float))
    if not 0 < rate < math.inf:
        raise protocol.RemoteProtocolError("body.disk_write_back_bytes_per_s", f"expected a number > 0 or null, "
                                                                               f"got {rate!r}")
    return float(rate)


class Precopy:
    """The passes of pre-copy, over `source`."""

    def __init__(self, source):
        self.source = source

    def run(self):
        """Pass after pass until the policy decides; the decision."""
        source = self.source
        source.record.timeline.begin("precopy")
        remaining_history = []
        sent_bytes = sent_s = 0.0
        pass_no = 0
        memory_fitted = False  # the memory left after the last pass fitted the budget: the disk held it up
        while True:
            started, cpu = source.clock(), CpuMeter()
            writes_before = {stream: stream.writes for stream in source.streams}
            limited_before = source.workload.limited_s
            counter = source.record.unrecorded = PassCount()  # until a record holds it (a failure may come first)
            for stream in source.streams:  # each harvested just before it is sent
                source.send_units(stream.pass_units(pass_no), counter, stream)
            source.link.send_control(source.protocol.pass_end(counter.memory.units, counter.disk.units))
            ack = source.recv_control()
            duration_s = max(source.clock() - started, 1e-9)
            remaining = source.guest.dirty_count()
            disk_left = source.disk.remaining_bytes() if source.disk else 0
            disk_bytes = counter.disk.units * source.disk.unit_bytes if source.disk else 0
            sent_bytes += counter.memory.units * source.guest.page_size + disk_bytes
            sent_s += duration_s
            bandwidth = sent_bytes / sent_s  # guest bytes/s over all passes: what moves remaining pages and blocks
            remaining_history.append(remaining * source.guest.page_size + disk_left)
            source.apply_changes()
            decision = policy.decide(source.policy_in_force, remaining_history, bandwidth,
                                     source.record.timeline.now() - source.setup_s, source.scenario.guest_bytes)
            if source.options.postcopy:
                decision = policy.postcopy_now(decision, pass_no + 1, source.options.postcopy_after_passes) or decision
            record = PassRecord(
                pass_no=pass_no, pages_sent=counter.memory.units,
                bytes_sent=counter.memory.units * source.guest.page_size, wire_bytes=counter.memory.wire_bytes,
                zero_pages=counter.memory.zero_units, duration_s=duration_s,
                bandwidth_bytes_per_s=counter.wire_bytes / duration_s,
                remaining_pages=remaining,
                dirty_pages_rate=(source.memory.writes - writes_before[source.memory]) / duration_s,
                threshold_bytes=decision.threshold_bytes, downtime_limit_s=decision.downtime_limit_s,
                throttle_pct=source.workload.throttle_pct,
                dirty_limit_throttle_s=(source.workload.limited_s - limited_before) / source.scenario.workload.vcpus,
                source_cpu_s=cpu.lap(), destination_cpu_s=ack.field("cpu_s", (int, float)),
            )
            if source.disk:
                self._record_disk(record, counter, disk_left, writes_before[source.disk], memory_fitted,
                                  _write_back_rate(ack))
                memory_fitted = remaining * source.guest.page_size <= decision.threshold_bytes
            source.record.passes.append(record)
            source.record.unrecorded = None
            # what the blackout will send: the dirty pages and a mirrored disk's dirty blocks; in post-copy the device
            # state and the list of missing pages (MISSING: a page number each, at most)
            blackout_bytes = source.options.device_state_bytes + remaining * MISSING_BYTES_PER_PAGE \
                if decision.action == "postcopy" else remaining * source.guest.page_size + disk_left
            source.expected_downtime_s = policy.expected_downtime_s(blackout_bytes, bandwidth)
            if record.disk and record.disk.write_back_bytes_per_s:  # and the disk copy's write-through at handover
                source.expected_downtime_s = policy.with_write_through_s(
                    source.expected_downtime_s, disk_bytes, disk_left, record.disk.write_back_bytes_per_s)
            self._tell_pass(record, decision)
            if decision.action != "continue":
                source.decision = decision
                return decision
            if source.options.auto_converge:
                self._throttle(record)
            elif source.options.dirty_limit_bytes_per_s is not None:
                self._limit_if_needed(record)
            pass_no += 1

    def _tell_pass(self, record, decision):
        source = self.source
        source.progress.pass_done(record, source.guest.page_size, source.guest.n_pages)
        capped_all_along = not any(change.name == "max_bandwidth_bytes_per_s" and change.pass_no == 0
                                   for change in source.record.parameter_changes)
        if record.pass_no == 0 and capped_all_along:  # a cap set mid-pass: no rate to hold the pass against
            held_back = events.cpu_bound(record, source.limiter.rate_bytes_per_s)
            if held_back:  # pass 0 well below the rate cap: the CPU (or storage) set the pace, not the capped link
                what = {"CPU": "this machine's CPU", "storage": "the destination's storage"}[events.pace_setter(record)]
                source.progress.message(f"{held_back}: {what}, not the cap, set the pace")
        if decision.action == "postcopy":
            why = f"after {format_count(record.pass_no + 1, 'pass')}" if decision.reason == "postcopy-after" else \
                f"pre-copy {decision.reason}"
            source.progress.message(f"{why}: switching to post-copy")
        elif decision.reason in ("stalled", "max-passes", "max-time"):
            source.progress.message(f"pre-copy {decision.reason}: {decision.action}")

    def _record_disk(self, record, counter, disk_left, writes_before, waiting, write_back_bytes_per_s):
        """The disk's part of a pass record; the block job's readiness and the time spent waiting for it."""
        source = self.source
        disk = source.disk
        sent = counter.disk
        record.disk = DiskPass(
            blocks_sent=sent.units, bytes_sent=sent.units * disk.unit_bytes, wire_bytes=sent.wire_bytes,
            zero_blocks=sent.zero_units, remaining_bytes=disk_left,
            writes_rate=(disk.writes - writes_before) / record.duration_s,
            wait_s=record.duration_s if waiting else 0.0, write_back_bytes_per_s=write_back_bytes_per_s)
        disk.wait_s += record.disk.wait_s
        if disk.ready_s is None and disk_left <= record.threshold_bytes:
            disk.ready_s = source.record.timeline.now()
            source.progress.message(f"disk mirror ready after pass {record.pass_no}: its dirty blocks fit the "
                                    "downtime budget")

    def _limit_if_needed(self, record):
        """Dirty-limit: from the first pass that dirtied more than it could afford, each vCPU is held to the limit."""
        source = self.source
        if source.workload.dirty_limit_pages_per_s is not None or not policy.needs_slowing(
                record.remaining_pages * source.guest.page_size, record.bytes_sent):
            return
        limit = source.options.dirty_limit_bytes_per_s
        source.workload.set_dirty_limit(limit / source.guest.page_size)
        source.progress.message(f"dirty-limit: each vCPU held to {format_rate(limit)} of page writes")

    def _throttle(self, record):
        """Auto-converge: slow the vCPUs when a pass dirtied more than it could afford."""
        source = self.source
        throttle = policy.next_throttle_pct(source.workload.throttle_pct,
                                            record.remaining_pages * source.guest.page_size, record.bytes_sent)
        if throttle != source.workload.throttle_pct:
            source.workload.set_throttle(throttle)
            source.progress.message(f"auto-converge: vCPUs throttled by {throttle}%")


class StopAndCopy:
    """The blackout: the last dirty units, the device state, COMPLETE with the digests; over `source`."""

    def __init__(self, source):
        self.source = source

    def run(self):
        source = self.source
        counter, resumed, total_s, _, device_state_s = switch_over(
            source, lambda token: source.protocol.switchover(source.decision.reason), self._final_units,
            self._complete)
        source.memory.received_digest = resumed.field("digest", str)
        if source.disk:
            source.disk.received_digest = resumed.body["disk_digest"]
        blackout = source.record.blackout = Blackout(
            total_s=total_s, final_pages=counter.memory.units,
            final_bytes=counter.memory.units * source.guest.page_size, final_wire_bytes=counter.memory.wire_bytes,
            final_zero_pages=counter.memory.zero_units,
            final_send_s=resumed.field("final_pages_s", (int, float)), device_state_bytes=len(source.device_state),
            device_state_s=device_state_s, digest_check_s=resumed.field("digest_check_s", (int, float)),
            resume_s=resumed.field("resume_s", (int, float)),
            disk=DiskFinal(blocks=counter.disk.units, zero_blocks=counter.disk.zero_units,
                           wire_bytes=counter.disk.wire_bytes, sync_s=resumed.field("disk_sync_s", (int, float)))
            if source.disk else None,
        )
        if source.disk:
            source.disk.sync_s = blackout.disk.sync_s
        source.record.unrecorded = None  # the blackout record holds the final pass
        source.warn_if_long(blackout)
        for stream, what in ((source.memory, "memory"), (source.disk, "disk")):
            if stream is not None and stream.received_digest != stream.sent_digest:
                raise Mismatch(f"the destination resumed with {what} digest {stream.received_digest}, the source's "
                               f"is {stream.sent_digest}: its {what} is not the guest's" + (
                                   " (the source's copy stays paused, so the guest never runs twice)"
                                   if what == "memory" else ""))

    def _final_units(self):
        """Send each stream's last dirty units; their digests: running, or hashed from the paused memory (and
        disk) while the units travel."""
        source = self.source
        counter = source.record.unrecorded = PassCount()
        finals = [(stream, stream.harvest()) for stream in source.streams]
        digester = None
        if source.memory.running_digest is None:
            digester = threading.Thread(target=self._hash_paused, name="source-digest")
            digester.start()
        for stream, numbers in finals:
            source.send_units(numbers, counter, stream)
        if digester is None:
            for stream in source.streams:
                stream.sent_digest = stream.running_digest.value()
        else:
            digester.join()
        return counter

    def _hash_paused(self):
        for stream in self.source.streams:
            stream.sent_digest = stream.memory.digest()

    def _complete(self, counter, token):
        source = self.source
        return source.protocol.complete(counter.memory.units, source.memory.sent_digest, source.device_state_digest,
                                        token, counter.disk.units, source.disk and source.disk.sent_digest)


class PostcopyPhase:
    """The guest resumes on the destination before its dirty pages have crossed, which then do; over `source`."""

    def __init__(self, source):
        self.source = source

    def run(self):
        """Pause, send the device state and the missing pages' list; once the destination resumed, send each
        missing page once (module doc)."""
        source = self.source
        missing = []

        def harvest_missing():
            missing.append(source.memory.harvest().copy())
            return PassCount()

        _, resumed, total_s, resumed_at, device_state_s = switch_over(
            source, lambda token: source.protocol.postcopy(source.decision.reason, source.device_state_digest, token),
            harvest_missing, lambda _, token: source.protocol.missing(missing[0]))
        source.record.blackout = Blackout(
            total_s=total_s, final_pages=0, final_bytes=0, final_wire_bytes=0, final_zero_pages=0,
            final_send_s=resumed.field("final_pages_s", (int, float)), device_state_bytes=len(source.device_state),
            device_state_s=device_state_s, digest_check_s=0.0, resume_s=resumed.field("resume_s", (int, float)))
        source.warn_if_long(source.record.blackout)
        source.progress.message(f"post-copy: the guest resumed on the destination with {missing[0].size:,} pages "
                                "missing")
        source.announce()
        source.record.timeline.begin("postcopy")
        self._push(missing[0], resumed_at)

    def _push(self, missing, resumed_at):
        """Send every missing page once, asked-for pages first; POSTCOPY_END; the destination's POSTCOPY_DONE.
        A link that breaks meanwhile is recovered (PostcopyRecovery), and what the destination lacks then is
        sent again."""
        source = self.source
        source.backlog = postcopy.Backlog(missing)
        counter = source.record.unrecorded = PassCount()
        source.progress.sending(missing, counter)  # asked-for pages go first: a watcher's front is approximate
        every_s = source.progress.interval_s
        sampler = IntervalSampler(source, missing.size, every_s) if every_s else None
        recovery = PostcopyRecovery(source)
        while True:
            pages_before = counter.memory.units  # POSTCOPY_END counts the pages since the last recovery
            try:
                self._send_backlog(counter, sampler)
                source.memory.sent_digest = source.memory.running_digest.value()
                source.link.send_control(source.protocol.postcopy_end(counter.memory.units - pages_before,
                                                                      source.memory.sent_digest))
                done = source.recv_control()
                break
            except PeerTimeout as broken:
                recovery.recover(broken)
        source.memory.received_digest = done.body["digest"]
        duration_s = source.clock() - resumed_at
        record = source.record.postcopy = self._postcopy_record(done, counter, missing.size, duration_s, recovery)
        source.record.unrecorded = None
        if source.memory.received_digest != source.memory.sent_digest:
            raise Mismatch(f"after post-copy the destination's memory digest is {source.memory.received_digest}, the "
                           f"source's {source.memory.sent_digest}: the guest it runs is not this one")
        source.postcopy_complete = True
        source.progress.message(f"post-copy done: {record.pages_requested:,} pages asked for, the vCPUs waited "
                              f"{sum(record.vcpu_blocktime_s):.3f} s in all")

    def _send_backlog(self, counter, sampler):
        source = self.source
        rate, batch_pages = source.limiter.rate_bytes_per_s, source.options.batch_pages
        push_pages = min(batch_pages, max(1, int(rate * POSTCOPY_PUSH_S) // source.guest.page_size)) if rate \
            else batch_pages
        preempt = source.options.postcopy_preempt
        while True:
            source.check_control()  # page requests join the backlog
            pages, requested = source.backlog.next_requested(), True
            if not pages.size:
                pages, requested = source.backlog.next_pushed(push_pages), False
                if not pages.size:
                    break
            for batch in source.memory.encoder.batches(pages):  # whole pages: XBZRLE's deltas are for pre-copy
                counter.count(batch, source.send_data(batch, preempt and requested), source.memory)
            if sampler:
                sampler.sample(counter)
        source.limiter.settle()

    def _postcopy_record(self, done, counter, missing_pages, duration_s, recovery):
        source = self.source
        blocktimes = done.body["vcpu_blocktime_s"]
        if len(blocktimes) != source.scenario.workload.vcpus or not all(
                type(b) in (int, float) and b >= 0 for b in blocktimes):
            raise protocol.RemoteProtocolError("body.vcpu_blocktime_s", f"expected {source.scenario.workload.vcpus} "
                                                                        f"times >= 0, got {blocktimes!r:.80}")
        return Postcopy(
            missing_pages=missing_pages, pages_requested=done.body["pages_requested"],
            requested_sent=source.backlog.requested_sent, pushed_pages=source.backlog.pushed,
            requests=source.backlog.requests, wire_bytes=counter.memory.wire_bytes, zero_pages=counter.memory.zero_units,
            duration_s=duration_s, last_page_s=done.body["last_page_s"], blocktime_s=done.body["blocktime_s"],
            vcpu_blocktime_s=[float(b) for b in blocktimes], destination_cpu_s=done.body["cpu_s"],
            recoveries=recovery.count, paused_s=recovery.paused_s)


class PostcopyRecovery:
    """A post-copy link that broke, recovered from the source's end (QEMU's postcopy-paused, then
    postcopy-recover): the guest stays paused here and runs on there, and the source connects anew to the
    same destination, which keeps the guest for the window (migration.postcopy_recover_s), and says RECOVER;
    the destination answers RECOVERED (new data channels) and MISSING (the pages it still lacks), which are
    sent again. The guest is lost when the window passes, or at once when nothing listens there any more
    (the destination's process is gone)."""

    def __init__(self, source):
        self.source = source
        self.count = 0  # recoveries that succeeded
        self.paused_s = 0.0  # time spent paused, in all

    def recover(self, broken):
        """Go on after `broken` (a PeerTimeout) on a new connection; PeerTimeout if that cannot be."""
        source = self.source
        window = source.options.postcopy_recover_s
        if not window:
            raise broken
        source.progress.message(f"post-copy paused: {broken.reason}; connecting again for up to {window:g} s")
        paused_at = source.clock()
        deadline = paused_at + window
        while source.clock() < deadline:
            try:
                self._attempt(min(source.options.timeout_s, max(deadline - source.clock(), MIN_ATTEMPT_S)))
            except NothingListens as error:  # the destination's process, and the guest with it, are gone
                raise PeerTimeout(f"{broken.reason}; then {error.reason}") from None
            except PeerTimeout:
                time.sleep(min(RECONNECT_EVERY_S, max(0.0, deadline - source.clock())))
                continue
            self.count += 1
            self.paused_s += source.clock() - paused_at
            source.progress.message(f"post-copy recovered after {source.clock() - paused_at:.2f} s: "
                                    f"{source.backlog.unsent_pages():,} pages to send again")
            return
        raise PeerTimeout(f"{broken.reason}; the destination could not be reached again within {window:g} s")

    def _attempt(self, timeout_s):
        """One new connection: RECOVER, then RECOVERED and MISSING within `timeout_s`; the pages sent again."""
        source = self.source
        source.link.reconnect()
        source.link.send_control(source.protocol.recover(source.session_id))
        recovered = self._reply(timeout_s)
        source.link.open_data(recovered.body["data"], source.options.batch_pages * source.guest.page_size)
        source.backlog.resend(self._reply(timeout_s).page_numbers)

    def _reply(self, timeout_s):
        """The destination's next message, checked (RECOVERED, then MISSING); PeerAborted for an ABORT."""
        source = self.source
        message = source.protocol.receive(source.link.recv_control(timeout_s))
        if message.type == protocol.MsgType.ABORT:
            reason, cancelled = aborted(message)
            raise PeerAborted(reason, "destination", cancelled)
        return message
