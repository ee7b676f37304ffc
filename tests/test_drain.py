"""precopy drain: several guests, each its own process, moved at most K at once under one shared link budget."""

import io
import json
import os
import re
import signal
import threading
import time

import pytest

import emulator
from emulator.analysis.text import format_drain
from emulator.running import children, control, drain, migration
from emulator.running.drain import Drain, DrainOptions, ordered
from emulator.shell.cli import main
from emulator.core.units import format_bytes
from emulator.source.ratelimit import SharedBalance, make_limiter
from emulator.vm.allocator import available_memory_bytes
from emulator.vm.disk import DiskImage
from tests.cli_process import PrecopyProcess

MIB = 1 << 20
GUEST = {"memory": "8MiB", "fill": "random", "codec": "raw", "dirty_rate": "200", "cpu": "any", "timeout": "2s",
         "batch_pages": "64"}


def receivers(count, *more):
    """`count` serving receivers on loopback, two migrations at once each; their processes and endpoints."""
    processes = [PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--max-incoming", "2",
                                "--timeout", "2s", "--json", *more) for _ in range(count)]
    return processes, [process.wait_listening() for process in processes]


def stopped(processes):
    """Stop the receivers; the outcomes each printed (one JSON line per migration)."""
    outcomes = []
    for process in processes:
        process.signal(signal.SIGTERM)
        status, out, err = process.finish()
        assert "Traceback" not in err, err
        outcomes.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
    return outcomes


def guests(count, **values):
    return drain.guests_from([{} for _ in range(count)], drain.read_options({**GUEST, **values}, "test"))


def test_four_guests_two_at_once_to_two_receivers_under_one_shared_cap():
    processes, endpoints = receivers(2)
    try:
        cap = 16e6  # 36 MiB of random pages, raw: about 2.4 s at 16 MB/s
        sizes = drain.guests_from([{"memory": f"{mib}MiB"} for mib in (6, 10, 8, 12)],
                                  drain.read_options(GUEST, "test"))
        report = Drain(sizes, DrainOptions(tuple(endpoints), max_concurrent=2, max_bandwidth_bytes_per_s=cap)).run()
    finally:
        outcomes = stopped(processes)
    assert report.status == "completed", [(run.name, run.reason) for run in report.guests]
    for run in report.guests:
        assert run.report.status == "completed" and run.report.digests_match
    # each guest resumed once, on the destination it was sent to
    resumed = sorted(o["digest"] for outcome in outcomes for o in outcome if o["status"] == "completed")
    assert resumed == sorted(run.report.source_digest for run in report.guests)
    assert {run.destination for run in report.guests} == set(endpoints)
    # never more than K at once, and K at once while guests waited
    assert report.peak_concurrency == 2
    for run in report.guests:
        at_once = sum(other.started_s <= run.started_s < other.ended_s for other in report.guests)
        assert at_once <= 2
    # the link held the shared cap, not a static split, while migrations ran
    busy = [rate for at, rate in report.link[1:-1]]
    assert busy and abs(sum(busy) / len(busy) - cap) <= 0.03 * cap, report.link
    assert max(rate for _, rate in report.link) <= cap * 1.1


