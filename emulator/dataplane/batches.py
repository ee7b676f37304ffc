"""The data path: pages into messages on the source, messages into pages on the destination.

The budget (docs/performance.md): each byte of a raw pass is read once on
the source and copied once into place on the destination, besides the
kernel's TCP copies; everything else is a few calls per message.

Source (BatchEncoder): dirty pages are scanned for zero pages in large chunks,
and with a running digest each page is hashed in the same read (a zero page
crosses as its number only). The rest go in batches. A batch that is one run
of consecutive pages is sent straight from guest memory, with no gather copy:
a page written while on its way is dirty again and is resent. Other batches
are gathered into a fresh buffer (ZeroMQ may still hold the last one). Gathers
and LZ4 run on a pool of worker threads (python-lz4 releases the GIL), a few
batches ahead of the sender, and results go out in order: the sending thread
frames and sends, and reads no page bytes (but XBZRLE's, below).

XBZRLE (an encoder given a kernels.xbzrle.Cache, in passes after the first): each
batch's pages whose last copy is cached go as one XBZRLE batch of deltas, when
smaller than the page; the rest are gathered (a snapshot, which the cache keeps)
and go through the codec. A page that goes as a zero page leaves the cache.

Destination (BatchApplier, one per data channel, on that channel's thread:
emulator.dataplane.receiving): zero pages are cleared (in pass 0 the memory is already
zero, so nothing is written); raw batches are copied into place, hashed as they
are copied when a running digest is kept; LZ4 batches are decompressed, then
copied and hashed; XBZRLE deltas are applied in place and hashed. Pages of one
pass are distinct, so the channels' batches of a pass may land in any order.

Both sides keep a RunningDigest (emulator.dataplane.digest) when asked, so the memory
digest at the end costs nothing.
"""

import functools
import itertools
import os
from collections import deque
from dataclasses import dataclass

import numpy as np

from emulator.dataplane.codecs import decode_batch, encode_batch
from emulator.dataplane.threads import named_pool
from emulator.wire import protocol
from emulator.wire.protocol import Codec, Flags, MsgType
from kernels import bitmap, xbzrle
from kernels import pages as page_ops

ZERO_SCAN_PAGES = 16384  # pages checked for zero per kernel call: 64 MiB of 4 KiB pages
SCAN_MIN_PAGES = 2048  # pages a scanning thread takes at least: fewer are not worth a thread hop
PIPELINE_DEPTH_PER_WORKER = 2  # batches in flight per worker thread


def worker_count():
    """Worker threads for codecs: one per CPU."""
    return max(1, os.cpu_count() or 1)


@dataclass
class Batch:
    """One message's worth of pages, ready to be framed.

    kind: MsgType.PAGES or MsgType.ZERO_PAGES; numbers: page numbers, or (start, count)
    runs with Flags.RUNS in flags; payload: encoded bytes (PAGES only); raw_len: bytes
    once decoded; pages: how many pages it covers.
    """

    kind: MsgType
    numbers: np.ndarray
    flags: Flags
    codec: Codec = Codec.RAW
    payload: object = b""
    raw_len: int = 0
    pages: int = 0

    def frames(self, seq, pass_no, page_size):
        """The batch as a data message's frames (emulator.wire.protocol)."""
        if self.kind == MsgType.ZERO_PAGES:
            return protocol.encode_zero_pages(seq, pass_no, self.numbers, page_size, self.flags)
        return protocol.encode_pages(seq, pass_no, self.numbers, self.payload, self.codec, self.raw_len, self.flags)


def _compact(numbers, flags=Flags.NONE):
    """Page numbers (ascending, distinct) as runs when that is shorter."""
    first = int(numbers[0])
    if numbers.size > 2 and int(numbers[-1]) - first + 1 == numbers.size:  # one run: the common case, no scan
        return np.array([[first, numbers.size]], dtype=protocol.PAGE_NUMBER_DTYPE), flags | Flags.RUNS
    runs = protocol.pages_to_runs(numbers)
    if runs.size < numbers.size:
        return runs, flags | Flags.RUNS
    return numbers, flags


