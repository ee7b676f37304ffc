#!/usr/bin/env python3
"""Seeded faults in every phase of a migration, and one invariant checked after each run.

    .venv/bin/python scripts/fault_runs.py [--runs 200] [--seed 1] [--json results.json] [--time-limit 40]
    .venv/bin/python scripts/fault_runs.py --seed 1 --only 17      # replay run 17 of seed 1

Each run migrates a small guest with a real `precopy send` (its own process group) to a
serving `precopy receive --serve --json` kept across runs, on loopback with the source's
bandwidth capped so that each phase lasts about a second. The seed picks, per run:
- a scenario: plain pre-copy; post-copy after pass 0 (--postcopy-after 1 --downtime-limit
  1ns); a mirrored disk (--storage mirror, the receiver taking it into a disk directory);
- a fault: SIGKILL ("kill"); SIGSTOP then SIGCONT 0.5-4 s later ("stop"); SIGSTOP left
  until the other end has finished, then SIGKILL ("stop-kill"); SIGTERM ("term"); the link
  cut for 0.5-4 s ("cut": root only; those runs go over a veth pair between two network
  namespaces, built as scripts/netns_link.py builds them, and the target's end is set
  down; where namespaces cannot be made they are skipped, with the reason);
- its target: the source or the destination (the serving receiver itself; it is replaced
  when the fault ends it);
- a phase: setup, pass 0, a later pass, the blackout, the handover (the blackout's last
  milliseconds: the final pages are sent, the destination has not yet said it resumed),
  post-copy or announce, found from the source's --json-stream events as they come, and a
  random moment within it.

The invariant, checked from the source's report (its --report file; none if it was killed)
and the receiver's outcome line for the migration (none if it was killed):
the guest never runs on both sides, and one side holds it with verified memory. Either the
destination's outcome is completed, with a digest equal to the source's, and the source, if
it reports, reports completed with digests_match; or the source reports failed or cancelled
before its handover (COMPLETE or MISSING sent: its report has no `handover` phase), the
guest still runs there, and the destination's outcome is not completed (it discarded the
partial guest); or the source failed after its handover, its copy paused (the destination
may resume the guest from then on, so the source never does): then the destination may
have completed, or not (the guest is paused on the source, to be resumed by hand: held, not
running). A side may say lost (with a reason) only in a post-copy run once the switch to
post-copy began, and then the other must say lost too, or nothing, or have failed after its
handover with its copy paused: a source that resumes its own copy after the destination ran
the guest has let it run on both. A side the fault killed
says nothing and holds nothing: a source killed before its switch-over takes the guest with
it (the destination must not complete); a destination killed after the source completed
takes it with it. (`send --json` cannot go with --json-stream: the report is its --report file.)
Besides: a kept receiver still answers `precopy check`, no process of the run is left, and
in a mirrored run no `.part` file is left unless the destination completed (or was killed).

Exit status: 0 when every run held, 1 when one did not, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.is_file() else sys.executable

PEER_TIMEOUT = "2s"  # both ends' --timeout: a silent peer is given up after this
COMMON_SEND = ["--fill", "random", "--codec", "raw", "--dirty-rate", "20000", "--max-bandwidth", "16MB/s",
               "--timeout", PEER_TIMEOUT, "--json-stream"]
SCENARIOS = {
    "plain": ["--memory", "16MiB", "--max-passes", "2", "--downtime-limit", "50ms"],
    "postcopy": ["--memory", "16MiB", "--postcopy-after", "1", "--downtime-limit", "1ns"],
    "mirror": ["--memory", "8MiB", "--max-passes", "2", "--downtime-limit", "50ms", "--disk", "16MiB",
               "--disk-fill", "random", "--storage", "mirror", "--disk-write-rate", "2MB/s"],
}
# Where post-copy recovery exists (newer than the rest), a short window: a broken post-copy then recovers or
# is lost within a run, where its default would hold the guest for 30 s.
RECOVER_FLAG = "--postcopy-recover-window"
RECOVER_WINDOW = "2s"
# the handover: the end of the blackout, the final pages sent, until the destination says it resumed
PHASES = ("setup", "pass0", "later-pass", "blackout", "handover", "postcopy", "announce")
SCENARIO_PHASES = {
    "plain": ("setup", "pass0", "later-pass", "blackout", "handover", "announce"),
    "postcopy": ("setup", "pass0", "blackout", "handover", "postcopy", "announce"),
    "mirror": ("setup", "pass0", "later-pass", "blackout", "handover", "announce"),
}
FAULTS = ("kill", "stop", "stop-kill", "term", "cut")
TARGETS = ("source", "destination")
# The fault lands a random time within this window after the phase's first event (seconds):
# about the phase's length in these scenarios (setup, the handover and announce last milliseconds).
MOMENT_WINDOW_S = {"setup": 0.01, "pass0": 0.9, "later-pass": 0.5, "blackout": 0.25, "handover": 0.0,
                   "postcopy": 0.45, "announce": 0.0}
POSTCOPY_BLACKOUT_WINDOW_S = 0.005  # post-copy's blackout sends no pages: a few milliseconds
STOP_S = (0.5, 4.0)  # a SIGSTOP or a cut lasts this long: shorter and longer than PEER_TIMEOUT

LISTENING = re.compile(r"listening on (tcp://\S+)")
START_TIMEOUT_S = 60.0  # a receiver until it listens (imports; Numba's cache)
OUTCOME_WAIT_S = 10.0  # the receiver's outcome after the source ended: PEER_TIMEOUT, RECOVER_WINDOW, a margin
CHECK_TIMEOUT_S = 20.0  # `precopy check` against a kept receiver
EXIT_WAIT_S = 10.0  # a process told to end (SIGTERM, or its peer gone) until it exits
LOST_ALLOWED = ("postcopy",)
SWITCHED = ("blackout", "handover", "resume", "announce", "postcopy", "end")  # the source began its switch-over


# plans --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One run: what is migrated, what fault, at whom, when. delay_s: after the phase's first
    event; stop_s: how long a "stop" or a "cut" lasts."""

    number: int
    scenario: str
    fault: str
    target: str
    phase: str
    delay_s: float
    stop_s: float


