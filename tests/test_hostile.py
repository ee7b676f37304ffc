"""A live `precopy receive --serve` against mutated and random frames over loopback.

Every bad message must be answered with an ABORT (or REFUSE) that names the
problem; nothing crashes, nothing resumes, memory stays bounded, and a valid
migration afterwards still succeeds.
"""

import dataclasses
import hashlib
import json
import re
import signal
import time

import numpy as np
import zmq

from emulator.running.migration import run_source
from emulator.vm.disk import DiskSpec
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import GuestConfig, MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from emulator.wire import protocol
from emulator.wire.protocol import Codec, Flags, MsgType
from tests.cli_process import PrecopyProcess

FRAMES = 300
SMALL = Scenario(GuestSpec(256 * 4096, fill="random"), WorkloadSpec(rate_pages_per_s=2000),
                 MigrationOptions(timeout_s=3.0))


def peer(context, endpoint, **options):
    """A DEALER connected to `endpoint`, as a source's control socket, with ZeroMQ `options` set first."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    return sock


def valid_messages():
    hello = protocol.encode_control(MsgType.HELLO, 0, 0, {"protocol": protocol.VERSION, "session": "x", "scenario": SMALL.to_dict()})
    pages = protocol.encode_pages(1, 0, np.arange(4), bytes(4 * 4096), Codec.RAW, 4 * 4096)
    zero = protocol.encode_zero_pages(2, 0, [[0, 256]], 4096, Flags.RUNS)
    pass_end = protocol.encode_control(MsgType.PASS_END, 3, 0, {"pass": 0, "messages": [1], "pages": 4, "blocks": 0})
    check = protocol.encode_control(MsgType.CHECK, 0, 0, {"protocol": protocol.VERSION, "scenario": SMALL.to_dict()})
    return [[bytes(frame) for frame in message] for message in (hello, pages, zero, pass_end, check)]


def mutations(rng):
    """Random frames and valid messages with a byte flipped, a frame cut short or extended, or frames lost."""
    templates = valid_messages()
    for index in range(FRAMES):
        kind = index % 5
        frames = [bytearray(frame) for frame in templates[rng.integers(len(templates))]]
        if kind == 0:
            frames = [bytearray(rng.bytes(int(rng.integers(0, 80)))) for _ in range(int(rng.integers(1, 5)))]
        elif kind == 1:
            target = frames[int(rng.integers(len(frames)))]
            if target:
                target[int(rng.integers(len(target)))] ^= int(rng.integers(1, 256))
        elif kind == 2:
            frames[0] = frames[0][: int(rng.integers(0, len(frames[0])))]
        elif kind == 3:
            frames[int(rng.integers(len(frames)))] += rng.bytes(int(rng.integers(1, 64)))
        else:
            frames = frames[: int(rng.integers(0, len(frames)))] or [bytearray()]
        yield [bytes(frame) for frame in frames]


def test_live_receiver_survives_hostile_frames_then_migrates(context):
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--capacity", "64MiB",
                              "--timeout", "2s", "--json")
    try:
        endpoint = receiver.wait_listening()
        replies = {}
        for frames in mutations(np.random.default_rng(7)):
            sock = peer(context, endpoint)  # a fresh peer each time: a new identity, a clean slate
            sock.send_multipart(frames)
            assert sock.poll(5000), f"no answer to {frames!r:.200}"
            reply = protocol.Decoder().decode(sock.recv_multipart())
            replies[reply.type.name] = replies.get(reply.type.name, 0) + 1
            if reply.type in (MsgType.ABORT, MsgType.REFUSE):
                assert reply.body["reason"]
            sock.close()
        assert sum(replies.values()) == FRAMES and set(replies) <= {"ABORT", "REFUSE", "ACCEPT", "VERDICT"}, replies
        assert replies["ABORT"] > FRAMES / 2, replies
        deadline = time.monotonic() + 15
        while True:  # a fuzzed HELLO may have been valid: that "migration" must time out first
            report = run_source(SMALL, endpoint)
            if "busy" not in (report.reason or "") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert report.status == "completed" and report.digests_match, report.reason
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    outcomes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert outcomes and outcomes[-1]["status"] in ("completed", "cancelled")
    assert [o["status"] for o in outcomes].count("completed") == 1  # only the valid migration resumed
    assert "Traceback" not in err


BAD_SCENARIO_FIELDS = [
    ("workload", "hot_fraction", 0),
    ("workload", "hot_share", 1.5),
    ("workload", "vcpus", 0),
    ("workload", "write_size", 12),
    ("workload", "stride", 0),
    ("workload", "zipf_s", -1),
    ("workload", "seed", -1),
    ("workload", "pattern", "spiral"),
    ("guest", "page_size", 3000),
    ("migration", "channels", 1000),
    ("migration", "codec", "zstd"),
    ("guest", "memory_bytes", 8192.0),
    ("guest", "seed", "7"),
    ("migration", "channels", True),
    ("migration", "auto_converge", "yes"),
    ("config", "cpu", 5),
    ("config", "switches", "ab"),
    ("config", "version", 0),
    ("config", "bogus", 1),
    ("disk", "name", "../../etc/passwd"),  # a peer names the file it writes: never a path
    ("disk", "name", "/etc/passwd"),
    ("disk", "name", "disk.img.part"),
    ("disk", "block_size", 3000),
    ("disk", "size_bytes", (1 << 20) + 1),
    ("disk", "write_rate_bytes_per_s", "fast"),
    ("disk", "pattern", "spiral"),
    ("disk", "bogus", 1),
    ("migration", "storage", "copy"),
    ("migration", "dirty_limit_bytes_per_s", 0),
    ("migration", "xbzrle", "yes"),
    ("migration", "xbzrle_cache_bytes", 1),
    ("policy", "downtime_ramp", {"steps": 0, "delay_s_per_gib": 75.0}),
    ("policy", "downtime_ramp", [10, 75]),
]


def test_a_serving_receiver_refuses_a_semantically_bad_hello_naming_the_field_then_migrates(context):
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--capacity", "64MiB",
                              "--timeout", "2s", "--json")
    try:
        endpoint = receiver.wait_listening()
        for part, name, value in BAD_SCENARIO_FIELDS:
            scenario = SMALL.to_dict()
            if part == "disk":
                scenario["disk"] = dataclasses.asdict(DiskSpec(1 << 20))
            (scenario["migration"]["policy"] if part == "policy" else scenario[part])[name] = value
            hello = protocol.encode_control(MsgType.HELLO, 0, 0, {"protocol": protocol.VERSION, "session": "x",
                                                                  "scenario": scenario})
            sock = peer(context, endpoint)
            sock.send_multipart(hello)
            assert sock.poll(5000), f"no answer to a HELLO with {part}.{name} = {value!r}"
            reply = protocol.Decoder().decode(sock.recv_multipart())
            assert reply.type == MsgType.REFUSE, (name, reply.type, reply.body)
            field = "page size" if name == "page_size" else name
            assert field in reply.body["reason"] or name in reply.body["reason"], (name, reply.body["reason"])
            sock.close()
        report = run_source(SMALL, endpoint)
        assert report.status == "completed" and report.digests_match, report.reason
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    assert "Traceback" not in err
    # every source is named as it begins, and migrations are set apart
    assert err.count("a source at 127.0.0.1 began a migration") == len(BAD_SCENARIO_FIELDS) + 1
    assert err.count("---- ready for the next source on tcp://127.0.0.1:") == len(BAD_SCENARIO_FIELDS) + 1


def resident_mib(pid, field="VmRSS"):
    """A process's resident memory (VmRSS) or its peak (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def test_a_serving_receiver_returns_a_failed_migrations_memory(context):
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--timeout", "2s", "--json")
    try:
        endpoint = receiver.wait_listening()
        before = resident_mib(receiver.proc.pid)
        big = Scenario(GuestSpec(512 << 20), WorkloadSpec(rate_pages_per_s=0), MigrationOptions(timeout_s=3.0))
        sock = peer(context, endpoint)
        sock.send_multipart(protocol.encode_control(MsgType.HELLO, 0, 0, {
            "protocol": protocol.VERSION, "session": "x", "scenario": big.to_dict()}))
        while True:  # heartbeats while the 512 MiB are made resident, then ACCEPT
            assert sock.poll(20000), "no ACCEPT"
            if protocol.Decoder().decode(sock.recv_multipart()).type == MsgType.ACCEPT:
                break
        sock.send_multipart(protocol.encode_control(MsgType.ABORT, 1, 0, {"reason": "changed my mind"}))
        sock.close()
        assert resident_mib(receiver.proc.pid, "VmHWM") > before + 400  # the guest was really there
        deadline = time.monotonic() + 10
        while resident_mib(receiver.proc.pid) >= before + 64 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert resident_mib(receiver.proc.pid) < before + 64  # and went with its migration
    finally:
        receiver.signal(signal.SIGTERM)
        receiver.finish()


