"""Bandwidth cap: a token bucket shared by the sender's channel threads.

Debt model: a message waits until the bucket holds ``min(nbytes, burst)`` tokens, then
debits ``nbytes`` in full, so the balance may go negative and the next sender waits the
debt off. Messages larger than the burst therefore pass (they just wait for a full bucket),
and over any interval the bytes sent stay within ``burst + rate x time`` plus the last
message. ``settle`` waits that last debt off: called at the end of a pass, it makes the
pass last as long as the capped link would take to carry it.

``consume`` reserves under the lock and sleeps outside it: each thread debits its bytes
at once and sleeps until its reservation is due, so threads queue behind each other's
debt without holding the lock while asleep.

A bucket made with a ``SharedBalance`` keeps its balance in shared memory under a
process-shared lock: every process given the same balance draws from one bucket (a
drain's migrations share one link budget this way), and the balance counts every
process's bytes.

``carried_bytes`` is what the capped link has carried by now: the bytes debited less the
debt still to wait off. A sender debits a whole message before it waits its turn, so the
debits run up to a message per sender ahead of the link; what is carried grows by at most
``burst + rate x w`` over any w seconds (the burst only after the link was idle), and at
the rate while senders queue. A reading of the link's use counts this.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from typing import Callable, Protocol

__all__ = [
    "DEFAULT_BURST_S",
    "Limiter",
    "SharedBalance",
    "SMB_BANDWIDTH_LIMIT_FACTOR_PCT",
    "TokenBucket",
    "Unlimited",
    "default_burst_bytes",
    "make_limiter",
    "percent_of_link",
]

# Windows Server 2025 caps live-migration SMB traffic at 25% of the link by default.
SMB_BANDWIDTH_LIMIT_FACTOR_PCT = 25.0
# Default burst: 10 ms of traffic (the rate overshoots by at most ~1% over a 1 s pass),
# and never less than one 4 KiB page.
DEFAULT_BURST_S = 0.01
_MIN_BURST_BYTES = 4096


class Limiter(Protocol):
    """What a sender needs from a limiter; TokenBucket and Unlimited both provide it."""

    rate_bytes_per_s: float | None
    consumed_bytes: int

    def delay_s(self, nbytes: int) -> float: ...

    def consume(self, nbytes: int) -> float: ...

    def settle(self) -> float: ...


def _check_nbytes(nbytes: object) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an integer >= 0, got {nbytes!r}")
    return nbytes


def _check_rate(value: object, name: str = "rate_bytes_per_s") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        unlimited = " (None for unlimited)" if name == "rate_bytes_per_s" else ""
        raise ValueError(f"{name} must be a finite number > 0{unlimited}, got {value!r}")
    return float(value)


class SharedBalance:
    """A bucket's balance (tokens, when last refilled, bytes consumed by all) in shared memory, with a
    process-shared lock. Give it to processes when they start (``multiprocessing`` pickles it then)."""

    def __init__(self, context=None):
        context = context or multiprocessing.get_context("spawn")
        self.values = context.RawArray("d", 3)
        self.lock = context.Lock()

    @property
    def consumed_bytes(self) -> float:
        """Bytes every process has debited so far."""
        with self.lock:
            return self.values[2]


class _LocalBalance:
    """A bucket's balance in this process only."""

    def __init__(self) -> None:
        self.values = [0.0, 0.0, 0.0]
        self.lock = threading.Lock()


