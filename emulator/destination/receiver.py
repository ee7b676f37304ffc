"""The destination: hosts an incoming guest, applies its pages, verifies, resumes, announces.

It accepts one migration at a time: HELLO is checked (protocol version, the
scenario, memory capacity) and refused with a reason, or the guest's memory is
allocated and made resident before ACCEPT (as QEMU's prealloc does), so
setup-time is reported on its own; the guest's vCPUs are made ready then too,
so resuming is only starting threads. Data messages must belong to the
current pass; a pass is complete when the counts in PASS_END (or COMPLETE)
have all arrived and been applied. The guest resumes only after its memory
digest (running, or hashed in full with verify "full") equals the source's;
on any failure the partial guest is discarded and nothing is reported resumed.
A CHECK (precopy check), from any peer at any time, is answered with the problems
the same checks find, as a VERDICT: nothing is allocated and nothing changes here.
A mirrored disk (storage mirror) is received into `<name>.part` in the disk
directory, its space reserved in setup; after each pass what arrived is written
back in the background; in the handover its digest is checked, it is written
through and renamed to its name before the guest resumes. On failure the part
file is removed: nothing is ever left under the disk's name unverified.
Post-copy (emulator.vm.postcopy): after MISSING the guest resumes here at once, its
vCPUs waiting for the missing pages they touch, which this thread asks for and
places as they come (each once: a page that is not missing is a protocol error).
Only the running digest can verify it, once the last page is in: the vCPUs have
changed the memory since. A failure in between loses the guest (status "lost").
"""

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar


from emulator.analysis import events
from emulator.analysis.report import DestinationOutcome
from emulator.core import fields
from emulator.core.errors import Cancelled, LinkBroken, MigrationError, Mismatch, PeerAborted, PeerTimeout, Refused
from emulator.core.units import format_bytes, format_count
from emulator.dataplane.receiving import ReceivingPlane
from emulator.dataplane.threads import CpuMeter
from emulator.dataplane.transport import HEARTBEATS_PER_TIMEOUT, WAKE
from emulator.destination.hosted import HostedGuest
from emulator.vm.allocator import MemoryShortfall, available_memory_bytes
from emulator.vm.compat import CpuModel, this_cpu
from emulator.vm.disk import DiskError, DiskImage, disk_problems
from emulator.vm.guest import GuestMemory
from emulator.vm.scenario import CONFIG_VERSION, GuestConfig, Scenario
from emulator.vm.verdict import Problem, Verdict, refusal
from emulator.wire import protocol
from emulator.wire.protocol import MsgType, RemoteProtocolError
from emulator.wire.protocol_engines import (DestinationProtocol, DeviceState, FinalPassComplete, Missing, PassComplete,
                                            PostcopyBegins, PostcopyComplete, SourceAborted, Switchover, stranger_abort,
                                            stranger_refusal, verdict)


def _shortfall_problem(shortfall):
    """The refusal's problem for a guest this host cannot hold now (a MemoryShortfall)."""
    return Problem(shortfall.field, shortfall.text("this destination"), shortfall.fix("the destination"))


def _offered_cpu(value):
    if not isinstance(value, CpuModel):
        raise ValueError(f"must be a CpuModel, got {value!r}")
    return value