def test_link_samples_stay_within_the_budget_while_migrations_queue_behind_its_debt():
    """Two migrations send 4 MiB messages (1024 pages) under one 50 MB/s bucket, on a fake clock, and the
    drain's sampler looks every LINK_SAMPLE_S / 4 (its loop: about every fifth; a quarter is exact in binary),
    then once more just after the last send."""
    now_s, budget_rate, message, every_s = [0.0], 50e6, 4 * MIB, drain.LINK_SAMPLE_S / 4
    budget = make_limiter(budget_rate, clock=lambda: now_s[0], sleep=lambda seconds: None, shared=SharedBalance())
    link = drain._LinkUse(budget, lambda: now_s[0])
    ready_s, looks = [0.0, 0.0], 0  # when each migration reserves its next message; the sampler's looks so far

    def look_until(until_s):
        nonlocal looks
        while (looks + 1) * every_s <= until_s:
            looks += 1
            now_s[0] = looks * every_s
            link.sample()
        now_s[0] = until_s

    for _ in range(64):  # 256 MiB: about 5.4 s of link
        sender = min(range(2), key=ready_s.__getitem__)
        look_until(ready_s[sender])
        ready_s[sender] += budget.consume(message)  # its turn comes when the debt before it is paid
    look_until(max(ready_s) + 0.03)  # the last message went; the migrations end
    link.sample(final=True)
    assert max(rate for _, rate in link.samples) <= budget_rate * 1.05, link.samples
    times = [0.0] + [at for at, _ in link.samples]
    assert all(later - at >= drain.LINK_SAMPLE_S for at, later in zip(times, times[1:])), times
    assert [rate for _, rate in link.samples[1:-1]] == pytest.approx([budget_rate] * (len(link.samples) - 2))


@pytest.mark.parametrize("retry", [False, True])
def test_a_destination_killed_mid_drain_leaves_its_guest_on_the_source_and_the_rest_complete(retry):
    processes, endpoints = receivers(2)
    try:
        options = DrainOptions(tuple(endpoints), max_concurrent=2, max_bandwidth_bytes_per_s=8e6, retry=retry)

        class KillSecond(Drain):  # the second receiver dies just after its first guest began
            def _begin(self, index, destination):
                super()._begin(index, destination)
                if destination == endpoints[1]:
                    time.sleep(0.3)
                    processes[1].signal(signal.SIGKILL)

        report = KillSecond(guests(4), options).run()
    finally:
        processes[1].finish()
        outcomes = stopped(processes[:1])
    by_status = {}
    for run in report.guests:
        by_status.setdefault(run.status, []).append(run)
    if retry:  # tried once more at the end, on the receiver still there
        assert report.status == "completed" and "failed" not in by_status
        second = report.guests[1]
        assert second.attempts == 2 and second.destination == endpoints[0] and second.report.digests_match
        assert len([o for o in outcomes[0] if o["status"] == "completed"]) == 4
        return
    assert [run.name for run in by_status["failed"]] == ["guest2"], [(r.name, r.status) for r in report.guests]
    lost = by_status["failed"][0]
    assert lost.destination == endpoints[1] and lost.report.status == "failed" and lost.resumed_s is None
    assert "destination" in lost.report.reason or "no answer" in lost.report.reason, lost.report.reason
    assert sorted(run.name for run in by_status["completed"]) == ["guest1", "guest3", "guest4"]
    assert all(run.destination == endpoints[0] for run in by_status["completed"])
    assert len([o for o in outcomes[0] if o["status"] == "completed"]) == 3
    assert report.status == "failed"


def test_the_inventory_sets_defaults_and_each_guest(tmp_path):
    path = tmp_path / "host.toml"
    path.write_text('[defaults]\nmemory = "64MiB"\npattern = "hotset"\n\n'
                    '[[guests]]\nname = "web"\n\n[[guests]]\nname = "db"\nmemory = "256MiB"\nmax_bandwidth = "50MB/s"\n'
                    '\n[[guests]]\n')
    web, db, third = drain.load_inventory(path, {"dirty_rate": 1000.0})
    assert (web.name, db.name, third.name) == ("web", "db", "guest3")
    assert web.scenario.guest.memory_bytes == 64 * MIB and db.scenario.guest.memory_bytes == 256 * MIB
    assert web.scenario.workload.pattern == db.scenario.workload.pattern == "hotset"
    assert db.scenario.migration.max_bandwidth_bytes_per_s == 50e6 and web.scenario.migration.max_bandwidth_bytes_per_s is None
    assert web.scenario.workload.rate_pages_per_s == 1000.0
    assert len({guest.scenario.guest.seed for guest in (web, db, third)}) == 3  # each its own content
    assert ordered([web, db, third], "largest") == [1, 0, 2] and ordered([web, db, third], "listed") == [0, 1, 2]


