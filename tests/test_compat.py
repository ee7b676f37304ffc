"""Guest configuration checks: processor vendor and features, virtual switches, configuration version, capacity."""

import json

import pytest

from emulator.destination.receiver import DestinationLimits
from emulator.shell.cli import main
from emulator.vm import compat
from emulator.vm.compat import CpuModel
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import GuestConfig, MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from tests.engines import run_pair
from tests.fakelink import link_pair

PAGE = 4096
INTEL = CpuModel("GenuineIntel", ("fpu", "sse2", "avx2", "avx512f"))
INTEL_OLDER = CpuModel("GenuineIntel", ("fpu", "sse2", "avx2"))
AMD = CpuModel("AuthenticAMD", ("fpu", "sse2", "avx2"))


def _migrate(config, limits, capacity_bytes=None):
    scenario = Scenario(GuestSpec(64 * PAGE), WorkloadSpec(), MigrationOptions(), config)
    report, outcome, _, destination = run_pair(scenario, *link_pair(), limits=limits, capacity_bytes=capacity_bytes)
    return report, outcome, destination


def test_parse_cpuinfo_reads_x86_and_arm():
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\nvendor_id\t: X\n"
    assert compat.parse_cpuinfo(x86) == CpuModel("GenuineIntel", ("avx2", "fpu", "sse2"))
    arm = "processor\t: 0\nFeatures\t: fp asimd aes\nCPU implementer\t: 0x41\n"
    assert compat.parse_cpuinfo(arm) == CpuModel("0x41", ("aes", "asimd", "fp"))
    with pytest.raises(ValueError, match="no vendor or feature list"):
        compat.parse_cpuinfo("model name : something\n")


def test_the_common_set_of_three_described_hosts(tmp_path, capsys):
    hosts = {"a": INTEL, "b": INTEL_OLDER, "c": CpuModel("GenuineIntel", ("fpu", "avx2", "aes"))}
    files = []
    for name, model in hosts.items():
        files.append(str(tmp_path / f"{name}.json"))
        (tmp_path / f"{name}.json").write_text(json.dumps({"host": name, **model.to_dict()}))
    assert compat.common(hosts) == CpuModel("GenuineIntel", ("avx2", "fpu"))
    assert main(["compat", "--hosts", *files]) == 0
    written = tmp_path / "common.json"
    written.write_text(capsys.readouterr().out)
    assert compat.load(written) == CpuModel("GenuineIntel", ("avx2", "fpu"))


def test_hosts_of_different_vendors_have_no_common_set():
    with pytest.raises(ValueError, match=r"the hosts' vendors differ \(a GenuineIntel, b AuthenticAMD\)"):
        compat.common({"a": INTEL, "b": AMD})


def test_describe_is_this_hosts_processor(capsys):
    assert main(["compat", "--describe"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert CpuModel(described["vendor"], tuple(described["features"])) == compat.this_cpu()


@pytest.mark.parametrize("config, limits, capacity, reason", [
    (GuestConfig(cpu=INTEL), DestinationLimits(cpu=INTEL_OLDER), None,
     "config.cpu.features: this destination's processor lacks 1 feature the guest requires (avx512f): give the "
     "guest a cluster's common set (precopy compat --hosts ... > common.json, then --cpu common.json)"),
    (GuestConfig(cpu=INTEL_OLDER), DestinationLimits(cpu=AMD), None,
     "config.cpu.vendor is GenuineIntel, this destination's processor is AuthenticAMD: no compatibility mode "
     "moves a guest between vendors: choose a destination of the same vendor"),
    (GuestConfig(cpu=None, switches=("External",)), DestinationLimits(switches=("Internal",)), None,
     "config.switches: the guest's network adapters connect to virtual switch 'External', which this "
     "destination lacks (it has 'Internal'): receive --switch External"),
    (GuestConfig(cpu=None, switches=("External", "Storage")), DestinationLimits(), None,
     "config.switches: the guest's network adapters connect to virtual switches 'External', 'Storage', which "
     "this destination lacks (it has none): receive --switch External --switch Storage"),
    (GuestConfig(cpu=None, version=3), DestinationLimits(config_version=2), None,
     "config.version is 3, newer than this destination supports (2): upgrade precopy on the destination, or "
     "give the guest --config-version 2"),
    (GuestConfig(cpu=None), DestinationLimits(), 63 * PAGE,
     "guest.memory_bytes is 256 KiB (262144 B), above this destination's capacity of 252 KiB (258048 B): give "
     "the guest at most 252 KiB, or free memory on the destination (receive --capacity sets what it offers)"),
])
def test_each_refusal_names_the_problem_and_its_fix(config, limits, capacity, reason):
    report, outcome, destination = _migrate(config, limits, capacity)
    assert report.status == outcome.status == "failed"
    assert report.reason == f"destination refused: {reason}"
    assert destination.guest is None and not report.passes  # nothing allocated, nothing sent


def test_many_missing_features_are_named_within_a_control_message():
    guest_cpu = CpuModel("GenuineIntel", tuple(f"f{i:03}" for i in range(300)))
    report, _, _ = _migrate(GuestConfig(cpu=guest_cpu), DestinationLimits(cpu=INTEL_OLDER))
    assert "lacks 300 features the guest requires (f000, f001," in report.reason
    assert "f015 and 284 more)" in report.reason and "f016" not in report.reason


def test_a_compatible_configuration_migrates():
    report, outcome, _ = _migrate(GuestConfig(cpu=INTEL_OLDER, switches=("External",)),
                                  DestinationLimits(cpu=INTEL, switches=("External", "Storage")))
    assert report.status == "completed" and report.scenario.config.switches == ("External",)


def test_every_problem_is_said_at_once():
    report, _, _ = _migrate(GuestConfig(version=9, cpu=INTEL, switches=("External",)),
                            DestinationLimits(cpu=INTEL_OLDER, config_version=1), capacity_bytes=PAGE)
    parts = report.reason.removeprefix("destination refused: ").split("; ")
    assert [part.split(" ")[0] for part in parts] == ["config.version", "config.cpu.features:", "config.switches:",
                                                     "guest.memory_bytes"]


def test_a_hostile_configuration_is_refused_naming_the_field():
    data = Scenario().to_dict()
    data["config"]["switches"] = ["a" * 65]
    with pytest.raises(ValueError, match="switches must be at most 64 switch names of 1 to 64 characters"):
        Scenario.from_dict(data)
    data["config"] = {"cpu": {"vendor": "x", "features": list(map(str, range(5000)))}}
    with pytest.raises(ValueError, match="cpu features must be at most 4096 names"):
        Scenario.from_dict(data)
