"""ZeroMQ transport: one control socket and N data sockets per migration. Moves frames only.

Topology: the destination binds a ROUTER (control) at its listen endpoint
and one PULL per data channel on free ports of the same interface; the source
connects a DEALER and one PUSH per channel. Each link has its own context
with an I/O thread per channel, and each data socket is pinned to an I/O
thread of its own (ZMQ_AFFINITY), so channels move bytes in parallel: left to
itself, ZeroMQ put two or three channels on one thread. On the destination each
data socket is read by its channel's thread (a DataReceiver, emulator.dataplane.receiving),
not by the thread that owns the control socket. Data
messages go zero-copy (`copy=False`); the send and receive high-water marks
bound how many messages each channel buffers (DATA_BUFFER_BYTES worth), so a
slow destination throttles the source instead of growing its memory. Every receive has a deadline and
every send a timeout, and ZMTP heartbeats drop a connection whose peer stops
answering: a dead or silent peer raises PeerTimeout, never hangs.
With a ServerSecurity/ClientSecurity (emulator.dataplane.security) every socket runs
CURVE, and the destination's authenticator admits only the allowed keys.
"""

import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from emulator.core.errors import LinkBroken, NothingListens, PeerTimeout
from emulator.dataplane.security import HANDSHAKE_FAILURES, Authenticator, secure_client, secure_server, why_handshake_failed

DATA_BUFFER_BYTES = 8 << 20  # payload bytes queued per data socket and side, at most (the HWM in bytes)
MIN_DATA_HWM = 2  # messages queued per data socket and side, at least: one in flight, one ready
CONTROL = -1  # channel number of the control socket in Incoming
WAKE = -2  # channel number of an Incoming that only says a Doorbell rang
HEARTBEATS_PER_TIMEOUT = 4
PAIR_FINISHED = b""  # a PeerLink's one-frame word to its listener: the migration has ended
PAIR_UNREAD = b"unread"  # before a source's message a migration ended without reading, handed back to its listener
PAIR_QUEUE = 256  # control messages queued on each end of a PeerLink's pair: a real source has a few in flight
# Longest single poll. A signal (Ctrl-C, SIGTERM) that lands just before the poll system
# call is only handled once the call returns: an unbounded poll would never return.
SIGNAL_CHECK_S = 0.25
SOURCE_GONE = ("the source's end closed the connection: its process stopped or was killed, "
               "or the network dropped it")
_ENDPOINT = re.compile(r"^(?:tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s]+):(?P<port>\d+)|(?P<local>(?:ipc|inproc)://\S+))$")


def parse_endpoint(text):
    """Split "tcp://HOST:PORT" into (host, port); ipc:// and inproc:// give (text, None)."""
    match = _ENDPOINT.match(text or "")
    if not match:
        raise ValueError(f"invalid endpoint {text!r}: expected tcp://HOST:PORT (or ipc://PATH, inproc://NAME)")
    if match["local"]:
        return match["local"], None
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"invalid endpoint {text!r}: port {port} is above 65535")
    return match["host"], port


def data_hwm(message_bytes):
    """High-water mark of a data socket, in messages of `message_bytes`: DATA_BUFFER_BYTES worth, at least 2."""
    return max(MIN_DATA_HWM, DATA_BUFFER_BYTES // max(1, message_bytes))


def _socket(context, kind, timeout_s):
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(timeout_s * 1000 / HEARTBEATS_PER_TIMEOUT)))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(timeout_s * 1000)))
    return sock


AFFINITY_BITS = 63  # ZMQ_AFFINITY is a 64-bit mask, which pyzmq takes as a signed integer


def _pin(sock, index, io_threads):
    """Give data socket number `index` an I/O thread of its own, round-robin over `io_threads` (the first
    AFFINITY_BITS of them)."""
    sock.setsockopt(zmq.AFFINITY, 1 << (index % min(io_threads, AFFINITY_BITS)))


