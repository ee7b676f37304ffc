"""The migration protocol without I/O: frames in, events out; calls in, frames out.

Rules:
* An engine opens no sockets and touches no guest memory; its caller (Source,
  Destination) moves the frames and acts on the events.
* Every message sent or received is an event of the Session table
  (emulator.wire.states); an illegal one raises LocalProtocolError (ours) or
  RemoteProtocolError (the peer's), naming the field. Any error moves the side
  to FAILED.
* Sequence numbers count messages from 0: one count per direction on the
  control socket, one per data channel.
* Data messages carry the current pass number; PASS_END, SWITCHOVER and
  COMPLETE carry it in body "pass". PASS_END and COMPLETE promise one message
  count per data channel, and the pages and disk blocks those messages hold:
  the pass is complete when each channel delivered exactly that many, never more.
* A mirrored disk's blocks travel in data messages flagged DISK, in the same
  passes and on the same channels as memory pages.
* The source sends data round-robin over its channels and waits for the
  destination's PASS_END of the same pass before the next pass.
* Per data message the work is O(1): a seq check, a pass check, a count.
* Data channels may be checked on threads of their own (check_data, then data_applied
  once the message is in memory), each channel on one thread, beside the thread that
  owns the control socket: the counts are kept under a lock, and a pass is complete
  when every message announced has been applied, whichever thread saw the last one.
* Post-copy: POSTCOPY (instead of SWITCHOVER) carries the device state's digest and the
  storage token; DEVICE_STATE and the MISSING page list follow, then the destination
  resumes. The missing pages then cross as a pass of their own, closed by
  POSTCOPY_END's counts and digest as COMPLETE closes the final pass; the destination
  asks for pages with PAGE_REQUEST and ends with POSTCOPY_DONE.
* Post-copy recovery: a side whose link broke in post-copy pauses (pause; the source's
  recover() pauses and says RECOVER on its new connection); the control and data seqs
  and the post-copy pass's counts start from 0 on the new connection, so POSTCOPY_END
  counts what crossed since the last RECOVERED. The destination answers RECOVERED and
  the pages it still lacks (still_missing, a MISSING), which the source sends again.
* A CHECK is answered with verdict() outside any session (seq 0): the
  destination's engine never sees it, and nothing of the destination changes.
* A HELLO or CHECK of this protocol version holds its keys and no other
  (check_hello): a peer's unknown key is refused, naming it, not ignored.
"""

import functools
import threading
from dataclasses import dataclass

from emulator.wire.protocol import (VERSION, Decoder, Flags, LocalProtocolError, Message, MsgType, ProtocolError,
                                    RemoteProtocolError, encode_control, encode_device_state, encode_page_list, expect_seq)
from emulator.wire.states import DESTINATION, DONE, FAILED, SOURCE, Session

_DATA = (MsgType.PAGES, MsgType.ZERO_PAGES)
_PASS_CARRIERS = (MsgType.PASS_END, MsgType.COMPLETE, MsgType.SWITCHOVER, MsgType.POSTCOPY, MsgType.POSTCOPY_END,
                  MsgType.RECOVER, MsgType.RECOVERED)
_PASS_CLOSERS = (MsgType.PASS_END, MsgType.COMPLETE, MsgType.POSTCOPY_END)
_NUMBER = (int, float)
_OPENING_KEYS = {MsgType.HELLO: ("protocol", "session", "scenario"), MsgType.CHECK: ("protocol", "scenario")}
_REPLY_FIELDS = {  # what the source reads of each destination message, and its type
    MsgType.ACCEPT: (("data", list),),
    MsgType.REFUSE: (("reason", str),),
    MsgType.PASS_END: (("pass", int), ("cpu_s", _NUMBER)),  # not pages_applied: the source has no use for it
    MsgType.RESUMED: (("digest", str), ("storage_token", str), ("final_pages_s", _NUMBER),
                      ("digest_check_s", _NUMBER), ("resume_s", _NUMBER), ("disk_digest", (str, type(None))),
                      ("disk_sync_s", _NUMBER)),
    MsgType.ANNOUNCE: (("location", str),),
    MsgType.ABORT: (("reason", str),),
    MsgType.POSTCOPY_DONE: (("digest", str), ("blocktime_s", _NUMBER), ("vcpu_blocktime_s", list),
                            ("pages_requested", int), ("requested_placed", int), ("last_page_s", _NUMBER),
                            ("cpu_s", _NUMBER)),
    MsgType.RECOVERED: (("data", list), ("pass", int)),
}


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
class PostcopyBegins:
    """The guest paused on the source to resume here before all its pages arrive (the POSTCOPY message)."""
    message: Message


