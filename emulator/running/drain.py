"""Drain a host: migrate a set of running guests away, at most K at once, under one link budget.

Each guest is a process of its own with its own writers, as each VM is on a real host: it
fills its memory (and its disk, named for it: with_own_disk) and runs from the drain's
start, queued or not, until its migration completes (its guest then runs on the
destination) or the drain ends (it keeps running here). It migrates as `precopy send`
does, through emulator.running.migration.run_source, so `precopy status` and `set` reach it
while it moves. The drain starts a queued guest whenever fewer than K migrate, in its
order, on the destination its placement picks among those that would host it now (a
CHECK each: compatible, not busy). Every migration's data messages draw from one token
bucket in shared memory (emulator.source.ratelimit.SharedBalance): the cap is the link's, not a
static split. A failed migration leaves its guest running here; the drain goes on, and
with retry tries it once more at the end. Ctrl-C (or SIGTERM) cancels every migration,
each source telling its destination.
"""

import contextlib
import json
import multiprocessing
import queue
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from emulator.analysis.report import Report
from emulator.core import fields
from emulator.core.errors import MigrationError
from emulator.core.units import format_bytes, format_duration, format_rate
from emulator.shell import run_options
from emulator.source.ratelimit import SharedBalance, make_limiter
from emulator.vm.scenario import Scenario

ORDERS = ("listed", "largest")  # the queue: as the inventory lists the guests, or the largest memory first
PLACEMENTS = ("round-robin", "capacity")  # the next destination in turn, or the one with the most memory free
LINK_SAMPLE_S = 0.5  # the link's use is sampled over windows this long: 50 of the budget's bursts (_LinkUse)
GUEST_START_TIMEOUT_S = 300.0  # a guest process imports, fills its memory and warms up the data path
SCHEMA = 1


@dataclass(frozen=True)
class DrainGuest:
    """One guest to move: a name and the scenario it migrates with (its own cap included)."""

    name: str
    scenario: Scenario


def with_own_disk(guest, number):
    """`guest` (a DrainGuest), its disk if it has one named `guest<number>-<its name>`: the drain's guests may
    all mirror their disks into one receiver's disk directory, where a name taken refuses the next guest."""
    disk = guest.scenario.disk
    if disk is None:
        return guest
    return DrainGuest(guest.name, replace(guest.scenario, disk=replace(disk, name=f"guest{number}-{disk.name}")))


@dataclass(frozen=True)
class DrainOptions:
    """How the drain runs.

    destinations: `precopy receive --serve` endpoints; max_concurrent: K, migrations at
    once (Hyper-V's default 2); order, placement: see ORDERS, PLACEMENTS;
    max_bandwidth_bytes_per_s: the link budget all migrations share (None: unlimited);
    retry: try a failed migration once more after the others.
    """

    destinations: tuple[str, ...]
    max_concurrent: int = 2
    order: str = "listed"
    placement: str = "round-robin"
    max_bandwidth_bytes_per_s: float | None = None
    retry: bool = False

    RULES: ClassVar[dict] = {
        "destinations": lambda value: _destinations(value), "max_concurrent": fields.whole(1, 256),
        "order": fields.one_of(ORDERS), "placement": fields.one_of(PLACEMENTS),
        "max_bandwidth_bytes_per_s": fields.optional(fields.real(0, above=True), "unlimited"), "retry": fields.flag,
    }

    def __post_init__(self):
        fields.check(self, self.RULES)


def _destinations(value):
    if not isinstance(value, tuple) or not value or not all(isinstance(item, str) for item in value):
        raise ValueError(f"must be one endpoint or more, got {value!r}")
    return value


@dataclass
class GuestRun:
    """One guest's drain: where it went and when (seconds from the drain's start), and its report."""

    name: str
    memory_bytes: int
    status: str = "queued"  # queued, migrating, completed, failed, cancelled, not started
    destination: str | None = None
    reason: str | None = None
    attempts: int = 0
    queued_s: float = 0.0
    started_s: float | None = None
    switchover_s: float | None = None
    resumed_s: float | None = None
    ended_s: float | None = None  # when its last migration ended (None: none has)
    report: Report | None = None

    def to_dict(self):
        data = asdict(self)
        data["report"] = None if self.report is None else json.loads(self.report.to_json())
        return data


