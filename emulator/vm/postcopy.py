"""Post-copy: the guest runs on the destination before all of its pages have arrived.

At the switch the source pauses the guest and sends its vCPU state and the list of
pages still dirty (the missing pages); the destination marks them missing and resumes
at once. From then on:

* Destination (`Faults`): a vCPU about to write a missing page stops before it
  (kernels.writers), asks for the page and waits; the receiving thread sends the
  request (PAGE_REQUEST) and places each page that arrives, bytes first, then its
  missing bit cleared, then the waiting vCPUs woken. A page is placed once: one
  that is not missing when it arrives breaks the protocol. The time each vCPU
  waited is its blocktime (QEMU's postcopy-vcpu-blocktime); the time all of them
  waited at once is the guest's (postcopy-blocktime).
* Source (`Backlog`): the missing pages are sent once each, the requested ones
  first, the rest pushed in ascending order (QEMU's background push).

Neither side has the whole guest until the last page has arrived: a failure in
between loses it (status "lost"), and is never reported as anything else.
"""

import threading
import time
from collections import deque

import numpy as np

from emulator.wire.protocol import RemoteProtocolError
from kernels import bitmap

WAIT_SLICE_S = 0.01  # a waiting vCPU looks at least this often whether it is asked to stop


class Faults:
    """The destination's missing pages during post-copy, and the vCPUs waiting for them.

    n_pages: the guest's pages; vcpus: its writer threads. `doorbell` (set before the
    guest resumes) is rung when a vCPU asks for a page, so the receiving thread sends it.
    """

    def __init__(self, n_pages, vcpus, clock=time.monotonic):
        self.missing = bitmap.new_bitmap(n_pages)
        self.vcpus, self.clock = vcpus, clock
        self.doorbell = None
        self._cond = threading.Condition()
        self._asked = []  # pages asked for and not yet sent in a request
        self._requested = set()  # every page ever asked for: each is asked once
        self._waited_for = {}  # page -> vCPUs waiting for it now
        self._blocked = 0  # vCPUs waiting now
        self._all_blocked_since = None
        self.all_blocked_s = 0.0  # time every vCPU was waiting at once
        self.requested_placed = 0  # pages placed that a vCPU had asked for
        self.resumed_at = self.last_page_at = None

    def mark(self, pages):
        """The pages (ascending int64) that have not arrived: a vCPU waits for each before writing it."""
        bitmap.mark_dirty(self.missing, pages)

    def left(self):
        """Pages still missing."""
        return bitmap.count_dirty(self.missing)

    def check_missing(self, pages):
        """RemoteProtocolError unless the pages of a post-copy message are ascending and all missing: a page is
        placed once, and never under a running vCPU."""
        pages = pages.astype(np.int64)
        if pages.size > 1 and not (np.diff(pages) > 0).all():
            raise RemoteProtocolError("page_numbers", "a post-copy message repeats a page or is not ascending")
        present = (self.missing[pages >> 6] >> (pages & 63).astype(np.uint64)) & np.uint64(1) == 0
        if present.any():
            raise RemoteProtocolError("page_numbers", f"page {int(pages[present][0])} arrived in post-copy but is "
                                                      "not missing (placed already, or never missing)")

    def arrived(self, pages):
        """The pages are in place: clear their missing bits (after their bytes), wake the vCPUs waiting."""
        bitmap.clear_pages(self.missing, pages)
        now = self.clock()
        with self._cond:
            self.last_page_at = now
            if not self._requested:
                return
            asked = self._requested.intersection(pages.tolist())
            self.requested_placed += len(asked)
            if not asked.isdisjoint(self._waited_for):  # wake the vCPUs only when one's page came
                self._cond.notify_all()

    def wait(self, page, interrupted):
        """Called by a vCPU stopped before missing `page`: ask for it (once) and wait until it is in place or
        interrupted() is true; return the seconds waited."""
        began = self.clock()
        with self._cond:
            ring = page not in self._requested
            if ring:
                self._requested.add(page)
                self._asked.append(page)
            self._blocked += 1
            self._waited_for[page] = self._waited_for.get(page, 0) + 1
            if self._blocked == self.vcpus:
                self._all_blocked_since = began
        if ring and self.doorbell is not None:
            self.doorbell.ring()
        with self._cond:
            while self._is_missing(page) and not interrupted():
                self._cond.wait(WAIT_SLICE_S)
            now = self.clock()
            if self._blocked == self.vcpus:
                self.all_blocked_s += now - self._all_blocked_since
            self._blocked -= 1
            if self._waited_for[page] == 1:
                del self._waited_for[page]
            else:
                self._waited_for[page] -= 1
        return now - began

    def _is_missing(self, page):
        return (int(self.missing[page >> 6]) >> (page & 63)) & 1 == 1

    def take_requests(self):
        """The pages asked for since the last call and still missing, ascending (int64), for one PAGE_REQUEST."""
        with self._cond:
            asked, self._asked = self._asked, []
        return np.array(sorted(page for page in asked if self._is_missing(page)), dtype=np.int64)

    def missing_pages(self):
        """The pages still missing, ascending (int64)."""
        bits = np.unpackbits(self.missing.view(np.uint8), bitorder="little")
        return np.flatnonzero(bits).astype(np.int64)

    def waiting_pages(self):
        """The missing pages vCPUs wait for now, ascending (int64): asked again after a recovery, since the
        request may have been lost with the link."""
        with self._cond:
            return np.array(sorted(page for page in self._waited_for if self._is_missing(page)), dtype=np.int64)

    @property
    def requested(self):
        """Pages the vCPUs asked for (each counted once)."""
        with self._cond:
            return len(self._requested)

    def wake_all(self):
        with self._cond:
            self._cond.notify_all()


