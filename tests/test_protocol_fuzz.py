"""DestinationProtocol against a reference model: valid migrations mixed with hostile messages, no sockets.

A hypothesis state machine plays the source and the engine's caller. Valid frames come from a real
SourceProtocol and emulator.dataplane.batches.Batch; hostile ones are valid frames mutated (header fields
rewritten through protocol.HEADER, bytes flipped, frames cut, added or dropped), messages out of
order, on the wrong channel, with wrong counts, pages, passes or seqs, page numbers out of range,
and random bytes. Each goes to the engine and to `Reference`, a plain model written from docs/protocol.md
and the Session table; the two must agree on events, errors and state.

Checked at every step, besides that agreement (these do not trust the reference):
* A refused message raises RemoteProtocolError (a bad local call, or a channel never negotiated,
  LocalProtocolError); no other exception escapes. The engine is then FAILED and stays FAILED.
* DataPages carry page numbers < n_pages, the current pass, and a negotiated channel.
* Missing lists ascending, distinct pages < n_pages, of the current pass.
* PassComplete comes once per pass and FinalPassComplete (or, in post-copy, PostcopyComplete) once,
  each only when every channel delivered exactly the messages its PASS_END/COMPLETE/POSTCOPY_END
  counted; an honest migration, pre-copy or post-copy, ends in DONE.
* pass_no grows by one per acknowledge_pass, in no other way.

A migration turns hostile at a state drawn for it (or never). A hostile step that fails the engine is
mostly rewound (a new engine replays what was accepted before it), so that many hostile messages meet
the engine in the same state; the others are left failed, and poke_the_failed_engine checks them.
The Session table itself is taken as given here (tests/test_states.py checks it), and so are the
receiver's rules (post-copy's pages all missing, a scenario that allows post-copy: tests/test_postcopy.py).
"""

import functools
import struct
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from emulator.dataplane.batches import Batch
from emulator.dataplane.codecs import encode_batch
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from emulator.wire import protocol
from emulator.wire.protocol import (HEADER, MAGIC, VERSION, Codec, Decoder, Flags, LocalProtocolError, MsgType,
                                    ProtocolError, RemoteProtocolError, encode_control, encode_device_state,
                                    encode_page_list)
from emulator.wire.protocol_engines import (DataPages, DestinationProtocol, DeviceState, FinalPassComplete, Heartbeat,
                                            Missing, PassComplete, PostcopyBegins, PostcopyComplete, SourceAborted,
                                            SourceProtocol, Switchover)
from emulator.wire.states import DESTINATION, DONE, FAILED, FINAL_STATES, RECV, SEND, TRANSITIONS

PAGE_SIZE = 512  # small frames: the engine never looks inside pages
CONTROL = "control"  # the channel key of the control socket here
DATA_TYPES = (MsgType.PAGES, MsgType.ZERO_PAGES)
PASS_CARRIERS = (MsgType.PASS_END, MsgType.SWITCHOVER, MsgType.COMPLETE, MsgType.POSTCOPY, MsgType.POSTCOPY_END)
PASS_CLOSERS = (MsgType.PASS_END, MsgType.COMPLETE, MsgType.POSTCOPY_END)
OPENING_KEYS = {MsgType.HELLO: {"protocol", "session", "scenario"}, MsgType.CHECK: {"protocol", "scenario"}}
CLOSER_KINDS = tuple(t.name for t in PASS_CLOSERS)
DATA_KINDS = ("raw", "lz4", "lz4-noise", "zero", "zero-runs", "raw-runs")
TEMPLATE_KINDS = DATA_KINDS + tuple(t.name for t in MsgType if t not in DATA_TYPES)
# the pages of the page-list templates and of page_request: MISSING's encode as runs, PAGE_REQUEST's as a list
PAGE_LISTS = {MsgType.MISSING: (0, 1, 2), MsgType.PAGE_REQUEST: (0, 2)}
HEADER_FIELDS = ("magic", "version", "type", "flags", "seq", "pass_no", "page_count", "codec", "pad", "raw_len",
                 "encoded_len")  # the order of protocol.HEADER
HEADER_BITS = {"version": 16, "type": 8, "flags": 8, "seq": 64, "pass_no": 32, "page_count": 32, "codec": 8,
               "raw_len": 64, "encoded_len": 64}
ABSENT = object()  # a body key left out

