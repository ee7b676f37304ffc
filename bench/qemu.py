"""This emulator next to a real hypervisor's migration on this machine: QEMU, same guest, same host.

For each case, guest size and repeat, it migrates an idle guest over TCP loopback twice
in a row: with QEMU (`qemu-system-x86_64`), then with precopy
(`emulator.running.children.migrate`, both ends on this machine), and prints, per variant, the
median (min-max) guest GB/s, CPU seconds per GiB on each side and the downtime, and the
precopy/QEMU ratio of each repeat's pair (median over repeats). A run without a figure
(failed, or missing a total) shows n/a, with a line under its row saying why, and is left
out of the medians and of its repeat's ratio.

QEMU: a RAM-only guest, no disk and no OS, never started (`-S`), on TCG. The source's
RAM is a file (in /dev/shm when it has room) prefilled with the bytes precopy's guest
gets for the same fill profile and seed (`GuestMemory(GuestSpec(size, fill, seed))`);
the destination's RAM is preallocated (`prealloc=on`) and waits with `-incoming defer`.
Both sides get the same capabilities and parameters over QMP: max-bandwidth lifted
(QEMU's default caps a migration at 128 MiB/s), downtime-limit left at its default,
multifd and its channels and compression as the variant says. The final `query-migrate`
of each side is kept.

Cases (the table CASES; ratios are to the QEMU variant named last):
    raw   random guest: QEMU one stream and multifd 2 channels; precopy raw, 1 and 2
          channels (ratio to QEMU multifd 2);
    lz4   half guest: QEMU multifd 2 channels with zstd; precopy lz4, 1 channel;
    zero  zero guest: QEMU one stream; precopy raw, 1 channel.
Every precopy variant runs once per mode given with `--verify` (default both:
incremental, precopy's default, and full).

Figures, the same for both:
    guest GB/s      guest RAM size / (total-time - setup-time), GB = 10^9 B; precopy's
                    total-time includes, with verify incremental, the source's re-hash
                    of its paused memory after the destination resumed;
    CPU s/GiB       utime + stime from /proc/PID/stat of each side's process, from the
                    start of the migration to its end, per GiB of guest. QEMU: from just
                    before `migrate` until each side's query-migrate says completed.
                    precopy: from the start of pre-copy (after setup, where its
                    destination makes its memory resident, as QEMU's prealloc does at
                    start-up) until the guest is announced (destination: the receiver
                    process `migrate` spawns) or `migrate` returns (source: this
                    process, which also builds the report). The counters tick in
                    1/SC_CLK_TCK s, usually 10 ms.
    downtime ms     as each reports it (QEMU in whole milliseconds). With the default
                    downtime-limit (300 ms) QEMU switches over once what is left fits in
                    it at the measured bandwidth, so the last few hundred MB of an idle
                    guest cross in its blackout; precopy's idle guest leaves nothing for it.

In the kept query-migrate results of QEMU 7.2: with the guest never started, every byte
of the main stream is counted in `ram.downtime-bytes` (QEMU asks whether the VM runs);
multifd pages are counted in `ram.multifd-bytes` and `ram.transferred` before
compression, so for zstd these are not the bytes on the wire.

Runs interleave A B A B: for each repeat, for each case, the QEMU variants then the
precopy variants, one migration at a time; `--quick` is one repeat of a 1 GiB guest.
Without qemu-system-x86_64 on PATH it says so and exits 0; exit 1 on an error, 2 on bad
arguments.

    python bench/qemu.py [--quick] [--sizes 1GiB,4GiB] [--repeats N] [--cases raw,lz4,zero]
                         [--verify incremental,full] [--json FILE]
"""

import argparse
import gc
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

from emulator.analysis.report import host_info
from emulator.core.units import format_bytes
from emulator.running.children import migrate
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import VERIFY_MODES, MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec

from arguments import cell, choice_list, progress, repeats, size_list, started_at  # bench/, beside this script

