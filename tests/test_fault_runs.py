"""Faults in every phase, with one invariant: the short version of scripts/fault_runs.py.

A fixed seeded set of runs, real `precopy send`/`receive` processes, covers each fault kind
and each phase once; the invariant checker itself is tested on hand-made outcome pairs.
The long version: `.venv/bin/python scripts/fault_runs.py --runs 200`.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_runs.py"
SEED = 7
TIME_LIMIT_S = 30


def _load_script():
    spec = importlib.util.spec_from_file_location("fault_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fault_runs = _load_script()

# (scenario, fault, target, phase): every fault kind and every phase at least once
COVERING = [
    ("plain", "term", "source", "setup"),
    ("plain", "kill", "destination", "pass0"),
    ("mirror", "stop", "source", "later-pass"),
    ("plain", "stop-kill", "destination", "blackout"),
    ("mirror", "kill", "destination", "handover"),
    ("postcopy", "kill", "source", "postcopy"),
    ("plain", "kill", "source", "announce"),
    ("plain", "cut", "destination", "later-pass"),  # skipped where network namespaces cannot be made
]
PLANS = [fault_runs.plan_run(SEED, number, scenario, fault, target, phase)
         for number, (scenario, fault, target, phase) in enumerate(COVERING, start=1)]


def test_the_set_covers_every_fault_kind_and_phase():
    assert {plan.fault for plan in PLANS} == set(fault_runs.FAULTS)
    assert {plan.phase for plan in PLANS} == set(fault_runs.PHASES)


@pytest.fixture(scope="module")
def session():
    session = fault_runs.Session(TIME_LIMIT_S)
    yield session
    session.close()


@pytest.mark.parametrize("plan", PLANS, ids=lambda plan: f"{plan.scenario}-{plan.fault}-{plan.target}-{plan.phase}")
def test_the_invariant_holds_under_a_fault(session, plan):
    result = session.run(plan)
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.landed != "not sent", result.notes
    assert result.problems == [], fault_runs.run_line(result, len(PLANS))


def test_plans_are_the_seeds_whatever_ran_before():
    assert fault_runs.plan_run(3, 17) == fault_runs.plan_run(3, 17)
    assert fault_runs.plan_run(3, 17) != fault_runs.plan_run(4, 17)
    with pytest.raises(ValueError, match="postcopy"):
        fault_runs.plan_run(1, 1, scenario="plain", phase="postcopy")


# the checker, on hand-made outcome pairs ------------------------------------------------------
DIGEST = "b186f9a65fd41b709c6a71e312dba3f2"
OTHER_DIGEST = "43a9c4a1a462d7140c56eda67e305c22"
# the phases as the source's stream shows them (fault_runs._phase_of), and as a report lists them
STREAM_PRECOPY = ("setup", "pass0", "pass1", "blackout", "handover", "resume", "announce", "end")
STREAM_POSTCOPY = ("setup", "pass0", "pass1", "blackout", "handover", "resume", "announce", "postcopy")


def report(status, reason=None, digest=DIGEST, destination_digest=DIGEST, phases=("setup", "precopy")):
    completed = status == "completed"
    return {"status": status, "reason": reason, "digests_match": (digest == destination_digest) if completed else None,
            "source_digest": digest if completed else None,
            "destination_digest": destination_digest if completed else None,
            "phases": [{"phase": phase} for phase in phases]}


def outcome(status, reason=None, digest=DIGEST):
    return {"status": status, "reason": reason, "digest": digest if status == "completed" else None}


def facts(source, destination, postcopy=False, phases=STREAM_PRECOPY, at_fault=("setup",), **killed):
    return fault_runs.RunFacts(postcopy=postcopy, source_report=source, destination_outcome=destination,
                               source_phases=phases, phases_at_fault=at_fault, **killed)


HANDED_OVER = ("setup", "precopy", "blackout", "handover", "resume", "announce")  # a report's
COMPLETE_SENT = ("setup", "precopy", "blackout", "handover")  # a report's: no RESUMED heard


@pytest.mark.parametrize("case", [
    facts(report("completed", phases=HANDED_OVER), outcome("completed")),
    facts(report("failed", "no answer from the destination within 2 s"), outcome("failed")),
    facts(report("cancelled", "cancelled by the user on the source"), None, phases=("setup", "end")),
    facts(None, outcome("failed"), source_killed=True),
    facts(None, outcome("completed"), at_fault=("setup", "pass0", "pass1", "blackout"), source_killed=True),
    facts(report("completed", phases=HANDED_OVER), None, destination_killed=True),
    facts(report("failed", "the destination's end closed the connection"), None, destination_killed=True),
    facts(report("lost", "the destination's end closed the connection"), None, postcopy=True,
          phases=STREAM_POSTCOPY, destination_killed=True),
    facts(None, outcome("lost", "the source's end closed the connection"), postcopy=True, phases=STREAM_POSTCOPY,
          source_killed=True),
    # after its handover the source's copy stays paused: the destination may run the guest, or may not
    facts(report("failed", "no answer from the destination within 2 s", phases=COMPLETE_SENT), outcome("completed")),
    facts(report("failed", "no answer from the destination within 2 s", phases=COMPLETE_SENT), outcome("failed")),
    facts(report("failed", "no answer from the destination within 2 s", phases=COMPLETE_SENT),
          outcome("lost", "the source aborted"), postcopy=True, phases=STREAM_POSTCOPY),
], ids=["completed", "failed", "cancelled-before-hello", "source-killed", "source-killed-in-blackout",
        "destination-killed-after-handover", "destination-killed-before", "lost-in-postcopy",
        "source-killed-in-postcopy", "paused-after-handover-destination-completed",
        "paused-after-handover-destination-failed", "paused-after-handover-postcopy-lost"])
def test_the_checker_accepts_one_holder(case):
    assert fault_runs.invariant_problems(case) == []


@pytest.mark.parametrize("case, expected", [
    (facts(report("cancelled", "cancelled by the user on the source"), outcome("completed")),
     ["both sides hold the running guest: source cancelled, destination completed"]),
    (facts(report("failed", "no answer"), outcome("completed")),
     ["both sides hold the running guest: source failed, destination completed"]),
    (facts(report("completed", destination_digest=OTHER_DIGEST, phases=HANDED_OVER),
           outcome("completed", digest=OTHER_DIGEST)),
     [f"the source completed with digests_match False: source {DIGEST}, destination {OTHER_DIGEST}",
      f"the destination completed with digest {OTHER_DIGEST}, the source's is {DIGEST}"]),
    (facts(report("lost", "the destination's end closed the connection"), outcome("failed")),
     ["the source says lost outside post-copy: the destination's end closed the connection",
      "one side says the guest is lost, the other does not: source lost, destination failed"]),
    (facts(report("failed", "x"), outcome("lost", "the source's end closed the connection"), postcopy=True,
           phases=("setup", "pass0")),
     ["the destination says lost outside post-copy: the source's end closed the connection",
      "one side says the guest is lost, the other does not: source failed, destination lost"]),
    (facts(report("lost", None), None, postcopy=True, phases=STREAM_POSTCOPY, destination_killed=True),
     ["the source says lost without a reason"]),
    (facts(report("completed", phases=HANDED_OVER), outcome("failed", "nothing from the source within 2 s")),
     ["no side holds the guest and none says lost: source completed, destination failed"]),
    (facts(report("cancelled", "cancelled by the user on the source", phases=HANDED_OVER), outcome("completed")),
     ["the source reports cancelled though it heard the destination resume the guest"]),
    (facts(None, outcome("completed"), at_fault=("setup", "pass0"), source_killed=True),
     ["the destination completed though the source was killed before its switch-over (it had reached pass0)"]),
    (facts(report("completed", phases=HANDED_OVER), outcome("lost", "gone"), postcopy=True, phases=STREAM_POSTCOPY),
     ["one side says the guest is lost, the other does not: source completed, destination lost"]),
    (facts(report("failed", "no answer from the destination within 2 s"), outcome("lost", "nothing from the source"),
           postcopy=True, phases=STREAM_POSTCOPY),
     ["one side says the guest is lost, the other does not: source failed, destination lost"]),
    (facts(report("failed", "x"), None),
     ["the receiver gave no outcome for a migration that began, and no fault killed it"]),
    (facts(None, outcome("failed")),
     ["no side holds the guest and none says lost: source left no report, destination failed",
      "the source left no report, and no fault killed it"]),
], ids=["cancelled-and-completed", "failed-and-completed", "completed-with-mismatch", "source-lost-outside-postcopy",
        "destination-lost-before-the-switch", "lost-without-reason", "completed-then-discarded",
        "cancelled-after-resume", "completed-without-the-final-pages", "lost-and-completed", "lost-and-resumed",
        "no-outcome",
        "no-report"])
def test_the_checker_refuses(case, expected):
    assert fault_runs.invariant_problems(case) == expected
