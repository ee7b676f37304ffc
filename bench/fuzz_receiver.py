"""A long fuzz of a live `precopy receive --serve`: mutated and random frames and HELLOs, then one migration.

Starts the receiver as a subprocess on a free loopback port and sends it, over its control
socket (ZeroMQ DEALERs, as sources), --frames mutated and random messages from a few peers,
each replaced by a fresh one now and then (a new identity): HELLOs with each scenario field
set to bad values, absurd resources, wrong protocol versions, other types first, header
fields and bytes changed, frames cut, extended, lost or added, random bytes, and valid
HELLOs followed by garbage, an ABORT, a short session, or silence. Every --probe-every
messages a liveness probe (a HELLO of protocol version 0) must be refused within
--probe-timeout. Then `precopy send` migrates a small guest to the same receiver.

Prints frames and HELLOs sent, answers by type, crashes (the receiver exited), hangs (probes
not answered in time), unanswered frames, the receiver's memory before, during and after, the
receivers' outcomes and the final migration's status; writes them as JSON. Exit status 1 if
there was a crash or a hang or the final migration did not complete, 2 on bad arguments.

    python bench/fuzz_receiver.py [--frames 100000] [--seed 1] [--json FILE]
"""

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import zmq

import emulator
from emulator.analysis.report import host_info
from emulator.core.units import format_bytes, parse_size
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from emulator.wire import protocol
from emulator.wire.protocol import HEADER, MAGIC, MAX_CONTROL_BYTES, VERSION, MsgType, RemoteProtocolError

from arguments import progress, started_at  # bench/, beside this script

RESULTS = Path(__file__).resolve().parent / "results"
CAPACITY_BYTES = 64 << 20  # the receiver's --capacity: the largest guest a fuzzed HELLO can make it allocate
FINAL_MEMORY_BYTES = 64 << 20
MAX_MESSAGE_BYTES = 64 << 20  # the receiver's default --max-message
LISTENING = re.compile(r"listening on (tcp://\S+)")
PROGRESS_EVERY_S = 5.0
RSS_EVERY_S = 0.25
SCRIPT_LINGER_S = 1.0  # a script's peer stays open this long after its last message, for late answers
FOLLOW_UP_GRACE_S = 0.5  # a retiring peer stays open this long after its last send (linger 0 drops unsent frames)
RECENT = 400  # messages kept for a crash or hang report
CRASH_WINDOW_S = 1.0  # a crash report lists the messages sent this long before the crash was seen
SHOWN_FRAME_BYTES = 256  # of each frame in a report, as hex
REPORTED_MESSAGES = 40  # at most, the latest, in a crash or hang report
REPORTED_CRASHES = 3  # crash reports in the JSON (all are counted, by their last line)
BUSY_RETRY_S = 20.0  # the final migration is retried this long while the receiver is busy with a fuzzed one


# messages ------------------------------------------------------------------------------------


def header(msg_type, length, *, seq=0, pass_no=0, page_count=0, codec=0, flags=0, version=VERSION,
           magic=MAGIC, pad=b"\x00\x00\x00", raw_len=None):
    """A 44-byte header; any field may be out of range for the protocol (not for its width)."""
    return HEADER.pack(magic, version, msg_type, flags, seq, pass_no, page_count, codec, pad,
                       length if raw_len is None else raw_len, length)


class Raw:
    """JSON text put into a body as is (what json.dumps cannot write: deep nesting, NaN, ...)."""

    def __init__(self, text):
        self.text = text


def body_bytes(body):
    """`body` as compact JSON bytes: UTF-8 where it can be, escapes (lone surrogates) where not."""
    raws = []

    def placeholder(value):
        raws.append(value.text)
        return f"\x00raw{len(raws) - 1}\x00"

    def walk(value):
        if isinstance(value, Raw):
            return placeholder(value)
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    text = json.dumps(walk(body), separators=(",", ":"), ensure_ascii=False)
    for index, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{index}\x00", ensure_ascii=False), raw)
    return text.encode("utf-8", "backslashreplace")  # a lone surrogate becomes its JSON escape, \udXXX


def control(msg_type, body, *, seq=0, pass_no=0):
    """A control message [header, b"", JSON] for any type (a payload of bytes is sent as is)."""
    payload = body if isinstance(body, bytes) else body_bytes(body)
    return [header(msg_type, len(payload), seq=seq, pass_no=pass_no), b"", payload]


def hello_body(scenario_dict, version=VERSION, session="f022"):
    return {"protocol": version, "session": session, "scenario": scenario_dict}


def small_scenario():
    """A valid scenario this receiver accepts: a 1 MiB idle guest."""
    return Scenario(GuestSpec(256 * 4096, fill="zero"), WorkloadSpec(rate_pages_per_s=0),
                    MigrationOptions(codec="raw", batch_pages=64, device_state_bytes=4096, timeout_s=2.0)).to_dict()


def probe_message():
    """The liveness probe: a well-formed HELLO of protocol version 0, which is always refused."""
    return control(MsgType.HELLO, hello_body(small_scenario(), version=0, session="probe"))


