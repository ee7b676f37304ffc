"""The guest a destination hosts: made together in setup, dropped together when the migration ends.

Its memory (zeroed and resident before ACCEPT), its vCPUs (started at resume), a
BatchApplier per data channel (each channel's thread places its own messages,
emulator.dataplane.receiving), the running digests, a mirrored disk's copy with its appliers,
and in post-copy the map of pages still missing (emulator.vm.postcopy.Faults).
"""

import threading

from emulator.dataplane.batches import BatchApplier
from emulator.dataplane.digest import RunningDigest
from emulator.vm.postcopy import Faults
from emulator.vm.workload import Workload
from emulator.wire.protocol import Flags


class HostedGuest:
    """`memory` (a blank GuestMemory) and `disk` (a receiving DiskImage, or None) of `scenario`'s guest."""

    def __init__(self, scenario, memory, disk):
        options = scenario.migration
        channels, incremental = options.data_channels, options.verify == "incremental"
        self.memory, self.disk = memory, disk
        self.faults = Faults(memory.n_pages, scenario.workload.vcpus) if options.postcopy else None
        self.workload = Workload(memory, scenario.workload, faults=self.faults)  # the writers wait for missing pages
        self.running_digest = RunningDigest(memory.n_pages, memory.page_size) if incremental else None
        self.appliers = [BatchApplier(memory, self.running_digest) for _ in range(channels)]
        self.disk_digest = RunningDigest(disk.spec.n_blocks, disk.spec.block_size) if disk and incremental else None
        self.disk_appliers = [BatchApplier(disk.blocks, self.disk_digest) for _ in range(channels)] if disk else []
        self.live_postcopy = False  # resumed without all its pages: a failure loses it
        self._placing_missing = threading.Lock()  # post-copy pages are placed one message at a time

    @property
    def pages_applied(self):
        return sum(applier.applied for applier in self.appliers)

    @property
    def blocks_applied(self):
        return sum(applier.applied for applier in self.disk_appliers)

    def place(self, channel, message):
        """Put a checked data message into memory (or the disk), on its channel's thread."""
        if self.live_postcopy:
            self._place_missing(channel, message)
        elif message.flags & Flags.DISK:
            self.disk_appliers[channel].apply(message)
        else:
            self.appliers[channel].apply(message)

    def _place_missing(self, channel, message):
        """Place a post-copy message's pages, all missing (else a protocol error), then wake their waiters.
        One message at a time: a page sent twice at once on two channels must be refused, not placed twice."""
        numbers = message.page_numbers
        with self._placing_missing:
            self.faults.check_missing(numbers)
            self.appliers[channel].apply(message)
            self.faults.arrived(numbers.astype("int64"))

    def digests(self):
        """(memory digest, disk digest or None): running, or hashed in full without running digests."""
        memory = self.running_digest.value() if self.running_digest else self.memory.digest()
        if self.disk is None:
            return memory, None
        return memory, self.disk_digest.value() if self.disk_digest else self.disk.blocks.digest()

    def release_disk(self, failed):
        """Keep the disk under its name (its path), or remove it after a failure (None); once no thread
        places blocks any more."""
        if self.disk is None:
            return None
        if failed:
            self.disk.discard()
            return None
        self.disk.close()
        return self.disk.path
