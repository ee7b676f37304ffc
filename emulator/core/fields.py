"""Rules for the fields of a scenario's dataclasses: each field's bounds, said once.

A rule is a callable that returns the value it is given, or raises ValueError saying
what the value must be (without the field's name: the dataclass names the field, the
command line names the option). Each dataclass keeps its rules in a ``RULES`` table and
checks them all with `check`; emulator.shell.run_options applies the same rule to what a user
types, and a destination applies it to HELLO, so a value from a peer is held to exactly
what a user may give. JSON's true and false are not numbers here, though Python's bool
is an int.
"""

import math

from emulator.core import units


def _is_whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def check(instance, rules):
    """Apply each rule to the field of `instance` it names; ValueError naming the field on the first refusal."""
    for name, rule in rules.items():
        try:
            rule(getattr(instance, name))
        except ValueError as error:
            raise ValueError(f"{name} {error}") from None


def whole(minimum, maximum=None, *, multiple_of=1):
    """An int (not a bool) from minimum to maximum, a multiple of `multiple_of`."""
    bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
    step = f", a multiple of {multiple_of}" if multiple_of > 1 else ""

    def rule(value):
        if not _is_whole(value) or value < minimum or (maximum is not None and value > maximum) or value % multiple_of:
            raise ValueError(f"must be a whole number {bounds}{step}, got {value!r}")
        return value

    return rule


def size(minimum, maximum=None):
    """A whole number of bytes from minimum to maximum, its bounds said in binary units."""
    low, high = units.format_bytes(minimum), maximum is not None and units.format_bytes(maximum)
    bounds = f"from {low} to {high}" if maximum is not None else f"at least {low}"

    def rule(value):
        if not _is_whole(value) or value < minimum or (maximum is not None and value > maximum):
            shown = units.format_bytes(value) if _is_whole(value) and value >= 0 else repr(value)
            raise ValueError(f"must be a size {bounds}, got {shown}")
        return value

    return rule


def power_of_two(minimum):
    """A whole number of bytes, a power of two of at least `minimum`."""
    def rule(value):
        if not _is_whole(value) or value < minimum or value & (value - 1):
            raise ValueError(f"must be a power of two >= {minimum} bytes, got {value!r}")
        return value

    return rule


def real(low=-math.inf, high=math.inf, *, above=False, below=False):
    """An int or float (not a bool, not NaN) from low to high; `above`/`below` leave that bound out."""
    if high == math.inf:
        bounds = f"{'>' if above else '>='} {low:g}" + (" and finite" if below else "")
    else:
        bounds = f"in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"

    def rule(value):
        if not _is_number(value) or not (low < value if above else low <= value) or not (
                value < high if below else value <= high):
            raise ValueError(f"must be a number {bounds}, got {value!r}")
        return value

    return rule


def flag(value):
    """True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def one_of(choices):
    """One of the strings `choices`."""
    def rule(value):
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return rule


def _or_else(rule, is_special, word, meaning):
    """A rule that takes what is_special(value) says is the special value (written `word`, which means
    `meaning`), or what `rule` accepts; its error says both."""
    def either_rule(value):
        if is_special(value):
            return value
        try:
            return rule(value)
        except ValueError as error:
            raise ValueError(f"{error} (or {word}: {meaning})") from None

    return either_rule


def unbounded(rule, meaning):
    """math.inf ("max" on the wire and the command line: `meaning`, as "unpaced"), or what `rule` accepts."""
    return _or_else(rule, lambda value: _is_number(value) and value == math.inf, "max", meaning)


def optional(rule, meaning):
    """None (which means `meaning`, as "no limit"), or what `rule` accepts."""
    return _or_else(rule, lambda value: value is None, "none", meaning)
