"""The sent record: in which pass each guest page was last sent, whether it was zero then, and the current pass.

A pass sends its page list in ascending order, a chunk at a time (a chunk's zero pages
first: emulator.dataplane.batches), so the first `counter.memory.units` pages of its list
are taken as sent: exact when the pass ends, within one chunk while it runs (post-copy
sends the pages the vCPUs ask for first: there only the end is exact). The rest of the
list is the pass's remaining set. Pages taken as sent are looked at for zero with the
encoder's zero test, once per pass each: a page written since shows as dirty anyway.
"""

import numpy as np

from kernels import pages as page_ops

NOT_SENT = -1  # in sent_in_pass: no pass has sent the page yet


class SentRecord:
    """The record of `guest` (a GuestMemory): `sent_in_pass` (int32 per page), `zero` (bool per page), and
    the pass now sending. Passes are numbered as heard: pre-copy's, then the blackout's (or post-copy's)."""

    def __init__(self, guest):
        self.guest = guest
        self.sent_in_pass = np.full(guest.n_pages, NOT_SENT, dtype=np.int32)
        self.zero = np.zeros(guest.n_pages, dtype=bool)
        self.pass_no = NOT_SENT  # the pass now sending
        self._pages, self._counter, self._taken = np.empty(0, dtype=np.int64), None, 0
        self._earlier_wire_bytes = 0  # of the passes before this one

    def begin(self, pages, counter):
        """The next pass sends `pages` (ascending int64), counted in `counter` (a PassCount): the one before is
        taken as sent whole."""
        if self._counter is not None:
            self._take(self._pages.size)
            self._earlier_wire_bytes += self._counter.wire_bytes
        self._pages, self._counter, self._taken = pages, counter, 0
        self.pass_no += 1

    def advance(self):
        """Take what the current pass has sent since the last call; return its remaining set (page numbers)."""
        if self._counter is not None:
            self._take(min(self._counter.memory.units, self._pages.size))
        return self._pages[self._taken:]

    def wire_bytes(self):
        """Bytes on the wire so far, every stream's."""
        return self._earlier_wire_bytes + (self._counter.wire_bytes if self._counter is not None else 0)

    def still_current(self):
        """Per pass: how many pages it was the last to send."""
        return np.bincount(self.sent_in_pass + 1, minlength=self.pass_no + 2)[1:].tolist()

    def _take(self, upto):
        pages = self._pages[self._taken : upto]
        if pages.size:
            self.sent_in_pass[pages] = self.pass_no
            zero, other = page_ops.split_zero_pages(self.guest.data, self.guest.page_size, pages)
            self.zero[zero], self.zero[other] = True, False
        self._taken = max(self._taken, upto)
