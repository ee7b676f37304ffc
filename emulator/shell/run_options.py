"""The options of one migration, each defined once: the command line's flags and the sweep's keys.

A RunOption names the Scenario field it sets (so its default is the default Scenario's
and its bounds are the owning dataclass's rule, see emulator.core.fields), how a value is read
(emulator.shell.readers), its help and an example. From the table come the options of
``migrate`` and ``send`` (and the subset ``estimate`` takes), the comma-separated axes of
``sweep`` and the keys of a sweep's grid file; `scenario_from` builds the Scenario from
whatever values were given. Adding an option is one entry here and its field in the
dataclass.

The flag is the key with dashes: key ``max_bandwidth`` is ``--max-bandwidth``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from emulator.core import units
from emulator.dataplane.codecs import CODEC_NAMES
from emulator.shell import readers
from emulator.source.policy import DowntimeRamp, PolicyConfig
from emulator.vm import compat
from emulator.vm.disk import STORAGE_MODES, DiskSpec
from emulator.vm.guest import FILL_PROFILES, GuestSpec
from emulator.vm.scenario import (DEFAULT_BATCH_PAGES, DEFAULT_MESSAGE_BYTES, VERIFY_MODES, GuestConfig, MigrationOptions,
                                  Scenario, default_batch_pages)
from emulator.vm.workload import WorkloadSpec
from kernels.writers import PATTERNS

__all__ = ["GROUPS", "OPTIONS", "LinkShare", "RunOption", "add_axes", "add_options", "given", "keys_of",
           "scenario_from"]

_DEFAULTS = Scenario()
_PARTS = {"guest": (GuestSpec, _DEFAULTS.guest), "workload": (WorkloadSpec, _DEFAULTS.workload),
          "migration": (MigrationOptions, _DEFAULTS.migration), "policy": (PolicyConfig, _DEFAULTS.migration.policy),
          "config": (GuestConfig, _DEFAULTS.config), "disk": (DiskSpec, DiskSpec())}


# how a value is read, where emulator.shell.readers has no reader for it -----------------------------------
def _stall_passes(value: Any) -> int | None:
    return readers.whole_number(value) or None  # 0 = never


def _dirty_rate(value: Any) -> Any:
    """The rate as given, its syntax checked: `scenario_from` divides a byte rate by the page size."""
    units.parse_dirty_rate(value, 4096)
    return value


def _pages_per_s(value: Any, values: dict[str, Any]) -> float:
    return units.parse_dirty_rate(value, values.get("page_size", _DEFAULTS.guest.page_size))


@dataclass(frozen=True)
class LinkShare:
    """A bandwidth cap given as a share of the link ("25%"): bytes/s once the link's speed is known."""

    fraction: float

    def __str__(self):
        return f"{self.fraction * 100:g}%"


def _cap(value: Any) -> float | LinkShare | None:
    """A bandwidth cap: a rate, unlimited, or a share of the link such as 25%."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"invalid share {value!r}: expected a percentage such as 25%") from None
        if not 0 < percent <= 100:
            raise ValueError(f"a share of the link must be more than 0% and at most 100%, got {value!r}")
        return LinkShare(percent / 100)
    return units.parse_bandwidth(value)


def _cap_bytes_per_s(value: Any, values: dict[str, Any]) -> float | None:
    if not isinstance(value, LinkShare):
        return value
    link = values.get("link")
    if link is None:
        raise ValueError(f"max_bandwidth {value} is a share of the link, whose speed is not known: give the "
                         f"link's speed (example: --link 10Gbit/s)")
    return value.fraction * link


def _cpu(value: Any) -> compat.CpuModel | None:
    """host: this machine's processor; any: no requirement; else a file from `precopy compat`."""
    text = readers.text(value).strip()
    if text == "host":
        return compat.this_cpu()
    if text == "any":
        return None
    return compat.load(text)


def _names(value: Any) -> tuple[str, ...]:
    """Comma-separated names; none (or nothing) for no names."""
    text = readers.text(value).strip()
    return () if text in ("", "none") else tuple(name.strip() for name in text.split(","))