@dataclass(frozen=True, slots=True)
class Missing:
    """The pages that have not arrived (after the device state): mark them, resume, then send resumed()."""
    message: Message


@dataclass(frozen=True, slots=True)
class PostcopyComplete:
    """Every message POSTCOPY_END promised has arrived: verify, then send postcopy_done()."""
    end: Message


@dataclass(frozen=True, slots=True)
class Recover:
    """A source whose link broke in post-copy asks to go on, on a new connection (its session id)."""
    session: str


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


def _is_data_endpoint(value):
    """A TCP port (joined to the control host) or an endpoint string, as ACCEPT lists them."""
    if isinstance(value, str):
        return 0 < len(value) <= 256
    return type(value) is int and 0 < value < 65536


def aborted(message):
    """An ABORT's reason, and whether the peer's user cancelled (only a JSON true says so)."""
    return message.field("reason", str), message.body.get("cancelled") is True


def _abort_body(reason, cancelled):
    return {"reason": reason, "cancelled": True} if cancelled else {"reason": reason}


def _failing(method):
    """An engine method whose protocol error (ours or the peer's) moves the side to FAILED."""

    @functools.wraps(method)
    def failing(self, *args):
        try:
            return method(self, *args)
        except ProtocolError:
            self.session.state = FAILED
            raise

    return failing


class _Engine:
    """What both sides share: the Session, the control seqs, failing."""

    def __init__(self, role):
        self.session = Session(role)
        self.pass_no = 0
        self._sent_seq = 0
        self._peer_seq = 0

    @property
    def state(self):
        return self.session.state

    @property
    def finished(self):
        return self.session.finished

    def abort(self, reason, cancelled=False):
        """ABORT frames telling the peer why the migration ends; None once it completed.

        Also after this side failed: a protocol error is then the reason.
        """
        if self.state == DONE:
            return None
        if not self.finished:
            self.session.sent(MsgType.ABORT)
        return encode_control(MsgType.ABORT, self._next_seq(), self.pass_no, _abort_body(reason, cancelled))

    def _control(self, msg_type, pass_no, body):
        self.session.sent(msg_type)
        return encode_control(msg_type, self._next_seq(), pass_no, body)

    def _page_list(self, msg_type, pages):
        """A page list's frames: the pages are checked before the message is counted or takes a seq."""
        frames = encode_page_list(msg_type, self._sent_seq, self.pass_no, pages)
        self.session.sent(msg_type)
        self._next_seq()
        return frames

    def _next_seq(self):
        seq, self._sent_seq = self._sent_seq, self._sent_seq + 1
        return seq

    def _receive_control(self, frames, decoder):
        message = decoder.decode(frames)
        self.session.received(message.type)
        self._peer_seq = expect_seq(message, self._peer_seq)
        return message


