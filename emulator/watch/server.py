"""The watch server: the page and its event stream over HTTP, on threads of its own.

The standard library's ThreadingHTTPServer (a daemon thread per request) and Server-Sent
Events: no dependency to install, and the page only listens, so a one-way stream is all it
needs (docs/watch.md). Every path begins with a random token, and anything else is 404:
only whoever was given the URL sees the guest's page map.

    /TOKEN/         the page (emulator/watch/page.html)
    /TOKEN/events   the states as they come (text/event-stream): the latest only; it ends after the last
    /TOKEN/state    the latest state, once (JSON; 204 before the first)
"""

import hmac
import importlib.resources
import secrets
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

WAIT_SLICE_S = 0.25  # a stream looks for a newer state, or the server closing, this often
KEEPALIVE_S = 15.0  # a quiet stream gets a comment line this often, so nothing on the way drops it
RETRY_MS = 1000  # a browser whose stream broke tries again after this long
POLL_S = 0.05  # the server loop looks for shutdown this often


class WatchServer:
    """Serves `feed` (an emulator.watch.feed.Feed of JSON states) and the page at `host` on a free port."""

    def __init__(self, feed, host="127.0.0.1"):
        family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]  # OSError for an unknown host
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        self._http = server_class((host, 0), _Handler)
        self._http.feed, self._http.token = feed, secrets.token_urlsafe(16)
        self._http.page = importlib.resources.files(__package__).joinpath("page.html").read_bytes()
        self._http.closing, self._http.streams = threading.Event(), _Count()
        self._thread = threading.Thread(target=self._http.serve_forever, args=(POLL_S,), name="watch-server",
                                        daemon=True)

    @property
    def url(self):
        host, port = self._http.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/{self._http.token}/"

    def start(self):
        self._thread.start()
        return self

    def close(self, linger_s=1.0):
        """Stop serving, once every open stream has sent the last state or after `linger_s` seconds."""
        deadline = time.monotonic() + linger_s
        while self._http.streams.value and time.monotonic() < deadline:
            time.sleep(POLL_S)
        self._http.closing.set()
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an open stream never keeps the process alive


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Count:
    """A counter threads share."""

    def __init__(self):
        self._lock, self.value = threading.Lock(), 0

    def add(self, amount):
        with self._lock:
            self.value += amount


class _Handler(BaseHTTPRequestHandler):
    server_version = "precopy-watch"

    def do_GET(self):
        path = urlsplit(self.path).path
        token, slash, rest = path.lstrip("/").partition("/")
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            self.send_error(HTTPStatus.NOT_FOUND)
        elif not slash:
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", f"/{token}/")
            self.end_headers()
        elif rest == "":
            self._send(self.server.page, "text/html; charset=utf-8")
        elif rest == "events":
            self._stream()
        elif rest == "state":
            _, state, _ = self.server.feed.latest()
            if state is None:
                self._send(b"", None, HTTPStatus.NO_CONTENT)
            else:
                self._send(state, "application/json")
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _send(self, body, content_type, status=HTTPStatus.OK):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self):
        """The states as Server-Sent Events, newest only, until the last one (or the client or server goes)."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        server, version, quiet_since = self.server, 0, time.monotonic()
        server.streams.add(1)
        try:
            self.wfile.write(f"retry: {RETRY_MS}\n\n".encode())
            while not server.closing.is_set():
                news = server.feed.newer(version, WAIT_SLICE_S)
                if news is None:
                    if time.monotonic() - quiet_since >= KEEPALIVE_S:
                        self.wfile.write(b": still here\n\n")
                        quiet_since = time.monotonic()
                    continue
                version, state, done = news
                self.wfile.write(b"data: " + state + b"\n\n")
                self.wfile.flush()
                quiet_since = time.monotonic()
                if done:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed
        finally:
            server.streams.add(-1)

    def log_message(self, format, *args):
        pass  # the migration's display owns the terminal
