"""What one migration runs: the guest, its workload, and the migration's options.

A Scenario is plain data: it travels to the destination in HELLO (so the
destination hosts the same guest and runs the same workload after resume)
and is written whole into the report.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from emulator.core import fields
from emulator.dataplane.codecs import CODEC_NAMES
from emulator.source.policy import DowntimeRamp, PolicyConfig
from emulator.vm.compat import MAX_NAME, CpuModel, this_cpu
from emulator.vm.disk import STORAGE_MODES, DiskSpec
from emulator.vm.guest import GuestSpec
from emulator.vm.workload import WorkloadSpec

DEFAULT_MEMORY_BYTES = 1 << 30
VERIFY_MODES = ("incremental", "full")
DEFAULT_MESSAGE_BYTES = 4 << 20  # per data message: the per-message cost is paid 256 times a GiB


def default_batch_pages(page_size):
    """Pages per data message by default: DEFAULT_MESSAGE_BYTES worth, at least one page."""
    return max(1, DEFAULT_MESSAGE_BYTES // page_size)


DEFAULT_BATCH_PAGES = default_batch_pages(4096)  # 1024, for the default page size
MIN_TIMEOUT_S = 0.001  # ZeroMQ's send timeout and heartbeats count whole milliseconds (emulator.dataplane.transport)
MAX_RECOVER_S = 86400.0  # a day: a longer wait for a broken post-copy link is no window but a guess
DEFAULT_DIRTY_RATE = 50_000.0  # page writes/s: about 200 MB/s of 4 KiB pages, into a 10% hot set


CONFIG_VERSION = 1  # the guest configuration this precopy writes; a destination refuses a newer one
MAX_SWITCHES = 64


def _cpu_rule(value):
    if value is not None and not isinstance(value, CpuModel):
        raise ValueError(f"must be a CpuModel or none, got {value!r}")
    return value


def _switches_rule(value):
    if not isinstance(value, tuple) or len(value) > MAX_SWITCHES or not all(
            isinstance(name, str) and 0 < len(name) <= MAX_NAME and "," not in name for name in value):
        raise ValueError(f"must be at most {MAX_SWITCHES} switch names of 1 to {MAX_NAME} characters, "
                         f"without commas, got {value!r}")
    return value


@dataclass(frozen=True)
class GuestConfig:
    """What a destination must offer a guest besides memory, as Hyper-V checks before it migrates.

    version: the guest's configuration version (a destination that supports only older
    ones refuses it); cpu: the processor it requires (emulator.vm.compat; None = any; by
    default this host's); switches: the virtual switches its network adapters connect to.
    """

    version: int = CONFIG_VERSION
    cpu: CpuModel | None = field(default_factory=this_cpu)
    switches: tuple[str, ...] = ()

    RULES: ClassVar[dict] = {"version": fields.whole(1, 65535), "cpu": _cpu_rule, "switches": _switches_rule}

    def __post_init__(self):
        fields.check(self, self.RULES)

    @classmethod
    def from_dict(cls, data):
        """From `asdict` output (lists for tuples, a dict for the CPU; no CPU given requires none).

        TypeError for anything but an object of known keys (Scenario.from_dict says it is malformed)."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be an object, got {data!r:.80}")
        values = {"cpu": None, **data}
        if values["cpu"] is not None:
            if not isinstance(values["cpu"], dict):
                raise TypeError(f"config.cpu must be an object of vendor and features, got {values['cpu']!r:.80}")
            values["cpu"] = CpuModel(**values["cpu"])
        if isinstance(values.get("switches"), list):
            values["switches"] = tuple(values["switches"])
        return cls(**values)


