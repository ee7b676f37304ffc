"""The `precopy` commands, one module each (or one per small family), beneath emulator.shell.cli.

Each module has ``add_parser(subparsers)``, which adds its command's parser (migrate adds
send and check too, status adds set), and ``run(args) -> int``, which runs a parsed
command line and returns its exit status. What they share is in common.py; how values are
read, in emulator.shell.readers; the run options, in emulator.shell.run_options.
"""