def _send(sock, frames, copy):
    try:
        sock.send_multipart(frames, copy=copy)
    except zmq.Again:
        raise PeerTimeout("the peer did not take data within the timeout") from None


def _peer_address(frame):
    """The IP address a received frame came from (ZeroMQ's Peer-Address property), or None."""
    try:
        return frame.get("Peer-Address")
    except (zmq.ZMQError, KeyError, AttributeError):
        return None


def _poller(*sockets_and_flags):
    poller = zmq.Poller()
    for sock, flag in sockets_and_flags:
        poller.register(sock, flag)
    return poller


def _poll_ms(timeout_s):
    """Milliseconds for one poll: what is left of `timeout_s` (rounded up: a wait never
    ends early), at most SIGNAL_CHECK_S."""
    return max(0, math.ceil(min(timeout_s, SIGNAL_CHECK_S) * 1000))


def _poll_in_slices(poll, timeout_s):
    """Call poll(ms) in slices (see _poll_ms) until it returns something true or
    `timeout_s` has passed (math.inf: for ever); return its last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        result = poll(_poll_ms(remaining))
        if result or remaining <= SIGNAL_CHECK_S:
            return result


def _probe(host, port, timeout_s):
    """Fail at once, saying why, when nothing can listen at HOST:PORT: the name does not resolve, or the
    connection is refused. ZeroMQ itself would retry quietly until the first reply's deadline."""
    host = host.strip("[]")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.gaierror as error:
        raise PeerTimeout(f"cannot resolve the destination's host {host!r}: {error.strerror}") from None
    except ConnectionRefusedError:
        raise NothingListens(f"the connection to {host}:{port} was refused: is 'precopy receive' listening "
                          "there (and its port open)?") from None
    except OSError:
        pass  # unreachable for now, or slow: ZeroMQ keeps trying until the deadline, which then speaks


def _handshake_failure(monitor, *, server, secured):
    """What the socket monitor's next event says of a failed handshake (security.why_handshake_failed), or None."""
    event = recv_monitor_message(monitor)
    return why_handshake_failed(event["event"], event["value"], server=server, secured=secured)


class Doorbell:
    """Wakes a destination link's recv from another thread: a post-copy vCPU that asks for a page
    (the receiving thread, which owns the sockets, sends the request). A pipe the poll watches."""

    def __init__(self):
        self.fd, self._write = os.pipe()
        for fd in (self.fd, self._write):
            os.set_blocking(fd, False)

    def ring(self):
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # rung already, and not yet answered

    def answer(self):
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self):
        os.close(self.fd)
        os.close(self._write)


@dataclass
class Incoming:
    """What a destination link's recv returns: a control message (channel CONTROL) with its sender's
    identity and address (an IP, or None where the transport has none), or WAKE with no frames when its
    doorbell rang. Data messages never come this way: each channel's thread reads its own socket."""

    channel: int
    frames: list
    peer: bytes | None = None
    address: str | None = None


