"""Figures: what each panel draws, the PNG files, the command."""

import dataclasses
import json

import pytest

from emulator.analysis import plot, sweep
from emulator.analysis.estimate import inputs_from_report, working_set
from emulator.shell import cli
from emulator.source.policy import PolicyConfig
from tests.test_sweep import MIB, PAGE, fake_report, one_run, scenario_4mib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bar_heights(ax, label):
    container = next(c for c in ax.containers if c.get_label() == label)
    return [patch.get_height() for patch in container.patches]


def bar_slots(ax, label):
    """The pass slot of each bar of a series (its group's x, the final slot last)."""
    container = next(c for c in ax.containers if c.get_label() == label)
    return [round(patch.get_x() + patch.get_width() / 2) for patch in container.patches]


def zero_labels(ax):
    """The slots where a "0" says a series sent nothing."""
    return sorted(round(text.get_position()[0]) for text in ax.texts if text.get_text() == "0")


def with_policy(scenario, **policy):
    return dataclasses.replace(scenario, migration=dataclasses.replace(scenario.migration,
                                                                       policy=PolicyConfig(**policy)))


def test_run_figure_shows_each_pass_beside_the_models():
    s = scenario_4mib()
    report = fake_report(s)
    figure = plot.run_figure(report)
    top, middle, bottom = figure.axes[:3]
    # measured: passes of 4 MiB and 2 MiB, then 1 MiB in the blackout
    assert bar_heights(top, "measured") == [4.0, 2.0, 1.0]
    # geometric (lambda 0.5) predicts passes of 4, 2, 1, 0.5 MiB, then 0.25 MiB in its blackout:
    # all drawn, though the run itself stopped after 2 passes
    assert bar_heights(top, "geometric model") == [4.0, 2.0, 1.0, 0.5, 0.25]
    assert bar_slots(top, "geometric model") == [0, 1, 2, 3, 4]
    assert bar_slots(top, "measured") == [0, 1, 4]  # the run's final in the common final slot
    predicted = working_set(inputs_from_report(report))
    expected = [p.bytes / MIB for p in predicted.passes] + [predicted.final_bytes / MIB]
    assert bar_heights(top, "working-set model") == pytest.approx(expected, rel=1e-12)
    assert [t.get_text() for t in top.get_xticklabels()] == ["0", "1", "2", "3", "final"]
    assert top.get_xlim() == (-0.5, 4.5) and top.get_yscale() == "linear"
    assert top.get_ylim()[0] == 0  # from zero: heights compare as they are
    assert zero_labels(top) == []  # every value drawn is above zero, and no missing one reads as 0
    lines = {line.get_label(): line for line in middle.get_lines()}
    assert list(lines["remaining, measured"].get_ydata()) == [2.0, 1.0]
    threshold = lines["threshold (bandwidth x downtime limit)"]
    assert list(threshold.get_xdata()) == [-0.5, 0.5, 0.5, 1.5] and list(threshold.get_ydata()) == [0.4] * 4
    assert list(lines["remaining, geometric model"].get_ydata()) == [2.0, 1.0, 0.5, 0.25]  # each predicted pass
    assert middle.get_xlim() == (-0.5, 3.5) and [t.get_text() for t in middle.get_xticklabels()] == ["0", "1", "2", "3"]
    # timeline: a row per source (measured, and each model), the blackout labelled in each
    assert [t.get_text() for t in bottom.get_yticklabels()] == ["working-set model", "geometric model", "measured"]
    notes = [text.get_text() for text in bottom.texts]
    assert "blackout 250 ms" in notes and "blackout 62.5 ms" in notes
    assert "0.50" in figure._suptitle.get_text() and "2 passes (converged)" in figure._suptitle.get_text()



def test_a_model_longer_than_the_run_is_drawn_to_its_end_and_an_aborting_one_has_no_final():
    # lambda 2: the geometric model stalls after 4 passes and aborts (no blackout), the working-set
    # model shrinks slowly to the 30-pass cap and switches over; the run stopped after 3 passes
    s = with_policy(scenario_4mib(2048.0), downtime_limit_s=0.1, on_stall="abort")
    report = fake_report(s, passes=(1024, 1000, 990), final=980)
    top, middle = plot.run_figure(report).axes[:2]
    assert bar_heights(top, "measured") == pytest.approx([4.0, 1000 / 256, 990 / 256, 980 / 256], rel=1e-12)
    assert bar_slots(top, "measured") == [0, 1, 2, 30]
    predicted = working_set(inputs_from_report(report))
    assert len(predicted.passes) == 30 and not predicted.aborted
    assert bar_heights(top, "working-set model") == pytest.approx(
        [p.bytes / MIB for p in predicted.passes] + [predicted.final_bytes / MIB], rel=1e-12)
    assert bar_slots(top, "working-set model") == list(range(31))
    # the aborting model: its 4 passes, no final bar and no "0" in its place, and the legend says why
    assert bar_heights(top, "geometric model (aborts: no final pass)") == [4.0] * 4
    assert bar_slots(top, "geometric model (aborts: no final pass)") == [0, 1, 2, 3]
    assert zero_labels(top) == []
    assert top.get_xlim() == (-0.5, 30.5) and top.get_xticklabels()[-1].get_text() == "final"
    lines = {line.get_label(): line for line in middle.get_lines()}
    assert list(lines["remaining, working-set model"].get_xdata()) == list(range(30))
    assert middle.get_xlim() == (-0.5, 29.5)


def test_only_a_real_zero_is_labelled_zero():
    # an idle guest: one pass, nothing dirty after it, so each series really sends 0 bytes in its final pass
    report = fake_report(scenario_4mib(0.0), passes=(1024,), final=0)
    top = plot.run_figure(report).axes[0]
    assert zero_labels(top) == [1, 1, 1]
    for label in ("measured", "geometric model", "working-set model"):
        assert bar_heights(top, label) == [4.0] and bar_slots(top, label) == [0]


def test_a_model_that_never_converges_is_drawn_up_to_the_readable_cap():
    # no stall rule and 100 passes allowed: both models run to pass 99; the figure draws passes 0-39
    s = with_policy(scenario_4mib(2048.0), downtime_limit_s=0.1, max_passes=100, stall_passes=None)
    report = fake_report(s, passes=(1024, 1000, 990), final=980)
    top, middle = plot.run_figure(report).axes[:2]
    assert plot.MODEL_PASSES_DRAWN == 40
    label = "geometric model (passes 40-99 not drawn)"
    assert bar_heights(top, label) == [4.0] * 41 and bar_slots(top, label) == list(range(41))
    assert bar_slots(top, "working-set model (passes 40-99 not drawn)") == list(range(41))
    assert bar_slots(top, "measured") == [0, 1, 2, 40]
    assert top.get_xlim() == (-0.5, 40.5)
    lines = {line.get_label(): line for line in middle.get_lines()}
    assert len(lines["remaining, geometric model (passes 40-99 not drawn)"].get_xdata()) == 40
    assert middle.get_xlim() == (-0.5, 39.5)

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
