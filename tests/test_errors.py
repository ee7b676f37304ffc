"""The migration errors: each becomes a report's status and reason the same way on both sides."""

import pytest

from emulator.core.errors import (Cancelled, MigrationError, Mismatch, PeerAborted, PeerTimeout, Refused,
                                  RemoteProtocolError)


@pytest.mark.parametrize("error, status, reason, answered", [
    (MigrationError("pre-copy stalled"), "failed", "pre-copy stalled", False),
    (RemoteProtocolError("raw_len", "got 3"), "failed", "protocol error: raw_len: got 3", False),
    (Refused("guest.memory_bytes is 1 TiB"), "failed", "refused: guest.memory_bytes is 1 TiB", True),
    (Refused("too big", by="destination"), "failed", "destination refused: too big", True),
    (PeerTimeout("nothing from the source within 10 s"), "failed", "nothing from the source within 10 s", False),
    (PeerAborted("disk full", "destination"), "failed", "destination aborted: disk full", True),
    (PeerAborted("by its user", "source", cancelled=True), "cancelled", "source aborted: by its user", True),
    (Cancelled("cancelled by the user on the source"), "cancelled", "cancelled by the user on the source", False),
    (Mismatch("memory digest mismatch"), "failed", "memory digest mismatch", False),
])
def test_each_error_gives_its_status_reason_and_whether_an_abort_is_owed(error, status, reason, answered):
    assert (error.status, error.reason, error.answered) == (status, reason, answered)
    assert isinstance(error, MigrationError)


def test_protocol_error_names_its_field():
    assert RemoteProtocolError("body.pass", "got 3").field == "body.pass"