def plan_run(seed, number, scenario=None, fault=None, target=None, phase=None):
    """The plan of run `number` under `seed` (the same for the same pair, whatever ran before);
    any of scenario, fault, target, phase given is kept, the rest drawn."""
    rng = random.Random(f"{seed}/{number}")
    if phase is not None and scenario is None:
        scenario = rng.choice([name for name, phases in SCENARIO_PHASES.items() if phase in phases])
    scenario = scenario or rng.choice(list(SCENARIOS))
    phase = phase or rng.choice(SCENARIO_PHASES[scenario])
    if phase not in SCENARIO_PHASES[scenario]:
        raise ValueError(f"phase {phase!r}: the {scenario} scenario has only {', '.join(SCENARIO_PHASES[scenario])}")
    window_s = POSTCOPY_BLACKOUT_WINDOW_S if (scenario, phase) == ("postcopy", "blackout") else MOMENT_WINDOW_S[phase]
    return Plan(number, scenario, fault or rng.choice(FAULTS), target or rng.choice(TARGETS), phase,
                round(rng.uniform(0, window_s), 4), round(rng.uniform(*STOP_S), 2))


# processes ----------------------------------------------------------------------------------
class Precopy:
    """`python -m emulator.shell.cli ARGS` in its own process group (after `prefix`, a command that execs
    it: `ip netns exec NS`); each output line goes to a callback on a reader thread (so no pipe ever
    fills), the last stderr lines are kept."""

    def __init__(self, args, on_stdout, on_stderr=None, env=None, prefix=()):
        self.proc = subprocess.Popen([*prefix, PYTHON, "-m", "emulator.shell.cli", *args], cwd=REPO, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.stderr_tail = collections.deque(maxlen=20)
        self.readers = [self._read(self.proc.stdout, on_stdout), self._read(self.proc.stderr, on_stderr)]

    def _read(self, pipe, on_line):
        def read():
            for line in pipe:
                if pipe is self.proc.stderr:
                    self.stderr_tail.append(line.rstrip())
                if on_line is not None:
                    on_line(line)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        return reader

    def alive(self):
        return self.proc.poll() is None

    def signal(self, signum):
        """Send `signum` to its process group; False if none of it is left."""
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout_s):
        """Wait up to timeout_s for it to exit (and its output to be read); True if it did."""
        try:
            self.proc.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return False
        for reader in self.readers:
            reader.join(timeout=5)
        return True

    def group_left(self):
        """Whether any process of its group is still there (once it has been waited for)."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def end(self):
        """SIGKILL whatever is left of its group and reap it; True if anything was left."""
        left = self.alive() or self.group_left()
        if left:
            self.signal(signal.SIGKILL)
            self.signal(signal.SIGCONT)
        self.wait(EXIT_WAIT_S)
        return left


class SourceRun:
    """A `precopy send` and its --json-stream events, as they come."""

    def __init__(self, endpoint, options, workdir, network):
        self.report_path = workdir / "report.json"
        self.events = []
        self.changed = threading.Condition()
        env = dict(os.environ, TMPDIR=str(workdir))  # a killed source's temporary disk is left in here
        self.process = Precopy(["send", "--to", endpoint, *COMMON_SEND, *options,
                                "--report", str(self.report_path)], self._heard, env=env,
                               prefix=network.prefix("source"))

    def _heard(self, line):
        try:
            event = json.loads(line)
        except ValueError:
            return
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, wanted, deadline):
        """The first event for which wanted(event) is true, waiting until `deadline` (monotonic); None if the
        source ended, or the deadline passed, first."""
        seen = 0
        with self.changed:
            while True:
                for event in self.events[seen:]:
                    if wanted(event):
                        return event
                seen = len(self.events)
                if not self.process.alive() and not self.process.readers[0].is_alive():
                    return None
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    return None
                self.changed.wait(min(left_s, 0.05))

    def phases(self):
        """The phases the stream has shown so far, in order (pass k shown as "pass<k+1>": the next began)."""
        with self.changed:
            return [name for name in map(_phase_of, self.events) if name is not None]

    def report(self):
        """Its report (the --report file), or None if it wrote none."""
        try:
            return json.loads(self.report_path.read_text())
        except (OSError, ValueError):
            return None


def _phase_of(event):
    """The phase an event begins, or None."""
    kind = event.get("event")
    if kind == "phase":
        return "pass0" if event["phase"] == "precopy" else event["phase"]
    if kind == "pass":
        return f"pass{event['pass_no'] + 1}"
    if kind in ("blackout", "end"):
        return kind
    return None


TRIGGERS = {  # the event a phase begins with, in the source's stream
    "setup": lambda event: event.get("phase") == "setup",
    "pass0": lambda event: event.get("phase") == "precopy",
    "later-pass": lambda event: event.get("event") == "pass" and event["pass_no"] == 0,
    "blackout": lambda event: event.get("event") == "blackout",
    "handover": lambda event: event.get("phase") == "handover",
    "postcopy": lambda event: event.get("phase") == "postcopy",
    "announce": lambda event: event.get("phase") == "announce",
}


class Receiver:
    """A serving `precopy receive --json` on `network`, its outcome lines queued as they come."""

    def __init__(self, network, disk_dir):
        self.network = network
        self.outcomes = queue.Queue()
        self.listening = queue.Queue()
        self.process = Precopy(["receive", "--listen", network.listen, "--serve", "--json", "--quiet",
                                "--timeout", PEER_TIMEOUT, "--disk-dir", str(disk_dir), *network.receive_options],
                               self._outcome, self._stderr, prefix=network.prefix("destination"))
        try:
            self.endpoint = self.listening.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.process.end()
            raise RuntimeError("precopy receive never said it listens: "
                               + " / ".join(self.process.stderr_tail)) from None

    def _outcome(self, line):
        try:
            self.outcomes.put(json.loads(line))
        except ValueError:
            pass

    def _stderr(self, line):
        match = LISTENING.search(line)
        if match:
            self.listening.put(match.group(1))

    def next_outcome(self, timeout_s):
        """The next outcome line, waiting up to timeout_s (less if the receiver exits); None if none came."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.outcomes.get(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline or not self.process.readers[0].is_alive():
                    return None

    def stray_outcomes(self):
        """Outcome lines no run has taken (from a migration given up on)."""
        stray = []
        while not self.outcomes.empty():
            stray.append(self.outcomes.get())
        return stray

    def answers(self):
        """None if `precopy check` gets an answer from it, else what went wrong."""
        try:
            done = subprocess.run([*self.network.prefix("source"), PYTHON, "-m", "emulator.shell.cli", "check",
                                   "--to", self.endpoint, "--memory", "8MiB", "--json"], cwd=REPO,
                                  capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, start_new_session=True)
        except subprocess.TimeoutExpired:
            return f"precopy check got no answer in {CHECK_TIMEOUT_S:g} s"
        try:
            json.loads(done.stdout)["compatible"]
        except (ValueError, KeyError, TypeError):
            return f"precopy check failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        return None


