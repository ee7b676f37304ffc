"""What a destination says of a guest it was asked to host: every problem, each with its fix.

A HELLO with problems is refused (REFUSE, their texts joined); a CHECK (`precopy check`)
is answered with a VERDICT listing them, and nothing is allocated. Both come from one list,
so a check says exactly what a migration would be refused for.
"""

from dataclasses import dataclass

from emulator.wire.protocol import RemoteProtocolError

MAX_PROBLEMS = 16  # a destination finds at most 10 (receiver.judge): room, and a bound
MAX_TEXT = 4096  # characters of one problem's text or fix


@dataclass(frozen=True)
class Problem:
    """One reason a destination will not host a guest: the field at fault, what is wrong, and the fix."""

    field: str  # the scenario field, as HELLO names it (guest.memory_bytes, config.switches, ...) or "protocol"
    text: str  # what is wrong, naming the field and both values
    fix: str  # what to change, on either end

    def __str__(self):
        return f"{self.text}: {self.fix}"

    def to_dict(self):
        return {"field": self.field, "text": self.text, "fix": self.fix}


def refusal(problems):
    """The REFUSE reason for `problems`: all of them, so a user fixes them in one go."""
    return "; ".join(map(str, problems))


@dataclass(frozen=True)
class Verdict:
    """A destination's answer to CHECK: the problems a migration would be refused for (none: compatible).

    busy: it hosts as many migrations as it may now, so a HELLO now would be refused as busy.
    free_bytes: the guest memory it could give a guest now (its capacity less what incoming
    guests hold).
    """

    problems: tuple[Problem, ...]
    busy: bool = False
    free_bytes: int = 0

    @property
    def compatible(self):
        return not self.problems

    def to_body(self):
        return {"problems": [problem.to_dict() for problem in self.problems], "busy": self.busy,
                "free_bytes": self.free_bytes}

    @classmethod
    def from_body(cls, body):
        """The Verdict of a VERDICT body; RemoteProtocolError naming the field that is wrong."""
        problems, busy, free = body.get("problems"), body.get("busy"), body.get("free_bytes")
        if not isinstance(busy, bool):
            raise RemoteProtocolError("body.busy", f"must be true or false, got {busy!r:.80}")
        if type(free) is not int or free < 0:
            raise RemoteProtocolError("body.free_bytes", f"must be a whole number >= 0, got {free!r:.80}")
        if not isinstance(problems, list) or len(problems) > MAX_PROBLEMS:
            raise RemoteProtocolError("body.problems", f"must be a list of at most {MAX_PROBLEMS} problems, "
                                                       f"got {problems!r:.80}")
        return cls(tuple(_problem(item) for item in problems), busy, free)


def _problem(item):
    names = ("field", "text", "fix")
    if not (isinstance(item, dict) and all(isinstance(item.get(name), str) and 0 < len(item[name]) <= MAX_TEXT
                                           for name in names)):
        raise RemoteProtocolError("body.problems", f"each problem must be an object of non-empty strings "
                                                   f"{', '.join(names)} (at most {MAX_TEXT} characters), "
                                                   f"got {item!r:.80}")
    return Problem(item["field"], item["text"], item["fix"])
