"""Figures: what each panel draws, the PNG files, the command."""

import json

import pytest

from emulator.analysis import plot, sweep
from emulator.analysis.estimate import inputs_from_report, working_set
from emulator.shell import cli
from tests.test_sweep import MIB, PAGE, fake_report, one_run, scenario_4mib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bar_heights(ax, label):
    container = next(c for c in ax.containers if c.get_label() == label)
    return [patch.get_height() for patch in container.patches]


def test_run_figure_shows_each_pass_beside_the_models():
    s = scenario_4mib()
    report = fake_report(s)
    figure = plot.run_figure(report)
    top, middle, bottom = figure.axes[:3]
    # measured: passes of 4 MiB and 2 MiB, then 1 MiB in the blackout
    assert bar_heights(top, "measured") == [4.0, 2.0, 1.0]
    # geometric (lambda 0.5) predicts 4, 2, 1, 0.5 MiB: drawn only as far as the run went (2 passes),
    # and its final pass (after its own pass 3) is not drawn beside the run's
    assert bar_heights(top, "geometric model") == [4.0, 2.0]
    predicted = working_set(inputs_from_report(report))
    expected = [p.bytes / MIB for p in predicted.passes[:2]]
    if len(predicted.passes) <= 2:
        expected.append(predicted.final_bytes / MIB)
    assert bar_heights(top, "working-set model") == pytest.approx(expected, rel=1e-12)
    assert [t.get_text() for t in top.get_xticklabels()][-1] == "final" and top.get_yscale() == "linear"
    assert top.get_ylim()[0] == 0  # from zero: heights compare as they are
    lines = {line.get_label(): line for line in middle.get_lines()}
    assert list(lines["remaining, measured"].get_ydata()) == [2.0, 1.0]
    threshold = lines["threshold (bandwidth x downtime limit)"]
    assert list(threshold.get_xdata()) == [-0.5, 0.5, 0.5, 1.5] and list(threshold.get_ydata()) == [0.4] * 4
    assert list(lines["remaining, geometric model"].get_ydata()) == [2.0, 1.0]  # as far as the run went
    # timeline: a row per source (measured, and each model), the blackout labelled in each
    assert [t.get_text() for t in bottom.get_yticklabels()] == ["working-set model", "geometric model", "measured"]
    notes = [text.get_text() for text in bottom.texts]
    assert "blackout 250 ms" in notes and "blackout 62.5 ms" in notes
    assert "0.50" in figure._suptitle.get_text() and "2 passes (converged)" in figure._suptitle.get_text()


def test_the_timeline_places_passes_after_setup():
    report = fake_report(scenario_4mib())
    bottom = plot.run_figure(report).axes[2]
    # the measured row is the top one: setup [0, 0.2], passes [0.2, 1.2] and [1.2, 1.7], blackout from 1.7
    spans = []
    for collection in bottom.collections:
        for path in collection.get_paths():
            xs = path.vertices[:, 0]
            ys = path.vertices[:, 1]
            if ys.min() >= 1.5:  # row 2 of 3 (0-based from the bottom): measured
                spans.append((round(float(xs.min()), 6), round(float(xs.max()), 6)))
    assert (0.0, 0.2) in spans and (0.2, 1.2) in spans and (1.2, 1.7) in spans and (1.7, 1.95) in spans


def _rows():
    rows = []
    for index, (pattern, rate, passes, final) in enumerate(
            [("uniform", 0.0, (1024,), 0), ("uniform", 512.0, (1024, 512), 256), ("hotset", 512.0, (1024,), 200)], 1):
        s = scenario_4mib(rate, pattern)
        run = one_run(s, index, rate * PAGE / (4 * MIB))
        rows.append(sweep.row_for(run, fake_report(s, passes=passes, final=final), f"reports/{index}.json"))
    return rows


def test_sweep_figure_has_a_panel_per_pattern_with_the_band_and_the_models():
    rows = _rows()
    figure = plot.sweep_figure(rows)
    uniform, hotset = figure.axes
    assert uniform.get_title() == "uniform writer"
    assert hotset.get_title() == "hotset writer (10% of pages get 90% of writes)"
    points = [line for line in uniform.get_lines() if line.get_linestyle() == "None"]
    assert len(points) == 1
    assert list(points[0].get_xdata()) == [0.0, 0.5]
    assert list(points[0].get_ydata()) == pytest.approx([1.25, 1.75], rel=1e-12)  # 1 s or 1.5 s + 0.25 s blackout
    (band,) = [patch for patch in uniform.patches if patch.get_gid() == "rule-of-thumb"]
    assert (band.get_y(), band.get_y() + band.get_height()) == (1.5, 3.0)
    # the curves: the geometric model passes through its hand-computed value at lambda 0.5
    geometric = next(line for line in uniform.get_lines() if line.get_linestyle() == "--")
    xs, ys = list(geometric.get_xdata()), list(geometric.get_ydata())
    assert ys[xs.index(0.5)] == 1.9375 and ys[0] == 1.0
    assert uniform.get_yscale() == "log"


def test_sweep_figure_needs_a_measured_run():
    with pytest.raises(ValueError, match="no measured run"):
        plot.sweep_figure([{"measured_factor": None}])


