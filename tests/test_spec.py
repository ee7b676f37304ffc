"""docs/protocol.md against the code: what a stranger reads there is what the reference ends do.

- HELLO's keys: every key the source sends, at every depth of the scenario, has a row in the
  document's tables, and every row is a key the source sends; each row's type admits the
  values sent, and its default is what a HELLO that leaves the key out gets.
- The points the document settles, each against the engines: PASS_END's `pages_applied`,
  the limits on a writer's rate and on the timeout, the keys of HELLO's body, a stranger's ABORT.

The document's layout this relies on (said in its "HELLO and the scenario"): each object of
HELLO has one table, after a paragraph that begins with the object's path in backticks
(`HELLO` for the body, `scenario`, `guest`, `migration.policy`, ...); the first column of
the table is the key in backticks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from emulator.destination.receiver import DestinationLimits, judge
from emulator.shell import run_options
from emulator.source.policy import DowntimeRamp, PolicyConfig
from emulator.vm.compat import CpuModel
from emulator.vm.disk import MAX_WRITE_RATE_BYTES_PER_S, DiskSpec
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import GuestConfig, MigrationOptions, Scenario
from emulator.vm.workload import MAX_RATE_PAGES_PER_S, WorkloadSpec
from emulator.wire import protocol
from emulator.wire.protocol import MsgType, RemoteProtocolError
from emulator.wire.protocol_engines import DestinationProtocol, SourceProtocol, stranger_abort

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
SECTION = "### HELLO and the scenario"
CAPTION = re.compile(r"`(?P<path>[A-Za-z_.]+)` \(")
KEY = re.compile(r"`(?P<key>[a-z_]+)`\Z")
SMALLEST = {"guest": {"memory_bytes": 8192}, "workload": {}, "migration": {"policy": {}}}  # the document's


# the document ------------------------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented() -> dict[str, dict[str, dict[str, str]]]:
    """{object path: {key: {column header: cell}}} from the tables of "HELLO and the scenario"."""
    text = DOCUMENT.read_text(encoding="utf-8")
    start = text.index(SECTION) + len(SECTION)
    section = text[start : text.index("\n### ", start)]
    tables, path, lines = {}, None, section.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        caption = CAPTION.match(line)
        if caption:
            path = caption["path"]
        elif line.startswith("|") and path is not None:
            header = _cells(line)
            rows = {}
            index += 2  # the header's separator row
            while index < len(lines) and lines[index].startswith("|"):
                cells = _cells(lines[index])
                key = KEY.match(cells[0])
                assert key, f"{DOCUMENT.name}: a row of `{path}` whose first cell is no key in backticks: {cells[0]!r}"
                assert key["key"] not in rows, f"{DOCUMENT.name}: `{path}.{key['key']}` has two rows"
                rows[key["key"]] = dict(zip(header, cells))
                index += 1
            assert path not in tables, f"{DOCUMENT.name}: `{path}` has two tables"
            tables[path], path = rows, None
            continue
        index += 1
    return tables


# the code -------------------------------------------------------------------------------------------
def variants() -> list[Scenario]:
    """Scenarios that, together, make the source send every key it can."""
    small = Scenario(GuestSpec(1 << 20))
    disk = DiskSpec(1 << 20, 64 << 10, write_rate_bytes_per_s=math.inf)
    return [
        Scenario(),
        small,
        replace(small, config=GuestConfig(cpu=None, switches=("External",))),
        replace(small, config=GuestConfig(cpu=CpuModel("GenuineIntel", ("sse2", "avx2")))),
        replace(small, workload=WorkloadSpec(rate_pages_per_s=math.inf, pattern="zipf")),
        replace(small, disk=disk, migration=MigrationOptions(storage="mirror")),
        replace(small, disk=disk),
        replace(small, migration=MigrationOptions(
            xbzrle=True, xbzrle_cache_bytes=1 << 20, max_bandwidth_bytes_per_s=1e8, link_bytes_per_s=1.25e9,
            blackout_warning_s=1.0, dirty_limit_bytes_per_s=1e6,
            policy=PolicyConfig(max_time_s=60.0, stall_passes=None, downtime_ramp=DowntimeRamp()))),
        replace(small, migration=MigrationOptions(postcopy_after_passes=2, auto_converge=True)),
    ]


def hello_body(scenario: Scenario) -> dict:
    """HELLO's body as the source's engine sends it, read back from its frames."""
    frames = SourceProtocol(1, scenario.guest.page_size).hello(scenario.to_dict(), "0" * 32)
    return protocol.Decoder().decode(frames).body


def _walk(path: str, body: dict, found: dict[str, dict[str, list]]) -> None:
    """Every object in `body` by its path (as the document names it): {path: {key: [values sent]}}."""
    for key, value in body.items():
        found.setdefault(path, {}).setdefault(key, []).append(value)
        if isinstance(value, dict):
            inner = "scenario" if path == "HELLO" else (key if path == "scenario" else f"{path}.{key}")
            _walk(inner, value, found)


def sent() -> dict[str, dict[str, list]]:
    found = {}
    for scenario in variants():
        _walk("HELLO", hello_body(scenario), found)
    return found


# HELLO's keys ------------------------------------------------------------------------------------
def test_the_document_has_a_row_for_every_key_the_source_sends():
    tables = documented()
    lacking = [f"{path}.{key}" if path != "HELLO" else key for path, keys in sent().items()
               for key in keys if key not in tables.get(path, {})]
    assert not lacking, f"the source sends keys docs/protocol.md does not list: {', '.join(lacking)}"


def test_every_key_the_document_lists_is_one_the_source_sends():
    keys = sent()
    stale = [f"{path}.{key}" for path, rows in documented().items() for key in rows if key not in keys.get(path, {})]
    assert not stale, f"docs/protocol.md lists keys the source no longer sends: {', '.join(stale)}"


JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (type(None), "null"),
              (dict, "object"), (list, "array"))


def _admits(type_cell: str, value) -> bool:
    """Whether a row's type column says `value` may be sent (an integer is a number too)."""
    name = next(name for kind, name in JSON_TYPES if isinstance(value, kind))
    if isinstance(value, str) and f'`"{value}"`' in type_cell:
        return True
    return name in type_cell or (name == "integer" and "number" in type_cell)