def _write_rate(value: Any) -> float:
    """A disk writer's rate in bytes/s: 20MB/s, max (flat out) or 0 (idle)."""
    if isinstance(value, str) and value.strip() == "max":
        return float("inf")
    rate = units.parse_bandwidth(value)
    if rate is None:
        raise ValueError(f"expected a rate such as 20MB/s, max or 0, got {value!r}")
    return rate


def _shown_write_rate(rate: float) -> str:
    return "max" if rate == float("inf") else units.format_rate(rate) if rate else "0 (idle)"


def _ramp(value: Any) -> DowntimeRamp | None:
    """STEPS:DELAY_PER_GIB (10:75s, nova's), or none."""
    if units.means_no_limit(value):
        return None
    steps, colon, delay = readers.text(value).partition(":")
    if not colon:
        raise ValueError(f"expected STEPS:DELAY_PER_GIB such as 10:75s, or none, got {value!r}")
    return DowntimeRamp(readers.whole_number(steps), units.parse_duration(delay))


def _shown_ramp(ramp: DowntimeRamp | None) -> str:
    return "none" if ramp is None else f"{ramp.steps}:{units.format_duration(ramp.delay_s_per_gib)}"


def _ms_duration(value: Any) -> float:
    return units.parse_duration(value, "ms")  # as QEMU takes a downtime limit


# how a default shows in the help -------------------------------------------------------------------
def _shown_duration(value: float | None) -> str:
    return "none" if value is None else units.format_duration(value)