class TokenBucket:
    """A token bucket of ``burst_bytes`` refilled at ``rate_bytes_per_s``; starts full.

    clock: seconds, monotonic (``time.monotonic``, which every process on a host shares);
    sleep: sleeps that many seconds. Both are injectable so tests run on a fake clock.
    shared: a SharedBalance to draw from the same bucket as other processes (it starts
    full when the first one is made).
    """

    def __init__(
        self,
        rate_bytes_per_s: float,
        burst_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        shared: SharedBalance | None = None,
    ) -> None:
        self.rate_bytes_per_s = _check_rate(rate_bytes_per_s)
        if isinstance(burst_bytes, bool) or not isinstance(burst_bytes, int):
            raise TypeError(f"burst_bytes must be an integer, got {burst_bytes!r}")
        if burst_bytes < 1:
            raise ValueError(f"burst_bytes must be an integer >= 1, got {burst_bytes!r}")
        self.burst_bytes = burst_bytes
        self.consumed_bytes = 0
        self._clock = clock
        self._sleep = sleep
        balance = shared or _LocalBalance()
        self._lock, self._balance = balance.lock, balance.values  # tokens, last refill, all bytes
        with self._lock:
            if self._balance[1] == 0.0:  # the first bucket on this balance: full
                self._balance[0], self._balance[1] = float(burst_bytes), clock()

    @classmethod
    def unlimited(cls) -> Unlimited:
        """A limiter with this interface that never waits."""
        return Unlimited()

    def _tokens_at(self, now_s: float) -> float:
        tokens, last_s = self._balance[0], self._balance[1]
        return min(float(self.burst_bytes), tokens + max(0.0, now_s - last_s) * self.rate_bytes_per_s)

    def _wait_s(self, tokens: float, nbytes: int) -> float:
        needed = min(nbytes, self.burst_bytes)
        if nbytes == 0 or tokens >= needed:
            return 0.0
        return (needed - tokens) / self.rate_bytes_per_s

    def tokens(self) -> float:
        """Tokens (bytes) available now; negative while in debt."""
        with self._lock:
            return self._tokens_at(self._clock())

    def delay_s(self, nbytes: int) -> float:
        """Seconds to wait before ``nbytes`` may be sent now; changes nothing."""
        _check_nbytes(nbytes)
        with self._lock:
            return self._wait_s(self._tokens_at(self._clock()), nbytes)

    def consume(self, nbytes: int) -> float:
        """Debit ``nbytes``, sleeping first as long as needed; returns the seconds waited."""
        _check_nbytes(nbytes)
        if nbytes == 0:
            return 0.0
        with self._lock:
            now_s = self._clock()
            tokens = self._tokens_at(now_s)
            wait_s = self._wait_s(tokens, nbytes)
            self._balance[0], self._balance[1] = tokens - nbytes, now_s
            self._balance[2] += nbytes
            self.consumed_bytes += nbytes
        if wait_s > 0:
            self._sleep(wait_s)
        return wait_s

    def carried_bytes(self) -> float:
        """Bytes every process drawing from this bucket has debited, less the debt still to wait off
        (module doc)."""
        with self._lock:
            return self._balance[2] - max(0.0, -self._tokens_at(self._clock()))

    def settle(self) -> float:
        """Sleep until the debt is paid (no tokens owed); returns the seconds waited."""
        with self._lock:
            wait_s = max(0.0, -self._tokens_at(self._clock())) / self.rate_bytes_per_s
        if wait_s > 0:
            self._sleep(wait_s)
        return wait_s


class Unlimited:
    """The limiter for no limit: same interface as TokenBucket, never waits (but counts, in
    `shared` too when given)."""

    rate_bytes_per_s: None = None
    burst_bytes: None = None

    def __init__(self, shared: SharedBalance | None = None) -> None:
        self.consumed_bytes = 0
        self._shared = shared
        self._lock = threading.Lock()

    def tokens(self) -> float:
        return math.inf

    def delay_s(self, nbytes: int) -> float:
        _check_nbytes(nbytes)
        return 0.0

    def consume(self, nbytes: int) -> float:
        _check_nbytes(nbytes)
        with self._lock:
            self.consumed_bytes += nbytes
        if self._shared is not None:
            with self._shared.lock:
                self._shared.values[2] += nbytes
        return 0.0

    def carried_bytes(self) -> float:
        """Bytes debited so far (by every process, given `shared`): with no limit, none wait."""
        return self.consumed_bytes if self._shared is None else self._shared.consumed_bytes

    def settle(self) -> float:
        return 0.0


def default_burst_bytes(rate_bytes_per_s: float) -> int:
    """DEFAULT_BURST_S worth of traffic at the rate, at least one 4 KiB page."""
    rate = _check_rate(rate_bytes_per_s)
    return max(_MIN_BURST_BYTES, math.ceil(rate * DEFAULT_BURST_S))


def make_limiter(
    rate_bytes_per_s: float | None,
    burst_bytes: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    shared: SharedBalance | None = None,
) -> TokenBucket | Unlimited:
    """A TokenBucket for a rate (B/s), or Unlimited for None; burst defaults to 10 ms.

    shared: a SharedBalance, to draw from (and count into) one bucket with other processes."""
    if rate_bytes_per_s is None:
        return Unlimited(shared)
    if burst_bytes is None:
        burst_bytes = default_burst_bytes(rate_bytes_per_s)
    return TokenBucket(rate_bytes_per_s, burst_bytes, clock=clock, sleep=sleep, shared=shared)


def percent_of_link(
    link_bytes_per_s: float, pct: float = SMB_BANDWIDTH_LIMIT_FACTOR_PCT
) -> float:
    """``pct`` % of a link's bandwidth (B/s): the cap as a share of the NIC (WS2025: 25%)."""
    link = _check_rate(link_bytes_per_s, "link_bytes_per_s")
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 100:
        raise ValueError(f"pct must be a number in (0, 100], got {pct!r}")
    return link * pct / 100