@dataclass
class DrainReport:
    """What a drain did: every guest's run and report, the concurrency and the link's use over time."""

    options: DrainOptions
    guests: list[GuestRun]
    total_s: float = 0.0
    link: list[tuple[float, float]] = field(default_factory=list)  # (time, bytes/s on the wire) samples
    schema: int = SCHEMA

    @property
    def concurrency(self):
        """(time, migrations at once) at every start and end, in time order."""
        changes = sorted([(run.started_s, 1) for run in self.guests if run.started_s is not None]
                         + [(run.ended_s, -1) for run in self.guests if run.ended_s is not None],
                         key=lambda item: (item[0], item[1]))
        level, points = 0, []
        for at, step in changes:
            level += step
            points.append((at, level))
        return points

    @property
    def peak_concurrency(self):
        return max((level for _, level in self.concurrency), default=0)

    @property
    def mean_concurrency(self):
        """Migrations at once, averaged over the drain's time."""
        points, area = self.concurrency, 0.0
        for (at, level), (later, _) in zip(points, points[1:]):
            area += level * (later - at)
        return area / self.total_s if self.total_s > 0 else 0.0

    @property
    def status(self):
        statuses = {run.status for run in self.guests}
        return "completed" if statuses == {"completed"} else (
            "cancelled" if "cancelled" in statuses or "not started" in statuses else "failed")

    def to_dict(self):
        return {"schema": self.schema, "kind": "drain", "status": self.status, "total_s": self.total_s,
                "peak_concurrency": self.peak_concurrency, "mean_concurrency": self.mean_concurrency,
                "options": asdict(self.options), "guests": [run.to_dict() for run in self.guests],
                "link": [list(sample) for sample in self.link]}

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    def write(self, path):
        with open(path, "w", encoding="utf-8") as out:
            out.write(self.to_json())

    @classmethod
    def from_dict(cls, data):
        if data.get("kind") != "drain" or data.get("schema") != SCHEMA:
            raise ValueError(f"not a drain report of schema {SCHEMA}")
        options = data["options"]
        runs = []
        for item in data["guests"]:
            item = dict(item)
            report = item.pop("report")
            runs.append(GuestRun(**item, report=None if report is None else Report.from_json(json.dumps(report))))
        return cls(DrainOptions(**{**options, "destinations": tuple(options["destinations"])}), runs,
                   data["total_s"], [tuple(sample) for sample in data["link"]])


def ordered(guests, order):
    """The indices of `guests` in the drain's `order`."""
    indices = list(range(len(guests)))
    if order == "largest":
        indices.sort(key=lambda index: -guests[index].scenario.guest.memory_bytes)  # stable: ties as listed
    return indices


# the guest's process ------------------------------------------------------------------------
class _ToParent:
    """A Source's progress that tells the drain (in the parent) of each phase and pass."""

    def __init__(self, events, index):
        self.events, self.index = events, index

    def phase(self, name, elapsed_s):
        self.events.put((self.index, "phase", name))

    def pass_done(self, record, page_size, total_pages):
        self.events.put((self.index, "pass", record.pass_no))

    def message(self, text):
        pass  # the drain's display says what matters; the report has the rest


def _interrupt(signum, frame):
    """The first SIGTERM cancels the migration (the source tells its destination); later ones, which
    a signal to the whole process group and then the drain's own send, must not cut that short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _guest_process(index, scenario, commands, events, balance, budget_rate):
    """A running guest: fill its memory (and disk), start its writers, then migrate (emulator.running.migration.run_source)
    to each destination the drain names until one takes it. Ctrl-C reaches the drain only; it cancels this one
    with SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    from emulator.running.migration import guest_disk, ready_to_move_pages, run_source
    from emulator.vm.allocator import MemoryShortfall
    from emulator.vm.guest import GuestMemory
    from emulator.vm.workload import Workload

    try:
        ready_to_move_pages()
        try:  # the drain checked the guests' total; other processes may have taken memory since
            guest = GuestMemory.resident(scenario.guest)
        except MemoryShortfall as error:
            events.put((index, "unable", str(error)))
            return
        with guest_disk(scenario.disk) as disk, contextlib.ExitStack() as running:
            # its writers run from now, queued or not, and on after a failed migration
            workload = running.enter_context(Workload(guest, scenario.workload))
            disk_writer = disk and running.enter_context(Workload(disk.blocks, scenario.disk.writer_spec()))
            events.put((index, "ready", None))
            progress, budget = _ToParent(events, index), make_limiter(budget_rate, shared=balance)
            while True:
                command, destination = commands.recv()
                if command == "stop":
                    return
                try:
                    report = run_source(scenario, destination, progress=progress, guest=guest, workload=workload,
                                        disk=disk, disk_writer=disk_writer, writers_running=True, link_budget=budget)
                except MigrationError as error:  # no link to it could be made
                    report = Report(status="failed", reason=error.reason, scenario=scenario)
                events.put((index, "report", report.to_json()))
                if report.status == "completed":
                    return
    except KeyboardInterrupt:
        pass


