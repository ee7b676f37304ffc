"""The migration protocol without I/O: frames in, events out; calls in, frames out.

Rules:
* An engine opens no sockets and touches no guest memory; its caller (Source,
  Destination) moves the frames and acts on the events.
* Every message sent or received is an event of the Session table
  (emulator.states); an illegal one raises LocalProtocolError (ours) or
  RemoteProtocolError (the peer's), naming the field. Any error moves the side
  to FAILED.
* Sequence numbers count messages from 0: one count per direction on the
  control socket, one per data channel.
* Data messages carry the current pass number; PASS_END, SWITCHOVER and
  COMPLETE carry it in body "pass". PASS_END and COMPLETE promise one message
  count per data channel: the pass is complete when each channel delivered
  exactly that many, never more.
* The source sends data round-robin over its channels and waits for the
  destination's PASS_END of the same pass before the next pass.
* Per data message the work is O(1): a seq check, a pass check, a count.
"""

from dataclasses import dataclass

from emulator.protocol import (VERSION, Decoder, LocalProtocolError, Message, MsgType, RemoteProtocolError,
                               encode_control, encode_device_state, expect_seq)
from emulator.states import DESTINATION, DONE, FAILED, SOURCE, Session

_DATA = (MsgType.PAGES, MsgType.ZERO_PAGES)
_PASS_CARRIERS = (MsgType.PASS_END, MsgType.COMPLETE, MsgType.SWITCHOVER)


@dataclass(frozen=True, slots=True)
class DataPages:
    """A data message of the current pass, to apply."""
    channel: int
    message: Message


@dataclass(frozen=True, slots=True)
class PassComplete:
    """Every message PASS_END promised has arrived: drain, then send acknowledge_pass()."""
    pass_no: int


@dataclass(frozen=True, slots=True)
class FinalPassComplete:
    """Every message COMPLETE promised has arrived: drain, verify, then send resumed()."""
    complete: Message


@dataclass(frozen=True, slots=True)
class Switchover:
    """The blackout began; pass_no is the final pass."""
    pass_no: int


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The vCPU/device state, of the negotiated size."""
    message: Message


@dataclass(frozen=True, slots=True)
class SourceAborted:
    """The source ended the migration (cancelled: by its user)."""
    reason: str
    cancelled: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The source is alive."""


def _abort_body(reason, cancelled):
    return {"reason": reason, "cancelled": True} if cancelled else {"reason": reason}


class _Engine:
    """What both sides share: the Session, the control seqs, failing."""

    def __init__(self, role):
        self.session = Session(role)
        self._sent_seq = 0
        self._peer_seq = 0

    @property
    def state(self):
        return self.session.state

    @property
    def finished(self):
        return self.session.finished

    def _fail(self, field, text):
        self.session.state = FAILED
        return RemoteProtocolError(field, text)

    def _control(self, msg_type, pass_no, body):
        self.session.sent(msg_type)
        return encode_control(msg_type, self._next_seq(), pass_no, body)

    def _next_seq(self):
        seq, self._sent_seq = self._sent_seq, self._sent_seq + 1
        return seq

    def _expect_seq(self, message, expected):
        """The seq after `message`'s, which must be `expected`; a gap fails this side."""
        try:
            return expect_seq(message, expected)
        except RemoteProtocolError:
            self.session.state = FAILED
            raise

    def _receive_control(self, frames, decoder):
        message = decoder.decode(frames)
        self.session.received(message.type)
        self._peer_seq = self._expect_seq(message, self._peer_seq)
        return message


