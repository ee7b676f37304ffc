import math
import time

import numpy as np
import pytest

from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.workload import Workload, WorkloadSpec
from tests.fakelink import wait_until

PAGE = 4096


@pytest.fixture
def guest():
    return GuestMemory(GuestSpec(256 * PAGE, fill="random", seed=1))


def test_zipf_writers_share_one_table():
    guest = GuestMemory(GuestSpec(1024 * PAGE))
    workload = Workload(guest, WorkloadSpec(vcpus=8, rate_pages_per_s=0, pattern="zipf"))
    tables = {id(writer.pattern.cdf) for writer in workload._writers}
    assert len(tables) == 1 and workload._writers[0].pattern.cdf.size == 1024  # 8 KiB, not 8 x 8 KiB


def test_pause_means_no_writer_touches_memory(guest):
    with Workload(guest, WorkloadSpec(vcpus=2, rate_pages_per_s=math.inf, pattern="uniform")) as workload:
        time.sleep(0.05)
        for _ in range(20):
            workload.pause()
            snapshot, writes = guest.data.copy(), workload.writes
            dirty = guest.dirty.copy()
            time.sleep(0.005)
            assert workload.writes == writes
            assert np.array_equal(guest.data, snapshot)
            assert np.array_equal(guest.dirty, dirty)
            workload.resume()
            time.sleep(0.002)
        wait_until(lambda: workload.writes > writes)  # and they write again once resumed


def test_logged_pages_are_exactly_the_dirty_pages(guest):
    guest.harvest()
    workload = Workload(guest, WorkloadSpec(vcpus=2, rate_pages_per_s=200_000, pattern="hotset"), log_capacity=1 << 16)
    with workload:
        time.sleep(0.1)
        workload.pause()
    logged = workload.logged_pages()
    assert logged.size == workload.writes > 0
    assert guest.harvest().tolist() == np.unique(logged).tolist()


def test_idle_workload_writes_nothing(guest):
    before = guest.digest()
    with Workload(guest, WorkloadSpec(rate_pages_per_s=0)) as workload:
        time.sleep(0.02)
        workload.pause()
        workload.resume()
    assert workload.writes == 0 and guest.digest() == before and guest.dirty_count() == 0


def test_throttle_is_validated_and_slows_writers(guest):
    workload = Workload(guest, WorkloadSpec(vcpus=1, rate_pages_per_s=math.inf))
    with pytest.raises(ValueError, match="percentage"):
        workload.set_throttle(100)
    with workload:
        workload.set_throttle(90)
        time.sleep(0.1)
        workload.pause()
    assert workload.throttle_pct == 90


@pytest.mark.parametrize("kwargs, message", [
    ({"vcpus": 0}, "vcpus"),
    ({"rate_pages_per_s": -1}, r"rate_pages_per_s must be a number in \[0, 1e\+09\], got -1 \(or max: unpaced\)"),
    ({"rate_pages_per_s": float("nan")}, r"rate_pages_per_s must be a number in \[0, 1e\+09\], got nan"),
    ({"rate_pages_per_s": 1e300}, r"rate_pages_per_s must be a number in \[0, 1e\+09\], got 1e\+300"),
    ({"pattern": "bursty"}, "pattern must be one of uniform, hotset, sequential, zipf, got 'bursty'"),
    ({"rate_pages_per_s": "fast"}, r"rate_pages_per_s must be a number in \[0, 1e\+09\], got 'fast'"),
    ({"write_size": 12}, "write_size"),
    ({"hot_fraction": 0}, "hot_fraction"),
    ({"hot_share": -0.1}, "hot_share"),
    ({"stride": 0}, "stride"),
    ({"zipf_s": 0}, "zipf_s"),
    ({"seed": -1}, "seed"),
    ({"vcpus": True}, "vcpus"),
])
def test_bad_workload_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorkloadSpec(**kwargs)


def test_a_dirty_limit_holds_each_writer_to_its_rate_within_5_percent(guest):
    """Writers flat out, then held to 2,000 page writes/s each (QEMU's vcpu-dirty-limit): 4,000/s for 2."""
    workload = Workload(guest, WorkloadSpec(vcpus=2, rate_pages_per_s=math.inf, pattern="uniform"))
    with workload:
        wait_until(lambda: workload.writes > 10_000)  # flat out first
        workload.set_dirty_limit(2000.0)
        time.sleep(0.1)  # the writers take the limit at their next slice
        writes, started = workload.writes, time.monotonic()
        time.sleep(1.0)
        rate = (workload.writes - writes) / (time.monotonic() - started)
        limited = workload.limited_s
    assert rate == pytest.approx(4000, rel=0.05)
    assert limited > 1.0  # both writers spent most of that second held back
    assert workload.dirty_limit_pages_per_s == 2000.0


def test_a_dirty_limit_above_a_writers_own_rate_holds_nothing_back(guest):
    workload = Workload(guest, WorkloadSpec(vcpus=1, rate_pages_per_s=1000, pattern="uniform"))
    with workload:
        workload.set_dirty_limit(5000.0)
        time.sleep(0.5)
    assert workload.limited_s == 0.0
    with pytest.raises(ValueError, match="a dirty limit must be a rate > 0"):
        workload.set_dirty_limit(0.0)
