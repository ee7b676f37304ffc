"""The tee: one Progress heard by several watchers, the terminal's display and the watch page, say."""

from emulator.source.progress import watching


class Tee:
    """A Progress that tells each of `watchers` (Progress, partial ones, or None: left out) what it hears.

    interval_s: the shortest any of them asks for (0 if none does)."""

    def __init__(self, *watchers):
        self.watchers = [watching(watcher) for watcher in watchers if watcher is not None]
        self.interval_s = min((w.interval_s for w in self.watchers if w.interval_s), default=0.0)

    def migrating(self, guest):
        for watcher in self.watchers:
            watcher.migrating(guest)

    def sending(self, numbers, counter):
        for watcher in self.watchers:
            watcher.sending(numbers, counter)

    def phase(self, name, elapsed_s):
        for watcher in self.watchers:
            watcher.phase(name, elapsed_s)

    def pass_done(self, record, page_size, total_pages):
        for watcher in self.watchers:
            watcher.pass_done(record, page_size, total_pages)

    def interval(self, sample, page_size):
        for watcher in self.watchers:
            watcher.interval(sample, page_size)

    def message(self, text):
        for watcher in self.watchers:
            watcher.message(text)