class SourceLink:
    """The source's sockets: connect to the destination's control endpoint, then its data channels.

    security: a ClientSecurity for CURVE, or None for plain TCP.
    """

    def __init__(self, to, timeout_s, *, channels=1, security=None):
        self.to, (self.host, self.port) = to, parse_endpoint(to)
        self.timeout_s, self.security = timeout_s, security
        self.io_threads = max(1, channels)
        self.while_full = lambda: None  # called while a data channel has no room (see send_data)
        self._connect()

    def reconnect(self):
        """Close the sockets and connect anew to the same destination (post-copy recovery, after the link
        broke); PeerTimeout at once if nothing listens there any more."""
        self.close()
        self._connect()

    def _connect(self):
        if self.port is not None:
            _probe(self.host, self.port, self.timeout_s)
        self.context = zmq.Context(io_threads=self.io_threads)
        self.control = self._socket(zmq.DEALER)
        # says at once why keys do not match, and when the destination's end closed the connection
        self.monitor = self.control.get_monitor_socket(HANDSHAKE_FAILURES | zmq.EVENT_DISCONNECTED)
        self.refused = None  # why the destination's end turned us away, or went, once it did
        self.answered = False  # a control message came: the destination's end is there
        self._waiting = {flag: _poller((self.control, flag), (self.monitor, zmq.POLLIN))
                         for flag in (zmq.POLLIN, zmq.POLLOUT)}
        self.control.connect(self.to)
        self.data = []

    def _socket(self, kind):
        sock = _socket(self.context, kind, self.timeout_s)
        if self.security:
            secure_client(sock, self.security)
        return sock

    def open_data(self, endpoints, message_bytes):
        """Connect one PUSH socket per data endpoint (ports are joined to the control host).

        message_bytes: the largest data message's payload, which sets the high-water mark.
        """
        for endpoint in endpoints:
            if isinstance(endpoint, int):
                endpoint = f"tcp://{self.host}:{endpoint}"
            sock = self._socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, data_hwm(message_bytes))
            _pin(sock, len(self.data), self.io_threads)
            sock.connect(endpoint)
            self.data.append(sock)

    def send_control(self, frames):
        if not self._wait(zmq.POLLOUT, self.timeout_s):
            raise PeerTimeout(f"no answer from the destination within {self.timeout_s:g} s: it took no control "
                              "message")
        self.control.send_multipart(frames, flags=zmq.DONTWAIT, copy=True)

    def send_data(self, channel, frames):
        """Send a data message without copying its payload. While its channel is full, while_full() is
        called every SIGNAL_CHECK_S (the source looks at its control socket there); PeerTimeout after the
        link's timeout."""
        sock, deadline = self.data[channel], time.monotonic() + self.timeout_s
        while not sock.poll(_poll_ms(deadline - time.monotonic()), zmq.POLLOUT):
            self.while_full()
            if time.monotonic() >= deadline:
                raise PeerTimeout("the peer did not take data within the timeout")
        sock.send_multipart(frames, copy=False, flags=zmq.DONTWAIT)  # POLLOUT: room for a whole message

    def control_pending(self):
        """True if a control message is waiting; else PeerTimeout if the destination's end has gone (what it
        said before it went, an ABORT, is read first)."""
        if self.control.poll(0, zmq.POLLIN):
            return True
        if self.monitor.poll(0, zmq.POLLIN):
            self._heard_from_monitor()
        return False

    def recv_control(self, timeout_s=None):
        """The next control message's frames; PeerTimeout after `timeout_s` (default: the link's)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if not self._wait(zmq.POLLIN, timeout_s):
            raise PeerTimeout(f"no answer from the destination within {timeout_s:g} s")
        self.answered = True
        return self.control.recv_multipart(copy=False)

    def _wait(self, flag, timeout_s):
        """True once the control socket can `flag` (POLLIN, POLLOUT) within `timeout_s`, False after it.

        A failed handshake, on the way or before, is PeerTimeout at once, saying what it means, and so
        is a closed connection once the destination has answered.
        """
        deadline = time.monotonic() + timeout_s
        while self.refused is None:
            ready = dict(_poll_in_slices(self._waiting[flag].poll, max(0.0, deadline - time.monotonic())))
            # a message waiting is read before the monitor's news (it may be the ABORT saying why); room to
            # send is not: a refused handshake leaves none, whatever the poll said a moment before
            if self.monitor not in ready or (flag == zmq.POLLIN and self.control in ready):
                return self.control in ready
            self._heard_from_monitor()
        raise PeerTimeout(self.refused)

    def _heard_from_monitor(self):
        """Act on the monitor's next event: a refused handshake, or (once answered) a closed connection, is
        PeerTimeout; a connection closed before the destination answered is ZeroMQ's to retry."""
        event = recv_monitor_message(self.monitor)
        if event["event"] == zmq.EVENT_DISCONNECTED:
            if self.answered:
                self.refused = ("the destination's end closed the connection: its process stopped or was killed, "
                                "or the network dropped it")
        else:
            self.refused = why_handshake_failed(event["event"], event["value"], server=False,
                                                secured=self.security is not None)
        if self.refused:
            raise PeerTimeout(self.refused)

    def close(self):
        if self.context.closed:  # closed already: a reconnect that found nothing listening
            return
        self.control.disable_monitor()
        self.monitor.close(linger=0)
        for sock in [self.control, *self.data]:
            sock.close(linger=0)
        self.context.term()


