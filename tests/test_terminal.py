"""The live display as a user sees it: `precopy migrate` on a real terminal (a pty), during a long pass 0."""

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.cli_process import as_from_a_terminal

pytestmark = pytest.mark.skipif(not hasattr(pty, "openpty"), reason="needs a pseudo-terminal")

PRECOPY = [sys.executable, "-c", "import sys; from emulator.shell.launch import main; sys.exit(main())"]  # the entry point
INTERVAL_LINE = re.compile(r"^  \.\.\. \S+ \S+ of \S+ \S+ at .* pass left ")  # text.format_interval_line
COLUMNS = 100


def _run_on_a_terminal(argv, timeout_s):
    """Run argv with stdin, stdout and stderr on one pty; return (exit status, [(seconds, line), ...])."""
    controller, terminal = pty.openpty()
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
                            env={**os.environ, "COLUMNS": str(COLUMNS)}, preexec_fn=as_from_a_terminal)
    os.close(terminal)
    lines, pending = [], b""
    try:
        while time.monotonic() - began < timeout_s:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: every process on it has exited
                break
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lines += [(time.monotonic() - began, line.decode().rstrip("\r")) for line in complete]
        else:
            raise AssertionError(f"did not finish in {timeout_s} s: {lines[-5:]}")
        return proc.wait(timeout=10), lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(controller)


def test_a_long_pass_0_shows_a_line_each_interval_that_fits_the_terminal():
    # 48 MiB of random pages at 8 MB/s: pass 0 takes about 6 s, an interval line each second.
    status, lines = _run_on_a_terminal(
        [*PRECOPY, "migrate", "--memory", "48MiB", "--fill", "random",
         "--codec", "raw", "--dirty-rate", "0", "--max-bandwidth", "8MB/s"], timeout_s=120)
    text = "\n".join(line for _, line in lines)
    assert status == 0, text
    assert all(len(line) <= COLUMNS for _, line in lines), text
    assert re.search(r"setup \(after .* of start-up", text), text
    during = [at for at, line in lines if INTERVAL_LINE.search(line)]
    assert len(during) >= 4, text  # about 5 in 6 s, arriving as the pass runs, not all at the end
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(1, abs=0.3), gaps
    assert "status       completed" in text
