"""Migration-time estimates: the rule of thumb, the geometric pre-copy model, a working-set model.

Pure functions over numbers: no I/O, no clock. Three ways to answer "how long will this
migration take, and how long will the guest be paused?":

- rule of thumb: time = M / R x an overhead factor, said to be 1.5 to 3 for moderate
  workloads. M is the guest memory, R the effective throughput (guest bytes per second).
- geometric: every page write dirties a page not yet dirty. With lambda = D / R (D the
  dirty rate in bytes/s), pass 0 sends M, pass i sends M x lambda^i. A dirty set cannot
  outgrow memory, so a pass is capped at M (lambda >= 1 then never shrinks).
- working set: writes land on pages already dirty. A uniform writer at w page writes/s
  over N pages leaves, after t seconds, N x (1 - exp(-w t / N)) distinct dirty pages;
  a hotset writer does the same on its hot and on its cold pages, each with its share of
  the writes. Pass k+1 sends the pages dirtied during pass k, which lasted its size / R.
  (Sequential and zipf writers are covered too: below.)

Both pass models run the emulator's own policy (``emulator.source.policy.decide``) after each
predicted pass, with the bandwidth R and the pre-copy time elapsed: switch over when the
remaining dirty bytes fit R x downtime limit, or at max passes, max time or a stall. The
remaining dirty set then crosses in the blackout, with the device state. Predicted page
counts are expected values (floats), so where the dirty set levels off (a writer faster
than the link) the predicted remainder keeps shrinking by fractions of a page and never
stalls: the model runs to max passes, while a real run's stall detector fires once the
shrinking is lost in noise. The plateau, and so the blackout, is still predicted.

A disk (shared-nothing storage: mirrored alongside memory) is blocks of its block size,
written at w_d block writes/s with a writer pattern of its own. Pass 0 sends every block
and then all of memory; each later pass sends the disk's dirty blocks and then the memory's
dirty pages over the same link, so it lasts (blocks' bytes + pages' bytes) / R. As the
emulator does, each set is harvested just before it is sent: the blocks dirtied during
the whole last pass, the pages dirtied since memory's last part began (its last part and
this pass's disk part). Each dirty set follows the model's rule (geometric: w t units,
capped at all of them; working set: distinct_dirty_pages), the policy sees the sum of
both remainders at the end of a pass, and both cross in the blackout. lambda stays
memory's D / R. R applies to
the disk's bytes as to memory's: the compression ratio given is taken to hold for both
(a simplification).

The overhead factor of a prediction is its total time (pre-copy passes + blackout) over
the base time (M + disk) / R: 1.0 means "one copy of memory (and disk) and nothing else".

Units: bytes, seconds, page writes per second. The bandwidth given is the link's (wire
bytes/s); a compression ratio c (guest bytes / wire bytes) makes the effective
throughput R = c x link. lambda is always D / R with R effective.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from emulator.source import policy
from emulator.source.policy import PolicyConfig

__all__ = [
    "DirtyBehaviour",
    "DiskInputs",
    "Estimate",
    "EstimateInputs",
    "MODELS",
    "ModelPrediction",
    "PassPrediction",
    "RuleOfThumb",
    "THUMB_FACTORS",
    "distinct_dirty_pages",
    "estimate",
    "geometric",
    "inputs_from_report",
    "rule_of_thumb",
    "working_set",
]

MODELS: tuple[str, ...] = ("geometric", "working_set")
THUMB_FACTORS: tuple[float, float] = (1.5, 3.0)
PATTERNS: tuple[str, ...] = ("uniform", "hotset", "sequential", "zipf")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DirtyBehaviour:
    """How the guest dirties memory (the emulator's writer patterns, see kernels/writers.py).

    rate_pages_per_s: page writes per second over all vCPUs (w).
    pattern: uniform, hotset, sequential or zipf.
    hot_fraction, hot_share: hotset: share of pages that are hot, share of writes they get.
    stride: sequential: pages per step. zipf_s: zipf exponent.
    """

    rate_pages_per_s: float
    pattern: str = "uniform"
    hot_fraction: float = 0.1
    hot_share: float = 0.9
    stride: int = 1
    zipf_s: float = 1.0

    @classmethod
    def of(cls, workload) -> DirtyBehaviour:
        """The dirty behaviour of a (paced) WorkloadSpec."""
        return cls(rate_pages_per_s=workload.rate_pages_per_s, pattern=workload.pattern,
                   hot_fraction=workload.hot_fraction, hot_share=workload.hot_share,
                   stride=workload.stride, zipf_s=workload.zipf_s)

    def __post_init__(self) -> None:
        _positive("dirty rate (page writes/s)", self.rate_pages_per_s, allow_zero=True)
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}: expected one of {', '.join(PATTERNS)}")
        if not 0 < self.hot_fraction <= 1 or not 0 <= self.hot_share <= 1:
            raise ValueError(f"hotset needs 0 < hot_fraction <= 1 and 0 <= hot_share <= 1, "
                             f"got {self.hot_fraction!r}, {self.hot_share!r}")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride must be a whole number >= 1, got {self.stride!r}")
        _positive("zipf exponent", self.zipf_s)


@dataclass(frozen=True)
class DiskInputs:
    """A disk mirrored alongside memory (shared-nothing storage).

    size_bytes: the disk's size, a multiple of block_size. block_size: bytes per block, the
    unit of a write and of dirty tracking. dirty: its writer over blocks (rate_pages_per_s
    is block writes/s).
    """

    size_bytes: int
    block_size: int
    dirty: DirtyBehaviour

    @classmethod
    def of(cls, disk) -> DiskInputs:
        """The inputs of a DiskSpec; ValueError if its writer is flat out (no rate to model)."""
        if math.isinf(disk.write_rate_bytes_per_s):
            raise ValueError("the disk writer is flat out (write rate 'max'): no rate to model")
        return cls(disk.size_bytes, disk.block_size, DirtyBehaviour.of(disk.writer_spec()))

    def __post_init__(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"disk block size must be a whole number of bytes > 0, got {self.block_size!r}")
        if not isinstance(self.size_bytes, int) or self.size_bytes <= 0 or self.size_bytes % self.block_size:
            raise ValueError(f"disk size must be a positive multiple of the block size ({self.block_size} B), "
                             f"got {self.size_bytes!r}")
        if not isinstance(self.dirty, DirtyBehaviour):
            raise ValueError(f"disk dirty behaviour must be a DirtyBehaviour, got {self.dirty!r:.80}")

    @property
    def n_blocks(self) -> int:
        return self.size_bytes // self.block_size

    @property
    def write_bytes_per_s(self) -> float:
        """D_disk: block writes/s x block size."""
        return self.dirty.rate_pages_per_s * self.block_size


@dataclass(frozen=True)
class EstimateInputs:
    """What an estimate starts from.

    memory_bytes: guest memory M. bandwidth_bytes_per_s: the link (wire bytes/s).
    dirty: the dirty behaviour. page_size: bytes. compression_ratio: guest bytes per wire
    byte (1.0 = raw). device_state_bytes: sent raw in the blackout. policy: when pre-copy
    stops (the emulator's PolicyConfig, a downtime ramp included). disk: a disk mirrored
    alongside memory (None: none). dirty_limit_pages_per_s: dirty-limit, all vCPUs together:
    from the first pass that dirtied more than half of what it sent, the page writes/s are
    at most this (None: no limit). unmodelled: the strategies given that the models leave out
    (see `unmodelled_strategies`), which the estimate names.
    """

    memory_bytes: int
    bandwidth_bytes_per_s: float
    dirty: DirtyBehaviour
    page_size: int = 4096
    compression_ratio: float = 1.0
    device_state_bytes: int = 0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    disk: DiskInputs | None = None
    dirty_limit_pages_per_s: float | None = None
    unmodelled: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.page_size, int) or self.page_size <= 0:
            raise ValueError(f"page size must be a whole number of bytes > 0, got {self.page_size!r}")
        if not isinstance(self.memory_bytes, int) or self.memory_bytes <= 0 or self.memory_bytes % self.page_size:
            raise ValueError(f"memory must be a positive multiple of the page size ({self.page_size} B), "
                             f"got {self.memory_bytes!r}")
        _positive("bandwidth (bytes/s)", self.bandwidth_bytes_per_s)
        _positive("compression ratio", self.compression_ratio)
        _positive("device state (bytes)", self.device_state_bytes, allow_zero=True)
        if self.disk is not None and not isinstance(self.disk, DiskInputs):
            raise ValueError(f"disk must be DiskInputs or None, got {self.disk!r:.80}")
        if self.dirty_limit_pages_per_s is not None:
            _positive("dirty limit (page writes/s)", self.dirty_limit_pages_per_s)

    @property
    def n_pages(self) -> int:
        return self.memory_bytes // self.page_size

    @property
    def throughput_bytes_per_s(self) -> float:
        """R: guest bytes moved per second (link x compression ratio)."""
        return self.bandwidth_bytes_per_s * self.compression_ratio

    @property
    def dirty_bytes_per_s(self) -> float:
        """D: page writes/s x page size."""
        return self.dirty.rate_pages_per_s * self.page_size

    @property
    def lam(self) -> float:
        """lambda = D / R (memory's writes only)."""
        return self.dirty_bytes_per_s / self.throughput_bytes_per_s

    @property
    def base_time_s(self) -> float:
        """(M + disk) / R: one copy of memory and the disk, nothing else."""
        disk_bytes = 0 if self.disk is None else self.disk.size_bytes
        return (self.memory_bytes + disk_bytes) / self.throughput_bytes_per_s


# dirty pages after t seconds -----------------------------------------------------------------
def _saturating(pages: float, writes: float) -> float:
    """Expected distinct pages after `writes` uniform writes over `pages` pages: pages x (1 - e^(-writes/pages))."""
    if pages <= 0:
        return 0.0
    return -pages * math.expm1(-writes / pages)


@functools.lru_cache(maxsize=4)
def _zipf_probabilities(n_pages: int, s: float) -> np.ndarray:
    """Each page's share of the writes under Zipf's law: the writers' own zipf_cdf, differenced."""
    from kernels.writers import zipf_cdf  # here: the kernels' import (Numba) only when a zipf is modelled

    return np.diff(zipf_cdf(n_pages, s), prepend=0.0)


def distinct_dirty_pages(dirty: DirtyBehaviour, n_pages: int, seconds: float) -> float:
    """Expected distinct pages a writer dirties in `seconds` over `n_pages` pages.

    uniform: N (1 - e^(-w t / N)). hotset: the same on the hot pages (round(hot_fraction N),
    at least 1) with hot_share of the writes, plus on the cold pages with the rest.
    sequential: every write a new page until the cycle (N / gcd(N, stride)) is covered:
    min(cycle, w t). zipf: the sum over pages of 1 - e^(-w t p_k), p_k the page's share.
    """
    if n_pages < 1:
        raise ValueError(f"n_pages must be >= 1, got {n_pages!r}")
    _positive("seconds", seconds, allow_zero=True)
    writes = dirty.rate_pages_per_s * seconds
    if dirty.pattern == "uniform":
        return _saturating(n_pages, writes)
    if dirty.pattern == "hotset":
        hot = max(1, round(dirty.hot_fraction * n_pages))
        if hot >= n_pages:
            return _saturating(n_pages, writes)
        return (_saturating(hot, writes * dirty.hot_share)
                + _saturating(n_pages - hot, writes * (1 - dirty.hot_share)))
    if dirty.pattern == "sequential":
        return min(float(n_pages // math.gcd(n_pages, dirty.stride)), writes)
    return float(-np.expm1(-writes * _zipf_probabilities(n_pages, dirty.zipf_s)).sum())


# predictions ------------------------------------------------------------------------------------
@dataclass
class PassPrediction:
    """One predicted pre-copy pass: pages and bytes sent, seconds, dirty pages left at its end.

    pages, bytes, remaining_*: memory's. disk_*: a disk's part (0 without one): blocks and
    bytes sent, dirty blocks and bytes left. duration_s covers both; the policy compares
    remaining_bytes + disk_remaining_bytes with threshold_bytes.
    """

    pass_no: int
    pages: float
    bytes: float
    duration_s: float
    remaining_pages: float
    remaining_bytes: float
    threshold_bytes: float
    disk_blocks: float = 0.0
    disk_bytes: float = 0.0
    disk_remaining_blocks: float = 0.0
    disk_remaining_bytes: float = 0.0


@dataclass
class ModelPrediction:
    """One model's prediction of a whole migration.

    switchover_reason: converged, max-passes, max-time or stalled (policy.REASONS).
    aborted: the policy gave up (stalled with on_stall abort): no blackout, the guest stays.
    final_pages/final_bytes: memory sent in the blackout; final_disk_blocks/final_disk_bytes:
    the disk's. blackout_s: both final bytes / R + device state / link. total_s: pre-copy +
    blackout. total_bytes: guest bytes (memory and disk) sent in all. factor: total_s / base time.
    """

    model: str
    passes: list[PassPrediction]
    switchover_reason: str
    aborted: bool
    final_pages: float
    final_bytes: float
    precopy_s: float
    blackout_s: float
    total_s: float
    total_bytes: float
    factor: float
    final_disk_blocks: float = 0.0
    final_disk_bytes: float = 0.0

    @property
    def converges(self) -> bool:
        return self.switchover_reason == "converged"


@dataclass
class RuleOfThumb:
    """(M + disk) / R x the factor range: base_s and the low/high times (seconds)."""

    base_s: float
    factor_low: float
    factor_high: float
    low_s: float
    high_s: float


def rule_of_thumb(inputs: EstimateInputs, factors: tuple[float, float] = THUMB_FACTORS) -> RuleOfThumb:
    """Migration time = (M + disk) / R x a factor in `factors` (1.5 to 3 by default)."""
    low, high = (_positive("factor", f) for f in factors)
    if low > high:
        raise ValueError(f"factor range must be low <= high, got {factors!r}")
    base = inputs.base_time_s
    return RuleOfThumb(base, low, high, base * low, base * high)


def _run_passes(model: str, inputs: EstimateInputs, dirtied: Callable[[DirtyBehaviour, int, float], float]
                ) -> ModelPrediction:
    """Pre-copy with the emulator's policy, then the blackout.

    dirtied(behaviour, units, seconds): distinct units dirtied in `seconds` (memory's pages,
    the disk's blocks)."""
    page = inputs.page_size
    disk = inputs.disk
    block = 0 if disk is None else disk.block_size
    disk_bytes = 0 if disk is None else disk.size_bytes
    rate = inputs.throughput_bytes_per_s
    history: list[float] = []
    passes: list[PassPrediction] = []
    elapsed = 0.0
    pages = float(inputs.n_pages)
    blocks = 0.0 if disk is None else float(disk.n_blocks)
    dirty = inputs.dirty  # held to the dirty limit once a pass needs it
    while True:
        memory_s = pages * page / rate
        duration = blocks * block / rate + memory_s  # the disk's blocks cross first, then the pages
        elapsed += duration
        remaining = dirtied(dirty, inputs.n_pages, memory_s)  # memory is harvested after the disk's part
        disk_remaining = 0.0 if disk is None else dirtied(disk.dirty, disk.n_blocks, duration)
        history.append(remaining * page + disk_remaining * block)
        decision = policy.decide(inputs.policy, history, rate, elapsed, inputs.memory_bytes + disk_bytes)
        passes.append(PassPrediction(len(passes), pages, pages * page, duration, remaining,
                                     remaining * page, decision.threshold_bytes,
                                     blocks, blocks * block, disk_remaining, disk_remaining * block))
        if decision.action != "continue":
            break
        limit = inputs.dirty_limit_pages_per_s
        if limit is not None and limit < dirty.rate_pages_per_s and policy.needs_slowing(remaining * page, pages * page):
            dirty = replace(dirty, rate_pages_per_s=limit)  # from the next pass on, as the emulator does
        blocks = disk_remaining
        pages = remaining if disk is None else dirtied(dirty, inputs.n_pages, memory_s + blocks * block / rate)
    aborted = decision.action == "abort"
    final_pages, final_blocks = (0.0, 0.0) if aborted else (remaining, disk_remaining)
    final_bytes = final_pages * page + final_blocks * block
    blackout = 0.0 if aborted else final_bytes / rate + inputs.device_state_bytes / inputs.bandwidth_bytes_per_s
    total_s = elapsed + blackout
    total_bytes = math.fsum(p.bytes + p.disk_bytes for p in passes) + final_bytes
    return ModelPrediction(model, passes, decision.reason, aborted, final_pages, final_pages * page,
                           elapsed, blackout, total_s, total_bytes, total_s / inputs.base_time_s,
                           final_blocks, final_blocks * block)


def _each_write_a_new_unit(dirty: DirtyBehaviour, units: int, seconds: float) -> float:
    return min(float(units), dirty.rate_pages_per_s * seconds)


def geometric(inputs: EstimateInputs) -> ModelPrediction:
    """The geometric model: each write dirties a new page (capped at all of memory), a disk's a new block.

    Pass 0 sends M; a pass of t seconds leaves min(N, w t) pages dirty, so with lambda < 1
    pass i sends M x lambda^i (without a disk).
    """
    return _run_passes("geometric", inputs, _each_write_a_new_unit)


def working_set(inputs: EstimateInputs) -> ModelPrediction:
    """The working-set model: a pass of t seconds leaves distinct_dirty_pages(t) pages (and blocks) dirty."""
    return _run_passes("working_set", inputs, distinct_dirty_pages)


@dataclass
class Estimate:
    """Every model's answer for one set of inputs.

    disk_adds_s: with a disk, each model's total time less the same guest's without the
    disk (seconds, by model name); None without one.
    """

    inputs: EstimateInputs
    lam: float
    rule_of_thumb: RuleOfThumb
    geometric: ModelPrediction
    working_set: ModelPrediction
    disk_adds_s: dict[str, float] | None = None

    def model(self, name: str) -> ModelPrediction:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (converges spelled out for each model)."""
        data = asdict(self)
        data["inputs"]["throughput_bytes_per_s"] = self.inputs.throughput_bytes_per_s
        data["inputs"]["dirty_bytes_per_s"] = self.inputs.dirty_bytes_per_s
        if self.inputs.disk is not None:
            data["inputs"]["disk"]["write_bytes_per_s"] = self.inputs.disk.write_bytes_per_s
        data["lambda"] = data.pop("lam")
        for name in MODELS:
            data[name]["converges"] = self.model(name).converges
        return data


def estimate(inputs: EstimateInputs, factors: tuple[float, float] = THUMB_FACTORS) -> Estimate:
    """All three estimates for `inputs` (with a disk: and what the disk adds to each model's time)."""
    result = Estimate(inputs, inputs.lam, rule_of_thumb(inputs, factors), geometric(inputs), working_set(inputs))
    if inputs.disk is not None:
        diskless = replace(inputs, disk=None)
        result.disk_adds_s = {"geometric": result.geometric.total_s - geometric(diskless).total_s,
                              "working_set": result.working_set.total_s - working_set(diskless).total_s}
    return result


def inputs_from_report(report) -> EstimateInputs:
    """The inputs an operator would use to predict a measured run (a Report).

    M, the page size, the dirty behaviour, device state, policy and a mirrored disk (storage
    mirror) come from its scenario; R is pass 0's measured throughput (guest bytes, memory's
    and the disk's, / its duration), which already includes any compression, so the
    compression ratio is 1.
    """
    if not report.passes:
        raise ValueError("the report has no pre-copy pass: nothing to measure the throughput from")
    if report.scenario is None:
        raise ValueError("the report has no scenario: nothing to model")
    guest, workload, migration = report.scenario.guest, report.scenario.workload, report.scenario.migration
    first = report.passes[0]
    if workload.unpaced:
        raise ValueError("the run's writers were unpaced (dirty rate 'max'): no dirty rate to model")
    disk = report.scenario.mirrored_disk
    return EstimateInputs(
        memory_bytes=guest.memory_bytes,
        bandwidth_bytes_per_s=(first.total_bytes_sent) / first.duration_s,
        dirty=DirtyBehaviour.of(workload), page_size=guest.page_size, compression_ratio=1.0,
        device_state_bytes=migration.device_state_bytes, policy=migration.policy,
        disk=None if disk is None else DiskInputs.of(disk), dirty_limit_pages_per_s=dirty_limit_of(report.scenario),
        unmodelled=unmodelled_strategies(report.scenario),
    )


def dirty_limit_of(scenario) -> float | None:
    """A scenario's dirty limit as the models take it: page writes/s over all its vCPUs (None: none)."""
    limit = scenario.migration.dirty_limit_bytes_per_s
    return None if limit is None else limit / scenario.guest.page_size * scenario.workload.vcpus


#: what each strategy the models leave out would change, said beside the estimate
UNMODELLED = {
    "auto-converge": "its throttle steps with what each pass measures",
    "xbzrle": "what a delta saves depends on the bytes each write changes and on the cache's hits",
    "post-copy": "the models are of pre-copy; post-copy's time is the pages left at the switch over the link, "
                 "and its cost the vCPUs' waits, which depend on what they touch",
}


def unmodelled_strategies(scenario) -> tuple[str, ...]:
    """The convergence strategies a scenario runs that the models leave out (names of UNMODELLED)."""
    options = scenario.migration
    return tuple(name for name, on in (("auto-converge", options.auto_converge), ("xbzrle", options.xbzrle),
                                       ("post-copy", options.postcopy)) if on)
