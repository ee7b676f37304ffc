import math

import pytest

from emulator.core.units import (
    compact_size,
    format_bytes,
    format_count,
    format_duration,
    format_rate,
    parse_bandwidth,
    parse_dirty_rate,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        ("4096", 4096),
        ("512B", 512),
        ("512MiB", 512 * 2**20),
        ("4GiB", 4 * 2**30),
        ("1TiB", 2**40),
        ("2KiB", 2048),
        ("1KB", 1000),
        ("3MB", 3_000_000),
        ("2GB", 2_000_000_000),
        ("1TB", 10**12),
        ("4G", 4 * 2**30),  # bare letter: binary, as QEMU's -m
        ("4k", 4096),
        ("16M", 16 * 2**20),
        ("1T", 2**40),
        ("512MIB", 512 * 2**20),  # a prefix reads in any case; only b/B matters
        ("1gB", 10**9),
        ("1.5GiB", 3 * 2**29),
        ("0.5KiB", 512),
        ("0.1GB", 100_000_000),  # exact, no float error
        ("1e3", 1000),
        ("  512 MiB  ", 512 * 2**20),
        ("+8K", 8192),
        (".5MiB", 2**19),
        (1073741824, 2**30),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected
    assert isinstance(parse_size(text), int)


def test_parse_size_error_names_value_expectation_and_example():
    with pytest.raises(ValueError) as info:
        parse_size("12XB")
    assert str(info.value) == (
        "invalid size '12XB': unknown unit 'XB'; expected a number with a unit such as"
        " 512MiB, 4GiB or 1073741824"
    )


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty value"),
        ("   ", "empty value"),
        ("-1", "must not be negative"),
        ("-4GiB", "must not be negative"),
        ("nan", "expected a number"),
        ("inf", "expected a number"),
        ("GiB", "expected a number"),
        ("1.5B", "not a whole number of bytes"),
        ("0.1KiB", "not a whole number of bytes"),
        ("4 GiB/s", "unknown unit"),
        ("1,5GiB", "expected a number"),
        ("1Gi", "unknown unit"),
    ],
)
def test_parse_size_refuses(text, problem):
    with pytest.raises(ValueError, match="invalid size") as info:
        parse_size(text)
    assert problem in str(info.value)
    assert repr(text) in str(info.value)
    assert "512MiB" in str(info.value)


def test_parse_size_refuses_non_numbers():
    for value in (True, None, 1.5, [1]):
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("100MB/s", 100e6),
        ("500MiB/s", 500 * 2**20),
        ("1B/s", 1.0),
        ("1kB/s", 1000.0),
        ("2GiB/s", 2.0 * 2**30),
        ("10Gbit/s", 10e9 / 8),
        ("1Gbps", 1e9 / 8),
        ("100Mbps", 100e6 / 8),
        ("8Kbps", 1000.0),
        ("8kbit/s", 1000.0),
        ("800bps", 100.0),
        ("8bit/s", 1.0),
        ("8Mibit/s", float(2**20)),
        ("2.5Gbit/s", 2.5e9 / 8),
        (1000000, 1e6),  # a number, not text: bytes/s
        ("1 GB/s", 1e9),
    ],
)
def test_parse_bandwidth(text, expected):
    assert parse_bandwidth(text) == expected


@pytest.mark.parametrize("text", ["unlimited", "UNLIMITED", " none ", "off"])
def test_parse_bandwidth_unlimited(text):
    assert parse_bandwidth(text) is None


@pytest.mark.parametrize(
    "text, problem",
    [
        ("0", "must be positive"),
        ("0MB/s", "must be positive"),
        ("-1MB/s", "must not be negative"),
        ("", "empty value"),
        ("100Mb/s", "ambiguous unit 'Mb/s'"),
        ("100MBps", "ambiguous unit 'MBps'"),
        ("100MB", "unknown unit 'MB'"),
        ("10G/s", "unknown unit 'G/s'"),
        ("fast", "expected a positive rate"),
        ("nan", "expected a positive rate"),
        ("100", "give a unit (100MB/s or 100Mbit/s)"),
    ],
)
def test_parse_bandwidth_refuses(text, problem):
    with pytest.raises(ValueError, match="invalid bandwidth") as info:
        parse_bandwidth(text)
    assert problem in str(info.value)
    assert "10Gbit/s" in str(info.value)


def test_parse_bandwidth_ambiguous_message_suggests_both():
    with pytest.raises(ValueError) as info:
        parse_bandwidth("100Mb/s")
    assert "write Mbit/s for bits or MB/s for bytes" in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("20000pages/s", 20000.0),
        ("20000 pages/s", 20000.0),
        ("1page/s", 1.0),
        ("20000", 20000.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("100MiB/s", 100 * 2**20 / 4096),
        ("4096B/s", 1.0),
        ("1GB/s", 1e9 / 4096),
    ],
)
def test_parse_dirty_rate(text, expected):
    assert parse_dirty_rate(text, 4096) == expected


def test_parse_dirty_rate_max_and_page_size():
    assert parse_dirty_rate("max", 4096) == math.inf
    assert parse_dirty_rate("MAX", 4096) == math.inf
    assert parse_dirty_rate("1MiB/s", 2**16) == 16.0


