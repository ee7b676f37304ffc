"""CURVE on every socket: the right keys migrate, any other key gets nothing in."""

import threading
import time
from dataclasses import asdict

import pytest

from emulator.dataplane import security
from emulator.running.migration import receive, run_source
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec

PAGE = 4096


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    return {name: security.generate(directory, name) for name in ("receiver", "sender", "stranger")}


def scenario(channels=2, timeout_s=3.0):
    return Scenario(GuestSpec(512 * PAGE, fill="random", seed=3), WorkloadSpec(rate_pages_per_s=5000),
                    MigrationOptions(channels=channels, timeout_s=timeout_s))


class Messages:
    def __init__(self):
        self.texts = []

    def message(self, text):
        self.texts.append(text)


def start_receiver(server, messages=None):
    """A one-shot receiver on a free loopback port in a thread; returns (endpoint, outcome dict, thread)."""
    ready, outcome = threading.Event(), {}

    def serve():
        def on_ready(endpoint):
            outcome["endpoint"] = endpoint
            ready.set()
        outcome.update(asdict(receive("tcp://127.0.0.1:0", security=server, timeout_s=3.0, wait_s=3.0,
                                      ready=on_ready, progress=messages)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    return outcome["endpoint"], outcome, thread


def test_keygen_writes_a_public_and_a_private_file(keys):
    public_file, secret_file = keys["receiver"]
    assert public_file.name == "receiver.key" and secret_file.name == "receiver.key_secret"
    assert (secret_file.stat().st_mode & 0o777) == 0o600
    pair = security.load(secret_file, need_secret=True)
    assert security.load(public_file).public == pair.public and len(pair.public) == 40
    with pytest.raises(ValueError, match="no secret key"):
        security.load(public_file, need_secret=True)
    with pytest.raises(ValueError, match="no CURVE key file .*missing.key: make one with 'precopy keygen"):
        security.load(public_file.parent / "missing.key")
    (public_file.parent / "garbage.key").write_text("not a key")
    with pytest.raises(ValueError, match="cannot read"):
        security.load(public_file.parent / "garbage.key")


def test_authenticated_migration_completes_on_every_socket(keys):
    server = security.ServerSecurity.from_files(keys["receiver"][1], [keys["sender"][0]])
    client = security.ClientSecurity.from_files(keys["sender"][1], keys["receiver"][0])
    endpoint, outcome, thread = start_receiver(server)
    report = run_source(scenario(channels=2), endpoint, security=client)
    thread.join(10)
    assert report.status == "completed" and report.digests_match
    assert outcome["status"] == "completed" and outcome["digest"] == report.source_digest


@pytest.mark.parametrize("who, source_says, destination_says", [
    ("stranger", ["the destination does not accept our key: its --allow must list this sender's NAME.key"],
     "turned away a source whose key is not in --allow"),
    ("wrong-pin", ["the CURVE handshake failed: the destination is not the server whose key --server-key pins"],
     "turned away a source whose CURVE handshake failed (it pinned another receiver's key with --server-key)"),
    # one end has keys, the other none: whichever end sees it first closes, and the other may see only that
    ("plain", ["the destination requires CURVE keys: give --key (this sender's NAME.key_secret) and --server-key"],
     None),
    ("keys-to-plain", ["the destination uses no CURVE keys: drop --key and --server-key, or give it --key and --allow",
                       "the CURVE handshake failed: the destination is not the server whose key --server-key "
                       "pins, or it uses no keys"], None),
])
def test_other_keys_are_refused_at_once_both_ends_say_why_and_nothing_is_applied(keys, who, source_says,
                                                                                  destination_says):
    server = None if who == "keys-to-plain" else security.ServerSecurity.from_files(keys["receiver"][1],
                                                                                     [keys["sender"][0]])
    messages = Messages()
    endpoint, outcome, thread = start_receiver(server, messages)
    client = {
        "stranger": security.ClientSecurity.from_files(keys["stranger"][1], keys["receiver"][0]),
        "plain": None,
        "wrong-pin": security.ClientSecurity.from_files(keys["sender"][1], keys["stranger"][0]),
        "keys-to-plain": security.ClientSecurity.from_files(keys["sender"][1], keys["receiver"][0]),
    }[who]
    started = time.monotonic()
    report = run_source(scenario(timeout_s=5.0), endpoint, security=client)
    took = time.monotonic() - started
    thread.join(10)
    assert report.status == "failed" and report.reason.startswith(tuple(source_says)), report.reason
    assert took < 4.0  # said when the handshake failed, not after the 5 s timeout
    turned_away = [text for text in messages.texts if text.startswith("turned away")]
    if destination_says:
        assert turned_away and turned_away[0].startswith(destination_says), messages.texts
    else:
        assert all("without CURVE keys" in text or "with CURVE keys" in text for text in turned_away), turned_away
    assert outcome["status"] == "failed" and outcome["pages_applied"] == 0 and outcome["digest"] is None


def test_without_keys_only_loopback_unless_insecure():
    with pytest.raises(ValueError, match="without CURVE keys"):
        receive("tcp://0.0.0.0:0")
    messages = []

    class Recorder:
        def message(self, text):
            messages.append(text)

    outcome = receive("tcp://0.0.0.0:0", insecure=True, progress=Recorder(), wait_s=0.2)
    assert outcome.status == "failed" and "no source began a migration within 0.2 s" in outcome.reason
    assert any("UNAUTHENTICATED" in text for text in messages)


def test_allowed_keys_are_required():
    with pytest.raises(ValueError, match="at least one allowed client key"):
        security.ServerSecurity.from_files("whatever", [])
    assert security.is_loopback("127.0.0.5") and security.is_loopback("localhost") and security.is_loopback("[::1]")
    assert not security.is_loopback("0.0.0.0") and not security.is_loopback("example.org")
