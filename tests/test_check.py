"""precopy check: a destination names every problem at once, over a real link, and nothing of it changes."""

import json
import threading
import time

import pytest
import zmq

from emulator.dataplane.transport import DestinationLink
from emulator.destination.receiver import Destination, DestinationLimits
from emulator.running import migration
from emulator.vm.compat import CpuModel
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import GuestConfig, MigrationOptions, Scenario
from emulator.vm.verdict import MAX_PROBLEMS, Problem, Verdict, refusal
from emulator.vm.workload import WorkloadSpec
from emulator.wire import protocol
from emulator.wire.protocol import MsgType, RemoteProtocolError
from tests.cli_process import PrecopyProcess

PAGE = 4096
INTEL = CpuModel("GenuineIntel", ("avx2", "avx512f", "fpu"))
INTEL_OLDER = CpuModel("GenuineIntel", ("avx2", "fpu"))
LIMITS = DestinationLimits(cpu=INTEL_OLDER, switches=("Internal",), config_version=1, max_channels=2)
FITS = Scenario(GuestSpec(64 * PAGE, fill="random"), WorkloadSpec(), MigrationOptions(timeout_s=5),
                GuestConfig(cpu=INTEL_OLDER, switches=("Internal",)))
MISFITS = Scenario(GuestSpec(128 * PAGE), WorkloadSpec(), MigrationOptions(channels=4, timeout_s=5),
                   GuestConfig(version=2, cpu=INTEL, switches=("External",)))


class Serving:
    """A Destination waiting for one migration on TCP loopback, in a thread."""

    def __init__(self, **options):
        self.link = DestinationLink("tcp://127.0.0.1:0", 5)
        self.destination = Destination(self.link, **options)
        self.outcome = None
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        self.outcome = self.destination.run(hello_timeout_s=30)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(40)
        self.link.close()

    def untouched(self):
        """Nothing of a migration exists: no session begun, no peer, no guest, no data socket."""
        destination = self.destination
        return (destination.protocol.state == "IDLE" and destination.peer is None and destination.guest is None
                and not self.link.data and destination.pages_applied == 0)


def test_check_names_every_problem_and_changes_nothing_on_the_destination():
    with Serving(limits=LIMITS, capacity_bytes=64 * PAGE) as serving:
        answer = migration.check(MISFITS, serving.link.endpoint)
        assert [problem.field for problem in answer.problems] == [
            "config.version", "config.cpu.features", "config.switches", "migration.channels", "guest.memory_bytes"]
        assert not answer.compatible and not answer.busy
        assert all(problem.fix for problem in answer.problems)
        assert serving.untouched()
        assert migration.check(FITS, serving.link.endpoint) == Verdict(problems=(), busy=False, free_bytes=64 * PAGE)
        assert serving.untouched()
        report = migration.run_source(MISFITS, serving.link.endpoint)  # the same answer refuses the migration
    assert report.status == "failed" and report.reason == f"destination refused: {refusal(answer.problems)}"
    assert serving.outcome.status == "failed"


def test_a_check_leaves_the_destination_ready_for_the_migration():
    with Serving(limits=LIMITS) as serving:
        assert migration.check(FITS, serving.link.endpoint).compatible
        report = migration.run_source(FITS, serving.link.endpoint)
    assert report.status == "completed" and report.digests_match
    assert serving.outcome.status == "completed" and serving.outcome.digest == report.source_digest


def test_a_destination_busy_with_a_migration_still_answers_a_check():
    slow = Scenario(GuestSpec(512 * PAGE, fill="random"), WorkloadSpec(),
                    MigrationOptions(codec="raw", max_bandwidth_bytes_per_s=1e6, timeout_s=5), FITS.config)  # 2 s
    with Serving(limits=LIMITS) as serving:
        reports = []
        source = threading.Thread(target=lambda: reports.append(migration.run_source(slow, serving.link.endpoint)))
        source.start()
        deadline = time.monotonic() + 20
        while serving.destination.peer is None and time.monotonic() < deadline:
            time.sleep(0.01)
        answer = migration.check(FITS, serving.link.endpoint)
        source.join(30)
    assert answer.compatible and answer.busy
    assert reports[0].status == "completed" and reports[0].digests_match
    assert serving.destination.doors.frames_refused == 0


