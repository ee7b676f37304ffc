import numpy as np

from emulator.dataplane.digest import RunningDigest
from kernels import pages

PAGE = 4096


def test_running_digest_tracks_memory_through_updates():
    memory = np.zeros(64 * PAGE, dtype=np.uint8)
    running = RunningDigest(64, PAGE)
    assert running.value() == pages.memory_digest(memory, PAGE)
    rng = np.random.default_rng(1)
    for _ in range(20):
        chosen = np.unique(rng.integers(0, 64, 10))
        data = rng.integers(0, 256, chosen.size * PAGE, dtype=np.uint8)
        if rng.random() < 0.3:
            data[:] = 0
            running.update_zero(chosen)
            pages.scatter(memory, PAGE, chosen, data)
        else:
            running.absorb(pages.scatter_and_digest(memory, PAGE, chosen, data, running.table))
        assert running.value() == pages.memory_digest(memory, PAGE)


def test_a_page_left_stale_changes_the_digest():
    memory = np.zeros(8 * PAGE, dtype=np.uint8)
    running = RunningDigest(8, PAGE)
    data = np.ones(PAGE, dtype=np.uint8)
    elsewhere = np.zeros_like(memory)
    running.absorb(pages.scatter_and_digest(elsewhere, PAGE, [3], data, running.table))
    assert running.value() != pages.memory_digest(memory, PAGE)  # memory never got the page
    pages.scatter(memory, PAGE, [3], data)
    assert running.value() == pages.memory_digest(memory, PAGE)
