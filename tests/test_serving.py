"""receive --serve --max-incoming N: several migrations hosted at once on one control socket."""

import json
import re
import signal
import threading
import time

import numpy as np

from emulator.running.migration import check, receive, run_source
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import GuestConfig, MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from tests.cli_process import PrecopyProcess

PAGE = 4096
MIB = 1 << 20


def guest(mib, rate=2e6, seed=0):
    """A random guest of `mib` MiB, capped at `rate` bytes/s (so migrations overlap), with a writer."""
    return Scenario(GuestSpec(mib * MIB, fill="random", seed=seed), WorkloadSpec(rate_pages_per_s=50, seed=seed),
                    MigrationOptions(codec="raw", batch_pages=64, max_bandwidth_bytes_per_s=rate, timeout_s=5),
                    GuestConfig(cpu=None))


def migrate_all(scenarios, endpoint):
    """Migrate every scenario at once, each from its own thread; their reports, in order."""
    reports = [None] * len(scenarios)

    def one(index):
        reports[index] = run_source(scenarios[index], endpoint)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(scenarios))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return reports


def outcomes_of(out):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_two_guests_at_once_arrive_byte_identical_and_a_third_is_refused_as_busy():
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--max-incoming", "2",
                              "--capacity", "64MiB", "--timeout", "5s", "--json")
    try:
        endpoint = receiver.wait_listening()
        busy = []

        def third():  # while the two run: a check says busy, a HELLO is refused as busy
            receiver.wait_for(re.compile(r"\[2\] accepted a"), timeout_s=20)
            busy.append(check(guest(1), endpoint))
            busy.append(run_source(guest(1), endpoint))

        extra = threading.Thread(target=third)
        extra.start()
        first, second = migrate_all([guest(4, seed=1), guest(4, seed=2)], endpoint)
        extra.join(30)
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    for report in (first, second):
        assert report.status == "completed" and report.digests_match, report.reason
        assert report.summary["total-time"] > 1.5  # 4 MiB at 2 MB/s: they overlapped
    verdict, refused = busy
    assert verdict.busy and verdict.compatible
    assert refused.status == "failed"
    assert refused.reason == ("destination refused: busy with 2 migrations, this destination's limit "
                              "(receive --max-incoming 2)")
    completed = [o for o in outcomes_of(out) if o["status"] == "completed"]
    assert sorted(o["digest"] for o in completed) == sorted([first.source_digest, second.source_digest])
    assert "Traceback" not in err and status == 0


def test_guests_at_once_share_the_capacity():
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--max-incoming", "2",
                              "--capacity", "12MiB", "--timeout", "5s", "--json")
    try:
        endpoint = receiver.wait_listening()
        first, second = migrate_all([guest(8, rate=8e6, seed=1), guest(8, rate=8e6, seed=2)], endpoint)
        after = run_source(guest(8, rate=None, seed=3), endpoint)  # the capacity came back
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    completed, refused = sorted([first, second], key=lambda report: report.status)
    assert completed.status == "completed" and completed.digests_match
    assert refused.status == "failed" and "above this destination's capacity of 4.00 MiB" in refused.reason
    assert after.status == "completed" and after.digests_match


def test_sigterm_cancels_every_incoming_migration_and_their_sources_keep_their_guests():
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--max-incoming", "2",
                              "--timeout", "5s", "--json")
    try:
        endpoint = receiver.wait_listening()
        threading.Timer(1.0, receiver.signal, args=(signal.SIGTERM,)).start()
        reports = migrate_all([guest(8, rate=1e6, seed=1), guest(8, rate=1e6, seed=2)], endpoint)
    finally:
        status, out, err = receiver.finish()
    for report in reports:
        assert report.status == "cancelled", report.reason
        assert report.reason == "destination aborted: cancelled by the user on the destination"
    assert [o["status"] for o in outcomes_of(out)] == ["cancelled", "cancelled"]
    assert status == 130 and "Traceback" not in err


def test_an_interruption_while_a_finished_migration_is_forgotten_stops_the_server_at_once():
    """SIGTERM may land halfway through the listener's bookkeeping for a migration that has just ended (here
    while its outcome is told): the server still stops at once, without an error, and forgets nothing."""
    told, returned = [], []

    def on_outcome(outcome):
        told.append(outcome.status)
        if len(told) == 1:
            raise KeyboardInterrupt  # as the signal handler raises it, between two of the listener's steps

    ready = threading.Event()
    endpoints = []

    def serve():
        returned.append(receive("tcp://127.0.0.1:0", serve=True, timeout_s=5.0, on_outcome=on_outcome,
                                ready=lambda endpoint: (endpoints.append(endpoint), ready.set())))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert ready.wait(10)
    report = run_source(guest(1, rate=None), endpoints[0])
    started = time.monotonic()
    server.join(5)
    assert not server.is_alive(), "the server did not stop"
    assert time.monotonic() - started < 2
    assert report.status == "completed" and told == ["completed"] and returned == [None]


ROUNDS = 4


def test_pages_of_concurrent_migrations_never_mix():
    """Writers flat out on three guests at once, same page numbers, different contents, round after
    round on one serving receiver: each arrives as itself, every time."""
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--max-incoming", "3",
                              "--timeout", "5s", "--json")
    digests = []
    try:
        endpoint = receiver.wait_listening()
        for round_ in range(ROUNDS):
            scenarios = [Scenario(GuestSpec(2 * MIB, fill="random", seed=10 * round_ + seed),
                                  WorkloadSpec(vcpus=1, rate_pages_per_s=np.inf, seed=seed),
                                  MigrationOptions(channels=2, timeout_s=5), GuestConfig(cpu=None))
                         for seed in (1, 2, 3)]
            reports = migrate_all(scenarios, endpoint)
            assert all(report.status == "completed" and report.digests_match for report in reports), round_
            assert len({report.source_digest for report in reports}) == 3
            digests += [report.source_digest for report in reports]
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    assert sorted(o["digest"] for o in outcomes_of(out)) == sorted(digests)
    assert len(digests) == 3 * ROUNDS


def test_a_migration_whose_last_word_is_lost_still_frees_its_place(monkeypatch):
    """A migration's thread tells the listener it has ended; were that word lost (its socket closed before the
    listener read it), the listener still sees the thread end: the place is free for the next source."""
    from emulator.dataplane.transport import PeerLink

    def ends_without_a_word(link):
        link.close_data()
        link.pair.close(linger=0)

    monkeypatch.setattr(PeerLink, "finished", ends_without_a_word)
    told, endpoints, ready = [], [], threading.Event()

    def on_outcome(outcome):
        told.append(outcome.status)
        if len(told) == 2:
            raise KeyboardInterrupt  # stops the server, as SIGTERM would

    def serve():
        receive("tcp://127.0.0.1:0", serve=True, timeout_s=5.0, max_incoming=1, on_outcome=on_outcome,
                ready=lambda endpoint: (endpoints.append(endpoint), ready.set()))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert ready.wait(10)
    reports = [run_source(guest(1, rate=None, seed=seed), endpoints[0]) for seed in (1, 2)]
    server.join(5)
    assert not server.is_alive()
    assert [r.status for r in reports] == ["completed", "completed"], [r.reason for r in reports]
    assert told == ["completed", "completed"]