def test_a_peer_that_never_reads_does_not_hold_up_the_server(context):
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--timeout", "2s", "--json")
    try:
        endpoint = receiver.wait_listening()
        deaf = peer(context, endpoint, RCVHWM=1, SNDHWM=0)  # every garbage frame earns an ABORT it never takes
        for _ in range(40_000):
            deaf.send_multipart([b"x"])
        time.sleep(3)  # long enough for the server to fill every queue towards it
        probe = peer(context, endpoint)
        started = time.monotonic()
        probe.send_multipart(protocol.encode_control(MsgType.HELLO, 0, 0, {"protocol": 0, "session": "p",
                                                                           "scenario": {}}))
        assert probe.poll(20_000), "the server stalled on a peer that does not read"
        reply = protocol.Decoder().decode(probe.recv_multipart())
        assert reply.type == MsgType.REFUSE and "protocol version 0" in reply.body["reason"]
        assert time.monotonic() - started < 1.0  # a send to the deaf peer waits for nothing
        deaf.close()
        probe.close()
    finally:
        receiver.signal(signal.SIGTERM)
        receiver.finish()


def test_a_source_that_floods_its_hosted_migration_is_ended_and_the_server_still_answers(context):
    """A migration busy making a big guest resident reads nothing meanwhile: a source that sends hundreds of
    messages then fills the listener's queue to it. The listener never waits on that queue: the migration
    ends with the reason, the server answers the next peer and stops on SIGTERM at once."""
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--timeout", "5s")
    try:
        endpoint = receiver.wait_listening()
        big = Scenario(GuestSpec(1 << 30), WorkloadSpec(rate_pages_per_s=0), MigrationOptions(timeout_s=5.0))
        sock = peer(context, endpoint)
        sock.send_multipart(protocol.encode_control(MsgType.HELLO, 0, 0, {
            "protocol": protocol.VERSION, "session": "x", "scenario": big.to_dict()}))
        for seq in range(1, 3000):  # no real source has more than a few control messages in flight
            sock.send_multipart(protocol.encode_control(MsgType.HEARTBEAT, seq, 0, {}))
        reasons = []
        while sock.poll(10000):
            answer = protocol.Decoder().decode(sock.recv_multipart())
            if answer.type == MsgType.ABORT:
                reasons.append(answer.body["reason"])
                break
        assert reasons and reasons[0].startswith("the source sent control messages faster than the migration "
                                                 "read them"), reasons
        probe = peer(context, endpoint)  # a HELLO of protocol 0: refused at once by a server that serves
        probe.send_multipart(protocol.encode_control(MsgType.HELLO, 0, 0, {"protocol": 0, "session": "y",
                                                                           "scenario": SMALL.to_dict()}))
        assert probe.poll(5000), "the server no longer answers"
        assert protocol.Decoder().decode(probe.recv_multipart()).type in (MsgType.REFUSE, MsgType.ABORT)
    finally:
        started = time.monotonic()
        receiver.signal(signal.SIGTERM)
        status, _, err = receiver.finish()
    assert time.monotonic() - started < 2 and "Traceback" not in err, err[-2000:]


