import dataclasses
import math

import pytest

from emulator.source import policy
from emulator.source.policy import (
    Decision,
    DowntimeRamp,
    PolicyConfig,
    decide,
    downtime_limit_at,
    expected_downtime_s,
    is_stalled,
    next_throttle_pct,
    postcopy_now,
    threshold_bytes,
)


def test_defaults_follow_qemu_and_hyperv():
    config = PolicyConfig()
    assert config.downtime_limit_s == 0.3
    assert config.max_passes == 30
    assert config.max_time_s is None
    assert config.stall_passes == 3
    assert config.on_stall == "switchover"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PolicyConfig().max_passes = 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"downtime_limit_s": 0}, "downtime_limit_s must be a number > 0 and finite, got 0"),
        ({"downtime_limit_s": -0.1}, "downtime_limit_s must be a number > 0 and finite, got -0.1"),
        ({"downtime_limit_s": math.nan}, "downtime_limit_s must be a number > 0 and finite, got nan"),
        ({"downtime_limit_s": math.inf}, "downtime_limit_s must be a number > 0 and finite, got inf"),
        ({"downtime_limit_s": "300ms"}, "downtime_limit_s must be a number > 0 and finite, got '300ms'"),
        ({"max_passes": 0}, "max_passes must be a whole number >= 1, got 0"),
        ({"max_passes": 2.0}, "max_passes must be a whole number >= 1, got 2.0"),
        ({"max_passes": True}, "max_passes must be a whole number >= 1, got True"),
        ({"max_time_s": 0}, "max_time_s must be a number > 0 and finite, got 0 (or none: no limit)"),
        ({"max_time_s": -5.0}, "max_time_s must be a number > 0 and finite, got -5.0"),
        ({"stall_passes": 0}, "stall_passes must be a whole number >= 1, got 0 (or none: never stalled)"),
        ({"on_stall": "pause"}, "on_stall must be one of switchover, abort, got 'pause'"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        PolicyConfig(**kwargs)
    assert message in str(info.value)


def test_a_peers_zero_downtime_limit_is_refused_by_the_same_rule():
    from emulator.vm.scenario import Scenario

    data = Scenario().to_dict()  # as HELLO carries it
    data["migration"]["policy"]["downtime_limit_s"] = 0
    with pytest.raises(ValueError) as info:
        Scenario.from_dict(data)
    assert str(info.value) == "downtime_limit_s must be a number > 0 and finite, got 0"


def test_config_accepts_edges():
    PolicyConfig(downtime_limit_s=1e-9, max_passes=1, max_time_s=0.001, stall_passes=None)
    PolicyConfig(on_stall="abort")


def test_threshold_is_bandwidth_times_downtime():
    assert threshold_bytes(1e9, 0.3) == 3e8
    assert threshold_bytes(125_000_000, 0.5) == 62_500_000
    assert threshold_bytes(0, 0.3) == 0.0
    assert threshold_bytes(1e9, 0) == 0.0
    with pytest.raises(ValueError, match="bandwidth_bytes_per_s must be a finite number >= 0"):
        threshold_bytes(-1, 0.3)
    with pytest.raises(ValueError, match="bandwidth_bytes_per_s"):
        threshold_bytes(math.nan, 0.3)


def test_expected_downtime():
    assert expected_downtime_s(3e8, 1e9) == 0.3
    assert expected_downtime_s(4096, 1024) == 4.0
    assert expected_downtime_s(0, 0) == 0.0
    assert expected_downtime_s(1, 0) == math.inf
    with pytest.raises(ValueError, match="remaining_bytes"):
        expected_downtime_s(-1, 10)


@pytest.mark.parametrize(
    "history, stalled",
    [
        ([100, 50, 60, 70, 80], True),  # minimum 50 set 3 passes ago
        ([100, 50, 60, 70, 49], False),  # new minimum in the last pass
        ([100, 50, 50, 50, 50], True),  # equal is not progress
        ([100, 90, 80, 70], False),  # shrinking every pass
        ([100, 99, 98, 97, 96, 95, 94], False),  # shrinking slowly is still progress
        ([100, 200, 300], False),  # needs more than K passes
        ([100, 200, 300, 400], True),  # growing: pass 0 stays the minimum
        ([100, 50, 80, 40, 90, 95, 99], True),  # oscillating above the minimum 40
        ([100, 50, 80, 40, 90, 95, 39], False),
        ([100, 50, 40, 45, 45], False),  # minimum 40 set only 2 passes ago
        ([100], False),
        ([], False),
    ],
)
def test_is_stalled_k3(history, stalled):
    assert is_stalled(history, 3) is stalled


def test_is_stalled_k1_and_validation():
    assert is_stalled([10, 10], 1) is True
    assert is_stalled([10, 9], 1) is False
    assert is_stalled([10, 20, 9], 1) is False
    with pytest.raises(ValueError, match="stall_passes must be an integer >= 1, got 0"):
        is_stalled([1, 2], 0)


# Bandwidth 1000 B/s and a 0.5 s budget: threshold 500 bytes.
BANDWIDTH = 1000.0
CONFIG = PolicyConfig(downtime_limit_s=0.5, max_passes=5, max_time_s=10.0, stall_passes=3)


def test_continue_while_shrinking():
    decision = decide(CONFIG, [10_000, 5_000, 2_000], BANDWIDTH, elapsed_s=1.0)
    assert decision == Decision("continue", None, 500.0, 0.5)


def test_converged_at_exactly_the_threshold():
    assert decide(CONFIG, [10_000, 500], BANDWIDTH, 1.0) == Decision(
        "switchover", "converged", 500.0, 0.5)
    assert decide(CONFIG, [10_000, 501], BANDWIDTH, 1.0).action == "continue"


def test_converged_beats_everything():
    # 5 passes (max), stalled, past max time, stall action abort: still converged.
    config = dataclasses.replace(CONFIG, on_stall="abort")
    decision = decide(config, [400, 450, 460, 470, 480], BANDWIDTH, elapsed_s=99.0)
    assert decision == Decision("switchover", "converged", 500.0, 0.5)


def test_max_passes_beats_max_time_and_stall():
    config = dataclasses.replace(CONFIG, on_stall="abort")
    history = [1000, 600, 700, 800, 900]  # 5 passes, stalled
    decision = decide(config, history, BANDWIDTH, elapsed_s=99.0)
    assert decision == Decision("switchover", "max-passes", 500.0, 0.5)


def test_max_passes_counts_pass_zero():
    config = PolicyConfig(max_passes=1)
    assert decide(config, [10**9], 1e9, 0.5) == Decision("switchover", "max-passes", 3e8, 0.3)
    config = PolicyConfig(max_passes=2)
    assert decide(config, [10**9], 1e9, 0.5).action == "continue"


def test_max_time_beats_stall():
    config = dataclasses.replace(CONFIG, max_passes=30, on_stall="abort")
    history = [1000, 600, 700, 800, 900]
    assert decide(config, history, BANDWIDTH, elapsed_s=10.0) == Decision(
        "switchover", "max-time", 500.0, 0.5)
    # Just under the limit the stall decides.
    assert decide(config, history, BANDWIDTH, elapsed_s=9.999) == Decision(
        "abort", "stalled", 500.0, 0.5)


def test_stall_switches_over_by_default():
    config = PolicyConfig(downtime_limit_s=0.5, max_passes=30)
    assert decide(config, [1000, 600, 600, 600, 600], BANDWIDTH, 1.0) == Decision(
        "switchover", "stalled", 500.0, 0.5)
    assert decide(config, [1000, 600, 600, 600], BANDWIDTH, 1.0).action == "continue"


def test_stall_detection_can_be_disabled():
    config = PolicyConfig(downtime_limit_s=0.5, max_passes=30, stall_passes=None)
    assert decide(config, [1000] * 20, BANDWIDTH, 1.0).action == "continue"


def test_no_max_time_means_none():
    config = PolicyConfig(downtime_limit_s=0.5, max_passes=30, stall_passes=None)
    assert decide(config, [1000, 900], BANDWIDTH, elapsed_s=1e9).action == "continue"


def test_zero_bandwidth_converges_only_when_clean():
    assert decide(CONFIG, [1000, 0], 0.0, 1.0) == Decision("switchover", "converged", 0.0, 0.5)
    assert decide(CONFIG, [1000, 1], 0.0, 1.0).action == "continue"


def test_decide_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one completed pass"):
        decide(CONFIG, [], BANDWIDTH, 1.0)
    with pytest.raises(ValueError, match=r"remaining_bytes_history\[1\] must be"):
        decide(CONFIG, [10, -1], BANDWIDTH, 1.0)
    with pytest.raises(ValueError, match="elapsed_s must be"):
        decide(CONFIG, [10], BANDWIDTH, -1.0)
    with pytest.raises(ValueError, match="bandwidth_bytes_per_s must be"):
        decide(CONFIG, [10], math.inf, 1.0)


def test_throttle_not_triggered_at_exactly_the_trigger():
    assert next_throttle_pct(0, dirtied_bytes=50, sent_bytes=100) == 0
    assert next_throttle_pct(30, dirtied_bytes=50, sent_bytes=100) == 30
    assert next_throttle_pct(0, dirtied_bytes=0, sent_bytes=0) == 0


def test_throttle_steps_qemu_defaults():
    assert next_throttle_pct(0, dirtied_bytes=51, sent_bytes=100) == 20
    assert next_throttle_pct(20, dirtied_bytes=51, sent_bytes=100) == 30
    assert next_throttle_pct(90, dirtied_bytes=51, sent_bytes=100) == 99
    assert next_throttle_pct(99, dirtied_bytes=51, sent_bytes=100) == 99
    assert next_throttle_pct(0, dirtied_bytes=1, sent_bytes=0) == 20


def test_throttle_sequence_under_sustained_pressure():
    pct, seen = 0, []
    for _ in range(12):
        pct = next_throttle_pct(pct, dirtied_bytes=2**30, sent_bytes=2**30)
        seen.append(pct)
    assert seen == [20, 30, 40, 50, 60, 70, 80, 90, 99, 99, 99, 99]


def test_throttle_custom_parameters():
    kwargs = dict(trigger_pct=10, initial_pct=5, increment_pct=7, max_pct=50)
    assert next_throttle_pct(0, 11, 100, **kwargs) == 5
    assert next_throttle_pct(0, 10, 100, **kwargs) == 0
    assert next_throttle_pct(5, 11, 100, **kwargs) == 12
    assert next_throttle_pct(45, 11, 100, **kwargs) == 50
    assert next_throttle_pct(0, 11, 100, trigger_pct=10, initial_pct=60, max_pct=50) == 50


def test_auto_converge_says_the_share_of_time_taken_from_the_vcpus():
    from types import SimpleNamespace

    from emulator.source.phases import Precopy
    from tests.engines import Messages

    workload = SimpleNamespace(throttle_pct=0, set_throttle=lambda pct: setattr(workload, "throttle_pct", pct))
    source = SimpleNamespace(workload=workload, guest=SimpleNamespace(page_size=4096), progress=Messages())
    Precopy(source)._throttle(SimpleNamespace(remaining_pages=100, bytes_sent=4096 * 100))  # dirtied all it sent
    assert workload.throttle_pct == 20
    assert source.progress.texts == ["auto-converge: vCPUs throttled by 20%"]  # QEMU's cpu-throttle-percentage


def test_throttle_never_falls_when_dirtying_calms():
    assert next_throttle_pct(40, dirtied_bytes=0, sent_bytes=10**9) == 40


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(current_pct=-1), "current_pct"),
        (dict(trigger_pct=0), "trigger_pct"),
        (dict(initial_pct=100), "initial_pct"),
        (dict(increment_pct=0), "increment_pct"),
        (dict(max_pct=100), "max_pct"),
        (dict(current_pct=2.5), "current_pct"),
    ],
)
def test_throttle_validation(kwargs, name):
    args = dict(current_pct=0, dirtied_bytes=1, sent_bytes=1) | kwargs
    with pytest.raises(ValueError, match=f"{name} must be an integer in"):
        next_throttle_pct(**args)
    with pytest.raises(ValueError, match="dirtied_bytes must be a finite number >= 0"):
        next_throttle_pct(0, dirtied_bytes=-1, sent_bytes=1)