class _DestinationEnd:
    """What a destination's links share: the data PULLs a migration binds on the listen host.

    Subclasses set context, io_threads, security, host, endpoint, timeout_s, data_prefix
    (where ipc:// and inproc:// data endpoints begin) and _poller (which a Doorbell
    joins), and define recv and send_control.
    """

    _doorbell = None  # this migration's Doorbell, once asked for

    def _socket(self, kind):
        sock = _socket(self.context, kind, self.timeout_s)
        if self.security:
            secure_server(sock, self.security)
        return sock

    def open_data(self, channels, message_bytes):
        """Bind `channels` PULL sockets; return what the source connects to (ports, or endpoints).

        message_bytes: the largest data message's payload, which sets the high-water mark.
        """
        advertised = []
        for channel in range(channels):
            sock = self._socket(zmq.PULL)
            sock.setsockopt(zmq.RCVHWM, data_hwm(message_bytes))
            _pin(sock, channel, self.io_threads)
            if self.endpoint.startswith("tcp://"):
                advertised.append(sock.bind_to_random_port(f"tcp://{self.host}"))
            else:
                endpoint = f"{self.data_prefix}-data{channel}"
                sock.bind(endpoint)
                advertised.append(endpoint)
            self.data.append(sock)
        return advertised

    def mend(self):
        """The source connected anew after its connection broke (post-copy recovery); only a PeerLink, whose
        listener tells it of a broken connection, has anything to forget."""

    def data_receivers(self):
        """A DataReceiver per data socket, each for its channel's thread alone."""
        return [DataReceiver(sock) for sock in self.data]

    def doorbell(self):
        """A Doorbell whose ring makes recv return an Incoming on channel WAKE (closed with the data sockets)."""
        self._doorbell = Doorbell()
        self._poller.register(self._doorbell.fd, zmq.POLLIN)
        return self._doorbell

    def reopen_data(self, channels, message_bytes):
        """Close the data sockets (their threads have stopped) and bind new ones, as open_data: post-copy
        recovery, where nothing of the broken connection may arrive any more. The doorbell stays."""
        self._close_data_sockets()
        return self.open_data(channels, message_bytes)

    def _close_data_sockets(self):
        for sock in self.data:
            sock.close(linger=0)
        self.data = []

    def close_data(self):
        """Close the data sockets (between two migrations on the same control socket), once their threads
        have stopped, and the doorbell."""
        self._close_data_sockets()
        doorbell, self._doorbell = self._doorbell, None
        if doorbell is not None:
            self._poller.unregister(doorbell.fd)
            doorbell.close()

    def _wake(self, ready, timeout_s):
        if self._doorbell is not None and self._doorbell.fd in ready:
            self._doorbell.answer()
            return Incoming(WAKE, [])
        raise PeerTimeout(f"nothing from the source within {timeout_s:g} s")


class DataReceiver:
    """One data socket of a destination, read by its channel's thread alone (ZeroMQ sockets are not
    shared between threads): the socket is made on another thread, and only read and polled on this one."""

    def __init__(self, sock):
        self.sock = sock
        self._poller = _poller((sock, zmq.POLLIN))

    def recv(self, timeout_s):
        """The next message's frames (not copied), or None when none came within `timeout_s`."""
        if self._poller.poll(_poll_ms(timeout_s)):
            return self.sock.recv_multipart(copy=False)
        return None