# networks ----------------------------------------------------------------------------------
class Loopback:
    """Both ends on this host's loopback: nothing to build, no link to cut."""

    name = "loopback"
    listen = "tcp://127.0.0.1:0"
    receive_options = ()
    problem = None

    @staticmethod
    def prefix(end):
        return ()

    def close(self):
        pass


def _load_netns_link():
    """scripts/netns_link.py, which builds the namespaces and the veth pair (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("netns_link", Path(__file__).with_name("netns_link.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class VethLink:
    """The source and the destination in two network namespaces joined by a veth pair; a cut sets one
    end's device down for a while. problem: why it cannot be built here (None if it can)."""

    name = "veth"
    receive_options = ("--insecure",)  # not loopback, and no keys: a throwaway namespace

    def __init__(self):
        self.netns_link = _load_netns_link()
        self.problem = self.netns_link.netns_problem()
        self.listen = f"tcp://{self.netns_link.DESTINATION_ADDR}:0"
        self.link = None
        if self.problem is None:
            self.link = self.netns_link.Link(self.netns_link.unique_tag(), mtu=1500)
            self.link.create()

    def _end(self, end):
        """(namespace, device) of `end` ("source" or "destination")."""
        if end == "source":
            return self.link.source_ns, self.netns_link.SOURCE_DEV
        return self.link.destination_ns, self.netns_link.DESTINATION_DEV

    def prefix(self, end):
        return ("ip", "netns", "exec", self._end(end)[0])

    def cut(self, end, seconds):
        """Set `end`'s device down for `seconds`, then up again."""
        namespace, device = self._end(end)
        self.netns_link.run(["ip", "-n", namespace, "link", "set", device, "down"], "cutting the link")
        try:
            time.sleep(seconds)
        finally:
            self.netns_link.run(["ip", "-n", namespace, "link", "set", device, "up"], "mending the link")

    def close(self):
        if self.link is not None:
            self.link.remove()
            self.link = None


