"""Checks for the fields of a scenario's dataclasses: a bad value is refused naming the field and the value.

The same checks serve the command line and a destination reading HELLO, so a
value from a peer is held to exactly what a user may type. JSON's true and
false are not numbers here, though Python's bool is an int.
"""

import math


def whole(name, value, minimum, maximum=None):
    """`value` if it is an int (not a bool) from minimum to maximum; else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")
    return value


def number(name, value):
    """`value` if it is an int or float (not a bool, not NaN); else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return value


def flag(name, value):
    """`value` if it is True or False; else ValueError naming `name`."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def one_of(name, value, choices):
    """`value` if it is one of `choices`; else ValueError naming `name` and the choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(choices)}")
    return value
