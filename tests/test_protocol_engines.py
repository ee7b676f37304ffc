"""The protocol engines driven directly, and joined to each other in memory: no sockets."""

from dataclasses import dataclass

import numpy as np
import pytest

from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from emulator.wire import protocol
from emulator.wire.protocol import Flags, LocalProtocolError, MsgType, RemoteProtocolError
from emulator.wire.protocol_engines import (DataPages, DestinationProtocol, FinalPassComplete, PassComplete, Recover,
                                            SourceProtocol, Switchover, aborted)
from emulator.wire.states import FAILED

PAGE = 4096
RESUMED_BODY = {"digest": "d", "storage_token": "t", "final_pages_s": 0.01, "digest_check_s": 0.0, "resume_s": 0.001,
                "disk_digest": None, "disk_sync_s": 0.0}
SCENARIO = Scenario(GuestSpec(64 * PAGE), WorkloadSpec(), MigrationOptions(channels=2))


@dataclass
class ZeroBatch:
    """A batch (emulator.dataplane.batches.Batch) of zero pages starting at `first`."""
    first: int
    kind: MsgType = MsgType.ZERO_PAGES
    flags: Flags = Flags.NONE

    def frames(self, seq, pass_no, page_size):
        return protocol.encode_zero_pages(seq, pass_no, [self.first, self.first + 1], page_size, Flags.NONE)


def joined():
    """(source, destination) engines past HELLO and ACCEPT."""
    source, destination = SourceProtocol(2, PAGE), DestinationProtocol()
    hello = destination.check_hello(source.hello(SCENARIO.to_dict(), "s"))
    destination.receive_hello(hello)
    assert source.receive(destination.accept(SCENARIO, [5001, 5002])).type == MsgType.ACCEPT
    return source, destination


def send_data(source, destination, n):
    return [destination.receive_data(*source.data(ZeroBatch(2 * i))) for i in range(n)]


def test_a_short_migration_end_to_end():
    source, destination = joined()
    events = send_data(source, destination, 3)
    assert [[type(e) for e in es] for es in events] == [[DataPages]] * 3
    assert [es[0].channel for es in events] == [0, 1, 0]
    assert destination.receive_control(source.pass_end(6)) == (PassComplete(0),)
    ack = source.receive(destination.acknowledge_pass(6, 0.1))
    assert (ack.type, ack.body["pass"], source.pass_no, destination.pass_no) == (MsgType.PASS_END, 0, 1, 1)
    assert destination.receive_control(source.switchover("converged")) == (Switchover(1),)
    held = [source.data(ZeroBatch(0)), source.data(ZeroBatch(2))]
    events = [destination.receive_data(*held[0])]
    events.append(destination.receive_control(source.device_state(bytes(SCENARIO.migration.device_state_bytes))))
    events.append(destination.receive_control(source.complete(4, "d", "dd", "t")))
    assert events[-1] == ()  # the second message has not arrived yet
    last = destination.receive_data(*held[1])
    assert source.messages == [1, 1] and type(last[-1]) is FinalPassComplete
    assert last[-1].complete.body["messages"] == [1, 1]
    assert source.receive(destination.resumed(RESUMED_BODY)).type == MsgType.RESUMED
    assert source.receive(destination.announce("here")).type == MsgType.ANNOUNCE
    assert source.state == destination.state == "DONE"


def test_pass_end_before_its_data_completes_when_the_last_message_arrives():
    source, destination = joined()
    frames = [source.data(ZeroBatch(2 * i)) for i in range(2)]
    assert destination.receive_control(source.pass_end(4)) == ()
    assert len(destination.receive_data(*frames[0])) == 1
    assert destination.receive_data(*frames[1])[-1] == PassComplete(0)


def error_of(call, *args, error=RemoteProtocolError):
    """The field and text of the protocol error (RemoteProtocolError unless `error` says) `call(*args)` raises."""
    with pytest.raises(error) as caught:
        call(*args)
    return caught.value.field, str(caught.value)


def test_a_wrong_seq_on_a_data_channel():
    source, destination = joined()
    channel, frames = source.data(ZeroBatch(0))
    destination.receive_data(channel, frames)
    field, text = error_of(destination.receive_data, channel, frames)
    assert field == "seq" and "got 0, expected 1" in text and destination.state == "FAILED"


