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
run) and judges the targets: each a ratio to a figure measured in the same run, or a
bound the design sets, PASS or FAIL; n/a where this machine or this run cannot judge it
(LZ4's needs more CPUs than two), "unmeasured" where a figure is missing. Exit status:
0 when every applicable target passed, 1 when one failed (named on the last lines), 2
when the run could not measure: bad arguments, the benchmark stopped on an error, or,
with none failed, a target lacks its figure.

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
from collections import Counter
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

MIRRORED_CASES = ("disk", "mem+disk")

# targets: thresholds that mean the same on any machine, each with why (bench/README.md lists them)
RAW_MIN_CEILING_SHARE = 0.60
RAW_MIN_SIZE_SHARE = 0.90
LZ4_MIN_COMPRESSOR_SHARE = 0.90
LZ4_MIN_CPUS = 6
ZERO_MIN_X_RAW = 2.0
PEAK_MAX_X_GUEST = 2.2
PEAK_MIN_GUEST_BYTES = GIB
DOWNTIME_MAX_MS = 5.0
WHY = {
    "completed": "an idle guest between two processes of one machine has nothing that may make it fail",
    "raw vs ceiling": "the ceiling is the same two processes' message path without the engine's own work (the "
                      "scan and hash on the source, the copy into place and hash on the destination, the Python "
                      "around each message), about a third of a pass's CPU where both ends share two cores "
                      "(docs/performance.md), less a margin for the ceiling's noise; with more cores that work "
                      "runs beside the wire's and the share only rises",
    "raw across sizes": "a pass's costs are per page: a larger guest must not move slower (nothing may grow "
                        "faster than the guest), with 10% for the machine's noise",
    "lz4 vs alone": "with cores to spare for TCP on both ends and decompression on the destination, the source's "
                    "LZ4 on 2 threads is a pass's only bound; on fewer CPUs both ends share them and it is not",
    "zero vs raw": "a zero page crosses as its page number alone, so an all-zero guest costs a read of memory, "
                   "not a copy through TCP (4.4x and 5.2x raw on the two machines of docs/performance.md)",
    "peak memory": "a guest on each side is 2x; 0.2x is for socket queues (at most 8 MiB per channel and side) "
                   "and message buffers; the two interpreters (numpy, Numba, pyzmq and the engine, about 0.2 GiB "
                   "each) do not grow with the guest and are left out, and below 1 GiB buffers of fixed size "
                   "outweigh that margin",
    "downtime": "with no writer the blackout has no pages to send and --verify incremental nothing to hash: a "
                "few control messages over loopback (1-2 ms measured), with room for the scheduler's noise",
}
PASS, FAIL, NOT_APPLICABLE, UNMEASURED = "PASS", "FAIL", "n/a", "unmeasured"
EXIT_PASSED, EXIT_FAILED, EXIT_UNMEASURED = 0, 1, 2  # 2 is also argparse's status for bad arguments



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


def run_migration(case, size_bytes, verify, interpreter_bytes):
    """Migrate an idle guest for `case`; a record of pass 0's figures, or of the failure.

    interpreter_bytes: the RSS of an interpreter with the engine loaded and no guest, taken as the
    receiver's own footprint for `peak_net_x_guest` (the peak less both processes' footprint before
    the run, over the guest)."""
    codec, channels, fill = CASES[case]
    disk = DiskSpec(size_bytes, fill=fill) if case in MIRRORED_CASES else None
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
    net_bytes = memory.peak_bytes - record["rss_before_bytes"] - interpreter_bytes
    record |= {"status": report.status, "reason": report.reason, "peak_x_guest": memory.peak_bytes / held,
               "peak_net_x_guest": net_bytes / held}
    if report.status != "completed" or not report.passes:
        return record
    first = report.passes[0]
    moved = first.total_bytes_sent
    per_gib = GIB / moved
    return record | {
        "guest_gb_s": moved / first.duration_s / 1e9,
        "disk_sync_ms": report.blackout.disk.sync_s * 1e3 if disk else None,
        "source_cpu_s_per_gib": first.source_cpu_s * per_gib,
        "destination_cpu_s_per_gib": first.destination_cpu_s * per_gib,
        "setup_ms": report.summary["setup-time"],
        "downtime_ms": report.summary["downtime"],
        "passes": len(report.passes),
    }


ROW_FIGURES = ("guest_gb_s", "source_cpu_s_per_gib", "destination_cpu_s_per_gib", "peak_x_guest",
               "peak_net_x_guest", "setup_ms", "downtime_ms", "disk_sync_ms")


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


def _target(why, name, verdict, detail):
    """One judged target: its name with its threshold, its verdict, the figures, and WHY[why]."""
    return {"target": name, "verdict": verdict, "detail": detail, "why": WHY[why]}


def _judged(passed):
    return PASS if passed else FAIL


def _where(row):
    return f"{row['case']}/{format_bytes(row['size_bytes'])}"


def check_targets(rows, ceilings, compressor, *, cpus, verify):
    """The targets judged on the table's rows: a list of {target, verdict, detail, why}.

    cpus: how many CPUs this machine lets the benchmark use; verify: the migrations' --verify mode.
    """
    return [*_completed(rows), *_raw_vs_ceiling(rows, ceilings), *_raw_across_sizes(rows),
            *_lz4_vs_alone(rows, compressor, cpus), *_zero_vs_raw(rows), *_peak_memory(rows),
            *_downtime(rows, verify)]


def _completed(rows):
    runs = sum(row["runs"] for row in rows)
    failures = [f"{_where(row)} {failure}" for row in rows for failure in row["failures"]]
    detail = (f"{len(failures)} of {runs} runs did not complete: {'; '.join(failures)}" if failures
              else f"{runs} of {runs} runs")
    return [_target("completed", "every migration completed", _judged(not failures), detail)]


def _raw_by_size(rows):
    """{size: its raw1 and raw2 rows}, smallest size first."""
    raws = {}
    for row in rows:
        if row["case"] in ("raw1", "raw2"):
            raws.setdefault(row["size_bytes"], []).append(row)
    return dict(sorted(raws.items()))


def _raw_vs_ceiling(rows, ceilings):
    """Per size, the raw case closest to its ceiling (1 or 2 connections, as its channels)."""
    results = []
    for size, raws in _raw_by_size(rows).items():
        name = (f"raw vs wire ceiling, {format_bytes(size)}: >= {RAW_MIN_CEILING_SHARE:.0%} of the pyzmq ceiling "
                "with as many connections")
        measured = [row for row in raws if row["vs_ceiling"] is not None]
        if not measured:
            results.append(_target("raw vs ceiling", name, UNMEASURED, "no completed raw run"))
            continue
        best = max(measured, key=lambda row: row["vs_ceiling"])
        ceiling = ceilings[best["ceiling_channels"]]["median"]
        results.append(_target("raw vs ceiling", name, _judged(best["vs_ceiling"] >= RAW_MIN_CEILING_SHARE),
                               f"{best['case']} {best['guest_gb_s']:.2f} GB/s, {best['vs_ceiling']:.0%} of the "
                               f"{best['ceiling_channels']}-connection ceiling {ceiling:.2f} GB/s"))
    return results


def _raw_across_sizes(rows):
    """The best raw rate at each larger size against the smallest size's."""
    raws = _raw_by_size(rows)
    if not raws:
        return []
    if len(raws) == 1:
        return [_target("raw across sizes", f"raw across sizes: >= {RAW_MIN_SIZE_SHARE:.0%} of the rate at the "
                        "smallest size", NOT_APPLICABLE, "needs two or more --sizes")]
    rates = {size: max((row["guest_gb_s"] for row in group if row["guest_gb_s"] is not None), default=None)
             for size, group in raws.items()}
    smallest, *larger = rates
    results = []
    for size in larger:
        name = (f"raw across sizes, {format_bytes(size)}: >= {RAW_MIN_SIZE_SHARE:.0%} of the rate at "
                f"{format_bytes(smallest)}")
        if rates[size] is None or rates[smallest] is None:
            results.append(_target("raw across sizes", name, UNMEASURED, "no completed raw run at one of the sizes"))
            continue
        share = rates[size] / rates[smallest]
        results.append(_target("raw across sizes", name, _judged(share >= RAW_MIN_SIZE_SHARE),
                               f"{rates[size]:.2f} vs {rates[smallest]:.2f} GB/s ({share:.0%})"))
    return results


def _lz4_vs_alone(rows, compressor, cpus):
    """Each lz4 case against LZ4 alone compressing its content on 2 threads; n/a below LZ4_MIN_CPUS."""
    results = []
    for row in rows:
        codec, _, fill = CASES[row["case"]]
        if codec != "lz4":
            continue
        name = (f"{row['case']} vs LZ4 alone, {format_bytes(row['size_bytes'])}: >= {LZ4_MIN_COMPRESSOR_SHARE:.0%} "
                "of compression on 2 threads")
        alone = compressor[fill]["compress_median"]
        if cpus < LZ4_MIN_CPUS:
            verdict, detail = NOT_APPLICABLE, f"needs {LZ4_MIN_CPUS} CPUs, this machine has {cpus}"
        elif row["guest_gb_s"] is None:
            verdict, detail = UNMEASURED, "no completed run"
        else:
            share = row["guest_gb_s"] / alone
            verdict = _judged(share >= LZ4_MIN_COMPRESSOR_SHARE)
            detail = f"{row['guest_gb_s']:.2f} vs {alone:.2f} GB/s ({share:.0%})"
        results.append(_target("lz4 vs alone", name, verdict, detail))
    return results


def _zero_vs_raw(rows):
    """The all-zero guest against raw1 at the same size."""
    by = {(row["case"], row["size_bytes"]): row for row in rows}
    results = []
    for row in rows:
        if row["case"] != "zero":
            continue
        name = f"zero vs raw1, {format_bytes(row['size_bytes'])}: >= {ZERO_MIN_X_RAW:g}x the rate"
        raw = by.get(("raw1", row["size_bytes"]))
        if raw is None:
            verdict, detail = NOT_APPLICABLE, "needs raw1 in --cases"
        elif row["guest_gb_s"] is None or raw["guest_gb_s"] is None:
            verdict, detail = UNMEASURED, "no completed run of zero or of raw1"
        else:
            times = row["guest_gb_s"] / raw["guest_gb_s"]
            verdict = _judged(times >= ZERO_MIN_X_RAW)
            detail = f"{row['guest_gb_s']:.2f} vs {raw['guest_gb_s']:.2f} GB/s ({times:.1f}x)"
        results.append(_target("zero vs raw", name, verdict, detail))
    return results


def _peak_memory(rows):
    name = f"peak memory beyond the two interpreters: <= {PEAK_MAX_X_GUEST:g}x guest, every case"
    large = [row for row in rows if row["size_bytes"] >= PEAK_MIN_GUEST_BYTES]
    if not large:
        return [_target("peak memory", name, NOT_APPLICABLE,
                        f"needs a size of {format_bytes(PEAK_MIN_GUEST_BYTES)} or more")]
    return [_worst_target("peak memory", name, large, "peak_net_x_guest", PEAK_MAX_X_GUEST, "x guest")]


def _downtime(rows, verify):
    """Every case without a mirrored disk (whose blackout holds the disk's write-through: reported only)."""
    memory_only = [row for row in rows if row["case"] not in MIRRORED_CASES]
    if not memory_only:
        return []
    name = f"downtime with no pages left: <= {DOWNTIME_MAX_MS:g} ms, every memory case"
    if verify == "full":
        return [_target("downtime", name, NOT_APPLICABLE, "--verify full hashes all memory in the blackout")]
    return [_worst_target("downtime", name, memory_only, "downtime_ms", DOWNTIME_MAX_MS, " ms")]


def _worst_target(why, name, rows, figure, limit, unit):
    """FAIL if any row's `figure` is above `limit`, else unmeasured if a row has none, else PASS."""
    measured = [row for row in rows if row[figure] is not None]
    if not measured:
        return _target(why, name, UNMEASURED, "no completed run")
    worst = max(measured, key=lambda row: row[figure])
    verdict = FAIL if worst[figure] > limit else UNMEASURED if len(measured) < len(rows) else PASS
    detail = (f"worst {worst[figure]:.2f}{unit} ({worst['case']}, {format_bytes(worst['size_bytes'])}); "
              + ", ".join(f"{_where(row)} {cell(row[figure])}" for row in rows))
    return _target(why, name, verdict, detail)


def exit_status(targets):
    """EXIT_FAILED if a target failed, else EXIT_UNMEASURED if one lacks its figure, else EXIT_PASSED."""
    verdicts = {target["verdict"] for target in targets}
    return EXIT_FAILED if FAIL in verdicts else EXIT_UNMEASURED if UNMEASURED in verdicts else EXIT_PASSED


def verdict_summary(targets):
    """The verdicts counted, the exit status, and a line naming each target that failed or lacks its figure."""
    counts = Counter(target["verdict"] for target in targets)
    lines = [f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[NOT_APPLICABLE]} n/a, "
             f"{counts[UNMEASURED]} unmeasured: exit status {exit_status(targets)}"]
    lines += [f"{'failed' if target['verdict'] == FAIL else 'unmeasured'}: {target['target']}"
              for target in targets if target["verdict"] in (FAIL, UNMEASURED)]
    return "\n".join(lines)


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
        lines.append(f"  {target['verdict']:<10}  {target['target']}: {target['detail']}")
    return "\n".join(lines)