# the downtime ramp (nova) ----------------------------------------------------------------------------
GIB = 1 << 30


def test_the_ramp_climbs_novas_steps_by_time_per_gib():
    """nova's defaults: 500 ms in 10 steps of 75 s per GiB; a 2 GiB guest steps every 150 s."""
    config = PolicyConfig(downtime_limit_s=0.5, downtime_ramp=DowntimeRamp(10, 75.0))
    steps = [downtime_limit_at(config, t, 2 * GIB) for t in (0, 149.9, 150, 300, 1499.9, 1500, 10_000)]
    assert steps == pytest.approx([0.05, 0.05, 0.095, 0.14, 0.455, 0.5, 0.5], abs=1e-12)
    assert downtime_limit_at(PolicyConfig(downtime_limit_s=0.5), 0, GIB) == 0.5  # no ramp: the limit at once
    assert downtime_limit_at(dataclasses.replace(config, downtime_ramp=DowntimeRamp(4, 0.0)), 0, GIB) == 0.5


def test_decide_uses_the_limit_in_force_and_says_it():
    config = PolicyConfig(downtime_limit_s=0.5, downtime_ramp=DowntimeRamp(10, 75.0), stall_passes=None)
    early = decide(config, [60e6], 1e9, elapsed_s=10, guest_bytes=GIB)  # 50 ms x 1 GB/s = 50 MB: not yet
    assert (early.action, early.downtime_limit_s, early.threshold_bytes) == ("continue", 0.05, pytest.approx(50e6))
    later = decide(config, [60e6], 1e9, elapsed_s=80, guest_bytes=GIB)  # 95 ms: 95 MB fits
    assert (later.action, later.reason, later.downtime_limit_s) == ("switchover", "converged", pytest.approx(0.095))