# the invariant -----------------------------------------------------------------------------
@dataclass
class RunFacts:
    """What one run left, as the invariant reads it.

    source_report: the source's report (None: it left none); destination_outcome: the receiver's outcome
    for the migration (None: it printed none). postcopy: a post-copy run. source_phases: the phases the
    source's stream showed over the whole run; phases_at_fault: those shown when the fault landed.
    source_killed, destination_killed: that process died of SIGKILL.
    """

    postcopy: bool
    source_report: dict | None
    destination_outcome: dict | None
    source_phases: tuple = ()
    phases_at_fault: tuple = ()
    source_killed: bool = False
    destination_killed: bool = False


def invariant_problems(facts):
    """Every way the run broke the invariant (module docstring), as sentences; empty when it held."""
    report, outcome = facts.source_report, facts.destination_outcome
    source_status = report["status"] if report else None
    destination_status = outcome["status"] if outcome else None
    problems = _lost_problems(facts, source_status, destination_status)
    problems += _digest_problems(report, outcome)
    stopped = source_status in ("failed", "cancelled")
    handed_over = "handover" in _report_phases(report)
    source_holds = stopped and not handed_over  # the source says the guest still runs there
    source_paused = stopped and handed_over  # its copy stays paused: the destination may run the guest
    destination_holds = destination_status == "completed"
    said = f"source {source_status or 'left no report'}, destination {destination_status or 'gave no outcome'}"
    if stopped and "resume" in _report_phases(report):
        problems.append(f"the source reports {source_status} though it heard the destination resume the guest")
    if source_holds and destination_holds:
        problems.append(f"both sides hold the running guest: {said}")
    if "lost" in (source_status, destination_status) and {source_status, destination_status} - {"lost", None} \
            and not source_paused:
        problems.append(f"one side says the guest is lost, the other does not: {said}")
    if not (source_holds or source_paused or destination_holds or "lost" in (source_status, destination_status)
            or _died_with_its_host(facts, source_status)):
        problems.append(f"no side holds the guest and none says lost: {said}")
    if report is None and destination_holds and not set(facts.phases_at_fault) & set(SWITCHED):
        problems.append("the destination completed though the source was killed before its switch-over "
                        f"(it had reached {_last(facts.phases_at_fault)})")
    if report is None and not facts.source_killed:
        problems.append("the source left no report, and no fault killed it")
    if outcome is None and not facts.destination_killed and _began(facts.source_phases):
        problems.append("the receiver gave no outcome for a migration that began, and no fault killed it")
    return problems


