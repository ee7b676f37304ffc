"""An in-memory link pair with the transport's interface: the engines run with no sockets.

Frames are copied into bytes when sent, as a network would: a payload that
views live guest memory is captured at send time.
"""

import queue
import time

from emulator.dataplane.transport import CONTROL, WAKE, Incoming, PeerTimeout

SOURCE_PEER = b"source"


class _Pipe:
    def __init__(self):
        self.to_destination = queue.Queue()
        self.to_source = queue.Queue()
        self.data = []  # a queue per data channel, once the destination opened them


def _get(q, timeout_s, who):
    try:
        return q.get(timeout=timeout_s)
    except queue.Empty:
        raise PeerTimeout(f"nothing from the {who} within {timeout_s:g} s") from None


class FakeSourceLink:
    def __init__(self, pipe, timeout_s=5.0):
        self.pipe, self.timeout_s = pipe, timeout_s

    def open_data(self, endpoints, message_bytes):
        assert len(endpoints) == len(self.pipe.data) and message_bytes > 0

    def send_control(self, frames):
        self.pipe.to_destination.put(Incoming(CONTROL, [bytes(f) for f in frames], SOURCE_PEER))

    def send_data(self, channel, frames):
        self.pipe.data[channel].put([bytes(f) for f in frames])

    def control_pending(self):
        return not self.pipe.to_source.empty()

    def recv_control(self, timeout_s=None):
        return _get(self.pipe.to_source, self.timeout_s if timeout_s is None else timeout_s, "destination")

    def close(self):
        pass


class FakeDestinationLink:
    endpoint = "inproc://fake"

    def __init__(self, pipe, timeout_s=5.0):
        self.pipe, self.timeout_s = pipe, timeout_s

    def open_data(self, channels, message_bytes):
        assert message_bytes > 0
        self.pipe.data = [queue.Queue() for _ in range(channels)]
        return [f"inproc://fake-data-{channel}" for channel in range(channels)]

    def data_receivers(self):
        return [_Receiver(data) for data in self.pipe.data]

    def recv(self, timeout_s=None):
        return _get(self.pipe.to_destination, self.timeout_s if timeout_s is None else timeout_s, "source")

    def send_control(self, peer, frames, wait=True):
        assert peer == SOURCE_PEER
        self.pipe.to_source.put([bytes(f) for f in frames])

    def doorbell(self):
        return _Doorbell(self.pipe.to_destination)

    def close_data(self):
        pass

    def close(self):
        pass


class _Receiver:
    def __init__(self, data):
        self.data = data

    def recv(self, timeout_s):
        try:
            return self.data.get(timeout=timeout_s)
        except queue.Empty:
            return None


class _Doorbell:
    def __init__(self, to_destination):
        self.to_destination = to_destination

    def ring(self):
        self.to_destination.put(Incoming(WAKE, []))


def link_pair(timeout_s=5.0):
    """(source link, destination link) joined in memory."""
    pipe = _Pipe()
    return FakeSourceLink(pipe, timeout_s), FakeDestinationLink(pipe, timeout_s)


def wait_until(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)
