"""The import rule of docs/architecture.md, checked on the source: each unit imports only units
below it, nothing imports ``flare``, ``demo`` or ``cli`` from below, there is no import cycle,
and library code imports lvtl modules at module top (only the CLI defers them)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lvtl"

#: The stages, lowest first; a unit may import its own package and the units of lower stages.
STAGES = [
    ("lvtl._exports", "lvtl.errors", "lvtl.labels", "lvtl.parallel"),
    ("lvtl.io",),
    ("lvtl.synth", "lvtl.data"),
    ("lvtl.measure",),
    ("lvtl.model",),
    ("lvtl.artifact",),
    ("lvtl.config",),
    ("lvtl.sitecheck",),
    ("lvtl.study",),
    ("lvtl.flare",),
    ("lvtl.demo",),
    ("lvtl.cli",),
    ("lvtl",),  # the package itself: lazy re-exports (lvtl.load_series)
]
RANK = {unit: i for i, units in enumerate(STAGES) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The stage unit a module belongs to: ``lvtl.data.cache`` -> ``lvtl.data``."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    raise AssertionError(f"{module}: not in any stage of docs/architecture.md")


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """``(imported lvtl module, at module top?, line)`` of every import in a file, except
    those under ``if TYPE_CHECKING:`` (annotations only)."""
    tree = ast.parse(path.read_text())
    out = []
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, top, child.lineno) for a in child.names
                           if a.name.split(".")[0] == "lvtl")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1]
                                    + ([base] if base else []))
                if base.split(".")[0] == "lvtl":
                    for a in child.names:  # `from lvtl.io import dicom` imports a module
                        sub = f"{base}.{a.name}"
                        is_module = (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                        out.append((sub if is_module else base, top, child.lineno))
            body_top = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.ClassDef))
            visit(child, body_top)

    visit(tree, True)
    return out


FILES = sorted(ROOT.rglob("*.py"))
GRAPH = {module_name(f): imports(f) for f in FILES}


def test_every_module_is_in_a_stage():
    for module in GRAPH:
        unit_of(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_go_down(module):
    mine = unit_of(module)
    for target, _, line in GRAPH[module]:
        theirs = unit_of(target)
        if theirs == mine:
            continue
        assert RANK[theirs] < RANK[mine], (
            f"{module}:{line} imports {target}: {theirs} is not below {mine} in the stages of "
            "docs/architecture.md")


def test_no_import_cycle():
    edges = {m: {t if t in GRAPH else t.rsplit(".", 1)[0] for t, _, _ in deps} - {m}
             for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            dfs(m)


def test_library_imports_lvtl_at_module_top():
    """Deferred imports of lvtl modules only in the CLI (start-up time, said in its modules)."""
    late = [f"{m}:{line} imports {t} inside a function" for m, deps in GRAPH.items()
            for t, top, line in deps if not top and unit_of(m) != "lvtl.cli"]
    assert not late, late


def test_the_checker_sees_a_violation(tmp_path):
    """The rule can fail: an upward and a deferred import are both found."""
    bad = ROOT / "io" / "_upward_probe.py"
    try:
        bad.write_text("import lvtl.study.results\n\n\ndef f():\n    from lvtl.model import x\n")
        deps = imports(bad)
        assert ("lvtl.study.results", True, 1) in deps
        assert ("lvtl.model", False, 5) in deps
        assert RANK[unit_of("lvtl.study.results")] > RANK[unit_of(module_name(bad))]
    finally:
        bad.unlink()
