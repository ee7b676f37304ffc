"""Run `precopy` subcommands as real processes for tests, with bounded waits."""

import os
import re
import signal
import subprocess
import sys
import time

LISTENING = re.compile(r"listening on (tcp://\S+)")


def as_from_a_terminal():
    """For Popen's preexec_fn: Ctrl-C (SIGINT) handled as a terminal's job gets it. A job started with `&`
    from a script inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class PrecopyProcess:
    """`python -m emulator.shell.cli ARGS` in its own process group; stderr is read for its endpoint."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "emulator.shell.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True,
                                     preexec_fn=as_from_a_terminal)

    def wait_listening(self, timeout_s=60):
        """The endpoint a receiver reports once it listens."""
        return self.wait_for(LISTENING, timeout_s).group(1)

    def wait_for(self, pattern, timeout_s=60):
        """Read stderr until a line matches `pattern` (a compiled regex); return the match.

        The deadline is checked between lines, so a process that goes silent is caught
        by the test's own timeout rather than here.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            match = pattern.search(line)
            if match:
                return match
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"precopy never printed {pattern.pattern!r} (exit {self.proc.poll()})")

    def signal(self, signum):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)

    def finish(self, timeout_s=30):
        """Wait for the process; return (exit status, stdout, stderr). Kills it if it overstays."""
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            out, err = self.proc.communicate()
            raise AssertionError(f"precopy did not finish in {timeout_s} s: {err[-2000:]}") from None
        return self.proc.returncode, out, err