def _lost_problems(facts, source_status, destination_status):
    problems = []
    for side, status, record in (("source", source_status, facts.source_report),
                                 ("destination", destination_status, facts.destination_outcome)):
        if status != "lost":
            continue
        if not (facts.postcopy and "blackout" in facts.source_phases):
            problems.append(f"the {side} says lost outside post-copy: {record.get('reason')}")
        elif not record.get("reason"):
            problems.append(f"the {side} says lost without a reason")
    return problems


def _digest_problems(report, outcome):
    """A completed side whose memory was not verified: no digest, or digests that differ."""
    problems = []
    if outcome and outcome["status"] == "completed" and not outcome.get("digest"):
        problems.append("the destination completed without a digest")
    if report and report["status"] == "completed":
        if report.get("digests_match") is not True or report.get("source_digest") != report.get("destination_digest"):
            problems.append(f"the source completed with digests_match {report.get('digests_match')}: source "
                            f"{report.get('source_digest')}, destination {report.get('destination_digest')}")
    if report and outcome and outcome["status"] == "completed" and report.get("source_digest") is not None \
            and outcome.get("digest") != report["source_digest"]:
        problems.append(f"the destination completed with digest {outcome.get('digest')}, the source's is "
                        f"{report['source_digest']}")
    return problems


def _died_with_its_host(facts, source_status):
    """No side holds the guest because the fault killed the one that did: a source killed before it handed
    the guest over, or a destination killed after the source completed."""
    if facts.source_report is None and facts.source_killed:
        return True
    return facts.destination_outcome is None and facts.destination_killed and source_status == "completed"


def _began(phases):
    """Whether the source's stream shows the migration past setup, so that the destination owes an outcome
    (a source cancelled in setup may have ended before its HELLO: its stream shows setup, then end)."""
    return bool(set(phases) - {"setup", "end"})


