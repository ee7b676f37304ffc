"""The page map: each guest page's state, and the grid of cells the watch page draws.

A page is in one of five states, numbered so that a larger number is more pressing:

    ZERO      sent, not written since, and all zero (it crossed as its number only)
    CLEAN     sent, not written since
    NOT_SENT  never sent yet
    DIRTY     written since it was last sent: the next pass sends it again
    SENDING   in the current pass's remaining set: harvested, not yet sent

A guest of up to MAX_CELLS pages gets a cell per page; a larger one `pages_per_cell`
consecutive pages per cell (the fewest that fit). The rule: a cell shows the most pressing
state among its pages, so a cell is dirty if any of its pages is dirty (and none is being
sent), and zero only if all its pages are. Cells run in rows, page 0 top left.
"""

import math
from dataclasses import dataclass

import numpy as np

from kernels import bitmap

ZERO, CLEAN, NOT_SENT, DIRTY, SENDING = range(5)
STATE_NAMES = ("zero", "clean", "not_sent", "dirty", "sending")
MAX_CELLS = 512 * 512  # a 1 GiB guest of 4 KiB pages, a cell per page


@dataclass(frozen=True)
class Grid:
    """`cells` cells of `pages_per_cell` pages each, drawn `columns` wide and `rows` high."""

    pages_per_cell: int
    cells: int
    columns: int
    rows: int

    @classmethod
    def for_pages(cls, n_pages, max_cells=MAX_CELLS):
        """The grid of a guest of `n_pages` pages: as square as it goes, at most `max_cells` cells."""
        if n_pages < 1 or max_cells < 1:
            raise ValueError(f"a page map needs pages and cells, got {n_pages} pages and {max_cells} cells")
        pages_per_cell = -(-n_pages // max_cells)
        cells = -(-n_pages // pages_per_cell)
        columns = math.isqrt(cells - 1) + 1
        return cls(pages_per_cell, cells, columns, -(-cells // columns))


def dirty_pages(words, n_pages):
    """The pages a dirty bitmap (uint64 words, page p in word p >> 6, bit p & 63) marks, as bools."""
    if words.dtype != np.uint64 or words.size != bitmap.words_for(n_pages):
        raise ValueError(f"a bitmap of {n_pages} pages is {bitmap.words_for(n_pages)} uint64 words, "
                         f"got {words.size} {words.dtype}")
    little = words.astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(little, bitorder="little", count=n_pages).view(bool)


def page_states(sent, dirty, zero, sending):
    """Each page's state (uint8, the numbers above).

    sent, dirty, zero: bools per page (sent at least once; written since the last harvest;
    all zero when last looked at); sending: the page numbers of the current pass not yet sent."""
    states = np.where(dirty, DIRTY, np.where(zero, ZERO, CLEAN)).astype(np.uint8)
    states[~sent] = NOT_SENT
    states[sending] = SENDING
    return states


def downsample(states, grid):
    """The cells of `grid` (uint8): each the most pressing state of its pages (module doc)."""
    padded = np.full(grid.cells * grid.pages_per_cell, ZERO, dtype=np.uint8)
    padded[: states.size] = states
    return padded.reshape(grid.cells, grid.pages_per_cell).max(axis=1)


def counts(states):
    """{state name: pages in that state}."""
    return dict(zip(STATE_NAMES, np.bincount(states, minlength=len(STATE_NAMES)).tolist()))