QEMU = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"  # Debian's
GIB = 1 << 30
MIB = 1 << 20
SEED = 0  # the guests' content seed, the same for QEMU's file and precopy's guest
DEFAULT_SIZES = (GIB,)
DEFAULT_REPEATS = 3
MAX_BANDWIDTH_BYTES_PER_S = 1 << 40  # no limit in practice
WRITE_CHUNK_BYTES = 64 * MIB
POLL_INTERVAL_S = 0.020
QMP_TIMEOUT_S = 10.0  # the longest wait for one QMP reply
START_TIMEOUT_S = 60.0  # until QMP answers; the destination preallocates its RAM first
DESTINATION_DONE_TIMEOUT_S = 30.0  # after the source completed
STDERR_TAIL_BYTES = 2000
RECEIVER_NAME = "precopy-receiver"  # the name emulator.running.migration gives its receiver process
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

# QEMU variant -> (multifd channels, 0 = one migration stream; multifd compression, None = none)
QEMU_VARIANTS = {
    "qemu-1stream": (0, None),
    "qemu-multifd-2ch": (2, None),
    "qemu-multifd-2ch-zstd": (2, "zstd"),
}

# case -> (guest fill, QEMU variants, precopy variants as (codec, channels), the QEMU variant of the ratios)
CASES = {
    "raw": ("random", ("qemu-1stream", "qemu-multifd-2ch"), (("raw", 1), ("raw", 2)), "qemu-multifd-2ch"),
    "lz4": ("half", ("qemu-multifd-2ch-zstd",), (("lz4", 1),), "qemu-multifd-2ch-zstd"),
    "zero": ("zero", ("qemu-1stream",), (("raw", 1),), "qemu-1stream"),
}



def median(values):
    """The median of the values that are not None; None if none is."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def migration_timeout_s(size_bytes):
    """The longest one migration may take: generous, as TCG and a busy machine are slow."""
    return 60.0 + 30.0 * size_bytes / GIB


def precopy_variants(case, verify_modes):
    """{name: (codec, channels, verify)} of a case's precopy runs."""
    return {f"precopy-{codec}-{channels}ch-{verify}": (codec, channels, verify)
            for codec, channels in CASES[case][2] for verify in verify_modes}


# the host -----------------------------------------------------------------------------


