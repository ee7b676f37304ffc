"""Both ends on one machine: the receiving end in a child process on TCP loopback, the source here.

`migrate(scenario)` is the library's front door (also from a notebook): it starts a
receiver process, builds and starts the guest here, migrates it through
emulator.running.migration.run_source, and returns the Report. `drain_here` does the same for a
drain: a serving receiver process, and the guests' processes of emulator.running.drain.
"""

import contextlib
import dataclasses
import multiprocessing
import signal
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

from emulator.dataplane.transport import DestinationLink
from emulator.destination.receiver import Destination, DestinationLimits
from emulator.destination.serving import Listener
from emulator.running.drain import Drain
from emulator.running.migration import ready_to_move_pages, run_source
from emulator.vm.allocator import available_memory_bytes
from emulator.vm.guest import GuestMemory
from emulator.vm.scenario import Scenario

CHILD_START_TIMEOUT_S = 120.0  # a cold child imports numpy/numba and may compile kernels


def migrate(scenario=None, *, progress=None, capacity_bytes=None, disk_path=None, disk_dir=None):
    """Migrate `scenario` (default: Scenario()) between two processes on this machine; return the Report.

    disk_path: where the guest's disk is made (see emulator.running.migration.guest_disk); disk_dir: where the
    receiver puts a mirrored disk (None: a temporary directory, removed after the run)."""
    scenario = scenario or Scenario()
    with contextlib.ExitStack() as cleanup:
        if disk_dir is None and scenario.mirrored_disk is not None:
            disk_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="precopy-received-"))
        return _migrate_here(scenario, progress, capacity_bytes, disk_path, disk_dir)


def _migrate_here(scenario, progress, capacity_bytes, disk_path, disk_dir):
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or sockets
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_receiver_child, name="precopy-receiver", daemon=True,
                            args=(child_end, capacity_bytes, scenario, disk_dir))
    with _ctrl_c_left_to_this_process():
        child.start()
    try:
        ready_to_move_pages(progress)  # while the receiver starts, as is the fill:
        guest = GuestMemory(scenario.guest)
        if not parent_end.poll(CHILD_START_TIMEOUT_S):
            raise RuntimeError("the receiver process did not start")
        endpoint = parent_end.recv()
        if progress:
            progress.message(f"receiver listening on {endpoint} (pid {child.pid})")
        report = run_source(scenario, endpoint, progress=progress, guest=guest, disk_path=disk_path)
        outcome = parent_end.recv() if parent_end.poll(scenario.migration.timeout_s + 5) else None
        report.destination = outcome
        return report
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.terminate()
            child.join()


def limits_for(scenario, disk_dir):
    """What migrate's own receiver allows: a destination's defaults, raised to what `scenario` asks, so a
    run on one machine is never refused for a limit its user has no option to raise."""
    defaults = DestinationLimits(disk_dir=disk_dir)
    options = scenario.migration
    return dataclasses.replace(
        defaults, max_vcpus=max(defaults.max_vcpus, scenario.workload.vcpus),
        max_channels=max(defaults.max_channels, options.channels),
        max_device_state_bytes=max(defaults.max_device_state_bytes, options.device_state_bytes),
        max_message_bytes=max(defaults.max_message_bytes, options.batch_pages * scenario.guest.page_size))


def _receiver_child(connection, capacity_bytes, scenario, disk_dir):
    """Child process: listen on a free loopback port, report it, serve one migration, report the outcome.

    The memory of the guest that is coming (`scenario.guest`) is zeroed on other threads
    meanwhile, while this one warms up and the source fills its guest, if it fits
    the capacity (else HELLO is refused, as it would be). It ignores Ctrl-C (see
    _ctrl_c_left_to_this_process): a cancelled source tells it with ABORT.
    """
    prepared = None
    if scenario.guest.memory_bytes <= (available_memory_bytes() if capacity_bytes is None else capacity_bytes):
        preallocation = ThreadPoolExecutor(1, thread_name_prefix="prealloc")
        prepared = preallocation.submit(GuestMemory.blank, scenario.guest)
        preallocation.shutdown(wait=False)
    ready_to_move_pages()
    options = scenario.migration
    link = DestinationLink("tcp://127.0.0.1:0", options.timeout_s, max_channels=options.channels)  # a thread each
    try:
        connection.send(link.endpoint)
        outcome = Destination(link, capacity_bytes=capacity_bytes, prepared=prepared,
                              limits=limits_for(scenario, disk_dir)).run(hello_timeout_s=CHILD_START_TIMEOUT_S)
    finally:
        link.close()
    connection.send(outcome)


@contextlib.contextmanager
def _ctrl_c_left_to_this_process():
    """Processes started inside ignore SIGINT: a Ctrl-C reaches the whole process group, and the
    source, not the receiver it spawned, cancels (with ABORT) and then ends the child."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread handles signals; it is the one a Ctrl-C interrupts
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def drain_here(guests, options, *, progress=None):
    """Drain `guests` (emulator.running.drain.DrainGuest) to a serving receiver started on this machine (a child
    process on TCP loopback, hosting options.max_concurrent at once); return the DrainReport.

    options: an emulator.running.drain.DrainOptions; its destinations are replaced by that receiver."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    timeout_s = max(guest.scenario.migration.timeout_s for guest in guests)
    child = context.Process(target=_serving_child, name="precopy-receiver", daemon=True,
                            args=(child_end, options.max_concurrent, timeout_s))
    child.start()
    try:
        if not parent_end.poll(CHILD_START_TIMEOUT_S):
            raise RuntimeError("the receiver process did not start")
        endpoint = parent_end.recv()
        return Drain(guests, dataclasses.replace(options, destinations=(endpoint,)), progress=progress).run()
    finally:
        child.terminate()
        child.join(5)


def _serving_child(connection, max_incoming, timeout_s):
    """Child process: a serving receiver on a free loopback port for `drain_here`, until terminated."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the drain cancels its migrations; this one is stopped
    ready_to_move_pages()
    link = DestinationLink("tcp://127.0.0.1:0", timeout_s)
    try:
        connection.send(link.endpoint)
        Listener(link, max_incoming=max_incoming).serve()
    finally:
        link.close()
