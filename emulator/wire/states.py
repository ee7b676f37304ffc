"""The migration state machines, as data.

Rules:
* Each side (role) is in one state; every message it sends or receives is an
  event (direction, message type) looked up in TRANSITIONS[role][state].
* An event missing from the table is illegal: sending it raises
  LocalProtocolError, receiving it raises RemoteProtocolError; both name the
  state and the event. Either moves the side to FAILED.
* ABORT may be sent or received in any state that is not final, and leads to
  FAILED. HEARTBEAT is allowed in every non-final state and changes nothing.
* Data messages (PAGES, ZERO_PAGES) travel on data channels and may reach the
  destination after the control message that follows them on the source
  (PASS_END, SWITCHOVER, COMPLETE, POSTCOPY_END): the destination accepts them
  in the states just after those, and the engine matches message counts instead.
* Post-copy (POSTCOPY instead of SWITCHOVER): the source sends the device
  state and the MISSING pages, the destination resumes (RESUMED, ANNOUNCE),
  then the missing pages cross as data, the destination asking for the ones
  its vCPUs wait for (PAGE_REQUEST), until POSTCOPY_END's counts have arrived
  and POSTCOPY_DONE says so. A request may still reach the source after
  POSTCOPY_END: the page is on its way, and the request changes nothing.
* Post-copy recovery: when the link breaks in post-copy (POSTCOPY, POSTCOPY_SYNC),
  each side pauses (pause(): POSTCOPY_PAUSED, no message) instead of failing. The
  source connects anew and sends RECOVER; the destination answers RECOVERED (its
  new data endpoints) and MISSING (the pages it still lacks), and both are in
  POSTCOPY again, the control and data seqs counted from 0 on the new connection.
* A source that only asks whether the destination would host its guest sends
  CHECK instead of HELLO and ends with the VERDICT. The destination answers a
  CHECK outside any session, as it answers peers with no migration here: its
  table has no such event, and its state does not change.
"""

from emulator.wire.protocol import LocalProtocolError, MsgType, RemoteProtocolError

SOURCE, DESTINATION = "source", "destination"
SEND, RECV = "send", "recv"
DONE, FAILED = "DONE", "FAILED"
FINAL_STATES = frozenset({DONE, FAILED})
# post-copy, where a broken link pauses the migration; a recovery may break too, and pauses it again
PAUSABLE_STATES = frozenset({"POSTCOPY", "POSTCOPY_SYNC", "POSTCOPY_PAUSED", "RECOVER_WAIT", "RECOVER_LIST",
                             "RECOVERING", "RECOVERING_LIST"})

_DATA = (MsgType.PAGES, MsgType.ZERO_PAGES)


def _events(direction, types, new_state):
    return {(direction, msg_type): new_state for msg_type in types}


