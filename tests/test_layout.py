"""The package layout: every import points down the layers, no private name crosses a
module, and every file stays readable in one sitting."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mobilegen"

# Bottom to top: a module may import its own package and any package listed before it.
# Lazy imports (inside a function) count too: they are still a dependency.
LAYERS = ("errors", "files", "diffusion", "contract", "models", "runtime", "compress", "export", "verify",
          "jobs", "train", "serve", "cli", "__main__")  # fmt: skip
MAX_LINES = 400


def unit(module: str) -> str:
    """The layer a module belongs to: its package below mobilegen/, or the root module's name."""
    return module.split(".")[1] if "." in module else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names imported from it) for every mobilegen import in the file."""
    tree, found = ast.parse(path.read_text()), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mobilegen" and not node.level:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "mobilegen"]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def edges() -> list[tuple[str, str, str]]:
    """(importing module, imported module, where) over the package."""
    out = []
    for path in SOURCES:
        here = module_name(path)
        for line, target, names in imports(path):
            if target == "mobilegen":  # `from mobilegen import pipeline`
                out += [(here, f"mobilegen.{n}", f"{path.name}:{line}") for n in names]
            else:
                out.append((here, target, f"{path.name}:{line}"))
    return out


def test_every_layer_is_known():
    units = {unit(module_name(p)) for p in SOURCES} - {"__init__"}
    assert units <= set(LAYERS), units - set(LAYERS)


def test_every_import_points_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [f"{where}: {a} imports {b}" for a, b, where in edges()
              if unit(b) != "__init__" and unit(a) != "__init__" and rank[unit(b)] > rank[unit(a)]]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges():
        if unit(a) != unit(b):
            graph.setdefault(unit(a), set()).add(unit(b))
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt) :] + [node, nxt]) if nxt in trail else f"{node} -> {nxt}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


ROOT = PACKAGE.parent
# Python outside the package that uses it: scripts/ (install.sh only, today) and the recorded
# commands of docs/measurements/<run>/. They use public names only, like another package would.
TOOLS = sorted([*(ROOT / "scripts").glob("*.py"), *(ROOT / "docs" / "measurements").glob("*/*.py")])


def test_no_private_name_is_imported_from_another_module():
    private = [f"{path.relative_to(ROOT)}:{line}: {b}.{n}" for path in SOURCES + TOOLS for line, b, names in imports(path)
               for n in names if n.startswith("_")]  # fmt: skip
    assert not private, "\n".join(private)


def test_scripts_holds_only_the_installer():
    """Tools are commands of the CLIs (tested there); experiments live beside their measurement."""
    assert sorted(p.name for p in (ROOT / "scripts").iterdir()) == ["install.sh"]


def test_the_recorded_commands_are_seen():
    assert {p.parent.name for p in TOOLS} >= {"fidelity-cpu", "int8-cpu", "serve-h200"}, TOOLS


def test_no_private_attribute_of_another_module_is_used():
    """`module._name` where module is an imported mobilegen module."""
    found = []
    for path in SOURCES + TOOLS:
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.module or "").startswith("mobilegen") for a in node.names}  # fmt: skip
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):  # fmt: skip
                found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a fake package with runtime importing export, and export importing runtime."""
    fake = tmp_path / "mobilegen"
    (fake / "runtime").mkdir(parents=True)
    (fake / "export").mkdir()
    (fake / "runtime" / "a.py").write_text("from mobilegen.export.b import f\n")
    (fake / "export" / "b.py").write_text("def f():\n    from mobilegen.runtime.a import g\n")
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", sorted(fake.rglob("*.py")))
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match="runtime.a imports mobilegen.export.b"):
        test_every_import_points_down_the_layers()
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle_between_packages()


def test_every_file_is_readable_in_one_sitting():
    long = {str(p.relative_to(PACKAGE)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_sys_exit_below_the_cli_group():
    """Only the group's error handler (cli/core.py) ends the process: commands raise, the
    pipeline raises GateError, and the group maps both to exit codes."""
    found = []
    for path in SOURCES:
        if path.relative_to(PACKAGE).as_posix() == "cli/core.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = node.func if isinstance(node, ast.Call) else None
            if isinstance(call, ast.Attribute) and call.attr == "exit" and isinstance(call.value, ast.Name) and call.value.id == "sys":
                found.append(f"{path.name}:{node.lineno}: sys.exit")
            if isinstance(node, ast.Raise) and isinstance(node.exc, (ast.Call, ast.Name)) and "SystemExit" in ast.unparse(node.exc):
                found.append(f"{path.name}:{node.lineno}: raise SystemExit")
    assert not found, "\n".join(found)


MAX_FUNCTION_LINES = 60
MAX_FMT_SKIPS = 10


def test_no_function_is_longer_than_a_screen():
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for path in SOURCES for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]  # fmt: skip
    assert not long, "\n".join(long)


def test_the_formatter_is_skipped_only_for_a_few_tables():
    skips = [f"{path.relative_to(PACKAGE)}:{i}" for path in SOURCES for i, line in enumerate(path.read_text().splitlines(), 1)
             if "# fmt: skip" in line]  # fmt: skip
    assert len(skips) <= MAX_FMT_SKIPS, f"{len(skips)} '# fmt: skip' markers:\n" + "\n".join(skips)


def test_every_module_is_imported_by_a_unit_test():
    tests = Path(__file__).resolve().parent
    imported = set()
    for path in tests.rglob("*.py"):
        for _, target, names in imports(path):
            imported.add(target)
            imported.update(f"{target}.{n}" for n in names)
    modules = {module_name(p) for p in SOURCES if p.name != "__init__.py" and p.name != "__main__.py"}
    missing = sorted(m for m in modules if m not in imported)
    assert not missing, "modules no test imports:\n" + "\n".join(missing)


def test_the_package_is_formatted_by_ruff():
    """One formatter (pyproject.toml's [tool.ruff]); `ruff format mobilegen` fixes a failure."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", str(PACKAGE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
