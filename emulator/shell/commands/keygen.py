"""`precopy keygen`: write a CURVE key pair for send and receive."""

from __future__ import annotations

from emulator.dataplane.security import generate
from emulator.shell.commands.common import EXIT_OK, UsageError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("keygen", help="write a CURVE key pair for send/receive",
                                   description="Write NAME.key (public: give it to the other end) and "
                                               "NAME.key_secret (keep it here) into --dir.")
    parser.add_argument("name", help="name of the key pair, e.g. the host name")
    parser.add_argument("--dir", default=".", metavar="DIR", help="where to write the files (default .)")
    parser.add_argument("--force", action="store_true", help="replace an existing key pair of that name")


def run(args) -> int:
    try:
        public_file, secret_file = generate(args.dir, args.name, force=args.force)
    except FileExistsError as error:
        raise UsageError(f"keygen: {error}") from None
    print(f"public key  {public_file}   (give it to the other end: --allow on a receiver, --server-key on a sender)")
    print(f"secret key  {secret_file}   (keep it here: --key)")
    return EXIT_OK