def test_data_for_another_pass():
    source, destination = joined()
    frames = protocol.encode_zero_pages(0, 1, [0, 1], PAGE, Flags.NONE)
    assert error_of(destination.receive_data, 0, frames)[0] == "pass_no"


def test_pass_end_with_wrong_length_counts():
    source, destination = joined()
    frames = protocol.encode_control(MsgType.PASS_END, 1, 0, {"pass": 0, "messages": [0], "pages": 0, "blocks": 0})
    field, text = error_of(destination.receive_control, frames)
    assert field == "body.messages" and "expected 2 message counts, got [0]" in text


def test_more_messages_than_announced():
    source, destination = joined()
    send_data(source, destination, 1)
    frames = protocol.encode_control(MsgType.PASS_END, 1, 0, {"pass": 0, "messages": [1, 1], "pages": 0, "blocks": 0})
    assert destination.receive_control(frames) == ()
    extra = protocol.encode_zero_pages(1, 0, [4, 5], PAGE, Flags.NONE)
    field, text = error_of(destination.receive_data, 0, extra)
    assert field == "seq" and "more messages than announced" in text


def test_data_before_accept():
    destination = DestinationProtocol()
    destination.receive_hello(destination.check_hello(SourceProtocol(2, PAGE).hello(SCENARIO.to_dict(), "s")))
    frames = protocol.encode_control(MsgType.PASS_END, 1, 0, {"pass": 0, "messages": [0, 0], "pages": 0, "blocks": 0})
    field, text = error_of(destination.receive_control, frames)
    assert field == "type" and "PASS_END in state SETUP" in text


def test_complete_with_the_wrong_pass():
    source, destination = joined()
    destination.receive_control(source.switchover("converged"))
    frames = protocol.encode_control(MsgType.COMPLETE, 2, 0, {"pass": 3, "messages": [0, 0]})
    field, text = error_of(destination.receive_control, frames)
    assert field == "body.pass" and "got 3, the current pass is 0" in text


def test_an_ack_of_another_pass_on_the_source():
    source, destination = joined()
    source.pass_end(0)
    frames = protocol.encode_control(MsgType.PASS_END, 1, 0, {"pass": 1, "pages_applied": 0, "cpu_s": 0})
    field, text = error_of(source.receive, frames)
    assert field == "body.pass" and "acknowledged pass 1, expected 0" in text and source.state == "FAILED"


@pytest.mark.parametrize("endpoints", [[5001], [5001, 5002, 5003], [5001, True], [5001, 0], [5001, 70000],
                                       [5001, ""], [5001, None], "5001,5002"])
def test_the_source_refuses_an_accept_whose_data_endpoints_are_not_one_per_channel(endpoints):
    source, destination = SourceProtocol(2, PAGE), DestinationProtocol()
    destination.receive_hello(destination.check_hello(source.hello(SCENARIO.to_dict(), "s")))
    accept = protocol.encode_control(MsgType.ACCEPT, 0, 0, {"data": endpoints})
    field, _ = error_of(source.receive, accept)
    assert field == "body.data" and source.state == "FAILED"


def test_a_failed_source_still_tells_the_destination_why():
    source, destination = joined()
    assert destination.receive_control(source.pass_end(0)) == (PassComplete(0),)
    with pytest.raises(RemoteProtocolError):
        source.receive(protocol.encode_control(MsgType.PASS_END, 7, 0, {"pass": 0}))  # seq 7: a gap
    abort = destination.receive_control(source.abort("protocol error: seq: got 7, expected 1"))
    assert abort[0].reason == "protocol error: seq: got 7, expected 1" and destination.finished


def test_a_second_pass_end_for_one_pass():
    source, destination = joined()
    destination.receive_control(source.pass_end(0))
    again = protocol.encode_control(MsgType.PASS_END, 2, 0, {"pass": 0, "messages": [0, 0], "pages": 0, "blocks": 0})
    field, text = error_of(destination.receive_control, again)
    assert field == "type" and "cannot receive PASS_END in state PASS_SYNC" in text and destination.state == "FAILED"