class DestinationProtocol(_Engine):
    """The destination's side of one migration."""

    def __init__(self):
        super().__init__(DESTINATION)
        self._decoder = Decoder()
        self._channels = 0
        self._device_state_bytes = 0
        self._data_seq = []
        self._pass = _PassCount(0)
        self._counting = threading.Lock()  # the pass's counts, shared by the data channels' threads

    @staticmethod
    def check_hello(frames):
        """The HELLO or CHECK in `frames`; RemoteProtocolError if they are anything else (no state changes).

        A body of this protocol version holds its type's keys and no other; one of another version is
        refused for its version (receiver.judge), whatever else it holds."""
        message = Decoder().decode(frames)
        if message.type not in _OPENING_KEYS:
            raise RemoteProtocolError("type", f"got {message.type.name}, expected HELLO or CHECK: no migration "
                                              "in progress")
        version = message.body.get("protocol")
        if type(version) is int and version == VERSION:
            known = _OPENING_KEYS[message.type]
            for key in message.body:
                if key not in known:
                    raise RemoteProtocolError(f"body.{key:.64}", f"not a key of a {message.type.name} body "
                                                                 f"(those are {', '.join(known)})")
        return message

    @staticmethod
    def recover_session(frames):
        """The session a RECOVER in `frames` asks to go on with (a post-copy source's new connection, from any
        peer); None for anything else, and for a RECOVER without a session of text (no state changes)."""
        try:
            message = Decoder().decode(frames)
        except RemoteProtocolError:
            return None
        session = message.body.get("session") if message.type == MsgType.RECOVER else None
        return session if isinstance(session, str) else None

    @_failing
    def receive_hello(self, hello):
        """Begin the migration `hello` (from check_hello) asks for."""
        self.session.received(hello.type)
        self._peer_seq = expect_seq(hello, 0)

    def accept(self, scenario, ports):
        """ACCEPT frames for `scenario` with data endpoints `ports`; data messages are decoded from now on."""
        options, page_size, disk = scenario.migration, scenario.guest.page_size, scenario.mirrored_disk
        frames = self._control(MsgType.ACCEPT, self.pass_no, {"data": ports})
        self._decoder = Decoder(page_size, scenario.guest.n_pages, scenario.largest_payload_bytes,
                                None if disk is None else (disk.block_size, disk.n_blocks))
        self._channels = options.data_channels
        self._device_state_bytes = options.device_state_bytes
        self._data_seq = [0] * self._channels
        self._pass = _PassCount(self._channels)
        return frames

    def refuse(self, reason):
        """REFUSE frames giving `reason`."""
        return self._control(MsgType.REFUSE, self.pass_no, {"reason": reason})

    def heartbeat(self):
        return self._control(MsgType.HEARTBEAT, self.pass_no, {})

    def pause(self):
        """The link broke in post-copy (the data channels' threads have stopped): wait for a RECOVER on a new
        connection, from which the seqs and the pass's counts start at 0 again."""
        self.session.pause()
        with self._counting:
            self._sent_seq = self._peer_seq = 0
            self._data_seq = [0] * self._channels
            self._pass = _PassCount(self._channels)

    def recovered(self, ports):
        """RECOVERED frames: go on, with data endpoints `ports` (then still_missing)."""
        return self._control(MsgType.RECOVERED, self.pass_no, {"data": ports, "pass": self.pass_no})

    @_failing
    def still_missing(self, pages):
        """MISSING frames after RECOVERED: the pages (ascending) that have not arrived here."""
        return self._page_list(MsgType.MISSING, pages)

    @_failing
    def receive_data(self, channel, frames):
        """Events for a message on data channel `channel`: DataPages, then maybe (Final)PassComplete.

        One thread's form of check_data and data_applied: the message counts as applied
        at once, and its caller applies it before it handles the next event."""
        message = self.check_data(channel, frames)
        return (DataPages(channel, message), *self.data_applied(channel, message))

    def check_data(self, channel, frames):
        """The message `frames` on data channel `channel`, checked (type, seq, pass, count): apply it, then
        call data_applied. Called on the channel's own thread; RemoteProtocolError changes no state here
        (the control thread's fail() records it)."""
        if not 0 <= channel < self._channels:
            raise LocalProtocolError("channel", f"data channel {channel} was not negotiated ({self._channels} were)")
        message = self._decoder.decode(frames)
        if message.type in _DATA:
            self.session.check_received(message.type)  # data never change the state
        else:
            self.session.received(message.type)
        self._data_seq[channel] = expect_seq(message, self._data_seq[channel])
        if message.type not in _DATA:
            raise RemoteProtocolError("type", f"{message.type.name} on data channel {channel}")
        with self._counting:
            if message.pass_no != self.pass_no:
                raise RemoteProtocolError("pass_no", f"got {message.pass_no}, the current pass is {self.pass_no}")
            if not self._pass.take(channel, message.page_count, message.flags & Flags.DISK):
                raise RemoteProtocolError("seq", f"channel {channel} sent more messages than announced for pass "
                                                 f"{self.pass_no}")
        return message

    def data_applied(self, channel, message):
        """(PassComplete,), (FinalPassComplete,) or (PostcopyComplete,) once `message` (from check_data) was the
        last one its pass awaited, in memory now; else ()."""
        with self._counting:
            self._pass.applied[channel] += 1
            return self._closing()

    @_failing
    def fail(self, error):
        """Raise `error`, a data channel's protocol error, here: the side moves to FAILED."""
        raise error

    @_failing
    def receive_control(self, frames):
        """Events for a message on the control socket."""
        message = self._receive_control(frames, self._decoder)
        msg_type = message.type
        if msg_type in _PASS_CARRIERS:
            announced = message.field("pass", int)
            if announced != self.pass_no:
                raise RemoteProtocolError("body.pass", f"got {announced}, the current pass is {self.pass_no}")
        if msg_type == MsgType.HEARTBEAT:
            return (Heartbeat(),)
        if msg_type == MsgType.SWITCHOVER:
            return (Switchover(self.pass_no),)
        if msg_type == MsgType.POSTCOPY:
            message.field("device_state_digest", str)
            message.field("storage_token", str)
            return (PostcopyBegins(message),)
        if msg_type == MsgType.MISSING:
            if not self._pass.device_state:
                raise RemoteProtocolError("type", "MISSING before DEVICE_STATE")
            if message.pass_no != self.pass_no:
                raise RemoteProtocolError("pass_no", f"got {message.pass_no}, the current pass is {self.pass_no}")
            return (Missing(message),)
        if msg_type == MsgType.DEVICE_STATE:
            if message.raw_len != self._device_state_bytes:
                raise RemoteProtocolError("raw_len", f"device state of {message.raw_len} bytes, negotiated "
                                                     f"{self._device_state_bytes}")
            if self._pass.device_state:
                raise RemoteProtocolError("type", "a second DEVICE_STATE")
            self._pass.device_state = True
            return (DeviceState(message),)
        if msg_type in _PASS_CLOSERS:
            if msg_type == MsgType.COMPLETE and not self._pass.device_state:
                raise RemoteProtocolError("type", "COMPLETE before DEVICE_STATE")
            blocks = 0 if msg_type == MsgType.POSTCOPY_END else message.field("blocks", int)
            counts, pages = message.field("messages", list), message.field("pages", int)
            with self._counting:
                self._pass.announce(message, counts, pages, blocks)
                return self._closing()
        if msg_type == MsgType.ABORT:
            return (SourceAborted(*aborted(message)),)
        if msg_type == MsgType.RECOVER:
            return (Recover(message.field("session", str)),)
        raise RemoteProtocolError("type", f"{msg_type.name} on the control channel")

    def _closing(self):
        """(PassComplete,) or (FinalPassComplete,) once the announced counts arrived, else ()."""
        ending = self._pass.completed()
        if ending is None:
            return ()
        if ending.type == MsgType.PASS_END:
            return (PassComplete(self.pass_no),)
        if ending.type == MsgType.POSTCOPY_END:
            return (PostcopyComplete(ending),)
        return (FinalPassComplete(ending),)

    @_failing
    def acknowledge_pass(self, pages_applied, cpu_s, disk_write_back_bytes_per_s=None):
        """PASS_END frames acknowledging the complete pass; the next pass begins. disk_write_back_bytes_per_s:
        a mirrored disk's copy's last measured write-back rate (None: no mirror, or none measured yet)."""
        self._require_complete(MsgType.PASS_END)
        frames = self._control(MsgType.PASS_END, self.pass_no,
                               {"pass": self.pass_no, "pages_applied": pages_applied, "cpu_s": cpu_s,
                                "disk_write_back_bytes_per_s": disk_write_back_bytes_per_s})
        with self._counting:
            self.pass_no += 1
            self._pass = _PassCount(self._channels)
        return frames

    @_failing
    def resumed(self, body):
        """RESUMED frames with `body` (digest, timings, storage token): after the final pass, or in post-copy
        after MISSING."""
        if self.state != "POSTCOPY_RESUMING":
            self._require_complete(MsgType.COMPLETE)
        return self._control(MsgType.RESUMED, self.pass_no, body)

    @_failing
    def page_request(self, pages):
        """PAGE_REQUEST frames asking for `pages` (ascending, distinct), which the vCPUs wait for."""
        return self._page_list(MsgType.PAGE_REQUEST, pages)

    @_failing
    def postcopy_done(self, body):
        """POSTCOPY_DONE frames with `body` (digest as applied, blocktimes) once POSTCOPY_END's counts arrived."""
        self._require_complete(MsgType.POSTCOPY_END)
        return self._control(MsgType.POSTCOPY_DONE, self.pass_no, body)

    def announce(self, location):
        return self._control(MsgType.ANNOUNCE, self.pass_no, {"location": location})

    def _require_complete(self, ending_type):
        ending = self._pass.ending
        if ending is None or ending.type != ending_type or not self._pass.complete:
            raise LocalProtocolError("type", f"pass {self.pass_no} did not complete with {ending_type.name}: "
                                             f"received {self._pass.messages}, announced {self._pass.expected}")