# derandomize: the same cases every run; database=None: no failing examples saved between runs
FUZZ = settings(max_examples=800, stateful_step_count=30, deadline=None, derandomize=True, database=None,
                report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --------------------------------------------------------------------------
# Frames


def wire(frames):
    """`frames` as a network delivers them: bytes, captured now."""
    return [bytes(frame) for frame in frames]


def make_batch(kind, numbers, page_size):
    """A Batch of `kind` (one of DATA_KINDS) sending pages `numbers` (ascending, distinct)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    count = numbers.size
    flags, listed = Flags.NONE, numbers
    if kind.endswith("-runs"):
        flags, listed = Flags.RUNS, protocol.pages_to_runs(numbers)
    if kind.startswith("zero"):
        return Batch(MsgType.ZERO_PAGES, listed, flags, pages=count, raw_len=count * page_size)
    if kind == "lz4-noise":  # incompressible: LZ4 falls back to RAW
        raw = np.random.default_rng(count).integers(0, 256, count * page_size, dtype=np.uint8)
    else:
        raw = (np.arange(count * page_size) % 251).astype(np.uint8)
    codec, extra, payload = encode_batch(Codec.LZ4 if kind.startswith("lz4") else Codec.RAW, raw)
    return Batch(MsgType.PAGES, listed, flags | extra, codec, payload, raw.size, count)


def rewrite_header(frames, field, change):
    """`frames` with header `field` moved by `change` (wrapping at its width; bytes fields get one byte flipped)."""
    values = list(HEADER.unpack(frames[0]))
    index = HEADER_FIELDS.index(field)
    if field in HEADER_BITS:
        values[index] = (values[index] + change) % (1 << HEADER_BITS[field])
    else:
        flipped = bytearray(values[index])
        flipped[0] ^= change % 255 + 1
        values[index] = bytes(flipped)
    return [HEADER.pack(*values), *frames[1:]]


def mutate(frames, mutation):
    """`frames` with one byte flipped, a frame cut or extended, or the frame count changed."""
    how, *args = mutation
    frames = [bytearray(frame) for frame in frames]
    if how == "flip":
        index, position, mask = args
        if frames[index]:
            frames[index][position % len(frames[index])] ^= mask
    elif how == "cut":
        index, length = args
        del frames[index][length:]
    elif how == "append":
        index, extra = args
        frames[index] += extra
    else:
        (count,) = args
        frames = (frames * 2)[:count]
    return [bytes(frame) for frame in frames]


def message_key(message):
    """What identifies a decoded message (Message compares by identity)."""
    return message.type, message.seq, message.pass_no, tuple(message.page_numbers.tolist()), bytes(message.payload)


def summary(event):
    """An engine event as comparable data, in the reference's terms."""
    kind = type(event)
    if kind is DataPages:
        return ("data", event.channel, *message_key(event.message))
    if kind is PassComplete:
        return ("pass", event.pass_no)
    if kind is FinalPassComplete:
        return ("final", *message_key(event.complete))
    if kind is Switchover:
        return ("switchover", event.pass_no)
    if kind is PostcopyBegins:
        return ("postcopy", *message_key(event.message))
    if kind is Missing:
        return ("missing", *message_key(event.message))
    if kind is PostcopyComplete:
        return ("postcopy_complete", *message_key(event.end))
    if kind is DeviceState:
        return ("device", *message_key(event.message))
    if kind is SourceAborted:
        return ("aborted", event.reason, event.cancelled)
    if kind is Heartbeat:
        return ("heartbeat",)
    raise AssertionError(f"unknown event {event!r}")


def is_int(value):
    return type(value) is int  # JSON gives int, float, bool, str, None, list or dict


# --------------------------------------------------------------------------
# The reference


@dataclass(frozen=True)
class Rejected:
    """The rules refuse it; `stage` names the rule (for the reader, and "channel": the caller's mistake)."""
    stage: str


class Reference:
    """What a correct destination engine does: docs/protocol.md, the Session table (emulator.wire.states).

    Every method returns the events expected (as `summary` tuples) or Rejected, and moves the model on.
    Frame validity is emulator.wire.protocol's Decoder (tested in test_protocol.py) with the negotiated limits.
    """

    def __init__(self, scenario):
        self.scenario = scenario
        self.state = "IDLE"
        self.decoder = Decoder()
        self.channels = 0
        self.pass_no = 0
        self.control_seq = 0
        self.data_seq = []
        self.received = []  # data messages of this pass, per channel
        self.pages = 0  # pages those messages held
        self.announced = None  # the counts of the PASS_END/COMPLETE/POSTCOPY_END closing this pass, until they arrived
        self.promised_pages = None  # its "pages"
        self.promised_blocks = None  # its "blocks" (this guest mirrors no disk: none can arrive)
        self.ending = None  # that message
        self.closed = False  # everything it counted arrived: awaiting acknowledge_pass, resumed or postcopy_done
        self.device_state = False  # DEVICE_STATE arrived (the final pass, or the post-copy pass before MISSING)
        self.last = None  # the last message decoded

    def _step(self, direction, msg_type):
        """Follow the Session table; False (and FAILED) if the event is illegal now."""
        if self.state in FINAL_STATES:
            self.state = FAILED
            return False
        if msg_type == MsgType.HEARTBEAT:
            return True
        if msg_type == MsgType.ABORT:
            self.state = FAILED
            return True
        new_state = TRANSITIONS[DESTINATION][self.state].get((direction, msg_type))
        if new_state is None:
            self.state = FAILED
            return False
        self.state = new_state
        return True

    def _reject(self, stage):
        self.state = FAILED
        return Rejected(stage)

    def _decode(self, frames, decoder=None):
        try:
            self.last = (decoder or self.decoder).decode(frames)
        except RemoteProtocolError:
            self.last = None
        return self.last

    # calls of the engine's caller ---------------------------------------------
    def check_hello(self, frames):
        message = self._decode(frames, Decoder())
        if message is None or message.type not in OPENING_KEYS:
            return False
        version = message.body.get("protocol")  # a body of protocol 5 holds its keys only (another: judge refuses it)
        return type(version) is not int or version != VERSION or set(message.body) <= OPENING_KEYS[message.type]

    def receive_hello(self, message):
        if not self._step(RECV, message.type):
            return self._reject("session")
        if message.seq != 0:
            return self._reject("seq")
        self.control_seq = 1
        return []

    def accept(self):
        if not self._step(SEND, MsgType.ACCEPT):
            return self._reject("session")
        options, guest = self.scenario.migration, self.scenario.guest
        # one limit for pages and device state: the engine's choice, within what was negotiated
        self.decoder = Decoder(guest.page_size, guest.n_pages,
                               max(options.batch_pages * guest.page_size, options.device_state_bytes, 1))
        self.channels = options.channels
        self.data_seq, self.received = [0] * self.channels, [0] * self.channels
        return []

    def _send(self, msg_type):
        return [] if self._step(SEND, msg_type) else self._reject("session")

    def refuse(self):
        return self._send(MsgType.REFUSE)

    def heartbeat(self):
        return self._send(MsgType.HEARTBEAT)

    def announce(self):
        return self._send(MsgType.ANNOUNCE)

    def abort(self):
        if self.state != DONE:
            self.state = FAILED
        return []

    def _closed_by(self, msg_type):
        return self.closed and self.ending.type == msg_type

    def acknowledge(self):
        if not self._closed_by(MsgType.PASS_END):
            return self._reject("incomplete")
        if not self._step(SEND, MsgType.PASS_END):
            return self._reject("session")
        self.pass_no += 1
        self.received, self.pages = [0] * self.channels, 0
        self.announced = self.promised_pages = self.ending = None
        self.closed = False
        return []

    def resumed(self):
        if self.state != "POSTCOPY_RESUMING" and not self._closed_by(MsgType.COMPLETE):
            return self._reject("incomplete")  # post-copy resumes before its pass completes
        return self._send(MsgType.RESUMED)

    def page_request(self):
        return self._send(MsgType.PAGE_REQUEST)

    def postcopy_done(self):
        if not self._closed_by(MsgType.POSTCOPY_END):
            return self._reject("incomplete")
        return self._send(MsgType.POSTCOPY_DONE)

    # messages from the source ---------------------------------------------------
    def control(self, frames):
        message = self._decode(frames)
        if message is None:
            return self._reject("decode")
        if not self._step(RECV, message.type):
            return self._reject("session")
        if message.seq != self.control_seq:
            return self._reject("seq")
        self.control_seq += 1
        kind, body = message.type, message.body
        if kind in PASS_CARRIERS:
            announced = body.get("pass", ABSENT)
            if not is_int(announced):
                return self._reject("body")
            if announced != self.pass_no:
                return self._reject("pass")
        if kind == MsgType.HEARTBEAT:
            return [("heartbeat",)]
        if kind == MsgType.SWITCHOVER:
            return [("switchover", self.pass_no)]
        if kind == MsgType.POSTCOPY:
            if not all(isinstance(body.get(name), str) for name in ("device_state_digest", "storage_token")):
                return self._reject("body")
            return [("postcopy", *message_key(message))]
        if kind == MsgType.MISSING:
            if not self.device_state:
                return self._reject("type")  # DEVICE_STATE comes before MISSING
            if message.pass_no != self.pass_no:
                return self._reject("pass")  # the one control message whose header pass_no counts
            return [("missing", *message_key(message))]
        if kind == MsgType.DEVICE_STATE:
            if message.raw_len != self.scenario.migration.device_state_bytes:
                return self._reject("size")
            if self.device_state:
                return self._reject("type")  # exactly once
            self.device_state = True
            return [("device", *message_key(message))]
        if kind in PASS_CLOSERS:
            if kind == MsgType.COMPLETE and not self.device_state:
                return self._reject("type")  # DEVICE_STATE comes before COMPLETE
            counts, pages = body.get("messages", ABSENT), body.get("pages", ABSENT)
            blocks = 0 if kind == MsgType.POSTCOPY_END else body.get("blocks", ABSENT)  # post-copy moves no disk
            if not isinstance(counts, list) or not is_int(pages) or not is_int(blocks):
                return self._reject("body")
            if len(counts) != self.channels or not all(is_int(c) and c >= 0 for c in counts):
                return self._reject("counts")
            if any(got > want for got, want in zip(self.received, counts)):
                return self._reject("counts")
            if pages < 0 or blocks < 0:  # could never match: refused at once rather than once the messages arrived
                return self._reject("pages")
            self.announced, self.promised_pages, self.promised_blocks, self.ending = counts, pages, blocks, message
            return self._closing()
        if kind == MsgType.ABORT:
            reason = body.get("reason")
            if not isinstance(reason, str):
                return self._reject("body")
            return [("aborted", reason, body.get("cancelled") is True)]
        return self._reject("type")  # data on the control socket, or a HELLO outside receive_hello

    def data(self, channel, frames):
        if not 0 <= channel < self.channels:
            return self._reject("channel")
        message = self._decode(frames)
        if message is None:
            return self._reject("decode")
        if not self._step(RECV, message.type):
            return self._reject("session")
        if message.seq != self.data_seq[channel]:
            return self._reject("seq")
        self.data_seq[channel] += 1
        if message.type not in DATA_TYPES:
            return self._reject("type")
        if message.pass_no != self.pass_no:
            return self._reject("pass")
        if self.closed:  # every message the pass announced arrived: this one is more
            return self._reject("closed")
        self.received[channel] += 1
        self.pages += message.page_count
        events = [("data", channel, *message_key(message))]
        if self.announced is None:
            return events
        if self.received[channel] > self.announced[channel]:
            return self._reject("counts")
        closing = self._closing()
        return closing if isinstance(closing, Rejected) else events + closing

    def _closing(self):
        if self.received != self.announced:
            return []
        if self.pages != self.promised_pages or self.promised_blocks != 0:
            return self._reject("pages")
        self.announced, self.closed = None, True
        if self.ending.type == MsgType.PASS_END:
            return [("pass", self.pass_no)]
        kind = "final" if self.ending.type == MsgType.COMPLETE else "postcopy_complete"
        return [(kind, *message_key(self.ending))]


# --------------------------------------------------------------------------
# The machine

REFUSED = object()  # what _compare returns when the engine refused, as it should
RESUMED_BODY = {"digest": "d", "storage_token": "t", "final_pages_s": 0.0, "digest_check_s": 0.0, "resume_s": 0.0,
                "disk_digest": None, "disk_sync_s": 0.0}
POSTCOPY_DONE_BODY = {"digest": "d", "blocktime_s": 0.0, "vcpu_blocktime_s": [0.0], "pages_requested": 0,
                      "requested_placed": 0, "last_page_s": 0.0, "cpu_s": 0.0}

COUNTS = st.one_of(
    st.lists(st.integers(-2, 6), max_size=4),
    st.lists(st.one_of(st.booleans(), st.floats(-2, 6), st.text(max_size=2), st.none(), st.integers(2**63, 2**80)),
             min_size=1, max_size=3),
    st.one_of(st.integers(-1, 3), st.none(), st.text(max_size=3), st.dictionaries(st.text(max_size=2),
                                                                                   st.integers(0, 3), max_size=2)),
    st.just(ABSENT),
)
# an offset from the right value, no integer, or no value
PASS_VALUES = st.one_of(st.integers(-2, 3), st.sampled_from([None, True, False, "0", 0.0, 1.5, [0], {}, ABSENT]))
HEADER_CHANGES = st.one_of(st.integers(-3, 3), st.sampled_from([PAGE_SIZE, -PAGE_SIZE, 1 << 31, 1 << 32, 1 << 63]))
MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2), st.integers(0, 4096), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2), st.integers(0, 64)),
    st.tuples(st.just("append"), st.integers(0, 2), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("count"), st.sampled_from([0, 1, 2, 4, 5])),
)
GARBAGE = st.one_of(
    st.lists(st.binary(max_size=64), max_size=5),
    # past the magic and version checks, into the field checks
    st.tuples(st.binary(min_size=38, max_size=38).map(lambda tail: MAGIC + struct.pack("<H", VERSION) + tail),
              st.binary(max_size=16), st.binary(max_size=64)).map(list),
    st.sampled_from([None, b"", "text", 7, [None, b"", b""], ["a", "b", "c"], (b"", b"", b"")]),
)
CHANNELS = st.one_of(st.just(CONTROL), st.integers(-2, 4))
ADVANCE_TARGETS = ("SETUP", "PRECOPY", "PRECOPY-data", "PASS_SYNC-pending", "PASS_SYNC-closed", "BLACKOUT",
                   "BLACKOUT-data", "BLACKOUT-device", "VERIFY-pending", "VERIFY-closed", "RESUMED",
                   "POSTCOPY_SWITCH", "POSTCOPY_SWITCH-device", "POSTCOPY_RESUMING", "POSTCOPY_RESUMED", "POSTCOPY",
                   "POSTCOPY-data", "POSTCOPY_SYNC-pending", "POSTCOPY_SYNC-closed", DONE)  # see DestinationMachine._at
