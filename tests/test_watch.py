"""`--watch`: the page map against plain references, at real pass boundaries, the server, and a real browser.

The browser tests run Debian's headless chromium and are skipped, with the reason, where it
is absent. Every subprocess and every wait is bounded; everything is on loopback.
"""

import http.client
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from emulator.dataplane.transport import DestinationLink, SourceLink
from emulator.shell.commands import migrate as migrate_command
from emulator.source.policy import PolicyConfig
from emulator.source.progress import Quiet, watching
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import Workload, WorkloadSpec
from emulator.watch import pagemap
from emulator.watch.feed import Feed
from emulator.watch.pagemap import CLEAN, DIRTY, NOT_SENT, SENDING, ZERO, Grid
from emulator.watch.server import WatchServer
from emulator.watch.session import WatchSession
from emulator.watch.tee import Tee
from emulator.watch.watcher import Watcher, encode
from tests.cli_process import PrecopyProcess
from tests.engines import run_pair

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian's package "
                                                             "`chromium`; .ci/run installs it where it can)")
URL_LINE = re.compile(r"watch: (http://127\.0\.0\.1:\d+/[\w-]+/)")


# plain references ------------------------------------------------------------------------------
def reference_dirty(words, n_pages):
    return [bool((int(words[page // 64]) >> (page % 64)) & 1) for page in range(n_pages)]


def reference_states(sent, dirty, zero, sending):
    states = []
    for page in range(len(sent)):
        if page in sending:
            states.append(SENDING)
        elif not sent[page]:
            states.append(NOT_SENT)
        elif dirty[page]:
            states.append(DIRTY)
        else:
            states.append(ZERO if zero[page] else CLEAN)
    return states


def reference_cells(states, pages_per_cell):
    """A cell: being sent if any page is, else dirty if any is, else not sent if any is, else clean if any
    is, else zero."""
    cells = []
    for first in range(0, len(states), pages_per_cell):
        pages = states[first : first + pages_per_cell]
        cells.append(next(state for state in (SENDING, DIRTY, NOT_SENT, CLEAN, ZERO) if state in pages))
    return cells


def reference_any(pages, n_pages, pages_per_cell):
    """Cells holding any of `pages`."""
    marked = set(int(page) for page in pages)
    return [any(page in marked for page in range(first, min(first + pages_per_cell, n_pages)))
            for first in range(0, n_pages, pages_per_cell)]


# the page map -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_pages, max_cells, expected", [
    (262_144, pagemap.MAX_CELLS, Grid(1, 262_144, 512, 512)),  # 1 GiB of 4 KiB pages
    (4_194_304, pagemap.MAX_CELLS, Grid(16, 262_144, 512, 512)),  # 16 GiB
    (262_145, pagemap.MAX_CELLS, Grid(2, 131_073, 363, 362)),
    (4096, pagemap.MAX_CELLS, Grid(1, 4096, 64, 64)),
    (4097, 1024, Grid(5, 820, 29, 29)),
    (1, pagemap.MAX_CELLS, Grid(1, 1, 1, 1)),
])
def test_a_grid_has_the_fewest_pages_per_cell_that_fit_and_is_as_square_as_it_goes(n_pages, max_cells, expected):
    grid = Grid.for_pages(n_pages, max_cells)
    assert grid == expected
    assert grid.columns * grid.rows >= grid.cells


def test_a_grid_of_nothing_is_refused():
    with pytest.raises(ValueError, match="0 pages"):
        Grid.for_pages(0)


@pytest.mark.parametrize("n_pages", [1, 63, 64, 65, 1000, 4096])
def test_the_dirty_pages_are_the_bitmap_s_bits(n_pages):
    rng = np.random.default_rng(n_pages)
    words = rng.integers(0, 2**64, size=(n_pages + 63) // 64, dtype=np.uint64)
    assert pagemap.dirty_pages(words, n_pages).tolist() == reference_dirty(words, n_pages)
    with pytest.raises(ValueError, match="uint64 words"):
        pagemap.dirty_pages(words.astype(np.int64), n_pages)


@pytest.mark.parametrize("n_pages, max_cells", [(1, 1), (7, 3), (64, 64), (1000, 37), (4097, 1024), (5000, 5000)])
def test_page_states_and_cells_are_those_of_the_plain_rule(n_pages, max_cells):
    rng = np.random.default_rng(n_pages * 31 + max_cells)
    sent, dirty, zero = (rng.random(n_pages) < share for share in (0.7, 0.2, 0.3))
    sending = np.sort(rng.choice(n_pages, size=n_pages // 5, replace=False)).astype(np.int64)
    states = pagemap.page_states(sent, dirty, zero, sending)
    assert states.tolist() == reference_states(sent, dirty, zero, set(sending.tolist()))
    grid = Grid.for_pages(n_pages, max_cells)
    assert pagemap.downsample(states, grid).tolist() == reference_cells(states.tolist(), grid.pages_per_cell)
    assert pagemap.counts(states) == {name: states.tolist().count(state)
                                      for state, name in enumerate(pagemap.STATE_NAMES)}


def test_a_lone_page_of_a_cell_decides_its_state():
    grid = Grid.for_pages(8, 2)  # 4 pages per cell
    for state in (CLEAN, NOT_SENT, DIRTY, SENDING):
        states = np.full(8, ZERO, dtype=np.uint8)
        states[5] = state
        assert pagemap.downsample(states, grid).tolist() == [ZERO, state]


# the watcher at real pass boundaries ----------------------------------------------------------------
def scenario(memory_pages, rate_bytes_per_s, dirty_pages_per_s, codec="lz4", **policy):
    return Scenario(GuestSpec(memory_pages * PAGE, fill="mixed", seed=3),
                    WorkloadSpec(vcpus=1, rate_pages_per_s=dirty_pages_per_s, pattern="hotset", seed=4),
                    MigrationOptions(codec=codec, max_bandwidth_bytes_per_s=rate_bytes_per_s, timeout_s=5.0,
                                     policy=PolicyConfig(**policy)))


def loopback(s):
    destination = DestinationLink("tcp://127.0.0.1:0", timeout_s=s.migration.timeout_s)
    return SourceLink(destination.endpoint, s.migration.timeout_s, channels=s.migration.channels), destination


class Boundaries:
    """At each pass's end: pause the writers and take the watcher's sample, then keep the page list the source
    harvests next (the writers resume if pre-copy goes on; in the blackout the source keeps them paused)."""

    def __init__(self, watcher, workload):
        self.watcher, self.workload = watcher, workload
        self.phase_now, self.sample, self.seen = None, None, []

    def phase(self, name, elapsed_s):
        self.phase_now = name

    def pass_done(self, record, page_size, total_pages):
        self.workload.pause()
        self.sample = self.watcher.sample()

    def sending(self, numbers, counter):
        if self.sample is None:
            return
        self.seen.append((self.sample, numbers.copy(), self.phase_now))
        self.sample = None
        if self.phase_now == "precopy":
            self.workload.resume()


def test_at_each_pass_boundary_the_dirty_cells_are_exactly_the_pages_the_next_pass_sends():
    # 16 MiB at 20 MB/s: pass 0 takes about half a second, and a 5 ms budget holds fewer pages than the
    # hot set dirties in a pass, so pre-copy runs its three passes
    s = scenario(4096, 20e6, 3000, downtime_limit_s=0.005, max_passes=3)
    guest = GuestMemory(s.guest)
    workload = Workload(guest, s.workload)
    watcher = Watcher(Feed(), every_s=0.05, max_cells=1024).start()  # 4 pages a cell; its thread samples too
    boundaries = Boundaries(watcher, workload)
    links = loopback(s)
    try:
        report, outcome, _, _ = run_pair(s, *links, guest=guest, workload=workload, progress=Tee(watcher, boundaries))
    finally:
        for link in links:
            link.close()
    watcher.finish(report.status, report.reason)
    assert report.status == "completed" and outcome.status == "completed", report.reason
    assert len(report.passes) >= 2  # a pass boundary inside pre-copy, and the one before the blackout
    assert [phase for _, _, phase in boundaries.seen] == ["precopy"] * (len(report.passes) - 1) + ["blackout"]
    for sample, sent_next, _ in boundaries.seen:
        assert sample["grid"]["pages_per_cell"] == 4 and sample["counts"]["sending"] == 0
        assert sample["counts"]["not_sent"] == 0 and sample["counts"]["dirty"] == sent_next.size > 0
        cells = sample["cells"].tolist()
        assert [cell == DIRTY for cell in cells] == reference_any(sent_next, guest.n_pages, 4)
        assert all(cell in (ZERO, CLEAN) for cell in cells if cell != DIRTY)
    last = json.loads(watcher.feed.latest()[1])
    assert watcher.feed.latest()[2] and last["status"] == "completed" and last["done"]
    assert last["counts"]["clean"] + last["counts"]["zero"] == guest.n_pages  # all sent, none written since
    assert last["counts"]["zero"] == int(sum(not guest.page(page).any() for page in range(guest.n_pages)))
    assert [p["pass"] for p in last["passes"]] == list(range(len(report.passes)))
    assert [p["pages"] for p in last["passes"]] == [p.pages_sent for p in report.passes]
    assert sum(p["still_current"] for p in last["passes"]) + report.blackout.final_pages == guest.n_pages


def test_a_watcher_with_only_some_of_progress_s_methods_is_completed_by_quiet():
    class PhasesOnly:
        def phase(self, name, elapsed_s):
            pass

    partial = watching(PhasesOnly())
    assert partial.sending(np.arange(3), None) is None and partial.migrating(None) is None
    assert watching(Watcher(Feed())).sending.__self__.__class__ is Watcher
    tee = Tee(None, PhasesOnly(), Quiet())
    assert len(tee.watchers) == 2 and tee.interval_s == 0.0


def test_a_watcher_before_the_guest_says_it_waits_and_encodes_to_json():
    watcher = Watcher(Feed())
    watcher.message("compiling")
    state = json.loads(encode(watcher.sample()))
    assert state == {"status": "waiting", "reason": None, "phase": None, "messages": ["compiling"], "done": False}


# the server ---------------------------------------------------------------------------------------
def get(url, path, timeout_s=5.0):
    """(status, headers, body) of GET `path` at the server of `url`."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


class EventReader:
    """The `data:` events of a server-sent event stream, read one at a time (each read bounded)."""

    def __init__(self, url, path, timeout_s=5.0):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()

    def next(self):
        """The next event's data, or None once the stream ended."""
        while True:
            line = self.response.fp.readline()
            if not line:
                return None
            if line.startswith(b"data: "):
                return line[len(b"data: "):].rstrip(b"\n")

    def close(self):
        self.connection.close()


@pytest.fixture
def served():
    feed = Feed()
    server = WatchServer(feed).start()
    yield feed, server, urlsplit(server.url).path.strip("/")
    server.close(linger_s=0)


def test_the_server_answers_only_under_its_token(served):
    feed, server, token = served
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/[\w-]{22}/", server.url)
    for path in ("/", "/events", "/state", f"/{token[:-1]}/", f"/{token}x/events", f"/x/{token}/", "/favicon.ico",
                 f"/{token}/nothing", f"/{token}/events/"):
        assert get(server.url, path)[0] == 404, path
    status, headers, page = get(server.url, f"/{token}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<canvas id="map"' in page and b'new EventSource("events")' in page
    status, headers, _ = get(server.url, f"/{token}")
    assert status == 301 and headers["Location"] == f"/{token}/"
    assert get(server.url, f"/{token}/state")[0] == 204  # nothing published yet
    feed.publish(b'{"n":1}')
    assert get(server.url, f"/{token}/state?x=1")[::2] == (200, b'{"n":1}')


def test_the_stream_sends_the_latest_json_state_and_ends_after_the_last(served):
    feed, server, token = served
    for n in range(1, 101):
        feed.publish(json.dumps({"n": n}).encode())
    events = EventReader(server.url, f"/{token}/events")
    try:
        assert events.response.getheader("Content-Type") == "text/event-stream"
        assert json.loads(events.next()) == {"n": 100}  # a late reader gets the latest, not the 99 before
        feed.publish(b'{"n":101}')
        assert json.loads(events.next()) == {"n": 101}
        feed.publish(b'{"n":102,"done":true}', done=True)
        assert json.loads(events.next()) == {"n": 102, "done": True}
        assert events.next() is None  # the stream ends: the page stops listening
    finally:
        events.close()


def test_a_reader_that_does_not_read_never_holds_up_the_feed(served):
    feed, server, token = served
    events = EventReader(server.url, f"/{token}/events")  # open, and never read: its socket fills
    try:
        big = b"x" * 1_000_000
        started = time.monotonic()
        for _ in range(200):  # 200 MB offered to a reader that takes none of it
            feed.publish(big)
        assert time.monotonic() - started < 1.0
        assert feed.latest()[0] == 200
    finally:
        events.close()


def test_a_page_gets_at_least_five_states_a_second():
    with WatchSession() as session:  # the default rate
        events = EventReader(session.url, urlsplit(session.url).path + "events")
        try:
            started, states = time.monotonic(), 0
            while time.monotonic() - started < 1.0:
                assert json.loads(events.next())["status"] == "waiting"
                states += 1
        finally:
            events.close()
    assert states >= 5


def test_a_session_that_ends_without_a_report_says_failed_and_stops_serving():
    session = WatchSession(every_s=0.02)
    with pytest.raises(RuntimeError), session:
        url = session.url
        raise RuntimeError("the receiver process did not start")
    state = json.loads(session.feed.latest()[1])
    assert state["status"] == "failed" and state["reason"] == "the receiver process did not start"
    with pytest.raises(OSError):
        get(url, urlsplit(url).path, timeout_s=1.0)


# the command ---------------------------------------------------------------------------------------
def test_migrate_with_watch_prints_the_url_before_setup_and_serves_the_page_while_it_runs():
    run = PrecopyProcess("migrate", "--memory", "16MiB", "--dirty-rate", "1000pages/s", "--max-bandwidth",
                         "4MB/s", "--quiet", "--watch")
    try:
        url = run.wait_for(URL_LINE, timeout_s=60).group(1)
        status, _, page = get(url, urlsplit(url).path)
        assert status == 200 and b"precopy watch" in page
        assert get(url, "/")[0] == 404
    finally:
        code, out, err = run.finish(timeout_s=120)
    assert code == 0, err[-2000:]
    assert "completed" in out


def test_watch_address_warns_away_from_loopback_and_refuses_an_unknown_host():
    assert migrate_command.watch_address_warning("127.0.0.1") is None
    assert migrate_command.watch_address_warning("::1") is None
    warning = migrate_command.watch_address_warning("0.0.0.0")
    assert warning.startswith("WARNING") and "0.0.0.0" in warning and "token" in warning
    run = PrecopyProcess("migrate", "--memory", "16MiB", "--watch-address", "no-such-host.invalid")
    code, _, err = run.finish(timeout_s=60)
    assert code == 2 and "--watch-address" in err and "no-such-host.invalid" in err


# a real browser ------------------------------------------------------------------------------------
def chromium(url, *options, timeout_s=60.0):
    """Headless chromium at `url` with `options`, a profile of its own; its stdout."""
    with tempfile.TemporaryDirectory(prefix="precopy-chromium-") as profile:
        done = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                               "--no-first-run", f"--user-data-dir={profile}", *options, url],
                              capture_output=True, text=True, timeout=timeout_s)
    return done.stdout


def screenshot(url, path, window=(1180, 720)):
    """A still of the watch page at `url` as it is now (its first state) into `path` (PNG)."""
    chromium(f"{url}?frames=1", f"--screenshot={path}", f"--window-size={window[0]},{window[1]}",
             "--virtual-time-budget=1000")
    assert Path(path).is_file(), f"chromium made no screenshot of {url}"


def map_colours(path):
    """Pixels of each page-state colour in the page map's place on a screenshot: {state: count}."""
    import matplotlib.image

    pixels = np.rint(matplotlib.image.imread(path)[:, :, :3] * 255).astype(int)[60:580, 16:530]
    palette = {ZERO: (207, 232, 207), CLEAN: (44, 160, 44), NOT_SENT: (90, 90, 90), DIRTY: (214, 39, 40),
               SENDING: (31, 119, 180)}
    return {state: int(np.count_nonzero(np.abs(pixels - colour).max(axis=2) <= 8)) for state, colour in
            palette.items()}


def pages_being_sent(feed):
    state = feed.latest()[1]
    return json.loads(state).get("counts", {}).get("sending", 0) if state else 0


def wait_for(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@needs_chromium
def test_a_browser_sees_the_page_map_change_during_a_migration_and_completed_at_its_end(tmp_path):
    # 16 MiB, raw, at 2 MB/s: pass 0 (10 MB of non-zero pages) takes about 5 s, pass 1 and the blackout 2 s more
    s = scenario(4096, 2e6, 1000, codec="raw", downtime_limit_s=0.05, max_passes=2)
    session = WatchSession().start()
    links = loopback(s)
    ended = {}
    migration = threading.Thread(target=lambda: ended.update(report=run_pair(s, *links, progress=session.watcher)[0]),
                                 daemon=True)
    with tempfile.TemporaryDirectory(prefix="precopy-chromium-") as profile:
        watching_to_the_end = subprocess.Popen(
            [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", "--virtual-time-budget=1000", session.url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        try:
            migration.start()
            wait_for(lambda: pages_being_sent(session.feed) > 0, 30, "pass 0")
            first, second = tmp_path / "first.png", tmp_path / "second.png"
            screenshot(session.url, first)
            time.sleep(1.0)
            screenshot(session.url, second)
            assert migration.is_alive(), "the migration ended before the second screenshot: make it longer"
            migration.join(timeout=60)
            report = ended["report"]
            session.finish(report.status, report.reason)
            dom, _ = watching_to_the_end.communicate(timeout=60)
        finally:
            watching_to_the_end.kill()
            watching_to_the_end.wait()
            for link in links:
                link.close()
            session.close()
    assert report.status == "completed", report.reason
    before, after = map_colours(first), map_colours(second)
    assert sum(before.values()) > 100_000 and sum(after.values()) > 100_000  # a map was drawn in both
    assert before != after and after[SENDING] < before[SENDING]  # the pass moved on between them
    assert re.search(r'<span id="status" class="completed">completed</span>', dom), dom[-3000:]
