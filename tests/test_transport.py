"""The links' waits and the errors they give.

Waits come back to Python often enough to handle signals: a signal that lands just
before a poll system call is handled only when the call returns, and `precopy
receive` waits for its source for ever, so no single poll may.
"""

import math
import socket
import threading
import time

import pytest

from emulator.dataplane import transport
from emulator.dataplane.transport import DestinationLink, PeerTimeout, SourceLink
from emulator.wire import protocol
from emulator.wire.protocol import MsgType


class RecordingPoll:
    """Wraps a poll(ms) function: records each timeout, answers with `result` from call `ready_at` on."""

    def __init__(self, poll, ready_at=None, result=True):
        self.poll, self.ready_at, self.result, self.timeouts_ms = poll, ready_at, result, []

    def __call__(self, ms):
        self.timeouts_ms.append(ms)
        if self.ready_at is not None and len(self.timeouts_ms) >= self.ready_at:
            return self.result
        return self.poll(ms)


def test_an_endless_wait_is_cut_into_bounded_polls():
    poll = RecordingPoll(lambda ms: time.sleep(ms / 1000) or [], ready_at=4, result=[("sock", 1)])
    assert transport._poll_in_slices(poll, math.inf) == [("sock", 1)]
    assert poll.timeouts_ms == [250, 250, 250, 250]


def test_a_timed_wait_ends_on_time_in_bounded_polls():
    poll = RecordingPoll(lambda ms: time.sleep(ms / 1000) or [])
    started = time.monotonic()
    assert transport._poll_in_slices(poll, 0.6) == []
    assert time.monotonic() - started >= 0.6
    assert len(poll.timeouts_ms) == 3 and all(0 <= ms <= 250 for ms in poll.timeouts_ms)


def test_a_destination_waiting_for_ever_still_returns_to_python_and_gets_its_message():
    destination = DestinationLink("tcp://127.0.0.1:0", 5.0)
    source = SourceLink(destination.endpoint, 5.0)
    recording = RecordingPoll(destination._poller.poll)
    destination._poller.poll = recording
    hello = protocol.encode_control(MsgType.HELLO, 0, 0, {"protocol": protocol.VERSION})
    sender = threading.Timer(0.7, source.send_control, args=(hello,))
    sender.start()
    try:
        incoming = destination.recv(math.inf)
    finally:
        sender.join()
        source.close()
        destination.close()
    assert protocol.Decoder().decode(incoming.frames).type == MsgType.HELLO
    assert len(recording.timeouts_ms) >= 3  # 0.7 s in slices of 0.25 s at most
    assert all(0 <= ms <= 250 for ms in recording.timeouts_ms)


def test_a_peer_that_accepts_the_connection_but_never_answers_is_no_answer_after_the_timeout():
    silent = socket.create_server(("127.0.0.1", 0))  # TCP accepts; nothing speaks ZeroMQ
    link = SourceLink(f"tcp://127.0.0.1:{silent.getsockname()[1]}", 0.5)
    try:
        started = time.monotonic()
        with pytest.raises(PeerTimeout, match=r"^no answer from the destination within 0.5 s$"):
            link.send_control([b"hello"])
            link.recv_control()
        assert 0.5 <= time.monotonic() - started < 1.5  # the time it says, waited once
    finally:
        link.close()
        silent.close()


def test_a_port_in_use_is_said_so_with_the_fix():
    first = DestinationLink("tcp://127.0.0.1:0", 1.0)
    try:
        with pytest.raises(OSError, match="in use.*pick another port, or port 0"):
            DestinationLink(first.endpoint, 1.0)
    finally:
        first.close()


def test_a_refused_connection_and_an_unknown_host_are_said_at_once():
    free = DestinationLink("tcp://127.0.0.1:0", 1.0)
    endpoint = free.endpoint
    free.close()  # nobody listens there now
    started = time.monotonic()
    with pytest.raises(PeerTimeout, match="refused: is 'precopy receive' listening"):
        SourceLink(endpoint, 10.0)
    with pytest.raises(PeerTimeout, match="cannot resolve the destination's host 'nonexistent.invalid'"):
        SourceLink("tcp://nonexistent.invalid:4000", 10.0)
    assert time.monotonic() - started < 5.0  # not after the 10 s reply deadline