class Backlog:
    """The source's missing pages after a post-copy resume, each sent once: requested ones first, the rest in
    ascending order. pages: the missing pages, ascending."""

    def __init__(self, pages):
        self.pages = np.array(pages, dtype=np.int64)
        self.unsent = np.ones(self.pages.size, dtype=bool)
        self.cursor = 0
        self._asked = deque()
        self.requests = 0  # PAGE_REQUEST messages heard
        self.requested_sent = 0  # pages sent because they were asked for
        self.pushed = 0  # pages sent in order

    def unsent_pages(self):
        return int(np.count_nonzero(self.unsent))

    def request(self, numbers):
        """A PAGE_REQUEST's pages: RemoteProtocolError for a page that was not missing; sent ones are on their way."""
        self.requests += 1
        numbers = np.asarray(numbers, dtype=np.int64)
        at = np.searchsorted(self.pages, numbers)
        known = (at < self.pages.size) & (self.pages[np.minimum(at, self.pages.size - 1)] == numbers) \
            if self.pages.size else np.zeros(numbers.size, dtype=bool)
        if not known.all():
            raise RemoteProtocolError("page_numbers", f"PAGE_REQUEST asks for page {int(numbers[~known][0])}, which "
                                                      "was not missing")
        self._asked.extend(at.tolist())

    def resend(self, pages):
        """After a recovery: `pages` (ascending), those the destination still lacks, are to be sent again
        (they were lost with the link), in order from the start; RemoteProtocolError for one never missing."""
        pages = np.asarray(pages, dtype=np.int64)
        at = np.searchsorted(self.pages, pages)
        if pages.size and (at.max() >= self.pages.size or (self.pages[at] != pages).any()):
            raise RemoteProtocolError("page_numbers", "MISSING after RECOVERED lists a page that was never missing")
        self.unsent[at] = True
        self.cursor = 0
        self._asked.clear()

    def next_requested(self):
        """The asked-for pages not yet sent (ascending), now marked sent."""
        at = np.array(sorted(set(self._asked)), dtype=np.int64)
        self._asked.clear()
        at = at[self.unsent[at]] if at.size else at
        self.unsent[at] = False
        self.requested_sent += int(at.size)
        return self.pages[at]

    def next_pushed(self, count):
        """The next `count` unsent pages in order (fewer at the end), now marked sent."""
        taken, wanted = [], count
        while wanted and self.cursor < self.pages.size:
            end = min(self.cursor + wanted, self.pages.size)
            at = np.flatnonzero(self.unsent[self.cursor:end]) + self.cursor
            taken.append(at)
            wanted -= at.size
            self.cursor = end
        at = np.concatenate(taken) if taken else np.empty(0, dtype=np.int64)
        self.unsent[at] = False
        self.pushed += int(at.size)
        return self.pages[at]
