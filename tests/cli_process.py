"""Run `precopy` subcommands as real processes for tests, with bounded waits."""

import os
import re
import signal
import subprocess
import sys
import time

LISTENING = re.compile(r"listening on (tcp://\S+)")


class PrecopyProcess:
    """`python -m emulator.cli ARGS` in its own process group; stderr is read for its endpoint."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def wait_listening(self, timeout_s=60):
        """The endpoint a receiver reports once it listens."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            match = LISTENING.search(line)
            if match:
                return match.group(1)
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"the receiver did not report listening (exit {self.proc.poll()})")

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