REWIND = st.sampled_from([True, True, True, False])
CALLS = ("accept", "acknowledge", "resumed", "announce", "page_request", "postcopy_done", "refuse", "abort",
         "heartbeat")  # DestinationMachine._call
PASS_ANSWERS = {"PASS_SYNC": "acknowledge", "VERIFY": "resumed", "POSTCOPY_SYNC": "postcopy_done"}  # what each awaits
# where a migration turns hostile (None: never); twice as often where the most rules apply, not where no message
# but HEARTBEAT and ABORT may arrive
FEW_RULES_APPLY = ("SETUP", "RESUMED", "POSTCOPY_RESUMING", "POSTCOPY_RESUMED", DONE)
HOSTILE_AT = st.sampled_from((None, "IDLE", *FEW_RULES_APPLY,
                              *2 * [t for t in ADVANCE_TARGETS if t not in FEW_RULES_APPLY]))


def hostile(**strategies):
    """A rule that does what a correct source or caller would not: once start_hostilities ran, until FAILED.

    Mostly (`rewind`), a step that failed the engine is then undone, so that the next one meets the
    engine where this one did; else poke_the_failed_engine checks that the engine stays failed.
    """
    def decorate(function):
        @functools.wraps(function)
        def run(self, rewind, **kwargs):
            accepted, diverged = len(self.log), self.diverged
            self.diverged = True  # the honest source's view of the engine no longer holds
            function(self, **kwargs)
            if rewind and self.model.state == FAILED:
                self._rewind(self.log[:accepted], diverged)
        return precondition(lambda self: self.hostile and self.model.state != FAILED)(
            rule(rewind=REWIND, **strategies)(run))
    return decorate


