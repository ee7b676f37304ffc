import dataclasses
import io
import json
import math
import re
import sys
import types

import pytest

from emulator.analysis.display import LiveDisplay
from emulator.analysis.report import Blackout, DestinationOutcome, Interval, PassRecord, Report, summarize
from emulator.destination.receiver import DestinationLimits
from emulator.shell import cli
from emulator.shell.commands import migrate as migrate_command
from emulator.shell.commands import receive as receive_command
from emulator.source.policy import PolicyConfig
from emulator.vm.scenario import MigrationOptions, Scenario

PAGE_SIZE = 4096


def parse(*argv, command="migrate"):
    return cli.build_parser().parse_args([command, *argv])


def scenario(*argv):
    return cli.scenario_from_args(parse(*argv))


# scenario_from_args ---------------------------------------------------------------------
def test_defaults_are_the_library_defaults():
    assert scenario() == Scenario()
    s = scenario()
    assert s.guest.memory_bytes == 1 << 30
    assert s.guest.page_size == 4096 and s.guest.fill == "mixed" and s.guest.seed == 0
    assert s.workload.rate_pages_per_s == 50_000.0 and s.workload.pattern == "hotset"
    assert s.migration == MigrationOptions()
    assert s.migration.policy == PolicyConfig()


def test_every_option_maps_to_its_field():
    s = scenario(
        "--memory", "512MiB", "--page-size", "8KiB", "--fill", "text", "--seed", "7",
        "--vcpus", "4", "--dirty-rate", "20000pages/s", "--pattern", "zipf",
        "--hot-fraction", "0.25", "--hot-share", "0.5", "--stride", "3", "--zipf-s", "1.5",
        "--write-size", "64",
        "--codec", "raw", "--channels", "2", "--batch-pages", "128", "--downtime-limit", "50",
        "--max-passes", "5", "--max-time", "1.5min", "--on-stall", "abort", "--stall-passes", "4",
        "--max-bandwidth", "1Gbit/s", "--device-state", "1MiB", "--timeout", "2s", "--verify", "full", "--auto-converge",
    )
    g, w, m = s.guest, s.workload, s.migration
    assert (g.memory_bytes, g.page_size, g.fill, g.seed) == (512 << 20, 8192, "text", 7)
    assert (w.vcpus, w.rate_pages_per_s, w.pattern, w.seed) == (4, 20000.0, "zipf", 7)
    assert (w.hot_fraction, w.hot_share, w.stride, w.zipf_s, w.write_size) == (0.25, 0.5, 3, 1.5, 64)
    assert (m.codec, m.channels, m.batch_pages) == ("raw", 2, 128)
    assert m.max_bandwidth_bytes_per_s == 125e6
    assert (m.device_state_bytes, m.timeout_s, m.verify, m.auto_converge) == (1 << 20, 2.0, "full", True)
    assert m.policy == PolicyConfig(downtime_limit_s=0.05, max_passes=5, max_time_s=90.0,
                                    stall_passes=4, on_stall="abort")


@pytest.mark.parametrize(
    "text, pages_per_s",
    [("100MiB/s", 25600.0), ("20000", 20000.0), ("20000pages/s", 20000.0), ("0", 0.0), ("max", math.inf)],
)
def test_dirty_rate_units(text, pages_per_s):
    assert scenario("--dirty-rate", text).workload.rate_pages_per_s == pages_per_s


def test_byte_dirty_rate_uses_the_page_size():
    assert scenario("--page-size", "8192", "--dirty-rate", "100MiB/s").workload.rate_pages_per_s == 12800.0


@pytest.mark.parametrize("text, seconds", [("50", 0.05), ("300ms", 0.3), ("1s", 1.0), ("0.5", 0.0005)])
def test_downtime_limit_bare_number_is_milliseconds(text, seconds):
    assert scenario("--downtime-limit", text).migration.policy.downtime_limit_s == seconds


@pytest.mark.parametrize(
    "text, rate", [("1Gbit/s", 125e6), ("100MB/s", 100e6), ("10Gbps", 1.25e9), ("unlimited", None)]
)
def test_max_bandwidth(text, rate):
    assert scenario("--max-bandwidth", text).migration.max_bandwidth_bytes_per_s == rate