class DestinationLink(_DestinationEnd):
    """The destination's sockets: a bound control ROUTER and, once negotiated, bound data PULLs.

    security: a ServerSecurity for CURVE (only its allowed client keys get in), or None.
    """

    def __init__(self, listen, timeout_s, *, security=None, max_channels=None):
        self.host, port = parse_endpoint(listen)
        self.timeout_s, self.security = timeout_s, security
        # I/O threads are fixed when the context starts; data channels come later.
        self.io_threads = max(1, max_channels or os.cpu_count() or 1)
        self.context = zmq.Context(io_threads=self.io_threads)
        self.authenticator = Authenticator(self.context, security) if security else None
        self.control = self._socket(zmq.ROUTER)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.monitor = self.control.get_monitor_socket(HANDSHAKE_FAILURES)
        self.on_turned_away = None  # called with why, each time a connection's handshake fails
        self.data = []
        try:
            if port == 0:
                port = self.control.bind_to_random_port(f"tcp://{self.host}")
                self.endpoint = f"tcp://{self.host}:{port}"
            else:
                self.control.bind(listen)
                self.endpoint = listen
        except zmq.ZMQError as error:
            self.close()
            hint = "; another process listens there: pick another port, or port 0 for a free one" if (
                error.errno == zmq.EADDRINUSE) else ""
            raise OSError(f"cannot listen on {listen}: {error}{hint}") from None
        self.data_prefix = self.endpoint
        self._poller = _poller((self.control, zmq.POLLIN), (self.monitor, zmq.POLLIN))

    def recv(self, timeout_s=None):
        """The next message from the control socket, or WAKE when the doorbell rang.

        Raises PeerTimeout when nothing arrives within `timeout_s` (default: the link's;
        math.inf waits for ever).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        ready = dict(_poll_in_slices(self._poller.poll, timeout_s))
        while ready.keys() == {self.monitor}:  # a connection turned away: say so, wait on
            self.turned_away()
            ready = dict(_poll_in_slices(self._poller.poll, max(0.0, deadline - time.monotonic())))
        if self.monitor in ready:
            self.turned_away()
        if self.control in ready:
            return self.recv_control()
        return self._wake(ready, timeout_s)

    def recv_control(self):
        """The control message waiting now (after a poll said so), with its sender."""
        peer, *frames = self.control.recv_multipart(copy=False)
        return Incoming(CONTROL, frames, peer.bytes, _peer_address(peer))

    def turned_away(self):
        """Tell on_turned_away why the connection the monitor just reported was turned away."""
        why = _handshake_failure(self.monitor, server=True, secured=self.security is not None)
        if why and self.on_turned_away:
            self.on_turned_away(why)

    def send_control(self, peer, frames, wait=True):
        """Send to `peer`; wait: up to the timeout for room in its queue, else PeerTimeout at once."""
        try:
            self.control.send_multipart([peer, *frames], flags=0 if wait else zmq.DONTWAIT, copy=True)
        except zmq.Again:
            raise PeerTimeout("the source did not take a control message within the timeout") from None
        except zmq.ZMQError:  # ROUTER_MANDATORY: the peer is gone
            raise LinkBroken(SOURCE_GONE) from None

    def close(self):
        self.control.disable_monitor()
        for sock in [self.monitor, self.control, *self.data]:
            sock.close(linger=0)
        if self.authenticator:
            self.authenticator.stop()
        self.context.term()


class Stop:
    """How a listener ends one of its migrations from its own thread: the migration's PeerLink raises
    `error` at its next look (set once; a later call changes nothing); or tells it its source's connection
    is gone (broke: LinkBroken at its next look, once, since post-copy may go on over a new one)."""

    def __init__(self):
        self._stopped = threading.Event()
        self.error = None
        self._broken = None  # why the source's connection is gone, until a look raised it

    def __call__(self, error):
        if not self._stopped.is_set():
            self.error = error
            self._stopped.set()

    def broke(self, reason):
        self._broken = reason

    def mend(self):
        """The source connected anew: what was said of its last connection no longer holds."""
        self._broken = None

    def check(self):
        if self._stopped.is_set():
            raise self.error
        broken, self._broken = self._broken, None
        if broken is not None:
            raise LinkBroken(broken)


class PeerLink(_DestinationEnd):
    """One migration's link behind a serving listener (emulator.destination.serving), used by one thread.

    The listener's thread owns the control socket: it hands this link the migration's
    control messages over an inproc PAIR, and sends what this link sends to the source.
    Data come straight to the PULLs this link binds, on the listener's context.
    first: the Incoming that began the migration (its HELLO), the first recv's answer.
    stop: a Stop the listener ends the migration with, from its own thread: recv raises
    the Stop's error within SIGNAL_CHECK_S (KeyboardInterrupt: a Destination reports the
    migration cancelled and tells its source; a MigrationError: failed, with its reason).
    It is not a message on the pair, which a migration that stopped reading never sees.
    """

    def __init__(self, listener, pair_endpoint, first, stop):
        self.context, self.security, self.host = listener.context, listener.security, listener.host
        self.io_threads = listener.io_threads
        self.endpoint, self.timeout_s = listener.endpoint, listener.timeout_s
        self.peer, self.address, self._first = first.peer, first.address, first
        self.on_turned_away = None  # the listener hears of turned-away connections, not a migration
        self.data = []
        self.stop = stop
        self.pair = self.context.socket(zmq.PAIR)
        self.pair.setsockopt(zmq.LINGER, 0)
        self.pair.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        self.pair.setsockopt(zmq.RCVHWM, PAIR_QUEUE)
        self.pair.connect(pair_endpoint)
        self.data_prefix = f"{self.endpoint}-{pair_endpoint.rpartition('/')[2]}"
        self._poller = _poller((self.pair, zmq.POLLIN))

    def recv(self, timeout_s=None):
        """As DestinationLink.recv, for this migration's source only; the Stop's error once it was stopped."""
        self.stop.check()
        if self._first is not None:
            first, self._first = self._first, None
            return first
        timeout_s = self.timeout_s if timeout_s is None else timeout_s

        def poll(ms):
            self.stop.check()
            return self._poller.poll(ms)

        ready = dict(_poll_in_slices(poll, timeout_s))
        if self.pair in ready:
            return Incoming(CONTROL, self.pair.recv_multipart(copy=False), self.peer, self.address)
        return self._wake(ready, timeout_s)

    def send_control(self, peer, frames, wait=True):
        """Hand `frames` to the listener, which sends them on to the source (it drops them if it has gone)."""
        _send(self.pair, frames, copy=True)

    def mend(self):
        self.stop.mend()

    def finished(self):
        """Tell the listener this migration has ended (one empty frame); until it answers with the same word,
        hand it back each source message that comes, unread (answered there as any peer's would be); then
        close, whatever became of the word: a socket left open would keep the server's context from ever
        terminating. The listener answers after the last message it handed this migration, so none is lost."""
        try:
            self.pair.send(PAIR_FINISHED, flags=zmq.DONTWAIT)
            deadline = time.monotonic() + SIGNAL_CHECK_S
            while self.pair.poll(_poll_ms(deadline - time.monotonic()), zmq.POLLIN):
                frames = self.pair.recv_multipart(copy=False)
                if len(frames) == 1 and frames[0].bytes == PAIR_FINISHED:
                    break
                self.pair.send_multipart([PAIR_UNREAD, *frames], flags=zmq.DONTWAIT)
        except zmq.ZMQError:
            pass  # the listener has stopped waiting for it
        finally:
            self.close_data()
            # what it handed back is kept a moment for the listener to read; had it no time, the listener still
            # sees this thread end
            self.pair.close(linger=int(SIGNAL_CHECK_S * 1000))
