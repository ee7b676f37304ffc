"""Predict a drain: guests migrated at most K at once over one link, each getting an equal share.

A fluid model, event by event: while n migrations are active each moves link / n wire
bytes per second (times its compression ratio in guest bytes); a pass of t seconds leaves
the working-set model's dirty pages (emulator.analysis.estimate.distinct_dirty_pages), the
emulator's policy decides when a guest switches over, and its blackout (final pages and
device state) crosses at its share too. A finished migration frees its slot for the next
queued guest at once, which first spends `setup_s` in setup (the handshake and the
destination making the guest's memory resident: 70-250 ms for 32 MiB on the 2-core VM
docs/guide.md's table comes from) holding its slot but not the link. Handshakes between
passes are not modelled.
"""

import math
from dataclasses import dataclass

from emulator.analysis.estimate import distinct_dirty_pages
from emulator.source import policy


@dataclass
class _Migration:
    index: int
    inputs: object  # EstimateInputs: the guest (bandwidth_bytes_per_s is not used: the share is)
    started_s: float
    pages: float  # to send in this pass (or the blackout)
    sent_pages: float = 0.0
    pass_started_s: float = 0.0
    passes: int = 0
    history: tuple = ()
    moved_bytes: float = 0.0  # guest bytes moved in pre-copy, for the measured bandwidth
    precopy_s: float = 0.0
    blackout_started_s: float | None = None
    setup_until_s: float = 0.0


@dataclass(frozen=True)
class GuestForecast:
    started_s: float
    switchover_s: float
    resumed_s: float
    passes: int
    blackout_s: float


@dataclass(frozen=True)
class DrainForecast:
    max_concurrent: int
    total_s: float
    guests: tuple[GuestForecast, ...]

    @property
    def worst_blackout_s(self):
        return max(guest.blackout_s for guest in self.guests)


def forecast(guests, link_bytes_per_s, max_concurrent, setup_s=0.0):
    """The DrainForecast of migrating `guests` (EstimateInputs, in queue order) at most
    `max_concurrent` at once over a link of `link_bytes_per_s` wire bytes/s, each
    migration spending `setup_s` before its first page."""
    if not guests:
        raise ValueError("a drain needs one guest or more")
    if not math.isfinite(link_bytes_per_s) or link_bytes_per_s <= 0:
        raise ValueError(f"the link needs a finite rate > 0, got {link_bytes_per_s!r}")
    queue, active, done, now = list(range(len(guests))), [], {}, 0.0
    while queue or active:
        while queue and len(active) < max_concurrent:
            index = queue.pop(0)
            active.append(_Migration(index, guests[index], now, float(guests[index].n_pages),
                                     pass_started_s=now + setup_s, setup_until_s=now + setup_s))
        sending = [m for m in active if m.setup_until_s <= now]
        share = link_bytes_per_s / max(1, len(sending))
        left = [m.setup_until_s - now if m.setup_until_s > now else
                _left_bytes(m) / (share * m.inputs.compression_ratio) for m in active]  # seconds to its event
        step = min(left)
        now += step
        for m in sending:
            m.sent_pages += share * m.inputs.compression_ratio / m.inputs.page_size * step
        for m in [m for m, seconds in zip(active, left) if seconds <= step * (1 + 1e-12)]:
            if m.setup_until_s >= now - step * 1e-12 and m not in sending:
                continue  # its setup just ended: it sends from now on
            if _next(m, now):
                active.remove(m)
                blackout = now - m.blackout_started_s
                done[m.index] = GuestForecast(m.started_s, m.blackout_started_s, now, m.passes, blackout)
    return DrainForecast(max_concurrent, now, tuple(done[index] for index in range(len(guests))))


def _left_bytes(m):
    """Wire-equivalent guest bytes left of its pass (or blackout: final pages and device state)."""
    left = max(0.0, m.pages - m.sent_pages) * m.inputs.page_size
    if m.blackout_started_s is not None:
        left += m.inputs.device_state_bytes * m.inputs.compression_ratio  # sent raw
    return left


def _next(m, now):
    """The pass (or blackout) of `m` just ended at `now`: start the next; True once it has resumed."""
    if m.blackout_started_s is not None:
        return True
    inputs = m.inputs
    duration = now - m.pass_started_s
    m.moved_bytes += m.pages * inputs.page_size
    m.precopy_s += duration
    remaining = distinct_dirty_pages(inputs.dirty, inputs.n_pages, duration)
    m.history += (remaining * inputs.page_size,)
    m.passes += 1
    bandwidth = m.moved_bytes / m.precopy_s  # guest bytes/s over its passes, as the source measures it
    decision = policy.decide(inputs.policy, m.history, bandwidth, now - m.started_s, inputs.memory_bytes)
    m.pages, m.sent_pages, m.pass_started_s = remaining, 0.0, now
    if decision.action != "continue":
        m.blackout_started_s = now
    return False


def best(guests, link_bytes_per_s, setup_s=0.0, most=8):
    """Forecasts for K = 1 .. min(len(guests), most): (all of them, the K with the shortest drain,
    the K with the shortest worst blackout)."""
    forecasts = [forecast(guests, link_bytes_per_s, k, setup_s) for k in range(1, min(len(guests), most) + 1)]
    fastest = min(forecasts, key=lambda f: (round(f.total_s, 6), f.max_concurrent))
    calmest = min(forecasts, key=lambda f: (round(f.worst_blackout_s, 6), f.max_concurrent))
    return forecasts, fastest.max_concurrent, calmest.max_concurrent
