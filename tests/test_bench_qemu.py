"""bench/qemu.py when a run has no figure: the table still prints, the run's cells read n/a with a
line saying why, and the run is left out of the medians and of the ratios of its repeat.

No QEMU needed: run_qemu and run_precopy are replaced by fakes returning the records they would,
built with the script's own `_figures`, and bench/qemu.py's `run` adds case, size and repeat.
"""

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import qemu  # noqa: E402 - bench/qemu.py, after bench/ is on the path

GIB = 1 << 30
SETUP_MS = 100.0
ARGS = ["--sizes", "1GiB", "--repeats", "3", "--cases", "raw", "--verify", "incremental"]

# variant -> one entry per repeat: (transfer ms, source CPU s, destination CPU s, downtime ms), NO_FIGURES
# for a completed run that reported none, or a string: the run failed with that reason
NO_FIGURES = "no figures"
RUNS = {
    "qemu-1stream": [(1000, 1.0, 2.0, 100.0), (500, 1.5, 2.5, 120.0), (1000, 2.0, 3.0, 110.0)],
    "qemu-multifd-2ch": [(2000, 2.0, 3.0, 300.0), NO_FIGURES, (4000, 4.0, 5.0, 310.0)],  # the raw case's reference
    "precopy-raw-1ch-incremental": [(1000, 1.0, 0.5, 0.5), (500, 3.0, 1.5, 0.7), "RuntimeError: the receiver died"],
    "precopy-raw-2ch-incremental": [(500, 0.5, 0.5, 0.4), (250, 0.7, 0.9, 0.6), (2000, 0.9, 1.3, 0.8)],
}
NO_FIGURES_REASON = "missing total-time, setup-time, downtime, source CPU, destination CPU"


def fake_record(variant, run, size_bytes):
    """The record run_qemu or run_precopy returns for `run`, an entry of RUNS."""
    if run == NO_FIGURES:
        return {"variant": variant, "query_migrate": {"status": "completed"}} | qemu._figures(
            size_bytes, None, None, None, None, None)
    if isinstance(run, str):
        return {"variant": variant, "status": "error", "reason": run}
    transfer_ms, source_cpu_s, destination_cpu_s, downtime_ms = run
    return {"variant": variant} | qemu._figures(size_bytes, SETUP_MS + transfer_ms, SETUP_MS, downtime_ms,
                                                source_cpu_s, destination_cpu_s)


@pytest.fixture
def fake_runs(monkeypatch):
    """run_qemu and run_precopy answer from RUNS, in the order `run` calls them."""
    calls = {}

    def next_record(variant, size_bytes):
        calls[variant] = calls.get(variant, -1) + 1
        return fake_record(variant, RUNS[variant][calls[variant]], size_bytes)

    def guest_ram_file(size_bytes, fill, workdir):
        path = os.path.join(workdir, "guest.ram")
        Path(path).touch()
        return path

    monkeypatch.setattr(qemu, "guest_ram_file", guest_ram_file)
    monkeypatch.setattr(qemu, "run_qemu",
                        lambda variant, size_bytes, ram_path, workdir: next_record(variant, size_bytes))
    monkeypatch.setattr(qemu, "run_precopy",
                        lambda variant, codec, channels, verify, fill, size_bytes: next_record(variant, size_bytes))


def gb_s(transfer_ms):
    """Guest GB/s of a 1 GiB guest migrated in `transfer_ms`."""
    return GIB / (transfer_ms / 1e3) / 1e9


def test_figures_of_missing_totals_are_none_and_say_why():
    assert qemu._figures(GIB, None, None, None, None, 2.0) == {
        "status": "completed", "reason": "missing total-time, setup-time, downtime, source CPU",
        "total_ms": None, "setup_ms": None, "downtime_ms": None, "guest_gb_s": None,
        "source_cpu_s": None, "destination_cpu_s": 2.0,
        "source_cpu_s_per_gib": None, "destination_cpu_s_per_gib": 2.0}
    assert qemu._figures(GIB, 100.0, 100.0, 5.0, 1.0, 2.0)["reason"] == \
        "total-time 100 ms is not after setup-time 100 ms"
    assert qemu._figures(GIB, 1100.0, 100.0, None, 1.0, 2.0)["guest_gb_s"] == gb_s(1000)