def test_a_bad_check_is_refused_naming_the_field_and_the_destination_goes_on(context):
    with Serving(limits=LIMITS) as serving:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(serving.link.endpoint)
        sock.send_multipart(protocol.encode_control(MsgType.CHECK, 0, 0, {"protocol": protocol.VERSION}))
        assert sock.poll(5000)
        reply = protocol.Decoder().decode(sock.recv_multipart())
        sock.close()
        assert reply.type == MsgType.ABORT
        assert reply.body["reason"] == "protocol error: body.scenario: missing from CHECK body"
        assert serving.untouched()
        assert migration.check(FITS, serving.link.endpoint).compatible
        report = migration.run_source(FITS, serving.link.endpoint)
    assert report.status == "completed" and serving.destination.doors.frames_refused == 1


GOOD = {"field": "guest.memory_bytes", "text": "too big", "fix": "less"}


@pytest.mark.parametrize("body, field", [
    ({"problems": [], "busy": 1, "free_bytes": 0}, "body.busy"),
    ({"problems": [], "free_bytes": 0}, "body.busy"),
    ({"problems": [], "busy": False}, "body.free_bytes"),
    ({"problems": [], "busy": False, "free_bytes": -1}, "body.free_bytes"),
    ({"problems": [], "busy": False, "free_bytes": 1.5}, "body.free_bytes"),
    ({"problems": "none", "busy": False, "free_bytes": 0}, "body.problems"),
    ({"problems": [GOOD] * (MAX_PROBLEMS + 1), "busy": False, "free_bytes": 0}, "body.problems"),
    ({"problems": [{"field": "x", "text": "y"}], "busy": False, "free_bytes": 0}, "body.problems"),
    ({"problems": [{**GOOD, "fix": ""}], "busy": False, "free_bytes": 0}, "body.problems"),
    ({"problems": [{**GOOD, "text": "x" * 5000}], "busy": False, "free_bytes": 0}, "body.problems"),
    ({"problems": [{**GOOD, "field": 7}], "busy": False, "free_bytes": 0}, "body.problems"),
])
def test_a_hostile_verdict_is_refused_naming_the_field(body, field):
    with pytest.raises(RemoteProtocolError) as raised:
        Verdict.from_body(body)
    assert raised.value.field == field


def test_a_verdict_round_trips():
    answer = Verdict((Problem(**GOOD), Problem("config.switches", "lacks 'A'", "receive --switch A")), busy=True,
                     free_bytes=1 << 30)
    assert Verdict.from_body(json.loads(json.dumps(answer.to_body()))) == answer
    assert str(answer.problems[0]) == "too big: less"


def test_the_check_command_prints_every_problem_and_exits_by_the_answer():
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--capacity", "1MiB", "--switch",
                              "Internal", "--wait", "60s")
    try:
        endpoint = receiver.wait_listening()
        check = PrecopyProcess("check", "--to", endpoint, "--memory", "2MiB", "--switches", "External",
                               "--cpu", "any")
        status, out, err = check.finish()
        assert status == 1, err
        assert out.splitlines()[0] == f"incompatible: {endpoint} would refuse this guest, for 2 reasons:"
        assert " 1. config.switches: the guest's network adapters connect to virtual switch 'External'" in out
        assert "    fix: receive --switch External" in out
        assert " 2. guest.memory_bytes is 2.00 MiB" in out and "    fix: give the guest at most 1.00 MiB" in out
        assert all(len(line) <= 100 for line in out.splitlines())
        status, out, err = PrecopyProcess("check", "--to", endpoint, "--memory", "1MiB", "--cpu", "any",
                                          "--json").finish()
        assert status == 0, err
        assert json.loads(out) == {"to": endpoint, "compatible": True, "problems": [], "busy": False,
                                   "free_bytes": 1 << 20}
        status, out, err = PrecopyProcess("send", "--to", endpoint, "--memory", "1MiB", "--quiet").finish()
        assert status == 0 and "completed" in out, err  # the checks did not use up the one migration
    finally:
        status, _, err = receiver.finish()
    assert status == 0 and "Traceback" not in err
