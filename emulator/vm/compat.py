"""Processor compatibility: the CPU a guest requires, this host's real one, a cluster's common set.

A guest requires a CPU vendor and a set of features (by default this host's, from
/proc/cpuinfo); a destination refuses a guest whose vendor differs or whose features it
lacks, naming them. As WS2025's dynamic processor compatibility, `common` computes the
features every host of a cluster has (from files each wrote with ``precopy compat
--describe``); a guest that requires only those migrates anywhere in the cluster. A
vendor change (Intel to AMD) is refused whatever the mode: no common set bridges it.
"""

import functools
import json
import platform
import socket
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
MAX_FEATURES = 4096  # more than any x86 or Arm flag list: a bound on what a peer may send
MAX_NAME = 64  # characters in a feature or switch name


@dataclass(frozen=True)
class CpuModel:
    """A processor as a guest sees it: vendor ("GenuineIntel", "AuthenticAMD", ...) and features, sorted."""

    vendor: str
    features: tuple[str, ...]

    def __post_init__(self):
        if not isinstance(self.vendor, str) or not 0 < len(self.vendor) <= MAX_NAME:
            raise ValueError(f"cpu vendor must be a name of 1 to {MAX_NAME} characters, got {self.vendor!r}")
        features = self.features
        if not isinstance(features, (list, tuple)) or len(features) > MAX_FEATURES or not all(
                isinstance(name, str) and 0 < len(name) <= MAX_NAME for name in features):
            raise ValueError(f"cpu features must be at most {MAX_FEATURES} names of 1 to {MAX_NAME} characters")
        object.__setattr__(self, "features", tuple(sorted(set(features))))

    def missing_on(self, host):
        """The features of this model that `host` (a CpuModel) lacks, sorted."""
        return sorted(set(self.features) - set(host.features))

    def to_dict(self):
        return {"vendor": self.vendor, "features": list(self.features)}


def parse_cpuinfo(text):
    """The CpuModel /proc/cpuinfo's text describes (its first processor: x86 `flags`, Arm `Features`)."""
    vendor, features = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "CPU implementer") and vendor is None:
            vendor = value.strip()
        elif key in ("flags", "Features") and features is None:
            features = value.split()
    if vendor is None or features is None:
        raise ValueError("no vendor or feature list in the CPU description")
    return CpuModel(vendor, tuple(features))


@functools.cache
def this_cpu():
    """This host's real processor (Linux: /proc/cpuinfo; elsewhere the platform's name, no features)."""
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except (OSError, ValueError):
        return CpuModel(platform.processor() or platform.machine() or "unknown", ())


def describe():
    """What `precopy compat --describe` writes: this host and its processor."""
    return {"host": socket.gethostname(), **this_cpu().to_dict()}


def load(path):
    """The CpuModel in a file written by `compat --describe` or `compat --hosts`; ValueError saying why not."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return CpuModel(data["vendor"], tuple(data["features"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a CPU description ({type(error).__name__}: {error}); write one with "
                         f"'precopy compat --describe > FILE'") from None


def common(described):
    """The features every host in `described` ({name: CpuModel}) has; ValueError if their vendors differ."""
    vendors = {model.vendor for model in described.values()}
    if len(vendors) != 1:
        by_vendor = ", ".join(f"{name} {model.vendor}" for name, model in described.items())
        raise ValueError(f"the hosts' vendors differ ({by_vendor}): no compatibility mode moves a guest "
                         f"between processor vendors")
    shared = set.intersection(*(set(model.features) for model in described.values()))
    return CpuModel(vendors.pop(), tuple(shared))
