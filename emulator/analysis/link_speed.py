"""The speed of the link to a destination, as Linux reports it: the route's interface and its sysfs `speed`.

A bandwidth cap given as a share of the link (``--max-bandwidth 25%``, as WS2025 caps live
migration at a share of the node's bandwidth) needs the link's speed. Without ``--link``
it is read here: the IPv4 route to the destination (``/proc/net/route``, longest prefix),
then ``/sys/class/net/IFACE/speed`` (Mbit/s). Loopback and virtual interfaces (veth,
bridges, tun) have no speed; that is said, naming the interface, never guessed.
"""

import ipaddress
import socket
from pathlib import Path

ROUTES = Path("/proc/net/route")
INTERFACES = Path("/sys/class/net")


class UnknownLinkSpeed(ValueError):
    """The link's speed cannot be read; the message says why."""


def _route_interface(address, routes_text):
    """The interface of the longest-prefix IPv4 route to `address` in /proc/net/route's text, or None."""
    best = None
    for line in routes_text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 8:
            continue
        iface, destination, mask = parts[0], int(parts[1], 16), int(parts[7], 16)
        # the file holds addresses as little-endian hex words
        dest = ipaddress.IPv4Address(destination.to_bytes(4, "little"))
        netmask = ipaddress.IPv4Address(mask.to_bytes(4, "little"))
        network = ipaddress.IPv4Network(f"{dest}/{netmask}", strict=False)
        if address in network and (best is None or network.prefixlen > best[1]):
            best = (iface, network.prefixlen)
    return best and best[0]


def speed_to(host, *, routes=ROUTES, interfaces=INTERFACES):
    """The link speed (bytes/s) of the interface that reaches `host`; UnknownLinkSpeed saying why not."""
    try:
        address = ipaddress.IPv4Address(socket.gethostbyname(host))
    except OSError as error:
        raise UnknownLinkSpeed(f"cannot resolve {host!r}: {error}") from None
    if address.is_loopback:
        raise UnknownLinkSpeed(f"{address} is reached over loopback, which has no link speed")
    try:
        iface = _route_interface(address, routes.read_text())
    except OSError as error:
        raise UnknownLinkSpeed(f"cannot read the routes ({error}); only Linux reports them") from None
    if iface is None:
        raise UnknownLinkSpeed(f"no IPv4 route to {address}")
    try:
        mbit = int((interfaces / iface / "speed").read_text().strip())
    except (OSError, ValueError):
        mbit = -1  # virtual interfaces have no speed file, or one that cannot be read
    if mbit <= 0:
        raise UnknownLinkSpeed(f"interface {iface} (the route to {address}) reports no speed: "
                               f"virtual interfaces (veth, bridge, tun) and some drivers do not")
    return mbit * 1e6 / 8
