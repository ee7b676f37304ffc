"""The watcher: a Progress (emulator.source.progress) that keeps what the watch page shows.

The source's thread only hands over what it has, and does next to nothing for it: the
guest once (`migrating`), each pass's page list with the counter its pages are counted in
(`sending`: a copy of the list is kept, as it is a view the next harvest rewrites), the pass
records, the phases and the messages. A thread of the watcher's own samples every
`every_s` seconds: it brings the sent record up to date (emulator.watch.record), copies the
guest's dirty bitmap (a snapshot: the writers keep setting bits meanwhile), turns both into
the page map (emulator.watch.pagemap), and publishes the state as JSON to a Feed, where only
the latest is kept. The migration never waits for the watcher, nor the watcher for a page.

The series, a point per sample, each a rate over the last RATE_WINDOW_S: bandwidth, the wire
bytes (every stream's) sent per second; dirty rate, the pages newly set in the bitmap (since
the sample before) per second, times the page size (a page dirtied again before a harvest
counts once).
"""

import base64
import collections
import json
import math
import threading
import time

import numpy as np

from emulator.watch.pagemap import MAX_CELLS, Grid, counts, dirty_pages, downsample, page_states
from emulator.watch.record import SentRecord

SAMPLE_EVERY_S = 0.1  # the page gets a state this often (at least 5 a second, at most 10)
SERIES_POINTS = 600  # the bandwidth and dirty-rate chart keeps this many samples: a minute
RATE_WINDOW_S = 1.0  # rates are over this long: a capped link carries a batch at a time
MESSAGES_KEPT = 8


class Watcher:
    """What the watch page shows, sampled every `every_s` seconds into `feed` (module doc), on a map of at most
    `max_cells` cells; `finish` ends it."""

    interval_s = 0.0  # no Interval samples from the send loop: the watcher samples on its own thread

    def __init__(self, feed, every_s=SAMPLE_EVERY_S, max_cells=MAX_CELLS, clock=time.monotonic):
        self.feed, self.every_s, self.max_cells, self.clock = feed, every_s, max_cells, clock
        self._guest = self._started = self._phase = self._status = self._reason = None
        self._heard = collections.deque()  # (page numbers, counter) of each pass, from the source's thread
        self._records = []  # the pass records heard
        self._messages = collections.deque(maxlen=MESSAGES_KEPT)
        self._lock = threading.Lock()  # one sample at a time: the thread's, or a caller's
        self._record = self._grid = self._dirty = None  # the guest's, from its first sample
        self._newly_dirty = 0  # pages seen set in the bitmap since the sample before, summed
        self._window = collections.deque()  # (seconds, wire bytes, newly dirty pages) over RATE_WINDOW_S
        self._series = collections.deque(maxlen=SERIES_POINTS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="watch-sampler", daemon=True)

    # what the source tells, on its thread --------------------------------------------------------
    def migrating(self, guest):
        self._started, self._guest = self.clock(), guest

    def sending(self, numbers, counter):
        self._heard.append((numbers.copy(), counter))

    def phase(self, name, elapsed_s):
        self._phase = name

    def pass_done(self, record, page_size, total_pages):
        self._records.append(record)

    def interval(self, sample, page_size):
        pass

    def message(self, text):
        self._messages.append(text)

    # sampling ---------------------------------------------------------------------------------
    def start(self):
        """Sample every `every_s` from now on, on the watcher's thread."""
        self._thread.start()
        return self

    def finish(self, status, reason=None):
        """The migration ended with `status` ("completed", "failed", ...): stop sampling, publish the last state."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._status, self._reason = status, reason
        self.feed.publish(encode(self.sample()), done=True)

    def _sample_until_stopped(self):
        while not self._stop.wait(self.every_s):
            self.feed.publish(encode(self.sample()))

    def sample(self):
        """The state now, as a dict ("cells": the page map, uint8, while a guest is known)."""
        with self._lock:
            guest = self._guest
            state = {"status": self._status or ("running" if guest else "waiting"), "reason": self._reason,
                     "phase": self._phase, "messages": list(self._messages), "done": self._status is not None}
            if guest is None:
                return state
            if self._record is None:
                self._record, self._grid = SentRecord(guest), Grid.for_pages(guest.n_pages, self.max_cells)
            while self._heard:
                self._record.begin(*self._heard.popleft())
            remaining = self._record.advance()
            dirty = dirty_pages(guest.dirty.copy(), guest.n_pages)
            states = page_states(self._record.sent_in_pass >= 0, dirty, self._record.zero, remaining)
            self._add_point(guest.page_size, dirty)
            grid = self._grid
            return {**state, "elapsed_s": self.clock() - self._started, "page_size": guest.page_size,
                    "total_pages": guest.n_pages, "pass": self._record.pass_no, "counts": counts(states),
                    "grid": {"columns": grid.columns, "rows": grid.rows, "pages_per_cell": grid.pages_per_cell},
                    "cells": downsample(states, grid), "passes": self._passes(guest.page_size),
                    "series": [list(point) for point in self._series]}

    def _add_point(self, page_size, dirty):
        """A point of the series (module doc): (seconds, wire bytes/s, dirty bytes/s)."""
        now, wire = self.clock() - self._started, self._record.wire_bytes()
        if self._dirty is not None:
            self._newly_dirty += int(np.count_nonzero(dirty & ~self._dirty))
        self._dirty = dirty
        window = self._window
        window.append((now, wire, self._newly_dirty))
        while len(window) > 1 and now - window[1][0] >= RATE_WINDOW_S:
            window.popleft()
        then, wire_then, dirty_then = window[0]
        if now > then:
            self._series.append((round(now, 3), (wire - wire_then) / (now - then),
                                 (self._newly_dirty - dirty_then) * page_size / (now - then)))

    def _passes(self, page_size):
        """The pass strip: each recorded pass, and how many pages it was the last to send."""
        current = self._record.still_current()
        return [{"pass": record.pass_no, "pages": record.pages_sent, "remaining_pages": record.remaining_pages,
                 "threshold_pages": finite(record.threshold_bytes / page_size), "duration_s": record.duration_s,
                 "still_current": current[record.pass_no] if record.pass_no < len(current) else 0}
                for record in list(self._records)]


def finite(value):
    """`value`, or None where JSON has no number for it (an unbounded threshold)."""
    return value if math.isfinite(value) else None


def encode(state):
    """A state as the page reads it: JSON bytes, the cells in base64."""
    if "cells" in state:
        state = {**state, "cells": base64.b64encode(state["cells"].tobytes()).decode("ascii")}
    return json.dumps(state, separators=(",", ":")).encode()
