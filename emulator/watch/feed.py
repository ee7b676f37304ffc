"""The feed: the latest state of a watched migration, for any number of readers.

Only the latest state is kept: a reader slower than the writer skips the states it missed,
and the writer never waits for a reader (it holds the lock only to swap one reference).
"""

import threading


class Feed:
    """The latest state (bytes) and its version (0: none yet); `done` once the last state is in."""

    def __init__(self):
        self._changed = threading.Condition()
        self.version, self.state, self.done = 0, None, False

    def publish(self, state, done=False):
        """Make `state` the latest; `done`: it is the last."""
        with self._changed:
            self.version += 1
            self.state, self.done = state, done
            self._changed.notify_all()

    def latest(self):
        """(version, state, done) now."""
        with self._changed:
            return self.version, self.state, self.done

    def newer(self, version, timeout_s):
        """(version, state, done) of a state newer than `version`, waiting up to `timeout_s`; None if none came."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.version > version, timeout_s):
                return None
            return self.version, self.state, self.done
