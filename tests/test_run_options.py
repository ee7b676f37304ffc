"""The run-option table: each option read, checked and defaulted once, for the CLI, the sweep and HELLO alike."""

import argparse
import dataclasses

import pytest

from emulator.analysis import sweep
from emulator.shell import cli, run_options
from emulator.shell.run_options import OPTIONS, scenario_from
from emulator.vm.disk import DiskSpec
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import GuestConfig, MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec

DEFAULT = Scenario()


def _field_value(scenario, option):
    part = scenario.migration.policy if option.part == "policy" else getattr(scenario, option.part)
    return getattr(DiskSpec() if part is None else part, option.field)  # no disk: as the default disk


@pytest.mark.parametrize("key", list(OPTIONS))
def test_each_example_sets_its_field_and_nothing_else(key):
    option = OPTIONS[key]
    # the disk's other options, and a mirror, need a disk: the example is then a change to a guest with one
    with_disk = {"disk": OPTIONS["disk"].value("1GiB")} if key == "storage" or (option.part == "disk"
                                                                                and key != "disk") else {}
    scenario = scenario_from({**with_disk, key: option.value(option.example)})
    default = scenario_from(with_disk)
    if key == "dirty_rate":
        assert scenario.workload.rate_pages_per_s == 20000
    else:
        assert _field_value(scenario, option) == option.read(option.example)
    assert _field_value(scenario, option) != _field_value(default, option)  # an example shows a change
    others = [other for other in OPTIONS.values() if other.field != option.field and other.key != "batch_pages"
              and not (key in ("postcopy_after", "postcopy_preempt") and other.key == "postcopy")]  # they are post-copy
    if key not in ("page_size", "batch_pages"):  # the page size moves the default message size (tested below)
        others.append(OPTIONS["batch_pages"])
    assert [other.key for other in others if _field_value(scenario, other) != _field_value(default, other)] == []


def test_no_values_is_the_default_scenario():
    assert scenario_from({}) == DEFAULT


def test_the_seed_seeds_guest_and_writers_and_the_page_size_moves_the_message_size():
    scenario = scenario_from({"seed": 7, "page_size": 2 << 20})
    assert (scenario.guest.seed, scenario.workload.seed) == (7, 7)
    assert scenario.migration.batch_pages == 2  # 4 MiB worth
    assert scenario_from({"page_size": 2 << 20, "batch_pages": 8}).migration.batch_pages == 8


def test_a_byte_dirty_rate_is_divided_by_the_page_size():
    assert scenario_from({"dirty_rate": "100MiB/s", "page_size": 8192}).workload.rate_pages_per_s == 12800
    assert scenario_from({"dirty_rate": "max"}).workload.unpaced


@pytest.mark.parametrize("key, bad, field_error", [
    ("channels", "65", MigrationOptions.RULES["channels"]),
    ("vcpus", "0", WorkloadSpec.RULES["vcpus"]),
    ("hot_fraction", "1.5", WorkloadSpec.RULES["hot_fraction"]),
    ("device_state", "65MiB", MigrationOptions.RULES["device_state_bytes"]),
    ("page_size", "3000", GuestSpec.RULES["page_size"]),
    ("disk", "0", DiskSpec.RULES["size_bytes"]),
    ("disk_block", "3000", DiskSpec.RULES["block_size"]),
    ("xbzrle_cache", "1KiB", MigrationOptions.RULES["xbzrle_cache_bytes"]),
])
def test_the_command_line_refuses_with_the_dataclass_rule(key, bad, field_error, capsys):
    option = OPTIONS[key]
    with pytest.raises(ValueError) as rule_error:
        field_error(option.read(bad))
    assert cli.main(["migrate", option.flag, bad, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"precopy: error: {option.flag}: {rule_error.value} (example: {option.flag} {option.example})\n"


def test_a_hello_is_held_to_the_same_rule():
    """What a peer sends builds the dataclasses, whose rules the command line applies."""
    data = DEFAULT.to_dict()
    data["migration"]["channels"] = 65
    with pytest.raises(ValueError, match="channels must be a whole number from 1 to 64, got 65"):
        Scenario.from_dict(data)


def test_cross_field_refusals_name_the_options():
    with pytest.raises(ValueError, match="^--memory: memory size must be a positive multiple of the page size"):
        scenario_from({"memory": 5000})
    with pytest.raises(ValueError, match="^--write-size/--page-size: write_size must be at most the page size"):
        scenario_from({"write_size": 8192})


def test_help_shows_each_default_of_the_default_scenario(capsys):
    assert cli.main(["migrate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in OPTIONS.values():
        assert f"(default {' '.join(option.default_shown().replace('%%', '%').split())})" in text, option.key


def test_an_option_not_given_is_absent_so_none_can_be_given():
    parser = argparse.ArgumentParser()
    run_options.add_options(parser, ["max_bandwidth", "max_time", "stall_passes"])
    assert run_options.given(parser.parse_args([])) == {}
    given = run_options.given(parser.parse_args(["--max-bandwidth", "unlimited", "--max-time", "none",
                                                 "--stall-passes", "0"]))
    assert given == {"max_bandwidth": None, "max_time": None, "stall_passes": None}


def test_every_option_is_a_sweep_axis_read_as_a_grid_value(capsys):
    assert cli.main(["sweep", "--out", "x", "--memory", "8MiB", "--auto-converge", "true,false",
                     "--verify", "full", "--channels", "1,2", "--dry-run"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    runs = sweep.expand([{"memory": "8MiB", "auto_converge": ["true", False], "channels": [1, "2"]}])
    assert [(run.scenario.migration.auto_converge, run.scenario.migration.channels) for run in runs] == [
        (True, 1), (True, 2), (False, 1), (False, 2)]


def test_a_bad_axis_item_is_refused_naming_the_option(capsys):
    assert cli.main(["sweep", "--out", "x", "--channels", "1,65", "--dry-run"]) == 2
    assert "--channels: must be a whole number from 1 to 64, got 65 (example: --channels 4)" in capsys.readouterr().err


def test_each_option_owns_a_field_with_a_rule():
    parts = {"guest": GuestSpec, "workload": WorkloadSpec, "migration": MigrationOptions,
             "policy": type(DEFAULT.migration.policy), "config": GuestConfig, "disk": DiskSpec}
    for option in OPTIONS.values():
        cls = parts[option.part]
        assert option.field in {field.name for field in dataclasses.fields(cls)}, option.key
        assert option.field in cls.RULES, option.key


@pytest.mark.parametrize("argv, says", [
    (["--downtime-ramp", "0:75s"], "--downtime-ramp: steps must be a whole number from 1 to 1000, got 0"),
    (["--downtime-ramp", "10"], "--downtime-ramp: expected STEPS:DELAY_PER_GIB such as 10:75s"),
    (["--downtime-ramp", "10:-1s"], "--downtime-ramp: "),
    (["--dirty-limit", "0"], "--dirty-limit: "),
    (["--disk-write-rate", "fast", "--disk", "1MiB"], "--disk-write-rate: "),
    (["--storage", "copy"], "--storage: must be one of shared, mirror, got 'copy'"),
])
def test_bad_strategy_and_disk_values_are_refused_naming_the_option(argv, says, capsys):
    assert cli.main(["migrate", "--memory", "1MiB", "--quiet", *argv]) == 2
    assert says in capsys.readouterr().err
