"""What a running migration tells whoever watches it, and the watcher that hears nothing.

The live display and the JSON stream (emulator.analysis.display) are Progress; so is any object
with these methods. An engine given None, or an object with only some of the methods
(a test's observer, a benchmark's sampler), watches through `watching`, so it calls
every method unconditionally and never asks what its watcher can do.

`migrating` and `sending` are for a watcher of the guest's pages (emulator.watch): they hand
over what the source has anyway, and a watcher must return at once (it samples on a thread
of its own; the source's thread never waits for it).
"""

from typing import Protocol

EVENTS = ("phase", "pass_done", "interval", "message", "migrating", "sending")  # Progress's methods


class Progress(Protocol):
    """interval_s: an Interval this often during a pass (0: none)."""

    interval_s: float

    def phase(self, name, elapsed_s): ...

    def pass_done(self, record, page_size, total_pages): ...

    def interval(self, sample, page_size): ...

    def message(self, text): ...

    def migrating(self, guest):
        """The run begins: `guest` (a GuestMemory) is the memory it moves; its dirty bitmap may be read, never
        written."""

    def sending(self, numbers, counter):
        """A pass (or the blackout, or post-copy's push) is about to send the guest's pages `numbers` (int64,
        ascending; a view that the next harvest rewrites), counting them in `counter` (a PassCount:
        counter.memory.units grows as they go)."""


class Quiet:
    """A Progress that shows nothing, and takes no samples."""

    interval_s = 0.0

    def phase(self, name, elapsed_s):
        pass

    def pass_done(self, record, page_size, total_pages):
        pass

    def interval(self, sample, page_size):
        pass

    def message(self, text):
        pass

    def migrating(self, guest):
        pass

    def sending(self, numbers, counter):
        pass


class _Partial(Quiet):
    """A watcher that has only some of Progress's methods: those it has are called, the rest are Quiet's."""

    def __init__(self, watcher):
        self.interval_s = getattr(watcher, "interval_s", 0.0)
        for name in EVENTS:
            if hasattr(watcher, name):
                setattr(self, name, getattr(watcher, name))


def watching(watcher):
    """`watcher` as a Progress: Quiet for None, itself when it has every method, else completed by Quiet."""
    if watcher is None:
        return Quiet()
    if all(hasattr(watcher, name) for name in ("interval_s", *EVENTS)):
        return watcher
    return _Partial(watcher)
