"""Why a migration ends before it completed: one hierarchy, on both sides.

Each error carries what a report needs: `status` ("failed" or "cancelled") and
`reason` (the text, with its kind in front). Source.run and Destination.run
turn any of them into the report's status and reason in one place, and send
the peer an ABORT unless it already knows (`answered`: it ended the
migration itself, or was sent REFUSE).

    MigrationError              failed, for a reason of its own
    ├── ProtocolError           a message breaks the wire protocol
    │   ├── LocalProtocolError  (ours)
    │   └── RemoteProtocolError (the peer's)
    ├── Refused                 setup refused: a limit, a bad scenario, a version
    ├── PeerTimeout             the peer did not answer, or is unreachable
    ├── PeerAborted             the peer sent ABORT (cancelled, if its user did)
    ├── Cancelled               this side's user cancelled
    └── Mismatch                the destination's memory is not the source's
"""


class MigrationError(Exception):
    """A migration that cannot go on; str() is what went wrong."""

    status = "failed"
    kind = ""  # what `reason` starts with, if anything
    answered = False  # True: the peer knows already, no ABORT is owed

    @property
    def reason(self):
        """The report's reason: the kind, then what went wrong."""
        return f"{self.kind}: {self}" if self.kind else str(self)


class ProtocolError(MigrationError):
    """A message that breaks the wire protocol.

    field: the offending header field or frame, e.g. "magic", "raw_len",
    "page_numbers", "payload", "body.page_size".
    """

    kind = "protocol error"

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class Refused(MigrationError):
    """Setup refused the migration (REFUSE was sent, or received from `by`)."""

    answered = True

    def __init__(self, message, by=None):
        super().__init__(message)
        self.kind = f"{by} refused" if by else "refused"


class PeerTimeout(MigrationError):
    """The peer did not answer (or accept data) within the deadline, or cannot be reached."""


class NothingListens(PeerTimeout):
    """The connection to the peer's endpoint was refused: no process listens there (any more)."""


class LinkBroken(PeerTimeout):
    """The connection to the peer is gone (its process ended, or the network dropped it): known at once,
    not at a deadline."""


class PeerAborted(MigrationError):
    """The peer (`by`: "source" or "destination") sent ABORT; cancelled: its user cancelled."""

    answered = True

    def __init__(self, message, by, cancelled=False):
        super().__init__(message)
        self.kind = f"{by} aborted"
        self.status = "cancelled" if cancelled else "failed"


class Cancelled(MigrationError):
    """This side's user cancelled (Ctrl-C, or a cancel request)."""

    status = "cancelled"


class Mismatch(MigrationError):
    """The destination's memory or device state differs from the source's."""