def test_each_rows_type_admits_the_values_the_source_sends():
    tables, wrong = documented(), []
    for path, keys in sent().items():
        for key, values in keys.items():
            row = tables.get(path, {}).get(key)
            if row is not None:
                wrong += dict.fromkeys(f"{path}.{key} = {value!r:.40} (type: {row['type']})" for value in values
                                       if not _admits(row["type"], value))
    assert not wrong, "docs/protocol.md gives types that do not admit what is sent: " + "; ".join(wrong)


def _documented_default(cell: str):
    inner = cell[1:-1] if cell.startswith("`") and cell.endswith("`") else cell
    try:
        return json.loads(inner)
    except json.JSONDecodeError:
        return inner


def _defaults_of(path: str) -> dict:
    """What a scenario that leaves out the keys of `path` gets (disk, ramp: the object given empty)."""
    if path == "disk":
        data = Scenario.from_dict({**SMALLEST, "disk": {}}).to_dict()["disk"]
    elif path == "migration.policy.downtime_ramp":
        data = asdict(DowntimeRamp.from_dict({}))
    else:
        data = Scenario.from_dict(SMALLEST).to_dict()
        for part in [] if path == "scenario" else path.split("."):
            data = data[part]
    return json.loads(json.dumps(data))  # as it crosses: a tuple is an array


def test_each_documented_default_is_what_a_hello_without_the_key_gets():
    wrong = []
    for path, rows in documented().items():
        for key, row in rows.items():
            column = next((name for name in row if name.startswith("default")), None)
            if column is None or row[column] == "(required)":
                continue
            defaults = _defaults_of(path)
            if key not in defaults:
                continue  # a key the code lacks fails the tests above
            expected = defaults[key]
            if isinstance(expected, dict):
                continue  # an object's defaults are in its own table
            if _documented_default(row[column]) != expected:
                wrong.append(f"{path}.{key}: documented {row[column]}, is {expected!r}")
    assert not wrong, "docs/protocol.md gives defaults the code does not: " + "; ".join(wrong)