def test_no_limit_words():
    s = scenario("--max-time", "none", "--stall-passes", "0")
    assert s.migration.policy.max_time_s is None
    assert s.migration.policy.stall_passes is None


def test_send_and_receive_arguments():
    args = parse("--to", "tcp://10.0.0.2:4444", "--memory", "64MiB", command="send")
    assert args.to == "tcp://10.0.0.2:4444"
    assert cli.scenario_from_args(args).guest.memory_bytes == 64 << 20
    args = parse("--listen", "tcp://*:4444", "--capacity", "8GiB", "--serve", command="receive")
    assert (args.listen, args.capacity, args.serve) == ("tcp://*:4444", 8 << 30, True)


# refused values -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, option",
    [
        (["migrate", "--memory", "12XB"], "--memory"),
        (["migrate", "--memory", "1000"], "--memory"),
        (["migrate", "--memory", "0"], "--memory"),
        (["migrate", "--page-size", "1000"], "--page-size"),
        (["migrate", "--page-size", "32"], "--page-size"),
        (["migrate", "--fill", "ones"], "--fill"),
        (["migrate", "--seed", "-1"], "--seed"),
        (["migrate", "--vcpus", "0"], "--vcpus"),
        (["migrate", "--vcpus", "two"], "--vcpus"),
        (["migrate", "--dirty-rate", "fast"], "--dirty-rate"),
        (["migrate", "--dirty-rate", "10Mb/s"], "--dirty-rate"),
        (["migrate", "--dirty-rate", "-5"], "--dirty-rate"),
        (["migrate", "--pattern", "random"], "--pattern"),
        (["migrate", "--hot-fraction", "0"], "--hot-fraction"),
        (["migrate", "--hot-fraction", "nan"], "--hot-fraction"),
        (["migrate", "--hot-share", "1.5"], "--hot-share"),
        (["migrate", "--stride", "0"], "--stride"),
        (["migrate", "--zipf-s", "0"], "--zipf-s"),
        (["migrate", "--write-size", "12"], "--write-size"),
        (["migrate", "--write-size", "8KiB"], "--write-size"),
        (["migrate", "--codec", "zstd"], "--codec"),
        (["migrate", "--channels", "65"], "--channels"),
        (["migrate", "--batch-pages", "0"], "--batch-pages"),
        (["migrate", "--downtime-limit", "soon"], "--downtime-limit"),
        (["migrate", "--max-passes", "0"], "--max-passes"),
        (["migrate", "--max-time", "0"], "--max-time"),
        (["migrate", "--on-stall", "panic"], "--on-stall"),
        (["migrate", "--stall-passes", "-1"], "--stall-passes"),
        (["migrate", "--max-bandwidth", "0"], "--max-bandwidth"),
        (["migrate", "--max-bandwidth", "10Mb/s"], "--max-bandwidth"),
        (["migrate", "--device-state", "1.5B"], "--device-state"),
        (["migrate", "--device-state", "65MiB"], "--device-state"),
        (["migrate", "--timeout", "0"], "--timeout"),
        (["send"], "--to"),
        (["send", "--to", "10.0.0.2:4444"], "--to"),
        (["send", "--to", "tcp://host:port"], "--to"),
        (["receive"], "--listen"),
        (["receive", "--listen", "tcp://*:99999"], "--listen"),
        (["receive", "--listen", "tcp://*:1", "--capacity", "lots"], "--capacity"),
        (["receive", "--listen", "tcp://*:1", "--max-vcpus", "0"], "--max-vcpus"),
        (["receive", "--listen", "tcp://*:1", "--max-channels", "many"], "--max-channels"),
        (["receive", "--listen", "tcp://*:1", "--max-device-state", "0"], "--max-device-state"),
        (["receive", "--listen", "tcp://*:1", "--max-message", "1.5B"], "--max-message"),
        (["receive", "--listen", "tcp://*:1", "--max-duration", "0"], "--max-duration"),
        (["migrate", "--max-bandwidth", "100"], "--max-bandwidth"),
        (["migrate", "--max-bandwidth", "150%"], "--max-bandwidth"),
        (["migrate", "--link", "fast"], "--link"),
        (["migrate", "--blackout-warning", "0"], "--blackout-warning"),
        (["migrate", "--switches", "External,,Storage"], "--switches"),
        (["migrate", "--config-version", "0"], "--config-version"),
        (["migrate", "--cpu", "/nonexistent/cpu.json"], "--cpu"),
        (["receive", "--listen", "tcp://*:1", "--switch", "a,b"], "--switch"),
        (["receive", "--listen", "tcp://*:1", "--switch", ""], "--switch"),
        (["receive", "--listen", "tcp://*:1", "--config-version", "70000"], "--config-version"),
        (["compat", "--hosts", "/nonexistent/a.json"], "--hosts"),
        (["migrate", "--postcopy-after", "0"], "--postcopy-after"),
        (["migrate", "--postcopy-after", "two"], "--postcopy-after"),
        (["migrate", "--postcopy", "--verify", "full"], "--postcopy"),
        (["migrate", "--postcopy-after", "2", "--disk", "1MiB", "--storage", "mirror"], "--postcopy"),
    ],
)
def test_bad_values_are_refused_naming_the_option(argv, option, capsys, fake_engine):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("precopy: error: ")
    assert option in err
    assert err.count("\n") == 1  # one line, no usage dump, no traceback
    assert fake_engine.calls == []


