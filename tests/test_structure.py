"""The code's shape, held: no class in emulator/ over 300 lines, and no modules that import each other in a circle."""

import ast
from pathlib import Path

EMULATOR = Path(__file__).resolve().parent.parent / "emulator"
MAX_CLASS_LINES = 300


def modules():
    """{dotted name: parsed tree} of every module of the emulator package."""
    found = {}
    for path in sorted(EMULATOR.rglob("*.py")):
        parts = path.relative_to(EMULATOR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def imports(tree, known):
    """The emulator modules `tree` imports, at any depth (a function's import counts too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emulator"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known}
            if node.module in known and node.module != "emulator":
                found.add(node.module)
    return found


def circle(graph):
    """One import circle of `graph` ({module: modules it imports}) as a list of modules, or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state:
                found = visit(imported, path + [imported])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_no_class_in_emulator_is_over_300_lines():
    too_long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
                for name, tree in modules().items() for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert not too_long, f"classes over {MAX_CLASS_LINES} lines: {too_long}"


def test_no_modules_of_emulator_import_each_other_in_a_circle():
    trees = modules()
    graph = {name: imports(tree, trees) - {name} for name, tree in trees.items()}
    assert circle(graph) is None, f"an import circle: {' -> '.join(circle(graph))}"


def test_the_checks_find_what_they_look_for():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("import emulator.x\nfrom emulator import y\ndef f():\n    from emulator.z import w\n")
    assert imports(tree, {"emulator.x", "emulator.y", "emulator.z"}) == {"emulator.x", "emulator.y", "emulator.z"}
