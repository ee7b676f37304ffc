"""End-to-end migration throughput on this machine, with its ceilings, in one run.

Measures, in order:

1. the pyzmq ceiling: a spawned receiver process, TCP loopback, PUSH -> PULL, the
   migration's message layout (44-byte header, 8-byte page-number frame, a payload
   of the default batch size sent with copy=False), the migration's high-water marks,
   over 1 and 2 connections;
2. LZ4 alone on 2 threads over batches of the default size of a 256 MiB guest (`half`, `text`),
   compressing and decompressing;
3. the storage a mirrored disk goes through: a file of the disk's size mapped, written
   and synced on this machine's temporary directory (what a destination does to receive
   a disk), and read back from the page cache (what a source does to send one);
4. pass 0 of precopy migrations with no writer (`emulator.running.children.migrate`):
   guest GB/s, CPU seconds per GiB on each side, peak memory of both processes,
   setup time and downtime; the cases `disk` (a 16 MiB guest with a disk of the size,
   storage mirror) and `mem+disk` (a guest and a disk of the size each) count memory
   and disk bytes together, and add the destination's write-through in the handover;

then prints a table (each rate also as a ratio to the ceiling measured in the same
run) and checks the throughput targets. Targets are reported, not enforced: the exit
status is 0 after printing, 2 on bad arguments.

    python bench/throughput.py [--quick] [--sizes 1GiB,4GiB] [--repeats N] [--cases ...] [--json FILE]
"""

import argparse
import gc
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import lz4.block
import numpy as np
import zmq

from emulator.analysis.report import host_info
from emulator.core.units import format_bytes
from emulator.dataplane.transport import data_hwm
from emulator.running.children import migrate
from emulator.vm.allocator import keep_freed_buffers
from emulator.vm.disk import DiskImage, DiskSpec
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import DEFAULT_BATCH_PAGES, VERIFY_MODES, MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from emulator.wire import protocol

from arguments import cell, choice_list, keep_clock, progress, repeats, size_list, started_at  # bench/, beside this script

GIB = 1 << 30
PAGE_SIZE = 4096
BATCH_BYTES = DEFAULT_BATCH_PAGES * PAGE_SIZE  # one PAGES message of the default size
HWM = data_hwm(BATCH_BYTES)  # as a migration's data sockets
CEILING_BYTES = 2 * GIB  # moved per ceiling measurement
CEILING_SOURCE_BYTES = 64 << 20  # the random buffer the ceiling's payloads are sliced from
CEILING_TIMEOUT_S = 60.0
COMPRESSOR_GUEST_BYTES = 256 << 20
SAMPLE_INTERVAL_S = 0.020
DEFAULT_SIZES = (GIB, 4 * GIB)

# case -> (codec, channels, guest fill)
CASES = {
    "raw1": ("raw", 1, "random"),
    "raw2": ("raw", 2, "random"),
    "lz4-half": ("lz4", 1, "half"),
    "lz4-text": ("lz4", 1, "text"),
    "zero": ("raw", 1, "zero"),
    "disk": ("raw", 1, "random"),
    "mem+disk": ("raw", 1, "random"),
}
DISK_ONLY_MEMORY_BYTES = 16 << 20  # the `disk` case's guest: as little memory as a guest has, beside its disk

# targets
RAW_MIN_GB_S = 3.0
RAW_MIN_CEILING_SHARE = 0.80
SIZE_SCALING_TOLERANCE = 0.10
LZ4_HALF_MIN_GB_S = 1.3
LZ4_MIN_COMPRESSOR_SHARE = 0.90
ZERO_MIN_GB_S = 10.0
PEAK_MAX_X_GUEST = 2.2
DOWNTIME_MAX_MS = 5.0



def median(values):
    return statistics.median(values) if values else None


# 1. pyzmq ceiling -------------------------------------------------------------------


def _ceiling_receiver(connection):
    """Child process: for each (channels, messages) request, bind PULL sockets, report their
    ports, receive that many messages (dropping them), and report (seconds, payload bytes)
    from the first message to the last. A None request ends the child."""
    while (request := connection.recv()) is not None:
        channels, messages = request
        context = zmq.Context(io_threads=channels)
        sockets = []
        poller = zmq.Poller()
        for _ in range(channels):
            sock = context.socket(zmq.PULL)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, HWM)
            sock.bind("tcp://127.0.0.1:*")
            poller.register(sock, zmq.POLLIN)
            sockets.append(sock)
        connection.send([int(s.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]) for s in sockets])
        try:
            seconds, payload_bytes = _receive_messages(poller, messages)
            connection.send({"seconds": seconds, "payload_bytes": payload_bytes})
        except TimeoutError as error:
            connection.send({"error": str(error)})
        for sock in sockets:
            sock.close()
        context.term()