NO_MIGRATION = "protocol error: type: got ABORT, expected HELLO or CHECK: no migration in progress"


def _reply(sock):
    assert sock.poll(10000), "no answer"
    return protocol.Decoder().decode(sock.recv_multipart())


def test_a_serving_receiver_answers_a_strangers_abort_and_keeps_a_guest_resumed_before_a_late_abort(context):
    """A source written from docs/protocol.md: two zero pages, one pass, then the blackout. Its ABORT after
    ANNOUNCE comes too late: the guest stays resumed, and the server answers the ABORT as a stranger's."""
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--capacity", "64MiB",
                              "--timeout", "3s", "--json")
    try:
        endpoint = receiver.wait_listening()
        stranger = peer(context, endpoint)
        stranger.send_multipart(protocol.encode_control(MsgType.ABORT, 0, 0, {"reason": "who are you"}))
        answer = _reply(stranger)
        assert (answer.type, answer.seq, answer.body) == (MsgType.ABORT, 0, {"reason": NO_MIGRATION})

        scenario = Scenario(GuestSpec(2 * 4096, fill="zero"), WorkloadSpec(), MigrationOptions(device_state_bytes=0),
                            GuestConfig(cpu=None))
        source = peer(context, endpoint, ROUTING_ID=b"late-source")
        source.send_multipart(protocol.encode_control(MsgType.HELLO, 0, 0, {
            "protocol": protocol.VERSION, "session": "late", "scenario": scenario.to_dict()}))
        accept = _reply(source)
        while accept.type == MsgType.HEARTBEAT:
            accept = _reply(source)
        assert accept.type == MsgType.ACCEPT, accept.body
        data = context.socket(zmq.PUSH)
        data.setsockopt(zmq.LINGER, 0)
        data.connect(f"tcp://127.0.0.1:{accept.body['data'][0]}")
        data.send_multipart(protocol.encode_zero_pages(0, 0, [[0, 2]], 4096, Flags.RUNS))
        source.send_multipart(protocol.encode_control(MsgType.PASS_END, 1, 0, {"pass": 0, "messages": [1], "pages": 2,
                                                                               "blocks": 0}))
        assert _reply(source).type == MsgType.PASS_END
        zero_digest = GuestMemory.blank(scenario.guest).digest()
        for frames in (protocol.encode_control(MsgType.SWITCHOVER, 2, 1, {"pass": 1, "reason": "max-passes"}),
                       protocol.encode_device_state(3, 1, b""),
                       protocol.encode_control(MsgType.COMPLETE, 4, 1, {
                           "pass": 1, "messages": [0], "pages": 0, "blocks": 0, "digest": zero_digest,
                           "disk_digest": None, "device_state_digest": hashlib.blake2b(b"", digest_size=16).hexdigest(),
                           "storage_token": "late"})):
            source.send_multipart(frames)
        assert [_reply(source).type for _ in range(2)] == [MsgType.RESUMED, MsgType.ANNOUNCE]
        receiver.wait_for(re.compile("---- ready for the next source"))

        source.send_multipart(protocol.encode_control(MsgType.ABORT, 5, 1, {"reason": "changed my mind"}))
        answer = _reply(source)
        assert (answer.type, answer.seq, answer.body) == (MsgType.ABORT, 0, {"reason": NO_MIGRATION})
        data.close()
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    outcomes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [outcome["status"] for outcome in outcomes] == ["completed"], outcomes  # the late ABORT changed nothing
    assert "Traceback" not in err