def cpu_model():
    """(the first 'model name' in /proc/cpuinfo, whether its flags have avx512f); None if unknown."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = value.split()
    except OSError:
        pass
    return model, None if flags is None else "avx512f" in flags


def qemu_version():
    """The first line of `qemu-system-x86_64 --version`."""
    result = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.splitlines()[0] if result.stdout else "unknown version"


def cpu_seconds(pid):
    """utime + stime of process `pid` (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # fields 14 and 15 of proc(5)


# QEMU ---------------------------------------------------------------------------------


class QmpError(Exception):
    """QEMU answered a QMP command with an error, or not as QMP does."""


class Qmp:
    """A QMP client on a connected unix socket: `execute` returns a command's result, skipping events."""

    def __init__(self, sock, name):
        self.sock, self.name = sock, name
        self.reader = sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"{name}: expected the QMP greeting, got {greeting}")
        self.execute("qmp_capabilities")

    def _read(self):
        try:
            line = self.reader.readline()
        except TimeoutError:
            raise TimeoutError(f"{self.name}: no QMP reply within {QMP_TIMEOUT_S:g} s") from None
        if not line:
            raise ConnectionError(f"{self.name} closed its QMP connection")
        return json.loads(line)

    def execute(self, command, arguments=None):
        """Run `command` with `arguments` (a dict, QMP's hyphenated names); its "return" value."""
        message = {"execute": command} | ({"arguments": arguments} if arguments else {})
        self.sock.sendall(json.dumps(message).encode() + b"\r\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                given = f" {json.dumps(arguments)}" if arguments else ""
                raise QmpError(f"{self.name}: {command}{given} failed: {reply['error'].get('desc')}")
            if "return" in reply:
                return reply["return"]
            raise QmpError(f"{self.name}: unexpected reply to {command}: {reply}")

    def close(self):
        self.reader.close()
        self.sock.close()


class Qemu:
    """One QEMU process, its stderr kept in a file under `workdir`, and once connected its `qmp`."""

    def __init__(self, role, options, workdir):
        self.role = role
        self.qmp_path = os.path.join(workdir, f"{role}.qmp")
        self.stderr_path = os.path.join(workdir, f"{role}.stderr")
        self.qmp = None
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [QEMU, *options, "-qmp", f"unix:{self.qmp_path},server=on,wait=off"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)

    @property
    def pid(self):
        return self.process.pid

    def stderr_tail(self):
        """The end of QEMU's stderr, or a note that it wrote none."""
        with open(self.stderr_path, "rb") as stderr:
            stderr.seek(max(0, os.path.getsize(self.stderr_path) - STDERR_TAIL_BYTES))
            text = stderr.read().decode(errors="replace").strip()
        return text or "(nothing on stderr)"

    def exited(self):
        """None while running, else a sentence with the exit status and stderr tail."""
        status = self.process.poll()
        return None if status is None else f"QEMU {self.role} exited with status {status}: {self.stderr_tail()}"

    def connect(self, timeout_s=START_TIMEOUT_S):
        """Connect to QMP once QEMU has opened its socket, negotiating capabilities."""
        deadline = time.monotonic() + timeout_s
        while True:
            if (exited := self.exited()) is not None:
                raise RuntimeError(f"QEMU failed to start: {exited}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(QMP_TIMEOUT_S)
            try:
                sock.connect(self.qmp_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"QEMU {self.role} did not open its QMP socket within {timeout_s:g} s; "
                                   f"stderr: {self.stderr_tail()}")
            time.sleep(0.05)
        try:
            self.qmp = Qmp(sock, f"QEMU {self.role}")
        except BaseException:
            sock.close()
            raise

    def kill(self):
        """End the process (SIGKILL: its state is of no use) and wait for it; safe to call twice."""
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def guest_ram_file(size_bytes, fill, workdir):
    """A file holding exactly precopy's guest content for `fill` and SEED: in /dev/shm if it has
    room, else in `workdir`. Returns its path; the caller removes it."""
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    directory = "/dev/shm" if shm and shm.f_bavail * shm.f_frsize >= size_bytes else workdir
    handle, path = tempfile.mkstemp(dir=directory, prefix="precopy-qemu-", suffix=".ram")
    try:
        guest = GuestMemory(GuestSpec(size_bytes, fill=fill, seed=SEED))
        with os.fdopen(handle, "wb") as out:
            view = memoryview(guest.data)
            for offset in range(0, size_bytes, WRITE_CHUNK_BYTES):
                out.write(view[offset : offset + WRITE_CHUNK_BYTES])
        del view, guest
    except BaseException:
        os.unlink(path)
        raise
    return path


def _configure(qmp, channels, compression):
    """The variant's capabilities and parameters; the same call on both sides."""
    qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": channels > 0}]})
    parameters = {"max-bandwidth": MAX_BANDWIDTH_BYTES_PER_S}
    if channels:
        parameters |= {"multifd-channels": channels, "multifd-compression": compression or "none"}
    qmp.execute("migrate-set-parameters", parameters)


def _wait_for_migration(qmp, timeout_s):
    """Poll query-migrate until completed or failed; its last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = qmp.execute("query-migrate")
        if info.get("status") in ("completed", "failed"):
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"{qmp.name}: migration still {info.get('status')!r} after {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)


def _listening_port(qmp):
    """The TCP port the destination listens on (it was asked for port 0: any free one)."""
    addresses = qmp.execute("query-migrate").get("socket-address", [])
    ports = [int(address["port"]) for address in addresses if address.get("type") == "inet"]
    if not ports:
        raise QmpError(f"{qmp.name}: query-migrate shows no listening TCP address: {addresses}")
    return ports[0]


def run_qemu(variant, size_bytes, ram_path, workdir):
    """Migrate the guest in `ram_path` between two QEMUs as `variant` says; a record of the run."""
    channels, compression = QEMU_VARIANTS[variant]
    machine = ["-machine", "pc,accel=tcg,memory-backend=ram0", "-m", f"{size_bytes // MIB}M",
               "-nodefaults", "-display", "none", "-S"]
    record = {"variant": variant}
    sides = []
    try:
        sides.append(Qemu("source", machine + [
            "-object", f"memory-backend-file,id=ram0,size={size_bytes},mem-path={ram_path},share=on"], workdir))
        sides.append(Qemu("destination", machine + [
            "-object", f"memory-backend-ram,id=ram0,size={size_bytes},prealloc=on", "-incoming", "defer"], workdir))
        source, destination = sides
        for side in sides:
            side.connect()
            _configure(side.qmp, channels, compression)
        destination.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        uri = f"tcp:127.0.0.1:{_listening_port(destination.qmp)}"
        source_cpu, destination_cpu = cpu_seconds(source.pid), cpu_seconds(destination.pid)
        source.qmp.execute("migrate", {"uri": uri})
        final = _wait_for_migration(source.qmp, migration_timeout_s(size_bytes))
        source_cpu = cpu_seconds(source.pid) - source_cpu
        record["query_migrate"] = final
        if final["status"] != "completed":
            return record | {"status": "failed", "reason": final.get("error-desc", "QEMU gave no reason")}
        incoming = _wait_for_migration(destination.qmp, DESTINATION_DONE_TIMEOUT_S)
        destination_cpu = cpu_seconds(destination.pid) - destination_cpu
        record["destination_query_migrate"] = incoming
        if incoming["status"] != "completed":
            return record | {"status": "failed",
                             "reason": f"destination: {incoming.get('error-desc', 'QEMU gave no reason')}"}
    except Exception as error:  # noqa: BLE001 - one failed run is recorded, the benchmark goes on
        reason = f"{type(error).__name__}: {error}"
        for side in sides:
            if (exited := side.exited()) is not None and exited not in reason:
                reason += f"; {exited}"
        return record | {"status": "error", "reason": reason}
    finally:
        for side in sides:
            side.kill()
    return record | _figures(size_bytes, final.get("total-time"), final.get("setup-time"), final.get("downtime"),
                             source_cpu, destination_cpu)


def _figures(size_bytes, total_ms, setup_ms, downtime_ms, source_cpu_s, destination_cpu_s):
    """The figures both kinds of run report, from their totals. A figure whose totals are missing
    (None) is None, and so is the GB/s of a run not longer than its setup; the reason says why."""
    totals = {"total-time": total_ms, "setup-time": setup_ms, "downtime": downtime_ms,
              "source CPU": source_cpu_s, "destination CPU": destination_cpu_s}
    missing = [name for name, value in totals.items() if value is None]
    transfer_s = None if total_ms is None or setup_ms is None else (total_ms - setup_ms) / 1e3
    reasons = [f"missing {', '.join(missing)}"] if missing else []
    if transfer_s is not None and transfer_s <= 0:
        reasons.append(f"total-time {total_ms:g} ms is not after setup-time {setup_ms:g} ms")
    return {"status": "completed", "reason": "; ".join(reasons) or None, "total_ms": total_ms, "setup_ms": setup_ms,
            "downtime_ms": downtime_ms,
            "guest_gb_s": size_bytes / transfer_s / 1e9 if transfer_s is not None and transfer_s > 0 else None,
            "source_cpu_s": source_cpu_s, "destination_cpu_s": destination_cpu_s,
            "source_cpu_s_per_gib": None if source_cpu_s is None else source_cpu_s * GIB / size_bytes,
            "destination_cpu_s_per_gib": None if destination_cpu_s is None else destination_cpu_s * GIB / size_bytes}


# precopy ------------------------------------------------------------------------------


class _CpuMarks:
    """Progress hooks for `migrate`: both processes' CPU seconds when pre-copy starts, and the
    receiver's when the guest is announced (the receiver exits before `migrate` returns).

    A mark that cannot be read stays None (the run is then recorded as an error): an
    exception here would end the migration itself.
    """

    def __init__(self):
        self.receiver_pid = self.source_start = self.destination_start = self.destination_end = None

    def phase(self, name, elapsed_s):
        try:
            if name == "precopy":
                receivers = [child.pid for child in multiprocessing.active_children() if child.name == RECEIVER_NAME]
                if len(receivers) == 1:
                    self.receiver_pid = receivers[0]
                    self.source_start = cpu_seconds(os.getpid())
                    self.destination_start = cpu_seconds(self.receiver_pid)
            elif name == "announce" and self.receiver_pid is not None:
                self.destination_end = cpu_seconds(self.receiver_pid)  # until reaped, an exited child's /proc stays
        except OSError:
            pass

    def pass_done(self, record, page_size, total_pages):
        pass

    def message(self, text):
        pass


def run_precopy(variant, codec, channels, verify, fill, size_bytes):
    """Migrate an idle `fill` guest with precopy in this process (and its receiver); a record of the run."""
    scenario = Scenario(GuestSpec(size_bytes, fill=fill, seed=SEED),
                        WorkloadSpec(rate_pages_per_s=0.0, pattern="uniform"),
                        MigrationOptions(codec=codec, channels=channels, verify=verify))
    record = {"variant": variant}
    marks = _CpuMarks()
    gc.collect()
    try:
        report = migrate(scenario, progress=marks)
    except Exception as error:  # noqa: BLE001 - one failed run is recorded, the benchmark goes on
        return record | {"status": "error", "reason": f"{type(error).__name__}: {error}"}
    source_end = cpu_seconds(os.getpid())
    if report.status == "cancelled":  # the source caught a Ctrl-C: stop the benchmark, not only this run
        raise KeyboardInterrupt
    record |= {"summary": report.summary, "phases_ms": {p.phase: (p.end_s - p.start_s) * 1e3 for p in report.phases}}
    if report.status != "completed":
        return record | {"status": report.status, "reason": report.reason}
    if marks.source_start is None or marks.destination_start is None or marks.destination_end is None:
        return record | {"status": "error", "reason": f"no CPU marks: no single {RECEIVER_NAME!r} process "
                                                      "seen at pre-copy, or its /proc gone by the announce"}
    summary = report.summary
    return record | _figures(size_bytes, summary["total-time"], summary["setup-time"], summary["downtime"],
                             source_end - marks.source_start, marks.destination_end - marks.destination_start)


# the table ----------------------------------------------------------------------------


# the figures of a row, each the median over the runs that have it, with its column's name
ROW_FIGURES = {"guest_gb_s": "GB/s", "source_cpu_s_per_gib": "src s/GiB", "destination_cpu_s_per_gib": "dst s/GiB",
               "downtime_ms": "down ms"}


def _figure(record, name):
    """A run's figure `name`; None when the run failed or has no such figure."""
    return record.get(name) if record["status"] == "completed" else None


def _rates(runs):
    """{repeat: guest GB/s} of the runs that have a GB/s."""
    return {r["repeat"]: r["guest_gb_s"] for r in runs if _figure(r, "guest_gb_s") is not None}


def _note(record):
    """The line under the table on a run that failed or lacks a figure of the table; None for another run."""
    if record["status"] != "completed":
        return f"run {record['repeat'] + 1}, {record['status']}: {record['reason']}"
    missing = [label for name, label in ROW_FIGURES.items() if _figure(record, name) is None]
    if not missing:
        return None
    because = f": {record['reason']}" if record["reason"] else ""
    return f"run {record['repeat'] + 1}, no {', '.join(missing)}{because}"


def summarize(records, size_bytes, case, variants):
    """One row per variant of `case` at `size_bytes`: medians, the GB/s range, and the ratio to the
    case's QEMU reference taken within each repeat where both have a GB/s (median over repeats)."""
    reference = CASES[case][3]
    mine = [r for r in records if r["size_bytes"] == size_bytes and r["case"] == case]
    reference_rates = _rates(r for r in mine if r["variant"] == reference)
    rows = []
    for variant in variants:
        runs = [r for r in mine if r["variant"] == variant]
        rates = _rates(runs)
        ratios = [rate / reference_rates[repeat] for repeat, rate in rates.items() if repeat in reference_rates]
        row = {"case": case, "size_bytes": size_bytes, "variant": variant, "runs": len(runs),
               "completed": sum(r["status"] == "completed" for r in runs),
               "notes": [note for r in runs if (note := _note(r)) is not None],
               "guest_gb_s_min": min(rates.values(), default=None), "guest_gb_s_max": max(rates.values(), default=None),
               "reference": reference, "vs_reference": None if variant == reference else median(ratios)}
        for name in ROW_FIGURES:
            row[name] = median([_figure(r, name) for r in runs])
        rows.append(row)
    return rows



def format_report(host, rows):
    model, avx512f = host["cpu_model"], host["avx512f"]
    references = {row["case"]: row["reference"] for row in rows}
    lines = [f"CPU: {model or 'unknown'}; avx512f: {'unknown' if avx512f is None else 'yes' if avx512f else 'no'}",
             f"QEMU: {host['qemu_version']}; TCG, guest never started (-S), RAM only",
             "vs QEMU: GB/s / the GB/s of the case's reference in the same repeat, median over repeats; reference "
             + ", ".join(f"{case} {reference}" for case, reference in references.items()),
             ""]
    header = (f"{'case':<5} {'size':>9} {'variant':<28} {'GB/s median (min-max)':<22} {'vs QEMU':>7} "
              f"{'src s/GiB':>9} {'dst s/GiB':>9} {'down ms':>7} {'runs':>5}")
    lines += [header, "-" * len(header)]
    for row in rows:
        rate = (f"{cell(row['guest_gb_s'])} ({cell(row['guest_gb_s_min'])}-{cell(row['guest_gb_s_max'])})"
                if row["guest_gb_s"] is not None else "n/a")
        versus = "ref" if row["variant"] == row["reference"] else cell(row["vs_reference"])
        lines.append(
            f"{row['case']:<5} {format_bytes(row['size_bytes']):>9} {row['variant']:<28} {rate:<22} {versus:>7} "
            f"{cell(row['source_cpu_s_per_gib']):>9} {cell(row['destination_cpu_s_per_gib']):>9} "
            f"{cell(row['downtime_ms'], '.1f'):>7} {str(row['completed']) + '/' + str(row['runs']):>5}")
        for note in row["notes"]:
            lines.append(f"      {note}")
    return "\n".join(lines)


# command line -------------------------------------------------------------------------








def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="qemu.py",
        description="precopy next to QEMU's own migration on this machine: idle RAM-only guests with the same "
                    "content migrated over TCP loopback by QEMU (TCG, guest never started) and by precopy, "
                    "interleaved, as a table of median guest GB/s, CPU s/GiB per side, downtime and the "
                    "precopy/QEMU ratio per repeat. Progress goes to stderr.",
    )
    parser.add_argument("--sizes", type=size_list(MIB), default=None, help="guest sizes, comma-separated (default 1GiB)")
    parser.add_argument("--repeats", type=repeats, default=None,
                        help=f"runs of every variant per case and size (default {DEFAULT_REPEATS})")
    parser.add_argument("--cases", type=choice_list(CASES, "case(s)"), default=list(CASES),
                        help=f"cases, comma-separated (default all: {','.join(CASES)}); "
                             + "; ".join(f"{name} = {fill} guest, {', '.join(qemu)} vs precopy "
                                         + ", ".join(f"{codec} x{channels}" for codec, channels in ours)
                                         for name, (fill, qemu, ours, _) in CASES.items()))
    parser.add_argument("--verify", type=choice_list(VERIFY_MODES, "verify mode(s)"), default=list(VERIFY_MODES),
                        help="precopy's memory check(s), comma-separated, each a variant of its own (default "
                             "incremental,full; incremental is precopy's default, full moves all hashing into "
                             "the blackout)")
    parser.add_argument("--json", metavar="FILE", help="write every measurement and the medians to FILE")
    parser.add_argument("--quick", action="store_true", help="1 GiB, 1 run of every variant")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")
    args = parser.parse_args(argv)
    if args.quick and (args.sizes or args.repeats):
        parser.error("--quick sets the sizes and repeats: give it without --sizes and --repeats")
    if args.quick:
        args.sizes, args.repeats = [GIB], 1
    args.sizes = args.sizes or list(DEFAULT_SIZES)
    args.repeats = args.repeats or DEFAULT_REPEATS
    return args


def _outcome(record):
    if record["status"] != "completed":
        return f"{record['status']}: {record['reason']}"
    return (f"{cell(record['guest_gb_s'])} GB/s, CPU s/GiB source {cell(record['source_cpu_s_per_gib'])} "
            f"destination {cell(record['destination_cpu_s_per_gib'])}, downtime {cell(record['downtime_ms'], '.1f')} ms"
            + (f"; {record['reason']}" if record["reason"] else ""))


def run(args):
    """Every migration, interleaved; (all records, table rows)."""
    records = []
    workdir = tempfile.mkdtemp(prefix="precopy-qemu-")
    try:
        for size in args.sizes:
            for repeat in range(args.repeats):
                for case in args.cases:
                    fill, qemu_variants, _, _ = CASES[case]
                    where = f"{case}, {format_bytes(size)}, run {repeat + 1}/{args.repeats}"
                    ram_path = guest_ram_file(size, fill, workdir)
                    try:
                        for variant in qemu_variants:
                            record = run_qemu(variant, size, ram_path, workdir)
                            records.append(record | {"case": case, "size_bytes": size, "repeat": repeat})
                            progress(f"{variant}, {where}: {_outcome(record)}")
                    finally:
                        os.unlink(ram_path)
                    for variant, (codec, channels, verify) in precopy_variants(case, args.verify).items():
                        record = run_precopy(variant, codec, channels, verify, fill, size)
                        records.append(record | {"case": case, "size_bytes": size, "repeat": repeat})
                        progress(f"{variant}, {where}: {_outcome(record)}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [row for size in args.sizes for case in args.cases
            for row in summarize(records, size, case, [*CASES[case][1], *precopy_variants(case, args.verify)])]
    return records, rows


def main(argv=None):
    args = parse_args(argv)
    if shutil.which(QEMU) is None:
        print(f"qemu.py: {QEMU} is not on PATH: nothing to compare with (Debian's package is {QEMU_PACKAGE})")
        return 0
    try:
        model, avx512f = cpu_model()
        host = {"cpu_model": model, "avx512f": avx512f, "qemu_version": qemu_version()}
        records, rows = run(args)
    except KeyboardInterrupt:
        print("qemu.py: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI reports any failure in one line
        if args.debug:
            traceback.print_exc()
        print(f"qemu.py: error: {error}", file=sys.stderr)
        return 1
    wall_s = time.monotonic() - started_at()
    print(format_report(host, rows))
    print(f"\nwall time {wall_s:.0f} s")
    if args.json:
        document = {"host": host_info() | host, "sizes": args.sizes, "cases": args.cases, "verify": args.verify,
                    "repeats": args.repeats, "wall_s": wall_s, "measurements": records, "table": rows}
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