class DestinationProtocol(_Engine):
    """The destination's side of one migration."""

    def __init__(self):
        super().__init__(DESTINATION)
        self.current_pass = 0
        self._decoder = Decoder()
        self._channels = 0
        self._device_state_bytes = 0
        self._data_seq = []
        self._received = []
        self._expected = None  # the counts the closing PASS_END or COMPLETE promised
        self._ending = None

    @staticmethod
    def check_hello(frames):
        """The HELLO in `frames`; RemoteProtocolError if they are anything else (no state changes)."""
        message = Decoder().decode(frames)
        if message.type != MsgType.HELLO:
            raise RemoteProtocolError("type", f"got {message.type.name}, expected HELLO: no migration in progress")
        return message

    def receive_hello(self, hello):
        """Begin the migration `hello` (from check_hello) asks for."""
        self.session.received(hello.type)
        self._peer_seq = self._expect_seq(hello, 0)

    def accept(self, scenario, ports):
        """ACCEPT frames for `scenario` with data endpoints `ports`; data messages are decoded from now on."""
        options, page_size = scenario.migration, scenario.guest.page_size
        frames = self._control(MsgType.ACCEPT, self.current_pass, {"data": ports})
        self._decoder = Decoder(page_size, scenario.guest.n_pages,
                                max(options.batch_pages * page_size, options.device_state_bytes, 1))
        self._channels = options.channels
        self._device_state_bytes = options.device_state_bytes
        self._data_seq = [0] * self._channels
        self._received = [0] * self._channels
        return frames

    def refuse(self, reason):
        """REFUSE frames giving `reason`."""
        return self._control(MsgType.REFUSE, self.current_pass, {"reason": reason})

    def heartbeat(self):
        return self._control(MsgType.HEARTBEAT, self.current_pass, {})

    def receive_data(self, channel, frames):
        """Events for a message on data channel `channel`: DataPages, then maybe (Final)PassComplete."""
        message = self._decoder.decode(frames)
        self.session.received(message.type)
        self._data_seq[channel] = self._expect_seq(message, self._data_seq[channel])
        if message.type not in _DATA:
            raise self._fail("type", f"{message.type.name} on data channel {channel}")
        if message.pass_no != self.current_pass:
            raise self._fail("pass_no", f"got {message.pass_no}, the current pass is {self.current_pass}")
        self._received[channel] += 1
        expected = self._expected
        if expected is None:
            return (DataPages(channel, message),)
        if self._received[channel] > expected[channel]:
            raise self._fail("seq", f"channel {channel} sent more messages than announced for pass "
                                    f"{self.current_pass}")
        return (DataPages(channel, message), *self._closing())

    def receive_control(self, frames):
        """Events for a message on the control socket."""
        message = self._receive_control(frames, self._decoder)
        msg_type = message.type
        if msg_type in _PASS_CARRIERS:
            announced = message.field("pass", int)
            if announced != self.current_pass:
                raise self._fail("body.pass", f"got {announced}, the current pass is {self.current_pass}")
        if msg_type == MsgType.HEARTBEAT:
            return (Heartbeat(),)
        if msg_type == MsgType.SWITCHOVER:
            return (Switchover(self.current_pass),)
        if msg_type == MsgType.DEVICE_STATE:
            if message.raw_len != self._device_state_bytes:
                raise self._fail("raw_len", f"device state of {message.raw_len} bytes, negotiated "
                                            f"{self._device_state_bytes}")
            return (DeviceState(message),)
        if msg_type in (MsgType.PASS_END, MsgType.COMPLETE):
            counts = message.field("messages", list)
            if len(counts) != self._channels or not all(type(c) is int and c >= 0 for c in counts):
                raise self._fail("body.messages", f"expected {self._channels} message counts, got {counts!r:.80}")
            if any(got > want for got, want in zip(self._received, counts)):
                raise self._fail("body.messages", f"announced {counts}, already received {self._received}")
            self._expected, self._ending = counts, message
            return self._closing()
        if msg_type == MsgType.ABORT:
            return (SourceAborted(message.field("reason", str), bool(message.body.get("cancelled"))),)
        raise self._fail("type", f"{msg_type.name} on the control channel")

    def _closing(self):
        """(PassComplete,) or (FinalPassComplete,) once the announced counts arrived, else ()."""
        if self._received != self._expected:
            return ()
        ending, self._expected, self._ending = self._ending, None, None
        self._received = [0] * self._channels
        if ending.type == MsgType.PASS_END:
            return (PassComplete(self.current_pass),)
        return (FinalPassComplete(ending),)

    def acknowledge_pass(self, pages_applied, cpu_s):
        """PASS_END frames acknowledging the complete pass; the next pass begins."""
        self._require_complete()
        frames = self._control(MsgType.PASS_END, self.current_pass,
                               {"pass": self.current_pass, "pages_applied": pages_applied, "cpu_s": cpu_s})
        self.current_pass += 1
        return frames

    def resumed(self, body):
        """RESUMED frames with `body` (digest, timings, storage token)."""
        self._require_complete()
        return self._control(MsgType.RESUMED, self.current_pass, body)

    def announce(self, location):
        return self._control(MsgType.ANNOUNCE, self.current_pass, {"location": location})

    def abort(self, reason, cancelled=False):
        """ABORT frames telling the source why the migration ends; None once it completed."""
        if self.state == DONE:
            return None
        if not self.finished:
            self.session.sent(MsgType.ABORT)
        return encode_control(MsgType.ABORT, self._next_seq(), 0, _abort_body(reason, cancelled))

    def _require_complete(self):
        if self._expected is not None:
            raise LocalProtocolError("type", f"pass {self.current_pass} is not complete: received {self._received}, "
                                             f"announced {self._expected}")


