"""Sweeps: grids as data, rows measured against the models, the CSV, the summary, the command."""

import dataclasses
import math

import pytest

from emulator.analysis import sweep
from emulator.analysis.estimate import DirtyBehaviour, EstimateInputs, working_set
from emulator.analysis.report import Blackout, PassRecord, Phase, Postcopy, Report, summarize
from emulator.shell import cli
from emulator.source.policy import DowntimeRamp, PolicyConfig
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec

PAGE = 4096
MIB = 1 << 20

GRID = """
fill = "random"
codec = "raw"
max_bandwidth = "100MB/s"
downtime_limit = "50"   # a bare number is milliseconds, as on the command line
repeats = 2
seed = 5

[[grid]]
memory = ["4MiB", "8MiB"]
lambda = [0.0, 0.5]
pattern = "uniform"

[[grid]]
memory = "16MiB"
dirty_rate = "1000pages/s"
pattern = ["hotset"]
hot_fraction = 0.25
repeats = 1
"""


def scenario_4mib(rate=512.0, pattern="uniform"):
    """4 MiB guest, 100 ms downtime limit, no device state: the hand-computed case of test_estimate."""
    return Scenario(GuestSpec(4 * MIB, fill="random"), WorkloadSpec(rate_pages_per_s=rate, pattern=pattern),
                    MigrationOptions(codec="raw", max_bandwidth_bytes_per_s=4 * MIB, device_state_bytes=0,
                                     policy=PolicyConfig(downtime_limit_s=0.1)))


def fake_report(scenario, *, passes=(1024, 512), final=256, r0=4 * MIB, blackout_s=0.25, setup_s=0.2):
    """A completed run: passes of the given pages at r0 guest bytes/s, then the blackout."""
    page = scenario.guest.page_size
    records = []
    for number, pages in enumerate(passes):
        left = passes[number + 1] if number + 1 < len(passes) else final
        duration = pages * page / r0
        records.append(PassRecord(number, pages, pages * page, pages * page + 64, 0, duration, r0, left,
                                  scenario.workload.rate_pages_per_s, r0 * 0.1, 0))
    precopy_end = setup_s + sum(r.duration_s for r in records)
    end = precopy_end + blackout_s
    blackout = Blackout(blackout_s, final, final * page, final * page, 0, blackout_s * 0.8, 0, 0.0, 0.0, 0.0)
    phases = [Phase("setup", 0.0, setup_s), Phase("precopy", setup_s, precopy_end),
              Phase("blackout", precopy_end, precopy_end + blackout_s * 0.9),
              Phase("handover", precopy_end + blackout_s * 0.9, end), Phase("resume", end, end),
              Phase("announce", end, end + 0.01)]
    summary = summarize(records, blackout, status="completed", page_size=page, total_pages=scenario.guest.n_pages,
                        setup_s=setup_s, total_s=end + 0.01)
    return Report(status="completed", scenario=scenario, passes=records, phases=phases, blackout=blackout,
                  switchover_reason="converged", digests_match=True, source_digest="ab", destination_digest="ab",
                  summary=summary)


def one_run(scenario, index=1, lam=0.5):
    return sweep.SweepRun(index, scenario, 0, lam)