def test_data_after_the_pass_completed_and_before_its_acknowledge():
    source, destination = joined()
    send_data(source, destination, 1)
    assert destination.receive_control(source.pass_end(2)) == (PassComplete(0),)  # counts [1, 0]
    extra = protocol.encode_zero_pages(0, 0, [4, 5], PAGE, Flags.NONE)
    field, text = error_of(destination.receive_data, 1, extra)
    assert field == "seq" and "more messages than announced for pass 0" in text


def test_pages_announced_must_be_the_pages_the_messages_held():
    source, destination = joined()
    send_data(source, destination, 2)  # 4 pages
    field, text = error_of(destination.receive_control, source.pass_end(5))
    assert field == "body.pages" and "announced 5 pages, the messages held 4" in text


def test_device_state_exactly_once_before_complete():
    source, destination = joined()
    destination.receive_control(source.switchover("converged"))
    field, text = error_of(destination.receive_control, source.complete(0, "d", "dd", "t"))
    assert field == "type" and "COMPLETE before DEVICE_STATE" in text
    source, destination = joined()
    destination.receive_control(source.switchover("converged"))
    blob = bytes(SCENARIO.migration.device_state_bytes)
    destination.receive_control(source.device_state(blob))
    field, text = error_of(destination.receive_control, source.device_state(blob))
    assert field == "type" and "a second DEVICE_STATE" in text


@pytest.mark.parametrize("frames", [[b"garbage"], protocol.encode_control(MsgType.PASS_END, 1, 0, {"pass": 0})])
def test_a_message_that_does_not_decode_or_lacks_a_field_fails_the_side(frames):
    source, destination = joined()
    error_of(destination.receive_control, frames)
    assert destination.state == "FAILED"
    error_of(destination.receive_control, source.pass_end(0))  # and it stays failed


def test_our_own_misuse_is_a_local_error_that_fails_the_side():
    local = protocol.LocalProtocolError
    source, destination = joined()
    field, _ = error_of(destination.acknowledge_pass, 0, 0.0, error=local)  # pass 0 did not complete
    assert field == "type" and destination.state == "FAILED"
    source, destination = joined()
    field, text = error_of(destination.receive_data, 2, source.data(ZeroBatch(0))[1], error=local)
    assert field == "channel" and "data channel 2 was not negotiated (2 were)" in text


def test_the_source_checks_the_fields_it_reads_of_resumed():
    source, destination = joined()
    destination.receive_control(source.switchover("converged"))
    destination.receive_control(source.device_state(bytes(SCENARIO.migration.device_state_bytes)))
    destination.receive_control(source.complete(0, "d", "dd", "t"))
    field, _ = error_of(source.receive, destination.resumed(dict(RESUMED_BODY, resume_s="soon")))
    assert field == "body.resume_s" and source.state == "FAILED"


@pytest.mark.parametrize("body, cancelled", [({"reason": "r", "cancelled": True}, True), ({"reason": "r"}, False),
                                             ({"reason": "r", "cancelled": 1}, False),
                                             ({"reason": "r", "cancelled": "yes"}, False)])
def test_only_a_json_true_says_an_abort_was_cancelled_on_both_sides(body, cancelled):
    message = protocol.Decoder().decode(protocol.encode_control(MsgType.ABORT, 0, 0, body))
    assert aborted(message) == ("r", cancelled)


@pytest.mark.parametrize("pages", [[], [2, 1], [1, 1], [-1]])
def test_a_bad_page_request_fails_the_engine_and_spends_no_sequence_number(pages):
    engine = DestinationProtocol()
    engine.session.state, engine._sent_seq = "POSTCOPY", 7
    with pytest.raises(LocalProtocolError) as info:
        engine.page_request(pages)
    assert info.value.field == "page_numbers" and engine.state == FAILED and engine._sent_seq == 7


def in_postcopy():
    """(source, destination) engines in the post-copy pass 1 of SCENARIO (pages 4-9 missing), after ANNOUNCE."""
    source, destination = joined()
    source.n_pages = SCENARIO.guest.n_pages
    assert destination.receive_control(source.pass_end(0)) == (PassComplete(0),)
    source.receive(destination.acknowledge_pass(0, 0.0))
    destination.receive_control(source.postcopy("max-passes", "dd", "t"))
    destination.receive_control(source.device_state(bytes(SCENARIO.migration.device_state_bytes)))
    destination.receive_control(source.missing(np.arange(4, 10)))
    source.receive(destination.resumed(RESUMED_BODY))
    source.receive(destination.announce("here"))
    assert source.state == destination.state == "POSTCOPY"
    return source, destination


