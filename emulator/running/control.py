"""A running migration's local control socket: `precopy status` asks it, `precopy set` adjusts it.

As QEMU's `info migrate` and `migrate-set-parameters`: while a source runs, a thread
answers on a ZeroMQ REP socket at ipc://RUNTIME/precopy/PID.ipc (RUNTIME:
$XDG_RUNTIME_DIR, or /tmp/precopy-UID; the directory is the user's alone). A request
is one JSON object: {"get": "status"}, or {"set": {NAME: VALUE}} with NAME one of
SETTABLE; the answer is one JSON object, {"error": text} when it was refused. Changes
take effect between two data messages and are recorded in the report.
"""

import json
import os
import tempfile
import threading
from pathlib import Path

import zmq

from emulator.source.policy import PolicyConfig
from emulator.vm.scenario import MigrationOptions

# what a running migration may change, each checked by the rule of the dataclass that holds it in a scenario
SETTABLE = {"downtime_limit_s": PolicyConfig.RULES["downtime_limit_s"],
            "max_bandwidth_bytes_per_s": MigrationOptions.RULES["max_bandwidth_bytes_per_s"]}


class NotRunning(LookupError):
    """No migration of this user's runs where one was asked for: nothing to talk to (the CLI exits 1)."""


def runtime_dir():
    """Where running migrations' control sockets are (made, private to this user, if missing)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    directory = Path(base) / "precopy" if base else Path(tempfile.gettempdir()) / f"precopy-{os.getuid()}"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def checked_change(name, value):
    """`value` for setting `name` on a running migration; ValueError naming what is wrong."""
    if name not in SETTABLE:
        raise ValueError(f"{name!r} cannot be changed while a migration runs: only {', '.join(SETTABLE)}")
    try:
        return SETTABLE[name](value)
    except ValueError as error:
        raise ValueError(f"{name} {error}") from None


class ControlServer:
    """Answers status and set requests for `source` (an emulator.source.sender.Source) on a thread, until stopped."""

    def __init__(self, source, path=None):
        self.source = source
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        try:
            self.path = Path(path) if path else runtime_dir() / f"{os.getpid()}.ipc"
            self.socket.bind(f"ipc://{self.path}")
        except (OSError, zmq.ZMQError):  # no runtime directory, or another migration here has the socket:
            self.path = None  # this one runs without
            self.socket.close()
        else:
            self._thread.start()

    def _serve(self):
        try:
            while True:
                if self.socket.poll():
                    self.socket.send_string(json.dumps(self._answer(self.socket.recv())))
        except zmq.ContextTerminated:  # close() ended the context: the poll returns at once, not at a timeout
            pass
        finally:
            self.socket.close()

    def _answer(self, request):
        try:
            request = json.loads(request)
            if request == {"get": "status"}:
                return self.source.status()
            changes = request["set"] if isinstance(request, dict) and set(request) == {"set"} else None
            if not isinstance(changes, dict) or not changes:
                raise ValueError('expected {"get": "status"} or {"set": {NAME: VALUE}}')
            for name, value in changes.items():
                self.source.change(name, checked_change(name, value))
            return {"ok": True}
        except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
            return {"error": str(error)}

    def close(self):
        self.context.term()  # returns once the serving thread has closed its socket
        if self.path is not None:
            self._thread.join()
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def running():
    """The control sockets of this user's running migrations, as {pid: path}; stale ones are removed."""
    found = {}
    for path in runtime_dir().glob("*.ipc"):
        pid = int(path.stem) if path.stem.isdigit() else None
        if pid is not None and _alive(pid):
            found[pid] = path
        else:
            path.unlink(missing_ok=True)
    return found


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def ask(path, request, timeout_s=5.0):
    """Send `request` (a dict) to the control socket at `path`; its answer (a dict)."""
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{path}")
        sock.send_string(json.dumps(request))
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"the migration at {path} did not answer within {timeout_s:g} s")
        return json.loads(sock.recv())
    finally:
        sock.close()
        context.term()