def _report_phases(report):
    return [phase["phase"] for phase in report.get("phases", [])] if report else []


def _last(phases):
    return phases[-1] if phases else "nothing"


# one run -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one run did and what was found: `problems` empty when it held; `skipped` says why it did not run."""

    plan: Plan
    landed: str = "not sent"  # the phase the source's stream showed when the fault was sent
    source_status: str | None = None
    source_reason: str | None = None
    destination_status: str | None = None
    destination_reason: str | None = None
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def held(self):
        return not self.problems


def _recovery_options():
    """[RECOVER_FLAG, RECOVER_WINDOW] if this precopy's send has post-copy recovery, else []."""
    done = subprocess.run([PYTHON, "-m", "emulator.shell.cli", "send", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=START_TIMEOUT_S, check=True)
    return [RECOVER_FLAG, RECOVER_WINDOW] if RECOVER_FLAG in done.stdout else []


class Session:
    """The runs of one invocation: a work directory, the disk directory, the networks (loopback, and the
    veth pair once a cut needs it) and a serving receiver on each."""

    def __init__(self, time_limit_s):
        self.time_limit_s = time_limit_s
        self.workdir = Path(tempfile.mkdtemp(prefix="precopy-faults-"))
        self.disk_dir = self.workdir / "disks"
        self.disk_dir.mkdir()
        self.networks = {"loopback": Loopback()}
        self.receivers = {}  # network name -> its Receiver
        self.receivers_started = 0
        self.send_options = dict(SCENARIOS, postcopy=SCENARIOS["postcopy"] + _recovery_options())

    def close(self):
        """End every process and remove everything made, whatever state the runs left."""
        for receiver in self.receivers.values():
            receiver.process.end()
        self.receivers.clear()
        for network in self.networks.values():
            network.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def network_for(self, plan):
        """The network a plan runs on: a cut needs the veth pair (built the first time)."""
        if plan.fault != "cut":
            return self.networks["loopback"]
        if "veth" not in self.networks:
            self.networks["veth"] = VethLink()
        return self.networks["veth"]

    def receiver_on(self, network):
        """The serving receiver on `network`, started (again) if there is none alive."""
        receiver = self.receivers.get(network.name)
        if receiver is None or not receiver.process.alive():
            if receiver is not None:
                receiver.process.end()
            receiver = self.receivers[network.name] = Receiver(network, self.disk_dir)
            self.receivers_started += 1
        return receiver

    def run(self, plan):
        """Run `plan`; its RunResult."""
        started = time.monotonic()
        result = RunResult(plan)
        network = self.network_for(plan)
        if network.problem is not None:
            result.skipped = f"network namespaces unavailable: {network.problem}"
            return result
        receiver = self.receiver_on(network)
        stray = receiver.stray_outcomes()
        if stray:
            result.notes.append(f"outcomes left from before: {stray}")
        rundir = self.workdir / f"run-{plan.number}"
        rundir.mkdir()
        source = SourceRun(receiver.endpoint, self.send_options[plan.scenario], rundir, network)
        try:
            phases_at_fault, outcome = self._migrate_with_fault(plan, network, source, receiver, result,
                                                                started + self.time_limit_s)
        finally:
            if source.process.end():
                result.problems.append("the source's processes were still there at the end: killed")
        self._judge(plan, source, receiver, outcome, phases_at_fault, result)
        shutil.rmtree(rundir, ignore_errors=True)
        result.seconds = round(time.monotonic() - started, 2)
        return result

    def _migrate_with_fault(self, plan, network, source, receiver, result, deadline):
        """Wait for the phase, bring the fault, let the source end; (the phases the source had shown when
        the fault landed, the receiver's outcome or None)."""
        phases_at_fault, outcome = (), None
        if source.wait_for(TRIGGERS[plan.phase], deadline) is None:
            result.notes.append(f"the source never reached {plan.phase}: no fault sent")
        else:
            time.sleep(plan.delay_s)
            phases_at_fault = tuple(source.phases())
            result.landed = _last(phases_at_fault) if source.process.alive() else "exited"
            if plan.fault == "cut":
                network.cut(plan.target, plan.stop_s)
            else:
                outcome = self._signal(plan, source, receiver, deadline)
        if not source.process.wait(deadline - time.monotonic()):
            result.problems.append(f"the source did not end within the run's time limit ({self.time_limit_s:g} s)")
            source.process.end()
        return phases_at_fault, outcome or receiver.next_outcome(OUTCOME_WAIT_S)

    @staticmethod
    def _signal(plan, source, receiver, deadline):
        """Send the fault's signal, and follow it up: SIGCONT a "stop" after stop_s; SIGKILL a "stop-kill"
        once the other end has finished; wait for a receiver told to end to exit. The receiver's outcome
        if one was taken meanwhile."""
        target = source.process if plan.target == "source" else receiver.process
        target.signal(FAULT_SIGNAL[plan.fault])
        outcome = None
        if plan.fault == "stop":
            time.sleep(plan.stop_s)
            target.signal(signal.SIGCONT)
        elif plan.fault == "stop-kill":
            if plan.target == "source":
                outcome = receiver.next_outcome(OUTCOME_WAIT_S)
            else:
                source.process.wait(deadline - time.monotonic())
            target.signal(signal.SIGKILL)
            target.signal(signal.SIGCONT)
        if plan.target == "destination" and plan.fault != "stop":
            target.wait(EXIT_WAIT_S)
        return outcome

    def _judge(self, plan, source, receiver, outcome, phases_at_fault, result):
        """Check the invariant, then the checks around it: no process left, no .part file, the receiver
        answers (one that owes an outcome is replaced instead)."""
        report = source.report()
        facts = RunFacts(postcopy=plan.scenario in LOST_ALLOWED, source_report=report, destination_outcome=outcome,
                         source_phases=tuple(source.phases()), phases_at_fault=phases_at_fault,
                         source_killed=source.process.proc.returncode == -signal.SIGKILL,
                         destination_killed=receiver.process.proc.returncode == -signal.SIGKILL)
        if report:
            result.source_status, result.source_reason = report["status"], report.get("reason")
        if outcome:
            result.destination_status, result.destination_reason = outcome["status"], outcome.get("reason")
        result.problems += invariant_problems(facts)
        result.problems += self._leftovers(receiver, outcome, facts.destination_killed, result)
        if result.problems and source.process.stderr_tail:
            result.notes.append("the source said: " + " / ".join(list(source.process.stderr_tail)[-3:]))
        if not receiver.process.alive():
            return
        if outcome is None and _began(facts.source_phases):
            result.notes.append("the receiver is replaced: it may still host the migration it gave no outcome for")
            receiver.process.end()
            return
        problem = receiver.answers()
        if problem:
            result.problems.append(f"the receiver no longer answers: {problem}")
            receiver.process.end()

    def _leftovers(self, receiver, outcome, destination_killed, result):
        """A receiver that exited must leave no process behind; a mirrored run no .part file unless the
        destination completed (a killed destination cannot remove its own: noted, and removed here)."""
        problems = []
        if not receiver.process.alive() and receiver.process.wait(EXIT_WAIT_S) and receiver.process.group_left():
            problems.append("the receiver's processes outlived it: killed")
            receiver.process.end()
        parts = sorted(path.name for path in self.disk_dir.glob("*.part"))
        if parts and destination_killed:
            result.notes.append(f"the killed destination left {', '.join(parts)}")
        elif parts and not (outcome and outcome["status"] == "completed"):
            problems.append(f"{', '.join(parts)} left in the disk directory (destination "
                            f"{outcome['status'] if outcome else 'gave no outcome'})")
        for path in self.disk_dir.iterdir():
            path.unlink()
        return problems


FAULT_SIGNAL = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "stop-kill": signal.SIGSTOP,
                "term": signal.SIGTERM}


