import pytest

from emulator.wire.protocol import LocalProtocolError, MsgType, RemoteProtocolError
from emulator.wire.states import DESTINATION, FAILED, SOURCE, TRANSITIONS, Session

def drive(session, steps):
    for method, msg_type in steps:
        getattr(session, method)(msg_type)


def test_a_whole_migration_on_both_sides():
    # the source's view; the destination sees the same messages mirrored
    script = [("sent", MsgType.HELLO), ("received", MsgType.ACCEPT),
              ("sent", MsgType.PAGES), ("sent", MsgType.ZERO_PAGES), ("sent", MsgType.PASS_END),
              ("received", MsgType.HEARTBEAT), ("received", MsgType.PASS_END),
              ("sent", MsgType.PAGES), ("sent", MsgType.PASS_END), ("received", MsgType.PASS_END),
              ("sent", MsgType.SWITCHOVER), ("sent", MsgType.PAGES), ("sent", MsgType.DEVICE_STATE),
              ("sent", MsgType.COMPLETE), ("received", MsgType.RESUMED), ("received", MsgType.ANNOUNCE)]
    source, destination = Session(SOURCE), Session(DESTINATION)
    for method, msg_type in script:
        getattr(source, method)(msg_type)
        getattr(destination, "received" if method == "sent" else "sent")(msg_type)
    assert source.state == destination.state == "DONE"
    assert source.finished and destination.finished


def test_data_may_trail_the_control_message_on_the_destination():
    destination = Session(DESTINATION)
    drive(destination, [("received", MsgType.HELLO), ("sent", MsgType.ACCEPT), ("received", MsgType.PASS_END),
                        ("received", MsgType.PAGES), ("sent", MsgType.PASS_END), ("received", MsgType.SWITCHOVER),
                        ("received", MsgType.COMPLETE), ("received", MsgType.ZERO_PAGES)])
    assert destination.state == "VERIFY"


@pytest.mark.parametrize("role", [SOURCE, DESTINATION])
def test_every_missing_transition_is_refused_naming_state_and_event(role):
    for state, table in TRANSITIONS[role].items():
        for msg_type in MsgType:
            if msg_type in (MsgType.ABORT, MsgType.HEARTBEAT):
                continue
            for method, error, direction in (("sent", LocalProtocolError, "send"), ("received", RemoteProtocolError, "recv")):
                if (direction, msg_type) in table:
                    continue
                session = Session(role)
                session.state = state
                with pytest.raises(error, match=f"{msg_type.name} in state {state}") as caught:
                    getattr(session, method)(msg_type)
                assert caught.value.field == "type"
                assert session.state == FAILED


def test_abort_from_any_live_state_fails_and_a_final_state_accepts_nothing():
    for state in TRANSITIONS[SOURCE]:
        session = Session(SOURCE)
        session.state = state
        session.received(MsgType.ABORT)
        assert session.state == FAILED
        with pytest.raises(RemoteProtocolError, match="in state FAILED"):
            session.received(MsgType.HEARTBEAT)


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="unknown role"):
        Session("observer")