class _PassCount:
    """One pass on the destination: data messages and pages per channel against what PASS_END or COMPLETE
    promised. Complete when every channel delivered exactly its count and all of it was applied; nothing
    may arrive after that."""

    def __init__(self, channels):
        self.messages = [0] * channels  # checked
        self.applied = [0] * channels  # and in memory
        self.pages = self.blocks = 0
        self.expected = None  # the message counts the closing PASS_END or COMPLETE promised
        self.promised = None  # and the (pages, blocks)
        self.ending = None  # that message
        self.complete = False
        self.device_state = False

    def take(self, channel, count, disk):
        """Count a data message of `count` pages (or disk blocks); False if it is one more than announced."""
        self.messages[channel] += 1
        if disk:
            self.blocks += count
        else:
            self.pages += count
        return self.expected is None or self.messages[channel] <= self.expected[channel]

    def announce(self, ending, counts, pages, blocks):
        if len(counts) != len(self.messages) or not all(type(c) is int and c >= 0 for c in counts):
            raise RemoteProtocolError("body.messages", f"expected {len(self.messages)} message counts, got "
                                                       f"{counts!r:.80}")
        if any(got > want for got, want in zip(self.messages, counts)):
            raise RemoteProtocolError("body.messages", f"announced {counts}, already received {self.messages}")
        for name, value in (("pages", pages), ("blocks", blocks)):
            if value < 0:
                raise RemoteProtocolError(f"body.{name}", f"got {value}")
        self.expected, self.ending, self.promised = counts, ending, (pages, blocks)

    def completed(self):
        """The closing message once the pass just became complete, else None."""
        if self.complete or self.applied != self.expected:
            return None
        for name, promised, held in zip(("pages", "blocks"), self.promised, (self.pages, self.blocks)):
            if promised != held:
                raise RemoteProtocolError(f"body.{name}", f"announced {promised} {name}, the messages held {held}")
        self.complete = True
        return self.ending