# the drain ----------------------------------------------------------------------------------
class _LinkUse:
    """The link's use over time: the bytes the shared budget (a limiter on the drain's balance) has carried,
    over windows of at least LINK_SAMPLE_S.

    The rule that keeps every sample at most 2% above the budget: count what the bucket has carried
    (carried_bytes), not what senders debited (a sender debits a whole message, up to batch_pages pages,
    before it waits its turn, so debits run a message per migration ahead of the link). What is carried grows
    by at most one burst (DEFAULT_BURST_S at the rate) more than the rate over any window, and a window of
    LINK_SAMPLE_S is 50 bursts long. A drain shorter than one window has one sample, over all of it; bytes
    still owed to the bucket when the drain ends are in none.
    """

    def __init__(self, budget, clock):
        self.budget, self.clock = budget, clock
        self.samples = []  # (time, bytes/s over the window ending then)
        self._at, self._bytes = clock(), budget.carried_bytes()
        self._window_before = None  # (start, bytes carried then) of the last sample's window

    def sample(self, final=False):
        """Take a sample if a window has passed; `final`: close the last window, a rest shorter than one
        joining the sample before it. True if taken."""
        now, carried = self.clock(), self.budget.carried_bytes()
        if now - self._at < LINK_SAMPLE_S:
            if not final or (not self.samples and now - self._at < 1e-3):
                return False
            if self.samples:
                self.samples.pop()
                self._at, self._bytes = self._window_before
        self.samples.append((now, (carried - self._bytes) / (now - self._at)))
        self._window_before = self._at, self._bytes
        self._at, self._bytes = now, carried
        return True


