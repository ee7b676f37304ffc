#!/usr/bin/env python3
"""Write docs/options.md, the reference of every `precopy` option, from the command line's own parser.

The source of truth is `emulator.shell.cli.build_parser()`: its subcommands, their argument groups and
actions (option strings, metavar, choices, default, help). The run options of migrate, send,
check, drain, estimate and sweep come into that parser from the OPTIONS table of
emulator/shell/run_options.py, so the reference follows the table too. tests/test_docs.py renders
the reference in memory and fails when docs/options.md differs:

    python scripts/options_reference.py            # rewrite docs/options.md
    python scripts/options_reference.py --check    # exit 1 if docs/options.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulator.shell.cli import build_parser

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "options.md"

HEADER = """\
# Option reference

Every option of every `precopy` command, generated from the command line's own parser
(`build_parser()` in `emulator/shell/cli.py`; the run options of `migrate`, `send`, `check`,
`drain`, `estimate` and `sweep` come from the `OPTIONS` table in `emulator/shell/run_options.py`)
by `python scripts/options_reference.py`. Do not edit it by hand: `tests/test_docs.py`
fails when this file and the parser differ. The [guide](guide.md) explains the options in
context, and how values are written (sizes, rates and durations with their units) is under
[Options](guide.md#options). Every command also takes `-h`/`--help`.
"""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order `precopy --help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            return [(name, helps.get(name) or "", sub) for name, sub in action.choices.items()]
    return []


def _cell(text: str) -> str:
    """`text` as one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _help(action: argparse.Action, prog: str) -> str:
    """The action's help with argparse's %-expansion done (%% -> %, %(default)s ...), as --help prints it."""
    if not action.help or action.help is argparse.SUPPRESS:
        return ""
    params = {key: value for key, value in vars(action).items() if value is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(choice) for choice in params["choices"])
    return action.help % params


def _value(action: argparse.Action) -> str:
    """What the argument takes: its choices, its metavar, nothing for a flag; how many for a positional."""
    if not action.option_strings:
        return {"?": "optional", "*": "any number", "+": "one or more"}.get(action.nargs, "required")
    if action.nargs == 0:
        return "(required)" if action.required else ""
    shown = "|".join(str(choice) for choice in action.choices) if action.choices is not None else action.metavar
    shown = f"`{shown or action.dest.upper()}`" + (" ..." if action.nargs in ("+", "*") else "")
    return shown + (" (required)" if action.required else "")


def _meaning(action: argparse.Action, prog: str) -> str:
    text = _help(action, prog)
    default = action.default
    if (default not in (None, False, argparse.SUPPRESS, []) and action.nargs != 0
            and "default" not in text and not isinstance(action, argparse._VersionAction)):
        text += f" (default {default})"
    if isinstance(action, argparse._AppendAction) and "repeat" not in text:
        text += " (repeatable)"
    return text


def _rows(actions: list[argparse.Action], prog: str) -> list[str]:
    first = "option" if actions[0].option_strings else "argument"
    rows = [f"| {first} | value | meaning |", "|---|---|---|"]
    for action in actions:
        name = ", ".join(f"`{option}`" for option in action.option_strings) or f"`{action.metavar or action.dest}`"
        rows.append(f"| {name} | {_cell(_value(action))} | {_cell(_meaning(action, prog))} |")
    return rows


def _shown(action: argparse.Action) -> bool:
    return not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))


def _command(name: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `{parser.prog}`", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    elif summary:
        lines += [summary[:1].upper() + summary[1:] + ".", ""]
    for group in parser._action_groups:
        actions = [action for action in group._group_actions if _shown(action)]
        if not actions:
            continue
        title = {"positional arguments": "arguments", "options": "options",
                 "optional arguments": "options"}.get(group.title, group.title)
        lines += [f"### {parser.prog}: {title}", "", *_rows(actions, parser.prog), ""]
    for exclusive in parser._mutually_exclusive_groups:
        names = ", ".join(f"`{action.option_strings[0]}`" for action in exclusive._group_actions)
        lines += [("One of " + names + " is required." if exclusive.required else "At most one of " + names + "."),
                  ""]
    return lines


def render() -> str:
    """docs/options.md as the parser stands now."""
    parser = build_parser()
    commands = _subcommands(parser)
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    lines += [f"| [`precopy {name}`](#precopy-{name}) | {_cell(summary)} |" for name, summary, _ in commands]
    lines += ["", *_command("", "", parser)]
    for name, summary, sub in commands:
        lines += _command(name, summary, sub)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/options.md from the precopy command line's parser.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/options.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else None
    if args.check:
        if current != text:
            print(f"{REFERENCE} is out of date: run `python scripts/options_reference.py`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(text, encoding="utf-8")
        print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
