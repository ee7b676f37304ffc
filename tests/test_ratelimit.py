import math
import random
import sys
import threading

import pytest

from emulator.source.ratelimit import (
    SMB_BANDWIDTH_LIMIT_FACTOR_PCT,
    TokenBucket,
    Unlimited,
    default_burst_bytes,
    make_limiter,
    percent_of_link,
)


class FakeTime:
    """A clock that only moves when the code under test sleeps (or the test says so)."""

    def __init__(self, now_s: float = 0.0) -> None:
        self.now_s = now_s
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds


def bucket(rate=1024.0, burst=512, now_s=0.0):
    fake = FakeTime(now_s)
    return TokenBucket(rate, burst, clock=fake.clock, sleep=fake.sleep), fake


def test_starts_full():
    limiter, fake = bucket()
    assert limiter.tokens() == 512.0
    assert limiter.delay_s(0) == 0.0
    assert limiter.delay_s(512) == 0.0
    assert limiter.delay_s(10_000) == 0.0  # larger than the burst: waits for a full bucket
    assert limiter.consume(512) == 0.0
    assert fake.sleeps == []
    assert limiter.tokens() == 0.0


def test_waits_for_refill():
    limiter, fake = bucket()
    limiter.consume(512)
    assert limiter.delay_s(256) == 0.25
    assert limiter.consume(256) == 0.25
    assert fake.sleeps == [0.25]
    assert fake.now_s == 0.25
    assert limiter.tokens() == 0.0
    fake.now_s += 0.125  # 128 bytes of refill
    assert limiter.tokens() == 128.0
    assert limiter.delay_s(256) == 0.125


def test_settle_waits_off_the_debt_and_nothing_more():
    limiter, fake = bucket()
    assert limiter.settle() == 0.0  # a full bucket owes nothing
    limiter.consume(512 + 2048)  # passes on a full bucket, 2048 bytes into debt
    assert fake.sleeps == [] and limiter.tokens() == -2048.0
    assert limiter.settle() == 2.0
    assert fake.sleeps == [2.0] and limiter.tokens() == 0.0
    assert limiter.settle() == 0.0 and fake.sleeps == [2.0]
    # 512 + 2048 bytes took 2 s: over the whole exchange, burst + rate x time exactly
    assert limiter.consumed_bytes == 512 + 1024 * fake.now_s
    assert Unlimited().settle() == 0.0


def test_delay_changes_nothing():
    limiter, fake = bucket()
    limiter.consume(512)
    assert limiter.delay_s(100) == limiter.delay_s(100) == 100 / 1024
    assert limiter.consumed_bytes == 512
    assert limiter.tokens() == 0.0


def test_message_larger_than_burst_passes_into_debt():
    limiter, fake = bucket()
    assert limiter.consume(2048) == 0.0
    assert limiter.tokens() == -1536.0
    assert limiter.delay_s(1) == 1537 / 1024
    assert limiter.consume(512) == 2.0  # pay 1536 of debt, then 512 for itself
    assert fake.now_s == 2.0
    assert limiter.tokens() == 0.0
    # A second oversized message waits for a full bucket (512 tokens), not for 2048.
    assert limiter.consume(2048) == 0.5
    assert limiter.tokens() == -1536.0


def test_refill_is_capped_at_burst():
    limiter, fake = bucket()
    limiter.consume(512)
    fake.now_s = 100.0
    assert limiter.tokens() == 512.0
    assert limiter.consume(1024) == 0.0
    assert limiter.tokens() == -512.0


def test_long_run_rate():
    limiter, fake = bucket()
    for _ in range(100):
        limiter.consume(1000)
    # First message from the full bucket; each later one waits 1000 bytes' worth.
    assert fake.now_s == 99 * 1000 / 1024
    assert limiter.consumed_bytes == 100_000
    assert fake.sleeps == [0.9765625] * 99


def test_reservations_queue_when_the_clock_does_not_move():
    # Sleep recorded but the clock frozen: as if three threads asked at the same instant.
    sleeps: list[float] = []
    limiter = TokenBucket(1024.0, 512, clock=lambda: 5.0, sleep=sleeps.append)
    assert [limiter.consume(512) for _ in range(3)] == [0.0, 0.5, 1.0]
    assert sleeps == [0.5, 1.0]
    assert limiter.tokens() == -1024.0


def test_clock_going_backwards_adds_no_tokens():
    limiter, fake = bucket(now_s=10.0)
    limiter.consume(512)
    fake.now_s = 9.0
    assert limiter.tokens() == 0.0


def test_zero_bytes_is_free():
    limiter, fake = bucket()
    limiter.consume(2048)
    assert limiter.consume(0) == 0.0
    assert limiter.delay_s(0) == 0.0
    assert fake.sleeps == []


@pytest.mark.parametrize("rate", [0, -1.0, math.nan, math.inf])
def test_rate_validation(rate):
    with pytest.raises(ValueError, match="rate_bytes_per_s must be a finite number > 0"):
        TokenBucket(rate, 512)


