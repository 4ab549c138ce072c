"""The package layout of ``src/``: no import cycles, each package imports only downward, and the methods
are laid out like peft's tuners (README: Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The layers, top to bottom: a package may import only from packages listed after it in its own row.
ALLOWED = {
    "src.train": {"src.runtime", "src.methods", "src.tasks", "src.reporting", "src.records", "src.hub"},
    "src.runtime": {
        "src.methods",
        "src.tasks",
        "src.reporting",
        "src.records",
        "src.hub",
        "src.lr_schedule",
        "src.schema",
    },
    "src.methods": {"src.lr_schedule", "src.target_names", "src.registry"},
    "src.tasks": {"src.hub", "src.schema"},
    "src.reporting": {"src.records", "src.target_names", "src.registry"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every ``src`` module that ``path`` imports, at module level or inside a function (a lazy import
    is still a dependency); imports under ``if TYPE_CHECKING`` never run and are skipped."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from src.tasks import classification` imports the submodule, not the package
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found.update(subs or {node.module})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_find_cycle_detects_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_of_sees_lazy_imports_and_skips_type_checking(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import src.b\n"
        "def f():\n    from src import a\n"
    )
    assert imports_of(path, {"src", "src.a", "src.b"}) == {"src.a"}


def test_src_has_no_import_cycle():
    assert find_cycle(graph()) is None


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_every_package_imports_only_downward():
    wrong = []
    for module, targets in graph().items():
        own = package_of(module)
        for target in targets:
            other = package_of(target)
            if other != own and other not in ALLOWED.get(own, set()):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering of README's Layout section: " + ", ".join(sorted(wrong))


METHODS = SRC / "methods"
GROWING = ("triadapt", "increlora")  # the project's own methods: one package each, like peft's tuners
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 80


def test_each_growing_method_is_a_package_like_a_peft_tuner_and_shares_one_package():
    for method in GROWING:
        files = {p.name for p in (METHODS / method).glob("*.py")}
        assert {"__init__.py", "config.py", "layer.py", "model.py", "allocator.py"} <= files, method
        assert not (METHODS / f"{method}.py").exists(), f"{method}: a module beside its package"
    assert (METHODS / "growing" / "__init__.py").is_file()
    assert not (METHODS / "growing.py").exists()


def test_allocators_are_pure_functions():
    """No classes, no torch: the schedule arithmetic is testable without a model."""
    for path in [METHODS / m / "allocator.py" for m in GROWING]:
        tree = ast.parse(path.read_text())
        assert not [n.name for n in tree.body if isinstance(n, ast.ClassDef)], path
        assert "torch" not in imports_of(path, {"torch"}), path


def test_method_and_reporting_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for path in sorted([*METHODS.rglob("*.py"), *(SRC / "reporting").rglob("*.py")]):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(SRC)}: {len(text.splitlines())}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(SRC)}:{node.name}: {lines}")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_target_name_rule_is_written_once():
    """Methods and reporting match module names through src/target_names.py, not their own copies."""
    copies = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.name != "target_names.py" and 'endswith("." + ' in path.read_text()
    ]
    assert not copies, f"suffix-matching rule written outside src/target_names.py: {copies}"


def test_every_method_has_one_registry_entry_and_reporting_reads_it():
    """Adding a method: its module, its YAML and its entry in src/registry.py (label, colour, defaults)."""
    from src.methods.base import METHODS as REGISTERED
    from src.methods.base import register
    from src.registry import ENTRIES
    from src.reporting.figures import METHOD_COLOR
    from src.reporting.tables import DEFAULT_AXES, METHOD_LABEL, METHOD_ORDER

    assert (
        set(REGISTERED)
        == set(ENTRIES)
        == {p.stem for p in (SRC.parent / "configs" / "method").glob("*.yaml")}
    )
    assert METHOD_ORDER == list(ENTRIES)
    assert METHOD_LABEL == {name: e.label for name, e in ENTRIES.items()}
    assert METHOD_COLOR == {name: e.colour for name, e in ENTRIES.items()}
    assert DEFAULT_AXES["triadapt"] == dict(ENTRIES["triadapt"].default_axes)
    with pytest.raises(ValueError, match="no entry in src/registry.py"):
        register("unlisted")
