"""Migration policy: when to switch over, when to give up, how hard to throttle.

Pure functions over numbers the sender measures (no I/O, no clock), in QEMU's vocabulary:

- threshold: QEMU's ``threshold_size = bandwidth x downtime_limit``, the dirty bytes that
  can cross within the downtime budget at the measured bandwidth.
- switchover: pause the guest and send the rest (the blackout); abort: give up, the guest
  keeps running on the source.

``decide`` checks, in this order, after each completed pass:

1. converged: remaining dirty bytes <= threshold -> switchover;
2. max-passes: passes completed >= ``max_passes`` -> switchover (Hyper-V-like cap);
3. max-time: elapsed >= ``max_time_s`` -> switchover;
4. stalled: no pass among the last ``stall_passes`` reached a new minimum of remaining
   bytes -> ``on_stall`` (switchover, as Hyper-V forces the final copy, or abort).

With post-copy allowed, ``postcopy_now`` turns a decision into post-copy: any end of
pre-copy but convergence (2-4: pre-copy cannot finish within the budget), or, with
``after_passes``, once that many passes have completed without converging (QEMU's
migrate-start-postcopy, issued by the user or an orchestrator).

The downtime ramp (OpenStack nova's live_migration_downtime, _steps and _delay): with a
ramp of N steps of T seconds per GiB of guest (memory and any mirrored disk), the limit in
force t seconds into pre-copy is ``D / N + (D - D / N) / N x i`` with ``i = min(N,
floor(t / (T x GiB)))``: D / N at first, D after N steps. It rises with time, not with
progress, as nova's does; the threshold above uses the limit in force.

"Stalled", exactly: with ``K = stall_passes`` and history ``r[0..n-1]`` (remaining bytes at
the end of each pass), the run is stalled when ``n > K`` and, for each of the last ``K``
passes ``i``, ``r[i] >= min(r[0..i-1])``. Equivalently ``min(r[n-K:]) >= min(r[:n-K])``:
the smallest remainder seen so far was reached more than ``K`` passes ago (equal does not
count as progress). A dirty rate above the bandwidth stalls; a slowly shrinking set does
not, however slowly it shrinks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

from emulator.core import fields

__all__ = [
    "ACTIONS",
    "Decision",
    "PolicyConfig",
    "REASONS",
    "DowntimeRamp",
    "decide",
    "downtime_limit_at",
    "expected_downtime_s",
    "is_stalled",
    "needs_slowing",
    "next_throttle_pct",
    "postcopy_now",
    "threshold_bytes",
    "with_write_through_s",
]

Action = Literal["continue", "switchover", "abort", "postcopy"]
Reason = Literal["converged", "max-passes", "max-time", "stalled", "postcopy-after"]
ACTIONS: tuple[str, ...] = ("continue", "switchover", "abort", "postcopy")
REASONS: tuple[str, ...] = ("converged", "max-passes", "max-time", "stalled", "postcopy-after")
_STALL_ACTIONS = ("switchover", "abort")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(name: str, value: object, *, positive: bool = False) -> float:
    """Return value as a float if it is a finite number >= 0 (> 0 if positive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DowntimeRamp:
    """nova's downtime ramp: the limit grows in `steps` steps, each `delay_s_per_gib` seconds per GiB of guest
    long (nova: 10 steps of 75 s per GiB, to 500 ms)."""

    steps: int = 10
    delay_s_per_gib: float = 75.0

    RULES: ClassVar[dict] = {"steps": fields.whole(1, 1000), "delay_s_per_gib": fields.real(0, below=True)}

    def __post_init__(self) -> None:
        fields.check(self, self.RULES)

    @classmethod
    def from_dict(cls, data: object) -> DowntimeRamp | None:
        """From `asdict` output (None: no ramp); TypeError if not an object of its keys."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise TypeError(f"downtime_ramp must be an object of steps and delay_s_per_gib, got {data!r:.80}")
        try:
            return cls(**data)
        except ValueError as error:  # a peer's value: say whose field it is
            raise ValueError(f"downtime_ramp.{error}") from None


def _ramp_rule(value: object) -> object:
    if value is not None and not isinstance(value, DowntimeRamp):
        raise ValueError(f"must be a DowntimeRamp or none, got {value!r}")
    return value


@dataclass(frozen=True)
class PolicyConfig:
    """When pre-copy stops.

    downtime_limit_s: the blackout budget in seconds, > 0 (QEMU's downtime-limit, 300 ms).
    max_passes: switch over once this many passes (pass 0 included) have completed.
    max_time_s: switch over once pre-copy has run this long (seconds); None = no limit.
    stall_passes: K passes without a new minimum of remaining bytes = stalled; None = never.
    on_stall: "switchover" (force the final copy) or "abort" (keep the guest on the source).
    downtime_ramp: a DowntimeRamp up to downtime_limit_s (see the module doc), or None: the
        limit holds from the start.
    """

    downtime_limit_s: float = 0.3
    max_passes: int = 30
    max_time_s: float | None = None
    stall_passes: int | None = 3
    on_stall: Literal["switchover", "abort"] = "switchover"
    downtime_ramp: DowntimeRamp | None = None

    RULES: ClassVar[dict] = {
        # Zero is refused: with no downtime budget only an empty dirty set would converge, so pre-copy
        # would run to a cap and every blackout be past the limit.
        "downtime_limit_s": fields.real(0, above=True, below=True),
        "max_passes": fields.whole(1),
        "max_time_s": fields.optional(fields.real(0, above=True, below=True), "no limit"),
        "stall_passes": fields.optional(fields.whole(1), "never stalled"),
        "on_stall": fields.one_of(_STALL_ACTIONS),
        "downtime_ramp": _ramp_rule,
    }

    def __post_init__(self) -> None:
        fields.check(self, self.RULES)


@dataclass(frozen=True)
class Decision:
    """What to do after a pass: action, why (None when continuing), the threshold used and the downtime
    limit it was made of."""

    action: Action
    reason: Reason | None
    threshold_bytes: float
    downtime_limit_s: float


def downtime_limit_at(config: PolicyConfig, elapsed_s: float, guest_bytes: float) -> float:
    """The downtime limit in force `elapsed_s` into pre-copy, for a guest of `guest_bytes` (module doc)."""
    ramp = config.downtime_ramp
    if ramp is None:
        return config.downtime_limit_s
    step_s = ramp.delay_s_per_gib * guest_bytes / (1 << 30)
    step = ramp.steps if step_s == 0 else min(ramp.steps, math.floor(elapsed_s / step_s))
    first = config.downtime_limit_s / ramp.steps
    return first + (config.downtime_limit_s - first) / ramp.steps * step


def threshold_bytes(bandwidth_bytes_per_s: float, downtime_limit_s: float) -> float:
    """Dirty bytes that fit the downtime budget: bandwidth (B/s) x downtime limit (s)."""
    bandwidth = _check_number("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    downtime = _check_number("downtime_limit_s", downtime_limit_s)
    return bandwidth * downtime


def expected_downtime_s(remaining_bytes: float, bandwidth_bytes_per_s: float) -> float:
    """Seconds to send ``remaining_bytes`` at the bandwidth; inf if bandwidth is 0."""
    remaining = _check_number("remaining_bytes", remaining_bytes)
    bandwidth = _check_number("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    if remaining == 0:
        return 0.0
    if bandwidth == 0:
        return math.inf
    return remaining / bandwidth


def with_write_through_s(send_s: float, last_pass_bytes: float, final_bytes: float,
                         write_back_bytes_per_s: float) -> float:
    """The blackout's seconds with a mirrored disk's write-through at the handover: the destination writes the
    last pass's blocks back while the blackout's cross (send_s), then the blackout's blocks."""
    return max(send_s, last_pass_bytes / write_back_bytes_per_s) + final_bytes / write_back_bytes_per_s


def is_stalled(remaining_bytes_history: Sequence[int], stall_passes: int) -> bool:
    """True when none of the last ``stall_passes`` passes set a new minimum (module doc)."""
    if not _is_int(stall_passes) or stall_passes < 1:
        raise ValueError(f"stall_passes must be an integer >= 1, got {stall_passes!r}")
    history = list(remaining_bytes_history)
    if len(history) <= stall_passes:
        return False
    return min(history[-stall_passes:]) >= min(history[:-stall_passes])


def decide(
    config: PolicyConfig,
    remaining_bytes_history: Sequence[int],
    bandwidth_bytes_per_s: float,
    elapsed_s: float,
    guest_bytes: float = 0.0,
) -> Decision:
    """Decide what follows the pass that just completed.

    config: the policy.
    remaining_bytes_history: dirty bytes left at the end of each completed pass, in order
        (at least one: call after pass 0).
    bandwidth_bytes_per_s: measured bandwidth (B/s), typically of the last pass.
    elapsed_s: seconds since pre-copy started.
    guest_bytes: the guest's memory and mirrored disk, which set a downtime ramp's pace.
    """
    history = list(remaining_bytes_history)
    if not history:
        raise ValueError("decide needs the remaining bytes of at least one completed pass")
    for index, remaining in enumerate(history):
        _check_number(f"remaining_bytes_history[{index}]", remaining)
    elapsed = _check_number("elapsed_s", elapsed_s)
    limit = downtime_limit_at(config, elapsed, _check_number("guest_bytes", guest_bytes))
    threshold = threshold_bytes(bandwidth_bytes_per_s, limit)

    def decision(action: Action, reason: Reason | None) -> Decision:
        return Decision(action, reason, threshold, limit)

    if history[-1] <= threshold:
        return decision("switchover", "converged")
    if len(history) >= config.max_passes:
        return decision("switchover", "max-passes")
    if config.max_time_s is not None and elapsed >= config.max_time_s:
        return decision("switchover", "max-time")
    if config.stall_passes is not None and is_stalled(history, config.stall_passes):
        return decision(config.on_stall, "stalled")
    return decision("continue", None)


def postcopy_now(decision: Decision, passes_completed: int, after_passes: int | None = None) -> Decision | None:
    """The post-copy Decision that replaces `decision` (module doc), or None: `decision` stands."""
    if decision.reason == "converged":
        return None
    if decision.action != "continue":
        return Decision("postcopy", decision.reason, decision.threshold_bytes, decision.downtime_limit_s)
    if after_passes is not None and passes_completed >= after_passes:
        return Decision("postcopy", "postcopy-after", decision.threshold_bytes, decision.downtime_limit_s)
    return None


def _check_pct(name: str, value: object, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def needs_slowing(dirtied_bytes: float, sent_bytes: float, trigger_pct: int = 50) -> bool:
    """True when a pass dirtied more than ``trigger_pct`` % of what it sent (QEMU's
    throttle-trigger-threshold): auto-converge steps its throttle, dirty-limit starts."""
    _check_pct("trigger_pct", trigger_pct, 1, 100)
    _check_number("dirtied_bytes", dirtied_bytes)
    _check_number("sent_bytes", sent_bytes)
    return dirtied_bytes * 100 > sent_bytes * trigger_pct  # without the division: exact for integers


def next_throttle_pct(
    current_pct: int,
    dirtied_bytes: int,
    sent_bytes: int,
    trigger_pct: int = 50,
    initial_pct: int = 20,
    increment_pct: int = 10,
    max_pct: int = 99,
) -> int:
    """Auto-converge: the writers' throttle (% of time paused) for the next pass.

    When the bytes dirtied during a pass exceed ``trigger_pct`` % of the bytes sent in it,
    throttling starts at ``initial_pct`` and then rises by ``increment_pct`` per trigger,
    capped at ``max_pct`` (QEMU's cpu-throttle-initial/-increment, throttle-trigger-
    threshold, max-cpu-throttle). It never falls during a migration, as in QEMU.
    Unlike QEMU, every triggering pass steps the throttle; QEMU steps on every second
    high period (``dirty_rate_high_cnt >= 2``), which a caller can emulate by calling
    this on alternate triggering passes.
    """
    _check_pct("max_pct", max_pct, 1, 99)
    _check_pct("current_pct", current_pct, 0, 100)
    _check_pct("initial_pct", initial_pct, 1, 99)
    _check_pct("increment_pct", increment_pct, 1, 99)
    if not needs_slowing(dirtied_bytes, sent_bytes, trigger_pct):
        return min(current_pct, max_pct)
    if current_pct == 0:
        return min(initial_pct, max_pct)
    return min(current_pct + increment_pct, max_pct)
