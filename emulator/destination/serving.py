"""A serving destination: one control socket, up to max_incoming migrations at once.

ZeroMQ sockets belong to one thread, so the listener's thread owns the control ROUTER
and each accepted migration runs a Destination on a thread of its own over a PeerLink:
its control messages pass through the listener (an inproc PAIR), its pages come straight
to data sockets of its own, never through the listener. The listener answers everyone
else: a CHECK with VERDICT, a HELLO beyond max_incoming with REFUSE (busy), a message
that is neither with ABORT. Memory is reserved per incoming guest as its HELLO arrives:
each is offered the capacity the others leave. A migration that has sent REFUSE or
ABORT is ending: it holds neither a place nor memory, so a source that is told no and
tries again at once is not turned away as busy while its last migration winds down.
"""

import itertools
import threading
import time

import zmq

from emulator.core.errors import LinkBroken, MigrationError
from emulator.core.units import format_count
from emulator.dataplane.transport import (
    CONTROL, PAIR_FINISHED, PAIR_QUEUE, PAIR_UNREAD, SIGNAL_CHECK_S, Incoming, PeerLink, Stop)
from emulator.destination.receiver import Destination, DestinationLimits, Doorkeeper
from emulator.vm.allocator import available_memory_bytes
from emulator.wire.protocol import HEADER, HEADER_SIZE, MsgType, RemoteProtocolError
from emulator.wire.protocol_engines import DestinationProtocol


class _Prefixed:
    """A progress that puts `prefix` before each message, so concurrent migrations are told apart."""

    def __init__(self, progress, prefix):
        self.progress, self.prefix = progress, prefix

    def phase(self, name, elapsed_s):
        self.progress.phase(name, elapsed_s)

    def message(self, text):
        self.progress.message(self.prefix + text)


class _Incoming:
    """One migration this listener hosts: its source, its pair, the memory reserved for it."""

    def __init__(self, number, message, pair, memory_bytes, session):
        self.number, self.peer, self.address, self.session = number, message.peer, message.address, session
        self.pair, self.memory_bytes = pair, memory_bytes
        self.stop = Stop()  # ends the migration, from the listener's thread
        self.thread = None
        self.outcome = None
        self.ending = False  # it sent REFUSE or ABORT: it hosts nothing more
        self.reported = False  # its outcome has been told
        self.recovering_peer = None  # a post-copy source's new connection, from its RECOVER until RECOVERED


