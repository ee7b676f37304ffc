"""The drain forecast: K migrations sharing one link, against the single-migration working-set model."""

import json
import math

import pytest

from emulator.analysis.drain_estimate import best, forecast
from emulator.analysis.estimate import DirtyBehaviour, EstimateInputs, working_set
from emulator.source.policy import PolicyConfig

MIB = 1 << 20
LINK = 50e6


def guest(rate=0.0, memory=32 * MIB):
    return EstimateInputs(memory, LINK, DirtyBehaviour(rate, "hotset"), policy=PolicyConfig(downtime_limit_s=0.3))


def test_one_at_a_time_is_the_single_migrations_one_after_another():
    guests = [guest(500), guest(2000, 16 * MIB), guest(0)]
    alone = [working_set(g) for g in guests]
    drained = forecast(guests, LINK, 1, setup_s=0.1)
    assert math.isclose(drained.total_s, sum(p.total_s for p in alone) + 3 * 0.1, rel_tol=1e-9)
    for predicted, single in zip(drained.guests, alone):
        assert predicted.passes == len(single.passes)
        assert math.isclose(predicted.blackout_s, single.blackout_s, rel_tol=1e-9)


def test_a_link_bound_drain_grows_with_the_guests_and_k_does_not_shorten_it():
    idle = [guest() for _ in range(8)]
    times = {(n, k): forecast(idle[:n], LINK, k).total_s for n in (2, 4, 8) for k in (1, 2, 4)}
    for k in (1, 2, 4):
        assert times[4, k] == pytest.approx(2 * times[2, k]) and times[8, k] == pytest.approx(4 * times[2, k])
    for n in (2, 4, 8):  # idle guests: the link carries the same bytes whatever K
        assert times[n, 1] == pytest.approx(times[n, 2]) == pytest.approx(times[n, 4])
    assert times[8, 1] == pytest.approx(8 * 32 * MIB / LINK)


def test_dirtying_guests_get_longer_blackouts_with_a_higher_k():
    dirtying = [guest(500) for _ in range(8)]
    forecasts, fastest, calmest = best(dirtying, LINK, setup_s=0.1, most=4)
    blackouts = [f.worst_blackout_s for f in forecasts]
    assert blackouts == sorted(blackouts) and blackouts[-1] > 3 * blackouts[0]
    assert calmest == 1 and fastest in (1, 2, 3, 4)
    assert [f.max_concurrent for f in forecasts] == [1, 2, 3, 4]


def test_setup_holds_a_slot_but_not_the_link():
    two = [guest(), guest()]
    assert forecast(two, LINK, 2, setup_s=0.5).total_s == pytest.approx(0.5 + 2 * 32 * MIB / LINK)
    with pytest.raises(ValueError, match="one guest or more"):
        forecast([], LINK, 1)
    with pytest.raises(ValueError, match="finite rate"):
        forecast(two, math.inf, 1)


def test_the_estimate_command_forecasts_a_drain_for_every_k(capsys):
    from emulator.shell.cli import main

    argv = ["estimate", "--guests", "4", "--memory", "32MiB", "--bandwidth", "50MB/s", "--dirty-rate", "500",
            "--max-concurrent", "2", "--setup-time", "100ms"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "drain of 4 guests of 32.0 MiB sharing 50.0 MB/s (setup 100 ms each)"
    assert [line.split()[0] for line in out[2:6]] == ["1", "2", "3", "4"] and out[3].endswith("<- --max-concurrent")
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    cli_guest = EstimateInputs(32 * MIB, LINK, DirtyBehaviour(500, "hotset"), device_state_bytes=256 << 10)
    expected = forecast([cli_guest] * 4, LINK, 2, setup_s=0.1)
    assert data["forecasts"][1]["total_s"] == pytest.approx(expected.total_s)
    assert data["shortest_worst_blackout_k"] == 1
    assert main(["estimate", "--guests", "0"]) == 2