def scenario_paths(tree, prefix=()):
    """The path of every leaf of a scenario dict: ("guest", "page_size"), ("migration", "policy", ...)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from scenario_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def set_path(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def delete_path(tree, path):
    for key in path[:-1]:
        tree = tree[key]
    del tree[path[-1]]


# mutations -----------------------------------------------------------------------------------

GENERIC_BAD = [None, True, False, 0, -1, 1, 2, -(2**63), 2**63, 2**64, 2**64 + 1, 10**30, 0.0, -0.0, 0.5, -1.5,
               1e308, -1e308, 5e-324, "", "0", "1", "x", "max", "inf", "nan", [], [1, 2], {}, {"a": 1}, [[[]]],
               "\ud800", "\x00", "é"]
NAMED_BAD = {
    "codec": ["zstd", "RAW", "LZ4", "lz4 ", "none", "gzip"],
    "pattern": ["spiral", "Uniform", "random", "hotset\x00"],
    "verify": ["paranoid", "none", "INCREMENTAL", "full "],
    "fill": ["ones", "Random", "mixed\n"],
    "on_stall": ["panic", "Abort", "switchover "],
}
RAW_BAD = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" * 5000, "[" * 50 + "]" * 50,
           "[" * 3000 + "]" * 3000, "[" * 30000 + "]" * 30000, '{"a":' * 500 + "1" + "}" * 500]
RESOURCES = {
    ("workload", "vcpus"): [64, 65, 100, 1024, 1025, 2**31, 10**12],
    ("migration", "channels"): [16, 17, 64, 65, 1000, 2**31],
    ("migration", "device_state_bytes"): [16 << 20, (16 << 20) + 1, 64 << 20, (64 << 20) + 1, 1 << 40],
    ("migration", "batch_pages"): [16384, 16385, 65536, 65537, 10**9],
    ("guest", "memory_bytes"): [CAPACITY_BYTES, CAPACITY_BYTES + 4096, 1 << 30, 1 << 40, 1 << 50, 1 << 62,
                                1 << 63, 1 << 64, 4096 * 10**26],
    ("guest", "page_size"): [1 << 16, 1 << 20, 1 << 26, 1 << 31, 1 << 32, 1 << 40, 1 << 62, 1 << 63, 1 << 64],
}
JSON_BODIES = [b"", b"{", b"}", b"[]", b'"x"', b"1", b"null", b"true", b"\xff\xfe", b"\xef\xbb\xbf{}", b"{} ",
               b" {}", b"{}\x00", b'{"protocol":NaN}', b'{"protocol":Infinity}', b'{"protocol":-Infinity}',
               b'{"a":"\\ud800"}', b'{"protocol":2,"protocol":0}', b'{"protocol":' + b"9" * 5000 + b"}",
               b"[" * 30000 + b"]" * 30000, b'{"a":' * 30000, b"{}" + b" " * (MAX_CONTROL_BYTES - 2),
               b"{}" + b" " * (MAX_CONTROL_BYTES - 1), b'{"\xc3\x28":1}', b'{"a":"\\u00"}']
# header field -> values to try on a well-formed message
HEADER_VALUES = {
    "magic": [b"PCPX", b"\x00\x00\x00\x00", b"YPCP", b"pcpy"],
    "version": [0, 1, 3, 255, 65535],
    "type": [0, *range(2, 15), 127, 255],
    "flags": [1, 2, 3, 4, 128, 255],
    "seq": [1, 2, 2**32, 2**63, 2**64 - 1],
    "pass_no": [1, 2**31, 2**32 - 1],
    "page_count": [1, 2, 2**32 - 1],
    "codec": [1, 2, 255],
    "pad": [b"\x00\x00\x01", b"\x01\x00\x00", b"\xff\xff\xff"],
    "raw_len": ["-1", "+1", 0, MAX_CONTROL_BYTES + 1, 2**32, 2**64 - 1],
    "encoded_len": ["-1", "+1", 0, MAX_CONTROL_BYTES + 1, 2**32, 2**64 - 1],
}
HEADER_FIELDS = ("magic", "version", "type", "flags", "seq", "pass_no", "page_count", "codec", "pad", "raw_len",
                 "encoded_len")
# kind -> weight (relative share of the generated messages)
KINDS = {
    "scenario-field": 16, "resources": 6, "hello-top": 5, "wrong-version": 3, "header-field": 10, "not-hello": 8,
    "byte-flip": 12, "cut-extend": 10, "frame-count": 6, "random-bytes": 8, "json-body": 8, "valid-hello": 1,
    "hello-then-garbage": 3, "hello-then-abort": 2, "hello-session": 2,
}


class Plan:
    """What to send next: one message on a fuzz peer, or a script (several messages) on a fresh peer."""

    def __init__(self, kind, messages, *, script=False, silence=False):
        self.kind, self.messages, self.script, self.silence = kind, messages, script, silence


class Mutator:
    """Deterministic (by seed) source of Plans; knows nothing of sockets."""

    def __init__(self, seed, silence_every, exclude=()):
        self.rng = random.Random(seed)
        self.silence_every = silence_every
        self.next_silence = silence_every or None
        self.count = 0  # messages generated
        self.base = small_scenario()
        self.paths = list(scenario_paths(self.base))
        self.kinds = [kind for kind in KINDS if kind not in exclude]
        self.weights = [KINDS[kind] for kind in self.kinds]

    def next(self):
        if self.next_silence is not None and self.count >= self.next_silence:
            self.next_silence += self.silence_every
            plan = Plan("hello-then-silence", [self.valid_hello()], script=True, silence=True)
        else:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            plan = getattr(self, "_" + kind.replace("-", "_"))()
            plan.kind = kind
        self.count += len(plan.messages)
        return plan

    # building blocks
    def scenario(self):
        return json.loads(json.dumps(self.base))

    def valid_scenario(self):
        """A random scenario within this receiver's limits (it would be accepted)."""
        rng = self.rng
        page_size = rng.choice([64, 512, 4096, 4096, 4096, 65536])
        top_pages = CAPACITY_BYTES // page_size
        n_pages = top_pages if rng.random() < 0.05 else rng.randint(1, min(top_pages, (4 << 20) // page_size))
        scenario = self.scenario()
        scenario["guest"].update(memory_bytes=n_pages * page_size, page_size=page_size, seed=rng.randrange(2**32),
                                 fill=rng.choice(["zero", "random", "half", "text", "mixed"]))
        scenario["workload"].update(vcpus=rng.choice([1, 1, 2, 8, 64]), write_size=8 * rng.randint(1, page_size // 8),
                                    rate_pages_per_s=rng.choice([0, 0, 1000, "max"]),
                                    pattern=rng.choice(["uniform", "hotset", "sequential", "zipf"]))
        scenario["migration"].update(codec=rng.choice(["raw", "lz4"]), channels=rng.choice([1, 1, 2, 4, 16]),
                                     batch_pages=rng.randint(1, min(65536, MAX_MESSAGE_BYTES // page_size)),
                                     device_state_bytes=rng.choice([0, 4096, 256 << 10]),
                                     verify=rng.choice(["incremental", "full"]))
        return scenario

    def valid_hello(self):
        return control(MsgType.HELLO, hello_body(self.valid_scenario()))

    def bad_value(self, path):
        rng = self.rng
        choice = rng.random()
        if choice < 0.45:
            return rng.choice(GENERIC_BAD)
        if choice < 0.55 and path[-1] in NAMED_BAD:
            return rng.choice(NAMED_BAD[path[-1]])
        if choice < 0.7:
            return Raw(rng.choice(RAW_BAD))
        if choice < 0.85:  # the valid value, as another type or a step beside it
            current = self.scenario()
            for key in path:
                current = current[key]
            if isinstance(current, (int, float)) and not isinstance(current, bool):
                return rng.choice([float(current), current + 0.5, current - 1, -current, str(current),
                                   [current], current * 2**40])
            return rng.choice([[current], {"value": current}, str(current).upper(), 1])
        n = rng.choice([100, 4000, 12000, 20000, 30000])  # long strings, some that grow when quoted
        return rng.choice(["A", "\\", '"', "\x01", "\ud800", "\u0085", "é"]) * n

    def templates(self):
        """A well-formed message of every type, the HELLO (a valid one) first."""
        rng = self.rng
        pages = rng.randint(1, 4)
        return [
            self.valid_hello(),
            control(MsgType.ACCEPT, {"data": [rng.randint(1, 65535)]}),
            control(MsgType.REFUSE, {"reason": "no"}),
            [header(MsgType.PAGES, pages * 4096, page_count=pages),
             b"".join(i.to_bytes(4, "little") for i in range(pages)), bytes(pages * 4096)],
            [header(MsgType.ZERO_PAGES, 0, page_count=256, raw_len=256 * 4096, flags=1),
             (0).to_bytes(4, "little") + (256).to_bytes(4, "little"), b""],
            control(MsgType.PASS_END, {"pass": 0, "messages": [1], "pages": 4}, seq=rng.choice([0, 1])),
            control(MsgType.SWITCHOVER, {"pass": 0, "reason": "converged"}, seq=rng.choice([0, 1, 2])),
            [header(MsgType.DEVICE_STATE, 4096), b"", rng.randbytes(4096)],
            control(MsgType.COMPLETE, {"pass": 0, "messages": [0], "pages": 0, "digest": "0" * 32,
                                       "device_state_digest": "0" * 32, "storage_token": "t"}),
            control(MsgType.RESUMED, {"digest": "0" * 32}),
            control(MsgType.ANNOUNCE, {"location": "here"}),
            control(MsgType.ABORT, {"reason": "fuzz"}, seq=rng.choice([0, 1])),
            control(MsgType.HEARTBEAT, {}, seq=rng.choice([0, 1, 5])),
        ]

    def template(self):
        templates = self.templates()
        return list(templates[0] if self.rng.random() < 0.5 else self.rng.choice(templates[1:]))

    def garbage(self):
        """One broken message, as a source gone wrong might send mid-migration."""
        kind = self.rng.choice(["byte-flip", "cut-extend", "frame-count", "random-bytes", "json-body", "not-hello"])
        return getattr(self, "_" + kind.replace("-", "_"))().messages[0]

    # kinds
    def _scenario_field(self):
        rng = self.rng
        scenario, path = self.scenario(), rng.choice(self.paths)
        action = rng.random()
        if action < 0.75:
            set_path(scenario, path, self.bad_value(path))
        elif action < 0.85:
            delete_path(scenario, path)
        elif action < 0.95:  # an extra field beside it
            set_path(scenario, (*path[:-1], rng.choice(["extra", "memory", "\ud800", "A" * 20000, ""])),
                     rng.choice(GENERIC_BAD))
        else:  # a whole part replaced
            scenario[path[0]] = rng.choice([None, [], "x", 1, {}, Raw("[" * 3000 + "]" * 3000)])
        return Plan("", [control(MsgType.HELLO, hello_body(scenario))])

    def _resources(self):
        rng = self.rng
        scenario = self.scenario()
        for path in rng.sample(list(RESOURCES), rng.randint(1, 3)):
            set_path(scenario, path, rng.choice(RESOURCES[path]))
        page_size = scenario["guest"]["page_size"]
        if rng.random() < 0.5 and isinstance(page_size, int) and page_size > 4096:  # memory a whole number of pages
            scenario["guest"]["memory_bytes"] = page_size * rng.choice([1, 2, 1 << 20])
        return Plan("", [control(MsgType.HELLO, hello_body(scenario))])

    def _hello_top(self):
        rng = self.rng
        body = hello_body(self.scenario())
        action = rng.random()
        if action < 0.35:
            body["protocol"] = rng.choice([0, 1, 3, -1, 2**64, "2", 2.0, True, None, [2], Raw("2e0"), Raw("1e999")])
        elif action < 0.55:
            del body[rng.choice(["protocol", "session", "scenario"])]
        elif action < 0.75:
            body["scenario"] = rng.choice([None, [], "x", 1, {}, {"guest": {}}, Raw("[" * 30000 + "]" * 30000)])
        elif action < 0.9:
            body["session"] = rng.choice([1, None, [], {}, "", "A" * 60000, "\ud800"])
        else:
            body[rng.choice(["extra", "", "\ud800", "protocol "])] = rng.choice(GENERIC_BAD)
        return Plan("", [control(MsgType.HELLO, body)])

    def _wrong_version(self):
        rng = self.rng
        if rng.random() < 0.5:
            message = self.valid_hello()
            message[0] = header(MsgType.HELLO, len(message[2]), version=rng.choice([0, 1, 3, 0x0200, 65535]))
            return Plan("", [message])
        return Plan("", [control(MsgType.HELLO, hello_body(self.scenario(), version=rng.choice([0, 1, 3, 99, 2**32])))])

    def _header_field(self):
        rng = self.rng
        message = self.template()
        fields = dict(zip(HEADER_FIELDS, HEADER.unpack(message[0])))
        for name in rng.sample(list(HEADER_VALUES), rng.choice([1, 1, 1, 2, 3])):
            value = rng.choice(HEADER_VALUES[name])
            if isinstance(value, str):  # a step beside the true length
                value = max(0, fields[name] + int(value))
            fields[name] = value
        message[0] = HEADER.pack(*(fields[name] for name in HEADER_FIELDS))
        return Plan("", [message])

    def _not_hello(self):
        return Plan("", [list(self.rng.choice(self.templates()[1:]))])

    def _byte_flip(self):
        rng = self.rng
        message = [bytearray(frame) for frame in self.template()]
        for _ in range(rng.choice([1, 1, 2, 4])):
            index = 0 if rng.random() < 0.5 else rng.randrange(len(message))
            if message[index]:
                message[index][rng.randrange(len(message[index]))] ^= rng.randint(1, 255)
        return Plan("", [[bytes(frame) for frame in message]])

    def _cut_extend(self):
        rng = self.rng
        message = self.template()
        index = rng.randrange(len(message))
        frame = message[index]
        action = rng.random()
        if action < 0.45:
            message[index] = frame[: rng.randrange(len(frame) + 1)]
        elif action < 0.8:
            tail_bytes = rng.randint(1, 64)
            message[index] = frame + (rng.randbytes(tail_bytes) if rng.random() < 0.5 else bytes(tail_bytes))
        else:  # the payload cut or extended, with the header's lengths to match (so it reaches the JSON parser)
            payload = message[2]
            payload = payload[: rng.randrange(len(payload) + 1)] if rng.random() < 0.5 else payload + rng.randbytes(8)
            fields = dict(zip(HEADER_FIELDS, HEADER.unpack(message[0])))
            fields["raw_len"] = fields["encoded_len"] = len(payload)
            message[0], message[2] = HEADER.pack(*(fields[name] for name in HEADER_FIELDS)), payload
        return Plan("", [message])

    def _frame_count(self):
        rng = self.rng
        message = self.template()
        action = rng.random()
        if action < 0.35:
            message = message[: rng.randint(1, 2)]
        elif action < 0.7:
            message += [rng.choice([b"", rng.randbytes(8), message[0]]) for _ in range(rng.randint(1, 3))]
        elif action < 0.85:
            message = [rng.randbytes(5), *message]  # as if an identity frame were not stripped
        else:
            message = message * 2
        return Plan("", [message])

    def _random_bytes(self):
        rng = self.rng
        message = [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.3:  # a plausible start, to get past the magic and version checks
            prefix = MAGIC + VERSION.to_bytes(2, "little") + bytes([rng.randint(0, 14)])
            message[0] = prefix + rng.randbytes(rng.choice([44 - len(prefix), rng.randint(0, 60)]))
        return Plan("", [message])

    def _json_body(self):
        rng = self.rng
        payload = rng.choice(JSON_BODIES)
        others = [MsgType.ABORT, MsgType.HEARTBEAT, MsgType.PASS_END]
        msg_type = MsgType.HELLO if rng.random() < 0.7 else rng.choice(others)
        return Plan("", [control(msg_type, payload)])

    def _valid_hello(self):
        return Plan("", [self.valid_hello()])

    def _hello_then_garbage(self):
        return Plan("", [self.valid_hello(), self.garbage()], script=True)

    def _hello_then_abort(self):
        rng = self.rng
        body = rng.choice([{"reason": "fuzz"}, {"reason": "fuzz", "cancelled": True}, {"reason": "\ud800"},
                           {"reason": "A" * 60000}, {"reason": 5}, {}, {"reason": "fuzz", "cancelled": "no"}])
        return Plan("", [self.valid_hello(), control(MsgType.ABORT, body, seq=1)], script=True)

    def _hello_session(self):
        """HELLO, the start of a migration (an empty pass 0 first, or not), one value wrong or none, then garbage."""
        rng = self.rng
        scenario = self.valid_scenario()
        device_state_bytes = scenario["migration"]["device_state_bytes"] = rng.choice([0, 64, 4096])
        channels = scenario["migration"]["channels"]
        final_pass = rng.choice([0, 1])  # 1: an empty pass 0 first, which the receiver acknowledges
        steps = [("HEARTBEAT", {})]
        if final_pass:
            steps.append(("PASS_END", {"pass": 0, "messages": [0] * channels, "pages": 0}))
        steps += [("SWITCHOVER", {"pass": final_pass, "reason": "converged"}), ("DEVICE_STATE", device_state_bytes),
                  ("COMPLETE", {"pass": final_pass, "messages": [0] * channels, "pages": 0, "digest": "f" * 32,
                                "device_state_digest": "0" * 32, "storage_token": "t"})]
        steps = steps[: rng.randint(1, len(steps))]
        wrong = rng.randrange(len(steps) + 1)  # len(steps): nothing wrong
        messages = [control(MsgType.HELLO, hello_body(scenario))]
        for seq, (name, body) in enumerate(steps, start=1):
            if seq - 1 == wrong:
                body, seq = self.wrong_step(body, channels, seq)
            if name == "DEVICE_STATE":
                messages.append([header(MsgType.DEVICE_STATE, body, seq=seq), b"", bytes(body)])
            else:
                messages.append(control(MsgType[name], body, seq=seq))
        messages.append(self.garbage())
        return Plan("", messages, script=True)

    def wrong_step(self, body, channels, seq):
        """A session step made wrong: (body, seq) with one body value changed (the size, for DEVICE_STATE),
        or the seq of an empty body."""
        rng = self.rng
        if isinstance(body, int):
            return max(0, body + rng.choice([1, -1, 4096])), seq
        if not body:
            return body, seq + rng.choice([1, -1])
        value = rng.choice([None, -1, 2**64, "x", [], [-1] * channels, [0] * (channels + 1), [True] * channels,
                            "\ud800", "A" * 60000])
        return {**body, rng.choice(list(body)): value}, seq


# the receiver --------------------------------------------------------------------------------


def precopy_command():
    script = Path(sys.executable).with_name("precopy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "emulator.shell.cli"]


def memory_kib(pid):
    """(VmRSS, VmHWM) of a process in KiB, or (None, None) once it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
    except OSError:
        return None, None
    return values.get("VmRSS"), values.get("VmHWM")


class Receiver:
    """A `precopy receive --serve` subprocess on a free loopback port; its output goes to files."""

    def __init__(self, workdir, timeout_s, number):
        self.out_path = Path(workdir) / f"receiver{number}.out"
        self.err_path = Path(workdir) / f"receiver{number}.err"
        self.command = [*precopy_command(), "receive", "--listen", "tcp://127.0.0.1:0", "--serve",
                        "--capacity", str(CAPACITY_BYTES), "--timeout", f"{timeout_s:g}s"]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.endpoint = self._wait_listening()

    def _wait_listening(self, timeout_s=120.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = LISTENING.search(self.err_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the receiver never said it listens (exit {self.proc.poll()}): {self.stderr_tail()}")

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def memory_kib(self):
        return memory_kib(self.proc.pid)

    def stderr_tail(self, chars=4000):
        return self.err_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s=30.0):
        """SIGTERM (which cancels like Ctrl-C), then SIGKILL; the exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def outcomes(self):
        """Each migration outcome the receiver printed, as (status, reason) (the summary: key-value lines)."""
        outcomes, current = [], {}
        for line in self.out_path.read_text(errors="replace").splitlines() + [""]:
            if not line.strip():
                if current:
                    outcomes.append((current.get("status"), current.get("reason", "")))
                current = {}
                continue
            key, _, value = line.partition(" ")
            current[key] = value.strip()
        return outcomes


# the fuzz ------------------------------------------------------------------------------------


class Peer:
    """One DEALER: a fuzz peer (one answer per message), a script's, or the probe."""

    def __init__(self, context, endpoint, role, number):
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.role, self.number = role, number
        self.pending = collections.deque()  # (kind, sent_at, message number): answers owed, in order
        self.retiring = False
        self.awaiting_hello = None  # a fuzz peer sends nothing after a HELLO (this message number) until it is answered
        self.close_at = 0.0  # not before this time (monotonic)
        self.script_kind = None
        self.last_kind = None


def frames_for_report(message):
    return [{"bytes": len(frame), "hex": bytes(frame[:SHOWN_FRAME_BYTES]).hex()} for frame in message]


class Fuzz:
    """The I/O side: sends Plans over peers, matches answers, probes liveness, watches the receiver."""

    def __init__(self, args, workdir):
        self.args, self.workdir = args, workdir
        self.mutator = Mutator(args.seed, args.silence_every, args.exclude)
        self.context = zmq.Context()
        self.receivers = 0
        self.receiver = self._start_receiver()
        self.peers = {}  # socket -> Peer
        self.poller = zmq.Poller()
        self.peer_numbers = 0
        self.fuzz_peers = [self._open("fuzz") for _ in range(args.peers)]
        self.probe_peer = self._open("probe")
        self.sent = 0  # messages sent, all of them
        self.generated = 0  # messages from the mutator
        self.hellos = 0  # well-formed HELLOs sent (fuzzed, probes excluded)
        self.follow_ups = 0  # ABORTs sent after an ACCEPT
        self.answers = collections.Counter()
        self.reasons = collections.Counter()  # "ABORT: reason" with digits as N
        self.by_kind = collections.defaultdict(collections.Counter)
        self.extra_answers = 0
        self.extra_samples = []
        self.latency = collections.defaultdict(list)  # kind -> seconds from send to its answer
        self.malformed_answers = []
        self.unanswered = []
        self.crashes = []
        self.probes = {"sent": 0, "refused": 0, "failed": 0, "lost_to_crash": 0, "latencies_s": []}
        self.hangs = []
        self.recent = collections.deque(maxlen=RECENT)
        self.outcomes = collections.Counter()
        self.failed_reasons = collections.Counter()
        self.tracebacks = collections.Counter()  # the last line of each traceback a receiver printed
        self.memory = {"before": None, "peak_rss_kib": 0, "samples": []}
        self.next_rss_at = 0.0

    # peers
    def _start_receiver(self):
        self.receivers += 1
        receiver = Receiver(self.workdir, self.args.receiver_timeout, self.receivers)
        progress(f"receiver {self.receivers} (pid {receiver.pid}) listening on {receiver.endpoint}")
        return receiver

    def _open(self, role):
        self.peer_numbers += 1
        peer = Peer(self.context, self.receiver.endpoint, role, self.peer_numbers)
        self.peers[peer.sock] = peer
        self.poller.register(peer.sock, zmq.POLLIN)
        return peer

    def _close(self, peer):
        self.poller.unregister(peer.sock)
        del self.peers[peer.sock]
        peer.sock.close(linger=0)

    def _retire(self, peer, replace=True):
        """Send nothing more on `peer`; close it once its answers came (a fuzz peer gets a successor)."""
        peer.retiring = True
        peer.close_at = time.monotonic() + FOLLOW_UP_GRACE_S
        if peer in self.fuzz_peers:
            index = self.fuzz_peers.index(peer)
            if replace:
                self.fuzz_peers[index] = self._open("fuzz")
            else:
                del self.fuzz_peers[index]
        peer.awaiting_hello = None

    def outstanding(self):
        return sum(len(peer.pending) for peer in self.peers.values() if peer.role != "probe")

    # sending
    def _send(self, peer, message, kind, owed):
        self.sent += 1
        self.recent.append((self.sent, time.monotonic(), kind, peer.number, message))
        if len(message) == 3 and peer.role != "probe":
            try:
                if protocol.Decoder().decode(message).type == MsgType.HELLO:
                    self.hellos += 1
                    # Only a well-formed HELLO can make this peer a migration's source; until its answer
                    # says whether it did, a message after it would have another meaning.
                    peer.awaiting_hello = self.sent if peer.role == "fuzz" else None
            except RemoteProtocolError:
                pass
        if owed:
            peer.pending.append((kind, time.monotonic(), self.sent))
        peer.last_kind = kind
        peer.sock.send_multipart(message, copy=True)

    def execute(self, plan):
        self.generated += len(plan.messages)
        if not plan.script:
            if self.mutator.rng.random() < 1 / self.args.peer_messages:  # a fresh identity now and then
                self._retire(self.mutator.rng.choice(self.fuzz_peers))
            index = self.mutator.rng.randrange(len(self.fuzz_peers))
            while self.fuzz_peers[index].awaiting_hello is not None:  # wait, not another draw: the draws
                self.pump(0.05)  # must not depend on timing, for --seed to repeat the run
            self._send(self.fuzz_peers[index], plan.messages[0], plan.kind, owed=True)
            return
        peer = self._open("script")
        peer.script_kind = plan.kind
        for index, message in enumerate(plan.messages):
            self._send(peer, message, plan.kind, owed=index == 0)  # the first answer is owed; the rest vary
        if not plan.silence:  # a message no session accepts ends the migration, if the script left it running
            self._send(peer, [b"end"], plan.kind, owed=False)
        peer.retiring = True
        linger_s = self.args.receiver_timeout + 1.0 if plan.silence else SCRIPT_LINGER_S
        peer.close_at = time.monotonic() + linger_s

    # receiving
    def pump(self, timeout_s):
        """Take every answer that is waiting (or comes within timeout_s); close peers that are done."""
        ready = dict(self.poller.poll(int(timeout_s * 1000)))
        for sock in ready:
            peer = self.peers[sock]
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._answer(peer, frames)
        self._housekeeping()

    def _answer(self, peer, frames):
        try:
            reply = protocol.Decoder().decode(frames)
        except RemoteProtocolError as error:
            self.answers["malformed"] += 1
            if len(self.malformed_answers) < 10:
                self.malformed_answers.append({"error": str(error), "frames": frames_for_report(frames)})
            return
        name = reply.type.name
        self.answers[name] += 1
        if reply.type in (MsgType.ABORT, MsgType.REFUSE):
            reason = str((reply.body or {}).get("reason"))
            self.reasons[f"{name}: {re.sub(r'[0-9]+', 'N', reason)[:100]}"] += 1
        if peer.role == "probe":
            self._probe_answer(peer, reply)
            return
        if reply.type == MsgType.HEARTBEAT:  # while it allocates an accepted guest: owed nothing
            return
        if not peer.pending:
            if peer.role == "script":
                self.by_kind[peer.script_kind][name] += 1
            else:
                self.extra_answers += 1
                if len(self.extra_samples) < 10:
                    self.extra_samples.append({"peer": peer.number, "last_sent": peer.last_kind, "answer": name,
                                               "reason": str((reply.body or {}).get("reason"))[:200]})
            return
        kind, sent_at, number = peer.pending.popleft()
        self.by_kind[kind][name] += 1
        self.latency[kind].append(time.monotonic() - sent_at)
        if number == peer.awaiting_hello:
            peer.awaiting_hello = None
        if reply.type == MsgType.ACCEPT and peer.role == "fuzz":
            # The receiver now hosts this peer's migration: end it as a source would (no answer is owed).
            self.follow_ups += 1
            self._send(peer, control(MsgType.ABORT, {"reason": "fuzz: accepted"}, seq=1), "follow-up", owed=False)
            self._retire(peer)

    def _housekeeping(self):
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if peer.role == "probe":
                continue
            while peer.pending and now - peer.pending[0][1] > self.args.answer_timeout:
                kind, sent_at, number = peer.pending.popleft()
                self._unanswered(kind, number)
                peer.awaiting_hello = None
            if peer.retiring and not peer.pending and now >= peer.close_at:
                self._close(peer)
        if now >= self.next_rss_at or not self.receiver.alive():
            self.next_rss_at = now + RSS_EVERY_S
            self._watch_receiver()

    def _unanswered(self, kind, number):
        entry = {"kind": kind, "message": number}
        for sent, _, _, _, message in self.recent:
            if sent == number:
                entry["frames"] = frames_for_report(message)
        self.unanswered.append(entry)
        progress(f"no answer within {self.args.answer_timeout:g} s to message {number:,} ({kind})")

    def _watch_receiver(self):
        rss, _ = self.receiver.memory_kib()
        if rss is not None:
            self.memory["peak_rss_kib"] = max(self.memory["peak_rss_kib"], rss)
        if self.receiver.alive():
            return
        status = self.receiver.proc.returncode
        last_lines = [line[:300] for line in self.receiver.stderr_tail().strip().splitlines()[-2:]]
        self.crashes.append({"exit_status": status, "after_message": self.sent, "last_lines": last_lines,
                             "recent": self._recent(CRASH_WINDOW_S)})
        progress(f"CRASH: the receiver exited with status {status} after message {self.sent:,}: "
                 f"{last_lines[-1][:200] if last_lines else ''}")
        self._collect_outcomes(self.receiver)
        for peer in list(self.peers.values()):
            self._close(peer)
        self.receiver = self._start_receiver()
        self.fuzz_peers = [self._open("fuzz") for _ in range(self.args.peers)]
        self.probe_peer = self._open("probe")

    # liveness
    def probe(self):
        """Send the probe HELLO; wait (taking other answers meanwhile) for its REFUSE."""
        peer = self.probe_peer
        self.probes["sent"] += 1
        sent_at = time.monotonic()
        peer.pending.append(("probe", sent_at, self.sent + 1))
        self._send(peer, probe_message(), "probe", owed=False)
        while peer.pending and peer is self.probe_peer and time.monotonic() - sent_at < self.args.probe_timeout:
            self.pump(0.05)
        if peer is not self.probe_peer:  # the receiver crashed meanwhile: a crash, not a hang
            self.probes["lost_to_crash"] += 1
            return
        if peer.pending:
            self.probes["failed"] += 1
            self.hangs.append({"after_message": self.sent, "outstanding": self.outstanding(),
                               "recent": self._recent(self.args.probe_timeout + 1.0)})
            progress(f"HANG: no REFUSE to the liveness probe within {self.args.probe_timeout:g} s")
            self._close(peer)
            self.probe_peer = self._open("probe")

    def _recent(self, seconds):
        """The messages sent in the last `seconds` (as many as kept), oldest first, for a report."""
        since = time.monotonic() - seconds
        return [{"message": sent, "kind": kind, "peer": number, "frames": frames_for_report(message)}
                for sent, sent_at, kind, number, message in self.recent if sent_at >= since][-REPORTED_MESSAGES:]

    def _probe_answer(self, peer, reply):
        if not peer.pending:
            return  # a late answer to a failed probe
        _, sent_at, _ = peer.pending.popleft()
        if reply.type == MsgType.REFUSE:
            self.probes["refused"] += 1
            self.probes["latencies_s"].append(time.monotonic() - sent_at)
        else:
            self.probes.setdefault("answered_otherwise", collections.Counter())[reply.type.name] += 1

    # the run
    def run(self):
        args = self.args
        time.sleep(1.0)  # let the receiver settle before the first measurement
        rss, hwm = self.receiver.memory_kib()
        self.memory["before"] = {"rss_kib": rss, "hwm_kib": hwm}
        fuzz_started = time.monotonic()
        next_progress = fuzz_started + PROGRESS_EVERY_S
        next_probe = args.probe_every
        while self.generated < args.frames and len(self.crashes) <= args.max_crashes:
            if self.generated >= next_probe:
                next_probe += args.probe_every
                self.probe()
            while self.outstanding() >= args.window:
                self.pump(0.05)
            self.execute(self.mutator.next())
            self.pump(0)
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                self._progress_line(fuzz_started)
        self.probe()
        for peer in list(self.fuzz_peers):
            self._retire(peer, replace=False)
        deadline = time.monotonic() + args.answer_timeout + args.receiver_timeout + 2
        while any(peer.role != "probe" for peer in self.peers.values()) and time.monotonic() < deadline:
            self.pump(0.1)
        self.fuzz_s = time.monotonic() - fuzz_started
        if len(self.crashes) > args.max_crashes:
            progress(f"stopped after {len(self.crashes)} crashes (--max-crashes {args.max_crashes})")
        self._progress_line(fuzz_started)
        time.sleep(1.0)
        rss, hwm = self.receiver.memory_kib()
        self.memory["after"] = {"rss_kib": rss, "hwm_kib": hwm}
        self.final = final_migration(self.receiver.endpoint, args.final_memory)
        self._watch_receiver()
        rss, hwm = self.receiver.memory_kib()
        self.memory["after_final_migration"] = {"rss_kib": rss, "hwm_kib": hwm}
        for peer in list(self.peers.values()):
            self._close(peer)
        self.context.term()
        self.receiver.stop()
        self._collect_outcomes(self.receiver)

    def _progress_line(self, started):
        elapsed_s = time.monotonic() - started
        rss, _ = self.receiver.memory_kib()
        self.memory["samples"].append({"t_s": round(elapsed_s, 1), "messages": self.sent, "rss_kib": rss})
        answers = ", ".join(f"{name} {count:,}" for name, count in self.answers.most_common())
        progress(f"{self.generated:,}/{self.args.frames:,} messages ({self.generated / max(elapsed_s, 1e-9):,.0f}/s), "
                 f"answers: {answers}; probes {self.probes['refused']}/{self.probes['sent']}; "
                 f"receiver RSS {format_bytes((rss or 0) * 1024)}")

    def _collect_outcomes(self, receiver):
        """Add a receiver's outcomes and tracebacks (it has stopped) to the run's."""
        self.tracebacks.update(tracebacks(receiver.err_path.read_text(errors="replace")))
        for status, reason in receiver.outcomes():
            self.outcomes[status] += 1
            if reason.startswith("the destination failed"):
                self.failed_reasons[re.sub(r"\d+", "N", reason)[:200]] += 1

    def results(self):
        latencies = sorted(self.probes["latencies_s"])
        probes = {key: value for key, value in self.probes.items() if key != "latencies_s"}
        if latencies:
            probes.update(latency_median_s=latencies[len(latencies) // 2], latency_max_s=latencies[-1])
        memory = dict(self.memory)
        memory["peak_rss_kib_during"] = memory.pop("peak_rss_kib")
        memory["receivers"] = self.receivers  # > 1 after crashes: before is the first's, after the last's
        return {
            "frames_sent": self.sent, "fuzzed_messages": self.generated, "hellos_sent": self.hellos,
            "follow_up_aborts": self.follow_ups, "peers_opened": self.peer_numbers,
            "answers": dict(self.answers), "answer_reasons": dict(self.reasons.most_common(40)),
            "answers_by_kind": {kind: dict(counts) for kind, counts in sorted(self.by_kind.items())},
            "answer_latency_s": latency_figures(self.latency),
            "extra_answers": self.extra_answers, "extra_answer_samples": self.extra_samples,
            "unanswered": len(self.unanswered),
            "unanswered_messages": self.unanswered[:20], "malformed_answers": self.malformed_answers,
            "crashes": len(self.crashes), "crash_signatures": dict(collections.Counter(
                re.sub(r"\d+", "N", (crash["last_lines"] or ["?"])[-1])[:300] for crash in self.crashes)),
            "crash_reports": self.crashes[:REPORTED_CRASHES], "hangs": len(self.hangs),
            "hang_reports": self.hangs, "probes": probes, "receiver_memory": memory,
            "receiver_outcomes": dict(self.outcomes), "receiver_internal_failures": dict(self.failed_reasons),
            "receiver_tracebacks": dict(self.tracebacks.most_common(10)),
            "fuzz_s": self.fuzz_s, "final_migration": self.final,
        }


def latency_figures(latency):
    """kind -> {count, median_s, p99_s, max_s} from kind -> [seconds]."""
    figures = {}
    for kind, values in sorted(latency.items()):
        values = sorted(values)
        figures[kind] = {"count": len(values), "median_s": values[len(values) // 2],
                         "p99_s": values[min(len(values) - 1, int(len(values) * 0.99))], "max_s": values[-1]}
    return figures


def tracebacks(text):
    """How many times each error ended a traceback in a log (the error line, shortened)."""
    found = collections.Counter()
    for block in text.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line and not line.startswith(" ")]
        found[lines[0][:300] if lines else "?"] += 1
    return found


def final_migration(endpoint, memory_bytes):
    """`precopy send` of a small guest to the receiver; its report's status (retried while the receiver is busy)."""
    command = [*precopy_command(), "send", "--to", endpoint, "--memory", str(memory_bytes), "--timeout", "10s",
               "--json", "--quiet"]
    deadline = time.monotonic() + BUSY_RETRY_S
    progress(f"final migration: {format_bytes(memory_bytes)} guest to {endpoint}")
    while True:
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        wall_s = time.monotonic() - started
        try:
            report = json.loads(done.stdout)
        except ValueError:
            report = {"status": "failed", "reason": f"no report (exit {done.returncode}): {done.stderr[-500:]}"}
        reason = report.get("reason") or ""
        if "busy" not in reason or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    summary = report.get("summary", {})
    result = {"status": report.get("status"), "reason": reason or None, "digests_match": report.get("digests_match"),
              "wall_s": wall_s, "total_time_ms": summary.get("total-time"), "downtime_ms": summary.get("downtime"),
              "memory_bytes": memory_bytes}
    progress(f"final migration: {result['status']}" + (f" ({reason})" if reason else ""))
    return result


# the command ---------------------------------------------------------------------------------


def whole(minimum, name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def seconds(name):
    def parse(text):
        try:
            value = float(text.removesuffix("s"))
        except ValueError:
            value = 0.0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be a number of seconds > 0, got {text!r}")
        return value

    return parse


def kind_list(text):
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown)}: expected some of {', '.join(KINDS)}")
    if set(kinds) >= set(KINDS):
        raise argparse.ArgumentTypeError("--exclude leaves no kind of mutation to send")
    return kinds


def size(text):
    try:
        value = parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if value <= 0 or value % 4096 or value > CAPACITY_BYTES:
        raise argparse.ArgumentTypeError(f"--final-memory must be a multiple of 4 KiB up to "
                                         f"{format_bytes(CAPACITY_BYTES)} (the receiver's capacity), got {text!r}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", metavar="N", type=whole(1, "--frames"), default=100_000,
                        help="fuzzed messages to send (default 100000)")
    parser.add_argument("--seed", metavar="S", type=whole(0, "--seed"), default=1,
                        help="seed of the mutations (default 1)")
    parser.add_argument("--exclude", type=kind_list, default=[], metavar="KIND,...",
                        help="leave out these kinds of mutation (e.g. one whose crash is known, to watch the rest "
                             "for longer): " + ", ".join(KINDS))
    parser.add_argument("--peers", metavar="N", type=whole(1, "--peers"), default=4,
                        help="fuzz peers at a time (default 4)")
    parser.add_argument("--peer-messages", metavar="N", type=whole(1, "--peer-messages"), default=250,
                        help="messages per fuzz peer, on average, before a fresh one replaces it (default 250)")
    parser.add_argument("--window", metavar="N", type=whole(1, "--window"), default=32,
                        help="answers owed at most before waiting for them (default 32)")
    parser.add_argument("--probe-every", metavar="N", type=whole(1, "--probe-every"), default=1000,
                        help="a liveness probe every N messages (default 1000)")
    parser.add_argument("--probe-timeout", metavar="SECONDS", type=seconds("--probe-timeout"), default=5.0,
                        help="seconds a probe may wait for its REFUSE (default 5)")
    parser.add_argument("--answer-timeout", metavar="SECONDS", type=seconds("--answer-timeout"), default=5.0,
                        help="seconds an owed answer may take before it counts as unanswered (default 5)")
    parser.add_argument("--silence-every", metavar="N", type=whole(0, "--silence-every"), default=10_000,
                        help="a valid HELLO followed by silence every N messages; 0 = never (default 10000)")
    parser.add_argument("--receiver-timeout", metavar="SECONDS", type=seconds("--receiver-timeout"), default=2.0,
                        help="the receiver's --timeout, which bounds a silent source (default 2)")
    parser.add_argument("--max-crashes", metavar="N", type=whole(0, "--max-crashes"), default=20,
                        help="restart a crashed receiver this many times, then stop fuzzing (default 20)")
    parser.add_argument("--final-memory", metavar="SIZE", type=size, default=FINAL_MEMORY_BYTES,
                        help="guest size of the final migration (default 64MiB)")
    parser.add_argument("--json", metavar="FILE", default=str(RESULTS / "fuzz_receiver.json"),
                        help="where to write the results (default bench/results/fuzz_receiver.json)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the receiver's output (kept anyway after a crash); its folder is printed")
    parser.add_argument("--debug", action="store_true", help="show a traceback if the benchmark itself fails")
    return parser.parse_args(argv)


def mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def format_report(results, wall_s):
    memory = results["receiver_memory"]
    probes = results["probes"]
    final = results["final_migration"]
    lines = [
        f"frames sent          {results['frames_sent']:,} ({results['fuzzed_messages']:,} fuzzed, "
        f"{results['follow_up_aborts']:,} follow-up ABORTs, {probes['sent']:,} probes) from "
        f"{results['peers_opened']:,} peers",
        f"HELLOs sent          {results['hellos_sent']:,} well-formed (probes excluded)",
        "answers              " + ", ".join(f"{name} {count:,}" for name, count in
                                            sorted(results["answers"].items(), key=lambda item: -item[1])),
        f"unanswered           {results['unanswered']:,}   extra answers {results['extra_answers']:,}   "
        f"malformed answers {len(results['malformed_answers'])}",
        f"crashes              {results['crashes']}",
        f"hangs                {results['hangs']} (probes refused {probes['refused']:,}/{probes['sent']:,}"
        + (f", {probes['lost_to_crash']} lost to a crash" if probes["lost_to_crash"] else "")
        + (f", median {probes['latency_median_s'] * 1e3:.1f} ms, max {probes['latency_max_s'] * 1e3:.1f} ms"
           if "latency_max_s" in probes else "") + ")",
        f"receiver VmRSS       before {mib(memory['before']['rss_kib'])}, peak during "
        f"{mib(memory['peak_rss_kib_during'])}, after {mib(memory['after']['rss_kib'])}, "
        f"after the final migration {mib(memory['after_final_migration']['rss_kib'])}"
        + (f" ({memory['receivers']} receivers: restarted after each crash)" if memory["receivers"] > 1 else ""),
        f"receiver VmHWM       before {mib(memory['before']['hwm_kib'])}, after {mib(memory['after']['hwm_kib'])}, "
        f"after the final migration {mib(memory['after_final_migration']['hwm_kib'])}",
        "receiver outcomes    " + ", ".join(f"{status} {count:,}" for status, count in
                                            sorted(results["receiver_outcomes"].items(), key=lambda item: -item[1])),
    ]
    for reason, count in results["receiver_internal_failures"].items():
        lines.append(f"  internal failure   {count:,} x {reason}")
    for error, count in results["receiver_tracebacks"].items():
        lines.append(f"  traceback          {count:,} x {error}")
    for signature, count in results["crash_signatures"].items():
        lines.append(f"  crash              {count:,} x {signature}")
    lines += [
        f"final migration      {final['status']}" + (f" ({final['reason']})" if final["reason"] else "")
        + f", {format_bytes(final['memory_bytes'])}, digests match: {final['digests_match']}",
        "",
        "answers by kind:",
    ]
    for kind, counts in results["answers_by_kind"].items():
        lines.append(f"  {kind:<20} " + ", ".join(f"{name} {count:,}" for name, count in sorted(counts.items())))
    lines.append(f"\nfuzz {results['fuzz_s']:.0f} s, wall time {wall_s:.0f} s")
    return "\n".join(lines)


def code_under_test():
    """The commit the receiver ran, and whether emulator/ and kernels/ differed from it (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent

    def git(*words):
        done = subprocess.run(["git", "-C", str(root), *words], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", "emulator", "kernels")
    return {"emulator": str(Path(emulator.__file__).parent), "commit": git("rev-parse", "HEAD"),
            "emulator_or_kernels_modified": None if changed is None else bool(changed)}


def main(argv=None):
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="fuzz_receiver-")
    fuzz = None
    try:
        fuzz = Fuzz(args, workdir)
        fuzz.run()
        results = fuzz.results()
    except Exception as error:  # noqa: BLE001 - the benchmark reports its own failure in one line
        if args.debug:
            traceback.print_exc()
        print(f"fuzz_receiver.py: error: {error}", file=sys.stderr)
        if fuzz is not None:
            fuzz.receiver.stop()
        return 1
    finally:
        if not args.keep_logs and (fuzz is None or not fuzz.crashes):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"receiver logs kept in {workdir}")
    wall_s = time.monotonic() - started_at()
    print(format_report(results, wall_s))
    arguments = {key: value for key, value in vars(args).items() if key not in ("debug", "keep_logs")}
    document = {"host": host_info(), "code": code_under_test(), "arguments": arguments, "wall_s": wall_s, **results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as out:
        json.dump(document, out, indent=2, default=str)
    print(f"results in {args.json}")
    ok = not results["crashes"] and not results["hangs"] and results["final_migration"]["status"] == "completed"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