@dataclass(frozen=True)
class MigrationOptions:
    """How the migration runs.

    codec: "raw" or "lz4"; channels: data connections (multifd analogue);
    batch_pages: pages per data message; max_bandwidth_bytes_per_s: token
    bucket rate (None = unlimited); link_bytes_per_s: the link's speed, where
    the cap was given as a share of it (None = not known); device_state_bytes:
    size of the vCPU and device state blob sent in the blackout; timeout_s:
    longest wait for the peer on any receive (at least MIN_TIMEOUT_S); blackout_warning_s: a longer
    blackout is a warning event (None: twice the downtime limit; never past
    63 s, see emulator.analysis.events); policy: when to switch over (see emulator.source.policy).
    storage: "shared" (both hosts see the guest's disk: its handover is a token) or
    "mirror" (shared-nothing: the disk is copied alongside memory, its dirty blocks in
    later passes, and the switch-over waits until both fit the downtime budget).
    auto_converge: throttle the writers when a pass dirties more than half of what
    it sent (QEMU's auto-converge: 20% first, +10% per pass, at most 99%).
    dirty_limit_bytes_per_s: instead, hold each vCPU to this many bytes of page writes
    per second from the first such pass on (QEMU 8.1's dirty-limit, vcpu-dirty-limit);
    None = no limit. xbzrle: from pass 1 on, send a page whose last copy is in a cache
    of xbzrle_cache_bytes as the runs where it changed, when that is smaller (QEMU's
    XBZRLE, 64 MiB cache); other pages go through the codec.
    postcopy: when pre-copy cannot converge (stalled, max-passes, max-time), resume the
    guest on the destination with its dirty pages missing, which then cross on demand
    and in the background (QEMU's postcopy-ram; emulator.vm.postcopy);
    postcopy_after_passes: switch so after this many passes, pass 0 included, even
    before pre-copy gives up (and with it, post-copy is on). postcopy_recover_s: in
    post-copy, how long both ends wait for a broken link to come back (the source
    connects anew, QEMU's postcopy-recover) before the guest is lost; 0: lost at once.
    postcopy_preempt: the pages the destination's vCPUs ask for cross on a data channel of
    their own, the last, instead of behind the push (QEMU's postcopy-preempt); it makes
    postcopy true.
    verify: "incremental" (both sides keep a running digest as pages cross; the
    blackout compares two values, and the source re-hashes its paused memory
    after the destination resumed) or "full" (both sides hash all memory inside
    the blackout: the destination never resumes unverified, at a cost of tens
    of milliseconds of downtime per GiB).
    """

    codec: str = "lz4"
    channels: int = 1
    batch_pages: int = DEFAULT_BATCH_PAGES
    max_bandwidth_bytes_per_s: float | None = None
    link_bytes_per_s: float | None = None
    device_state_bytes: int = 256 << 10
    timeout_s: float = 10.0
    blackout_warning_s: float | None = None
    verify: str = "incremental"
    auto_converge: bool = False
    dirty_limit_bytes_per_s: float | None = None
    xbzrle: bool = False
    xbzrle_cache_bytes: int = 64 << 20
    storage: str = "shared"
    postcopy: bool = False
    postcopy_after_passes: int | None = None
    postcopy_recover_s: float = 30.0
    postcopy_preempt: bool = False
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    RULES: ClassVar[dict] = {
        "codec": fields.one_of(CODEC_NAMES),
        "channels": fields.whole(1, 64),
        "batch_pages": fields.whole(1, 65536),
        "max_bandwidth_bytes_per_s": fields.optional(fields.real(0, above=True), "unlimited"),
        "link_bytes_per_s": fields.optional(fields.real(0, above=True, below=True), "not known"),
        "device_state_bytes": fields.size(0, 64 << 20),
        "timeout_s": fields.real(MIN_TIMEOUT_S, below=True),
        "blackout_warning_s": fields.optional(fields.real(0, above=True, below=True), "twice the downtime limit"),
        "verify": fields.one_of(VERIFY_MODES),
        "auto_converge": fields.flag,
        "dirty_limit_bytes_per_s": fields.optional(fields.real(0, above=True, below=True), "no limit"),
        "xbzrle": fields.flag,
        "xbzrle_cache_bytes": fields.size(4096, 1 << 40),
        "storage": fields.one_of(STORAGE_MODES),
        "postcopy": fields.flag,
        "postcopy_after_passes": fields.optional(fields.whole(1), "once pre-copy cannot converge"),
        "postcopy_recover_s": fields.real(0, MAX_RECOVER_S),
        "postcopy_preempt": fields.flag,
    }

    def __post_init__(self):
        fields.check(self, self.RULES)
        if self.auto_converge and self.dirty_limit_bytes_per_s is not None:
            raise ValueError("auto_converge and dirty_limit_bytes_per_s slow the vCPUs two ways: choose one "
                             "(QEMU refuses both too)")
        if not isinstance(self.policy, PolicyConfig):
            raise ValueError(f"policy must be a PolicyConfig, got {self.policy!r}")
        if self.postcopy_after_passes is not None or self.postcopy_preempt:
            object.__setattr__(self, "postcopy", True)  # post-copy after N passes, or with preempt, is post-copy
        if self.postcopy and self.verify != "incremental":
            raise ValueError("post-copy verifies by running digests only (the destination's vCPUs change its "
                             "memory while pages arrive): use verify incremental")
        if self.postcopy and self.storage == "mirror":
            raise ValueError("post-copy moves memory only: a mirrored disk must converge before the guest moves; "
                             "use storage shared, or pre-copy")

    @property
    def data_channels(self):
        """The data sockets of a migration: `channels`, and the preempt channel with postcopy_preempt."""
        return self.channels + self.postcopy_preempt