# command line -----------------------------------------------------------------------








def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="throughput.py",
        description="End-to-end pre-copy throughput on this machine: the pyzmq ceiling (1 and 2 connections), "
                    "LZ4 alone on 2 threads, then pass 0 of idle-guest migrations per case and size, as a "
                    "table with medians and ratios to the ceiling measured in the same run, and a PASS/FAIL "
                    "check of the targets (n/a where this machine cannot judge one). Exit status 0 when every "
                    "applicable target passed, 1 when one failed, 2 when the run could not measure. "
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
    mirrored = any(case in MIRRORED_CASES for case in args.cases)
    storage = {size: measure_storage(size, side_repeats) for size in args.sizes} if mirrored else {}
    gc.collect()
    interpreter_bytes = _rss_bytes(os.getpid())  # an interpreter with the engine loaded, before any guest
    records, rows = [], []
    for size in args.sizes:
        repeats = repeats_for(args, size)
        size_records = {case: [] for case in args.cases}
        for repeat in range(repeats):  # cases inside repeats: machine noise spreads over every case
            for case in args.cases:
                record = run_migration(case, size, args.verify, interpreter_bytes)
                size_records[case].append(record)
                outcome = (f"{record['guest_gb_s']:.2f} GB/s, peak {record['peak_x_guest']:.2f}x, "
                           f"downtime {record['downtime_ms']:.1f} ms" if record["status"] == "completed"
                           else f"{record['status']}: {record['reason']}")
                progress(f"migrate {case}, {format_bytes(size)}, run {repeat + 1}/{repeats}: {outcome}")
        for case in args.cases:
            records += size_records[case]
            rows.append(summarize_case(case, size, size_records[case], ceilings))
    targets = check_targets(rows, ceilings, compressor, cpus=len(os.sched_getaffinity(0)), verify=args.verify)
    return {"ceilings": ceilings, "compressor": compressor, "storage": storage, "interpreter_bytes": interpreter_bytes,
            "migrations": records, "table": rows, "targets": targets}


def main(argv=None):
    args = parse_args(argv)
    try:
        results = run(args)
    except Exception as error:  # noqa: BLE001 - the CLI reports any failure in one line
        if args.debug:
            traceback.print_exc()
        print(f"throughput.py: error: {error}", file=sys.stderr)
        return EXIT_UNMEASURED
    wall_s = time.monotonic() - started_at()
    print(format_report(results["ceilings"], results["compressor"], results["storage"], results["table"],
                        results["targets"]))
    print(verdict_summary(results["targets"]))
    print(f"\nwall time {wall_s:.0f} s")
    if args.json:
        document = {"host": host_info(), "sizes": args.sizes, "cases": args.cases, "verify": args.verify, "repeats": args.repeats,
                    "wall_s": wall_s, **results}
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2, default=str)
    return exit_status(results["targets"])


if __name__ == "__main__":
    sys.exit(main())