def _receive_messages(poller, messages):
    """Receive `messages` messages from the poller's sockets; (seconds, payload bytes) after the first."""
    received = 0
    payload_bytes = 0
    first = last = 0.0
    while received < messages:
        ready = poller.poll(CEILING_TIMEOUT_S * 1000)
        if not ready:
            raise TimeoutError(f"no message within {CEILING_TIMEOUT_S:g} s after {received} of {messages}")
        for sock, _ in ready:
            try:
                while received < messages:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    last = time.perf_counter()
                    if received == 0:
                        first = last
                    else:
                        payload_bytes += len(frames[2])
                    received += 1
            except zmq.Again:
                pass
    return last - first, payload_bytes


def _ceiling_frames(seq, payload):
    """One PAGES message as the migration lays it out: header, one (start, count) run, BATCH_BYTES payload."""
    pages = BATCH_BYTES // PAGE_SIZE
    header = protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, int(protocol.MsgType.PAGES),
                                  int(protocol.Flags.RUNS), seq, 0, pages, int(protocol.Codec.RAW),
                                  b"\x00\x00\x00", BATCH_BYTES, BATCH_BYTES)
    numbers = np.array([seq * pages % (1 << 32), pages], dtype="<u4").tobytes()
    return [header, numbers, payload]


