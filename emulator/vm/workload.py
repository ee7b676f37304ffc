"""The guest's vCPUs: writer threads that dirty memory at a target rate and pattern.

Each writer runs Numba kernels that release the GIL, in short slices: it works
out how many writes are due by now at its share of the target rate (a
deadline schedule, so the long-run rate is exact however the slices jitter),
performs them, and sleeps until the next is due. `pause()` returns only once
every writer has left its kernel and is waiting: from then on no writer
touches memory until `resume()`. That is the blackout's precondition.

Two ways to slow the writers, as QEMU has: a throttle (auto-converge: each runs
at (100 - pct)% of its rate) and a dirty limit (dirty-limit: each is held to at
most a rate of page writes, whatever its own). Time a writer spends held back by
the dirty limit is counted (`limited_s`).

After a post-copy resume (a workload given `faults`, emulator.vm.postcopy), a writer
that stops before a missing page waits for it there; the time is its blocktime
(`blocked_s`), and its schedule restarts after the wait: a stalled vCPU does not
make up the writes it lost.
"""

import math
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from emulator.core import fields
from emulator.dataplane.threads import name_this_thread
from kernels.writers import PATTERNS, WriterPattern, zipf_cdf

SLICE_S = 0.0005  # longest time a writer spends in one kernel call: bounds pause latency
MIN_BATCH = 16
MAX_BATCH = 1 << 20
MAX_VCPUS = 1024  # writer threads one guest may ask for
MAX_RATE_PAGES_PER_S = 1e9  # a paced rate above this is no pace a writer keeps: ask for "max" (unpaced)


@dataclass(frozen=True)
class WorkloadSpec:
    """What the guest's vCPUs do.

    rate_pages_per_s: page writes per second over all vCPUs, at most MAX_RATE_PAGES_PER_S; 0 = idle,
    math.inf = unpaced.
    pattern: uniform, hotset, sequential or zipf; write_size: bytes per write.
    hot_fraction, hot_share: hotset (share of pages, share of writes); stride: sequential
    step in pages; zipf_s: zipf exponent; seed: the writers' RNG seed.
    """

    vcpus: int = 1
    rate_pages_per_s: float = 0.0
    pattern: str = "uniform"
    write_size: int = 8
    hot_fraction: float = 0.1
    hot_share: float = 0.9
    stride: int = 1
    zipf_s: float = 1.0
    seed: int = 0

    RULES: ClassVar[dict] = {
        "vcpus": fields.whole(1, MAX_VCPUS),
        "rate_pages_per_s": fields.unbounded(fields.real(0, MAX_RATE_PAGES_PER_S), "unpaced"),
        "pattern": fields.one_of(PATTERNS),
        "write_size": fields.whole(8, multiple_of=8),
        "hot_fraction": fields.real(0, 1, above=True),
        "hot_share": fields.real(0, 1),
        "stride": fields.whole(1),
        "zipf_s": fields.real(0, above=True, below=True),
        "seed": fields.whole(0, 2**64 - 1),
    }

    def __post_init__(self):
        fields.check(self, self.RULES)

    @property
    def unpaced(self):
        return math.isinf(self.rate_pages_per_s)


