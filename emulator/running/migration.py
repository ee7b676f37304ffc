"""One end of a migration: the library's entry points for the source and for the destination.

`run_source` migrates a running guest (built here, or the caller's) to a destination;
`send` is its two-host form, `check` asks a destination about a guest without
migrating, and `receive` is the destination end. Both ends on one machine (`migrate`,
`drain_here`) are emulator.running.children's.
"""

import contextlib
import math
import os
import shutil
import tempfile
import threading

from numba.core import event as numba_events

from emulator.core.errors import PeerAborted
from emulator.core.units import format_bytes
from emulator.dataplane.batches import warm_up
from emulator.dataplane.security import is_loopback
from emulator.dataplane.transport import DestinationLink, SourceLink, parse_endpoint
from emulator.destination.receiver import Destination, DestinationLimits
from emulator.destination.serving import Listener
from emulator.running.control import ControlServer
from emulator.source.sender import Source
from emulator.vm.allocator import keep_freed_buffers, require_room
from emulator.vm.disk import DiskImage
from emulator.vm.guest import GuestMemory
from emulator.vm.verdict import Verdict
from emulator.vm.workload import Workload
from emulator.wire.protocol import MsgType
from emulator.wire.protocol_engines import SourceProtocol, aborted

COMPILE_NOTICE_AFTER_S = 1.0  # a warm-up longer than this is compiling kernels: say so


def ready_to_move_pages(progress=None):
    """Before either end starts: keep freed message buffers mapped, load the data path's kernels.

    On a machine's first run Numba compiles them (tens of seconds): `progress` is told,
    so the screen does not stay blank meanwhile.
    """
    keep_freed_buffers()
    watch = _CompileWatch()
    with numba_events.install_listener("numba:compile", watch):
        warming = threading.Thread(target=warm_up, name="warm-up", daemon=True)
        warming.start()
        warming.join(COMPILE_NOTICE_AFTER_S)
        if warming.is_alive() and progress and watch.compiling.is_set():  # slow, but only loading: say nothing
            progress.message("compiling the data path's kernels (once per machine; Numba caches them)")
        warming.join()
    warm_up()  # returns at once once cached; if it failed in the thread, it runs again here and its error shows


class _CompileWatch(numba_events.Listener):
    """Hears Numba compile something (a kernel loaded from its cache is not compiled, and says nothing)."""

    def __init__(self):
        self.compiling = threading.Event()

    def on_start(self, event):
        self.compiling.set()

    def on_end(self, event):
        pass


@contextlib.contextmanager
def guest_disk(spec, path=None, progress=None):
    """The guest's disk (a DiskImage, emulator.vm.disk) for DiskSpec `spec`, or None without one.

    path: the file to create (it must not exist; it stays after the run); None: a file in a
    temporary directory, removed after the run. DiskError if it cannot be created."""
    if spec is None:
        yield None
        return
    directory = None if path is not None else tempfile.mkdtemp(prefix="precopy-disk-")
    if progress:
        progress.message(f"writing the guest's {format_bytes(spec.size_bytes)} disk")
    disk = DiskImage.create(spec, path or os.path.join(directory, spec.name))
    try:
        yield disk
    finally:
        disk.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def run_source(scenario, to, *, progress=None, guest=None, workload=None, security=None, link_budget=None,
               disk_path=None, disk=None, disk_writer=None, writers_running=False):
    """Migrate a running guest to `to`; return the Report.

    guest, workload: a GuestMemory and its (not yet started) Workload; built from the
    scenario when not given. The writers run from before the migration starts to its end.
    security: an emulator.dataplane.security.ClientSecurity for CURVE, or None. link_budget: a
    limiter shared with other migrations (see Source). disk_path: where the guest's disk
    is made, if it has one (see guest_disk); disk, disk_writer: that DiskImage and its (not
    yet started) writer instead, made by the caller.
    writers_running: the caller's workload (and disk_writer) run already and are its to stop,
    as a drained guest's run from the drain's start and on after a failed migration.

    A guest built here is checked against what this host can hold before anything starts
    (MemoryShortfall naming guest.memory_bytes, emulator.vm.allocator), and again as it is
    allocated, after the warm-up. It is resident (every page written) before HELLO is sent,
    and a destination checks what its host can hold when HELLO arrives, not before: so when
    both ends share a host, the destination's check already sees the source's guest, and
    two ends cannot together promise memory that only one of them can have.
    """
    if guest is None:  # said before connecting, as other bad input is
        require_room(scenario.guest.memory_bytes, "guest.memory_bytes")
    if writers_running and workload is None:
        raise ValueError("writers_running: the caller's writers run already, but workload is None")
    if writers_running and scenario.disk is not None and disk_writer is None:
        raise ValueError("writers_running: the guest has a disk, but its running disk_writer is None")
    link = SourceLink(to, scenario.migration.timeout_s, channels=scenario.migration.data_channels, security=security)
    try:  # the link first: an unreachable destination is said before gigabytes are filled
        ready_to_move_pages(progress)
        guest = guest or GuestMemory.resident(scenario.guest)
        workload = workload or Workload(guest, scenario.workload)
        with contextlib.ExitStack() as running:
            if disk is None:
                disk = running.enter_context(guest_disk(scenario.disk, disk_path, progress))
            disk_writer = disk_writer or (disk and Workload(disk.blocks, scenario.disk.writer_spec()))
            source = Source(scenario, guest, workload, link, progress=progress, link_budget=link_budget, disk=disk,
                            disk_writer=disk_writer)
            writers = () if writers_running else (workload, disk_writer)
            for context in (*writers, ControlServer(source)):  # precopy status and set talk to it
                if context is not None:
                    running.enter_context(context)
            return source.run()
    finally:
        link.close()