def test_a_bad_ramp_is_refused():
    with pytest.raises(ValueError, match="steps must be a whole number from 1 to 1000, got 0"):
        DowntimeRamp(0, 75.0)
    with pytest.raises(ValueError, match="delay_s_per_gib must be"):
        DowntimeRamp(10, -1.0)
    with pytest.raises(ValueError, match="must be a DowntimeRamp or none"):
        PolicyConfig(downtime_ramp="10:75s")
    with pytest.raises(TypeError, match="downtime_ramp must be an object"):
        DowntimeRamp.from_dict([10, 75])


@pytest.mark.parametrize("decision, passes, after, expected", [
    (Decision("switchover", "converged", 1.0, 0.3), 5, 1, None),  # pre-copy finished: no post-copy
    (Decision("switchover", "stalled", 1.0, 0.3), 5, None, "stalled"),
    (Decision("abort", "stalled", 1.0, 0.3), 5, None, "stalled"),  # instead of giving up
    (Decision("switchover", "max-passes", 1.0, 0.3), 30, None, "max-passes"),
    (Decision("switchover", "max-time", 1.0, 0.3), 3, None, "max-time"),
    (Decision("continue", None, 1.0, 0.3), 1, None, None),
    (Decision("continue", None, 1.0, 0.3), 1, 2, None),
    (Decision("continue", None, 1.0, 0.3), 2, 2, "postcopy-after"),
])
def test_post_copy_replaces_every_end_of_pre_copy_but_convergence(decision, passes, after, expected):
    switched = postcopy_now(decision, passes, after)
    if expected is None:
        assert switched is None
    else:
        assert switched == Decision("postcopy", expected, 1.0, 0.3)