def test_a_post_copy_link_that_broke_goes_on_over_a_new_connection_with_counts_from_zero():
    source, destination = in_postcopy()
    send_data(source, destination, 1)  # channel 0 has seq 1 now; a second message is lost with the link
    source.data(ZeroBatch(6))
    destination.pause()
    recover = source.recover("s")
    assert source.state == "RECOVER_WAIT" and destination.state == "POSTCOPY_PAUSED"
    message = protocol.Decoder().decode(recover)
    assert (message.seq, message.body) == (0, {"session": "s", "pass": 1})  # the first of the new connection
    assert destination.receive_control(recover) == (Recover("s"),)
    assert source.receive(destination.recovered([6001, 6002])).body == {"data": [6001, 6002], "pass": 1}
    still = source.receive(destination.still_missing(np.array([6, 7, 8, 9])))
    assert still.type == MsgType.MISSING and still.page_numbers.tolist() == [6, 7, 8, 9]
    assert source.state == destination.state == "POSTCOPY"
    # the data seqs and the pass's counts start at 0 again: two messages now, and POSTCOPY_END counts those
    events = send_data(source, destination, 2)
    assert [es[0].message.seq for es in events] == [0, 0]
    assert destination.receive_control(source.postcopy_end(4, "d"))[0].end.body["messages"] == [1, 1]


def test_recover_is_refused_outside_post_copy_and_in_post_copy_only_once_paused():
    source, destination = joined()
    with pytest.raises(LocalProtocolError):  # pre-copy: a broken link ends the migration
        destination.pause()
    assert destination.state == "PRECOPY"
    source, destination = in_postcopy()
    frames = protocol.encode_control(MsgType.RECOVER, 5, 1, {"session": "s", "pass": 1})  # not paused here
    with pytest.raises(RemoteProtocolError, match="cannot receive RECOVER in state POSTCOPY"):
        destination.receive_control(frames)
    assert destination.state == FAILED


def test_a_preempt_channel_is_the_last_and_carries_only_what_is_sent_on_it():
    source = SourceProtocol(2, PAGE, preempt=True)
    source.session.state = "PRECOPY"  # past ACCEPT, as joined() would leave it
    channels = [source.data(ZeroBatch(2 * i))[0] for i in range(4)] + [source.data(ZeroBatch(8), preempt=True)[0]]
    assert channels == [0, 1, 0, 1, 2] and source.messages == [2, 2, 1]
    plain = SourceProtocol(2, PAGE)
    plain.session.state = "PRECOPY"
    with pytest.raises(LocalProtocolError, match="no preempt channel was negotiated"):
        plain.data(ZeroBatch(0), preempt=True)


@pytest.mark.parametrize("body, field", [({"session": 5, "pass": 1}, "body.session"),
                                         ({"session": "s", "pass": 0}, "body.pass")])
def test_a_recover_with_a_bad_session_or_pass_is_refused_naming_it(body, field):
    source, destination = in_postcopy()
    destination.pause()
    frames = protocol.encode_control(MsgType.RECOVER, 0, 1, body)
    assert DestinationProtocol.recover_session(frames) == (body["session"] if field != "body.session" else None)
    with pytest.raises(RemoteProtocolError) as refused:
        destination.receive_control(frames)
    assert refused.value.field == field and destination.state == FAILED


@pytest.mark.parametrize("body, field", [({"data": [6001], "pass": 1}, "body.data"),
                                         ({"data": [6001, 6002], "pass": 2}, "body.pass"),
                                         ({"data": [6001, 6002]}, "body.pass")])
def test_a_recovered_with_bad_endpoints_or_pass_is_refused_naming_it(body, field):
    source, destination = in_postcopy()
    source.recover("s")
    with pytest.raises(RemoteProtocolError) as refused:
        source.receive(protocol.encode_control(MsgType.RECOVERED, 0, 1, body))
    assert refused.value.field == field and source.state == FAILED


def test_only_a_recover_names_a_session_to_go_on_with():
    assert DestinationProtocol.recover_session(protocol.encode_control(MsgType.HEARTBEAT, 0, 0, {})) is None
    assert DestinationProtocol.recover_session([b"garbage"]) is None