def stranger_abort(reason):
    """ABORT frames for a peer that has no migration here (seq 0: it has no session)."""
    return encode_control(MsgType.ABORT, 0, 0, {"reason": reason})


def stranger_refusal(reason):
    """REFUSE frames for a peer that has no migration here."""
    return encode_control(MsgType.REFUSE, 0, 0, {"reason": reason})


class SourceProtocol(_Engine):
    """The source's side of one migration over `channels` data channels of `page_size`-byte pages."""

    def __init__(self, channels, page_size):
        super().__init__(SOURCE)
        self.pass_no = 0
        self.channels, self.page_size = channels, page_size
        self.messages = [0] * channels  # data messages of this pass, per channel
        self._data_seq = [0] * channels
        self._next_channel = 0
        self._decoder = Decoder()

    def hello(self, scenario_dict, session_id):
        return self._control(MsgType.HELLO, 0, {"protocol": VERSION, "session": session_id,
                                                "scenario": scenario_dict})

    def data(self, batch):
        """(channel, frames) for `batch` (emulator.batches.Batch) of the current pass, round-robin."""
        self.session.sent(batch.kind)
        channel = self._next_channel
        seq = self._data_seq[channel]
        self._data_seq[channel] = seq + 1
        self.messages[channel] += 1
        self._next_channel = (channel + 1) % self.channels
        return channel, batch.frames(seq, self.pass_no, self.page_size)

    def pass_end(self, pages):
        """PASS_END frames with this pass's message counts and `pages`."""
        return self._control(MsgType.PASS_END, self.pass_no,
                             {"pass": self.pass_no, "messages": self.messages, "pages": pages})

    def switchover(self, reason):
        return self._control(MsgType.SWITCHOVER, self.pass_no, {"pass": self.pass_no, "reason": reason})

    def device_state(self, blob):
        self.session.sent(MsgType.DEVICE_STATE)
        return encode_device_state(self._next_seq(), self.pass_no, blob)

    def complete(self, pages, digest, device_state_digest, storage_token):
        """COMPLETE frames closing the final pass."""
        return self._control(MsgType.COMPLETE, self.pass_no, {
            "pass": self.pass_no, "messages": self.messages, "pages": pages, "digest": digest,
            "device_state_digest": device_state_digest, "storage_token": storage_token,
        })

    def abort(self, reason, cancelled=False):
        return self._control(MsgType.ABORT, self.pass_no, _abort_body(reason, cancelled))

    def receive(self, frames):
        """The destination's control message, checked (type, seq, acknowledged pass)."""
        message = self._receive_control(frames, self._decoder)
        if message.type == MsgType.PASS_END:
            if message.field("pass", int) != self.pass_no:
                raise self._fail("body.pass", f"acknowledged pass {message.body['pass']}, expected {self.pass_no}")
            self.pass_no += 1
            self.messages = [0] * self.channels
        return message
