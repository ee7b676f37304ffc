"""Human units: parse sizes, rates and durations given on the command line; format them back.

Conventions decided here (the CLI and the README rely on them):

- Case: only the b's matters, in sizes and rates alike. ``B`` is a byte; a lone ``b``,
  which people write for bits and for bytes, is refused as ambiguous ("1Gib", "512mb",
  "Mb/s"), as is "MBps": bits are spelled ``bit`` or ``bps``. Everything else reads in
  any case: "4g" is 4G, "512MIB" 512MiB, "300MS" 300ms.
- Sizes: ``B``; binary ``KiB MiB GiB TiB``; decimal ``KB MB GB TB``; a bare ``K M G T``
  (no ``B``) is binary, as in QEMU's ``-m 4G``; a plain number is bytes. Fractions are
  allowed when they come to a whole number of bytes ("1.5GiB", not "1.5B").
- Bandwidths are bytes/s unless they say bits. ``<size unit>/s`` takes the size prefixes
  above (``MB/s`` = 10^6 B/s, ``MiB/s`` = 2^20 B/s); ``bit/s`` and ``bps`` forms are bits
  (``Gbit/s`` = ``Gbps`` = 10^9/8 B/s; ``Kibit/s`` style binary prefixes also work). A
  plain number is refused on the command line (``100`` would be 100 B/s, never what anyone
  means); from Python, a number is bytes/s. "unlimited" means no limit.
- Dirty rates are page writes per second: "20000", "20000pages/s", a byte rate such as
  "100MiB/s" (divided by the page size), or "max" (writers run flat out).
- Durations: ``ns us ms s min h`` (also ``µs``, ``sec``, ``hour``...); a bare number is in
  ``default_unit``, seconds unless the caller says otherwise (a downtime limit is read in
  milliseconds, as QEMU takes it).
- Formatting: three significant digits; sizes in binary units (memory is sized in GiB),
  rates in decimal units (network people read GB/s and Gbit/s).

Bad input raises ``ValueError`` naming the value, what was expected and an example; the
CLI prefixes the option name.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = [
    "compact_size",
    "format_count",
    "format_bytes",
    "format_duration",
    "format_rate",
    "parse_bandwidth",
    "parse_dirty_rate",
    "parse_duration",
    "parse_size",
]

_KIB = 1024
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": _KIB,
    "m": _KIB**2,
    "g": _KIB**3,
    "t": _KIB**4,
    "kib": _KIB,
    "mib": _KIB**2,
    "gib": _KIB**3,
    "tib": _KIB**4,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
# Prefixes in front of "bit/s" / "bps": decimal as network rates are quoted, binary if asked.
_BIT_PREFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": _KIB,
    "mi": _KIB**2,
    "gi": _KIB**3,
    "ti": _KIB**4,
}
_DURATION_UNITS: dict[str, Fraction] = {}
for _names, _factor in (
    (("ns", "nsec"), Fraction(1, 10**9)),
    (("us", "µs", "μs", "usec"), Fraction(1, 10**6)),
    (("ms", "msec"), Fraction(1, 10**3)),
    (("s", "sec", "secs", "second", "seconds"), Fraction(1)),
    (("min", "mins", "minute", "minutes"), Fraction(60)),
    (("h", "hr", "hour", "hours"), Fraction(3600)),
):
    for _name in _names:
        _DURATION_UNITS[_name] = _factor
NO_LIMIT_WORDS = ("unlimited", "none", "off")
_PAGE_RATE_UNITS = ("pages/s", "page/s")


def means_no_limit(text: object) -> bool:
    """True for a word that lifts a limit (NO_LIMIT_WORDS, any case and spacing)."""
    return isinstance(text, str) and text.strip().lower() in NO_LIMIT_WORDS


_NUMBER_AND_UNIT = re.compile(
    r"^(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>.*?)$"
)

_SIZE_EXPECTED = "a number with a unit such as 512MiB, 4GiB or 1073741824"
_BANDWIDTH_EXPECTED = (
    "a positive rate such as 100MB/s, 500MiB/s, 10Gbit/s or 1Gbps, or 'unlimited'"
)
_DIRTY_RATE_EXPECTED = "a rate such as 20000pages/s, 20000, 100MiB/s, 0 or max"
_DURATION_EXPECTED = "a duration such as 300ms, 2s, 1.5min or 500us"


class _Problem(Exception):
    """What is wrong with a value; the public parser adds the value and an example."""


def _invalid(kind: str, text: object, expected: str, problem: str = "") -> ValueError:
    detail = f"{problem}; " if problem else ""
    return ValueError(f"invalid {kind} {text!r}: {detail}expected {expected}")


def _split(text: object) -> tuple[Fraction, str]:
    """Split "1.5 GiB" into (Fraction(3, 2), "GiB"); refuse empty, negative, NaN, inf."""
    if isinstance(text, bool):
        raise _Problem("a boolean is not a number")
    if isinstance(text, (int, float)):
        text = repr(text)
    if not isinstance(text, str):
        raise _Problem(f"got a {type(text).__name__}, not a string")
    stripped = text.strip()
    if not stripped:
        raise _Problem("empty value")
    if stripped.startswith("-"):
        raise _Problem("must not be negative")
    match = _NUMBER_AND_UNIT.match(stripped.lstrip("+"))
    if match is None:
        raise _Problem("")
    return Fraction(match["number"]), match["unit"]


def _fold_case(unit: str) -> str:
    """`unit` in lower case but its b and B, the one letter whose case matters (module doc)."""
    return "".join(letter if letter in "bB" else letter.lower() for letter in unit)


def parse_size(text: str | int) -> int:
    """Parse a memory size ("512MiB", "4G", "1.5GiB", "1073741824") into bytes."""
    try:
        number, unit = _split(text)
        factor = _SIZE_UNITS.get(unit.lower())
        if factor is None:
            raise _Problem(f"unknown unit {unit!r}")
        if "b" in unit:
            prefix = unit[:-1]  # the b of a known unit is its last letter
            raise _Problem(f"ambiguous unit {unit!r} (a size is in bytes: write {prefix[:1].upper()}{prefix[1:]}B)")
        value = number * factor
        if value.denominator != 1:
            raise _Problem(f"{float(value):g} bytes is not a whole number of bytes")
        return int(value)
    except _Problem as problem:
        raise _invalid("size", text, _SIZE_EXPECTED, str(problem)) from None


def _rate_bytes_per_s(number: Fraction, unit: str) -> Fraction:
    """Bytes/s for a number and a rate unit ("", "MB/s", "Gbit/s", "Mbps", ...)."""
    folded = _fold_case(unit)
    if folded == "":
        return number
    if folded.endswith("bps"):
        prefix = folded[: -len("bps")]
        if prefix in _BIT_PREFIXES:
            return number * _BIT_PREFIXES[prefix] / 8
    elif folded.endswith("Bps"):
        raise _Problem(f"ambiguous unit {unit!r} (write {unit[:-3]}B/s or {unit[:-3]}bps)")
    elif folded.endswith("/s"):
        base = folded[: -len("/s")]
        if base.endswith("bit"):
            prefix = base[: -len("bit")]
            if prefix in _BIT_PREFIXES:
                return number * _BIT_PREFIXES[prefix] / 8
        elif base.endswith("b"):
            raise _Problem(
                f"ambiguous unit {unit!r} (write {unit[:-3]}bit/s for bits"
                f" or {unit[:-3]}B/s for bytes)"
            )
        elif base.endswith("B") and base.lower() in _SIZE_UNITS:
            return number * _SIZE_UNITS[base.lower()]
    raise _Problem(f"unknown unit {unit!r}")


def parse_bandwidth(text: str | float) -> float | None:
    """Parse a bandwidth ("100MB/s", "10Gbit/s", "1Gbps", "500MiB/s") into bytes/s.

    Returns None for "unlimited" (also "none", "off"). Zero is refused: a zero limit would
    never send anything; say "unlimited" to lift the limit.
    """
    if means_no_limit(text):
        return None
    try:
        number, unit = _split(text)
        rate = _rate_bytes_per_s(number, unit)
        if rate == 0:
            raise _Problem("must be positive")
        if isinstance(text, str) and unit == "":
            raise _Problem(f"a bare number cannot be meant: {text.strip()} B/s would take days per GiB; "
                           f"give a unit ({text.strip()}MB/s or {text.strip()}Mbit/s)")
        return float(rate)
    except _Problem as problem:
        raise _invalid("bandwidth", text, _BANDWIDTH_EXPECTED, str(problem)) from None


def parse_dirty_rate(text: str | float, page_size: int) -> float:
    """Parse a guest dirty rate into page writes per second.

    "20000pages/s" and a bare "20000" are pages/s; a byte rate ("100MiB/s") is divided by
    ``page_size`` (bytes); "max" is ``math.inf`` (writers run flat out); "0" is idle.
    """
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size <= 0:
        raise ValueError(f"invalid page size {page_size!r}: expected a positive integer")
    if isinstance(text, str) and text.strip().lower() == "max":
        return math.inf
    try:
        number, unit = _split(text)
        if unit == "" or unit.lower() in _PAGE_RATE_UNITS:
            return float(number)
        return float(_rate_bytes_per_s(number, unit) / page_size)
    except _Problem as problem:
        raise _invalid("dirty rate", text, _DIRTY_RATE_EXPECTED, str(problem)) from None


def parse_duration(text: str | float, default_unit: str = "s") -> float:
    """Parse a duration ("300ms", "2s", "1.5min", "500us") into seconds.

    A bare number is in ``default_unit`` (any unit this parser knows, e.g. "ms").
    """
    if default_unit.lower() not in _DURATION_UNITS:
        raise ValueError(
            f"invalid default unit {default_unit!r}: expected one of ns, us, ms, s, min, h"
        )
    try:
        number, unit = _split(text)
        factor = _DURATION_UNITS.get((unit or default_unit).lower())
        if factor is None:
            raise _Problem(f"unknown unit {unit!r}")
        return float(number * factor)
    except _Problem as problem:
        raise _invalid("duration", text, _DURATION_EXPECTED, str(problem)) from None


def _check_displayable(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cannot format {value!r} as {what}: expected a number")
    if math.isnan(value) or value < 0:
        raise ValueError(f"cannot format {value!r} as {what}: expected a number >= 0")


def _three_digits(value: float) -> str:
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _scaled(value: float, factor: int, units: tuple[str, ...]) -> str:
    """Three significant digits in the largest unit that keeps the number below factor."""
    index = 0
    # Compare the rounded text, so 1023.996 KiB reads "1.00 MiB", not "1024 KiB".
    while index < len(units) - 1 and float(_three_digits(value)) >= factor:
        value /= factor
        index += 1
    return f"{_three_digits(value)} {units[index]}"


def format_bytes(n: float) -> str:
    """Format a byte count in binary units: 1073741824 -> "1.00 GiB", 512 -> "512 B"."""
    _check_displayable(n, "a size")
    if math.isinf(n):
        return "inf B"
    if n < _KIB and float(n).is_integer():
        return f"{int(n)} B"
    return _scaled(float(n), _KIB, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"))


def format_count(n: int, noun: str) -> str:
    """A count and its noun, plural right: 1 vCPU, 2 vCPUs, 0 passes."""
    if n == 1:
        return f"1 {noun}"
    return f"{n:,} {noun}{'es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's'}"


def compact_size(n_bytes: int) -> str:
    """A size as it is typed, exactly: 1073741824 -> "1GiB", 4096 -> "4KiB", 1000 -> "1000B"."""
    for unit, size in (("TiB", _KIB**4), ("GiB", _KIB**3), ("MiB", _KIB**2), ("KiB", _KIB)):
        if n_bytes and n_bytes % size == 0:
            return f"{n_bytes // size}{unit}"
    return f"{n_bytes}B"


def format_rate(bytes_per_s: float | None) -> str:
    """Format a byte rate in decimal units: 2.31e9 -> "2.31 GB/s"; None -> "unlimited"."""
    if bytes_per_s is None:
        return "unlimited"
    _check_displayable(bytes_per_s, "a rate")
    if math.isinf(bytes_per_s):
        return "unlimited"
    return _scaled(float(bytes_per_s), 1000, ("B/s", "kB/s", "MB/s", "GB/s", "TB/s"))


def format_duration(seconds: float) -> str:
    """Format seconds: 0.312 -> "312 ms", 4.21 -> "4.21 s", 125 -> "2 min 05 s"."""
    _check_displayable(seconds, "a duration")
    if math.isinf(seconds):
        return "inf s"
    if seconds == 0:
        return "0 s"
    for unit, factor in (("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3)):
        text = _three_digits(seconds / factor)
        if float(text) < 1000:
            return f"{text} {unit}"
    text = _three_digits(seconds)
    if float(text) < 60:
        return f"{text} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"
