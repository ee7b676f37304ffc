"""Run migrations: both ends on this machine, or one end of a two-host migration.

`migrate(scenario)` is the library's front door (also from a notebook): it
starts a receiver in a child process listening on TCP loopback, builds and
starts the guest here, migrates it, and returns the Report.
"""

import multiprocessing

from emulator.allocator import keep_freed_buffers
from emulator.guest import GuestMemory
from emulator.receiver import Destination
from emulator.scenario import Scenario
from emulator.sender import Source
from emulator.transport import DestinationLink, SourceLink
from emulator.workload import Workload

CHILD_START_TIMEOUT_S = 120.0  # a cold child imports numpy/numba and may compile kernels


def run_source(scenario, to, *, progress=None, guest=None, workload=None):
    """Migrate a running guest to `to`; return the Report.

    guest, workload: a GuestMemory and its (not yet started) Workload; built from the
    scenario when not given. The writers run from before the migration starts to its end.
    """
    keep_freed_buffers()
    guest = guest or GuestMemory(scenario.guest)
    workload = workload or Workload(guest, scenario.workload)
    link = SourceLink(to, scenario.migration.timeout_s)
    try:
        with workload:
            return Source(scenario, guest, workload, link, progress=progress).run()
    finally:
        link.close()


def send(scenario, to, *, progress=None):
    """The source end of a two-host migration to a `precopy receive` at `to` (tcp://HOST:PORT)."""
    return run_source(scenario, to, progress=progress)


def receive(listen, *, capacity_bytes=None, serve=False, progress=None, timeout_s=10.0, ready=None):
    """The destination end: wait at `listen` for a source; return the outcome of the (last) migration.

    serve: keep accepting migrations one after another (until interrupted).
    ready: called with the bound endpoint once listening (useful with port 0).
    """
    keep_freed_buffers()
    while True:
        link = DestinationLink(listen, timeout_s)
        try:
            if ready:
                ready(link.endpoint)
            elif progress:
                progress.message(f"listening on {link.endpoint}")
            outcome = Destination(link, capacity_bytes=capacity_bytes, progress=progress).run(hello_timeout_s=None if serve else 3600.0)
        finally:
            link.close()
        if not serve:
            return outcome


def _receiver_child(connection, capacity_bytes, timeout_s):
    """Child process: listen on a free loopback port, report it, serve one migration, report the outcome."""
    keep_freed_buffers()
    link = DestinationLink("tcp://127.0.0.1:0", timeout_s)
    try:
        connection.send(link.endpoint)
        outcome = Destination(link, capacity_bytes=capacity_bytes).run(hello_timeout_s=CHILD_START_TIMEOUT_S)
    except KeyboardInterrupt:
        outcome = {"status": "cancelled", "reason": "cancelled by the user"}
    finally:
        link.close()
    connection.send(outcome)


def migrate(scenario=None, *, progress=None, capacity_bytes=None):
    """Migrate `scenario` (default: Scenario()) between two processes on this machine; return the Report."""
    scenario = scenario or Scenario()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or sockets
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_receiver_child, args=(child_end, capacity_bytes, scenario.migration.timeout_s),
                            name="precopy-receiver", daemon=True)
    child.start()
    try:
        if not parent_end.poll(CHILD_START_TIMEOUT_S):
            raise RuntimeError("the receiver process did not start")
        endpoint = parent_end.recv()
        if progress:
            progress.message(f"receiver listening on {endpoint} (pid {child.pid})")
        report = run_source(scenario, endpoint, progress=progress)
        outcome = parent_end.recv() if parent_end.poll(scenario.migration.timeout_s + 5) else None
        report.scenario["destination"] = outcome
        return report
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.terminate()
            child.join()
