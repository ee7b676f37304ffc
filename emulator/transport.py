"""ZeroMQ transport: one control socket and N data sockets per migration. Moves frames only.

Topology: the destination binds a ROUTER (control) at its listen endpoint
and one PULL per data channel on free ports of the same interface; the source
connects a DEALER and one PUSH per channel. Data sockets live in a context of
their own with one I/O thread per channel, so channels move bytes in parallel. Data messages go zero-copy
(`copy=False`); the send and receive high-water marks bound how many
messages each channel buffers, so a slow destination throttles the source
instead of growing its memory. Every receive has a deadline and every send a
timeout: a silent peer raises PeerTimeout, never hangs.
"""

import re
import time
from dataclasses import dataclass

import zmq

DATA_HWM = 8  # messages buffered per data socket and side (about 8 MiB at 256 pages)
CONTROL = -1  # channel number of the control socket in Incoming
_ENDPOINT = re.compile(r"^(?:tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s]+):(?P<port>\d+)|(?P<local>(?:ipc|inproc)://\S+))$")


class PeerTimeout(Exception):
    """The peer did not answer (or accept data) within the deadline."""


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


def _socket(context, kind, timeout_s):
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
    return sock


def _send(sock, frames, copy):
    try:
        sock.send_multipart(frames, copy=copy)
    except zmq.Again:
        raise PeerTimeout("the peer did not take data within the timeout") from None


@dataclass
class Incoming:
    """A received message: its channel (CONTROL or a data channel number), frames, sender identity."""

    channel: int
    frames: list
    peer: bytes | None = None


class SourceLink:
    """The source's sockets: connect to the destination's control endpoint, then its data channels."""

    def __init__(self, to, timeout_s, context=None):
        self.host, self.port = parse_endpoint(to)
        self.timeout_s = timeout_s
        self.context = context or zmq.Context.instance()
        self.control = _socket(self.context, zmq.DEALER, timeout_s)
        self.control.connect(to)
        self.data = []

    def open_data(self, endpoints):
        """Connect one PUSH socket per data endpoint (ports are joined to the control host)."""
        self.data_context = zmq.Context(io_threads=max(1, len(endpoints)))
        for endpoint in endpoints:
            if isinstance(endpoint, int):
                endpoint = f"tcp://{self.host}:{endpoint}"
            sock = _socket(self.data_context, zmq.PUSH, self.timeout_s)
            sock.setsockopt(zmq.SNDHWM, DATA_HWM)
            sock.connect(endpoint)
            self.data.append(sock)

    def send_control(self, frames):
        _send(self.control, frames, copy=True)

    def send_data(self, channel, frames):
        """Send a data message without copying its payload."""
        _send(self.data[channel], frames, copy=False)

    def recv_control(self, timeout_s=None):
        """The next control message's frames; PeerTimeout after `timeout_s` (default: the link's)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if not self.control.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN):
            raise PeerTimeout(f"no answer from the destination within {timeout_s:g} s")
        return self.control.recv_multipart(copy=False)

    def close(self):
        _close(self.control, self.data, getattr(self, "data_context", None))


def _close(control, data, data_context):
    for sock in [control, *data]:
        sock.close(linger=0)
    if data_context is not None:
        data_context.term()


class DestinationLink:
    """The destination's sockets: a bound control ROUTER and, once negotiated, bound data PULLs."""

    def __init__(self, listen, timeout_s, context=None):
        self.host, port = parse_endpoint(listen)
        self.timeout_s = timeout_s
        self.context = context or zmq.Context.instance()
        self.control = _socket(self.context, zmq.ROUTER, timeout_s)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if port == 0:
            port = self.control.bind_to_random_port(f"tcp://{self.host}")
            self.endpoint = f"tcp://{self.host}:{port}"
        else:
            self.control.bind(listen)
            self.endpoint = listen
        self.data = []
        self._poller = zmq.Poller()
        self._poller.register(self.control, zmq.POLLIN)

    def open_data(self, channels):
        """Bind `channels` PULL sockets; return what the source connects to (ports, or endpoints)."""
        advertised = []
        self.data_context = zmq.Context(io_threads=max(1, channels))
        for channel in range(channels):
            sock = self.data_context.socket(zmq.PULL)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, DATA_HWM)
            if self.endpoint.startswith("tcp://"):
                advertised.append(sock.bind_to_random_port(f"tcp://{self.host}"))
            else:
                endpoint = f"{self.endpoint}-data{channel}"
                sock.bind(endpoint)
                advertised.append(endpoint)
            self._poller.register(sock, zmq.POLLIN)
            self.data.append(sock)
        return advertised

    def recv(self, timeout_s=None):
        """The next message from the control socket or a data channel.

        Raises PeerTimeout when nothing arrives within `timeout_s` (default: the link's).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(remaining_ms))
            if self.control in ready:
                peer, *frames = self.control.recv_multipart(copy=False)
                return Incoming(CONTROL, frames, peer.bytes)
            for channel, sock in enumerate(self.data):
                if sock in ready:
                    return Incoming(channel, sock.recv_multipart(copy=False))
            if time.monotonic() >= deadline:
                raise PeerTimeout(f"nothing from the source within {timeout_s:g} s")

    def send_control(self, peer, frames):
        try:
            self.control.send_multipart([peer, *frames], copy=True)
        except zmq.Again:
            raise PeerTimeout("the source did not take a control message within the timeout") from None
        except zmq.ZMQError as error:  # ROUTER_MANDATORY: the peer is gone
            raise PeerTimeout(f"the source is unreachable: {error}") from None

    def close(self):
        _close(self.control, self.data, getattr(self, "data_context", None))
