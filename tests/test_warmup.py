"""The data path's warm-up leaves no kernel to compile (or load) once a migration runs.

Checked in a fresh interpreter, where nothing else has called the kernels yet:
after the guests and writers exist (their kernels run before any clock) and
warm_up(), migrations with every codec and verification mode, with writers
dirtying pages between passes, must not add one signature to any kernel.
"""

import json
import subprocess
import sys

SCRIPT = """
import json
from numba.core.dispatcher import Dispatcher
from emulator.dataplane.batches import warm_up
from emulator.source.policy import PolicyConfig
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import Workload, WorkloadSpec
from kernels import bitmap, fill, memcopy, pages, writers
from tests.engines import run_pair
from tests.fakelink import link_pair


def signatures():
    return {f"{module.__name__}.{name}": [str(s) for s in kernel.signatures]
            for module in (bitmap, fill, memcopy, pages, writers)
            for name, kernel in vars(module).items() if isinstance(kernel, Dispatcher)}


runs = []
for codec in ("raw", "lz4"):
    for verify in ("incremental", "full"):
        s = Scenario(GuestSpec(2048 * 4096, fill="mixed", seed=1), WorkloadSpec(vcpus=2, rate_pages_per_s=50_000),
                     MigrationOptions(codec=codec, verify=verify, timeout_s=5.0,
                                      policy=PolicyConfig(max_passes=3, downtime_limit_s=1e-9)))
        guest = GuestMemory(s.guest)
        runs.append((s, guest, Workload(guest, s.workload)))
warm_up()
before = signatures()
results = []
for s, guest, workload in runs:
    report, outcome, _, _ = run_pair(s, *link_pair(), guest=guest, workload=workload)
    results.append((report.status, outcome.status, report.digests_match,
                    [record.pages_sent for record in report.passes]))
print(json.dumps({"before": before, "after": signatures(), "results": results}))
"""


def test_a_warmed_up_process_compiles_nothing_during_a_migration():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    found = json.loads(done.stdout)
    for status, destination_status, digests_match, pages_sent in found["results"]:
        assert (status, destination_status, digests_match) == ("completed", "completed", True)
        assert len(pages_sent) == 3 and pages_sent[0] == 2048 and 0 < pages_sent[1] < 2048  # dirtied between passes
    added = {name: sorted(set(found["after"][name]) - set(kernel_signatures))
             for name, kernel_signatures in found["before"].items() if found["after"][name] != kernel_signatures}
    assert added == {}
    assert found["before"]["kernels.pages._gather"] and found["before"]["kernels.bitmap._harvest"]


def test_a_slow_warm_up_that_only_loads_the_kernels_says_nothing(monkeypatch):
    import time

    from emulator.running import migration
    from tests.engines import Messages

    # past the notice's second with every kernel loaded from Numba's cache, as on a busy machine
    monkeypatch.setattr(migration, "warm_up", lambda: time.sleep(migration.COMPILE_NOTICE_AFTER_S + 0.2))
    messages = Messages()
    migration.ready_to_move_pages(messages)
    assert messages.texts == []
