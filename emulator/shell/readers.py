"""How a value given on the command line (or in a grid or inventory file) is read.

A reader takes the value and returns what it means, or raises ValueError saying what was
expected, without the option's name. `argument_type` turns a reader into an argparse type
that names the option and gives an example when it refuses a value; `axis` reads a sweep's
comma-separated list. Sizes, rates and durations are read by emulator.core.units, whose
docstring gives the units. The run options (emulator.shell.run_options) read their values with
these and with their own field-specific readers; the commands (emulator.shell.commands) with
these alone.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from emulator.core import units

__all__ = ["argument_type", "axis", "duration", "endpoint", "flag", "lambdas", "number", "optional_duration", "rate",
           "real", "rule", "size", "text", "whole", "whole_list", "whole_number"]


# as argparse takes them -------------------------------------------------------------------------
def argument_type(flag: str, example: str, read: Callable[[str], Any]) -> Callable[[str], Any]:
    """`read` as an argparse type: a refusal says why, then ``(example: FLAG EXAMPLE)``."""
    def parse(text):
        try:
            return read(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{error} (example: {flag} {example})") from None

    return parse


def axis(flag: str, example: str, read: Callable[[str], Any],
         choices: tuple[str, ...] | None = None) -> Callable[[str], list[str]]:
    """A sweep axis: comma-separated values, each checked now by `read` and kept as given (the sweep reads them
    as a grid's)."""
    check = argument_type(flag, example, read)

    def parse(text):
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"empty item in {text!r} (example: {flag} {example})")
        for item in items:
            if choices is not None and item not in choices:
                raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(choices)}")
            check(item)
        return items

    return parse


# a command-line text or a grid file's value (TOML gives numbers and booleans) ----------------------
def whole_number(value: Any) -> int:
    """An int, or a text of decimal digits, as an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ValueError(f"must be a whole number, got {value!r}")


def number(value: Any) -> float:
    """A number, or a text of one, as a float."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value.strip())
    except (AttributeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None


def flag(value: Any) -> bool:
    """A bool, or true/on/false/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "on", "false", "off"):
        return value.strip().lower() in ("true", "on")
    raise ValueError(f"expected true or false, got {value!r}")


def text(value: Any) -> str:
    """A string, as it is."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def optional_duration(value: Any) -> float | None:
    """Seconds (a bare number is seconds), or None for none/unlimited."""
    return None if units.means_no_limit(value) else units.parse_duration(value)


# a command-line text, with bounds -----------------------------------------------------------------
def whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number written in decimal, from minimum to maximum (no maximum when None)."""
    def read(text):
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"invalid whole number {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be a whole number {bound}, got {text!r}")
        return value

    return read


def whole_list(minimum: int) -> Callable[[str], list[int]]:
    """Whole numbers >= minimum, comma-separated."""
    read_one = whole(minimum)
    return lambda text: [read_one(item.strip()) for item in text.split(",")]


def real(check: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """A finite number for which `check` holds; `expected` says which ("> 0")."""
    def read(text):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"invalid number {text!r}") from None
        if not math.isfinite(value) or not check(value):
            raise ValueError(f"must be {expected}, got {text!r}")
        return value

    return read


def size(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """Bytes, from minimum to maximum."""
    def read(text):
        value = units.parse_size(text)
        if value < minimum:
            raise ValueError(f"must be at least {units.format_bytes(minimum)}, got {text!r}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {units.format_bytes(maximum)}, got {text!r}")
        return value

    return read


def duration(default_unit: str = "s", *, optional: bool = False,
             positive: bool = False) -> Callable[[str], float | None]:
    """Seconds, finite; a bare number is in `default_unit`. optional: none/unlimited is None; positive: > 0."""
    def read(text):
        if optional and units.means_no_limit(text):
            return None
        value = units.parse_duration(text, default_unit)
        if not math.isfinite(value) or (positive and value <= 0):
            raise ValueError(f"must be a finite duration{' > 0' if positive else ''}, got {text!r}")
        return value

    return read


def rate(text: str) -> float:
    """A bandwidth in bytes/s that must be a number: 'unlimited' is refused."""
    value = units.parse_bandwidth(text)
    if value is None:
        raise ValueError(f"needs a rate, got {text!r}")
    return value


def endpoint(text: str) -> str:
    """tcp://HOST:PORT, as given."""
    scheme, sep, rest = text.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid address {text!r}: expected tcp://HOST:PORT")
    return text


def lambdas(text: str) -> list[float]:
    """lambda values: a list (0,0.3,0.6) or a range START:STOP:STEP (stop included), each >= 0."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError(f"a range needs STEP > 0 and STOP >= START, got {text!r}")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 9) for i in range(count)]
        else:
            values = [float(item) for item in text.split(",")]
    except ValueError as error:
        raise ValueError(f"invalid lambda {text!r} ({error})") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"every lambda must be a number >= 0, got {text!r}")
    return values


def rule(read: Callable[[str], Any], check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """`check(read(text))`: a value a dataclass's rule (emulator.core.fields) holds."""
    return lambda text: check(read(text))