def test_example_in_the_message(capsys):
    assert cli.main(["migrate", "--memory", "12XB"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("precopy: error: --memory: invalid size '12XB'")
    assert "(example: --memory 512MiB)" in err


def test_unknown_command_and_option(capsys):
    assert cli.main(["frob"]) == 2
    assert cli.main(["migrate", "--frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "frob" in err and "--frobnicate" in err


# help -------------------------------------------------------------------------------------
def test_help_exits_0_and_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("migrate", "send", "receive", "--debug"):
        assert command in out


def test_no_command_prints_help_and_exits_0(capsys):
    assert cli.main([]) == 0
    assert "usage: precopy" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["migrate", "send"])
def test_run_command_help_lists_options_in_groups(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    for group in ("guest:", "workload:", "migration:", "output:"):
        assert group in out
    for option in ("--memory", "--page-size", "--fill", "--seed", "--vcpus", "--dirty-rate", "--pattern",
                   "--hot-fraction", "--hot-share", "--stride", "--zipf-s", "--write-size", "--codec",
                   "--channels", "--batch-pages", "--downtime-limit", "--max-passes", "--max-time",
                   "--on-stall", "--stall-passes", "--max-bandwidth", "--device-state", "--timeout",
                   "--report", "--json", "--quiet", "--debug"):
        assert option in out


def test_receive_help(capsys):
    assert cli.main(["receive", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--listen", "--capacity", "--serve", "--json", "--quiet", "--timeout", "--key", "--allow",
                   "--insecure"):
        assert option in out


# engine calls (a fake emulator.running.migration) -------------------------------------------------
def make_report(status="completed", reason=None):
    passes = [
        PassRecord(pass_no=0, pages_sent=256, bytes_sent=256 * PAGE_SIZE, wire_bytes=500_000, zero_pages=100,
                   duration_s=0.5, bandwidth_bytes_per_s=1e6, remaining_pages=10,
                   dirty_pages_rate=20.0, threshold_bytes=300_000.0, throttle_pct=0),
    ]
    blackout = Blackout(total_s=0.01, final_pages=10, final_bytes=10 * PAGE_SIZE, final_wire_bytes=20_000,
                        final_zero_pages=0, final_send_s=0.005, device_state_bytes=1024, device_state_s=0.001,
                        digest_check_s=0.001, resume_s=0.001) if status == "completed" else None
    return Report(
        status=status, reason=reason, scenario=Scenario(), passes=passes, blackout=blackout,
        summary=summarize(passes, blackout, status=status, page_size=PAGE_SIZE, total_pages=256,
                          setup_s=0.01, total_s=0.6),
    )


class FakeEngine(types.ModuleType):
    def __init__(self):
        super().__init__("emulator.running.migration")
        self.calls = []
        self.report = make_report()
        self.outcome = DestinationOutcome("completed", digest="abc123")
        self.error = None

    def _call(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        if self.error is not None:
            raise self.error

    def migrate(self, scenario, *, progress=None, disk_path=None, disk_dir=None):
        self._call("migrate", scenario, progress=progress)
        return self.report

    def send(self, scenario, to, *, progress=None, security=None, disk_path=None):
        self._call("send", scenario, to, progress=progress, security=security)
        return self.report

    def receive(self, listen, *, capacity_bytes=None, limits=None, serve=False, max_incoming=1, progress=None,
                timeout_s=10.0, wait_s=None, security=None, insecure=False, on_outcome=None, ready=None):
        self._call("receive", listen, capacity_bytes=capacity_bytes, limits=limits, serve=serve,
                   max_incoming=max_incoming, progress=progress, timeout_s=timeout_s, wait_s=wait_s,
                   security=security, insecure=insecure)
        ready(listen)
        if self.outcome is not None:  # None: stopped before any migration
            on_outcome(self.outcome)
        return self.outcome


@pytest.fixture
def fake_engine(monkeypatch):
    engine = FakeEngine()
    for command, name in ((migrate_command, "migration"), (migrate_command, "children"),
                          (receive_command, "migration")):  # the commands that call the engine, by the names they use
        monkeypatch.setattr(command, name, engine)
    return engine


def test_migrate_completed_prints_the_summary(fake_engine, capsys):
    assert cli.main(["migrate", "--memory", "1MiB", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("status       completed")
    assert "digests" in out
    (name, (scenario_arg,), kwargs), = fake_engine.calls
    assert name == "migrate"
    assert scenario_arg.guest.memory_bytes == 1 << 20
    assert kwargs["progress"] is None  # --quiet: no display


def test_migrate_gives_the_engine_a_display(fake_engine, capsys):
    assert cli.main(["migrate"]) == 0
    progress = fake_engine.calls[0][2]["progress"]
    assert isinstance(progress, LiveDisplay)
    assert not progress.enabled  # captured stderr is not a terminal


def test_failed_migration_exits_1(fake_engine, capsys):
    fake_engine.report = make_report("failed", "destination refused: not enough memory")
    assert cli.main(["migrate", "--quiet"]) == 1
    assert "failed (destination refused: not enough memory)" in capsys.readouterr().out


def test_cancelled_migration_exits_130(fake_engine, capsys):
    fake_engine.report = make_report("cancelled", "cancelled by the user")
    assert cli.main(["migrate", "--quiet"]) == 130


def test_report_file_reads_back(fake_engine, tmp_path, capsys):
    path = tmp_path / "run.json"
    assert cli.main(["migrate", "--quiet", "--report", str(path)]) == 0
    assert Report.read(path) == fake_engine.report
    assert "status" in capsys.readouterr().out  # the summary is still printed


def test_report_in_missing_directory_is_refused_before_the_run(fake_engine, tmp_path, capsys):
    assert cli.main(["migrate", "--report", str(tmp_path / "no" / "run.json")]) == 2
    assert "--report" in capsys.readouterr().err
    assert fake_engine.calls == []


def test_report_that_is_a_directory_is_refused_before_the_run(fake_engine, tmp_path, capsys):
    assert cli.main(["migrate", "--report", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert fake_engine.calls == []


def test_json_prints_the_report(fake_engine, capsys):
    assert cli.main(["migrate", "--json"]) == 0
    out = capsys.readouterr().out
    assert Report.from_json(out) == fake_engine.report


def test_send_passes_the_address(fake_engine, capsys):
    assert cli.main(["send", "--to", "tcp://10.0.0.2:4444", "--codec", "raw", "--quiet"]) == 0
    (name, (scenario_arg, to), _), = fake_engine.calls
    assert (name, to, scenario_arg.migration.codec) == ("send", "tcp://10.0.0.2:4444", "raw")


def test_receive(fake_engine, capsys):
    assert cli.main(["receive", "--listen", "tcp://*:4444", "--capacity", "2GiB", "--quiet"]) == 0
    (name, (listen,), kwargs), = fake_engine.calls
    assert (name, listen) == ("receive", "tcp://*:4444")
    assert kwargs == {"capacity_bytes": 2 << 30, "limits": DestinationLimits(), "serve": False, "max_incoming": 1,
                      "progress": None, "timeout_s": 10.0, "wait_s": None, "security": None, "insecure": False}
    captured = capsys.readouterr()
    assert "completed" in captured.out and "abc123" in captured.out
    assert "listening on tcp://*:4444" in captured.err


def test_max_incoming_needs_serve(fake_engine, capsys):
    assert cli.main(["receive", "--listen", "tcp://127.0.0.1:4444", "--max-incoming", "2"]) == 2
    assert "--max-incoming: a single receive hosts one migration; give --serve too" in capsys.readouterr().err
    assert cli.main(["receive", "--listen", "tcp://127.0.0.1:4444", "--serve", "--max-incoming", "3",
                     "--quiet"]) == 0
    assert fake_engine.calls[-1][2]["max_incoming"] == 3


def test_receive_limits_reach_the_engine(fake_engine, capsys):
    assert cli.main(["receive", "--listen", "tcp://127.0.0.1:4444", "--max-vcpus", "4", "--max-channels", "2",
                     "--max-device-state", "1MiB", "--max-message", "8MiB", "--max-duration", "10min",
                     "--quiet"]) == 0
    (_, _, kwargs), = fake_engine.calls
    assert kwargs["limits"] == DestinationLimits(max_vcpus=4, max_channels=2, max_device_state_bytes=1 << 20,
                                                 max_message_bytes=8 << 20, max_duration_s=600.0)


def test_receive_waits_for_a_source_as_long_as_asked(fake_engine, capsys):
    assert cli.main(["receive", "--listen", "tcp://*:4444", "--wait", "5min", "--quiet"]) == 0
    assert fake_engine.calls[0][2]["wait_s"] == 300.0
    capsys.readouterr()
    for bad in (["--wait", "0s"], ["--wait", "soon"], ["--wait", "1min", "--serve"]):
        assert cli.main(["receive", "--listen", "tcp://*:4444", *bad]) == 2
        assert "--wait" in capsys.readouterr().err
    assert len(fake_engine.calls) == 1


def test_receive_says_where_it_listens_once_and_gives_up_after_wait(capsys):
    assert cli.main(["receive", "--listen", "tcp://127.0.0.1:0", "--wait", "0.2s"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("listening on tcp://127.0.0.1:") == 1
    assert "no source began a migration within 0.2 s" in captured.out


def test_receive_failure_and_json(fake_engine, capsys):
    fake_engine.outcome = DestinationOutcome("failed", "digest mismatch")
    assert cli.main(["receive", "--listen", "tcp://*:4444", "--json", "--serve"]) == 1
    assert json.loads(capsys.readouterr().out) == dataclasses.asdict(fake_engine.outcome)
    assert fake_engine.calls[0][2]["serve"] is True


def test_runtime_error_is_one_line_exit_1(fake_engine, capsys):
    fake_engine.error = ConnectionRefusedError("connection refused")
    assert cli.main(["migrate", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == "precopy: error: connection refused\n"


def test_debug_shows_the_traceback(fake_engine, capsys):
    fake_engine.error = RuntimeError("boom")
    assert cli.main(["--debug", "migrate", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "precopy: error: boom" in err
    assert cli.main(["migrate", "--quiet", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_exits_130(fake_engine, capsys):
    fake_engine.error = KeyboardInterrupt()
    assert cli.main(["migrate", "--quiet"]) == 130
    assert "cancelled" in capsys.readouterr().err


def test_missing_engine_is_a_runtime_error(monkeypatch, capsys):
    monkeypatch.setattr(migrate_command, "children", None)  # an engine that cannot be called
    assert cli.main(["migrate", "--quiet"]) == 1
    assert capsys.readouterr().err.startswith("precopy: error: ")


# the live display -------------------------------------------------------------------------
class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_display_on_a_pipe_prints_nothing():
    stream = io.StringIO()
    display = LiveDisplay(stream)
    assert not display.enabled
    display.phase("precopy", 0.01)
    display.pass_done(make_report().passes[0], PAGE_SIZE, 256)
    display.banner("guest 1 GiB")
    assert stream.getvalue() == ""


def test_display_on_a_terminal_is_enabled():
    assert LiveDisplay(FakeTTY()).enabled
    assert not LiveDisplay(FakeTTY(), enabled=False).enabled


def test_a_display_that_shows_nothing_asks_for_no_interval_samples():
    assert LiveDisplay(FakeTTY(), interval_s=2.0).interval_s == 2.0
    assert LiveDisplay(io.StringIO(), interval_s=2.0).interval_s == 0  # not a terminal: the sender samples nothing


def test_display_prints_a_line_per_phase_and_pass():
    stream = io.StringIO()
    display = LiveDisplay(stream, enabled=True)
    display.phase("setup", 0.0)
    display.phase("precopy", 0.012)
    record = make_report().passes[0]
    for pass_no in range(3):
        record.pass_no = pass_no
        display.pass_done(record, PAGE_SIZE, 256)
    display.phase("blackout", 1.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6
    assert "setup" in lines[0] and "precopy" in lines[1] and "blackout" in lines[5]
    for pass_no, line in enumerate(lines[2:5]):
        assert f"pass {pass_no:>3}" in line
        assert f"pass {pass_no:>3}  1.00 MiB" in line  # the bytes sent
        assert "left 40.0 KiB (3.9%)" in line
        assert "1.00 MB/s" in line and "20 writes/s" in line
        assert len(line) <= 100


@pytest.mark.parametrize("pass_left_s, firm, says", [
    (None, False, "no rate yet"), (1.53, False, "pass left 1.53 s, end ~12 min 00 s (guess)"),
    (0.2, True, "pass left 200 ms, end ~12 min 00 s"),
])
def test_interval_lines_say_what_is_left_and_when_it_is_a_guess(pass_left_s, firm, says):
    stream = io.StringIO()
    display = LiveDisplay(stream=stream, enabled=True)
    sample = Interval(pass_no=12, elapsed_s=3.0, pages_sent=131_072 * 1024, pass_pages=262_144 * 1024,
                      wire_bytes_per_s=1.234e9, dirty_pages=123_456_789, pass_left_s=pass_left_s,
                      end_s=None if pass_left_s is None else 720.0, firm=firm)
    display.interval(sample, PAGE_SIZE)
    line = stream.getvalue().rstrip("\n")
    assert line.startswith("  ... 512 GiB of 1.00 TiB at 1.23 GB/s  dirty 471 GiB  ")
    assert line.endswith(says) and len(line) <= 100, line


def test_display_messages_print_even_when_disabled():
    stream = io.StringIO()
    LiveDisplay(stream, enabled=False).message("stall detected after pass 5")
    assert stream.getvalue() == "precopy: stall detected after pass 5\n"


def test_keygen_and_key_options(fake_engine, capsys, tmp_path):
    assert cli.main(["keygen", "dst", "--dir", str(tmp_path)]) == 0
    assert cli.main(["keygen", "src", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "dst.key").exists() and (tmp_path / "src.key_secret").exists()
    secret = (tmp_path / "dst.key_secret").read_bytes()
    capsys.readouterr()
    assert cli.main(["keygen", "dst", "--dir", str(tmp_path)]) == 2  # never silently replaced
    assert "already exist" in capsys.readouterr().err and (tmp_path / "dst.key_secret").read_bytes() == secret
    assert cli.main(["keygen", "dst", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "dst.key_secret").read_bytes() != secret
    assert cli.main(["keygen", "dst", "--dir", str(tmp_path)]) == 2
    capsys.readouterr()
    assert cli.main(["send", "--to", "tcp://h:1", "--key", str(tmp_path / "src.key_secret"), "--quiet"]) == 2
    assert "--key and --server-key go together" in capsys.readouterr().err
    assert cli.main(["receive", "--listen", "tcp://127.0.0.1:1", "--allow", str(tmp_path / "src.key")]) == 2
    assert "--allow needs --key" in capsys.readouterr().err
    assert cli.main(["receive", "--listen", "tcp://127.0.0.1:1", "--key", str(tmp_path / "dst.key"),
                     "--allow", str(tmp_path / "src.key")]) == 2
    assert "holds no secret key" in capsys.readouterr().err
    assert cli.main(["send", "--to", "tcp://h:1", "--key", str(tmp_path / "src.key_secret"),
                     "--server-key", str(tmp_path / "dst.key"), "--quiet"]) == 0
    security = fake_engine.calls[-1][2]["security"]
    assert security.server_public == (tmp_path / "dst.key").read_text().split('"')[1].encode()
    assert cli.main(["receive", "--listen", "tcp://0.0.0.0:1", "--key", str(tmp_path / "dst.key_secret"),
                     "--allow", str(tmp_path / "src.key"), "--quiet"]) == 0
    assert len(fake_engine.calls[-1][2]["security"].allowed) == 1


def test_a_guest_this_host_cannot_hold_is_refused_before_anything_starts(fake_engine, capsys, monkeypatch):
    import emulator.vm.allocator

    monkeypatch.setattr(emulator.vm.allocator, "available_memory_bytes", lambda: 40 << 30)
    assert cli.main(["migrate", "--memory", "30GiB", "--quiet"]) == 2  # both ends here: 60 GiB
    assert "--memory: a migration on this machine holds the guest twice" in capsys.readouterr().err
    assert cli.main(["send", "--to", "tcp://h:1", "--memory", "10TiB", "--quiet"]) == 2
    assert "the source guest needs 10.0 TiB, this host has 40.0 GiB" in capsys.readouterr().err
    assert cli.main(["send", "--to", "tcp://h:1", "--memory", "100TiB", "--quiet"]) == 2
    assert "a guest has at most 4,294,967,296 pages" in capsys.readouterr().err
    assert fake_engine.calls == []
    assert cli.main(["send", "--to", "tcp://h:1", "--memory", "30GiB", "--quiet"]) == 0


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("precopy 0.1.0 (wire protocol 6)")


def test_the_default_message_size_follows_the_page_size(fake_engine, capsys):
    assert cli.main(["migrate", "--memory", "64MiB", "--page-size", "2MiB", "--quiet"]) == 0
    assert cli.main(["migrate", "--memory", "64MiB", "--quiet"]) == 0
    assert cli.main(["migrate", "--memory", "64MiB", "--batch-pages", "8", "--quiet"]) == 0
    assert [call[1][0].migration.batch_pages for call in fake_engine.calls] == [2, 1024, 8]  # 4 MiB, or as given


@pytest.mark.parametrize("statuses, code", [
    (["completed"], 0), (["failed"], 1), (["cancelled"], 130), ([], 0),
    (["completed", "failed", "completed"], 1), (["failed", "cancelled"], 130),
])
def test_one_exit_status_table(statuses, code):
    assert cli.exit_status(statuses) == code


def test_a_serving_receiver_stopped_between_migrations_exits_0(fake_engine):
    fake_engine.outcome = None
    assert cli.main(["receive", "--listen", "tcp://127.0.0.1:4444", "--serve", "--quiet"]) == 0


def test_the_start_up_time_is_this_process_age():
    import subprocess
    import time

    started = time.monotonic()
    age = float(subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5); from emulator.analysis.display import "
                                "process_age_s; print(process_age_s())"], capture_output=True, text=True,
                               check=True).stdout)
    assert 0.5 <= age <= time.monotonic() - started + 0.05


def test_the_setup_line_says_how_long_start_up_took():
    stream = io.StringIO()
    LiveDisplay(stream=stream, enabled=True).phase("setup", 0.0)
    assert re.fullmatch(r"\[    0\.000 s\] setup \(after \d[\w. ]* of start-up: imports, receiver, kernels\)\n",
                        stream.getvalue())


def test_status_text_names_the_phase_pass_bytes_and_parameters():
    from emulator.analysis.text import format_status

    text = format_status({"phase": "precopy", "elapsed_s": 2.5, "pass": 1, "pass_pages_sent": 256, "page_size": 4096,
                          "total_pages": 1024, "remaining_pages": 128, "transferred_bytes": 5 << 20,
                          "bandwidth_bytes_per_s": 2e8, "dirty_pages_rate": 5000.0, "downtime_limit_s": 0.3,
                          "max_bandwidth_bytes_per_s": None, "disk_remaining_bytes": None, "disk_bytes": None})
    assert text.splitlines() == [
        "phase        precopy after 2.50 s, pass 1 (1.00 MiB of it sent)",
        "transferred  5.00 MiB on the wire",
        "remaining    512 KiB to send (128 of 1,024 pages)",
        "last pass    200 MB/s, 5,000 page writes/s",
        "parameters   downtime limit 300 ms, bandwidth cap unlimited",
    ]
    mirrored = format_status({"phase": "precopy", "elapsed_s": 2.5, "pass": 1, "pass_pages_sent": 0, "page_size": 4096,
                              "total_pages": 1024, "remaining_pages": 0, "transferred_bytes": 0,
                              "bandwidth_bytes_per_s": None, "dirty_pages_rate": None, "downtime_limit_s": 0.3,
                              "max_bandwidth_bytes_per_s": None, "disk_remaining_bytes": 3 << 20,
                              "disk_bytes": 1 << 30})
    assert "disk         3.00 MiB dirty of 1.00 GiB mirrored" in mirrored.splitlines()


@pytest.mark.parametrize("argv, says", [
    (["migrate", "--interval=-1s"], "--interval: invalid duration '-1s': must not be negative"),
    (["migrate", "--interval", "often"], "--interval: invalid duration 'often'"),
    (["set", "--downtime-limit", "soon"], "--downtime-limit: invalid duration"),
    (["set", "--max-bandwidth", "100"], "--max-bandwidth: invalid bandwidth '100': a bare number"),
])
def test_bad_interval_and_set_values_are_refused_naming_the_option(argv, says, capsys):
    assert cli.main(argv) == 2
    assert says in capsys.readouterr().err


# what a new user hit -----------------------------------------------------------------------
def test_help_and_readme_give_the_one_exit_table(capsys):
    from pathlib import Path

    assert cli.main(["--help"]) == 0
    assert ("Exit status: 0 completed, or a serving receiver stopped between migrations; 1 failed (or the guest was "
            "lost in post-copy), check's destination would refuse the guest, status or set found no migration, or a "
            "runtime error; 2 bad usage: nothing was started; 3 completed with a warning event, under "
            "--fail-on-warning; 130 cancelled: Ctrl-C or SIGTERM.") in " ".join(capsys.readouterr().out.split())
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("Every command ends with one of these exit statuses")[1].split("\n\n")[1]
    assert [int(row.split("|")[1]) for row in table.splitlines()[2:]] == list(cli.EXIT_MEANINGS) == [0, 1, 2, 3, 130]


@pytest.mark.parametrize("argv, says", [
    (["--memory", "-1GiB"], "--memory: invalid size '-1GiB': must not be negative; expected a number with a unit such "
                            "as 512MiB, 4GiB or 1073741824 (example: --memory 512MiB)"),
    (["--memory", "1", "GiB"], "--memory: write the unit right after the number, without a space: --memory 1GiB"),
    (["--timeout", "10", "s"], "--timeout: write the unit right after the number, without a space: --timeout 10s"),
    (["--memory", "1GiB", "extra"], "unrecognized arguments: extra"),
    (["--downtime-limit", "0"], "--downtime-limit: must be a number > 0 and finite, got 0.0 "
                                "(example: --downtime-limit 500ms)"),
])
def test_a_value_typed_negative_apart_from_its_unit_or_zero_is_refused_naming_the_option(argv, says, capsys,
                                                                                          fake_engine):
    assert cli.main(["migrate", *argv]) == 2
    assert capsys.readouterr().err == f"precopy: error: {says}\n"
    assert fake_engine.calls == []
