import math

import numpy as np
import pytest

from kernels import bitmap, writers
from tests import reference

PAGE = 4096


def make(n_pages, fill=0):
    memory = np.full(n_pages * PAGE, fill, dtype=np.uint8)
    return memory, bitmap.new_bitmap(n_pages)


@pytest.mark.parametrize("pattern", ["uniform", "hotset", "sequential", "zipf"])
@pytest.mark.parametrize("write_size", [8, 64, PAGE])
def test_writer_matches_reference(pattern, write_size):
    n_pages = 97  # not a power of two: exercises the ends of memory and of the last bitmap word
    memory, bits = make(n_pages)
    log = np.empty(3000, dtype=np.int64)
    writer = writers.WriterPattern(memory, PAGE, bits, pattern, seed=11, stream=2, write_size=write_size,
                                   hot_fraction=0.2, hot_share=0.8, stride=5, zipf_s=1.2, start_page=90, log=log)
    state = int(writer.state[0])
    writer.write(1000)
    writer.write(2000)

    ref_memory, ref_bits = make(n_pages)
    expected = reference.writer(ref_memory, PAGE, ref_bits, pattern, state, 3000, write_size=write_size,
                                hot_pages=writer.hot_pages, hot_share=0.8, stride=5, spread=writer.spread,
                                offset=writer.offset, cdf=writer.cdf, cursor=90)
    assert writer.logged().tolist() == expected
    assert np.array_equal(bits, ref_bits)
    assert np.array_equal(memory, ref_memory)
    assert max(expected) == n_pages - 1 or pattern == "hotset"  # the last page is reachable


def test_every_write_changes_the_page_and_sets_its_bit():
    memory, bits = make(64)
    writer = writers.WriterPattern(memory, PAGE, bits, "sequential", log=np.empty(64, dtype=np.int64))
    writer.write(64)
    assert bitmap.count_dirty(bits) == 64
    assert all(memory[p * PAGE : (p + 1) * PAGE].any() for p in range(64))


def test_hotset_concentrates_writes():
    memory, bits = make(1000)
    log = np.empty(20000, dtype=np.int64)
    writer = writers.WriterPattern(memory, PAGE, bits, "hotset", hot_fraction=0.1, hot_share=0.9, log=log, seed=4)
    writer.write(20000)
    hot = {(rank * writer.spread + writer.offset) % 1000 for rank in range(writer.hot_pages)}
    share = np.isin(writer.logged(), list(hot)).mean()
    assert writer.hot_pages == 100
    assert 0.88 < share < 0.92  # 90% expected; binomial sd 0.2%


@pytest.mark.parametrize("writes_per_page", [0.25, 1.0, 3.0])
def test_uniform_distinct_pages_follow_occupancy_law(writes_per_page):
    n_pages = 20000
    memory, bits = make(n_pages)
    w = int(writes_per_page * n_pages)
    writers.WriterPattern(memory, PAGE, bits, "uniform", seed=5).write(w)
    expected = n_pages * (1 - math.exp(-w / n_pages))
    # variance of the number of occupied bins is below n*e^{-w/n}(1-e^{-w/n}) -> use 5 sd of that bound
    sd = math.sqrt(n_pages * math.exp(-w / n_pages) * (1 - math.exp(-w / n_pages)))
    assert abs(bitmap.count_dirty(bits) - expected) < 5 * sd


def test_seeds_reproduce_and_streams_differ():
    runs = []
    for seed, stream in [(1, 0), (1, 0), (1, 1), (2, 0)]:
        memory, bits = make(50)
        writer = writers.WriterPattern(memory, PAGE, bits, "uniform", seed=seed, stream=stream,
                                       log=np.empty(100, dtype=np.int64))
        writer.write(100)
        runs.append(writer.logged().tolist())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2] and runs[0] != runs[3]


@pytest.mark.parametrize("kwargs, message", [
    ({"pattern": "bursty"}, "unknown pattern"),
    ({"write_size": 12}, "multiple of 8"),
    ({"write_size": 2 * PAGE}, "multiple of 8"),
    ({"hot_fraction": 0}, "hot_fraction"),
    ({"stride": 0}, "stride"),
    ({"pattern": "zipf", "zipf_s": 0}, "zipf exponent"),
])
def test_bad_parameters_are_refused(kwargs, message):
    memory, bits = make(8)
    with pytest.raises(ValueError, match=message):
        writers.WriterPattern(memory, PAGE, bits, **kwargs)


@pytest.mark.parametrize("pattern", ["uniform", "sequential"])
def test_a_writer_stops_before_a_missing_page_and_makes_that_same_write_once_it_arrives(pattern):
    n_pages = 97
    memory, bits = make(n_pages)
    missing = bitmap.new_bitmap(n_pages)
    bitmap.mark_dirty(missing, np.arange(0, n_pages, 3))  # a third of memory has not arrived
    writer = writers.WriterPattern(memory, PAGE, bits, pattern, seed=11, stream=1, stride=5, missing=missing)
    made, stops = 0, 0
    while made < 3000:
        asked = 3000 - made
        done = writer.write(asked)
        made += done
        if done < asked:
            page = writer.pending_page
            assert page % 3 == 0 and not memory[page * PAGE : (page + 1) * PAGE].any()  # never touched while missing
            assert writer.write(10) == 0 and writer.pending_page == page  # still missing: still waiting, no write
            bitmap.clear_pages(missing, np.array([page]))  # it arrives
            stops += 1
    assert stops > 10 and writer.pending_page is None
    unhindered_memory, unhindered_bits = make(n_pages)
    writers.WriterPattern(unhindered_memory, PAGE, unhindered_bits, pattern, seed=11, stream=1, stride=5).write(3000)
    assert np.array_equal(memory, unhindered_memory) and np.array_equal(bits, unhindered_bits)  # the same writes


def test_clear_pages_clears_only_their_bits():
    bits = bitmap.new_bitmap(130)
    bitmap.mark_dirty(bits, np.arange(130))
    bitmap.clear_pages(bits, np.array([0, 63, 64, 129]))
    assert bitmap.harvest(bits).tolist() == [p for p in range(130) if p not in (0, 63, 64, 129)]
    with pytest.raises(IndexError):
        bitmap.clear_pages(bits, np.array([192]))