def send(scenario, to, *, progress=None, security=None, disk_path=None):
    """The source end of a two-host migration to a `precopy receive` at `to` (tcp://HOST:PORT)."""
    return run_source(scenario, to, progress=progress, security=security, disk_path=disk_path)


def check(scenario, to, *, security=None):
    """Ask the `precopy receive` at `to` whether it would host `scenario`'s guest; return its Verdict.

    Nothing is built, allocated or moved on either end: the destination answers CHECK
    from the checks that would refuse a HELLO. MigrationError if it cannot be asked.
    """
    link = SourceLink(to, scenario.migration.timeout_s, security=security)
    engine = SourceProtocol(1, scenario.guest.page_size)
    try:
        link.send_control(engine.check(scenario.to_dict()))
        while True:
            answer = engine.receive(link.recv_control())
            if answer.type == MsgType.VERDICT:
                return Verdict.from_body(answer.body)
            if answer.type == MsgType.ABORT:  # a protocol error, say: it has no verdict to give
                reason, _ = aborted(answer)
                raise PeerAborted(reason, "destination")
    finally:
        link.close()


def receive(listen, *, capacity_bytes=None, limits=DestinationLimits(), serve=False, max_incoming=1, progress=None,
            timeout_s=10.0, wait_s=None, security=None, insecure=False, ready=None, on_outcome=None):
    """The destination end: wait at `listen` for a source; return the outcome of the (last) migration.

    Ctrl-C while waiting: a serving receiver returns None (it stopped between
    migrations), a single one raises KeyboardInterrupt.

    serve: keep accepting migrations, whatever became of the last, until interrupted:
    up to `max_incoming` at once, sharing `capacity_bytes` (emulator.destination.serving). limits: a
    DestinationLimits for all a source may ask besides memory. wait_s: how long to wait for a source to begin (None: until
    interrupted; not with serve). timeout_s: the longest silence from a source
    mid-migration. security: an emulator.dataplane.security.ServerSecurity for CURVE. Without
    it only a loopback address may be used, unless `insecure` (then anyone who can reach
    the port can push memory in). ready: called with the bound endpoint once listening;
    on_outcome: called with each migration's outcome.
    """
    if serve and wait_s is not None:
        raise ValueError("a serving receiver waits for sources until interrupted; wait_s is for a single migration")
    if max_incoming != 1 and not serve:
        raise ValueError("a single receive hosts one migration; max_incoming is for a serving receiver")
    host, _ = parse_endpoint(listen)
    if security is None and not is_loopback(host) and not listen.startswith(("ipc://", "inproc://")):
        if not insecure:
            raise ValueError(f"refusing to listen on {listen} without CURVE keys: anyone who reaches it could push "
                             "memory into this host; give keys, or accept the risk explicitly")
        if progress:
            progress.message(f"WARNING: listening on {listen} UNAUTHENTICATED and UNENCRYPTED")
    ready_to_move_pages(progress)
    link = DestinationLink(listen, timeout_s, security=security)
    try:
        if ready:
            ready(link.endpoint)
        if progress:
            progress.message(f"listening on {link.endpoint}" + (" (CURVE)" if security else ""))
        if serve:
            return Listener(link, capacity_bytes=capacity_bytes, limits=limits, max_incoming=max_incoming,
                            progress=progress, on_outcome=on_outcome).serve()
        outcome = Destination(link, capacity_bytes=capacity_bytes, limits=limits, progress=progress).run(
            hello_timeout_s=math.inf if wait_s is None else wait_s)
        if on_outcome:
            on_outcome(outcome)
        return outcome
    except KeyboardInterrupt:  # a serving receiver stopped before it began to serve: nothing was in progress
        if not serve:
            raise
        if progress:
            progress.message("stopped; no migration was in progress")
        return None
    finally:
        link.close()