def test_rows_leave_a_run_without_figures_out_of_medians_and_ratios(fake_runs):
    records, rows = qemu.run(qemu.parse_args(ARGS))
    assert len(records) == 12
    rows = {row["variant"]: row for row in rows}
    assert list(rows) == list(RUNS)
    approx = lambda value: pytest.approx(value, rel=1e-12)  # noqa: E731

    one_stream = rows["qemu-1stream"]
    assert (one_stream["runs"], one_stream["completed"], one_stream["notes"]) == (3, 3, [])
    assert one_stream["guest_gb_s"] == approx(1.073741824)  # of 1.073741824, 2.147483648, 1.073741824
    assert (one_stream["guest_gb_s_min"], one_stream["guest_gb_s_max"]) == (approx(1.073741824), approx(2.147483648))
    # repeat 1 (1000 / 2000 ms: 2) and repeat 3 (1000 / 4000 ms: 4); repeat 2 has no reference rate
    assert one_stream["vs_reference"] == approx(3.0)
    assert (one_stream["source_cpu_s_per_gib"], one_stream["destination_cpu_s_per_gib"], one_stream["downtime_ms"]) \
        == (approx(1.5), approx(2.5), approx(110.0))

    reference = rows["qemu-multifd-2ch"]  # repeat 2 has no figure: the medians are of repeats 1 and 3
    assert (reference["runs"], reference["completed"]) == (3, 3)
    assert reference["notes"] == [f"run 2, no GB/s, src s/GiB, dst s/GiB, down ms: {NO_FIGURES_REASON}"]
    assert reference["guest_gb_s"] == approx((0.536870912 + 0.268435456) / 2)
    assert (reference["guest_gb_s_min"], reference["guest_gb_s_max"]) == (approx(0.268435456), approx(0.536870912))
    assert reference["vs_reference"] is None
    assert (reference["source_cpu_s_per_gib"], reference["destination_cpu_s_per_gib"], reference["downtime_ms"]) \
        == (approx(3.0), approx(4.0), approx(305.0))

    one_channel = rows["precopy-raw-1ch-incremental"]  # repeat 3 failed
    assert (one_channel["runs"], one_channel["completed"]) == (3, 2)
    assert one_channel["notes"] == ["run 3, error: RuntimeError: the receiver died"]
    assert one_channel["guest_gb_s"] == approx((1.073741824 + 2.147483648) / 2)
    assert one_channel["vs_reference"] == approx(2.0)  # repeat 1 only: 1000 / 2000 ms
    assert (one_channel["source_cpu_s_per_gib"], one_channel["destination_cpu_s_per_gib"], one_channel["downtime_ms"]) \
        == (approx(2.0), approx(1.0), approx(0.6))

    two_channels = rows["precopy-raw-2ch-incremental"]
    assert (two_channels["runs"], two_channels["completed"], two_channels["notes"]) == (3, 3, [])
    assert two_channels["guest_gb_s"] == approx(2.147483648)  # of 2.147483648, 4.294967296, 0.536870912
    assert two_channels["vs_reference"] == approx(3.0)  # of 2000 / 500 ms = 4 and 4000 / 2000 ms = 2
    assert (two_channels["source_cpu_s_per_gib"], two_channels["destination_cpu_s_per_gib"],
            two_channels["downtime_ms"]) == (approx(0.7), approx(0.9), approx(0.6))


def test_table_prints_with_n_a_and_the_exit_status_stays_0(fake_runs, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(qemu.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(qemu, "qemu_version", lambda: "QEMU emulator version 7.2.0")
    assert qemu.main([*ARGS, "--json", str(tmp_path / "qemu.json")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("case ")):]
    assert table[2:10] == [
        "raw    1.00 GiB qemu-1stream                 1.07 (1.07-2.15)          3.00      1.50      2.50   110.0   3/3",
        "raw    1.00 GiB qemu-multifd-2ch             0.40 (0.27-0.54)           ref      3.00      4.00   305.0   3/3",
        f"      run 2, no GB/s, src s/GiB, dst s/GiB, down ms: {NO_FIGURES_REASON}",
        "raw    1.00 GiB precopy-raw-1ch-incremental  1.61 (1.07-2.15)          2.00      2.00      1.00     0.6   2/3",
        "      run 3, error: RuntimeError: the receiver died",
        "raw    1.00 GiB precopy-raw-2ch-incremental  2.15 (0.54-4.29)          3.00      0.70      0.90     0.6   3/3",
        "",
        table[9],
    ]
    assert table[9].startswith("wall time ")
    document = json.loads((tmp_path / "qemu.json").read_text())
    no_figures = [r for r in document["measurements"] if r["variant"] == "qemu-multifd-2ch" and r["repeat"] == 1]
    assert [(r["status"], r["guest_gb_s"], r["reason"]) for r in no_figures] == [("completed", None, NO_FIGURES_REASON)]


def test_a_reference_run_without_gb_s_is_left_out_of_the_ratios():
    """The reported crash (float / None): the reference's total-time is not after its setup-time."""
    runs = RUNS | {"qemu-multifd-2ch": [(2000, 2.0, 3.0, 300.0), (0, 2.0, 3.0, 300.0), (4000, 4.0, 5.0, 310.0)]}
    records = [fake_record(variant, runs[variant][repeat], GIB) | {"case": "raw", "size_bytes": GIB, "repeat": repeat}
               for repeat in range(3) for variant in runs]
    rows = {row["variant"]: row for row in qemu.summarize(records, GIB, "raw", list(RUNS))}
    assert rows["qemu-multifd-2ch"]["notes"] == ["run 2, no GB/s: total-time 100 ms is not after setup-time 100 ms"]
    assert rows["qemu-multifd-2ch"]["source_cpu_s_per_gib"] == pytest.approx(2.0)  # of 2, 2 and 4
    assert rows["precopy-raw-2ch-incremental"]["vs_reference"] == pytest.approx(3.0)
    assert "qemu-multifd-2ch             0.40 (0.27-0.54)" in qemu.format_report(
        {"cpu_model": None, "avx512f": None, "qemu_version": "7.2"}, list(rows.values()))


def test_a_reference_without_any_figure_gives_n_a_cells_and_no_ratios():
    runs = RUNS | {"qemu-multifd-2ch": [NO_FIGURES] * 3}
    records = [fake_record(variant, runs[variant][repeat], GIB) | {"case": "raw", "size_bytes": GIB, "repeat": repeat}
               for repeat in range(3) for variant in runs]
    rows = qemu.summarize(records, GIB, "raw", list(runs))
    assert [row["vs_reference"] for row in rows] == [None, None, None, None]
    table = qemu.format_report({"cpu_model": None, "avx512f": None, "qemu_version": "7.2"}, rows).splitlines()
    assert table[-8:-3] == [
        "raw    1.00 GiB qemu-1stream                 1.07 (1.07-2.15)           n/a      1.50      2.50   110.0   3/3",
        "raw    1.00 GiB qemu-multifd-2ch             n/a                        ref       n/a       n/a     n/a   3/3",
        *(f"      run {n}, no GB/s, src s/GiB, dst s/GiB, down ms: {NO_FIGURES_REASON}" for n in (1, 2, 3)),
    ]