class _Writer:
    """One vCPU: its pattern state and its counters (touched only by its own thread)."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.writes = 0
        self.batch = MIN_BATCH
        self.limited_s = 0.0  # seconds spent waiting because the dirty limit held it back
        self.blocked_s = 0.0  # seconds spent waiting for a missing page (post-copy)


class Workload:
    """Writer threads over a GuestMemory. Use as a context manager, or start()/stop()."""

    def __init__(self, guest, spec, *, log_capacity=0, faults=None):
        """guest: GuestMemory; spec: WorkloadSpec; log_capacity: pages each writer records (tests);
        faults: an emulator.vm.postcopy.Faults whose missing pages the writers wait for."""
        self.guest = guest
        self.spec = spec
        self.faults = faults
        zipf_table = zipf_cdf(guest.n_pages, spec.zipf_s) if spec.pattern == "zipf" else None  # one for all
        self._writers = [
            _Writer(
                WriterPattern(
                    guest.data, guest.page_size, guest.dirty, spec.pattern, seed=spec.seed, stream=index,
                    write_size=spec.write_size, hot_fraction=spec.hot_fraction, hot_share=spec.hot_share,
                    stride=spec.stride, zipf_s=spec.zipf_s, zipf_table=zipf_table,
                    start_page=index * guest.n_pages // spec.vcpus,
                    log=np.empty(log_capacity, dtype=np.int64) if log_capacity else None,
                    missing=None if faults is None else faults.missing,
                )
            )
            for index in range(spec.vcpus)
        ]
        if spec.rate_pages_per_s:
            for writer in self._writers:
                writer.pattern.write(0)  # compile (or load) the kernel now, not when the clock starts
        self._cond = threading.Condition()
        self._pause_requested = False
        self._stopping = False
        self._parked = 0
        self._throttle_pct = 0
        self._limit_pages_per_s = None  # the dirty limit, per writer (None: none)
        self._epoch = 0  # bumped on resume, throttle or limit change: writers restart their schedule
        self._threads = []
        self._active_s = 0.0
        self._active_since = None

    # lifecycle -------------------------------------------------------------
    def start(self):
        """Start the writer threads (idle workloads start none)."""
        if self._threads:
            raise RuntimeError("workload already started")
        if self.spec.rate_pages_per_s == 0:
            return self
        self._active_since = time.monotonic()
        for index, writer in enumerate(self._writers):
            thread = threading.Thread(target=self._run, args=(writer,), name=f"vcpu{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        """Stop and join every writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.faults is not None:
            self.faults.wake_all()
        for thread in self._threads:
            thread.join()
        self._account_active()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def pause(self):
        """Stop every writer and return once none is touching memory."""
        with self._cond:
            self._pause_requested = True
            self._cond.notify_all()
        if self.faults is not None:
            self.faults.wake_all()  # a writer waiting for a page parks instead
        with self._cond:
            self._cond.wait_for(lambda: self._parked == len(self._threads))
        self._account_active()

    def resume(self):
        """Let the writers run again (their schedule restarts now: no burst of owed writes)."""
        with self._cond:
            self._pause_requested = False
            self._epoch += 1
            self._active_since = time.monotonic()
            self._cond.notify_all()

    # control and counters ------------------------------------------------------
    @property
    def paused(self):
        """True between pause() and resume()."""
        return self._pause_requested

    @property
    def throttle_pct(self):
        return self._throttle_pct

    def set_throttle(self, pct):
        """Slow the writers to (100 - pct)% of their rate (auto-converge's CPU throttle)."""
        if not 0 <= pct < 100:
            raise ValueError(f"throttle must be a percentage in [0, 100), got {pct!r}")
        with self._cond:
            self._throttle_pct = pct
            self._epoch += 1
            self._cond.notify_all()

    @property
    def dirty_limit_pages_per_s(self):
        """Each writer's dirty limit in page writes/s, or None."""
        return self._limit_pages_per_s

    def set_dirty_limit(self, pages_per_s):
        """Hold each writer to at most `pages_per_s` page writes/s (QEMU's vcpu-dirty-limit); None lifts it."""
        if pages_per_s is not None and not (pages_per_s > 0 and math.isfinite(pages_per_s)):
            raise ValueError(f"a dirty limit must be a rate > 0 and finite, or none, got {pages_per_s!r}")
        with self._cond:
            self._limit_pages_per_s = pages_per_s
            self._epoch += 1
            self._cond.notify_all()

    @property
    def limited_s(self):
        """Seconds the writers spent held back by the dirty limit, summed over writers."""
        return sum(writer.limited_s for writer in self._writers)

    @property
    def blocked_s(self):
        """Seconds each writer waited for missing pages (post-copy), one entry per writer."""
        return [writer.blocked_s for writer in self._writers]

    @property
    def writes(self):
        """Page writes performed so far by all writers."""
        return sum(writer.writes for writer in self._writers)

    @property
    def active_s(self):
        """Seconds the writers have been running (paused time excluded)."""
        if self._active_since is not None and not self._pause_requested and not self._stopping:
            return self._active_s + time.monotonic() - self._active_since
        return self._active_s

    def logged_pages(self):
        """Pages each writer recorded (with log_capacity), concatenated."""
        return np.concatenate([writer.pattern.logged() for writer in self._writers])

    def _account_active(self):
        with self._cond:
            if self._active_since is not None:
                self._active_s += time.monotonic() - self._active_since
                self._active_since = None

    # the writer thread -----------------------------------------------------
    def _park_if_asked(self):
        """Wait while paused; return False when stopping. Called between kernel calls only."""
        with self._cond:
            if not self._pause_requested:
                return not self._stopping
            self._parked += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._pause_requested or self._stopping)
            self._parked -= 1
            return not self._stopping

    def _run(self, writer):
        name_this_thread(threading.current_thread().name)  # vcpuN, for per-thread CPU (emulator.dataplane.threads)
        own = self.spec.rate_pages_per_s / len(self._writers)
        epoch = None
        while self._park_if_asked():
            if epoch != self._epoch:
                epoch = self._epoch
                rate = own * (1 - self._throttle_pct / 100)
                limit = self._limit_pages_per_s
                limited = limit is not None and limit < rate  # the limit, not the writer's own pace, decides
                rate = min(rate, limit) if limited else rate
                start, done = time.monotonic(), 0
            if math.isinf(rate):
                self._write_unpaced(writer, 1 - self._throttle_pct / 100)
                continue
            due = int(rate * (time.monotonic() - start)) - done
            if due <= 0:
                wait_s = min(max((done + 1) / rate - (time.monotonic() - start), 0.0), 0.05)
                waited = time.monotonic()
                with self._cond:
                    self._cond.wait(wait_s)
                if limited:
                    writer.limited_s += time.monotonic() - waited
                continue
            n = min(due, max(MIN_BATCH, int(rate * SLICE_S)))
            made = writer.pattern.write(n)
            writer.writes += made
            done += made
            if made < n:
                self._wait_for_page(writer)
                epoch = None  # the schedule restarts: the writes a stall cost are lost, not owed

    def _wait_for_page(self, writer):
        """The writer stopped before a missing page: wait for it (or until asked to pause or stop)."""
        writer.blocked_s += self.faults.wait(writer.pattern.pending_page,
                                             lambda: self._pause_requested or self._stopping)

    def _write_unpaced(self, writer, scale):
        """One slice flat out; the batch adapts so a slice lasts about SLICE_S."""
        began = time.perf_counter()
        made = writer.pattern.write(writer.batch)
        writer.writes += made
        if made < writer.batch:
            self._wait_for_page(writer)
            return
        took = time.perf_counter() - began
        if took < SLICE_S / 2:
            writer.batch = min(writer.batch * 2, MAX_BATCH)
        elif took > SLICE_S * 2:
            writer.batch = max(writer.batch // 2, MIN_BATCH)
        if scale < 1:
            with self._cond:
                self._cond.wait(took * (1 - scale) / scale)