# output ------------------------------------------------------------------------------------
def run_line(result, runs):
    """One short line for a run: number, scenario, fault, target, phase@landed, statuses, verdict."""
    plan = result.plan
    head = f"{plan.number:>{len(str(runs))}}/{runs} {plan.scenario:<8} {plan.fault:<9} {plan.target:<11} "
    if result.skipped:
        return head + f"{plan.phase:<24} skipped: {result.skipped}"
    verdict = "held" if result.held else "VIOLATED: " + "; ".join(result.problems)
    statuses = f"src={result.source_status or '-'} dst={result.destination_status or '-'}"
    return head + f"{plan.phase + '@' + result.landed:<24} {statuses:<30} {result.seconds:5.1f}s  {verdict}"


def count_table(results):
    """Runs per phase x fault kind, as 'held/runs' (skipped runs left out)."""
    cells = collections.Counter()
    held = collections.Counter()
    for result in results:
        if result.skipped is None:
            key = (result.plan.phase, result.plan.fault)
            cells[key] += 1
            held[key] += result.held
    width = max(len(fault) for fault in FAULTS) + 5
    lines = ["phase".ljust(12) + "".join(fault.rjust(width) for fault in FAULTS) + "total".rjust(width)]
    for phase in PHASES:
        row = [f"{held[phase, fault]}/{cells[phase, fault]}" if cells[phase, fault] else "-" for fault in FAULTS]
        total = sum(cells[phase, fault] for fault in FAULTS)
        total_held = sum(held[phase, fault] for fault in FAULTS)
        lines.append(phase.ljust(12) + "".join(cell.rjust(width) for cell in row)
                     + f"{total_held}/{total}".rjust(width))
    return "\n".join(lines)


