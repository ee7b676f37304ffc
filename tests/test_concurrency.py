"""The concurrency contract under load: writers running while a harvester copies.

Each round: writers dirty memory while the harvester repeatedly takes the
dirty set and copies those pages into a replica. Then the writers pause, a
final harvest+copy runs, and the replica must equal memory byte for byte. A
lost bit (a non-atomic harvest) or a page copied before its bytes landed
(reordering) leaves a stale page in the replica and fails the comparison.
Two regimes: flat out over a small memory (maximum contention on each bitmap
word), and a paced writer over a larger memory, where a page is rarely
rewritten, so a bit lost in a race is not covered up by a later write.
"""

import math
import time

import numpy as np
import pytest

from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.workload import Workload, WorkloadSpec
from kernels import pages

PAGE = 4096
ROUNDS = 20
ROUND_S = 0.02


def copy_dirty(guest, replica, out):
    dirty = guest.harvest(out)
    buffer = np.empty(dirty.size * PAGE, dtype=np.uint8)
    pages.gather(guest.data, PAGE, dirty, buffer)
    pages.scatter(replica, PAGE, dirty, buffer)
    return dirty.size


@pytest.mark.parametrize("n_pages, rate, pattern, write_size", [
    (512, math.inf, "uniform", 8),
    (512, math.inf, "sequential", PAGE),
    (16384, 400_000, "uniform", 8),
    (16384, 400_000, "hotset", 64),
])
def test_replica_is_byte_identical_after_every_round(n_pages, rate, pattern, write_size):
    guest = GuestMemory(GuestSpec(n_pages * PAGE, fill="random", seed=2))
    replica = guest.data.copy()
    guest.harvest()
    out = np.empty(guest.n_pages, dtype=np.int64)
    workload = Workload(guest, WorkloadSpec(vcpus=2, rate_pages_per_s=rate, pattern=pattern,
                                            write_size=write_size, seed=9))
    copied = 0
    with workload:
        for _ in range(ROUNDS):
            deadline = time.monotonic() + ROUND_S
            while time.monotonic() < deadline:
                copied += copy_dirty(guest, replica, out)
            workload.pause()
            copy_dirty(guest, replica, out)
            assert guest.dirty_count() == 0
            assert pages.memory_digest(replica, PAGE) == guest.digest()
            assert np.array_equal(replica, guest.data)
            workload.resume()
    assert workload.writes > 20_000 and copied > 1000  # the race was really exercised