class Drain:
    """Runs a drain of `guests` (DrainGuest) under `options` (DrainOptions); run() returns the DrainReport.

    progress: an object with message(text), told of each start, pass, switch-over and end and
    of the link's use, and board(lines), given a line per guest and the link's at each change
    (emulator.analysis.display.DrainBoard); or None. check: ask a destination about a scenario
    (emulator.running.migration.check). Guest N's disk, if it has one, is named `guestN-NAME` (with_own_disk).
    """

    def __init__(self, guests, options, *, progress=None, check=None):
        if not guests:
            raise ValueError("a drain needs one guest or more")
        self.guests = [with_own_disk(guest, number) for number, guest in enumerate(guests, 1)]
        self.options, self.progress = options, progress
        if check is None:
            from emulator.running.migration import check
        self.check = check
        self.context = multiprocessing.get_context("spawn")
        self.balance = SharedBalance(self.context)
        self.events = self.context.Queue()
        self.runs = [GuestRun(guest.name, guest.scenario.guest.memory_bytes) for guest in guests]
        self.states = ["queued"] * len(guests)  # what the board shows of each
        self.link_line = "link idle"
        self.processes, self.commands = [], []
        self.active = set()
        self.unable = set()  # guests whose memory this host could not hold: no process, no migration
        self._silent_since = {}  # index -> when its process was first seen ended, its report not yet read
        self.turn = 0  # round-robin: the destination to try first next time
        self.started_at = None

    def now(self):
        return time.monotonic() - self.started_at

    def run(self):
        cancelled, link = False, None
        try:
            self._start_guests()
            self.started_at = time.monotonic()  # the drain's clock starts with every guest running
            link = _LinkUse(make_limiter(self.options.max_bandwidth_bytes_per_s, shared=self.balance), self.now)
            self._schedule(link)
        except KeyboardInterrupt:
            cancelled = True
            self._cancel()
        finally:
            ended_s = 0.0 if self.started_at is None else self.now()  # not counting the guests' processes ending
            if link is not None:
                link.sample(final=True)
            self._stop_guests()
        for run in self.runs:
            if run.status == "queued":
                run.status = "not started"
                run.reason = "the drain was cancelled before it started" if cancelled else run.reason
        return DrainReport(self.options, self.runs, ended_s, link.samples if link else [])

    def _schedule(self, link):
        """Start queued guests as slots free up, until every guest has migrated or failed (retried once)."""
        waiting = [index for index in ordered(self.guests, self.options.order) if index not in self.unable]
        retried = not self.options.retry
        while True:
            waiting = self._start_what_fits(waiting)
            if not waiting and not self.active:
                if retried:
                    return
                retried = True
                waiting = [index for index in ordered(self.guests, self.options.order)
                           if self.runs[index].status == "failed" and index not in self.unable]
                if not waiting:
                    return
                self._say(f"retrying {len(waiting)} failed migration(s) once")
                continue
            self._handle_events(LINK_SAMPLE_S / 5)
            if link.sample():
                self._say_link(link.samples[-1][1], len(waiting))

    # guests' processes ------------------------------------------------------------------------
    def _start_guests(self):
        rate = self.options.max_bandwidth_bytes_per_s
        for index, guest in enumerate(self.guests):
            commands, theirs = self.context.Pipe()
            process = self.context.Process(target=_guest_process, name=f"precopy-guest-{guest.name}", daemon=True,
                                           args=(index, guest.scenario, theirs, self.events, self.balance, rate))
            process.start()
            self.processes.append(process)
            self.commands.append(commands)
        self._say(f"{len(self.guests)} guests starting ({format_bytes(sum(r.memory_bytes for r in self.runs))})")
        ready, deadline = set(), time.monotonic() + GUEST_START_TIMEOUT_S
        while len(ready) < len(self.guests):
            try:
                index, kind, payload = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("the guests' processes did not start in time") from None
            if kind == "ready":
                ready.add(index)
            elif kind == "unable":  # its guest could not be made here: it never migrates
                ready.add(index)
                self.unable.add(index)
                run = self.runs[index]
                run.status, run.reason = "failed", payload
                self._say(f"{run.name}: not started: {payload}")
                self._show(index, "failed")

    def _stop_guests(self):
        for index, process in enumerate(self.processes):
            if process.is_alive() and index not in self.active:
                try:
                    self.commands[index].send(("stop", None))
                except OSError:
                    pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()

    def _cancel(self):
        """Ctrl-C: every migration cancels (SIGTERM), each telling its destination; wait for their reports."""
        for index in self.active:
            if self.processes[index].is_alive():
                self.processes[index].terminate()
        deadline = time.monotonic() + 15
        while self.active and time.monotonic() < deadline:
            try:
                self._handle_events(0.2)
            except KeyboardInterrupt:
                pass
        for index in list(self.active):  # its process ended without a report
            self._ended(index, "cancelled", "cancelled by the user on the source")

    # scheduling ---------------------------------------------------------------------------------
    def _start_what_fits(self, waiting):
        """Start queued guests while fewer than K migrate and a destination would host them; the rest."""
        still = []
        for index in waiting:
            if len(self.active) >= self.options.max_concurrent:
                still.append(index)
                continue
            destination, problems = self._place(self.guests[index].scenario)
            if destination is None and problems:
                self._ended(index, "failed", f"no destination would host it: {problems}", active=False)
            elif destination is None:
                still.append(index)  # every one that would is busy now: wait for a migration to end
            else:
                self._begin(index, destination)
        return still

    def _place(self, scenario):
        """(a destination that would host `scenario` now, None) or (None, why none would, or None if only busy)."""
        destinations = self.options.destinations
        rotation = [destinations[(self.turn + step) % len(destinations)] for step in range(len(destinations))]
        fitting, why = [], []
        for destination in rotation:
            try:
                verdict = self.check(scenario, destination)
            except MigrationError as error:
                why.append(f"{destination}: {error.reason}")
                continue
            if not verdict.compatible:
                why.append(f"{destination}: {'; '.join(map(str, verdict.problems))}")
            elif not verdict.busy:
                fitting.append((destination, verdict))
                if self.options.placement == "round-robin":
                    break
        if fitting:
            destination = max(fitting, key=lambda item: item[1].free_bytes)[0] if (
                self.options.placement == "capacity") else fitting[0][0]
            self.turn = (destinations.index(destination) + 1) % len(destinations)
            return destination, None
        if len(why) == len(destinations):
            return None, " | ".join(why)
        return None, None

    def _begin(self, index, destination):
        run = self.runs[index]
        run.status, run.destination, run.started_s = "migrating", destination, self.now()
        run.attempts += 1
        run.switchover_s = run.resumed_s = run.reason = None
        self.active.add(index)
        self.commands[index].send(("migrate", destination))
        self._show(index, "setup")
        self._say(f"{run.name}: migrating to {destination} ({len(self.active)} of at most "
                  f"{self.options.max_concurrent} at once)")

    def _handle_events(self, timeout_s):
        try:
            index, kind, payload = self.events.get(timeout=timeout_s)
        except queue.Empty:
            for index in list(self.active):  # a report may still be on its way: give it a second
                if not self.processes[index].is_alive():
                    since = self._silent_since.setdefault(index, time.monotonic())
                    if time.monotonic() - since > 1.0:
                        self._ended(index, "failed", "the guest's process ended without a report")
            return
        run = self.runs[index]
        if kind == "phase" and payload == "blackout":
            run.switchover_s = self.now()
            self._say(f"{run.name}: blackout")
            self._show(index, "blackout")
        elif kind == "phase" and payload == "precopy":
            self._show(index, "pass 0")
        elif kind == "pass":
            self._say(f"{run.name}: pass {payload} done")
            self._show(index, f"pass {payload + 1}")
        elif kind == "report" and index in self.active:
            report = Report.from_json(payload)
            run.report = report
            self._silent_since.pop(index, None)
            self._ended(index, report.status, report.reason)

    def _ended(self, index, status, reason, active=True):
        """Guest `index` is done for now; `active`: its migration had begun (only then has it an end, so the
        concurrency pairs every end with a start)."""
        run = self.runs[index]
        run.status, run.reason = status, reason
        if status == "completed":
            run.resumed_s = self.now()
        if active:
            run.ended_s = self.now()
        self.active.discard(index)
        if status == "completed":
            self._say(f"{run.name}: resumed on {run.destination} after {format_duration(run.resumed_s - run.started_s)}")
            self._show(index, "done")
        else:
            self._say(f"{run.name}: {status}: {reason}; it keeps running here")
            self._show(index, status)

    def _say_link(self, rate, queued):
        done = sum(run.status == "completed" for run in self.runs)
        cap = self.options.max_bandwidth_bytes_per_s
        self.link_line = (f"link {format_rate(rate)}" + (f" of {format_rate(cap)}" if cap else "")
                          + f": {len(self.active)} migrating, {queued} queued, {done} done")
        self._say(self.link_line)
        self._show()

    def _show(self, index=None, state=None):
        """Update guest `index`'s state on the board (if given) and redraw it."""
        if index is not None:
            self.states[index] = state
        if self.progress is not None and hasattr(self.progress, "board"):
            self.progress.board([f"{run.name:<16} {state:<10} {run.destination or ''}"
                                 for run, state in zip(self.runs, self.states)] + [self.link_line])

    def _say(self, text):
        if self.progress:
            self.progress.message(f"[{0.0 if self.started_at is None else self.now():8.2f} s] {text}")