def test_a_pass_0_whose_cap_was_changed_during_it_blames_no_cpu():
    from types import SimpleNamespace

    from emulator.analysis.report import ParameterChange, PassRecord
    from emulator.source.phases import Precopy
    from emulator.source.policy import Decision
    from tests.engines import Messages

    # 74.6 MB/s against a cap of 200 MB/s set in the middle of the pass: the pass ran under 20 MB/s until then
    record = PassRecord(pass_no=0, pages_sent=1000, bytes_sent=4_096_000, wire_bytes=4_096_000, zero_pages=0,
                        duration_s=4_096_000 / 74.6e6, bandwidth_bytes_per_s=74.6e6, remaining_pages=0,
                        dirty_pages_rate=0.0, threshold_bytes=0.0, throttle_pct=0)
    for changes, blamed in (([], True), ([ParameterChange(0.1, 0, "max_bandwidth_bytes_per_s", 200e6)], False)):
        source = SimpleNamespace(guest=SimpleNamespace(page_size=4096, n_pages=1000), progress=Messages(),
                                 limiter=SimpleNamespace(rate_bytes_per_s=200e6),
                                 record=SimpleNamespace(parameter_changes=changes))
        Precopy(source)._tell_pass(record, Decision("continue", None, 0.0, 0.3))
        assert any("this machine's CPU, not the cap" in text for text in source.progress.texts) == blamed


@pytest.mark.parametrize("send_s, last_pass_bytes, final_bytes, expected_s", [
    (0.1, 50e6, 10e6, 0.5 + 0.1),  # the last pass's write-back outlasts the blackout's send: it sets the pace
    (0.8, 50e6, 10e6, 0.8 + 0.1),  # it finishes while the blackout's blocks cross
    (0.2, 0, 0, 0.2),  # nothing to write: the send alone
])
def test_the_write_through_at_the_handover_follows_the_send_and_adds_the_blackouts_blocks(
        send_s, last_pass_bytes, final_bytes, expected_s):
    assert policy.with_write_through_s(send_s, last_pass_bytes, final_bytes, 100e6) == pytest.approx(expected_s)
