"""The documents against the code: README.md and docs/*.md.

- docs/options.md is what scripts/options_reference.py renders from the command line's parser now;
- every `precopy ...` command line they show parses with that parser (a renamed option or a
  value the option no longer reads fails here, naming the file, the line and the command);
- README.md is a front page of at most 300 lines that links every document in docs/;
- every relative link points at a file that exists, and a `#anchor` at one of its headings.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from emulator.shell import run_options
from emulator.shell.cli import UsageError, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *DOCS]
REFERENCE = ROOT / "docs" / "options.md"
README_MAX_LINES = 300

# Documented command lines that are meant not to parse: (document, command) -> why. Keep it short;
# an entry whose command parses again fails the test, so the list cannot outlive its reason.
MEANT_TO_FAIL: dict[tuple[str, str], str] = {}


# reading Markdown ---------------------------------------------------------------------------------
def _split(text: str) -> tuple[list[tuple[int, str]], str]:
    """(code lines as (line number, text), the prose with every code line blanked, line numbers kept).

    Code is a fenced block (```) or an indented one (4 spaces, after a blank line or more code)."""
    code, prose = [], []
    fenced = indented = False
    previous_blank = True
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
            prose.append("")
            previous_blank = False
            continue
        indented = not fenced and line.startswith("    ") and (previous_blank or indented)
        if fenced or indented:
            code.append((number, line))
            prose.append("")
        else:
            prose.append(line)
        previous_blank = not line.strip()
    return code, "\n".join(prose)


def _shell_commands(line: str) -> list[list[str]]:
    """The `precopy` commands of one shell line: split at && ; | & and redirections, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current, redirected = [], [], False
    for token in lexer:
        if set(token) <= set("();<>|&"):
            commands.append(current)
            current, redirected = [], token in (">", ">>", "<")
        elif redirected:  # the file a redirection names
            redirected = False
        else:
            current.append(token)
    commands.append(current)
    return [command for command in commands if command[:1] == ["precopy"]]


_COMMAND_START = re.compile(r"(?:^|[;&|]\s*)precopy(?:\s|$)")
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def _documented_commands(path: Path) -> list[tuple[str, str, bool]]:
    """(where: "file:line", the command line, inline: True for a code span in prose) of a document."""
    name = path.relative_to(ROOT).as_posix()
    code, prose = _split(path.read_text(encoding="utf-8"))
    found = []
    joined, start = "", None
    for number, line in code:
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if start is None:
            start = number
        joined += line
        if joined.endswith("\\"):  # a continued shell line
            joined = joined[:-1] + " "
            continue
        if _COMMAND_START.search(joined):
            found += [(f"{name}:{start}", shlex.join(command), False) for command in _shell_commands(joined)]
        joined, start = "", None
    for match in _INLINE.finditer(prose):
        span = " ".join(match.group(1).replace("\\|", "|").split())
        if re.match(r"precopy(\s|$)", span):
            line = prose.count("\n", 0, match.start()) + 1
            found += [(f"{name}:{line}", shlex.join(command), True) for command in _shell_commands(span)]
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline code and links by their text, lower case, punctuation
    removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    _, prose = _split(path.read_text(encoding="utf-8"))
    anchors, seen = set(), {}
    for line in prose.splitlines():
        heading = re.match(r"#{1,6} (.*)", line)
        if heading:
            slug = _slug(heading.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of each Markdown link and image in a document's prose."""
    _, prose = _split(path.read_text(encoding="utf-8"))
    return [(prose.count("\n", 0, match.start()) + 1, match.group(1)) for match in _LINK.finditer(prose)]


def _relative(target: str) -> bool:
    return not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target)


# the option reference -----------------------------------------------------------------------------
def _options_reference():
    spec = importlib.util.spec_from_file_location("options_reference", ROOT / "scripts" / "options_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_option_reference_is_what_the_parser_says_now():
    expected = _options_reference().render()
    actual = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    if actual != expected:
        diff = "".join(difflib.unified_diff(actual.splitlines(keepends=True), expected.splitlines(keepends=True),
                                            "docs/options.md", "the parser now", n=0))
        pytest.fail("docs/options.md differs from the command line's parser: run "
                    f"`python scripts/options_reference.py`\n{diff[:4000]}")


def test_the_option_reference_lists_every_run_option_under_migrate_and_every_command():
    text = _options_reference().render()
    migrate = text.split("## `precopy migrate`")[1].split("\n## ")[0]
    assert [option.flag for option in run_options.OPTIONS.values() if f"| `{option.flag}` |" not in migrate] == []
    commands = next(action for action in build_parser()._actions if action.choices)
    assert [name for name in commands.choices if f"## `precopy {name}`" not in text] == []


# documented command lines -------------------------------------------------------------------------
COMMANDS = [command for path in DOCUMENTS for command in _documented_commands(path)]
_REQUIRED_MISSING = re.compile(r"the following arguments are required: |one of the arguments .* is required")


def _without_placeholders(parser, argv: list[str]) -> list[str]:
    """`argv` without "..." (options left out) and without an option whose value is its own metavar
    (`--guests N`, `--disk-dir DIR`): the option is still looked up, the placeholder is not read."""
    actions = dict(parser._option_string_actions)
    commands = next(action for action in parser._actions if action.choices and not action.option_strings)
    named = next((token for token in argv if not token.startswith("-")), None)
    if named in commands.choices:
        actions.update(commands.choices[named]._option_string_actions)
    kept, skip = [], False
    for token, following in zip(argv, [*argv[1:], None]):
        if skip:
            skip = False
        elif token == "...":
            pass
        elif token in actions and following is not None and following == actions[token].metavar:
            skip = True
        else:
            kept.append(token)
    return kept


def _parse(command: str) -> None:
    """Parse `precopy ...` as main() does; UsageError says why not."""
    parser = build_parser()
    argv = _without_placeholders(parser, shlex.split(command)[1:])
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:  # --help, --version: a successful parse
            if exit_.code not in (0, None):
                raise UsageError(f"exit status {exit_.code}") from None


def test_the_documents_show_command_lines():
    where = {location.split(":")[0] for location, _, _ in COMMANDS}
    assert {"README.md", "docs/guide.md", "docs/teaching.md"} <= where
    assert sum(1 for _, _, inline in COMMANDS if not inline) >= 20


@pytest.mark.parametrize("where, command, inline", COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_a_documented_command_line_parses(where, command, inline):
    """A code block's command must parse whole. A code span in prose may name a command and some of
    its options (`precopy receive --disk-dir DIR`) without the required ones, which the prose leaves
    out: every option and value it does give must parse."""
    meant = MEANT_TO_FAIL.get((where.split(":")[0], command))
    try:
        _parse(command)
        refused = None
    except UsageError as error:
        refused = str(error)
    if meant is not None:
        assert refused is not None, f"{where}: `{command}` is listed as meant to fail ({meant}) but parses: drop it"
    elif refused is not None and not (inline and _REQUIRED_MISSING.match(refused)):
        pytest.fail(f"{where}: `{command}` does not parse: precopy: error: {refused}", pytrace=False)


# the front page and the links ---------------------------------------------------------------------
def test_the_readme_is_a_front_page():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move text into docs/"


def test_the_readme_links_every_document():
    linked = {(README.parent / target.split("#")[0]).resolve() for _, target in _links(README)
              if _relative(target) and not target.startswith("#")}
    assert DOCS, "no documents in docs/"
    assert [path.relative_to(ROOT).as_posix() for path in DOCS if path.resolve() not in linked] == []


@pytest.mark.parametrize("path", DOCUMENTS, ids=[path.relative_to(ROOT).as_posix() for path in DOCUMENTS])
def test_every_relative_link_resolves(path):
    broken = []
    for line, target in _links(path):
        if not _relative(target):
            continue
        file, _, anchor = target.partition("#")
        destination = (path.parent / file).resolve() if file else path
        if not destination.exists():
            broken.append(f"{path.name}:{line}: {target}: no file {destination.relative_to(ROOT)}")
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(f"{path.name}:{line}: {target}: no heading with anchor #{anchor} in "
                          f"{destination.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(broken)
