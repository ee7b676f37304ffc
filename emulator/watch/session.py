"""A watch session: the watcher, its feed and its server, started and stopped together."""

from emulator.watch.feed import Feed
from emulator.watch.server import WatchServer
from emulator.watch.watcher import SAMPLE_EVERY_S, Watcher

LINGER_S = 1.0  # at the end, open pages get this long to receive the last state


class WatchSession:
    """A page at `url` showing the migration `watcher` (a Progress) hears, served at `host`.

    As a context manager: started on entry; on exit finished (as "failed", or "cancelled" by
    Ctrl-C, if `finish` was not called) and closed."""

    def __init__(self, host="127.0.0.1", every_s=SAMPLE_EVERY_S):
        self.feed = Feed()
        self.watcher = Watcher(self.feed, every_s)
        self.server = WatchServer(self.feed, host)
        self.finished = False

    @property
    def url(self):
        return self.server.url

    def start(self):
        self.server.start()
        self.watcher.start()
        return self

    def finish(self, status, reason=None):
        """The migration ended with `status` (a Report's): the page shows it."""
        self.watcher.finish(status, reason)
        self.finished = True

    def close(self, linger_s=LINGER_S):
        self.server.close(linger_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, traceback):
        if not self.finished:
            self.finish("cancelled" if exc_type is KeyboardInterrupt else "failed", str(exc) if exc else None)
        self.close()
