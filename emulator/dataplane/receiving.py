"""The destination's data plane: a thread per data channel, so no single thread touches every byte.

Each channel's thread (named recv-N) receives its socket's messages, has the
protocol engine check each one (type, seq, pass, count: DestinationProtocol.check_data),
places it (decompresses, copies into place, hashes: the `place` it is given, a
BatchApplier of the channel's own), and then tells the engine it was applied. The
thread that owns the control socket runs the protocol and touches no page bytes:
it hears from the channels only when a pass is complete or a channel failed, both
through the link's doorbell, which wakes its poll.

Why this is safe: pages of one pass are distinct, so the channels place and hash
them at once without locks (each hashes into a part of the running digest of its
own, emulator.dataplane.digest); a pass is acknowledged only once every message announced is
in memory, and the source sends nothing of the next pass before that.
"""

import queue
import threading
import time

from emulator.dataplane.threads import name_this_thread
from emulator.wire.protocol import ProtocolError

POLL_S = 0.05  # how long a channel's thread waits on its socket before it looks whether to stop


class ReceivingPlane:
    """The data channels of one incoming migration, each read, checked and placed on a thread of its own.

    receivers: one transport.DataReceiver (or alike) per channel; protocol: the migration's
    DestinationProtocol; place(channel, message): puts a checked data message into memory, on
    that channel's thread; doorbell: rung (from a channel's thread) when events() has something.
    """

    def __init__(self, receivers, protocol, place, doorbell, clock=time.monotonic):
        self.protocol, self.place, self.doorbell, self.clock = protocol, place, doorbell, clock
        self.last_heard_at = clock()  # when a data message last arrived, on any channel
        self._news = queue.SimpleQueue()  # closing events, and failures, for the control thread
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(channel, receiver), name=f"recv-{channel}",
                                          daemon=True) for channel, receiver in enumerate(receivers)]
        for thread in self._threads:
            thread.start()

    def events(self):
        """The protocol events the channels produced since the last call (pass complete...); a channel's
        failure is raised here, on the caller's thread."""
        found = []
        while True:
            try:
                news = self._news.get_nowait()
            except queue.Empty:
                return found
            if isinstance(news, ProtocolError):
                self.protocol.fail(news)  # raises it, the side FAILED
            if isinstance(news, BaseException):
                raise news
            found += news

    def stop(self):
        """Stop every channel's thread and wait for it: the sockets and memory may then be closed."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()

    def _run(self, channel, receiver):
        name_this_thread(f"recv-{channel}")
        try:
            while not self._stopping.is_set():
                frames = receiver.recv(POLL_S)
                if frames is None:
                    continue
                self.last_heard_at = self.clock()
                message = self.protocol.check_data(channel, frames)
                self.place(channel, message)
                closing = self.protocol.data_applied(channel, message)
                if closing:
                    self._tell(closing)
        except Exception as error:  # noqa: BLE001 - raised on the control thread (events), which ends the migration
            self._tell(error)

    def _tell(self, news):
        self._news.put(news)
        self.doorbell.ring()
