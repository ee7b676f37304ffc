"""bench/throughput.py's targets and exit status, judged on synthetic figures (no migration runs).

Rows are built by the script's own `summarize_case` from records shaped as `run_migration` returns them.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import throughput  # noqa: E402 - bench/throughput.py, after bench/ is on the path

GIB = 1 << 30
CEILINGS = {1: {"runs": [3.0], "median": 3.0}, 2: {"runs": [4.0], "median": 4.0}}
COMPRESSOR = {fill: {"compress_runs": [5.0], "compress_median": 5.0, "decompress_runs": [10.0],
                     "decompress_median": 10.0, "compression_ratio": 2.0} for fill in ("half", "text")}
# case -> guest GB/s of a run that meets every target
PASSING_GB_S = {"raw1": 2.4, "raw2": 2.8, "lz4-half": 4.6, "lz4-text": 4.5, "zero": 9.6, "disk": 1.5, "mem+disk": 1.9}
MANY_CPUS = 8


def record(case, size_bytes=GIB, **figures):
    """A completed run of `case` that meets every target, with `figures` replacing its own."""
    return {"case": case, "size_bytes": size_bytes, "status": "completed", "reason": None,
            "guest_gb_s": PASSING_GB_S[case], "source_cpu_s_per_gib": 0.4, "destination_cpu_s_per_gib": 0.4,
            "peak_x_guest": 2.4, "peak_net_x_guest": 2.1, "setup_ms": 300.0, "downtime_ms": 1.5,
            "disk_sync_ms": 30.0 if case in ("disk", "mem+disk") else None, "passes": 2} | figures


def rows_of(*records):
    """Table rows, one per (case, size), in the order the records come."""
    groups = {}
    for one in records:
        groups.setdefault((one["case"], one["size_bytes"]), []).append(one)
    return [throughput.summarize_case(case, size, group, CEILINGS) for (case, size), group in groups.items()]


def judge(rows, cpus=MANY_CPUS, verify="incremental"):
    targets = throughput.check_targets(rows, CEILINGS, COMPRESSOR, cpus=cpus, verify=verify)
    return targets, {target["target"]: target["verdict"] for target in targets}


def every_case(size_bytes=GIB, **figures):
    return [record(case, size_bytes, **figures) for case in throughput.CASES]


def test_every_target_passing_exits_0():
    targets, verdicts = judge(rows_of(*every_case(), *every_case(4 * GIB)))
    assert verdicts == {
        "every migration completed": "PASS",
        "raw vs wire ceiling, 1.00 GiB: >= 60% of the pyzmq ceiling with as many connections": "PASS",
        "raw vs wire ceiling, 4.00 GiB: >= 60% of the pyzmq ceiling with as many connections": "PASS",
        "raw across sizes, 4.00 GiB: >= 90% of the rate at 1.00 GiB": "PASS",
        "lz4-half vs LZ4 alone, 1.00 GiB: >= 90% of compression on 2 threads": "PASS",
        "lz4-text vs LZ4 alone, 1.00 GiB: >= 90% of compression on 2 threads": "PASS",
        "lz4-half vs LZ4 alone, 4.00 GiB: >= 90% of compression on 2 threads": "PASS",
        "lz4-text vs LZ4 alone, 4.00 GiB: >= 90% of compression on 2 threads": "PASS",
        "zero vs raw1, 1.00 GiB: >= 2x the rate": "PASS",
        "zero vs raw1, 4.00 GiB: >= 2x the rate": "PASS",
        "peak memory beyond the two interpreters: <= 2.2x guest, every case": "PASS",
        "downtime with no pages left: <= 5 ms, every memory case": "PASS",
    }
    assert all(target["why"] for target in targets)
    assert throughput.exit_status(targets) == 0
    assert throughput.verdict_summary(targets) == "12 passed, 0 failed, 0 n/a, 0 unmeasured: exit status 0"


def test_thresholds_are_inclusive():
    raw = record("raw1", guest_gb_s=2.0)
    zero = record("zero", guest_gb_s=4.0, peak_net_x_guest=2.2, downtime_ms=5.0)  # 2x raw1
    lz4 = record("lz4-half", guest_gb_s=4.5)  # 90% of 5.0
    larger = record("raw1", 4 * GIB, guest_gb_s=1.8)  # 60% of the 1-connection ceiling, 90% of the 1 GiB rate
    _, verdicts = judge(rows_of(raw, zero, lz4, larger))
    assert len(verdicts) == 8 and set(verdicts.values()) == {"PASS"}


def test_one_failing_target_exits_1_and_is_named():
    records = every_case()
    records[0]["peak_net_x_guest"] = 2.3  # raw1
    targets, verdicts = judge(rows_of(*records))
    failed = [target for target in targets if target["verdict"] == "FAIL"]
    assert [target["target"] for target in failed] == [
        "peak memory beyond the two interpreters: <= 2.2x guest, every case"]
    assert failed[0]["detail"].startswith("worst 2.30x guest (raw1, 1.00 GiB); raw1/1.00 GiB 2.30, raw2/1.00 GiB 2.10")
    assert throughput.exit_status(targets) == 1
    assert throughput.verdict_summary(targets) == (
        "6 passed, 1 failed, 1 n/a, 0 unmeasured: exit status 1\n"
        "failed: peak memory beyond the two interpreters: <= 2.2x guest, every case")


def test_a_failed_migration_fails_completion_and_leaves_its_figures_unmeasured():
    records = every_case()
    records[1] = {"case": "raw2", "size_bytes": GIB, "status": "error", "reason": "RuntimeError: the receiver died"}
    targets, verdicts = judge(rows_of(*records, record("raw1", 4 * GIB)))
    assert verdicts["every migration completed"] == "FAIL"
    assert targets[0]["detail"] == "1 of 8 runs did not complete: raw2/1.00 GiB error: RuntimeError: the receiver died"
    assert verdicts["raw vs wire ceiling, 1.00 GiB: >= 60% of the pyzmq ceiling with as many connections"] == "PASS"
    assert verdicts["peak memory beyond the two interpreters: <= 2.2x guest, every case"] == "unmeasured"
    assert throughput.exit_status(targets) == 1


def test_a_missing_figure_with_nothing_failed_exits_2():
    targets, verdicts = judge(rows_of(record("raw1", downtime_ms=None), record("zero")))
    assert verdicts["downtime with no pages left: <= 5 ms, every memory case"] == "unmeasured"
    assert set(verdicts.values()) == {"PASS", "n/a", "unmeasured"}
    assert throughput.exit_status(targets) == 2


def test_targets_that_need_more_cpus_are_not_applicable_and_do_not_fail():
    records = every_case()
    records[2]["guest_gb_s"] = 1.6  # lz4-half: 32% of LZ4 alone, as on two cores
    targets, verdicts = judge(rows_of(*records), cpus=2)
    lz4 = [target for target in targets if target["target"].startswith("lz4")]
    assert [(target["verdict"], target["detail"]) for target in lz4] == [
        ("n/a", "needs 6 CPUs, this machine has 2")] * 2
    assert throughput.exit_status(targets) == 0
    assert "FAIL" not in throughput.format_report(CEILINGS, COMPRESSOR, {}, rows_of(*records), targets)


def test_targets_that_this_run_cannot_judge_are_not_applicable():
    _, verdicts = judge(rows_of(record("zero", 512 << 20), record("raw2", 512 << 20)), verify="full")
    assert verdicts == {
        "every migration completed": "PASS",
        "raw vs wire ceiling, 512 MiB: >= 60% of the pyzmq ceiling with as many connections": "PASS",
        "raw across sizes: >= 90% of the rate at the smallest size": "n/a",
        "zero vs raw1, 512 MiB: >= 2x the rate": "n/a",
        "peak memory beyond the two interpreters: <= 2.2x guest, every case": "n/a",
        "downtime with no pages left: <= 5 ms, every memory case": "n/a",
    }


@pytest.mark.parametrize("changes, name", [
    ({"raw1": {"guest_gb_s": 1.7}, "raw2": {"guest_gb_s": 2.3}},  # the better of the two: 57.5%
     "raw vs wire ceiling, 1.00 GiB: >= 60% of the pyzmq ceiling with as many connections"),
    ({"lz4-text": {"guest_gb_s": 4.4}}, "lz4-text vs LZ4 alone, 1.00 GiB: >= 90% of compression on 2 threads"),
    ({"zero": {"guest_gb_s": 4.7}}, "zero vs raw1, 1.00 GiB: >= 2x the rate"),
    ({"raw2": {"downtime_ms": 5.1}}, "downtime with no pages left: <= 5 ms, every memory case"),
])
def test_each_target_fails_past_its_threshold(changes, name):
    records = [one | changes.get(one["case"], {}) for one in every_case()]
    _, verdicts = judge(rows_of(*records))
    assert [n for n, verdict in verdicts.items() if verdict == "FAIL"] == [name]


def test_a_slower_larger_guest_fails_across_sizes():
    _, verdicts = judge(rows_of(record("raw1"), record("raw1", 4 * GIB, guest_gb_s=2.1)))
    assert verdicts["raw across sizes, 4.00 GiB: >= 90% of the rate at 1.00 GiB"] == "FAIL"


def test_main_exits_with_the_targets_status_and_2_when_it_cannot_measure(monkeypatch, capsys):
    def fake_run(args):
        rows = rows_of(record("raw1", peak_net_x_guest=2.5))
        targets = throughput.check_targets(rows, CEILINGS, COMPRESSOR, cpus=2, verify=args.verify)
        return {"ceilings": CEILINGS, "compressor": {}, "storage": {}, "migrations": [], "table": rows,
                "targets": targets}

    monkeypatch.setattr(throughput, "run", fake_run)
    assert throughput.main(["--quick"]) == 1
    out = capsys.readouterr().out
    assert "  FAIL        peak memory beyond the two interpreters: <= 2.2x guest, every case: worst 2.50x guest" in out
    assert "failed: peak memory beyond the two interpreters: <= 2.2x guest, every case" in out

    def broken_run(args):
        raise RuntimeError("the ceiling receiver did not report")

    monkeypatch.setattr(throughput, "run", broken_run)
    assert throughput.main(["--quick"]) == 2
    assert capsys.readouterr().err == "throughput.py: error: the ceiling receiver did not report\n"
