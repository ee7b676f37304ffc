"""Events a run warns about: a blackout longer than expected, and its likely cause from the pass records.

Hyper-V logs Event 20417 when a live migration's blackout runs past what was expected, and
treats one past about 63 s as a serious problem. Here the threshold is the run's
``blackout_warning_s``, by default twice the downtime limit, and never more than
LONG_BLACKOUT_S: a blackout past it is an Event in the report, printed as a warning on
both ends; ``--fail-on-warning`` makes it the command's exit status.
"""

from dataclasses import dataclass

from emulator.core.units import format_bytes, format_duration, format_rate

LONG_BLACKOUT_S = 63.0  # the article's "serious problem" mark: always a warning past it
CAP_MET_SHARE = 0.9  # a pass 0 on the wire below this share of the cap was held back by the CPU (or storage)
CPU_BUSY_CORES = 0.9  # an end whose migration used less than this many cores' time was not held back by its CPU
LINK_MET_SHARE = 0.8  # final pages crossing below this share of the last pass's rate: the link slowed


@dataclass
class Event:
    """Something a run warns about. name: "long-blackout"; time_s: since the migration began;
    measured_s and threshold_s: what was measured and what it went past; cause: the likely why."""

    name: str
    time_s: float
    measured_s: float
    threshold_s: float
    cause: str


def blackout_threshold_s(blackout_warning_s, downtime_limit_s):
    """The blackout past which a run warns: as given, else twice the downtime limit; at most LONG_BLACKOUT_S."""
    wanted = 2 * downtime_limit_s if blackout_warning_s is None else blackout_warning_s
    return min(wanted, LONG_BLACKOUT_S)


def cpu_bound(first_pass, cap_bytes_per_s):
    """How far below the cap pass 0 ran, where the CPU held it back ("pass 0 ran at ... cap"), else None."""
    rate = first_pass.bandwidth_bytes_per_s
    if not cap_bytes_per_s or rate >= CAP_MET_SHARE * cap_bytes_per_s:
        return None
    return f"pass 0 ran at {format_rate(rate)}, {rate / cap_bytes_per_s:.0%} of the {format_rate(cap_bytes_per_s)} cap"


def pace_setter(first_pass):
    """What held a pass 0 below its cap: the CPU, unless neither end's migration kept a core busy while a
    mirrored disk crossed too (then the destination's storage, writing the disk's copy, set the pace)."""
    busiest_cores = max(first_pass.source_cpu_s, first_pass.destination_cpu_s) / first_pass.duration_s
    if first_pass.disk is not None and busiest_cores < CPU_BUSY_CORES:
        return "storage"
    return "CPU"


def likely_cause(passes, switchover_reason, cap_bytes_per_s, final_wire_bytes, final_send_s):
    """Why a blackout ran long, read from the pass records, in the order an operator would check."""
    last, first = passes[-1], passes[0]
    if switchover_reason != "converged":
        left = last.remaining_pages * (last.bytes_sent / last.pages_sent if last.pages_sent else 0)
        return (f"not converged: pre-copy ended by {switchover_reason} with {format_bytes(left)} dirty, "
                f"{left / last.threshold_bytes:.1f}x the {format_bytes(last.threshold_bytes)} that fit the "
                f"downtime limit" if last.threshold_bytes else f"not converged: pre-copy ended by {switchover_reason}")
    held_back = cpu_bound(first, cap_bytes_per_s)
    if held_back:
        return f"{pace_setter(first)}-bound: {held_back}"
    final_rate = final_wire_bytes / final_send_s if final_send_s > 0 else None
    if final_rate is not None and final_rate < LINK_MET_SHARE * last.bandwidth_bytes_per_s:
        return (f"link slower than measured: the final pages crossed at {format_rate(final_rate)}, "
                f"the last pass measured {format_rate(last.bandwidth_bytes_per_s)}")
    return "device state, digest check and resume took longer than the pages (see the blackout record)"


def warning_text(event, where=""):
    """The display's words for `event`; where: whose view of the blackout it is (" here")."""
    return (f"warning: the blackout lasted {format_duration(event.measured_s)}{where}, past the "
            f"{format_duration(event.threshold_s)} warning threshold ({event.name}); likely cause: {event.cause}")