def test_parse_dirty_rate_refuses():
    with pytest.raises(ValueError, match=r"invalid dirty rate '-5': must not be negative"):
        parse_dirty_rate("-5", 4096)
    with pytest.raises(ValueError, match=r"unknown unit 'pages'.*20000pages/s"):
        parse_dirty_rate("5pages", 4096)
    with pytest.raises(ValueError, match="invalid dirty rate ''"):
        parse_dirty_rate("", 4096)
    with pytest.raises(ValueError, match="invalid page size 0"):
        parse_dirty_rate("10", 0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("300ms", 0.3),
        ("2s", 2.0),
        ("1.5min", 90.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("250ns", 250e-9),
        ("1h", 3600.0),
        ("2 sec", 2.0),
        ("0", 0.0),
        ("3", 3.0),  # bare number: seconds by default
        ("1.25", 1.25),
        ("300MS", 0.3),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


def test_parse_duration_default_unit():
    assert parse_duration("300", default_unit="ms") == 0.3
    assert parse_duration("2s", default_unit="ms") == 2.0  # an explicit unit wins
    with pytest.raises(ValueError, match="invalid default unit 'fortnight'"):
        parse_duration("1", default_unit="fortnight")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty value"),
        ("-1s", "must not be negative"),
        ("1m", "unknown unit 'm'"),  # minutes or metres? refused
        ("soon", "expected a duration such as 300ms"),
        ("nan", "expected a duration"),
    ],
)
def test_parse_duration_refuses(text, problem):
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(text)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (2**30, "1.00 GiB"),
        (512 * 2**20, "512 MiB"),
        (int(12.5 * 2**20), "12.5 MiB"),
        (2**20 - 1, "1.00 MiB"),  # 1023.999 KiB rounds up into the next unit
        (3 * 2**40, "3.00 TiB"),
        (2**50, "1.00 PiB"),
        (0.5, "0.50 B"),
    ],
)
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    "rate, expected",
    [
        (2.31e9, "2.31 GB/s"),
        (512e6, "512 MB/s"),
        (12.5e6, "12.5 MB/s"),
        (950, "950 B/s"),
        (999.6e6, "1.00 GB/s"),
        (0, "0.00 B/s"),
        (1.25e12, "1.25 TB/s"),
        (None, "unlimited"),
        (math.inf, "unlimited"),
    ],
)
def test_format_rate(rate, expected):
    assert format_rate(rate) == expected


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (0.312, "312 ms"),
        (4.21, "4.21 s"),
        (0, "0 s"),
        (0.0125, "12.5 ms"),
        (0.0005, "500 us"),
        (2.5e-7, "250 ns"),
        (0.9996, "1.00 s"),
        (59.4, "59.4 s"),
        (59.96, "1 min 00 s"),
        (125, "2 min 05 s"),
        (3725, "1 h 02 min"),
    ],
)
def test_format_duration(seconds, expected):
    assert format_duration(seconds) == expected


def test_format_refuses_negative_and_nan():
    for formatter in (format_bytes, format_rate, format_duration):
        with pytest.raises(ValueError, match="expected a number >= 0"):
            formatter(-1)
        with pytest.raises(ValueError, match="expected a number >= 0"):
            formatter(math.nan)


@pytest.mark.parametrize("n, noun, text", [(1, "vCPU", "1 vCPU"), (2, "vCPU", "2 vCPUs"), (0, "pass", "0 passes"),
                                           (1, "pass", "1 pass"), (12_000, "harvest", "12,000 harvests")])
def test_format_count_says_the_plural_right(n, noun, text):
    assert format_count(n, noun) == text


@pytest.mark.parametrize("n_bytes, text", [(1 << 30, "1GiB"), (4096, "4KiB"), (3 << 40, "3TiB"), (1000, "1000B"),
                                           (0, "0B")])
def test_compact_size_is_exact_and_typeable(n_bytes, text):
    assert compact_size(n_bytes) == text
    assert parse_size(text) == n_bytes



# case: only the b's matters (B a byte, a lone b ambiguous), in sizes and rates alike ---------------------------------
@pytest.mark.parametrize("text, n_bytes", [("4g", 4 * 2**30), ("512mIB", 512 * 2**20), ("2kB", 2000), ("1T", 2**40)])
def test_a_size_unit_reads_in_any_case_but_its_b(text, n_bytes):
    assert parse_size(text) == n_bytes


@pytest.mark.parametrize("text, problem", [
    ("1Gib", "ambiguous unit 'Gib' (a size is in bytes: write GiB)"),
    ("512mb", "ambiguous unit 'mb' (a size is in bytes: write MB)"),
    ("8kib", "ambiguous unit 'kib' (a size is in bytes: write KiB)"),
    ("512b", "ambiguous unit 'b' (a size is in bytes: write B)"),
])
def test_a_size_in_bits_is_refused_as_a_rate_in_bits_is(text, problem):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(info.value) == (f"invalid size {text!r}: {problem}; expected a number with a unit such as 512MiB, "
                               "4GiB or 1073741824")


@pytest.mark.parametrize("text, bytes_per_s", [("100mB/s", 100e6), ("1GIB/s", 2.0**30), ("10gbit/s", 10e9 / 8),
                                               ("1GbPS", 1e9 / 8), ("8KIbit/s", 1024.0)])
def test_a_rate_unit_reads_in_any_case_but_its_b(text, bytes_per_s):
    assert parse_bandwidth(text) == bytes_per_s


@pytest.mark.parametrize("text, problem", [
    ("10GBIT/s", "unknown unit 'GBIT/s'"),  # B is a byte here too
    ("100mBPS", "ambiguous unit 'mBPS' (write mB/s or mbps)"),
])
def test_a_rate_with_a_byte_where_a_bit_is_meant_is_refused(text, problem):
    with pytest.raises(ValueError) as info:
        parse_bandwidth(text)
    assert f"invalid bandwidth {text!r}: {problem};" in str(info.value)