def measure_ceiling(connection, channels, source):
    """Send CEILING_BYTES over `channels` PUSH sockets (round-robin) to the receiver child; GB/s."""
    messages = CEILING_BYTES // BATCH_BYTES
    connection.send((channels, messages))
    ports = connection.recv()
    context = zmq.Context(io_threads=channels)
    sockets = []
    for port in ports:
        sock = context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.SNDTIMEO, int(CEILING_TIMEOUT_S * 1000))
        sock.connect(f"tcp://127.0.0.1:{port}")
        sockets.append(sock)
    slices = len(source) // BATCH_BYTES
    view = memoryview(source)
    try:
        for seq in range(messages):
            offset = (seq % slices) * BATCH_BYTES
            payload = view[offset : offset + BATCH_BYTES]
            sockets[seq % channels].send_multipart(_ceiling_frames(seq // channels, payload), copy=False)
        if not connection.poll(CEILING_TIMEOUT_S):
            raise RuntimeError("the ceiling receiver did not report")
        result = connection.recv()
    finally:
        for sock in sockets:
            sock.close()
        context.term()
    if "error" in result:
        raise RuntimeError(f"ceiling receiver: {result['error']}")
    return result["payload_bytes"] / result["seconds"] / 1e9


def run_ceilings(repeats):
    """{channels: {"runs": [GB/s...], "median": GB/s}} for 1 and 2 connections."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_ceiling_receiver, args=(child_end,), name="ceiling-receiver", daemon=True)
    child.start()
    source = np.random.default_rng(1).integers(0, 256, CEILING_SOURCE_BYTES, dtype=np.uint8)
    runs = {1: [], 2: []}
    try:
        for repeat in range(repeats):
            for channels, rates in runs.items():
                rate = measure_ceiling(parent_end, channels, source)
                rates.append(rate)
                progress(f"pyzmq ceiling, {channels} connection(s), run {repeat + 1}/{repeats}: {rate:.2f} GB/s")
        parent_end.send(None)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
            child.join()
    return {channels: {"runs": rates, "median": median(rates)} for channels, rates in runs.items()}


# 2. LZ4 alone on 2 threads ----------------------------------------------------------


def _on_two_threads(pool, work, items):
    """Run work(item) over items on 2 threads, thread k taking items k, k+2, ...; seconds and results."""
    results = [None] * len(items)

    def worker(first):
        for index in range(first, len(items), 2):
            results[index] = work(items[index])

    start = time.perf_counter()
    for future in [pool.submit(worker, first) for first in (0, 1)]:
        future.result()
    return time.perf_counter() - start, results


def measure_storage(size_bytes, repeats):
    """A disk's path through this machine's storage, in the temporary directory: GB/s to fill a fresh
    mapped file (reserved and mapped as a destination receives a disk, then every byte written through
    the mapping), seconds to sync it to the device, and GB/s to read it back (the source's reads)."""
    source = np.random.default_rng(0).integers(0, 256, CEILING_SOURCE_BYTES, dtype=np.uint8)
    fills, syncs, reads = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="precopy-bench-") as directory:
            disk = DiskImage.receiving(DiskSpec(size_bytes, fill="zero"), directory)
            data = disk.blocks.data
            started = time.perf_counter()
            for offset in range(0, size_bytes, source.size):
                np.copyto(data[offset : offset + source.size], source[: size_bytes - offset])
            fills.append(size_bytes / (time.perf_counter() - started) / 1e9)
            syncs.append(disk.sync())
            started = time.perf_counter()
            np.bitwise_xor.reduce(data.view(np.uint64))  # reads every byte through the mapping
            reads.append(size_bytes / (time.perf_counter() - started) / 1e9)
            del data
            disk.discard()
    return {"size_bytes": size_bytes, "fill_gb_s": median(fills), "sync_s": median(syncs),
            "sync_gb_s": size_bytes / median(syncs) / 1e9, "read_pages_gb_s": median(reads)}


def measure_compressor(fill, repeats):
    """LZ4 block compress and decompress of every BATCH_BYTES batch of a 256 MiB `fill` guest, 2 threads.

    Run in a spawned process (see _compressor_child), steady state as in a migration:
    freed buffers stay in the process, as both ends of a migration keep them, and an
    untimed first round faults the buffers in. Otherwise each output is fresh memory
    whose page faults, not LZ4, set the pace (decompression ran 7x slower).
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_compressor_child, started_at(), fill, repeats).result()


def _compressor_child(start, fill, repeats):
    """Child process: measure_compressor's work. Its kept buffers leave with it, so the
    migrations measured next do not carry them in their peak memory."""
    keep_clock(start)
    keep_freed_buffers()
    guest = GuestMemory(GuestSpec(COMPRESSOR_GUEST_BYTES, fill=fill))
    batches = [guest.data[i : i + BATCH_BYTES] for i in range(0, guest.data.size, BATCH_BYTES)]
    compress_runs, decompress_runs = [], []
    with ThreadPoolExecutor(2) as pool:
        _, blocks = _on_two_threads(pool, lambda b: lz4.block.compress(b, store_size=False), batches)
        _on_two_threads(pool, lambda b: lz4.block.decompress(b, uncompressed_size=BATCH_BYTES), blocks)
        del blocks
        for repeat in range(repeats):
            seconds, blocks = _on_two_threads(pool, lambda b: lz4.block.compress(b, store_size=False), batches)
            compress_runs.append(COMPRESSOR_GUEST_BYTES / seconds / 1e9)
            seconds, _ = _on_two_threads(
                pool, lambda b: lz4.block.decompress(b, uncompressed_size=BATCH_BYTES), blocks)
            decompress_runs.append(COMPRESSOR_GUEST_BYTES / seconds / 1e9)
            progress(f"lz4 alone, {fill}, run {repeat + 1}/{repeats}: compress {compress_runs[-1]:.2f} GB/s, "
                     f"decompress {decompress_runs[-1]:.2f} GB/s")
    ratio = COMPRESSOR_GUEST_BYTES / sum(len(block) for block in blocks)
    return {"compress_runs": compress_runs, "compress_median": median(compress_runs),
            "decompress_runs": decompress_runs, "decompress_median": median(decompress_runs),
            "compression_ratio": ratio}


# 3. migrations ----------------------------------------------------------------------


def _rss_bytes(pid):
    """Resident set size of `pid` in bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class PeakMemory:
    """A thread that samples the RSS of this process plus its live children; `peak_bytes` the max sum."""

    def __init__(self, interval_s=SAMPLE_INTERVAL_S):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _sample(self):
        pids = [os.getpid()] + [child.pid for child in multiprocessing.active_children()]
        self.peak_bytes = max(self.peak_bytes, sum(_rss_bytes(pid) for pid in pids))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def run_migration(case, size_bytes, verify):
    """Migrate an idle guest for `case`; a record of pass 0's figures, or of the failure."""
    codec, channels, fill = CASES[case]
    disk = DiskSpec(size_bytes, fill=fill) if case in ("disk", "mem+disk") else None
    memory_bytes = DISK_ONLY_MEMORY_BYTES if case == "disk" else size_bytes
    scenario = Scenario(GuestSpec(memory_bytes, fill=fill), WorkloadSpec(rate_pages_per_s=0),
                        MigrationOptions(codec=codec, channels=channels, verify=verify,
                                         storage="shared" if disk is None else "mirror"), disk=disk)
    record = {"case": case, "size_bytes": size_bytes}
    gc.collect()  # the previous run's guest must not count in this run's peak
    record["rss_before_bytes"] = _rss_bytes(os.getpid())  # this process's own share of the peak, for context
    try:
        with PeakMemory() as memory:
            report = migrate(scenario)
    except Exception as error:  # noqa: BLE001 - one failed run is recorded, the benchmark goes on
        return record | {"status": "error", "reason": f"{type(error).__name__}: {error}"}
    held = memory_bytes + (size_bytes if disk else 0)  # a mapped disk's pages count in each side's RSS too
    record |= {"status": report.status, "reason": report.reason, "peak_x_guest": memory.peak_bytes / held}
    if report.status != "completed" or not report.passes:
        return record
    first = report.passes[0]
    moved = first.bytes_sent + first.disk_bytes_sent
    per_gib = GIB / moved
    return record | {
        "guest_gb_s": moved / first.duration_s / 1e9,
        "disk_sync_ms": report.blackout.disk_sync_s * 1e3 if disk else None,
        "source_cpu_s_per_gib": first.source_cpu_s * per_gib,
        "destination_cpu_s_per_gib": first.destination_cpu_s * per_gib,
        "setup_ms": report.summary["setup-time"],
        "downtime_ms": report.summary["downtime"],
        "passes": len(report.passes),
    }


ROW_FIGURES = ("guest_gb_s", "source_cpu_s_per_gib", "destination_cpu_s_per_gib", "peak_x_guest",
               "setup_ms", "downtime_ms", "disk_sync_ms")


def summarize_case(case, size_bytes, records, ceilings):
    """One table row: medians over the completed runs, and the ratio to the ceiling."""
    done = [r for r in records if r["status"] == "completed"]
    row = {"case": case, "size_bytes": size_bytes, "runs": len(records), "completed": len(done),
           "failures": [f"{r['status']}: {r['reason']}" for r in records if r["status"] != "completed"]}
    for name in ROW_FIGURES:
        row[name] = median([r[name] for r in done if r.get(name) is not None])
    channels = CASES[case][1]
    ceiling = ceilings.get(channels, {}).get("median")
    row["ceiling_channels"] = channels
    row["vs_ceiling"] = row["guest_gb_s"] / ceiling if row["guest_gb_s"] and ceiling else None
    return row


# targets ----------------------------------------------------------------------------


def _target(name, passed, detail):
    return {"target": name, "passed": passed, "detail": detail}



def check_targets(rows, ceilings, compressor):
    """A list of {target, passed (True/False, None = not measured), detail}."""
    by = {(row["case"], row["size_bytes"]): row for row in rows}
    sizes = sorted({row["size_bytes"] for row in rows})
    results = []
    best_raw = {}
    for size in sizes:
        raws = [by[(c, size)] for c in ("raw1", "raw2") if (c, size) in by and by[(c, size)]["guest_gb_s"]]
        if not raws:
            continue
        best = max(raws, key=lambda row: row["guest_gb_s"])
        best_raw[size] = best
        ceiling = ceilings[best["ceiling_channels"]]["median"]
        results.append(_target(
            f"raw best, {format_bytes(size)}: >= {RAW_MIN_GB_S} GB/s and >= {RAW_MIN_CEILING_SHARE:.0%} of ceiling",
            best["guest_gb_s"] >= RAW_MIN_GB_S and best["vs_ceiling"] >= RAW_MIN_CEILING_SHARE,
            f"{best['case']} {best['guest_gb_s']:.2f} GB/s, {best['vs_ceiling']:.0%} of the "
            f"{best['ceiling_channels']}-connection ceiling {ceiling:.2f} GB/s"))
    if len(best_raw) > 1:
        small = min(best_raw)
        for size in sorted(best_raw)[1:]:
            change = best_raw[size]["guest_gb_s"] / best_raw[small]["guest_gb_s"] - 1
            results.append(_target(
                f"raw best, {format_bytes(size)} rate within {SIZE_SCALING_TOLERANCE:.0%} of {format_bytes(small)}",
                abs(change) <= SIZE_SCALING_TOLERANCE,
                f"{best_raw[size]['guest_gb_s']:.2f} vs {best_raw[small]['guest_gb_s']:.2f} GB/s ({change:+.1%})"))
    for row in rows:
        size = format_bytes(row["size_bytes"])
        rate = row["guest_gb_s"]
        if row["case"] == "lz4-half":
            results.append(_target(f"lz4-half, {size}: >= {LZ4_HALF_MIN_GB_S} GB/s",
                                   rate is not None and rate >= LZ4_HALF_MIN_GB_S, f"{cell(rate)} GB/s"))
        if row["case"] in ("lz4-half", "lz4-text"):
            alone = compressor[CASES[row["case"]][2]]["compress_median"]
            share = rate / alone if rate is not None else None
            results.append(_target(
                f"{row['case']}, {size}: >= {LZ4_MIN_COMPRESSOR_SHARE:.0%} of lz4 alone on 2 threads",
                share is not None and share >= LZ4_MIN_COMPRESSOR_SHARE,
                f"{cell(rate)} vs {alone:.2f} GB/s ({cell(share, '.0%')})"))
        if row["case"] == "zero":
            results.append(_target(f"zero, {size}: >= {ZERO_MIN_GB_S:g} GB/s",
                                   rate is not None and rate >= ZERO_MIN_GB_S, f"{cell(rate)} GB/s"))
    for name, limit, unit in (("peak_x_guest", PEAK_MAX_X_GUEST, "x guest"), ("downtime_ms", DOWNTIME_MAX_MS, "ms")):
        if name == "downtime_ms":  # a mirrored disk's blackout holds its write-through: reported, not a target
            rows = [row for row in rows if row["case"] not in ("disk", "mem+disk")]
        worst = [row for row in rows if row[name] is not None]
        worst = max(worst, key=lambda row: row[name]) if worst else None
        label = "peak memory" if name == "peak_x_guest" else "downtime with no pages left"
        missing = [f"{row['case']}/{format_bytes(row['size_bytes'])}" for row in rows if not row["completed"]]
        detail = "no completed run" if worst is None else (
            f"worst {worst[name]:.2f} {unit} ({worst['case']}, {format_bytes(worst['size_bytes'])}); "
            + ", ".join(f"{row['case']}/{format_bytes(row['size_bytes'])} {cell(row[name])}" for row in rows))
        if missing and worst is not None:
            detail += f"; not measured (no completed run): {', '.join(missing)}"
        results.append(_target(f"{label} <= {limit:g} {unit}, every case",
                               worst is not None and worst[name] <= limit and not missing, detail))
    return results


# output -----------------------------------------------------------------------------


def format_report(ceilings, compressor, storage, rows, targets):
    lines = [f"pyzmq ceiling (TCP loopback, {format_bytes(BATCH_BYTES)} payloads, HWM {HWM}; median GB/s): "
             + ", ".join(f"{channels} connection(s) {c['median']:.2f}" for channels, c in ceilings.items())]
    for figures in storage.values():
        lines.append(f"storage, a {format_bytes(figures['size_bytes'])} disk file in {tempfile.gettempdir()}: "
                     f"fill through the mapping {figures['fill_gb_s']:.2f} GB/s, sync {figures['sync_s'] * 1e3:.0f} ms "
                     f"({figures['sync_gb_s']:.2f} GB/s), read back {figures['read_pages_gb_s']:.2f} GB/s")
    for fill, figures in compressor.items():
        lines.append(f"lz4 alone, 2 threads, {fill}: compress {figures['compress_median']:.2f} GB/s, "
                     f"decompress {figures['decompress_median']:.2f} GB/s, ratio {figures['compression_ratio']:.2f}")
    lines.append("")
    header = (f"{'case':<9} {'size':>9} {'GB/s':>6} {'vs ceil':>7} {'src s/GiB':>9} {'dst s/GiB':>9} "
              f"{'peak x':>6} {'setup ms':>8} {'down ms':>7} {'sync ms':>7} {'runs':>5}")
    lines += [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['case']:<9} {format_bytes(row['size_bytes']):>9} {cell(row['guest_gb_s']):>6} "
            f"{cell(row['vs_ceiling'], '.0%'):>7} {cell(row['source_cpu_s_per_gib'], '.3f'):>9} "
            f"{cell(row['destination_cpu_s_per_gib'], '.3f'):>9} {cell(row['peak_x_guest']):>6} "
            f"{cell(row['setup_ms'], '.0f'):>8} {cell(row['downtime_ms'], '.1f'):>7} "
            f"{cell(row['disk_sync_ms'], '.0f'):>7} "
            f"{row['completed']}/{row['runs']:<3}")
        for failure in row["failures"]:
            lines.append(f"          {failure}")
    lines += ["", "targets"]
    for target in targets:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[target["passed"]]
        lines.append(f"  {verdict}  {target['target']}: {target['detail']}")
    return "\n".join(lines)


# command line -----------------------------------------------------------------------








def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="throughput.py",
        description="End-to-end pre-copy throughput on this machine: the pyzmq ceiling (1 and 2 connections), "
                    "LZ4 alone on 2 threads, then pass 0 of idle-guest migrations per case and size, as a "
                    "table with medians and ratios to the ceiling measured in the same run, and a PASS/FAIL "
                    "check of the targets. Targets are reported, not enforced (exit 0; 2 on bad arguments). "
                    "Takes several minutes with the defaults; progress goes to stderr.",
    )
    parser.add_argument("--sizes", type=size_list(BATCH_BYTES), default=None,
                        help="guest sizes, comma-separated (default 1GiB,4GiB)")
    parser.add_argument("--repeats", type=repeats, default=None,
                        help="runs per case and size (default 3 for sizes <= 1 GiB, 1 above); also the runs of "
                             "the ceiling and the compressor (default 3)")
    parser.add_argument("--cases", type=choice_list(CASES, "case(s)"), default=list(CASES),
                        help=f"migration cases, comma-separated (default all: {','.join(CASES)}); "
                             + "; ".join(f"{name} = {codec}, {channels} channel(s), {fill} guest"
                                         for name, (codec, channels, fill) in CASES.items()))
    parser.add_argument("--verify", choices=VERIFY_MODES, default="incremental",
                        help="the migrations' memory check (default incremental, as precopy's; full hashes memory "
                             "only in the blackout, so pre-copy carries no digest work)")
    parser.add_argument("--json", metavar="FILE", help="write every measurement and the medians to FILE")
    parser.add_argument("--quick", action="store_true", help="1 GiB only, 1 run of everything")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")
    args = parser.parse_args(argv)
    if args.quick and (args.sizes or args.repeats):
        parser.error("--quick sets the sizes and repeats: give it without --sizes and --repeats")
    if args.quick:
        args.sizes, args.repeats = [GIB], 1
    args.sizes = args.sizes or list(DEFAULT_SIZES)
    return args