TRANSITIONS = {
    SOURCE: {
        "IDLE": {(SEND, MsgType.HELLO): "SETUP", (SEND, MsgType.CHECK): "CHECKING"},
        "CHECKING": {(RECV, MsgType.VERDICT): DONE},
        "SETUP": {(RECV, MsgType.ACCEPT): "PRECOPY", (RECV, MsgType.REFUSE): FAILED},
        "PRECOPY": {
            **_events(SEND, _DATA, "PRECOPY"),
            (SEND, MsgType.PASS_END): "PASS_SYNC",
            (SEND, MsgType.SWITCHOVER): "BLACKOUT",
            (SEND, MsgType.POSTCOPY): "POSTCOPY_SWITCH",
        },
        "PASS_SYNC": {(RECV, MsgType.PASS_END): "PRECOPY"},
        "BLACKOUT": {
            **_events(SEND, (*_DATA, MsgType.DEVICE_STATE), "BLACKOUT"),
            (SEND, MsgType.COMPLETE): "HANDOVER",
        },
        "HANDOVER": {(RECV, MsgType.RESUMED): "RESUMED"},
        "RESUMED": {(RECV, MsgType.ANNOUNCE): DONE},
        "POSTCOPY_SWITCH": {
            (SEND, MsgType.DEVICE_STATE): "POSTCOPY_SWITCH",
            (SEND, MsgType.MISSING): "POSTCOPY_HANDOVER",
        },
        "POSTCOPY_HANDOVER": {(RECV, MsgType.RESUMED): "POSTCOPY_RESUMED"},
        "POSTCOPY_RESUMED": {(RECV, MsgType.ANNOUNCE): "POSTCOPY"},
        "POSTCOPY": {
            **_events(SEND, _DATA, "POSTCOPY"),
            (RECV, MsgType.PAGE_REQUEST): "POSTCOPY",
            (SEND, MsgType.POSTCOPY_END): "POSTCOPY_SYNC",
        },
        "POSTCOPY_SYNC": {(RECV, MsgType.PAGE_REQUEST): "POSTCOPY_SYNC", (RECV, MsgType.POSTCOPY_DONE): DONE},
        "POSTCOPY_PAUSED": {(SEND, MsgType.RECOVER): "RECOVER_WAIT"},
        "RECOVER_WAIT": {(RECV, MsgType.RECOVERED): "RECOVER_LIST"},
        "RECOVER_LIST": {(RECV, MsgType.MISSING): "POSTCOPY"},
    },
    DESTINATION: {
        "IDLE": {(RECV, MsgType.HELLO): "SETUP"},
        "SETUP": {(SEND, MsgType.ACCEPT): "PRECOPY", (SEND, MsgType.REFUSE): FAILED},
        "PRECOPY": {
            **_events(RECV, _DATA, "PRECOPY"),
            (RECV, MsgType.PASS_END): "PASS_SYNC",
            (RECV, MsgType.SWITCHOVER): "BLACKOUT",
            (RECV, MsgType.POSTCOPY): "POSTCOPY_SWITCH",
        },
        "PASS_SYNC": {**_events(RECV, _DATA, "PASS_SYNC"), (SEND, MsgType.PASS_END): "PRECOPY"},
        "BLACKOUT": {
            **_events(RECV, (*_DATA, MsgType.DEVICE_STATE), "BLACKOUT"),
            (RECV, MsgType.COMPLETE): "VERIFY",
        },
        "VERIFY": {**_events(RECV, _DATA, "VERIFY"), (SEND, MsgType.RESUMED): "RESUMED"},
        "RESUMED": {(SEND, MsgType.ANNOUNCE): DONE},
        "POSTCOPY_SWITCH": {
            (RECV, MsgType.DEVICE_STATE): "POSTCOPY_SWITCH",
            (RECV, MsgType.MISSING): "POSTCOPY_RESUMING",
        },
        "POSTCOPY_RESUMING": {(SEND, MsgType.RESUMED): "POSTCOPY_RESUMED"},
        "POSTCOPY_RESUMED": {(SEND, MsgType.ANNOUNCE): "POSTCOPY"},
        "POSTCOPY": {
            **_events(RECV, _DATA, "POSTCOPY"),
            (SEND, MsgType.PAGE_REQUEST): "POSTCOPY",
            (RECV, MsgType.POSTCOPY_END): "POSTCOPY_SYNC",
        },
        "POSTCOPY_SYNC": {
            **_events(RECV, _DATA, "POSTCOPY_SYNC"),
            (SEND, MsgType.PAGE_REQUEST): "POSTCOPY_SYNC",
            (SEND, MsgType.POSTCOPY_DONE): DONE,
        },
        "POSTCOPY_PAUSED": {(RECV, MsgType.RECOVER): "RECOVERING"},
        "RECOVERING": {(SEND, MsgType.RECOVERED): "RECOVERING_LIST"},
        "RECOVERING_LIST": {(SEND, MsgType.MISSING): "POSTCOPY"},
    },
}


class Session:
    """One side's protocol state. Call `sent()`/`received()` for every message."""

    def __init__(self, role):
        if role not in TRANSITIONS:
            raise ValueError(f"unknown role {role!r}: expected {SOURCE!r} or {DESTINATION!r}")
        self.role = role
        self.state = "IDLE"

    def sent(self, msg_type):
        """Record that we send `msg_type`; raises LocalProtocolError if not allowed now."""
        self._step(SEND, MsgType(msg_type), LocalProtocolError)

    def received(self, msg_type):
        """Record that the peer sent `msg_type`; raises RemoteProtocolError if not allowed now."""
        self._step(RECV, MsgType(msg_type), RemoteProtocolError)

    def check_received(self, msg_type):
        """As received(), for an event that leaves the state as it is (a data message, checked on its
        channel's thread): raises the same error when it is illegal now, and writes nothing; the
        thread that owns the state records the failure (DestinationProtocol.fail)."""
        state = self.state
        if state in FINAL_STATES or TRANSITIONS[self.role][state].get((RECV, msg_type)) != state:
            raise RemoteProtocolError("type", f"the {self.role} cannot receive {MsgType(msg_type).name} in state "
                                              f"{state}")

    @property
    def finished(self):
        return self.state in FINAL_STATES

    def pause(self):
        """The link broke in post-copy: wait for RECOVER (a state change without a message). LocalProtocolError
        outside post-copy, where a broken link ends the migration."""
        if self.state not in PAUSABLE_STATES:
            raise LocalProtocolError("type", f"the {self.role} cannot pause in state {self.state}")
        self.state = "POSTCOPY_PAUSED"

    def _step(self, direction, msg_type, error):
        if self.state not in FINAL_STATES:
            if msg_type == MsgType.HEARTBEAT:
                return
            if msg_type == MsgType.ABORT:
                self.state = FAILED
                return
            new_state = TRANSITIONS[self.role][self.state].get((direction, msg_type))
            if new_state is not None:
                self.state = new_state
                return
        state, self.state = self.state, FAILED
        verb = "send" if direction == SEND else "receive"
        raise error("type", f"the {self.role} cannot {verb} {msg_type.name} in state {state}")