def test_other_validation():
    with pytest.raises(TypeError, match="rate_bytes_per_s must be a number, got None"):
        TokenBucket(None, 512)
    with pytest.raises(ValueError, match="burst_bytes must be an integer >= 1, got 0"):
        TokenBucket(1000.0, 0)
    with pytest.raises(TypeError, match="burst_bytes must be an integer, got 1.5"):
        TokenBucket(1000.0, 1.5)
    limiter, _ = bucket()
    with pytest.raises(ValueError, match="nbytes must be an integer >= 0, got -1"):
        limiter.consume(-1)
    with pytest.raises(ValueError, match="nbytes must be an integer >= 0"):
        limiter.delay_s(1.5)


def test_unlimited():
    limiter = make_limiter(None)
    assert isinstance(limiter, Unlimited)
    assert isinstance(TokenBucket.unlimited(), Unlimited)
    assert limiter.rate_bytes_per_s is None
    assert limiter.delay_s(10**12) == 0.0
    assert limiter.consume(10**12) == 0.0
    assert limiter.consume(5) == 0.0
    assert limiter.consumed_bytes == 10**12 + 5
    assert limiter.tokens() == math.inf
    with pytest.raises(ValueError, match="nbytes"):
        limiter.consume(-1)


def test_make_limiter_default_burst():
    assert default_burst_bytes(1e9) == 10_000_000  # 10 ms at 1 GB/s
    assert default_burst_bytes(1000.0) == 4096  # never below one page
    limiter = make_limiter(1e9)
    assert isinstance(limiter, TokenBucket)
    assert (limiter.rate_bytes_per_s, limiter.burst_bytes) == (1e9, 10_000_000)
    fake = FakeTime()
    limiter = make_limiter(1024.0, 512, clock=fake.clock, sleep=fake.sleep)
    limiter.consume(1024)
    limiter.consume(1)
    assert fake.sleeps == [513 / 1024]


def test_percent_of_link():
    assert SMB_BANDWIDTH_LIMIT_FACTOR_PCT == 25.0
    assert percent_of_link(1.25e9) == 312_500_000.0  # 10 Gbit/s NIC -> 2.5 Gbit/s
    assert percent_of_link(1e9, 50) == 5e8
    assert percent_of_link(1e9, 100) == 1e9
    for pct in (0, -5, 101, math.nan):
        with pytest.raises(ValueError, match=r"pct must be a number in \(0, 100\]"):
            percent_of_link(1e9, pct)
    with pytest.raises(ValueError, match="link_bytes_per_s must be a finite number > 0"):
        percent_of_link(0, 25)


def test_threads_share_one_bucket_without_losing_debits():
    burst = 10**12
    limiter = TokenBucket(1.0, burst, clock=lambda: 0.0, sleep=lambda seconds: None)
    rng = random.Random(7)
    plans = [[rng.randrange(1, 1 << 20) for _ in range(2000)] for _ in range(8)]
    barrier = threading.Barrier(len(plans))

    def run(sizes):
        barrier.wait()
        for size in sizes:
            limiter.consume(size)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, to give races a chance
    try:
        threads = [threading.Thread(target=run, args=(sizes,)) for sizes in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old_interval)
    total = sum(map(sum, plans))
    assert limiter.consumed_bytes == total
    assert limiter.tokens() == burst - total


def _draw(balance, rate, chunks, chunk_bytes, started):
    """In a child process: take `chunks` of `chunk_bytes` from the bucket on `balance`."""
    started.wait(30)
    bucket = make_limiter(rate, shared=balance)
    for _ in range(chunks):
        bucket.consume(chunk_bytes)


def test_processes_drawing_from_one_shared_balance_hold_one_rate():
    import multiprocessing
    import time

    from emulator.source.ratelimit import SharedBalance

    context = multiprocessing.get_context("spawn")
    balance, started = SharedBalance(context), context.Event()
    rate, chunks, chunk_bytes = 8e6, 64, 64 * 1024  # 3 processes x 4 MiB at 8 MB/s: about 1.57 s
    children = [context.Process(target=_draw, args=(balance, rate, chunks, chunk_bytes, started))
                for _ in range(3)]
    for child in children:
        child.start()
    time.sleep(0.5)  # the children have started their interpreters
    began = time.monotonic()
    started.set()
    for child in children:
        child.join(30)
    elapsed = time.monotonic() - began
    total = 3 * chunks * chunk_bytes
    assert balance.consumed_bytes == total
    expected = (total - default_burst_bytes(rate) - chunk_bytes) / rate  # what the burst and last debit allow
    assert expected * 0.97 <= elapsed <= expected * 1.3 + 0.5, (elapsed, expected)


def test_unlimited_counts_into_a_shared_balance():
    from emulator.source.ratelimit import SharedBalance

    balance = SharedBalance()
    make_limiter(None, shared=balance).consume(1000)
    make_limiter(None, shared=balance).consume(24)
    assert balance.consumed_bytes == 1024
