"""The `precopy` command line: parses arguments and calls the library."""

import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(prog="precopy", description="Emulate live-migration memory pre-copy.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def main(argv=None):
    """Run the command line; return the process exit status."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
