"""The package layout of ``src/``: no import cycles, and each package imports only downward."""

from __future__ import annotations

import ast
from pathlib import Path

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
    "src.methods": {"src.lr_schedule", "src.target_names"},
    "src.tasks": {"src.hub", "src.schema"},
    "src.reporting": {"src.records", "src.target_names"},
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


def test_the_target_name_rule_is_written_once():
    """Methods and reporting match module names through src/target_names.py, not their own copies."""
    copies = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.name != "target_names.py" and 'endswith("." + ' in path.read_text()
    ]
    assert not copies, f"suffix-matching rule written outside src/target_names.py: {copies}"