@dataclass(frozen=True)
class Scenario:
    """A guest, what its vCPUs do, its disk (None: none), and how it migrates."""

    guest: GuestSpec = field(default_factory=lambda: GuestSpec(DEFAULT_MEMORY_BYTES))
    workload: WorkloadSpec = field(default_factory=lambda: WorkloadSpec(rate_pages_per_s=DEFAULT_DIRTY_RATE,
                                                                        pattern="hotset"))
    migration: MigrationOptions = field(default_factory=MigrationOptions)
    config: GuestConfig = field(default_factory=GuestConfig)
    disk: DiskSpec | None = None

    def __post_init__(self):
        if self.workload.write_size > self.guest.page_size:
            raise ValueError(f"write_size must be at most the page size ({self.guest.page_size} B), "
                             f"got {self.workload.write_size!r}")
        if self.disk is not None and not isinstance(self.disk, DiskSpec):
            raise ValueError(f"disk must be a DiskSpec or none, got {self.disk!r:.80}")
        if self.migration.storage == "mirror" and self.disk is None:
            raise ValueError("storage mirror copies the guest's disk, and this guest has none: give it one "
                             "(--disk SIZE), or use --storage shared")

    @property
    def mirrored_disk(self):
        """The DiskSpec of the disk this migration copies (storage mirror), else None."""
        return self.disk if self.migration.storage == "mirror" else None

    @property
    def disk_batch_blocks(self):
        """Disk blocks per data message: as many bytes as a memory message holds, at least one block."""
        return max(1, self.migration.batch_pages * self.guest.page_size // self.disk.block_size)

    @property
    def guest_bytes(self):
        """What crosses at least once: the memory, and a mirrored disk (a downtime ramp's pace)."""
        disk = self.mirrored_disk
        return self.guest.memory_bytes + (0 if disk is None else disk.size_bytes)

    @property
    def largest_payload_bytes(self):
        """The most a data message (or the device state) may hold once decoded."""
        disk = self.mirrored_disk
        blocks = 0 if disk is None else self.disk_batch_blocks * disk.block_size
        return max(self.migration.batch_pages * self.guest.page_size, blocks, self.migration.device_state_bytes, 1)

    def to_dict(self):
        """Plain JSON-ready data (infinite rates as the string "max")."""
        data = asdict(self)
        if self.workload.unpaced:
            data["workload"]["rate_pages_per_s"] = "max"
        if self.disk is not None and math.isinf(self.disk.write_rate_bytes_per_s):
            data["disk"]["write_rate_bytes_per_s"] = "max"
        return data

    @classmethod
    def from_dict(cls, data):
        """Rebuild a Scenario from `to_dict` output; raises ValueError on bad content."""
        try:
            workload = dict(data["workload"])
            if workload.get("rate_pages_per_s") == "max":
                workload["rate_pages_per_s"] = float("inf")
            migration = dict(data["migration"])
            policy = dict(migration["policy"])
            policy["downtime_ramp"] = DowntimeRamp.from_dict(policy.get("downtime_ramp"))
            migration["policy"] = PolicyConfig(**policy)
            # a scenario written before the configuration existed required no processor
            config = GuestConfig.from_dict(data["config"]) if "config" in data else GuestConfig(cpu=None)
            disk = None if data.get("disk") is None else DiskSpec.from_dict(data["disk"])
            return cls(GuestSpec(**data["guest"]), WorkloadSpec(**workload), MigrationOptions(**migration), config,
                       disk)
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed scenario: {error}") from None