# the grid -------------------------------------------------------------------------------------------
def test_a_toml_grid_is_the_union_of_products_with_repeats(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    runs = sweep.expand(sweep.load_grid(path))
    assert len(runs) == 2 * 2 * 2 + 1
    assert [r.index for r in runs] == list(range(1, 10))
    first, second, third = runs[0].scenario, runs[1].scenario, runs[2].scenario
    assert (first.guest.memory_bytes, first.guest.seed, first.workload.seed, runs[0].repeat) == (4 * MIB, 5, 5, 0)
    assert (second.guest.seed, runs[1].repeat, second.workload.rate_pages_per_s) == (6, 1, 0.0)
    # lambda 0.5 of 100 MB/s in 4 KiB pages
    assert third.workload.rate_pages_per_s == 0.5 * 100e6 / PAGE and runs[2].lambda_nominal == 0.5
    assert runs[4].scenario.guest.memory_bytes == 8 * MIB
    for run in runs:
        m = run.scenario.migration
        assert (run.scenario.guest.fill, m.codec, m.max_bandwidth_bytes_per_s) == ("random", "raw", 100e6)
        assert m.policy.downtime_limit_s == 0.05
    last = runs[-1]
    assert last.scenario.workload.pattern == "hotset" and last.scenario.workload.hot_fraction == 0.25
    assert last.scenario.workload.rate_pages_per_s == 1000.0
    assert last.lambda_nominal == pytest.approx(1000 * PAGE / 100e6, rel=1e-15)
    assert (last.repeat, last.scenario.guest.seed) == (0, 5)
    assert runs[2].name == "003-4MiB-uniform-lam0.50-raw-s5"
    assert last.name == "009-16MiB-hotset-lam0.04-raw-s5"


def test_a_missing_key_takes_the_migrate_default():
    (run,) = sweep.expand([{"memory": "8MiB"}])
    s = run.scenario
    assert s.workload == WorkloadSpec(rate_pages_per_s=50_000.0, pattern="hotset")
    assert s.migration == MigrationOptions() and s.guest == GuestSpec(8 * MIB)
    assert run.lambda_nominal is None and run.name == "001-8MiB-hotset-50000pps-lz4-s0"


@pytest.mark.parametrize("grid, message", [
    ({"memroy": "1GiB"}, "unknown key(s) memroy"),
    ({"lambda": 0.5, "dirty_rate": "100", "max_bandwidth": "1MB/s"}, "give dirty_rate or lambda, not both"),
    ({"lambda": 0.5}, "lambda needs a bandwidth cap"),
    ({"memory": "lots"}, "memory = 'lots': invalid size 'lots'"),
    ({"memory": []}, "memory is an empty list"),
    ({"vcpus": 1.5}, "vcpus = 1.5: must be a whole number, got 1.5 (example: vcpus = 4)"),
    ({"vcpus": 0}, "vcpus = 0: must be a whole number from 1 to 1024, got 0 (example: vcpus = 4)"),
    ({"memory": "8MiB", "pattern": "spiral"},
     "pattern = 'spiral': must be one of uniform, hotset, sequential, zipf, got 'spiral' (example: pattern = 'uniform')"),
])
def test_bad_grids_are_refused_naming_the_key(grid, message):
    with pytest.raises(ValueError) as error:
        sweep.expand(sweep.grids_from_data(grid, "g.toml"), "g.toml")
    assert message in str(error.value) and str(error.value).startswith("g.toml")


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("memory = [")
    with pytest.raises(ValueError, match="bad.toml: invalid TOML"):
        sweep.load_grid(path)


# rows ------------------------------------------------------------------------------------------------
def test_a_row_holds_the_measured_factor_and_each_models_error():
    s = scenario_4mib()
    row = sweep.row_for(one_run(s), fake_report(s), "reports/x.json")
    # pass 0 moved 4 MiB in 1 s: M / R = 1 s; pre-copy 1.5 s + blackout 0.25 s
    assert (row["pass0_throughput_bytes_per_s"], row["base_s"], row["lambda"]) == (4 * MIB, 1.0, 0.5)
    assert row["migration_s"] == pytest.approx(1.75, rel=1e-12)
    assert row["measured_factor"] == pytest.approx(1.75, rel=1e-12)
    assert row["total_s"] == pytest.approx(1.96, rel=1e-12) and row["setup_s"] == pytest.approx(0.2)
    thumb = (row["thumb_verdict"], row["thumb_error"], row["thumb_low_s"], row["thumb_high_s"])
    assert thumb == ("within", 0.0, 1.5, 3.0)
    # geometric: 1024, 512, 256, 128 pages and 64 in the blackout = 1.9375 s
    assert (row["geometric_factor"], row["geometric_passes"], row["geometric_converges"]) == (1.9375, 4, "true")
    assert row["geometric_error"] == pytest.approx(1.9375 / 1.75 - 1, rel=1e-12)
    model = working_set(EstimateInputs(4 * MIB, 4 * MIB, DirtyBehaviour(512.0),
                                       policy=PolicyConfig(downtime_limit_s=0.1)))
    assert row["working_set_factor"] == model.factor and row["working_set_passes"] == len(model.passes)
    assert row["working_set_error"] == pytest.approx(model.factor / 1.75 - 1, rel=1e-12)
    assert (row["passes"], row["final_pages"], row["blackout_s"], row["status"]) == (2, 256, 0.25, "completed")
    assert row["guest_bytes"] == (1024 + 512 + 256) * PAGE and row["wire_bytes"] == (1024 + 512 + 256) * PAGE + 128
    inputs = (row["memory_bytes"], row["pattern"], row["codec"], row["lambda_nominal"])
    assert inputs == (4 * MIB, "uniform", "raw", 0.5)


def test_the_rule_of_thumb_verdict_measures_the_distance_to_the_band():
    assert sweep.thumb_verdict(1.2) == ("below", pytest.approx(1.2 / 1.5 - 1))
    assert sweep.thumb_verdict(1.5) == ("within", 0.0) and sweep.thumb_verdict(3.0) == ("within", 0.0)
    assert sweep.thumb_verdict(4.5) == ("above", 0.5)


def test_a_failed_run_has_no_factor():
    s = scenario_4mib()
    failed = Report(status="failed", reason="destination refused: too big", scenario=s)
    row = sweep.row_for(one_run(s), failed, "reports/x.json")
    assert (row["status"], row["reason"], row["measured_factor"], row["geometric_factor"]) == \
        ("failed", "destination refused: too big", None, None)
    assert "1 runs, 0 measured (1 failed or not comparable)" in sweep.summary_text([row])


def test_the_csv_reads_back_typed(tmp_path):
    s = scenario_4mib()
    rows = [sweep.row_for(one_run(s, 1), fake_report(s), "reports/a.json"),
            sweep.row_for(one_run(s, 2), Report(status="failed", reason="x, y", scenario=s),
                          "reports/b.json")]
    sweep.write_csv(rows, tmp_path / "sweep.csv")
    back = sweep.read_csv(tmp_path / "sweep.csv")
    assert len(back) == 2 and list(back[0]) == [name for name, _ in sweep.COLUMNS]
    for written, read in zip(rows, back):
        for name, kind in sweep.COLUMNS:
            if written[name] is None:
                assert read[name] is None, name
            elif kind is float:
                assert read[name] == pytest.approx(written[name], rel=1e-5), name
            else:
                assert read[name] == written[name] and type(read[name]) is kind, name
    assert back[1]["reason"] == "x, y" and back[0]["measured_factor"] == 1.75


def test_read_csv_refuses_other_tables(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a sweep CSV"):
        sweep.read_csv(path)


def test_the_summary_says_how_each_model_did():
    rows = []
    for index, (passes, final) in enumerate([((1024, 512), 256), ((1024,), 100), ((1024, 1024, 1024, 1024), 1024)], 1):
        s = scenario_4mib()
        report = fake_report(s, passes=passes, final=final)
        rows.append(sweep.row_for(one_run(s, index), report, f"reports/{index}.json"))
    text = sweep.summary_text(rows)
    factors = [row["measured_factor"] for row in rows]  # 1.75, 1.25, 4.25
    assert factors == pytest.approx([1.75, 1.25, 4.25])
    assert text.startswith("3 runs, 3 measured\n")
    assert "measured overhead factor 1.25 to 4.25 (median 1.75), lambda 0.50 to 0.50" in text
    assert ("rule of thumb 1.5-3x: 1 below (factor 1.25-1.25), 1 within (factor 1.75-1.75),"
            " 1 above (factor 4.25-4.25)") in text
    geometric_errors = [1.9375 / f - 1 for f in factors]
    mean = sum(abs(e) for e in geometric_errors) / 3 * 100
    assert f"geometric    mean |error| {mean:.1f}%, within 10%: 0/3, worst +55% (run 2: uniform, lambda 0.50)" in text
    assert "working set  mean |error| 33.0%, within 10%: 1/3, worst -61% (run 3: uniform, lambda 0.50)" in text
    assert ("   3  4.00 MiB uniform      0.50      4    4.25 s    250 ms   4.25  above"
            "     1.94 (  -54%)   1.66 (  -61%)") in text


# running ---------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.events = []

    def started(self, run, total):
        self.events.append(("started", run.index, total))

    def finished(self, run, total, row, seconds):
        self.events.append(("finished", run.index, total, row["measured_factor"]))


def test_run_sweep_writes_reports_csv_and_summary(tmp_path):
    runs = [one_run(scenario_4mib(rate), index, rate * PAGE / (4 * MIB)) for index, rate in enumerate((0.0, 512.0), 1)]
    migrated = []

    def engine(scenario):
        migrated.append(scenario)
        return fake_report(scenario, passes=(1024,) if scenario.workload.rate_pages_per_s == 0 else (1024, 512),
                           final=0 if scenario.workload.rate_pages_per_s == 0 else 256)

    recorder = Recorder()
    rows = sweep.run_sweep(runs, tmp_path / "out", migrate=engine, progress=recorder)
    assert migrated == [run.scenario for run in runs]
    assert recorder.events == [("started", 1, 2), ("finished", 1, 2, 1.25), ("started", 2, 2), ("finished", 2, 2, 1.75)]
    out = tmp_path / "out"
    assert [row["report"] for row in rows] == [f"reports/{run.name}.json" for run in runs]
    for row in rows:
        assert Report.read(out / row["report"]).status == "completed"
    assert [row["run"] for row in sweep.read_csv(out / "sweep.csv")] == [1, 2]
    assert (out / "summary.txt").read_text() == sweep.summary_text(rows)


def test_a_run_cancelled_by_the_user_ends_the_sweep_after_writing_its_row(tmp_path):
    runs = [one_run(scenario_4mib(0.0), index, 0.0) for index in (1, 2, 3)]
    migrated = []

    def engine(scenario):
        migrated.append(scenario)
        report = fake_report(scenario, passes=(1024,), final=0)
        if len(migrated) == 2:  # Ctrl-C during the second run: the engine reports it cancelled
            report.status, report.reason = "cancelled", "cancelled by the user on the source"
        return report

    with pytest.raises(KeyboardInterrupt, match="run 2 of 3"):
        sweep.run_sweep(runs, tmp_path / "out", migrate=engine)
    assert len(migrated) == 2  # the third run never started
    assert [row["run"] for row in sweep.read_csv(tmp_path / "out" / "sweep.csv")] == [1, 2]
    assert (tmp_path / "out" / "summary.txt").exists()


# the command -----------------------------------------------------------------------------------------
def test_cli_sweep_dry_run_lists_the_grid_with_overrides(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "o"), "--memory", "32MiB", "--lambda", "0:0.9:0.3",
                     "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # grid 1: 1 memory x 4 lambdas x 2 repeats; grid 2: its dirty rate replaced by the 4 lambdas
    assert len(lines) == 8 + 4
    assert lines[0] == "   1 32.0 MiB uniform lambda 0.00 at 100 MB/s raw, downtime limit 50.0 ms, seed 5"
    assert lines[7] == "   8 32.0 MiB uniform lambda 0.90 at 100 MB/s raw, downtime limit 50.0 ms, seed 6"
    assert lines[11] == "  12 32.0 MiB hotset lambda 0.90 at 100 MB/s raw, downtime limit 50.0 ms, seed 5"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["--out", "x"], "give a grid file or some axes"),
    (["--out", "x", "--lambda", "0.5", "--dirty-rate", "100"], "give one of them, not both"),
    (["--out", "x", "--lambda", "0.5"], "lambda needs a bandwidth cap"),
    (["--out", "x", "--lambda", "0.9:0.1:0.1"], "--lambda: invalid lambda"),
    (["--out", "x", "--memory", "1GiB,lots"], "--memory: invalid size 'lots'"),
    (["--out", "x", "--pattern", "uniform,spiral"], "--pattern: 'spiral' is not one of"),
    (["missing.toml", "--out", "x"], "missing.toml"),
])
def test_cli_sweep_refuses_bad_input(capsys, argv, message):
    assert cli.main(["sweep", *argv]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_cli_sweep_runs_real_migrations(tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.main(["sweep", "--out", str(out), "--memory", "8MiB", "--lambda", "0,0.5", "--pattern", "uniform",
                       "--max-bandwidth", "50MB/s", "--codec", "raw", "--fill", "random", "--quiet"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    rows = sweep.read_csv(out / "sweep.csv")
    assert [(r["run"], r["lambda_nominal"], r["status"], r["digests_match"]) for r in rows] == \
        [(1, 0.0, "completed", "true"), (2, 0.5, "completed", "true")]
    idle, busy = rows
    # the idle guest: one pass, nothing left for the blackout, a factor just above 1
    assert (idle["passes"], idle["final_pages"], idle["geometric_factor"]) == (1, 0, idle["working_set_factor"])
    assert 1.0 <= idle["measured_factor"] < 1.2
    assert busy["measured_factor"] > idle["measured_factor"] and busy["guest_bytes"] > 8 * MIB
    for row in rows:
        report = Report.read(out / row["report"])
        assert report.passes[0].pages_sent == 2048 and report.scenario.migration.codec == "raw"
        assert row["pass0_throughput_bytes_per_s"] == pytest.approx(2048 * PAGE / report.passes[0].duration_s, rel=1e-5)
    assert printed.startswith(sweep.summary_text(rows)) and "wrote" in printed
    # lambda as the models see it: the dirty rate over pass 0's measured throughput (a short pass 0
    # beats the cap by the token bucket's burst and one batch of debt, so it is below the nominal 0.5)
    assert math.isclose(busy["lambda"], busy["dirty_rate_bytes_per_s"] / busy["pass0_throughput_bytes_per_s"],
                        rel_tol=1e-5)
    assert 0.3 < busy["lambda"] < 0.6


def test_cli_sweep_whole_number_axes_multiply_the_runs(capsys):
    assert cli.main(["sweep", "--out", "x", "--memory", "8MiB", "--vcpus", "1,2", "--max-passes", "3,30",
                     "--dirty-rate", "100,2000pages/s", "--downtime-limit", "20,1s", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 16
    assert lines[0].endswith("8.00 MiB hotset 100 pages/s at unlimited lz4, downtime limit 20.0 ms, seed 0")
    assert lines[-1].endswith("8.00 MiB hotset 2,000 pages/s at unlimited lz4, downtime limit 1.00 s, seed 0")


def test_every_run_option_of_migrate_is_a_sweep_key_and_an_axis():
    from emulator.shell import cli

    commands = cli.build_parser()._subparsers._group_actions[0].choices
    run_groups = [group for group in commands["migrate"]._action_groups
                  if group.title in ("guest", "workload", "migration")]
    options = [action.dest for group in run_groups for action in group._group_actions]
    assert len(options) > 20
    assert [option for option in options if option not in sweep.KEYS] == []
    axes = {action.dest for action in commands["sweep"]._actions}
    assert [option for option in options if option not in axes] == []


def test_a_sweep_sets_auto_converge():
    runs = sweep.expand([{"memory": "8MiB", "auto_converge": ["on", False]}], where="test")
    assert [run.scenario.migration.auto_converge for run in runs] == [True, False]
    with pytest.raises(ValueError, match="auto_converge = 'maybe': expected true or false"):
        sweep.expand([{"memory": "8MiB", "auto_converge": "maybe"}], where="test")


def test_guests_and_k_make_a_run_a_drain_and_are_axes():
    runs = sweep.expand([{"memory": "4MiB", "guests": [2, 4], "max_concurrent": [1, 2], "max_bandwidth": "10MB/s"}])
    assert [(run.guests, run.max_concurrent) for run in runs] == [(2, 1), (2, 2), (4, 1), (4, 2)]
    assert runs[0].is_drain and runs[0].name.endswith("-g2k1-s0")
    assert runs[3].describe().startswith("drain of 4 guests, 2 at once: 4.00 MiB")
    assert sweep.expand([{"guests": 3}])[0].max_concurrent == 2 and not sweep.expand([{}])[0].is_drain
    with pytest.raises(ValueError, match="max_concurrent is a drain's: give guests too"):
        sweep.expand([{"max_concurrent": 2}])
    with pytest.raises(ValueError, match="guests = 0"):
        sweep.expand([{"guests": 0}])


def test_a_drain_run_is_drained_and_its_row_holds_the_forecast(tmp_path):
    from emulator.running.drain import DrainReport, GuestRun

    s = scenario_4mib(rate=100.0)
    s = dataclasses.replace(s, migration=dataclasses.replace(s.migration, max_bandwidth_bytes_per_s=8e6))
    run = sweep.SweepRun(1, s, 0, None, guests=3, max_concurrent=2)
    given = []

    def fake_drain(guests, options):
        given.append((guests, options))
        runs = [GuestRun(guest.name, 4 * MIB, "completed", "tcp://x:1", None, 1, 0.0, 0.0, 0.5, 0.6, 0.6,
                         fake_report(guest.scenario, blackout_s=0.1 * (number + 1), setup_s=0.05))
                for number, guest in enumerate(guests)]
        return DrainReport(options, runs, 2.0, [(0.5, 8e6)])

    rows = sweep.run_sweep([run], tmp_path, migrate=None, drain=fake_drain)
    guests, options = given[0]
    assert [g.name for g in guests] == ["guest1", "guest2", "guest3"]
    assert len({g.scenario.guest.seed for g in guests}) == 3
    assert all(g.scenario.migration.max_bandwidth_bytes_per_s is None for g in guests)  # the cap is shared
    assert options.max_bandwidth_bytes_per_s == 8e6 and options.max_concurrent == 2
    row = rows[0]
    assert (row["guests"], row["max_concurrent"], row["drain_s"], row["status"]) == (3, 2, 2.0, "completed")
    assert row["worst_blackout_s"] == pytest.approx(0.3) and row["blackout_s"] == pytest.approx(0.2)
    assert row["drain_forecast_error"] == pytest.approx(row["drain_forecast_s"] / 2.0 - 1)
    from emulator.analysis import drain_estimate, estimate

    report = fake_report(guests[0].scenario)  # every fake report moves the same bytes
    ram = report.summary["ram"]
    inputs = estimate.EstimateInputs(4 * MIB, 8e6, estimate.DirtyBehaviour(100.0, "uniform"),
                                     compression_ratio=(ram["normal"] + ram["duplicate"]) * PAGE / ram["transferred"],
                                     device_state_bytes=s.migration.device_state_bytes, policy=s.migration.policy)
    expected = drain_estimate.forecast([inputs] * 3, 8e6, 2, setup_s=0.05)  # the reports' median setup
    assert row["drain_forecast_s"] == pytest.approx(expected.total_s)
    assert (tmp_path / "reports" / f"{run.name}.json").exists()
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("1 drains") and "completed" in summary
    assert sweep.read_csv(tmp_path / "sweep.csv")[0]["guests"] == 3


def test_a_row_says_which_strategies_ran_and_what_the_guest_lost():
    s = scenario_4mib(rate=1000.0)
    s = dataclasses.replace(s, migration=dataclasses.replace(
        s.migration, dirty_limit_bytes_per_s=1e6, xbzrle=True,
        policy=dataclasses.replace(s.migration.policy, downtime_ramp=DowntimeRamp(10, 75.0))))
    report = fake_report(s)
    for record, rate in zip(report.passes, (1000.0, 250.0)):  # the limit held pass 1 to a quarter
        record.dirty_pages_rate = rate
    durations = [p.duration_s for p in report.passes]
    row = sweep.row_for(one_run(s), report, "r.json")
    assert row["guest_slowdown"] == pytest.approx(1 - (1000 * durations[0] + 250 * durations[1]) /
                                                  (1000 * sum(durations)))
    assert (row["auto_converge"], row["dirty_limit_bytes_per_s"], row["downtime_ramp"], row["xbzrle"]) == (
        "false", 1e6, "10:75s", "true")
    assert sweep.strategies(s) == ["dirty-limit 1.00 MB/s", "downtime ramp 10 steps of 1 min 15 s/GiB",
                                   "xbzrle 64.0 MiB"]
    assert sweep.strategies(scenario_4mib()) == [] and sweep.guest_slowdown(fake_report(scenario_4mib(0.0))) is None


def test_a_post_copy_row_counts_the_stalls_and_the_time_until_the_last_page():
    s = scenario_4mib(rate=1000.0)
    s = dataclasses.replace(s, migration=dataclasses.replace(s.migration, postcopy_after_passes=2))
    report = fake_report(s)
    report.postcopy = Postcopy(missing_pages=256, pages_requested=12, requested_sent=10, pushed_pages=246,
                               requests=9, wire_bytes=256 * PAGE, zero_pages=0, duration_s=0.5, last_page_s=0.49,
                               blocktime_s=0.05, vcpu_blocktime_s=[0.2])
    row = sweep.row_for(one_run(s), report, "r.json")
    precopy_s = sum(p.duration_s for p in report.passes)
    assert row["migration_s"] == pytest.approx(precopy_s + report.blackout.total_s + 0.5)
    assert row["guest_slowdown"] == pytest.approx(1 - (1000 * precopy_s + 1000 * (0.5 - 0.2)) /
                                                  (1000 * (precopy_s + 0.5)))
    assert (row["postcopy_missing_pages"], row["postcopy_pages_requested"], row["postcopy_vcpu_blocktime_s"]) == (
        256, 12, 0.2)
    assert row["strategies"] == "post-copy after 2 passes"
    assert row["measured_factor"] is None and row["geometric_error"] is None  # the models are of pre-copy
    assert "1 runs, 0 measured (1 failed or not comparable)" in sweep.summary_text([row])