def repeats_for(args, size_bytes):
    return args.repeats or (3 if size_bytes <= GIB else 1)


def run(args):
    """Every measurement; the JSON-ready results."""
    side_repeats = args.repeats or 3
    ceilings = run_ceilings(side_repeats)
    fills = sorted({CASES[case][2] for case in args.cases if CASES[case][0] == "lz4"})
    compressor = {fill: measure_compressor(fill, side_repeats) for fill in fills}
    mirrored = any(case in ("disk", "mem+disk") for case in args.cases)
    storage = {size: measure_storage(size, side_repeats) for size in args.sizes} if mirrored else {}
    gc.collect()
    records, rows = [], []
    for size in args.sizes:
        repeats = repeats_for(args, size)
        size_records = {case: [] for case in args.cases}
        for repeat in range(repeats):  # cases inside repeats: machine noise spreads over every case
            for case in args.cases:
                record = run_migration(case, size, args.verify)
                size_records[case].append(record)
                outcome = (f"{record['guest_gb_s']:.2f} GB/s, peak {record['peak_x_guest']:.2f}x, "
                           f"downtime {record['downtime_ms']:.1f} ms" if record["status"] == "completed"
                           else f"{record['status']}: {record['reason']}")
                progress(f"migrate {case}, {format_bytes(size)}, run {repeat + 1}/{repeats}: {outcome}")
        for case in args.cases:
            records += size_records[case]
            rows.append(summarize_case(case, size, size_records[case], ceilings))
    targets = check_targets(rows, ceilings, compressor)
    return {"ceilings": ceilings, "compressor": compressor, "storage": storage, "migrations": records,
            "table": rows, "targets": targets}


def main(argv=None):
    args = parse_args(argv)
    try:
        results = run(args)
    except Exception as error:  # noqa: BLE001 - the CLI reports any failure in one line
        if args.debug:
            traceback.print_exc()
        print(f"throughput.py: error: {error}", file=sys.stderr)
        return 1
    wall_s = time.monotonic() - started_at()
    print(format_report(results["ceilings"], results["compressor"], results["storage"], results["table"],
                        results["targets"]))
    print(f"\nwall time {wall_s:.0f} s")
    if args.json:
        document = {"host": host_info(), "sizes": args.sizes, "cases": args.cases, "verify": args.verify, "repeats": args.repeats,
                    "wall_s": wall_s, **results}
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