class DestinationMachine(RuleBasedStateMachine):
    """An honest source, a hostile one, and the engine's caller, against one DestinationProtocol."""

    @initialize(channels=st.integers(1, 3), n_pages=st.integers(4, 40), batch_pages=st.integers(1, 4),
                device_state_bytes=st.sampled_from([0, 16, 100]), passes=st.integers(0, 2), hostile_at=HOSTILE_AT)
    def negotiate(self, channels, n_pages, batch_pages, device_state_bytes, passes, hostile_at):
        self.scenario = Scenario(GuestSpec(n_pages * PAGE_SIZE, page_size=PAGE_SIZE), WorkloadSpec(),
                                 MigrationOptions(channels=channels, batch_pages=batch_pages,
                                                  device_state_bytes=device_state_bytes, postcopy=True))
        self.passes = passes
        self._begin(hostile_at)

    def _begin(self, hostile_at):
        """A new migration: a fresh engine, reference and source; hostile from state `hostile_at` (None: never)."""
        channels = self.scenario.migration.channels
        self.source = SourceProtocol(channels, PAGE_SIZE, n_pages=self.scenario.guest.n_pages)  # reads PAGE_REQUEST
        self.in_flight = [deque() for _ in range(channels)]
        self.device_state_sent = False
        self.pages_sent = Counter()  # by the honest source, per pass
        self.hostile_at, self.hostile, self.diverged = hostile_at, False, False
        self.history = {}  # the last frames delivered, per channel
        self._new_destination()

    def _new_destination(self):
        channels = self.scenario.migration.channels
        self.engine = DestinationProtocol()
        self.model = Reference(self.scenario)
        self.log = []  # what the engine accepted: ("hello", frames), (channel, frames) or ("call", name)
        self.replaying = False
        self.failed = False
        self.acks = self.final_completes = self.sent_seq = 0
        self.pass_completes = Counter()
        self.counted = None  # the counts of the last PASS_END the engine accepted
        self.delivered = [0] * channels  # DataPages the engine yielded this pass, per channel

    def _rewind(self, log, diverged):
        """Undo a step that failed the engine: a new engine and reference are given what was accepted before."""
        self._new_destination()
        self.replaying = True  # the source heard the replies once already
        for what, argument in log:
            if what == "hello":
                self._receive_hello(argument)
            elif what == "call":
                self._call(argument)
            else:
                self._receive(what, argument)
        self.replaying, self.diverged = False, diverged
        assert self.log == log and self.model.state != FAILED

    @precondition(lambda self: self.engine.finished)
    @rule(hostile_at=HOSTILE_AT)
    def new_migration(self, hostile_at):
        """The engine is done with: check how the migration ended, then the next one."""
        self._check_ending()
        self._begin(hostile_at)

    # comparing ------------------------------------------------------------------
    def _compare(self, expected, call, local=False):
        """Run `call` on the engine; its result if the reference `expected` it, REFUSED if both refuse."""
        try:
            result = call()
        except ProtocolError as error:
            assert isinstance(expected, Rejected), f"the engine refused what the rules allow: {error!r}"
            wanted = LocalProtocolError if local else RemoteProtocolError
            # a caller's wrong channel may be either side's error
            assert isinstance(error, wanted) or expected.stage == "channel", f"{type(error).__name__}: {error}"
            assert error.field, "the error names no field"
            assert self.engine.state == FAILED, f"{error!r} left the engine in {self.engine.state}"
            return REFUSED
        # any other exception escapes: a bug, and this test fails on it
        if isinstance(expected, Rejected):
            raise AssertionError(f"the engine accepted what the rules refuse ({expected.stage}): {result!r:.300}")
        return result

    def _receive(self, channel, frames):
        """Deliver `frames` on `channel` (CONTROL or a data channel number) to the engine and the reference."""
        self.history[channel] = frames
        if channel == CONTROL:
            expected = self.model.control(frames)
            events = self._compare(expected, lambda: self.engine.receive_control(frames))
        else:
            expected = self.model.data(channel, frames)
            events = self._compare(expected, lambda: self.engine.receive_data(channel, frames))
        if events is REFUSED:
            return
        self.log.append((channel, frames))
        assert [summary(event) for event in events] == expected
        if channel == CONTROL and self.model.last.type == MsgType.PASS_END:
            self.counted = list(self.model.last.body["messages"])
        self._check_events(events)

    def _check_events(self, events):
        """What any event must satisfy, whatever the reference says."""
        n_pages = self.scenario.guest.n_pages
        for event in events:
            if type(event) is DataPages:
                message = event.message
                assert 0 <= event.channel < self.model.channels, event.channel
                assert message.type in DATA_TYPES and message.pass_no == self.engine.pass_no
                pages = message.page_numbers
                assert pages.size == message.page_count >= 1 and int(pages.max()) < n_pages
                self.delivered[event.channel] += 1
            elif type(event) is Missing:
                message = event.message
                assert message.type == MsgType.MISSING and message.pass_no == self.engine.pass_no
                pages = message.page_numbers.astype(np.int64)
                assert pages.size == message.page_count and (np.diff(pages) > 0).all()
                assert pages.size == 0 or int(pages.max()) < n_pages
            elif type(event) in (PassComplete, FinalPassComplete, PostcopyComplete):
                if type(event) is PassComplete:
                    counted = self.counted
                    assert event.pass_no == self.engine.pass_no
                    self.pass_completes[event.pass_no] += 1
                else:  # pre-copy's last pass, or post-copy's
                    counted = (event.complete if type(event) is FinalPassComplete else event.end).body["messages"]
                    self.final_completes += 1
                assert self.delivered == counted, f"{event} after {self.delivered} messages, counted {counted}"
                self.delivered = [0] * len(self.delivered)

    def _call(self, name):
        """Call the engine as its caller would (`name`), check what it sends, and pass it to the source."""
        engine, model, channels = self.engine, self.model, self.scenario.migration.channels
        was_done, pass_no = model.state == DONE, engine.pass_no
        expect, call, msg_type = {
            "accept": (model.accept, lambda: engine.accept(self.scenario, [5001 + c for c in range(channels)]),
                       MsgType.ACCEPT),
            "acknowledge": (model.acknowledge, lambda: engine.acknowledge_pass(0, 0.0), MsgType.PASS_END),
            "resumed": (model.resumed, lambda: engine.resumed(RESUMED_BODY), MsgType.RESUMED),
            "announce": (model.announce, lambda: engine.announce("here"), MsgType.ANNOUNCE),
            "page_request": (model.page_request, lambda: engine.page_request(PAGE_LISTS[MsgType.PAGE_REQUEST]),
                             MsgType.PAGE_REQUEST),
            "postcopy_done": (model.postcopy_done, lambda: engine.postcopy_done(POSTCOPY_DONE_BODY),
                              MsgType.POSTCOPY_DONE),
            "refuse": (model.refuse, lambda: engine.refuse("no"), MsgType.REFUSE),
            "heartbeat": (model.heartbeat, engine.heartbeat, MsgType.HEARTBEAT),
            "abort": (model.abort, lambda: engine.abort("bye"), MsgType.ABORT),
        }[name]
        frames = self._compare(expect(), call, local=True)
        if frames is REFUSED:
            return
        self.log.append(("call", name))
        if name == "abort" and was_done:
            assert frames is None, "an ABORT after the migration completed"
            return
        message = model.decoder.decode(frames)  # negotiated: a PAGE_REQUEST is a page list
        assert message.type == msg_type and message.seq == self.sent_seq, (message.type, message.seq)
        self.sent_seq += 1
        if name == "acknowledge":
            self.acks += 1
            assert message.body["pass"] == pass_no == engine.pass_no - 1
        if name == "page_request":
            assert message.pass_no == pass_no and message.page_numbers.tolist() == list(PAGE_LISTS[msg_type])
        if not (self.source.finished or self.replaying):
            try:
                self.source.receive(wire(frames))
            except ProtocolError:
                if not self.diverged:
                    raise  # the honest source refuses what the destination sent

    @invariant()
    def engine_agrees_with_the_reference(self):
        assert self.engine.state == self.model.state
        assert self.engine.finished == (self.model.state in FINAL_STATES)

    @invariant()
    def failed_stays_failed(self):
        if self.failed:
            assert self.engine.state == FAILED
        self.failed = self.engine.state == FAILED

    @invariant()
    def passes_advance_only_by_acknowledging(self):
        assert self.engine.pass_no == self.acks == self.model.pass_no

    @invariant()
    def each_pass_completes_once(self):
        assert set(self.pass_completes.values()) <= {1}, self.pass_completes
        assert set(self.pass_completes) <= set(range(self.engine.pass_no + 1))
        assert self.final_completes <= 1

    def _check_ending(self):
        if not self.diverged and self.model.state == DONE:
            assert self.final_completes == 1
            assert self.pass_completes == Counter(range(self.engine.pass_no))

    def teardown(self):
        if hasattr(self, "model"):
            self._check_ending()

    # the honest source and caller ---------------------------------------------------
    def _alive(self):
        return self.model.state != FAILED

    @precondition(lambda self: self.model.state == "IDLE" and self.source.state == "IDLE")
    @rule()
    def hello(self):
        self._receive_hello(wire(self.source.hello(self.scenario.to_dict(), "fuzz")))

    def _receive_hello(self, frames):
        """check_hello, which changes no state, then receive_hello if it passed, as the receiver does."""
        state = self.engine.state
        if not self.model.check_hello(frames):
            with pytest.raises(RemoteProtocolError):
                self.engine.check_hello(frames)
            assert self.engine.state == state, "check_hello changed the state"
            return
        message = self.engine.check_hello(frames)
        assert self.engine.state == state, "check_hello changed the state"
        if message.type == MsgType.CHECK:  # answered outside the session (verdict), as the receiver does
            return
        result = self._compare(self.model.receive_hello(message), lambda: self.engine.receive_hello(message))
        assert result in (None, REFUSED)
        if result is None:
            self.log.append(("hello", frames))

    @precondition(lambda self: self.model.state == "SETUP")
    @rule()
    def accept(self):
        self._call("accept")

    def _sending(self):
        """The source may send data now (the final pages come before DEVICE_STATE; post-copy's after ANNOUNCE)."""
        state = self.source.state
        return state in ("PRECOPY", "POSTCOPY") or state == "BLACKOUT" and not self.device_state_sent

    def _may_begin_postcopy(self):
        """Post-copy's pass is never pass 0, and the source sends nothing of it before POSTCOPY (data of the pass
        could reach the destination after POSTCOPY, where none may come until ANNOUNCE)."""
        return self.source.state == "PRECOPY" and self.source.pass_no >= 1 and not any(self.source.messages)

    @precondition(lambda self: self._alive() and self._sending() and sum(map(len, self.in_flight)) < 8)
    @rule(data=st.data())
    def send_data(self, data):
        guest, batch_pages = self.scenario.guest, self.scenario.migration.batch_pages
        numbers = data.draw(st.lists(st.integers(0, guest.n_pages - 1), min_size=1, max_size=batch_pages, unique=True))
        batch = make_batch(data.draw(st.sampled_from(DATA_KINDS)), sorted(numbers), guest.page_size)
        self.pages_sent[self.source.pass_no] += batch.pages
        channel, frames = self.source.data(batch)
        self.in_flight[channel].append(wire(frames))

    @precondition(lambda self: self._alive() and any(self.in_flight))
    @rule(data=st.data())
    def deliver_data(self, data):
        channel = data.draw(st.sampled_from([c for c, queue in enumerate(self.in_flight) if queue]))
        self._receive(channel, self.in_flight[channel].popleft())

    @precondition(lambda self: self._alive() and self.source.state == "PRECOPY" and self.source.pass_no < self.passes)
    @rule()
    def pass_end(self):
        self._receive(CONTROL, wire(self.source.pass_end(self.pages_sent[self.source.pass_no])))

    @precondition(lambda self: self.model.state == "PASS_SYNC" and self.model.closed)
    @rule()
    def acknowledge(self):
        self._call("acknowledge")

    @precondition(lambda self: self._alive() and self.source.state == "PRECOPY")
    @rule()
    def switchover(self):
        self._receive(CONTROL, wire(self.source.switchover("converged")))

    @precondition(lambda self: self._alive() and self._may_begin_postcopy())
    @rule()
    def postcopy(self):
        self._receive(CONTROL, wire(self.source.postcopy("max-passes", "dd", "t")))

    @precondition(lambda self: self._alive() and self.source.state in ("BLACKOUT", "POSTCOPY_SWITCH")
                  and not self.device_state_sent)
    @rule()
    def device_state(self):
        self.device_state_sent = True
        self._receive(CONTROL, wire(self.source.device_state(bytes(self.scenario.migration.device_state_bytes))))

    @precondition(lambda self: self._alive() and self.source.state == "BLACKOUT" and self.device_state_sent)
    @rule()
    def complete(self):
        self._receive(CONTROL, wire(self.source.complete(self.pages_sent[self.source.pass_no], "d", "dd", "t")))

    @precondition(lambda self: self._alive() and self.source.state == "POSTCOPY_SWITCH" and self.device_state_sent)
    @rule(data=st.data())
    def missing(self, data):
        """MISSING lists any pages, none included (which pages then cross is the receiver's business)."""
        pages = data.draw(st.lists(st.integers(0, self.scenario.guest.n_pages - 1), unique=True), label="missing")
        self._receive(CONTROL, wire(self.source.missing(sorted(pages))))

    @precondition(lambda self: self._alive() and self.source.state == "POSTCOPY")
    @rule()
    def postcopy_end(self):
        self._receive(CONTROL, wire(self.source.postcopy_end(self.pages_sent[self.source.pass_no], "d")))

    @precondition(lambda self: self.model.state == "VERIFY" and self.model.closed
                  or self.model.state == "POSTCOPY_RESUMING")
    @rule()
    def resumed(self):
        self._call("resumed")

    @precondition(lambda self: self.model.state in ("RESUMED", "POSTCOPY_RESUMED"))
    @rule()
    def announce(self):
        self._call("announce")

    @precondition(lambda self: self.model.state in ("POSTCOPY", "POSTCOPY_SYNC"))
    @rule()
    def page_request(self):
        self._call("page_request")

    @precondition(lambda self: self.model.state == "POSTCOPY_SYNC" and self.model.closed)
    @rule()
    def postcopy_done(self):
        self._call("postcopy_done")

    @precondition(lambda self: self.model.state not in ("IDLE", *FINAL_STATES))
    @rule(sender=st.sampled_from(["source", "destination"]))
    def heartbeat(self, sender):
        if sender == "destination":
            self._call("heartbeat")
        elif not self.source.finished:
            # The sender sends none today, but the destination must take them; _control keeps the source's seq.
            # Not before HELLO: that is message 0 (receive_hello wants seq 0), and no migration exists yet.
            self._receive(CONTROL, wire(self.source._control(MsgType.HEARTBEAT, self.source.pass_no, {})))

    def _at(self, target):
        """Whether the destination is at `target`: a state; "-closed": all counted data arrived; "-pending": some
        has not; "-data": some data of the pass arrived; "-device": DEVICE_STATE arrived."""
        model = self.model
        state, _, detail = target.partition("-")
        if model.state != state:
            return False
        if detail == "closed":
            return model.closed
        if detail == "pending":
            return model.announced is not None
        if detail == "device":
            return model.device_state
        return any(model.received) if detail == "data" else True

    def _advance(self, target, data):
        """Take honest steps, the source's choices drawn, until the destination is at `target` (ADVANCE_TARGETS)."""
        wants_data, wants_pending = target.endswith("-data"), target.endswith("-pending")
        messages_per_pass = data.draw(st.integers(1 if wants_data or wants_pending else 0, 3),
                                      label="messages per pass")
        # out of pre-copy by post-copy to its states, by a switch-over to the blackout's, either way to DONE
        postcopy = target.startswith("POSTCOPY") or target == DONE and data.draw(st.booleans(), label="post-copy")
        final_pass = max(self.passes, 1) if postcopy else self.passes  # post-copy's pass is never pass 0
        for _ in range(200):
            model, source_state = self.model, self.source.state
            if self._at(target) or model.state in FINAL_STATES or self.diverged:
                return
            sending = self._sending()
            if any(self.in_flight) and not (wants_pending and sending) and (
                    wants_data or model.state in ("PASS_SYNC", "VERIFY", "POSTCOPY_SYNC") or data.draw(st.booleans())):
                self.deliver_data(data)
            elif postcopy and self.source.pass_no >= final_pass and self._may_begin_postcopy():
                self.postcopy()
            elif sending and sum(self.source.messages) < messages_per_pass:
                self.send_data(data)
            elif model.state == "IDLE":
                self.hello()
            elif model.state == "SETUP":
                self.accept()
            elif model.state == "PASS_SYNC" and model.closed:
                self.acknowledge()
            elif model.state == "VERIFY" and model.closed or model.state == "POSTCOPY_RESUMING":
                self.resumed()
            elif model.state in ("RESUMED", "POSTCOPY_RESUMED"):
                self.announce()
            elif model.state == "POSTCOPY_SYNC" and model.closed:
                self.postcopy_done()
            elif source_state == "PRECOPY" and self.source.pass_no < final_pass:
                self.pass_end()
            elif source_state == "PRECOPY":
                self.switchover()
            elif source_state in ("BLACKOUT", "POSTCOPY_SWITCH") and not self.device_state_sent:
                self.device_state()
            elif source_state == "BLACKOUT":
                self.complete()
            elif source_state == "POSTCOPY_SWITCH":
                self.missing(data)
            elif source_state == "POSTCOPY":
                self.postcopy_end()
            else:
                raise AssertionError(f"an honest migration is stuck: destination {model.state}, source {source_state}")
        raise AssertionError(f"an honest migration did not reach {target}")

    def _peaceful(self):
        """An honest migration so far, and not one waiting to turn hostile (start_hostilities drives that one)."""
        return not self.diverged and self.hostile_at is None and self.model.state not in FINAL_STATES

    @precondition(lambda self: self._peaceful())
    @rule(to=st.sampled_from(ADVANCE_TARGETS), data=st.data())
    def advance(self, to, data):
        """Drive the migration on to state `to`, so that what follows meets the engine there."""
        self._advance(to, data)

    @precondition(lambda self: self._peaceful())
    @rule(data=st.data())
    def finish(self, data):
        """An honest migration ends in DONE, with one FinalPassComplete (or PostcopyComplete) and one PassComplete
        per earlier pass."""
        self._advance(DONE, data)
        assert self.model.state == self.source.state == DONE and self.final_completes == 1
        assert self.pass_completes == Counter(range(self.engine.pass_no))

    # the hostile source and caller ----------------------------------------------------
    @precondition(lambda self: self.model.state == FAILED)
    @rule(kind=st.sampled_from(TEMPLATE_KINDS), channel=CHANNELS, name=st.sampled_from(CALLS))
    def poke_the_failed_engine(self, kind, channel, name):
        """A failed engine refuses every message (a valid one here) and every call but abort."""
        self._receive(channel, self._template(kind, channel))
        self._call(name)

    @precondition(lambda self: self.hostile_at is not None and not self.hostile)
    @rule(data=st.data())
    def start_hostilities(self, data):
        """Drive the migration to the state drawn for it, then let the hostile rules in."""
        if self.hostile_at != "IDLE":
            self._advance(self.hostile_at, data)
        self.hostile = True

    def _template(self, kind, channel=CONTROL):
        """Valid frames of `kind` (TEMPLATE_KINDS) with the seq and pass the engine expects next on `channel`."""
        model, options = self.model, self.scenario.migration
        if channel == CONTROL:
            seq = model.control_seq
        else:
            seq = model.data_seq[channel] if 0 <= channel < model.channels else 0
        if kind in DATA_KINDS:
            batch = make_batch(kind, range(min(2, options.batch_pages)), PAGE_SIZE)
            return wire(batch.frames(seq, model.pass_no, PAGE_SIZE))
        msg_type, pass_no = MsgType[kind], model.pass_no
        if msg_type == MsgType.DEVICE_STATE:
            return wire(encode_device_state(seq, pass_no, bytes(options.device_state_bytes)))
        if msg_type in PAGE_LISTS:
            return wire(encode_page_list(msg_type, seq, pass_no, PAGE_LISTS[msg_type]))
        counts = list(model.received)  # closes the pass once its data arrived
        body = {
            MsgType.HELLO: {"protocol": VERSION, "session": "fuzz", "scenario": self.scenario.to_dict()},
            MsgType.PASS_END: {"pass": pass_no, "messages": counts, "pages": model.pages, "blocks": 0},
            MsgType.COMPLETE: {"pass": pass_no, "messages": counts, "pages": model.pages, "blocks": 0, "digest": "d",
                               "device_state_digest": "dd", "storage_token": "t"},
            MsgType.SWITCHOVER: {"pass": pass_no, "reason": "fuzz"},
            MsgType.POSTCOPY: {"pass": pass_no, "reason": "fuzz", "device_state_digest": "dd", "storage_token": "t"},
            MsgType.POSTCOPY_END: {"pass": pass_no, "messages": counts, "pages": model.pages, "digest": "d"},
            MsgType.ABORT: {"reason": "fuzz"},
            MsgType.REFUSE: {"reason": "fuzz"},
            MsgType.ACCEPT: {"data": [0]},
            MsgType.RESUMED: RESUMED_BODY,
            MsgType.POSTCOPY_DONE: POSTCOPY_DONE_BODY,
            MsgType.ANNOUNCE: {"location": "x"},
        }.get(msg_type, {})
        return wire(encode_control(msg_type, seq, pass_no, body))

    def _data_channel(self, channel):
        return channel % max(1, self.model.channels)

    @hostile(kind=st.sampled_from(TEMPLATE_KINDS), channel=CHANNELS)
    def message_on_any_channel(self, kind, channel):
        """Out of order (COMPLETE before ACCEPT, a second HELLO...), control on data channels, data on control."""
        self._receive(channel, self._template(kind, channel))

    @hostile(kind=st.sampled_from(DATA_KINDS), channel=st.integers(0, 2),
             on_a_complete_channel=st.sampled_from([True, True, False]))
    def extra_data(self, kind, channel, on_a_complete_channel):
        """A data message the source did not count, at the right seq and pass: with PASS_END or COMPLETE
        pending, preferably on a channel that delivered its count (while another has not)."""
        channel = self._data_channel(channel)
        model = self.model
        if on_a_complete_channel and model.announced is not None:
            complete = [c for c in range(model.channels) if model.received[c] == model.announced[c]]
            channel = complete[0] if complete else channel
        self._receive(channel, self._template(kind, channel))

    @hostile(kind=st.sampled_from(DATA_KINDS), channel=st.integers(0, 2),
             change=st.sampled_from([-1, 1, 2, (1 << 32) - 1]))
    def data_of_another_pass(self, kind, channel, change):
        """A data message of an acknowledged pass, or of one to come."""
        channel = self._data_channel(channel)
        self._receive(channel, rewrite_header(self._template(kind, channel), "pass_no", change))

    @hostile(kind=st.sampled_from(CLOSER_KINDS), counts=COUNTS)
    def wrong_counts(self, kind, counts):
        frames = self._template(kind)
        body = dict(Decoder().decode(frames).body, messages=counts)
        if counts is ABSENT:
            del body["messages"]
        self._receive(CONTROL, wire(encode_control(MsgType[kind], self.model.control_seq, self.model.pass_no, body)))

    def _closing_body(self, kind, of):
        """A PASS_END, COMPLETE or POSTCOPY_END body counting what arrived (`of` "arrived") or what the source sent
        ("sent")."""
        body = Decoder().decode(self._template(kind)).body
        if of == "sent":
            body.update(messages=list(self.source.messages), pages=self.pages_sent[self.source.pass_no])
        return body

    @hostile(kind=st.sampled_from(CLOSER_KINDS), of=st.sampled_from(["arrived", "sent"]),
             value=PASS_VALUES, negative=st.sampled_from([None, -1]))
    def wrong_pages(self, kind, of, value, negative):
        """body.pages off by a little (refused once the counted messages arrived), negative, not an integer."""
        body = self._closing_body(kind, of)
        if value is ABSENT:
            del body["pages"]
        elif negative is not None:
            body["pages"] = negative
        elif is_int(value):
            body["pages"] += value
        else:
            body["pages"] = value
        self._receive(CONTROL, wire(encode_control(MsgType[kind], self.model.control_seq, self.model.pass_no, body)))

    @hostile(kind=st.sampled_from(CLOSER_KINDS), offsets=st.lists(st.integers(-2, 2), max_size=4))
    def counts_near_received(self, kind, offsets):
        """Counts off by a little: fewer than already received, negative, one channel too few or many."""
        received = self.model.received + [0] * max(0, len(offsets) - len(self.model.received))
        counts = [got + offset for got, offset in zip(received, offsets)]
        body = dict(Decoder().decode(self._template(kind)).body, messages=counts)
        self._receive(CONTROL, wire(encode_control(MsgType[kind], self.model.control_seq, self.model.pass_no, body)))

    @hostile(kind=st.sampled_from([t.name for t in PASS_CARRIERS]), value=PASS_VALUES)
    def wrong_pass_in_body(self, kind, value):
        """Another pass (an acknowledged one, a future one) or no pass at all, in body.pass."""
        body = Decoder().decode(self._template(kind)).body
        if value is ABSENT:
            del body["pass"]
        else:
            body["pass"] = self.model.pass_no + value if is_int(value) else value
        self._receive(CONTROL, wire(encode_control(MsgType[kind], self.model.control_seq, self.model.pass_no, body)))

    @hostile(name=st.sampled_from(["device_state_digest", "storage_token"]),
             value=st.sampled_from([ABSENT, None, 0, True, ["dd"], {}, ""]))
    def postcopy_body(self, name, value):
        """POSTCOPY whose device_state_digest or storage_token is no string (or the empty one, a string)."""
        body = Decoder().decode(self._template("POSTCOPY")).body
        if value is ABSENT:
            del body[name]
        else:
            body[name] = value
        self._receive(CONTROL, wire(encode_control(MsgType.POSTCOPY, self.model.control_seq, self.model.pass_no,
                                                   body)))

    @hostile(kind=st.sampled_from(TEMPLATE_KINDS), channel=CHANNELS, field=st.sampled_from(HEADER_FIELDS),
             change=HEADER_CHANGES)
    def lying_header(self, kind, channel, field, change):
        """raw_len, encoded_len, page_count, pass_no, seq (gaps) or any other header field changed."""
        if channel != CONTROL:
            channel = self._data_channel(channel)
        self._receive(channel, rewrite_header(self._template(kind, channel), field, change))

    @hostile(kind=st.sampled_from(DATA_KINDS + ("MISSING",)), channel=st.integers(0, 2),
             numbers=st.lists(st.one_of(st.integers(0, 48), st.integers(0, 2**32 - 1)), max_size=4))
    def lying_page_frame(self, kind, channel, numbers):
        """A page-numbers frame that disagrees with page_count, names pages out of range, or (MISSING's) pages
        out of order or twice."""
        channel = CONTROL if kind == "MISSING" else self._data_channel(channel)
        frames = self._template(kind, channel)
        frames[1] = np.asarray(numbers, dtype=protocol.PAGE_NUMBER_DTYPE).tobytes()
        self._receive(channel, frames)

    @hostile(kind=st.sampled_from(DATA_KINDS), channel=st.integers(0, 2), count=st.integers(1, 4),
             beyond=st.one_of(st.integers(0, 3), st.just(2**31)))
    def pages_out_of_range(self, kind, channel, count, beyond):
        """A well-formed message whose last page is n_pages + beyond."""
        channel = self._data_channel(channel)
        count = min(count, self.scenario.migration.batch_pages)
        last = self.scenario.guest.n_pages + beyond
        batch = make_batch(kind, range(last - count + 1, last + 1), PAGE_SIZE)
        self._receive(channel, wire(batch.frames(self.model.data_seq[channel] if self.model.channels else 0,
                                                 self.model.pass_no, PAGE_SIZE)))

    @hostile(change=st.sampled_from([0, 0, -1, 1, 2, -3, 4 * PAGE_SIZE]))
    def device_state_of_size(self, change):
        """DEVICE_STATE of the wrong size, or of the right one (a second one is refused)."""
        size = max(0, self.scenario.migration.device_state_bytes + change)
        self._receive(CONTROL, wire(encode_device_state(self.model.control_seq, self.model.pass_no, bytes(size))))

    @hostile(pages=st.lists(st.integers(0, 3), unique=True), change=st.sampled_from([0, 0, -1, 1]))
    def missing_at_any_time(self, pages, change):
        """A MISSING (of pages < 4 <= n_pages) before DEVICE_STATE, a second one, outside post-copy, or (`change`)
        of another pass: the one control message whose header pass_no counts."""
        frames = wire(encode_page_list(MsgType.MISSING, self.model.control_seq, self.model.pass_no, sorted(pages)))
        self._receive(CONTROL, rewrite_header(frames, "pass_no", change))

    @hostile(channel=CHANNELS)
    def replay(self, channel):
        if channel in self.history:
            self._receive(channel, self.history[channel])

    @hostile(kind=st.sampled_from(TEMPLATE_KINDS), channel=CHANNELS, mutation=MUTATIONS)
    def mutated(self, kind, channel, mutation):
        if channel != CONTROL:
            channel = self._data_channel(channel)
        self._receive(channel, mutate(self._template(kind, channel), mutation))

    @hostile(frames=GARBAGE, channel=CHANNELS)
    def garbage(self, frames, channel):
        self._receive(channel, frames)

    @hostile(kind=st.sampled_from(TEMPLATE_KINDS), mutation=st.one_of(st.none(), MUTATIONS),
             garbage=st.one_of(st.none(), GARBAGE))
    def hello_of_anything(self, kind, mutation, garbage):
        """The receiver's path into a migration (check_hello, receive_hello), given any message or none."""
        frames = self._template(kind) if garbage is None else garbage
        self._receive_hello(frames if mutation is None or garbage is not None else mutate(frames, mutation))

    @hostile(cancelled=st.sampled_from([ABSENT, True, False, 1, "true", None]))
    def source_aborts(self, cancelled):
        """ABORT from the source (cancelled: by its user only if `"cancelled": true`)."""
        body = {"reason": "fuzz"} if cancelled is ABSENT else {"reason": "fuzz", "cancelled": cancelled}
        self._receive(CONTROL, wire(encode_control(MsgType.ABORT, self.model.control_seq, self.model.pass_no, body)))

    @hostile(seq=st.sampled_from([0, 1, 7]))
    def hello_again(self, seq):
        frames = wire(encode_control(MsgType.HELLO, seq, 0, {"protocol": VERSION, "scenario": {}}))
        self._receive_hello(frames)

    @hostile(name=st.sampled_from(CALLS))
    def caller_out_of_order(self, name):
        """The engine's own caller at the wrong time (or, by chance, the right one)."""
        self._call(name)

    @precondition(lambda self: self.model.state in PASS_ANSWERS)
    @hostile()
    def caller_answers_early(self):
        """The call that answers PASS_END, COMPLETE or POSTCOPY_END, maybe before all the data it counted arrived."""
        self._call(PASS_ANSWERS[self.model.state])


def test_destination_protocol_against_the_reference():
    run_state_machine_as_test(DestinationMachine, settings=FUZZ)
