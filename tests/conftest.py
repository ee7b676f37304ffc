"""Fixtures the tests share."""

import pytest
import zmq


@pytest.fixture
def context():
    """A ZeroMQ context for a test's own peers, destroyed (its sockets closed) however the test ends: a
    context left with open sockets would hang the session when it is collected."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)