def test_every_row_says_its_values():
    bare = [f"{path}.{key}" for path, rows in documented().items() for key, row in rows.items()
            if not row.get("type") or not (row.get("valid values", "x") and row.get("meaning", "x"))]
    assert not bare, f"rows with no type or no valid values: {', '.join(bare)}"


# the points the document settles ------------------------------------------------------------------
def test_pass_end_of_the_destination_needs_no_pages_applied():
    """The document: `pages_applied` is optional, the source does not read it; `pass` and `cpu_s` it requires."""
    source = SourceProtocol(1, 4096)
    source.hello(Scenario(GuestSpec(8192)).to_dict(), "s")
    source.receive(protocol.encode_control(MsgType.ACCEPT, 0, 0, {"data": [40313]}))
    source.pass_end(0)
    source.receive(protocol.encode_control(MsgType.PASS_END, 1, 0, {"pass": 0, "cpu_s": 0.01}))
    source.pass_end(0)
    source.receive(protocol.encode_control(MsgType.PASS_END, 2, 1, {"pass": 1, "pages_applied": "many", "cpu_s": 0}))
    assert source.pass_no == 2
    source.pass_end(0)
    with pytest.raises(RemoteProtocolError) as refused:
        source.receive(protocol.encode_control(MsgType.PASS_END, 3, 2, {"pass": 2, "pages_applied": 0}))
    assert str(refused.value) == "body.cpu_s: missing from PASS_END body"


def hello_frames(scenario: dict, **body) -> list:
    return protocol.encode_control(MsgType.HELLO, 0, 0, {"protocol": protocol.VERSION, "session": "s",
                                                         "scenario": scenario, **body})


def hosted(frames: list):
    """What the destination makes of a HELLO: its engine takes it, then receiver.judge (scenario, problems)."""
    hello = DestinationProtocol.check_hello(frames)
    engine = DestinationProtocol()
    engine.receive_hello(hello)
    return judge(hello, DestinationLimits(cpu=CpuModel("GenuineIntel", ())), 1 << 30)


def scenario_with(part: str, name: str, value) -> dict:
    data = Scenario(GuestSpec(8192), config=GuestConfig(cpu=None)).to_dict()
    data[part][name] = value
    return data


RATE_REFUSED = "rate_pages_per_s must be a number in [0, 1e+09], got 1e+300 (or max: unpaced)"
TIMEOUT_REFUSED = "timeout_s must be a number >= 0.001 and finite, got 1e-09"


def test_a_writer_rate_past_a_billion_page_writes_a_second_is_refused():
    with pytest.raises(ValueError) as refused:
        WorkloadSpec(rate_pages_per_s=1e300)
    assert str(refused.value) == RATE_REFUSED
    assert WorkloadSpec(rate_pages_per_s=MAX_RATE_PAGES_PER_S).rate_pages_per_s == 1e9
    assert WorkloadSpec(rate_pages_per_s=math.inf).unpaced  # "max": flat out, not a pace
    with pytest.raises(ValueError) as refused:
        run_options.scenario_from({"dirty_rate": run_options.OPTIONS["dirty_rate"].value("1e300")})
    assert str(refused.value) == f"--dirty-rate: {RATE_REFUSED}"

    scenario, problems = hosted(hello_frames(scenario_with("workload", "rate_pages_per_s", 1e300)))
    assert scenario is None and [(p.field, p.text) for p in problems] == [("scenario", f"invalid scenario: "
                                                                                      f"{RATE_REFUSED}")]
    scenario, problems = hosted(hello_frames(scenario_with("workload", "rate_pages_per_s", "max")))
    assert scenario.workload.unpaced and not problems


DISK_RATE_REFUSED = "write_rate_bytes_per_s must be a number in [0, 1e+12], got 1e+300 (or max: flat out)"