class BatchEncoder:
    """Turns page numbers of a guest into Batches (see the module doc).

    guest: the GuestMemory (or a disk's blocks, emulator.vm.disk); codec: Codec; batch_pages:
    pages per PAGES message; digest: a RunningDigest to keep current, or None; flags: set
    on every batch (Flags.DISK for a disk's blocks); xbzrle: a kernels.xbzrle.Cache, or None.
    """

    def __init__(self, guest, codec, batch_pages, digest=None, flags=Flags.NONE, xbzrle=None):
        self.guest, self.codec, self.batch_pages, self.digest = guest, codec, batch_pages, digest
        self.flags, self.xbzrle = flags, xbzrle
        workers = worker_count()
        self.pool = named_pool(workers, "encode")  # gathers and LZ4: the sending thread touches no page bytes
        self.depth = PIPELINE_DEPTH_PER_WORKER * workers
        self.scanners = workers
        self.scan_pool = named_pool(self.scanners, "scan")

    def close(self):
        self.scan_pool.shutdown(wait=True)
        self.pool.shutdown(wait=True)

    def batches(self, page_numbers, resent=False):
        """Yield the Batches that send `page_numbers` (ascending), in order.

        resent: the pages were sent before (a pass after the first): XBZRLE may send them as deltas."""
        page_size = self.guest.page_size
        xbzrle = self.xbzrle if resent else None
        pending = deque()
        for start in range(0, page_numbers.size, ZERO_SCAN_PAGES):
            zero, nonzero = self._split(page_numbers[start : start + ZERO_SCAN_PAGES])
            if zero.size:
                if xbzrle:
                    xbzrle.forget(zero)
                numbers, flags = _compact(zero, self.flags)
                yield Batch(MsgType.ZERO_PAGES, numbers, flags, pages=zero.size, raw_len=zero.size * page_size)
            for first in range(0, nonzero.size, self.batch_pages):
                numbers, raw = nonzero[first : first + self.batch_pages], None
                if xbzrle:
                    deltas, payload, numbers = xbzrle.encode(self.guest.data, numbers)
                    if deltas.size:
                        compact, flags = _compact(deltas, self.flags)
                        yield Batch(MsgType.PAGES, compact, flags, Codec.XBZRLE, payload, deltas.size * page_size,
                                    deltas.size)
                    if not numbers.size:
                        continue
                    raw = np.empty(numbers.size * page_size, dtype=np.uint8)  # a snapshot: the cache keeps it
                    page_ops.gather(self.guest.data, page_size, numbers, raw)
                    xbzrle.remember(numbers, raw)
                pending.append(self.pool.submit(self._encode, numbers, raw))
                if len(pending) >= self.depth:
                    yield self._finish(pending.popleft().result())
        while pending:
            yield self._finish(pending.popleft().result())

    def _split(self, page_numbers):
        """(zero pages, other pages) of `page_numbers`, each page hashed in the same read if a digest is kept.

        The scan reads every page of a zero guest, so it runs on every CPU, a slice each
        (memory reads faster from two cores than from one: 1 GiB in 21 ms instead of 46 here).
        """
        slices = np.array_split(page_numbers, max(1, min(self.scanners, page_numbers.size // SCAN_MIN_PAGES)))
        if len(slices) == 1:
            scanned = [self._split_slice(page_numbers)]
        else:
            scanned = list(self.scan_pool.map(self._split_slice, slices))
        for _, _, delta in scanned:
            if delta is not None:
                self.digest.absorb(delta)
        if len(scanned) == 1:
            return scanned[0][:2]
        return np.concatenate([zero for zero, _, _ in scanned]), np.concatenate([other for _, other, _ in scanned])

    def _split_slice(self, page_numbers):
        memory, page_size = self.guest.data, self.guest.page_size
        if self.digest is None:
            return (*page_ops.split_zero_pages(memory, page_size, page_numbers), None)
        zero, nonzero, *delta = page_ops.split_zero_and_digest(memory, page_size, page_numbers, self.digest.table)
        return zero, nonzero, delta

    def _encode(self, numbers, raw=None):
        """Gather (unless one run, or `raw` holds them already) and encode one batch, on a worker thread."""
        memory, page_size = self.guest.data, self.guest.page_size
        first, last = int(numbers[0]), int(numbers[-1])
        if raw is None and last - first + 1 == numbers.size:
            raw = memory[first * page_size : (last + 1) * page_size]
        elif raw is None:
            raw = np.empty(numbers.size * page_size, dtype=np.uint8)
            page_ops.gather(memory, page_size, numbers, raw)
        codec, flags, payload = encode_batch(self.codec, raw)
        return numbers, codec, flags | self.flags, payload, raw.size

    def _finish(self, encoded):
        numbers, codec, flags, payload, raw_len = encoded
        compact, flags = _compact(numbers, flags)
        return Batch(MsgType.PAGES, compact, flags, codec, payload, raw_len, numbers.size)


class BatchApplier:
    """Applies decoded PAGES and ZERO_PAGES messages to a guest, on the calling thread (see the module doc).

    guest: the destination GuestMemory, zero-filled; digest: a RunningDigest or None. Each
    data channel's thread has an applier of its own: its digest changes go to a part of
    the digest of its own, and `applied` counts the pages (or blocks) it placed.
    """

    def __init__(self, guest, digest=None):
        self.guest = guest
        self.digest = None if digest is None else digest.part()
        self.applied = 0

    def apply(self, message):
        """Apply one validated data message: its pages are in memory (and hashed) when this returns."""
        numbers = message.page_numbers
        if message.type == MsgType.ZERO_PAGES:
            if message.pass_no > 0:  # pass 0 meets a freshly zeroed memory
                page_ops.zero_pages(self.guest.data, self.guest.page_size, numbers)
                if self.digest:
                    self.digest.update_zero(numbers)
        elif message.codec == Codec.XBZRLE:
            self._finish(self._apply_deltas(message, numbers))
        else:
            self._finish(self._place(message, numbers))
        self.applied += message.page_count

    def _place(self, message, numbers):
        """Decode one batch into guest memory; return its digest delta, or None."""
        memory, page_size = self.guest.data, self.guest.page_size
        raw = np.frombuffer(decode_batch(message.codec, message.payload, message.raw_len), dtype=np.uint8)
        if self.digest is None:
            page_ops.scatter(memory, page_size, numbers, raw)
            return None
        return page_ops.scatter_and_digest(memory, page_size, numbers, raw, self.digest.table)

    def _apply_deltas(self, message, numbers):
        """Apply an XBZRLE batch onto the pages in place; its digest delta, or None."""
        table = None if self.digest is None else self.digest.table
        bad, total, xor = xbzrle.apply_batch(self.guest.data, self.guest.page_size, numbers, message.payload, table)
        if bad >= 0:
            where = f"page {int(numbers[bad])}" if bad < numbers.size else "the bytes after the last page"
            raise protocol.RemoteProtocolError("payload", f"XBZRLE delta malformed at {where}: a count overruns "
                                                          "the page or the payload")
        return None if table is None else (total, xor)

    def _finish(self, delta):
        if delta is not None:
            self.digest.absorb(delta)


WARM_UP_PAGES = 64


@functools.cache
def warm_up():
    """Compile, or load from Numba's cache, every kernel of the data path, before any clock runs.

    A tiny guest crosses both ends (zero and other pages, raw and LZ4, with and
    without running digests and XBZRLE, a first and later passes, a full digest), so a
    migration's first pass does not pay for first calls: about 0.15 s with a warm cache,
    seconds without one, which would otherwise show up as pass-0 bandwidth. Once per
    process: kernels stay loaded.
    """
    from emulator.dataplane.digest import RunningDigest
    from emulator.vm.guest import GuestMemory, GuestSpec

    spec = GuestSpec(WARM_UP_PAGES * 4096, fill="mixed", seed=0)
    source, destination = GuestMemory(spec), GuestMemory.blank(spec)
    source.data[: 4 * spec.page_size] = 0
    decoder = protocol.Decoder(spec.page_size, spec.n_pages, WARM_UP_PAGES * spec.page_size)
    every_other = np.arange(0, spec.n_pages, 2, dtype=np.int64)
    for codec, digests, deltas in itertools.product((Codec.RAW, Codec.LZ4), (True, False), (False, True)):
        cache = xbzrle.Cache(WARM_UP_PAGES * spec.page_size, spec.page_size) if deltas else None
        encoder = BatchEncoder(source, codec, 8, RunningDigest(spec.n_pages, spec.page_size) if digests else None,
                               xbzrle=cache)
        received = RunningDigest(spec.n_pages, spec.page_size) if digests else None
        applier = BatchApplier(destination, received)
        try:
            for pass_no in range(3):  # XBZRLE: the second pass fills its cache, the third sends deltas
                numbers = np.arange(spec.n_pages, dtype=np.int64) if pass_no == 0 else source.harvest()
                for batch in encoder.batches(numbers, resent=pass_no > 0):
                    applier.apply(decoder.decode(batch.frames(0, pass_no, spec.page_size)))
                source.data[every_other * spec.page_size + 8] += 1
                bitmap.mark_dirty(source.dirty, every_other)
            source.dirty_count()
            if digests:
                encoder.digest.value(), received.value()
            destination.digest()
        finally:
            encoder.close()
