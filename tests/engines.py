"""Run a source and a destination engine against each other, in one process."""

import contextlib
import threading

from emulator.destination.receiver import Destination, DestinationLimits
from emulator.source.sender import Source
from emulator.vm.guest import GuestMemory
from emulator.vm.workload import Workload
from tests.fakelink import wait_until


class Observer:
    """A progress observer (see emulator.source.sender.Source) that ignores everything; tests override what they watch."""

    def phase(self, name, elapsed_s):
        pass

    def pass_done(self, record, page_size, total_pages):
        pass

    def message(self, text):
        pass


class Messages(Observer):
    """A progress observer that keeps the engine's messages (`texts`)."""

    def __init__(self):
        self.texts = []

    def message(self, text):
        self.texts.append(text)


def run_pair(scenario, source_link, destination_link, *, guest=None, workload=None, capacity_bytes=None,
             limits=None, after=None, progress=None, destination_progress=None, disk=None, disk_writer=None):
    """Migrate `scenario` from a Source to a Destination thread.

    Returns (report, outcome, source guest, destination); `destination.migrated` holds a
    copy of the destination's memory as verified, before its own writers resumed.
    limits: the destination's DestinationLimits (default: its defaults).
    after(workload): called once the source is done, while its writers may still run.
    progress, destination_progress: each side's progress observer (an Observer), or None.
    disk, disk_writer: the guest's DiskImage and its (not yet started) writer, for a scenario with a disk.
    """
    guest = guest or GuestMemory(scenario.guest)
    workload = workload or Workload(guest, scenario.workload)
    destination = Destination(destination_link, capacity_bytes=capacity_bytes, limits=limits or DestinationLimits(),
                              progress=destination_progress, on_verified=lambda verified: setattr(destination, "migrated", verified.data.copy()))
    destination.migrated = None
    ended = {}
    thread = threading.Thread(target=lambda: ended.update(outcome=destination.run(hello_timeout_s=10)), daemon=True)
    thread.start()
    with workload, disk_writer or contextlib.nullcontext():
        if scenario.workload.rate_pages_per_s:
            wait_until(lambda: workload.writes > 0)  # the vCPUs are really running before pass 0
        report = Source(scenario, guest, workload, source_link, progress=progress, disk=disk,
                        disk_writer=disk_writer).run()
        if after:
            after(workload)
    thread.join(timeout=30)
    assert not thread.is_alive(), "the destination did not finish"
    return report, ended["outcome"], guest, destination