class Listener:
    """Serve migrations on `link` (a DestinationLink), up to `max_incoming` at once, until Ctrl-C.

    capacity_bytes: the guest memory all incoming guests may hold together (default: the
    memory available when serving began). on_outcome: called with each DestinationOutcome.
    """

    def __init__(self, link, *, capacity_bytes=None, limits=DestinationLimits(), max_incoming=1, progress=None,
                 on_outcome=None):
        if type(max_incoming) is not int or max_incoming < 1:
            raise ValueError(f"max_incoming must be a whole number >= 1, got {max_incoming!r}")
        self.link, self.limits, self.max_incoming = link, limits, max_incoming
        self.capacity_bytes = available_memory_bytes() if capacity_bytes is None else capacity_bytes
        self.progress, self.on_outcome = progress, on_outcome
        self.doors = Doorkeeper(link, progress)
        self.incoming = {}  # number -> _Incoming, until its thread has finished
        self.cancelled = None  # the outcome of a migration Ctrl-C cancelled, if one did
        self._numbers = itertools.count(1)
        self._poller = zmq.Poller()
        for sock in (link.control, link.monitor):
            self._poller.register(sock, zmq.POLLIN)

    def hosting(self):
        """The migrations that hold a place and memory: all but those ending."""
        return [incoming for incoming in self.incoming.values() if not incoming.ending]

    def capacity_left(self):
        return self.capacity_bytes - sum(incoming.memory_bytes for incoming in self.hosting())

    def serve(self):
        """Answer and host sources until interrupted; return the outcome of a migration the
        interruption cancelled, or None when none was in progress."""
        try:
            while True:
                self._step(SIGNAL_CHECK_S)
        except KeyboardInterrupt:
            self._cancel_all()
        return self.cancelled

    def _step(self, timeout_s):
        ready = dict(self._poller.poll(timeout_s * 1000))
        if self.link.monitor in ready:
            self.link.turned_away()
        for incoming in list(self.incoming.values()):  # first: a migration that has finished frees its place
            if incoming.pair in ready:
                self._from_migration(incoming)
            elif not incoming.thread.is_alive():  # its last word was lost
                self._finished(incoming)
        if self.link.control in ready:
            self._from_peer(self.link.recv_control())

    # messages from sources ----------------------------------------------------------
    def _from_peer(self, message):
        hosted = next((incoming for incoming in self.hosting() if incoming.peer == message.peer), None) or (
            self._recovered_by(message))
        if hosted is not None:  # (a peer whose migration is ending begins anew: that one reads no more)
            try:  # never wait: a migration that does not read must not stop the server
                hosted.pair.send_multipart(message.frames, copy=False, flags=zmq.DONTWAIT)
            except zmq.Again:
                hosted.stop(MigrationError(f"the source sent control messages faster than the migration read them "
                                           f"(more than {2 * PAIR_QUEUE} waiting)"))
            return
        try:
            opening = DestinationProtocol.check_hello(message.frames)
        except RemoteProtocolError as error:
            self.doors.refuse(message, error)
            return
        hosting = len(self.hosting())
        full = hosting >= self.max_incoming
        if opening.type == MsgType.CHECK:
            self.doors.answer_check(message, opening, self.limits, self.capacity_left(), busy=full)
        elif full:
            self.doors.turn_away(message, f"busy with {format_count(hosting, 'migration')}, this "
                                          f"destination's limit (receive --max-incoming {self.max_incoming})")
        else:
            self._begin(message, opening)

    def _recovered_by(self, message):
        """The migration a RECOVER of its session (a source connecting anew in post-copy) is for, else None. Its
        source becomes this peer with its answer, RECOVERED: what it said before goes to the old connection."""
        session = DestinationProtocol.recover_session(message.frames)
        if session is None:
            return None
        hosted = next((incoming for incoming in self.hosting() if incoming.session == session), None)
        if hosted is not None:
            hosted.recovering_peer = message.peer
        return hosted

    def _begin(self, message, hello):
        """Host the migration `hello` begins, on a thread of its own."""
        number = next(self._numbers)
        capacity = self.capacity_left()
        endpoint = f"inproc://precopy-incoming-{id(self):x}-{number}"
        pair = self.link.context.socket(zmq.PAIR)
        pair.setsockopt(zmq.LINGER, 0)
        pair.setsockopt(zmq.SNDHWM, PAIR_QUEUE)
        pair.bind(endpoint)
        incoming = _Incoming(number, message, pair, _asked_memory(hello, capacity), hello.body.get("session"))
        self.incoming[number] = incoming
        self._poller.register(pair, zmq.POLLIN)
        progress = _Prefixed(self.progress, f"[{number}] ") if self.progress and self.max_incoming > 1 else (
            self.progress)
        incoming.thread = threading.Thread(target=self._host, args=(incoming, endpoint, message, capacity, progress),
                                           name=f"incoming-{number}", daemon=True)
        incoming.thread.start()

    def _host(self, incoming, endpoint, first, capacity, progress):
        link = PeerLink(self.link, endpoint, first, incoming.stop)
        try:
            destination = Destination(link, capacity_bytes=capacity, limits=self.limits, progress=progress)
            incoming.outcome = destination.run()
        finally:
            link.finished()

    # messages from the migrations ---------------------------------------------------------
    def _from_migration(self, incoming):
        frames = incoming.pair.recv_multipart(copy=False)
        if len(frames) == 1 and frames[0].bytes == PAIR_FINISHED:
            self._finished(incoming)
            return
        if frames[0].bytes == PAIR_UNREAD:  # it ended before it read this: a new beginning for its source
            incoming.ending = True
            self._from_peer(Incoming(CONTROL, frames[1:], incoming.peer, incoming.address))
            return
        header = frames[0].bytes
        kind = HEADER.unpack(header)[2] if len(header) == HEADER_SIZE else None
        if kind in (MsgType.REFUSE, MsgType.ABORT):
            incoming.ending = True
        if kind == MsgType.RECOVERED and incoming.recovering_peer is not None:  # the new connection's first word
            incoming.peer, incoming.recovering_peer = incoming.recovering_peer, None
        try:
            self.link.send_control(incoming.peer, frames, wait=False)
        except LinkBroken as error:  # the source's connection is gone: its migration knows at once
            if incoming.recovering_peer is None:  # (unless the source is back, on a connection not yet taken)
                incoming.stop.broke(error.reason)
        except MigrationError as error:  # the source does not read: its migration ends now
            incoming.stop(MigrationError(str(error)))  # not a PeerTimeout, which a waiting migration rides out

    def _finished(self, incoming):
        """Forget a migration that has ended and tell its outcome. A Ctrl-C may land anywhere in here;
        calling it again for the same migration does only what is left (_cancel_all does)."""
        if not incoming.pair.closed:
            try:  # its last word: what the source sent it after this, it hands back unread
                incoming.pair.send(PAIR_FINISHED, flags=zmq.DONTWAIT)
            except zmq.ZMQError:
                pass  # its end is closed already: it stopped waiting
        incoming.thread.join()
        while not incoming.pair.closed and incoming.pair.poll(0, zmq.POLLIN):
            self._from_migration(incoming)
        self._close(incoming)
        if incoming.outcome is not None and not incoming.reported:  # None: its thread died of a bug
            incoming.reported = True
            if incoming.outcome.status == "cancelled" and self.cancelled is None:
                self.cancelled = incoming.outcome
            if self.on_outcome:
                self.on_outcome(incoming.outcome)
        if self.incoming.pop(incoming.number, None) is not None and incoming.outcome is not None:
            self.doors.say(f"---- ready for the next source on {self.link.endpoint}" + (
                f" ({format_count(len(self.incoming), 'migration')} incoming)" if self.incoming else ""))

    def _close(self, incoming):
        """Stop polling this migration's end of its pair and close it; safe to repeat."""
        if incoming.pair in self._poller:
            self._poller.unregister(incoming.pair)
        incoming.pair.close(linger=0)

    def _cancel_all(self):
        """Ctrl-C: cancel every migration (each tells its source), and wait until they have ended."""
        for incoming in self.incoming.values():
            incoming.stop(KeyboardInterrupt())
        deadline = time.monotonic() + self.link.timeout_s + 1
        while self._open() and time.monotonic() < deadline:
            try:
                self._step(SIGNAL_CHECK_S)
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: they are being cancelled already
        for incoming in list(self.incoming.values()):
            if incoming.pair.closed:  # the interruption landed while it was being forgotten
                self._finished(incoming)
            else:  # not ended by the deadline: its thread closes its own end
                self._close(incoming)
        if self.progress:
            self.progress.message("stopped" if self.cancelled else "stopped; no migration was in progress")

    def _open(self):
        """The migrations still to be heard from: those whose pair is open."""
        return [incoming for incoming in self.incoming.values() if not incoming.pair.closed]


def _asked_memory(hello, capacity):
    """The guest memory a HELLO asks for, to reserve: 0 when it will be refused (not a number, or above
    `capacity`), so a refused guest never holds memory back from the others."""
    scenario = hello.body.get("scenario") if hello.body else None
    guest = scenario.get("guest") if isinstance(scenario, dict) else None
    memory = guest.get("memory_bytes") if isinstance(guest, dict) else None
    return memory if type(memory) is int and 0 < memory <= capacity else 0