@dataclass(frozen=True)
class RunOption:
    """One option of a migration: the field it sets, how it is read, how the help shows it."""

    key: str  # the sweep's key and argparse's dest; the flag is --key with dashes
    group: str  # the help group: guest, workload or migration
    part: str  # the Scenario part holding the field: guest, workload, migration or policy
    field: str  # its field there
    read: Callable[[Any], Any]  # text or grid value -> the field's value, before the field's rule
    example: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    show: Callable[[Any], str] = str  # the default, as the help shows it
    default_text: str | None = None  # the help's default where it is not one value
    # (read value, all values) -> the field's value, where it depends on another option (checked when built)
    resolve: Callable[[Any, dict[str, Any]], Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def is_flag(self) -> bool:
        return self.read is readers.flag

    def value(self, given: Any) -> Any:
        """The field's value for `given`, checked by the field's own rule; ValueError saying why not."""
        value = self.read(given)
        if self.resolve is None:
            _PARTS[self.part][0].RULES[self.field](value)
        return value

    def default_shown(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return self.show(getattr(_PARTS[self.part][1], self.field))


OPTIONS: dict[str, RunOption] = {option.key: option for option in (
    # guest
    RunOption("memory", "guest", "guest", "memory_bytes", units.parse_size, "512MiB", "guest memory size",
              metavar="SIZE", show=units.compact_size),
    RunOption("page_size", "guest", "guest", "page_size", units.parse_size, "2MiB",
              "page size, a power of two >= 64 bytes", metavar="SIZE", show=units.compact_size),
    RunOption("fill", "guest", "guest", "fill", readers.text, "random",
              "initial memory content (mixed: 40%% zero, 25%% text, 20%% half, 15%% random)", choices=FILL_PROFILES),
    RunOption("seed", "guest", "guest", "seed", readers.whole_number, "42",
              "seed of the guest content and of the writers", metavar="N"),
    RunOption("cpu", "guest", "config", "cpu", _cpu, "any",
              "the processor the guest requires: host (this machine's), any, or a file from precopy compat "
              "(--describe, or --hosts for a cluster's common set)", metavar="SPEC",
              default_text="host: this machine's vendor and features"),
    RunOption("switches", "guest", "config", "switches", _names, "External",
              "virtual switches the guest's network adapters connect to, comma-separated", metavar="NAMES",
              show=lambda names: ",".join(names) or "none"),
    RunOption("config_version", "guest", "config", "version", readers.whole_number, "2",
              "the guest's configuration version; a destination that supports only older ones refuses it",
              metavar="N"),
    # the guest's disk
    RunOption("disk", "disk", "disk", "size_bytes", units.parse_size, "4GiB",
              "give the guest a disk of this size: a real file, written by a disk writer",
              metavar="SIZE", default_text="none"),
    RunOption("disk_block", "disk", "disk", "block_size", units.parse_size, "4KiB",
              "the disk's block: what one write writes and the dirty-block bitmap tracks, 4 KiB to 1 MiB",
              metavar="SIZE", show=units.compact_size),
    RunOption("disk_fill", "disk", "disk", "fill", readers.text, "random", "initial disk content, as --fill",
              choices=FILL_PROFILES),
    RunOption("disk_write_rate", "disk", "disk", "write_rate_bytes_per_s", _write_rate, "20MB/s",
              "what the disk writer writes per second: 20MB/s, max (flat out) or 0 (idle)", metavar="RATE",
              show=_shown_write_rate),
    RunOption("disk_pattern", "disk", "disk", "pattern", readers.text, "hotset", "which blocks the disk writer writes",
              choices=tuple(PATTERNS)),
    RunOption("storage", "disk", "migration", "storage", readers.text, "mirror",
              "shared: both hosts see the disk, its handover is a token; mirror: shared-nothing, the disk is "
              "copied alongside memory and the switch-over waits for both", choices=STORAGE_MODES),
    # workload
    RunOption("vcpus", "workload", "workload", "vcpus", readers.whole_number, "4", "writer threads", metavar="N"),
    RunOption("dirty_rate", "workload", "workload", "rate_pages_per_s", _dirty_rate, "20000pages/s",
              "page writes/s over all vCPUs: 20000pages/s or 20000; a byte rate such as 100MiB/s (divided by the "
              "page size); max = unpaced; 0 = idle", metavar="RATE", show=lambda rate: f"{rate:.0f}pages/s",
              resolve=_pages_per_s),
    RunOption("pattern", "workload", "workload", "pattern", readers.text, "uniform", "which pages the writers dirty",
              choices=tuple(PATTERNS)),
    RunOption("hot_fraction", "workload", "workload", "hot_fraction", readers.number, "0.2",
              "hotset: share of pages that are hot", metavar="F"),
    RunOption("hot_share", "workload", "workload", "hot_share", readers.number, "0.8",
              "hotset: share of writes to hot pages", metavar="F"),
    RunOption("stride", "workload", "workload", "stride", readers.whole_number, "16", "sequential: pages per step",
              metavar="PAGES"),
    RunOption("zipf_s", "workload", "workload", "zipf_s", readers.number, "1.2", "zipf: exponent", metavar="S"),
    RunOption("write_size", "workload", "workload", "write_size", units.parse_size, "64",
              "bytes per write, a multiple of 8 up to the page size", metavar="SIZE"),
    # migration
    RunOption("codec", "migration", "migration", "codec", readers.text, "raw", "page codec",
              choices=tuple(CODEC_NAMES)),
    RunOption("channels", "migration", "migration", "channels", readers.whole_number, "4",
              "data connections, as multifd", metavar="N"),
    RunOption("batch_pages", "migration", "migration", "batch_pages", readers.whole_number, "256",
              "pages per data message", metavar="N",
              default_text=f"{DEFAULT_MESSAGE_BYTES >> 20} MiB worth: {DEFAULT_BATCH_PAGES} of 4 KiB"),
    RunOption("downtime_limit", "migration", "policy", "downtime_limit_s", _ms_duration, "500ms",
              "blackout budget; a bare number is milliseconds, as QEMU", metavar="DURATION", show=_shown_duration),
    RunOption("downtime_ramp", "migration", "policy", "downtime_ramp", _ramp, "10:75s",
              "raise the downtime limit in steps up to --downtime-limit, as OpenStack nova does: STEPS:DELAY, each "
              "step DELAY per GiB of guest long (nova's 10:75s to 500ms); none = the limit from the start",
              metavar="STEPS:DELAY", show=_shown_ramp),
    RunOption("max_passes", "migration", "policy", "max_passes", readers.whole_number, "10",
              "switch over after this many passes, pass 0 included", metavar="N"),
    RunOption("max_time", "migration", "policy", "max_time_s", readers.optional_duration, "60s",
              "switch over after this much pre-copy; a bare number is seconds", metavar="DURATION",
              show=_shown_duration),
    RunOption("on_stall", "migration", "policy", "on_stall", readers.text, "abort",
              "when passes stop shrinking: force the final copy or give up", choices=("switchover", "abort")),
    RunOption("stall_passes", "migration", "policy", "stall_passes", _stall_passes, "5",
              "passes without a new minimum that mean stalled; 0 = never", metavar="N"),
    RunOption("max_bandwidth", "migration", "migration", "max_bandwidth_bytes_per_s", _cap,
              "100MB/s", "bandwidth cap: 100MB/s, 500MiB/s, 10Gbit/s, unlimited, or a share of the link: 25%%",
              metavar="RATE", show=units.format_rate, resolve=_cap_bytes_per_s),
    RunOption("link", "migration", "migration", "link_bytes_per_s", units.parse_bandwidth, "10Gbit/s",
              "the link's speed, for a cap given as a share of it (send reads the NIC's speed for the route to the "
              "destination when this is not given)", metavar="RATE", default_text="not known"),
    RunOption("device_state", "migration", "migration", "device_state_bytes", units.parse_size, "1MiB",
              "vCPU/device state sent in the blackout", metavar="SIZE", show=units.compact_size),
    RunOption("timeout", "migration", "migration", "timeout_s", units.parse_duration, "30s",
              "longest wait for the peer; a bare number is seconds", metavar="DURATION", show=_shown_duration),
    RunOption("blackout_warning", "migration", "migration", "blackout_warning_s", readers.optional_duration, "1s",
              "a longer blackout is a warning event in the report and on both ends; never more than 63 s",
              metavar="DURATION", default_text="twice the downtime limit"),
    RunOption("auto_converge", "migration", "migration", "auto_converge", readers.flag, "true",
              "throttle the vCPUs when a pass dirties more than half of what it sent, as QEMU's auto-converge "
              "(20%%, then +10%% per pass, at most 99%%)", show=lambda on: "on" if on else "off"),
    RunOption("dirty_limit", "migration", "migration", "dirty_limit_bytes_per_s", units.parse_bandwidth, "1MB/s",
              "hold each vCPU to this rate of page writes (bytes/s) once a pass dirties more than half of what it "
              "sent, as QEMU's dirty-limit (vcpu-dirty-limit); instead of --auto-converge", metavar="RATE",
              default_text="none"),
    RunOption("xbzrle", "migration", "migration", "xbzrle", readers.flag, "true",
              "from pass 1 on, send a page sent before as the runs where it changed when that is smaller, as QEMU's "
              "XBZRLE (beside --codec, which carries the other pages)", show=lambda on: "on" if on else "off"),
    RunOption("xbzrle_cache", "migration", "migration", "xbzrle_cache_bytes", units.parse_size, "256MiB",
              "XBZRLE's cache of pages as last sent (QEMU's xbzrle cache-size)", metavar="SIZE",
              show=units.compact_size),
    RunOption("postcopy", "migration", "migration", "postcopy", readers.flag, "true",
              "when pre-copy cannot converge, resume the guest on the destination with its dirty pages missing: "
              "they cross on demand and in the background, as QEMU's postcopy-ram (a failure then loses the guest)",
              show=lambda on: "on" if on else "off"),
    RunOption("postcopy_after", "migration", "migration", "postcopy_after_passes", readers.whole_number, "1",
              "switch to post-copy after this many pre-copy passes, pass 0 included (implies --postcopy)",
              metavar="N", default_text="once pre-copy cannot converge"),
    RunOption("postcopy_preempt", "migration", "migration", "postcopy_preempt", readers.flag, "true",
              "post-copy's requested pages cross on a data channel of their own, not behind the push, as QEMU's "
              "postcopy-preempt (implies --postcopy)", show=lambda on: "on" if on else "off"),
    RunOption("postcopy_recover_window", "migration", "migration", "postcopy_recover_s", units.parse_duration, "2min",
              "in post-copy, how long both ends wait for a broken link to come back (the source connects anew, as "
              "QEMU's postcopy-recover) before the guest is lost; 0: lost at once", metavar="DURATION",
              show=_shown_duration),
    RunOption("verify", "migration", "migration", "verify", readers.text, "full",
              "memory check: incremental = running digests compared in the blackout, the paused source re-hashed "
              "after resume; full = all memory hashed inside the blackout", choices=VERIFY_MODES),
)}
GROUPS = ("guest", "disk", "workload", "migration")


def keys_of(group: str) -> list[str]:
    """The keys of a help group, in the table's order."""
    return [key for key, option in OPTIONS.items() if option.group == group]


# the command line ----------------------------------------------------------------------------------
def add_options(group, keys: Iterable[str], *, defaults: bool = True) -> None:
    """Add the options `keys` to an argparse parser or group; an option not given is absent from the result.

    defaults: say each default in the help (not where the option changes something already set)."""
    for key in keys:
        option = OPTIONS[key]
        help_text = f"{option.help} (default {option.default_shown()})" if defaults else option.help
        if option.is_flag:
            group.add_argument(option.flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(option.flag, type=readers.argument_type(option.flag, option.example, option.value),
                               choices=option.choices, default=argparse.SUPPRESS, metavar=option.metavar,
                               help=help_text)


def add_axes(group) -> None:
    """Every run option as a sweep axis: the flag takes a comma-separated list."""
    for option in OPTIONS.values():
        group.add_argument(option.flag, type=readers.axis(option.flag, option.example, option.value, option.choices),
                           default=argparse.SUPPRESS, metavar="LIST", help=f"{option.help} (example: {option.example})")


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The run options a parsed command line gave, by key."""
    return {key: value for key, value in vars(args).items() if key in OPTIONS}


# values -> Scenario ----------------------------------------------------------------------------------
def scenario_from(values: dict[str, Any], name: Callable[[RunOption], str] = lambda option: option.flag) -> Scenario:
    """The Scenario the `values` (key -> what `RunOption.value` gives) describe, the rest defaulted.

    The seed seeds the guest's content and its writers; a dirty rate given as bytes/s is divided
    by the page size, a cap given as a share by the link's speed; the message size follows the
    page size unless batch_pages is given.
    ValueError names the options (by `name`) a refused part was built from."""
    changes: dict[str, dict[str, Any]] = {part: {} for part in _PARTS}
    for key, value in values.items():
        option = OPTIONS[key]
        try:
            changes[option.part][option.field] = value if option.resolve is None else option.resolve(value, values)
        except ValueError as error:
            raise ValueError(f"{name(option)}: {error}") from None
    page_size = changes["guest"].get("page_size", _DEFAULTS.guest.page_size)
    if "seed" in values:
        changes["workload"]["seed"] = changes["disk"]["seed"] = values["seed"]
    if changes["disk"] and "disk" not in values:
        without = [name(option) for key, option in OPTIONS.items() if key in values and option.part == "disk"]
        if without:
            raise ValueError(f"{'/'.join(without)}: the guest has no disk; give it one with {name(OPTIONS['disk'])}")
    changes["migration"].setdefault("batch_pages", default_batch_pages(page_size))

    def built(part, **more):
        try:
            return dataclasses.replace(_PARTS[part][1], **changes[part], **more)
        except ValueError as error:
            names = [name(option) for key, option in OPTIONS.items() if key in values and option.part == part]
            raise ValueError(f"{'/'.join(names) or part}: {error}") from None

    guest, workload, policy = built("guest"), built("workload"), built("policy")
    migration = built("migration", policy=policy)
    disk = built("disk") if "disk" in values else None
    if migration.storage == "mirror" and disk is None:
        raise ValueError(f"{name(OPTIONS['storage'])} mirror copies the guest's disk, and it has none: give it one "
                         f"with {name(OPTIONS['disk'])} SIZE")
    try:
        return Scenario(guest, workload, migration, built("config"), disk)
    except ValueError as error:
        raise ValueError(f"{name(OPTIONS['write_size'])}/{name(OPTIONS['page_size'])}: {error}") from None