def results_json(seed, results, receivers_started):
    ran = [result for result in results if result.skipped is None]
    return {"seed": seed, "runs": len(ran), "held": sum(result.held for result in ran),
            "skipped": len(results) - len(ran), "receivers_started": receivers_started,
            "results": [{**asdict(result), "held": result.held} for result in results]}


# command line ------------------------------------------------------------------------------
def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _positive_seconds(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be seconds > 0, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(description="Seeded faults in every phase of a precopy migration; one "
                                                 "invariant checked after each run (see the module docstring).")
    parser.add_argument("--runs", type=_positive_int, default=200, help="how many runs (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="the seed of every choice (default 1)")
    parser.add_argument("--only", type=_positive_int, metavar="N", help="run only run N of this seed (replay)")
    parser.add_argument("--json", metavar="FILE", help="write every run's plan and verdict to FILE")
    parser.add_argument("--time-limit", type=_positive_seconds, default=40.0, metavar="SECONDS",
                        help="longest one run may take before its processes are killed (default 40)")
    return parser


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even started with `&`, which ignores SIGINT
    signal.signal(signal.SIGTERM, _interrupted)  # cleaned up as for Ctrl-C
    numbers = [args.only] if args.only else range(1, args.runs + 1)
    shown = max(args.runs, args.only or 0)
    session = Session(args.time_limit)
    results = []
    try:
        for number in numbers:
            result = session.run(plan_run(args.seed, number))
            results.append(result)
            print(run_line(result, shown), flush=True)
            for note in result.notes:
                print(f"      note: {note}", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted after {len(results)} runs", file=sys.stderr)
    finally:
        session.close()
    summary = results_json(args.seed, results, session.receivers_started)
    print(count_table(results))
    print(f"{summary['held']}/{summary['runs']} runs held the invariant (seed {args.seed}; {summary['skipped']} "
          f"skipped; {session.receivers_started} receivers started)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0 if summary["runs"] and summary["held"] == summary["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