@pytest.mark.parametrize("text, message", [
    ('[[guests]]\nmemroy = "1GiB"\n', "guest1: unknown key 'memroy'"),
    ('[[guests]]\nname = "a"\n[[guests]]\nname = "a"\n', "guest 2: name must be a text of 1 to 64 characters, unique"),
    ('[defaults]\nmemory = "1GiB"\n', "expected an optional [defaults] table and one [[guests]] table or more"),
    ('[[guests]]\nmemory = "-1"\n', "guest1: memory:"),
    ('guests = [', "is not valid TOML"),
])
def test_a_bad_inventory_is_refused_naming_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as raised:
        drain.load_inventory(path, {})
    assert message in str(raised.value)


@pytest.mark.parametrize("argv, message", [
    (["--guests", "0"], "--guests"),
    (["--guests", "2", "--max-concurrent", "0"], "--max-concurrent"),
    (["--guests", "2", "--order", "smallest"], "--order"),
    (["--guests", "2", "--per-migration-bandwidth", "fast"], "--per-migration-bandwidth"),
    (["--guests", "40", "--memory", "1TiB"], "--memory: the 40 guests need"),
])
def test_the_drain_command_refuses_bad_values(argv, message, capsys):
    assert main(["drain", "--to", "tcp://127.0.0.1:9", *argv]) == 2
    assert message in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_board_redraws_a_line_per_guest_in_place_on_a_terminal_only():
    from emulator.analysis.display import DrainBoard

    terminal = _Terminal()
    board = DrainBoard(terminal)
    board.board(["web   pass 1", "db    queued", "link 10 MB/s"])
    board.message("web: pass 1 done")
    board.board(["web   blackout", "db    queued", "link 9 MB/s" + "x" * 200])
    text = terminal.getvalue()
    assert text.count("\x1b[3F\x1b[J") == 2  # each redraw first erases the three lines shown
    assert text.endswith("web   blackout\ndb    queued\nlink 9 MB/s" + "x" * 89 + "\n")
    assert "precopy: web: pass 1 done\nweb   pass 1\n" in text  # the event above the board, then the board again
    plain = io.StringIO()
    board = DrainBoard(plain)
    board.board(["web   pass 1"])
    board.message("web: done")
    assert plain.getvalue() == "precopy: web: done\n"


def test_a_sweep_drains_with_k_as_an_axis(tmp_path, capsys):
    from emulator.analysis import sweep

    argv = ["sweep", "--out", str(tmp_path), "--guests", "2", "--max-concurrent", "1,2", "--memory", "4MiB",
            "--fill", "random", "--codec", "raw", "--dirty-rate", "100", "--max-bandwidth", "20MB/s", "--cpu", "any",
            "--quiet"]
    assert main(argv) == 0
    rows = sweep.read_csv(tmp_path / "sweep.csv")
    assert [(row["guests"], row["max_concurrent"], row["status"], row["digests_match"]) for row in rows] == [
        (2, 1, "completed", "true"), (2, 2, "completed", "true")]
    assert all(row["drain_s"] > 0.3 and row["drain_forecast_s"] > 0 for row in rows), rows  # 8.4 MB at 20 MB/s
    assert "2 drains" in capsys.readouterr().out


def test_sigterm_cancels_the_drain_and_every_migration_it_runs():
    processes, endpoints = receivers(2)
    try:
        drain_process = PrecopyProcess("drain", "--to", endpoints[0], "--to", endpoints[1], "--guests", "3",
                                       "--memory", "16MiB", "--fill", "random", "--codec", "raw", "--dirty-rate", "100",
                                       "--max-bandwidth", "4MB/s", "--cpu", "any", "--timeout", "2s",
                                       "--batch-pages", "64", "--json")
        drain_process.wait_for(re.compile(r"guest2: migrating to"), timeout_s=60)
        time.sleep(0.5)
        drain_process.signal(signal.SIGTERM)
        status, out, err = drain_process.finish(timeout_s=60)
    finally:
        outcomes = stopped(processes)
    report = json.loads(out)
    assert status == 130 and "Traceback" not in err, err
    assert [run["status"] for run in report["guests"]] == ["cancelled", "cancelled", "not started"]
    assert report["guests"][0]["report"]["reason"] == "cancelled by the user on the source"
    assert sorted(o["status"] for outcome in outcomes for o in outcome) == ["cancelled", "cancelled"]


