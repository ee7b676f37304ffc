"""The link's speed for a share cap: the route's interface from /proc/net/route, its sysfs speed; and the cap itself."""

import re

import pytest

from emulator.analysis import link_speed
from emulator.analysis.report import Report
from emulator.shell.cli import main

# /proc/net/route's layout: addresses and masks as little-endian hex words
ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
ens5\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
veth1\t000010AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


@pytest.fixture
def host(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    for iface, speed in (("eth0", "1000"), ("ens5", "25000"), ("veth1", "-1")):
        (tmp_path / "net" / iface).mkdir(parents=True)
        (tmp_path / "net" / iface / "speed").write_text(speed + "\n")
    return {"routes": routes, "interfaces": tmp_path / "net"}


@pytest.mark.parametrize("address, bytes_per_s", [
    ("10.0.1.7", 25000e6 / 8),  # the /24 on ens5 beats the /16 on eth0
    ("10.0.2.7", 1000e6 / 8),  # the /16
    ("192.0.2.1", 1000e6 / 8),  # the default route
])
def test_the_longest_prefix_routes_interface_gives_the_speed(host, address, bytes_per_s):
    assert link_speed.speed_to(address, **host) == bytes_per_s


@pytest.mark.parametrize("address, says", [
    ("127.0.0.1", "127.0.0.1 is reached over loopback, which has no link speed"),
    ("172.16.3.4", "interface veth1 (the route to 172.16.3.4) reports no speed"),
    ("nonexistent.invalid", "cannot resolve 'nonexistent.invalid'"),
])
def test_an_unreadable_speed_is_said_with_why(host, address, says):
    with pytest.raises(link_speed.UnknownLinkSpeed, match=re.escape(says)):
        link_speed.speed_to(address, **host)


def test_no_route_is_said(host):
    host["routes"].write_text(ROUTES.splitlines()[0] + "\n")
    with pytest.raises(link_speed.UnknownLinkSpeed, match="no IPv4 route to 10.0.1.7"):
        link_speed.speed_to("10.0.1.7", **host)


def test_a_share_of_the_link_holds_within_3_percent_of_its_rate(tmp_path):
    # 25% of 200 MB/s = 50 MB/s: a random 96 MiB guest, idle writers, about 2 s of pass 0
    path = tmp_path / "share.json"
    assert main(["migrate", "--memory", "96MiB", "--fill", "random", "--codec", "raw", "--dirty-rate", "0",
                 "--max-bandwidth", "25%", "--link", "200MB/s", "--quiet", "--report", str(path)]) == 0
    report = Report.read(path)
    options = report.scenario.migration
    assert (options.max_bandwidth_bytes_per_s, options.link_bytes_per_s) == (50e6, 200e6)
    pass0 = report.passes[0]
    assert pass0.wire_bytes / pass0.duration_s == pytest.approx(50e6, rel=0.03)


def test_a_share_without_a_readable_link_is_refused_before_anything_runs(capsys):
    assert main(["migrate", "--max-bandwidth", "25%", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        "precopy: error: --max-bandwidth 25%: the link's speed cannot be read: 127.0.0.1 is reached over loopback, "
        "which has no link speed; give it (example: --link 10Gbit/s)\n")


def test_a_sweep_takes_a_share_and_the_link_as_keys():
    from emulator.analysis import sweep

    (run,) = sweep.expand([{"memory": "8MiB", "max_bandwidth": "10%", "link": "10Gbit/s", "lambda": 0.5}])
    assert run.scenario.migration.max_bandwidth_bytes_per_s == 125e6
    assert run.scenario.workload.rate_pages_per_s == 0.5 * 125e6 / 4096
