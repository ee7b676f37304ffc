"""What a source moves in passes: a stream is the guest's memory, or a mirrored disk's blocks.

Each stream has its own dirty bitmap (harvested as a pass begins), its own encoder
(a disk's batches flagged DISK), its own running digest, and the three digests a run
ends with: as sent, as the destination holds it, and of the paused source, hashed
again. The source loops over its streams in order, counting each apart (PassCount):
a mirrored disk goes first, as a block mirror runs before the memory migration, so
memory dirtied while a large disk crosses pass 0 is not sent twice.
"""

import numpy as np

from emulator.dataplane.batches import BatchEncoder
from emulator.dataplane.digest import RunningDigest
from emulator.wire.protocol import Flags, MsgType
from kernels import bitmap


class Stream:
    """Units (pages, or a disk's blocks) of `memory` (a GuestMemory, or a disk's blocks), written by `writer`
    (a Workload, or None), moved with `codec` in batches of `batch_units`; `incremental`: keep a running digest."""

    disk = False  # a disk's blocks: flagged DISK on the wire, counted as blocks

    def __init__(self, memory, writer, codec, batch_units, incremental, xbzrle=None):
        self.memory, self.writer = memory, writer
        self.unit_bytes, self.units = memory.page_size, memory.n_pages
        self.running_digest = RunningDigest(memory.n_pages, memory.page_size) if incremental else None
        self.encoder = BatchEncoder(memory, codec, batch_units, self.running_digest,
                                    Flags.DISK if self.disk else Flags.NONE, xbzrle)
        # as many numbers as the bitmap has bits: its last word may reach past the last unit
        self._harvested = np.empty(memory.dirty.size * bitmap.WORD_BITS, dtype=np.int64)
        self.sent_digest = self.received_digest = self.paused_digest = None

    def harvest(self):
        """The units dirtied since the last harvest (a view of this stream's buffer), and their bits cleared."""
        return self.memory.harvest(self._harvested)

    def pass_units(self, pass_no):
        """What pass `pass_no` sends: every unit in pass 0, else those dirtied since the last pass (harvested
        in both: pass 0's writes go in pass 1)."""
        dirtied = self.harvest()
        return np.arange(self.units, dtype=np.int64) if pass_no == 0 else dirtied

    def remaining_bytes(self):
        return self.memory.dirty_count() * self.unit_bytes

    @property
    def writes(self):
        return self.writer.writes if self.writer is not None else 0

    def matched(self):
        """None before the destination said its digest; then whether it, and the paused source's, equal
        what was sent."""
        if self.received_digest is None:
            return None
        return self.received_digest == self.sent_digest and self.paused_digest in (None, self.sent_digest)

    def close(self):
        self.encoder.close()


class DiskStream(Stream):
    """A mirrored disk's blocks (`disk`, an emulator.vm.disk.DiskImage, written by `writer`), and its block job."""

    disk = True

    def __init__(self, disk, writer, codec, batch_blocks, incremental):
        super().__init__(disk.blocks, writer, codec, batch_blocks, incremental)
        self.image = disk
        self.ready_s = None  # when the dirty blocks left first fitted the downtime budget (QEMU: job ready)
        self.wait_s = 0.0  # pre-copy time spent only because the disk had not converged
        self.sync_s = 0.0  # the destination's write-through of its copy in the handover


class StreamCount:
    """What one stream put on the wire in a pass: units (zero ones included), the zero ones, wire bytes."""

    def __init__(self):
        self.units = self.zero_units = self.wire_bytes = 0


class PassCount:
    """What one pass (or the blackout, or post-copy) put on the wire, counted by stream: the memory's pages
    and a mirrored disk's blocks."""

    def __init__(self):
        self.memory, self.disk = StreamCount(), StreamCount()

    def count(self, batch, wire, stream):
        mine = self.disk if stream.disk else self.memory
        mine.units += batch.pages
        mine.zero_units += batch.pages if batch.kind == MsgType.ZERO_PAGES else 0
        mine.wire_bytes += wire

    @property
    def wire_bytes(self):
        """Every stream's bytes on the wire."""
        return self.memory.wire_bytes + self.disk.wire_bytes