def stranger_abort(reason):
    """ABORT frames for a peer that has no migration here (seq 0: it has no session)."""
    return encode_control(MsgType.ABORT, 0, 0, _abort_body(reason, cancelled=False))


def verdict(answer):
    """VERDICT frames for `answer` (an emulator.vm.verdict.Verdict), to the peer that sent CHECK."""
    return encode_control(MsgType.VERDICT, 0, 0, answer.to_body())


def stranger_refusal(reason):
    """REFUSE frames for a peer that has no migration here."""
    return encode_control(MsgType.REFUSE, 0, 0, {"reason": reason})


class SourceProtocol(_Engine):
    """The source's side of one migration over `channels` data channels of `page_size`-byte pages
    (and `block_size`-byte blocks of a mirrored disk, in batches flagged DISK); with `preempt`, one more
    channel, the last, for post-copy's requested pages alone."""

    def __init__(self, channels, page_size, block_size=None, n_pages=None, preempt=False):
        super().__init__(SOURCE)
        self.rotation = channels  # the channels data go round
        channels += bool(preempt)
        self.channels, self.page_size, self.block_size, self.n_pages = channels, page_size, block_size, n_pages
        self.messages = [0] * channels  # data messages of this pass, per channel
        self._data_seq = [0] * channels
        self._next_channel = 0
        self._decoder = Decoder()
        self.destination_resumed = False  # a RESUMED came: the guest may run there, whatever its body holds

    def hello(self, scenario_dict, session_id):
        return self._control(MsgType.HELLO, 0, {"protocol": VERSION, "session": session_id,
                                                "scenario": scenario_dict})

    def check(self, scenario_dict):
        """CHECK frames: would the destination host this scenario's guest? Answered by VERDICT."""
        return self._control(MsgType.CHECK, 0, {"protocol": VERSION, "scenario": scenario_dict})

    def data(self, batch, preempt=False):
        """(channel, frames) for `batch` (emulator.dataplane.batches.Batch) of the current pass, round-robin;
        preempt: on the preempt channel (post-copy's requested pages)."""
        if preempt and self.rotation == self.channels:
            raise LocalProtocolError("channel", "no preempt channel was negotiated")
        self.session.sent(batch.kind)
        channel = self.rotation if preempt else self._next_channel
        seq = self._data_seq[channel]
        self._data_seq[channel] = seq + 1
        self.messages[channel] += 1
        if not preempt:
            self._next_channel = (channel + 1) % self.rotation
        unit = self.block_size if batch.flags & Flags.DISK else self.page_size
        return channel, batch.frames(seq, self.pass_no, unit)

    def pass_end(self, pages, blocks=0):
        """PASS_END frames with this pass's message counts, `pages` and disk `blocks`."""
        return self._control(MsgType.PASS_END, self.pass_no,
                             {"pass": self.pass_no, "messages": self.messages, "pages": pages, "blocks": blocks})

    def switchover(self, reason):
        return self._control(MsgType.SWITCHOVER, self.pass_no, {"pass": self.pass_no, "reason": reason})

    def device_state(self, blob):
        self.session.sent(MsgType.DEVICE_STATE)
        return encode_device_state(self._next_seq(), self.pass_no, blob)

    def postcopy(self, reason, device_state_digest, storage_token):
        """POSTCOPY frames: the guest pauses here to resume on the destination before all its pages arrive."""
        return self._control(MsgType.POSTCOPY, self.pass_no, {"pass": self.pass_no, "reason": reason,
                                                               "device_state_digest": device_state_digest,
                                                               "storage_token": storage_token})

    @_failing
    def missing(self, pages):
        """MISSING frames: the pages (ascending) the destination resumes without."""
        return self._page_list(MsgType.MISSING, pages)

    def recover(self, session_id):
        """RECOVER frames, the first message on a new connection after the link broke in post-copy: the seqs
        and the pass's message counts start at 0 again."""
        self.session.pause()
        self._sent_seq = self._peer_seq = 0
        self._data_seq = [0] * self.channels
        self.messages = [0] * self.channels
        self._next_channel = 0
        return self._control(MsgType.RECOVER, self.pass_no, {"session": session_id, "pass": self.pass_no})

    def postcopy_end(self, pages, digest):
        """POSTCOPY_END frames: every missing page has been sent, in these message counts; the memory digest."""
        return self._control(MsgType.POSTCOPY_END, self.pass_no, {"pass": self.pass_no, "messages": self.messages,
                                                                   "pages": pages, "digest": digest})

    def complete(self, pages, digest, device_state_digest, storage_token, blocks=0, disk_digest=None):
        """COMPLETE frames closing the final pass (disk_digest: the mirrored disk's, else None)."""
        return self._control(MsgType.COMPLETE, self.pass_no, {
            "pass": self.pass_no, "messages": self.messages, "pages": pages, "blocks": blocks, "digest": digest,
            "disk_digest": disk_digest, "device_state_digest": device_state_digest, "storage_token": storage_token,
        })

    @_failing
    def receive(self, frames):
        """The destination's control message, checked (type, seq, acknowledged pass, body fields)."""
        message = self._receive_control(frames, self._decoder)
        if message.type == MsgType.RESUMED:
            self.destination_resumed = True
        for name, kind in _REPLY_FIELDS.get(message.type, ()):
            message.field(name, kind)
        if message.type in (MsgType.ACCEPT, MsgType.RECOVERED):
            endpoints = message.body["data"]
            if len(endpoints) != self.channels or not all(map(_is_data_endpoint, endpoints)):
                raise RemoteProtocolError("body.data", f"expected {self.channels} data endpoints (TCP ports, or "
                                                       f"endpoint strings), got {endpoints!r:.80}")
            if self.n_pages is not None:  # the destination's page lists (PAGE_REQUEST) are guest pages
                self._decoder = Decoder(self.page_size, self.n_pages, 1)
        if message.type == MsgType.RECOVERED and message.body["pass"] != self.pass_no:
            raise RemoteProtocolError("body.pass", f"got {message.body['pass']}, the current pass is {self.pass_no}")
        if message.type == MsgType.PASS_END:
            if message.body["pass"] != self.pass_no:
                raise RemoteProtocolError("body.pass", f"acknowledged pass {message.body['pass']}, "
                                                       f"expected {self.pass_no}")
            self.pass_no += 1
            self.messages = [0] * self.channels
        return message
