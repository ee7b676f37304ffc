"""Shared pieces of the kernel benchmarks: the np.copyto yardstick and the summary table.

Every benchmark is reported against np.copyto measured in the same session, because
absolute GB/s on a shared, noisy machine mean little; the ratio is what to compare
between runs. GB are 10^9 bytes.
"""

import time

import numpy as np
import pytest

COPYTO_BYTES = 256 << 20
COPYTO_REPEATS = 9

_RESULTS = pytest.StashKey[list]()
_COPYTO = pytest.StashKey[float]()


def measure_copyto_bytes_per_s(nbytes=COPYTO_BYTES, repeats=COPYTO_REPEATS):
    """Median np.copyto speed, bytes/s, between two resident buffers of `nbytes`."""
    source = np.ones(nbytes, dtype=np.uint8)
    target = np.zeros(nbytes, dtype=np.uint8)
    times_s = []
    for _ in range(repeats):
        began = time.perf_counter()
        np.copyto(target, source)
        times_s.append(time.perf_counter() - began)
    return nbytes / float(np.median(times_s))


def pytest_configure(config):
    config.stash[_RESULTS] = []


@pytest.fixture(scope="session")
def copyto_bytes_per_s(pytestconfig):
    """np.copyto speed of 256 MiB, median of 9, measured once per session."""
    speed = measure_copyto_bytes_per_s()
    pytestconfig.stash[_COPYTO] = speed
    return speed


@pytest.fixture
def report(benchmark, copyto_bytes_per_s, request):
    """Call after the benchmark ran: report(guest_bytes=...) or report(writes=..., page_size=...).

    guest_bytes: guest memory the operation covers per call (pages x page size), so
    the ratio says how many times faster than np.copyto of those bytes it is.
    writes: page writes per call; their ratio compares writes/s with the pages/s
    np.copyto moves (a dirty rate against the copy rate that must keep up with it).
    The figures go to benchmark.extra_info and to the table printed at the end.
    """

    def record(*, guest_bytes=None, writes=None, page_size=4096):
        if (guest_bytes is None) == (writes is None):
            raise ValueError("report needs exactly one of guest_bytes or writes")
        if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
            return None
        median_s = benchmark.stats.stats.median
        row = {"name": request.node.name.removeprefix("test_"), "median_s": median_s}
        if writes is not None:
            writes_per_s = writes / median_s
            row.update(rate=f"{_three_digits(writes_per_s / 1e6)} Mwrites/s",
                       ratio=writes_per_s / (copyto_bytes_per_s / page_size))
            benchmark.extra_info["writes_per_s"] = writes_per_s
        else:
            gb_per_s = guest_bytes / median_s / 1e9
            row.update(rate=f"{_three_digits(gb_per_s)} GB/s", ratio=gb_per_s * 1e9 / copyto_bytes_per_s)
            benchmark.extra_info["gb_per_s"] = gb_per_s
        benchmark.extra_info["ratio_to_copyto"] = row["ratio"]
        benchmark.extra_info["copyto_gb_per_s"] = copyto_bytes_per_s / 1e9
        request.config.stash[_RESULTS].append(row)
        return row

    return record


def _three_digits(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _format_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    rows = config.stash.get(_RESULTS, [])
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("precopy kernels (ratio: x np.copyto of the same session)")
    write(f"np.copyto {COPYTO_BYTES >> 20} MiB, median of {COPYTO_REPEATS}: {config.stash[_COPYTO] / 1e9:.2f} GB/s")
    width = max(len(row["name"]) for row in rows)
    write(f"{'benchmark':<{width}}  {'median':>9}  {'throughput':>16}  {'ratio':>9}")
    for row in rows:
        write(f"{row['name']:<{width}}  {_format_time(row['median_s']):>9}  {row['rate']:>16}  {_three_digits(row['ratio']):>9}")
    write("GB/s = guest bytes covered / median time (10^9 B); writer ratio = writes/s / copyto pages/s")
