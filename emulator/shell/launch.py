"""The `precopy` command's entry point: a Ctrl-C while the command line loads ends it quietly.

Loading emulator.shell.cli (numpy, Numba, ZeroMQ) takes about 0.4 s, before main() can turn a
Ctrl-C into a clean cancel; meanwhile one ends the process at once with status 130 (see
the README's exit-status table) instead of a KeyboardInterrupt traceback. Only the
command does this: a notebook importing emulator keeps Python's Ctrl-C.
"""

import os
import signal


def main():
    def cancelled(signum, frame):
        os.write(2, b"precopy: cancelled\n")
        os._exit(130)  # nothing has started yet: nothing to stop or tell

    previous = signal.signal(signal.SIGINT, cancelled)
    from emulator.shell import cli  # here, under the handler above: see the docstring

    signal.signal(signal.SIGINT, previous)
    return cli.main()