def _directory_rule(value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a directory's path, got {value!r}")
    return value


@dataclass(frozen=True)
class DestinationLimits:
    """What one incoming migration may ask of this destination, besides its memory capacity.

    A HELLO beyond a limit is refused with the field, its value and the limit; a
    migration that lasts longer than max_duration_s (from HELLO) is aborted. cpu,
    switches and config_version are what this host offers a guest's configuration
    (scenario.GuestConfig): a guest needing more is refused with every problem and its fix.
    disk_dir: where mirrored disks are received (None: none are taken).
    """

    max_vcpus: int = 64
    max_channels: int = 16
    max_device_state_bytes: int = 16 << 20
    max_message_bytes: int = 64 << 20  # batch pages x page size: what one data message may decode to
    max_duration_s: float = 3600.0
    cpu: CpuModel = field(default_factory=this_cpu)  # what this host offers a guest
    switches: tuple[str, ...] = ()
    config_version: int = CONFIG_VERSION  # the newest guest configuration this destination supports
    disk_dir: str | None = None

    RULES: ClassVar[dict] = {
        "max_vcpus": fields.whole(1), "max_channels": fields.whole(1), "max_device_state_bytes": fields.whole(1),
        "max_message_bytes": fields.whole(1), "max_duration_s": fields.real(0, above=True),
        "cpu": _offered_cpu, "switches": GuestConfig.RULES["switches"], "config_version": GuestConfig.RULES["version"],
        "disk_dir": fields.optional(_directory_rule, "none taken"),
    }

    def __post_init__(self):
        fields.check(self, self.RULES)

    def problems(self, scenario):
        """Every reason this destination will not host `scenario` (besides memory capacity): Problems."""
        found = []
        config = scenario.config
        if config.version > self.config_version:
            found.append(Problem("config.version", f"config.version is {config.version}, newer than this "
                                 f"destination supports ({self.config_version})", f"upgrade precopy on the "
                                 f"destination, or give the guest --config-version {self.config_version}"))
        if config.cpu is not None:
            if config.cpu.vendor != self.cpu.vendor:
                found.append(Problem("config.cpu.vendor", f"config.cpu.vendor is {config.cpu.vendor}, this "
                                     f"destination's processor is {self.cpu.vendor}", "no compatibility mode "
                                     "moves a guest between vendors: choose a destination of the same vendor"))
            else:
                missing = config.cpu.missing_on(self.cpu)
                if missing:
                    found.append(Problem("config.cpu.features", f"config.cpu.features: this destination's "
                                         f"processor lacks {format_count(len(missing), 'feature')} the guest "
                                         f"requires ({_first_names(missing)})", "give the guest a cluster's "
                                         "common set (precopy compat --hosts ... > common.json, then --cpu "
                                         "common.json)"))
        lacking = [switch for switch in config.switches if switch not in self.switches]
        if lacking:
            named = ", ".join(map(repr, lacking))
            found.append(Problem("config.switches", f"config.switches: the guest's network adapters connect to "
                                 f"virtual {'switch' if len(lacking) == 1 else 'switches'} {named}, which this "
                                 f"destination lacks (it has {', '.join(map(repr, self.switches)) or 'none'})",
                                 "receive " + " ".join(f"--switch {switch}" for switch in lacking)))
        if scenario.mirrored_disk is not None:
            found += disk_problems(scenario.mirrored_disk, self.disk_dir)
        return found + self._beyond_limits(scenario)

    def _beyond_limits(self, scenario):
        options = scenario.migration
        asked = (
            ("workload.vcpus", scenario.workload.vcpus, self.max_vcpus, str, "--max-vcpus"),
            ("migration.channels", options.channels, self.max_channels, str, "--max-channels"),
            ("migration.device_state_bytes", options.device_state_bytes, self.max_device_state_bytes, format_bytes,
             "--max-device-state"),
            ("migration.batch_pages x guest.page_size", options.batch_pages * scenario.guest.page_size,
             self.max_message_bytes, format_bytes, "--max-message"),
        )
        return [Problem(name.split()[0], f"{name} is {show(value)}, above this destination's limit of {show(limit)}",
                        f"ask for at most {show(limit)}, or raise the destination's receive {option}")
                for name, value, limit, show, option in asked if value > limit]


def _first_names(names, shown=16):
    """`names` joined, at most `shown` of them: a refusal must fit a control message."""
    rest = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {rest} more" if rest > 0 else "")


NOTICE_EVERY_S = 1.0  # the most often a receiver says it refused a stranger or turned a connection away


def judge(opening, limits, capacity_bytes):
    """(the scenario or None, every Problem with hosting it) for a HELLO or CHECK `opening`, against
    `limits` and `capacity_bytes` of memory.

    RemoteProtocolError if it lacks an integer protocol or an object scenario. Allocates nothing.
    """
    version = opening.field("protocol", int)
    scenario_dict = opening.field("scenario", dict)
    if version != protocol.VERSION:
        return None, [Problem("protocol", f"protocol version {version} is not supported (this destination "
                              f"speaks {protocol.VERSION})", "run the same precopy release on both ends")]
    try:
        scenario = Scenario.from_dict(scenario_dict)
    except ValueError as error:
        return None, [Problem("scenario", f"invalid scenario: {error}",
                              "the source's precopy may be newer: run the same release on both ends")]
    problems = limits.problems(scenario)
    needed = scenario.guest.memory_bytes
    if needed > capacity_bytes:
        problems.append(Problem("guest.memory_bytes", f"guest.memory_bytes is {format_bytes(needed)} ({needed} B), "
                                f"above this destination's capacity of {format_bytes(capacity_bytes)} "
                                f"({capacity_bytes} B)", f"give the guest at most {format_bytes(capacity_bytes)}, "
                                "or free memory on the destination (receive --capacity sets what it offers)"))
    return scenario, problems


class Doorkeeper:
    """Answers the peers that have no migration here on `link`, and tells `progress` (at most
    once every NOTICE_EVERY_S, counting the rest). Replies are best effort and never wait:
    a peer that does not read must not hold up the server."""

    def __init__(self, link, progress):
        self.link, self.progress = link, progress
        self.frames_refused = 0
        self._unsaid, self._notice_at = 0, 0.0
        link.on_turned_away = lambda why: self.notice(f"turned away {why}")

    def send(self, peer, frames_of):
        """Send frames_of() to `peer` if it can be built and `peer` takes it at once; else drop it."""
        try:
            frames = frames_of()
            if frames is not None:
                self.link.send_control(peer, frames, wait=False)
        except MigrationError:
            pass

    def refuse(self, incoming, error):
        """A bad message from a peer with no migration here: ABORT naming `error`."""
        self.frames_refused += 1
        self.send(incoming.peer, lambda: stranger_abort(f"protocol error: {error}"))
        self.notice(f"refused a message from {incoming.address or 'a local peer'}, which has no migration here: "
                    f"{error}")

    def turn_away(self, incoming, reason):
        """REFUSE a decodable message (a HELLO, say) from a peer that cannot have a migration here now."""
        self.send(incoming.peer, lambda: stranger_refusal(reason))

    def answer_check(self, incoming, check, limits, capacity_bytes, busy):
        """VERDICT to a peer's CHECK: what a HELLO now would be refused for. Nothing here changes."""
        try:
            _, problems = judge(check, limits, capacity_bytes)
        except RemoteProtocolError as error:
            self.refuse(incoming, error)
            return
        self.send(incoming.peer, lambda: verdict(Verdict(tuple(problems), busy, max(0, capacity_bytes))))
        self.notice(f"a source at {incoming.address or 'a local endpoint'} checked a guest: "
                    + (format_count(len(problems), "problem") if problems else "compatible"))

    def refuse_intruder(self, incoming, limits, capacity_bytes):
        """Another peer while a migration runs: apply nothing of it; say what was wrong, or that we are busy."""
        try:
            message = protocol.Decoder().decode(incoming.frames)
        except RemoteProtocolError as error:
            self.refuse(incoming, error)
            return
        if message.type == MsgType.CHECK:
            self.answer_check(incoming, message, limits, capacity_bytes, busy=True)
            return
        self.turn_away(incoming, "busy with another migration")

    def notice(self, text):
        """Say `text` unless something was said less than NOTICE_EVERY_S ago; then count it for the next."""
        now = time.monotonic()
        if now < self._notice_at:
            self._unsaid += 1
            return
        self.say(text + (f" (and {self._unsaid} more since the last notice)" if self._unsaid else ""))
        self._unsaid, self._notice_at = 0, now + NOTICE_EVERY_S

    def say(self, text):
        if self.progress:
            self.progress.message(text)


class Destination:
    """Receives one migration over `link` (a DestinationLink).

    capacity_bytes: the most guest memory to accept (default: available memory).
    limits: a DestinationLimits for everything else a source may ask for.
    progress: an object with phase(name, elapsed_s) and message(text), or None.
    on_verified: called with the GuestMemory once its digest matched, just before
    the guest resumes (and its writers change it): the memory as migrated. After a
    post-copy, once the last page is in and the digest matched, with the writers
    paused: the memory as migrated and as the guest has changed it here since.
    prepared: a Future of a blank GuestMemory made before HELLO for the guest that is
    expected (see emulator.running.children.migrate); used if HELLO brings that guest.
    """

    def __init__(self, link, *, capacity_bytes=None, limits=DestinationLimits(), progress=None, on_verified=None,
                 prepared=None, clock=time.monotonic):
        self.link = link
        self.limits = limits
        self.on_verified = on_verified
        self.prepared = prepared
        self.capacity_bytes = available_memory_bytes() if capacity_bytes is None else capacity_bytes
        self.progress, self.clock = progress, clock
        self.protocol = DestinationProtocol()
        self.peer = self.session_id = None  # the source's identity and its HELLO's session, once one began
        self.doors = Doorkeeper(link, progress)
        self.interrupted = False
        self.scenario = self.hosted = None  # what HELLO asked for; the guest hosted here (emulator.destination.hosted)
        self.plane = None  # the data channels' threads (emulator.dataplane.receiving), once accepted
        self.hello_at = self.switchover_at = None
        self.cpu = None  # this migration's CpuMeter, from ACCEPT on
        self.device_state = b""
        self.digest = None  # the memory's digest once verified
        self.postcopy = None  # the POSTCOPY message, once post-copy began

    @property
    def guest(self):
        """The hosted guest's memory (None before setup, and once a failure discarded it)."""
        return self.hosted and self.hosted.memory

    @property
    def workload(self):  # its vCPUs
        return self.hosted and self.hosted.workload

    @property
    def live_postcopy(self):
        """Resumed here without all its pages: a failure loses the guest."""
        return bool(self.hosted and self.hosted.live_postcopy)

    @property
    def pages_applied(self):
        return self.hosted.pages_applied if self.hosted else 0

    @property
    def blocks_applied(self):
        return self.hosted.blocks_applied if self.hosted else 0

    def run(self, hello_timeout_s=None):
        """Serve one migration; return its DestinationOutcome.

        hello_timeout_s: how long to wait for a source to begin (default: the link's
        timeout; math.inf waits until interrupted).
        """
        failure = None
        try:
            self._setup(hello_timeout_s)
            self._receive()
        except KeyboardInterrupt:
            if self.peer is None:
                raise  # no migration began: nothing was cancelled, the caller stops
            failure = Cancelled("cancelled by the user on the destination")
            self.interrupted = True
        except MigrationError as error:
            failure = error
        except Exception as error:  # a bug, or a resource this host lacks: this migration's failure, not the server's
            failure = MigrationError(f"the destination failed: {type(error).__name__}: {error}")
        if failure and not failure.answered:
            self._abort(failure.reason, cancelled=isinstance(failure, Cancelled))
        lost, hosted, disk_path = self.live_postcopy, self.hosted, None
        if hosted is not None:
            hosted.workload.stop()  # a post-copy guest may be running (or waiting for pages) here
        if self.plane is not None:
            self.plane.stop()
        self.link.close_data()
        if hosted is not None:
            disk_path = hosted.release_disk(failed=failure is not None)
        if failure:  # the partial guest is discarded, never resumed: nothing may keep its memory
            self.hosted = self.plane = None
        status = "completed"
        if failure:
            status = "lost" if lost else failure.status
        outcome = DestinationOutcome(
            status=status, reason=failure.reason if failure else None,
            digest=None if failure else self.digest, endpoint=self.link.endpoint,
            pages_applied=hosted.pages_applied if hosted else 0, frames_refused=self.doors.frames_refused,
            blocks_applied=hosted.blocks_applied if hosted else 0, disk_path=disk_path)
        hosted = None  # this frame outlives the run in its failure's traceback: it must not keep the guest
        self.say(f"migration {outcome.status}" + (f": {outcome.reason}" if outcome.reason else ""))
        return outcome

    # setup -------------------------------------------------------------------
    def _setup(self, hello_timeout_s):
        hello = self._wait_for_hello(hello_timeout_s)
        self.hello_at, self.session_id = time.monotonic(), hello.body.get("session")
        self.protocol.receive_hello(hello)
        scenario, problems = judge(hello, self.limits, self.capacity_bytes)
        if problems:
            self._refuse(problems)
        self.say("setup: allocating guest memory")
        self.scenario = scenario
        disk = None
        if scenario.mirrored_disk is not None:
            try:
                disk = self._while_heartbeating(lambda: DiskImage.receiving(scenario.mirrored_disk,
                                                                            self.limits.disk_dir))
            except DiskError as error:
                self.send(self.protocol.refuse(str(error)))
                raise Refused(str(error)) from None
        try:  # seconds of page faults for a big guest
            self.hosted = self._while_heartbeating(lambda: HostedGuest(scenario, self._blank_guest(scenario.guest),
                                                                       disk))
        except BaseException as error:
            if disk is not None:
                disk.discard()
            if isinstance(error, MemoryShortfall):  # what was offered is not free now: refused as any HELLO is
                self._refuse([_shortfall_problem(error)])
            raise
        options = scenario.migration
        ports = self.link.open_data(options.data_channels, options.batch_pages * scenario.guest.page_size)
        doorbell = self.link.doorbell()
        if self.hosted.faults is not None:
            self.hosted.faults.doorbell = doorbell
        frames = self.protocol.accept(scenario, ports)
        self.plane = ReceivingPlane(self.link.data_receivers(), self.protocol, self.hosted.place, doorbell)
        self.send(frames)
        self.say(f"accepted a {format_bytes(scenario.guest.memory_bytes)} guest ({scenario.guest.n_pages:,} pages) "
                  f"on {options.channels} channel(s)")

    def _refuse(self, problems):
        """REFUSE the HELLO for `problems`; raise Refused."""
        self.send(self.protocol.refuse(refusal(problems)))
        raise Refused(refusal(problems))

    def _blank_guest(self, spec):
        """A zeroed, resident memory for `spec`: the prepared one if it is that guest's, else allocated if this
        host can hold it now, whatever it offered (the source may have taken memory since); MemoryShortfall if not."""
        prepared, self.prepared = self.prepared, None
        if prepared is not None:
            guest = prepared.result()
            if guest.spec == spec:
                return guest
            del guest
        return GuestMemory.resident(spec, blank=True)

    def _while_heartbeating(self, work):
        """Run `work` (seconds of page faults for a big guest) while telling the source we are alive."""
        return _while_calling(work, lambda: self.send(self.protocol.heartbeat()),
                              self.link.timeout_s / HEARTBEATS_PER_TIMEOUT)

    def _wait_for_hello(self, timeout_s):
        """The first valid HELLO. Anything else is answered with ABORT naming the problem, and ignored."""
        timeout_s = self.link.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                incoming = self.link.recv(max(0.0, deadline - time.monotonic()))
            except PeerTimeout:
                raise PeerTimeout(f"no source began a migration within {timeout_s:g} s") from None
            try:
                message = self.protocol.check_hello(incoming.frames)
                if message.type == MsgType.CHECK:
                    self.doors.answer_check(incoming, message, self.limits, self.capacity_bytes, busy=False)
                    continue
                self.peer = incoming.peer
                self.say(f"a source at {incoming.address or 'a local endpoint'} began a migration")
                return message
            except RemoteProtocolError as error:
                self.doors.refuse(incoming, error)

    # pre-copy, blackout, resume ------------------------------------------------
    def _receive(self):
        self.cpu = CpuMeter()
        while True:
            try:
                return self._receive_until_done()
            except PeerTimeout as broken:  # in post-copy the guest runs here: the source may connect again
                if not (self.live_postcopy and self.scenario.migration.postcopy_recover_s):
                    raise
                _PostcopyHere(self).recover_until_done(broken)

    def _receive_until_done(self):
        heard_at = time.monotonic()  # silence is measured from the source only: others must not keep us waiting
        beat_at = heard_at
        beat_s = self.link.timeout_s / HEARTBEATS_PER_TIMEOUT
        while not self.protocol.finished:
            now = time.monotonic()
            if now >= beat_at + beat_s:  # a source whose end has gone cannot take it: known now, not at the timeout
                self.send(self.protocol.heartbeat())
                beat_at = now
            duration_left_s = self.hello_at + self.limits.max_duration_s - now
            if duration_left_s <= 0:
                raise MigrationError(f"the migration lasted longer than this destination's limit of "
                                     f"{self.limits.max_duration_s:g} s")
            silence_left_s = max(heard_at, self.plane.last_heard_at) + self.link.timeout_s - now
            if silence_left_s <= 0:
                raise PeerTimeout(f"nothing from the source within {self.link.timeout_s:g} s")
            try:
                incoming = self.link.recv(min(silence_left_s, duration_left_s, beat_at + beat_s - now))
            except LinkBroken:
                raise
            except PeerTimeout:
                continue  # said at the top, unless the data channels heard from the source meanwhile
            if incoming.channel == WAKE:  # a vCPU waits for a page, or the data channels have news
                _PostcopyHere(self).request_pages()
                happened = self.plane.events()
            elif self.live_postcopy and _is_recover(incoming, self.session_id):
                raise _Reconnected(incoming)
            elif incoming.peer != self.peer:
                self.doors.refuse_intruder(incoming, self.limits, self.capacity_bytes)
                continue
            else:
                happened = self.protocol.receive_control(incoming.frames)
                heard_at = time.monotonic()
            for event in happened:
                self._on_event(event)

    def _on_event(self, event):
        if type(event) is PassComplete:
            disk = self.hosted.disk
            if disk is not None:
                disk.sync_in_background(self.blocks_applied * disk.spec.block_size)
            self.send(self.protocol.acknowledge_pass(self.pages_applied, self.cpu.lap(),
                                                     disk and disk.write_back_bytes_per_s))
        elif type(event) is FinalPassComplete:
            self._verify_and_resume(event.complete)
        elif type(event) is Switchover:
            self.switchover_at = self.clock()
            self.say(f"blackout: final pass {event.pass_no}")
        elif type(event) is DeviceState:
            self.device_state = bytes(event.message.payload)
        elif type(event) is PostcopyBegins:
            if self.hosted.faults is None:
                raise RemoteProtocolError("type", "POSTCOPY, but this migration's scenario has no post-copy")
            self.switchover_at, self.postcopy = self.clock(), event.message
            self.say(f"post-copy: the guest moves here after pass {self.protocol.pass_no - 1}")
        elif type(event) is Missing:
            _PostcopyHere(self).resume(event.message)
        elif type(event) is PostcopyComplete:
            _PostcopyHere(self).end(event.end)
        elif type(event) is SourceAborted:
            raise PeerAborted(event.reason, "source", event.cancelled)

    def _verify_and_resume(self, complete):
        final_pages_s = self.clock() - self.switchover_at
        started = self.clock()
        self.digest, disk_digest = self.hosted.digests()
        digest_check_s = self.clock() - started
        source_digest = complete.field("digest", str)
        if self.digest != source_digest:
            raise Mismatch(f"memory digest mismatch: source {source_digest}, destination {self.digest}")
        source_disk_digest = complete.field("disk_digest", (str, type(None)))
        if disk_digest != source_disk_digest:
            raise Mismatch(f"disk digest mismatch: source {source_disk_digest}, destination {disk_digest}")
        device_digest = hashlib.blake2b(self.device_state, digest_size=16).hexdigest()
        if device_digest != complete.field("device_state_digest", str):
            raise Mismatch("device state digest mismatch")
        disk_sync_s = 0.0
        if self.hosted.disk is not None:  # the storage handover: the verified copy, durable, under its name
            try:
                disk_sync_s = self.hosted.disk.commit()
            except DiskError as error:
                raise MigrationError(f"the destination could not keep the disk: {error}") from None
        if self.on_verified:
            self.on_verified(self.guest)
        started = self.clock()
        self.workload.start()  # the guest runs here now
        resume_s = self.clock() - started
        self.send(self.protocol.resumed({
            "digest": self.digest, "digest_check_s": digest_check_s, "final_pages_s": final_pages_s,
            "resume_s": resume_s, "storage_token": complete.field("storage_token", str),
            "disk_digest": disk_digest, "disk_sync_s": disk_sync_s,
        }))
        self.send(self.protocol.announce(f"host {socket.gethostname()}, {self.link.endpoint}"))
        self.say("resumed and announced")
        _warn_if_long(self)
        self.workload.stop()  # the emulation ends here; a real guest would keep running

    # messages -----------------------------------------------------------------
    def send(self, frames):
        self.link.send_control(self.peer, frames)

    def _abort(self, reason, cancelled=False):
        """Tell the source why this migration ends (best effort)."""
        if self.peer is not None:
            self.doors.send(self.peer, lambda: self.protocol.abort(reason, cancelled))

    def say(self, text):
        self.doors.say(text)


class _Reconnected(LinkBroken):
    """The source connected anew in post-copy (its RECOVER, `recover`) before the break was noticed here."""

    def __init__(self, recover):
        super().__init__("the source connected again: its last connection broke")
        self.recover = recover


def _is_recover(incoming, session):
    """Whether `incoming` is a RECOVER of migration `session` (from any peer: the source's new connection)."""
    return session is not None and DestinationProtocol.recover_session(incoming.frames) == session


def _warn_if_long(here):
    """Say so when `here`'s (a Destination's) view of the blackout, switch-over to resumed, passed the run's warning
    threshold (that of HELLO's downtime limit: a precopy set is not seen here)."""
    blackout_s = here.clock() - here.switchover_at
    options = here.scenario.migration
    threshold = events.blackout_threshold_s(options.blackout_warning_s, options.policy.downtime_limit_s)
    if blackout_s > threshold:
        event = events.Event("long-blackout", time.monotonic() - here.hello_at, blackout_s, threshold,
                             "named in the source's report")
        here.say(events.warning_text(event, where=" here"))


def _while_calling(work, call, every_s):
    """Run `work` on a thread of its own, calling call() here every `every_s` until it ends; its result, or its
    exception raised here."""
    result = {}

    def run():
        try:
            result["value"] = work()
        except Exception as error:  # noqa: BLE001 - raised again below, in this thread
            result["error"] = error

    worker = threading.Thread(target=run, name="setup")
    worker.start()
    while worker.join(every_s) or worker.is_alive():
        call()
    if "error" in result:
        raise result["error"]
    return result["value"]


class _PostcopyHere:
    """Post-copy on the destination, over its Destination: the guest resumes with its missing pages marked,
    the vCPUs ask for those they touch, and POSTCOPY_END's digest must equal what was placed."""

    def __init__(self, destination):
        self.destination = destination

    def resume(self, missing):
        """Resume the guest here with the MISSING pages marked: its vCPUs wait for each they touch."""
        here = self.destination
        final_pages_s = here.clock() - here.switchover_at
        device_digest = hashlib.blake2b(here.device_state, digest_size=16).hexdigest()
        if device_digest != here.postcopy.field("device_state_digest", str):
            raise Mismatch("device state digest mismatch")
        faults = here.hosted.faults
        faults.mark(missing.page_numbers.astype("int64"))
        started = here.clock()
        faults.resumed_at = started
        here.hosted.live_postcopy = True
        here.workload.start()
        resume_s = here.clock() - started
        here.cpu.lap()
        here.send(here.protocol.resumed({
            "digest": "", "digest_check_s": 0.0, "final_pages_s": final_pages_s, "resume_s": resume_s,
            "storage_token": here.postcopy.field("storage_token", str), "disk_digest": None, "disk_sync_s": 0.0,
        }))
        here.send(here.protocol.announce(f"host {socket.gethostname()}, {here.link.endpoint}"))
        here.say(f"resumed with {missing.page_count:,} pages missing, and announced")
        _warn_if_long(here)

    def recover_until_done(self, broken):
        """recover() after `broken`, and again each time the recovery itself breaks."""
        while True:
            try:
                return self.recover(broken, getattr(broken, "recover", None))
            except PeerTimeout as again:
                broken = again

    def recover(self, broken, incoming=None):
        """The link broke (`broken`, a PeerTimeout): the guest runs on here (a vCPU that needs a missing page
        waits) while the source has migration.postcopy_recover_s to connect anew and say RECOVER
        (emulator.source.phases.PostcopyRecovery); then it gets new data channels and the pages still
        missing, and is asked again for those the vCPUs wait for. MigrationError when it did not come back
        within the window; PeerTimeout when this recovery broke in its turn.
        incoming: its RECOVER, if it came before the break was noticed here."""
        here = self.destination
        window = here.scenario.migration.postcopy_recover_s
        here.say(f"post-copy paused: {broken.reason}; the guest runs on here, waiting up to {window:g} s for the "
                 "source to connect again")
        paused_at = time.monotonic()
        here.plane.stop()
        here.protocol.pause()
        incoming = incoming or self._wait_for_recover(paused_at + window)
        if incoming is None:  # (not a PeerTimeout: nothing more to wait for)
            raise MigrationError(f"{broken.reason}; the source did not connect again within {window:g} s")
        here.peer = incoming.peer
        here.link.mend()
        here.protocol.receive_control(incoming.frames)
        options, faults = here.scenario.migration, here.hosted.faults
        ports = here.link.reopen_data(options.data_channels, options.batch_pages * here.scenario.guest.page_size)
        here.plane = ReceivingPlane(here.link.data_receivers(), here.protocol, here.hosted.place, faults.doorbell)
        here.send(here.protocol.recovered(ports))
        missing = faults.missing_pages()
        here.send(here.protocol.still_missing(missing))
        waiting = faults.waiting_pages()
        if waiting.size:
            here.send(here.protocol.page_request(waiting))
        here.say(f"post-copy recovered after {time.monotonic() - paused_at:.2f} s: {missing.size:,} pages still "
                 "missing")

    def _wait_for_recover(self, deadline):
        """The RECOVER of this migration's session that comes by `deadline`, else None; others are turned away."""
        here = self.destination
        while (left_s := deadline - time.monotonic()) > 0:
            try:
                incoming = here.link.recv(left_s)
            except PeerTimeout:
                continue
            if incoming.channel == WAKE:  # a vCPU asked for a page: asked again once the source is back
                continue
            if _is_recover(incoming, here.session_id):
                return incoming
            if incoming.peer != here.peer:  # the old connection's late words are dropped
                here.doors.refuse_intruder(incoming, here.limits, here.capacity_bytes)
        return None

    def request_pages(self):
        """Ask the source for the pages the vCPUs wait for (those still missing)."""
        here = self.destination
        if not here.live_postcopy:
            return
        pages = here.hosted.faults.take_requests()
        if pages.size:
            here.send(here.protocol.page_request(pages))

    def end(self, end):
        """Every page POSTCOPY_END promised is in: the running digest must be the source's."""
        here = self.destination
        faults = here.hosted.faults
        left = faults.left()
        if left:
            raise RemoteProtocolError("body.pages", f"POSTCOPY_END's messages arrived, {left:,} pages are still "
                                                    "missing")
        here.digest, _ = here.hosted.digests()  # post-copy takes running digests only
        if here.digest != end.field("digest", str):
            raise Mismatch(f"memory digest mismatch after post-copy: source {end.body['digest']}, destination "
                           f"{here.digest}")
        here.workload.pause()
        here.hosted.live_postcopy = False  # the whole guest is here, verified: whatever the link does now
        done = here.protocol.postcopy_done({
            "digest": here.digest, "blocktime_s": faults.all_blocked_s, "vcpu_blocktime_s": here.workload.blocked_s,
            "pages_requested": faults.requested, "requested_placed": faults.requested_placed,
            "last_page_s": faults.last_page_at - faults.resumed_at if faults.last_page_at else 0.0,
            "cpu_s": here.cpu.lap(),
        })
        try:
            here.send(done)
        except PeerTimeout as error:  # the source will not hear it: it says the guest lost, though it runs here
            here.say(f"post-copy done, but the source could not be told: {error.reason}")
        here.say(f"post-copy done: {faults.requested:,} pages asked for")
        if here.on_verified:
            here.on_verified(here.guest)
        here.workload.stop()  # the emulation ends here; a real guest would keep running