def test_a_serving_receiver_refuses_a_key_a_rate_and_a_timeout_past_their_bounds_naming_each(context):
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--capacity", "64MiB",
                              "--timeout", "2s", "--json")
    try:
        endpoint = receiver.wait_listening()

        def answer(scenario, **body):
            sock = peer(context, endpoint)
            sock.send_multipart(protocol.encode_control(MsgType.HELLO, 0, 0, {
                "protocol": protocol.VERSION, "session": "x", "scenario": scenario, **body}))
            reply = _reply(sock)
            sock.close()
            return reply.type, reply.body["reason"]

        assert answer(SMALL.to_dict(), extra=1) == (MsgType.ABORT, "protocol error: body.extra: not a key of a "
                                                                   "HELLO body (those are protocol, session, scenario)")
        for part, name, value, expected in (
                ("workload", "rate_pages_per_s", 1e300, "rate_pages_per_s must be a number in [0, 1e+09], got 1e+300 "
                                                        "(or max: unpaced)"),
                ("migration", "timeout_s", 1e-9, "timeout_s must be a number >= 0.001 and finite, got 1e-09")):
            scenario = SMALL.to_dict()
            scenario[part][name] = value
            kind, reason = answer(scenario)
            assert kind == MsgType.REFUSE and reason.startswith(f"invalid scenario: {expected}: "), reason
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    assert "Traceback" not in err


def test_a_peer_that_says_hello_again_at_once_after_a_refusal_is_answered_each_time(context):
    """A refused HELLO's migration winds down on its thread; the same peer's next HELLO, arriving meanwhile, is a
    new beginning, never handed to the migration that is ending (which no longer reads)."""
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--timeout", "2s")
    try:
        sock = peer(context, receiver.wait_listening())
        bad = SMALL.to_dict()
        bad["guest"]["memory_bytes"] = 1 << 50  # refused by the migration it begins: more than this host has
        for _ in range(20):
            sock.send_multipart(protocol.encode_control(MsgType.HELLO, 0, 0, {
                "protocol": protocol.VERSION, "session": "again", "scenario": bad}))
        answers = []
        while len(answers) < 20 and sock.poll(5000):
            answers.append(protocol.Decoder().decode(sock.recv_multipart()))
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    assert [a.type for a in answers] == [MsgType.REFUSE] * 20, [(a.type, a.body) for a in answers]
    assert "Traceback" not in err
