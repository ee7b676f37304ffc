"""Writer pacing: does a Workload dirty pages at the rate it is asked for?

Measures the unpaced ceiling first (writers flat out), then runs a Workload at each
target rate and compares the writes it made with the time it was active. A target
above 90% of the ceiling cannot be paced on this machine and is reported as
"above ceiling" rather than as a miss. Exit status 1 if any other target misses by
more than 2%.

    python bench/pacing.py [--memory 16MiB] [--vcpus 2] [--seconds 2] [--json]
"""

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass

from emulator.core.units import format_bytes, parse_duration, parse_size
from emulator.vm.guest import FILL_PROFILES, GuestMemory, GuestSpec
from emulator.vm.workload import Workload, WorkloadSpec
from kernels.writers import PATTERNS

TARGETS_WRITES_PER_S = (1e3, 1e4, 1e5, 1e6, 3e6, 1e7)
TOLERANCE = 0.02
CEILING_SHARE = 0.9
# Each target runs long enough for this many writes, so one write is 0.05% of
# the count: the 1k/s target therefore runs at least 2 s.
MIN_WRITES = 2000


@dataclass
class PacingResult:
    """One run: target (None = unpaced), what was done, and the verdict."""

    target_writes_per_s: float | None
    writes: int
    active_s: float
    achieved_writes_per_s: float
    error_pct: float | None
    verdict: str  # "ceiling", "ok", "miss" or "above ceiling"


def run_workload(guest, spec, seconds):
    """Run `spec` on `guest` for `seconds`; return (writes, seconds the writers were active)."""
    workload = Workload(guest, spec)
    with workload:
        time.sleep(seconds)
        workload.pause()  # freeze both counters at the same instant
        return workload.writes, workload.active_s


def measure(guest, *, vcpus, pattern, seconds, targets=TARGETS_WRITES_PER_S, seed=0):
    """The unpaced ceiling, then one PacingResult per target, in order."""
    def spec(rate):
        return WorkloadSpec(vcpus=vcpus, rate_pages_per_s=rate, pattern=pattern, seed=seed)

    writes, active_s = run_workload(guest, spec(math.inf), seconds)
    ceiling = writes / active_s
    results = [PacingResult(None, writes, active_s, ceiling, None, "ceiling")]
    for target in targets:
        writes, active_s = run_workload(guest, spec(target), max(seconds, MIN_WRITES / target))
        achieved = writes / active_s
        error = achieved / target - 1
        if target > CEILING_SHARE * ceiling:
            verdict = "above ceiling"
        else:
            verdict = "ok" if abs(error) <= TOLERANCE else "miss"
        results.append(PacingResult(target, writes, active_s, achieved, 100 * error, verdict))
    return results


def format_table(results):
    lines = [f"{'target/s':>12}  {'achieved/s':>12}  {'error %':>8}  {'active s':>8}  within {TOLERANCE:.0%}"]
    for result in results:
        target = "unpaced" if result.target_writes_per_s is None else f"{result.target_writes_per_s:,.0f}"
        error = "" if result.error_pct is None else f"{result.error_pct:+.2f}"
        within = {"ok": "yes", "miss": "NO"}.get(result.verdict, result.verdict)
        lines.append(f"{target:>12}  {result.achieved_writes_per_s:>12,.0f}  {error:>8}  {result.active_s:>8.2f}  {within}")
    return "\n".join(lines)


def _argument(parse):
    def convert(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = parse.__name__
    return convert


def _positive(value, what):
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{what} must be > 0, got {value!r}")
    return value


def _vcpus(text):
    try:
        return _positive(int(text), "--vcpus")
    except ValueError:
        raise argparse.ArgumentTypeError(f"--vcpus must be a whole number >= 1, got {text!r}") from None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="pacing.py",
        description=f"Check that writers hit their target dirty rate: the unpaced ceiling, then targets "
                    f"{', '.join(f'{t:,.0f}' for t in TARGETS_WRITES_PER_S)} page writes/s. A target within "
                    f"{TOLERANCE:.0%} passes; one above {CEILING_SHARE:.0%} of the ceiling is reported as "
                    f"'above ceiling', not failed. Exit status 1 if any other target misses.",
    )
    parser.add_argument("--memory", type=_argument(parse_size), default=16 << 20,
                        help="guest memory size, e.g. 16MiB or 1GiB (default 16MiB)")
    parser.add_argument("--vcpus", type=_vcpus, default=2,
                        help="writer threads (default 2)")
    parser.add_argument("--seconds", type=_argument(lambda text: _positive(parse_duration(text), "--seconds")),
                        default=2.0, help=f"run time per target, e.g. 2 or 500ms (default 2; a target runs at "
                                          f"least {MIN_WRITES} writes' worth)")
    parser.add_argument("--pattern", choices=list(PATTERNS), default="hotset", help="write pattern (default hotset)")
    parser.add_argument("--fill", choices=FILL_PROFILES, default="random", help="guest content (default random)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        guest = GuestMemory(GuestSpec(args.memory, fill=args.fill))
        results = measure(guest, vcpus=args.vcpus, pattern=args.pattern, seconds=args.seconds)
    except Exception as error:  # noqa: BLE001 - the CLI reports any failure in one line
        if args.debug:
            traceback.print_exc()
        print(f"pacing.py: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"memory_bytes": args.memory, "fill": args.fill, "pattern": args.pattern,
                          "vcpus": args.vcpus, "seconds": args.seconds, "tolerance": TOLERANCE,
                          "ceiling_share": CEILING_SHARE, "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(f"writer pacing: {format_bytes(args.memory)} guest ({args.fill}), {args.pattern}, "
              f"{args.vcpus} vCPUs, {args.seconds:g} s per target")
        print(format_table(results))
    return 1 if any(result.verdict == "miss" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