def test_a_disk_writer_rate_past_a_terabyte_a_second_is_refused():
    with pytest.raises(ValueError) as refused:
        DiskSpec(1 << 20, write_rate_bytes_per_s=1e300)
    assert str(refused.value) == DISK_RATE_REFUSED
    assert DiskSpec(1 << 20, write_rate_bytes_per_s=MAX_WRITE_RATE_BYTES_PER_S).write_rate_bytes_per_s == 1e12
    assert DiskSpec(1 << 20, write_rate_bytes_per_s=math.inf).write_rate_bytes_per_s == math.inf  # "max"
    with pytest.raises(ValueError) as refused:
        run_options.OPTIONS["disk_write_rate"].value("1e300B/s")
    assert str(refused.value) == DISK_RATE_REFUSED.removeprefix("write_rate_bytes_per_s ")

    data = scenario_with("migration", "storage", "mirror")
    data["disk"] = {"size_bytes": 1 << 20, "write_rate_bytes_per_s": 1e300}
    scenario, problems = hosted(hello_frames(data))
    assert scenario is None and [(p.field, p.text) for p in problems] == [("scenario", f"invalid scenario: "
                                                                                      f"{DISK_RATE_REFUSED}")]


def test_a_timeout_under_a_millisecond_is_refused():
    with pytest.raises(ValueError) as refused:
        MigrationOptions(timeout_s=1e-9)
    assert str(refused.value) == TIMEOUT_REFUSED
    assert MigrationOptions(timeout_s=0.001).timeout_s == 0.001
    with pytest.raises(ValueError) as refused:
        run_options.OPTIONS["timeout"].value("1ns")
    assert str(refused.value) == TIMEOUT_REFUSED.removeprefix("timeout_s ")

    scenario, problems = hosted(hello_frames(scenario_with("migration", "timeout_s", 1e-9)))
    assert scenario is None and [(p.field, p.text) for p in problems] == [("scenario", f"invalid scenario: "
                                                                                      f"{TIMEOUT_REFUSED}")]


def test_a_key_hello_or_check_does_not_have_is_refused_naming_it():
    scenario = scenario_with("guest", "seed", 1)
    with pytest.raises(RemoteProtocolError) as refused:
        DestinationProtocol.check_hello(hello_frames(scenario, extra=1))
    assert str(refused.value) == "body.extra: not a key of a HELLO body (those are protocol, session, scenario)"
    assert protocol.Decoder().decode(stranger_abort(f"protocol error: {refused.value}")).body == {
        "reason": "protocol error: body.extra: not a key of a HELLO body (those are protocol, session, scenario)"}

    check = protocol.encode_control(MsgType.CHECK, 0, 0, {"protocol": protocol.VERSION, "scenario": scenario,
                                                          "session": "s"})
    with pytest.raises(RemoteProtocolError) as refused:
        DestinationProtocol.check_hello(check)
    assert str(refused.value) == "body.session: not a key of a CHECK body (those are protocol, scenario)"

    # a HELLO of another version is refused for its version, whatever else it holds
    other = protocol.encode_control(MsgType.HELLO, 0, 0, {"protocol": protocol.VERSION + 1, "session": "s", "scenario": {},
                                                          "new": 1})
    scenario, problems = hosted(other)
    assert scenario is None and [p.field for p in problems] == ["protocol"]
    assert hosted(hello_frames(scenario_with("guest", "seed", 1)))[1] == []  # the three keys: hosted


def test_a_strangers_abort_is_answered_naming_what_was_expected():
    """Before a migration (and, with --serve, from any peer but a migration's source) an ABORT is a message
    that begins nothing: answered with ABORT, seq 0 (see also test_hostile.py, a real receiver)."""
    with pytest.raises(RemoteProtocolError) as refused:
        DestinationProtocol.check_hello(protocol.encode_control(MsgType.ABORT, 0, 0, {"reason": "who are you"}))
    answer = protocol.Decoder().decode(stranger_abort(f"protocol error: {refused.value}"))
    assert (answer.type, answer.seq, answer.body) == (MsgType.ABORT, 0, {
        "reason": "protocol error: type: got ABORT, expected HELLO or CHECK: no migration in progress"})