# which guests ------------------------------------------------------------------------------
MAX_GUESTS = 256
INVENTORY_PARTS = ("defaults", "guests")


def repeated(count, values):
    """`count` guests alike (`values`: run options by key), each with its own seed (content and writers)."""
    return guests_from([{} for _ in range(count)], values)


def load_inventory(path, values):
    """The guests an inventory file lists: a TOML `[defaults]` table and `[[guests]]` tables of run
    options spelt as a sweep grid spells them (memory, fill, dirty_rate, pattern, codec, max_bandwidth:
    that guest's own cap, ...) and a `name`; `values` (run options by key) come first."""
    import tomllib

    try:
        with open(path, "rb") as source:
            data = tomllib.load(source)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - set(INVENTORY_PARTS))
    if unknown or not isinstance(data.get("guests"), list) or not isinstance(data.get("defaults", {}), dict):
        raise ValueError(f"{path}: expected an optional [defaults] table and one [[guests]] table or more"
                         + (f", got {', '.join(unknown)}" if unknown else ""))
    try:
        return guests_from(data["guests"], {**values, **read_options(data.get("defaults", {}), "[defaults]")})
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def guests_from(entries, values):
    """DrainGuests from `entries` (dicts of run options by key, and a name) over `values`."""
    if not 0 < len(entries) <= MAX_GUESTS:
        raise ValueError(f"a drain moves 1 to {MAX_GUESTS} guests, got {len(entries)}")
    guests = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"guest {number} must be a table of run options, got {entry!r:.60}")
        name = entry.get("name", f"guest{number}")
        if not isinstance(name, str) or not 0 < len(name) <= 64 or name in {guest.name for guest in guests}:
            raise ValueError(f"guest {number}: name must be a text of 1 to 64 characters, unique, got {name!r}")
        mine = {**values, **read_options({key: value for key, value in entry.items() if key != "name"}, name)}
        mine.setdefault("seed", number - 1)  # guests differ in content and writes unless a seed is given
        try:
            scenario = run_options.scenario_from(mine, name=lambda option: option.key)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        guests.append(DrainGuest(name, scenario))
    return guests


def read_options(table, where):
    """Run options by key from a table of texts (or numbers) as an inventory or a sweep grid spells them."""
    values = {}
    for key, value in table.items():
        if key not in run_options.OPTIONS:
            raise ValueError(f"{where}: unknown key {key!r}: expected name or some of {', '.join(run_options.OPTIONS)}")
        try:
            values[key] = run_options.OPTIONS[key].value(value)
        except ValueError as error:
            raise ValueError(f"{where}: {key}: {error}") from None
    return values
