"""`precopy compat`: this host's processor, or the features a cluster's hosts have in common."""

from __future__ import annotations

import json

from emulator.shell.commands.common import EXIT_OK, UsageError
from emulator.vm import compat


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compat", help="describe this host's processor, or a cluster's common feature set",
        description="As WS2025's dynamic processor compatibility: each host writes its processor with "
                    "--describe; --hosts computes the features all of them have, for a guest's --cpu FILE, so it "
                    "migrates anywhere in that cluster. Hosts of different vendors have no common set.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--describe", action="store_true", help="print this host's processor as JSON")
    what.add_argument("--hosts", nargs="+", metavar="FILE", help="files from --describe, one per host")


def run(args) -> int:
    if args.describe:
        print(json.dumps(compat.describe(), indent=2))
        return EXIT_OK
    try:
        common = compat.common({name: compat.load(name) for name in args.hosts})
    except ValueError as error:
        raise UsageError(f"--hosts: {error}") from None
    print(json.dumps({"hosts": args.hosts, **common.to_dict()}, indent=2))
    return EXIT_OK