def test_placement_by_capacity_picks_the_receiver_with_the_most_memory_free():
    small, small_endpoint = receivers(1, "--capacity", "24MiB")
    large, large_endpoint = receivers(1, "--capacity", "64MiB")
    endpoints = [small_endpoint[0], large_endpoint[0]]
    try:
        by_capacity = Drain(guests(3), DrainOptions(tuple(endpoints), max_concurrent=1, placement="capacity")).run()
        in_turn = Drain(guests(2), DrainOptions(tuple(endpoints), max_concurrent=1)).run()
    finally:
        stopped(small + large)
    assert [run.destination for run in by_capacity.guests] == [endpoints[1]] * 3
    assert [run.destination for run in in_turn.guests] == endpoints
    assert by_capacity.status == in_turn.status == "completed"


def test_guests_no_destination_would_host_never_count_as_migrating():
    class NoProcesses(Drain):  # no guest processes: no migration begins
        def _start_guests(self):
            pass

        def _stop_guests(self):
            pass

    def unreachable(scenario, destination):
        raise drain.MigrationError("no answer from the destination")

    options = DrainOptions(("tcp://127.0.0.1:9",), max_concurrent=2, retry=True)
    report = NoProcesses(guests(2), options, check=unreachable).run()
    assert [(run.status, run.reason, run.started_s, run.ended_s) for run in report.guests] == [
        ("failed", "no destination would host it: tcp://127.0.0.1:9: no answer from the destination", None, None)] * 2
    assert (report.concurrency, report.peak_concurrency, report.mean_concurrency) == ([], 0, 0.0)
    assert format_drain(report).splitlines()[0].endswith(": 0 of 2 guests moved, at most 0 at once (mean 0.0)")


def test_each_guests_mirrored_disk_crosses_under_a_name_of_its_own(tmp_path):
    received = tmp_path / "received"
    received.mkdir()
    processes, endpoints = receivers(1, "--disk-dir", str(received))
    disks = {"storage": "mirror", "disk": "4MiB", "disk_fill": "random"}
    try:  # guest1's disk is idle (the default), guest2's written while it moves
        pair = drain.guests_from([{}, {"disk_write_rate": "2MB/s"}],
                                 drain.read_options({**GUEST, **disks}, "test"))
        report = Drain(pair, DrainOptions(tuple(endpoints), max_concurrent=2, max_bandwidth_bytes_per_s=16e6)).run()
    finally:
        outcomes = stopped(processes)
    assert report.status == "completed", [(run.name, run.reason) for run in report.guests]
    names = ["guest1-disk.img", "guest2-disk.img"]
    assert [run.report.block_job.device for run in report.guests] == names
    assert sorted(os.listdir(received)) == names
    assert sorted(o["disk_path"] for o in outcomes[0]) == [str(received / name) for name in names]
    for run in report.guests:  # completed: the destination's disk digest was the paused source disk's
        assert run.report.digests_match and run.report.block_job.offset >= 4 * MIB
    assert report.guests[1].report.block_job.len > 4 * MIB  # blocks written meanwhile crossed again
    expected = DiskImage.create(report.guests[0].report.scenario.disk, str(tmp_path / "guest1-as-made.img"))
    try:  # the idle disk arrived byte for byte as its guest made it, and not as the other guest's
        assert (received / names[0]).read_bytes() == bytes(expected.blocks.data)
        assert (received / names[1]).read_bytes() != bytes(expected.blocks.data)
    finally:
        expected.close()


