"""The data walks one way: no import circles, and the pure modules import no I/O module.

Every ``import`` counts, the ones inside functions too (a lazy import is still a
dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "kpr_omprog"
PURE = {"netconsole", "assembler", "coverage", "crash", "titles", "frames", "ratelimit", "event", "hooks", "logs",
        "capture", "netconsole_script", "symbolize"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def imports_of(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports."""
    name = module_name(path)
    if path.name == "__init__.py":
        package = [] if name == "__init__" else name.split(".")
    else:
        package = name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            if node.module is None:  # from . import x
                out.update(".".join([*target, a.name]) for a in node.names)
            else:
                out.add(".".join(target))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kpr_omprog"):
            out.add(node.module.removeprefix("kpr_omprog").lstrip(".") or "__init__")
    known = {module_name(p) for p in PKG.rglob("*.py")}
    return {m if m in known else f"{m}.__init__" if f"{m}.__init__" in known else m for m in out} & known


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)} for p in PKG.rglob("*.py")}


def test_no_import_circles() -> None:
    g = graph()
    seen: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if seen.get(m) == 1:
            raise AssertionError("import circle: " + " -> ".join([*path, m]))
        if seen.get(m) == 2:
            return
        seen[m] = 1
        for d in sorted(g.get(m, ())):
            if d != "__init__":  # the package's face imports everything; nothing imports it back
                visit(d, [*path, m])
        seen[m] = 2

    for m in sorted(g):
        visit(m, [])


def test_pure_modules_import_only_pure_modules() -> None:
    g = graph()
    for m in PURE:
        assert g[m] <= PURE | {"__init__"} - {"__init__"}, f"{m} imports {sorted(g[m] - PURE)}"