def test_plot_file_writes_pngs_beside_or_into_a_directory(tmp_path):
    s = scenario_4mib()
    fake_report(s).write(tmp_path / "run.json")
    sweep.write_csv(_rows(), tmp_path / "sweep.csv")
    out = tmp_path / "figures"
    out.mkdir()
    assert plot.plot_file(tmp_path / "run.json") == tmp_path / "run.png"
    assert plot.plot_file(tmp_path / "sweep.csv", out) == out / "sweep.png"
    for path in (tmp_path / "run.png", out / "sweep.png"):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    with pytest.raises(ValueError, match="expected a report"):
        plot.plot_file(tmp_path / "notes.txt")


def test_cli_plot(tmp_path, capsys):
    fake_report(scenario_4mib()).write(tmp_path / "run.json")
    assert cli.main(["plot", str(tmp_path / "run.json")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'run.png'}\n"
    assert (tmp_path / "run.png").read_bytes().startswith(PNG_MAGIC)
    assert cli.main(["plot", str(tmp_path / "none.json")]) == cli.EXIT_USAGE
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path / "run.json"), "--out", str(tmp_path / "new" / "dir")]) == 0
    assert (tmp_path / "new" / "dir" / "run.png").read_bytes().startswith(PNG_MAGIC)  # created, as sweep --out
    capsys.readouterr()
    assert cli.main(["plot", str(tmp_path / "run.json"), "--out", str(tmp_path / "run.json")]) == cli.EXIT_USAGE
    assert "--out: " in capsys.readouterr().err


def _drain_report():
    from emulator.running.drain import DrainOptions, DrainReport, GuestRun

    report = fake_report(scenario_4mib())
    runs = [GuestRun("web", 4 * MIB, "completed", "tcp://127.0.0.1:1", None, 1, 0.0, 0.0, 1.0, 1.1, 1.1, report),
            GuestRun("db", 4 * MIB, "completed", "tcp://127.0.0.1:2", None, 1, 0.0, 0.1, 1.5, 1.6, 1.6, report),
            GuestRun("old", 4 * MIB, "failed", "tcp://127.0.0.1:1", "destination aborted: no", 1, 0.0, 1.1, None,
                     None, 1.4, None)]
    return DrainReport(DrainOptions(("tcp://127.0.0.1:1", "tcp://127.0.0.1:2"), 2, max_bandwidth_bytes_per_s=8e6),
                       runs, 1.6, [(0.5, 7.9e6), (1.0, 8.0e6), (1.5, 6.0e6), (1.6, 2.0e6)])


def test_drain_figure_draws_each_migration_above_the_link():
    report = _drain_report()
    figure = plot.drain_figure(report)
    gantt, link = figure.axes
    assert [tick.get_text() for tick in gantt.get_yticklabels()] == ["old (failed)", "db (completed)",
                                                                     "web (completed)"]
    bars = [collection.get_paths() for collection in gantt.collections]
    assert len(bars) == 5  # two pre-copies and their blackouts, one failed migration
    assert [line.get_ydata()[0] for line in link.get_lines()] == [8.0]  # the shared cap, MB/s
    assert report.peak_concurrency == 2 and report.concurrency[-1] == (1.6, 0)


def test_plot_file_knows_a_drain_report_and_it_reads_back(tmp_path):
    from emulator.running.drain import DrainReport

    report = _drain_report()
    report.write(tmp_path / "drain.json")
    back = DrainReport.from_dict(json.loads((tmp_path / "drain.json").read_text()))
    assert back.to_dict() == report.to_dict()
    assert plot.plot_file(tmp_path / "drain.json") == tmp_path / "drain.png"
    assert (tmp_path / "drain.png").read_bytes().startswith(PNG_MAGIC)


def test_a_sweep_of_strategies_is_drawn_as_what_each_cost(tmp_path):
    import dataclasses

    plain = scenario_4mib(512.0)
    limited = dataclasses.replace(plain, migration=dataclasses.replace(plain.migration, dirty_limit_bytes_per_s=1e6))
    rows = [sweep.row_for(one_run(s, index, 0.5), fake_report(s), f"reports/{index}.json")
            for index, s in enumerate((plain, limited), 1)]
    assert not plot.compares_strategies(_rows()) and plot.compares_strategies(rows)
    figure = plot.strategies_figure(rows)
    assert [ax.get_title() for ax in figure.axes] == ["until all memory is there (s)", "blackout (s)", "on the wire (GiB)",
                                                     "guest slowdown (% of writes lost)"]
    labels = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert labels == ["1. uniform: none", "2. uniform: dirty-limit 1.00 MB/s"]
    assert list(figure.axes[0].get_yticks()) == [1, 0]  # the first run on top
    times = sorted(patch.get_width() for patch in figure.axes[0].patches)
    assert times == pytest.approx([rows[0]["migration_s"]] * 2)
    sweep.write_csv(rows, tmp_path / "sweep.csv")
    assert plot.plot_file(tmp_path / "sweep.csv").name == "sweep.png"
    with pytest.raises(ValueError, match="no completed run"):
        plot.strategies_figure([{"migration_s": None, "strategies": "none"}])