def test_post_copy_guests_drain_and_arrive_with_matching_digests():
    processes, endpoints = receivers(1)
    try:
        pair = guests(2, postcopy_after="1", dirty_rate="2000", pattern="uniform")
        report = Drain(pair, DrainOptions(tuple(endpoints), max_concurrent=2, max_bandwidth_bytes_per_s=16e6)).run()
    finally:
        outcomes = stopped(processes)
    assert report.status == "completed", [(run.name, run.reason) for run in report.guests]
    for run in report.guests:
        assert len(run.report.passes) == 1 and run.report.postcopy.missing_pages > 0
        assert run.report.digests_match and run.switchover_s < run.resumed_s
    resumed = sorted(o["digest"] for o in outcomes[0] if o["status"] == "completed")
    assert resumed == sorted(run.report.source_digest for run in report.guests)


def test_precopy_status_and_set_reach_a_guest_while_it_is_drained(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # only this drain's guest runs a migration there
    processes, endpoints = receivers(1)
    try:  # 16 MiB of random pages at its own cap of 2 MB/s: pass 0 would take 8.4 s
        draining = Drain(guests(1, memory="16MiB", dirty_rate="0", max_bandwidth="2MB/s", timeout="5s"),
                         DrainOptions(tuple(endpoints)))
        result = {}
        thread = threading.Thread(target=lambda: result.update(report=draining.run()))
        thread.start()
        deadline, status = time.monotonic() + 60, {}
        while status.get("phase") != "precopy" and time.monotonic() < deadline:
            time.sleep(0.05)
            if control.running():
                assert main(["status", "--json"]) == 0
                status = json.loads(capsys.readouterr().out)
        assert list(control.running()) == [draining.processes[0].pid]  # the guest's own process answers
        assert status["phase"] == "precopy" and status["max_bandwidth_bytes_per_s"] == 2e6, status
        assert status["total_pages"] == 4096
        assert main(["set", "--max-bandwidth", "unlimited"]) == 0
        thread.join(60)
    finally:
        stopped(processes)
    guest = result["report"].guests[0]
    assert guest.status == "completed" and guest.report.digests_match
    assert [(c.name, c.value) for c in guest.report.parameter_changes] == [("max_bandwidth_bytes_per_s", None)]
    assert guest.report.passes[0].duration_s < 0.6 * 16 * MIB / 2e6  # the cap was lifted mid-pass
    assert not control.running()  # the socket went with the migration


def test_running_writers_given_to_run_source_must_be_there():
    scenario = guests(1)[0].scenario
    with pytest.raises(ValueError, match="writers_running: the caller's writers run already, but workload is None"):
        migration.run_source(scenario, "tcp://127.0.0.1:9", writers_running=True)


def test_both_ends_on_one_machine_live_apart_from_one_end():
    assert emulator.migrate is children.migrate  # notebooks
    assert not hasattr(migration, "migrate")  # one end's module knows nothing of both ends here: no circle


def test_a_guest_this_host_cannot_hold_fails_with_the_figures_and_the_others_migrate():
    """The command line checks the guests' total first; a guest process checks again as it allocates, since other
    processes may have taken memory meanwhile (here: a guest bigger than the host, given through the library)."""
    too_big = (available_memory_bytes() >> 30) + 64 << 30
    processes, endpoints = receivers(1)
    try:
        pair = drain.guests_from([{}, {"memory": f"{too_big >> 30}GiB"}], drain.read_options(GUEST, "test"))
        report = Drain(pair, DrainOptions(tuple(endpoints), max_concurrent=2)).run()
    finally:
        outcomes = stopped(processes)
    small, big = report.guests
    assert small.status == "completed" and small.report.digests_match
    assert big.status == "failed" and big.report is None and big.attempts == 0
    assert big.reason.startswith(f"guest.memory_bytes is {format_bytes(too_big)} ({too_big} B), more than this host "
                                 f"can hold now"), big.reason
    assert report.status == "failed" and [o["status"] for o in outcomes[0]] == ["completed"]
