"""Imports point one way, also inside functions.

Every module of the project's packages is parsed (never imported) and every ``import x`` /
``from x import y`` anywhere in it is collected: at module level, inside functions and
methods, inside ``try`` blocks. Relative imports are resolved against the importing module.
Imports under ``if TYPE_CHECKING:`` are ignored: they never run, and annotations may name a
higher layer's types. ``importlib.import_module("...")`` with a string is not an import edge:
that is how a registry names an implementation without depending on it.

Three rules, each violation listed with ``file:line``:

- layers: ``search_spaces <- experts <- router <- nas <- benchmarks``; a module may import its
  own layer and the layers to its left, never one to its right;
- no cycles between the sub-modules of one package: inside every package ``P`` the modules and
  sub-packages ``P.<child>`` are grouped (``nas.search.*`` is one node, ``nas.ray_backend.*``
  another) and the graph of imports between groups must be acyclic; the package's own
  ``__init__`` is not a node (it gathers its children's names for users);
- the CLI is the top of ``nas``: only the CLI modules (:data:`CLI_MODULES`) import ``nas.cli``
  or ``nas.commands``.
"""

from __future__ import annotations

import ast
import fnmatch
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The layers, lowest first: a module may import its own layer and the ones before it.
LAYERS = ("search_spaces", "experts", "router", "nas", "benchmarks")

#: The CLI's own modules (and the modules of benchmarks that register commands with it).
CLI_MODULES = ("nas.cli", "nas.cli.*", "nas.__main__", "nas.commands", "nas.commands.*",
               "benchmarks.cli", "benchmarks.cli.*", "benchmarks.commands", "benchmarks.commands.*")
CLI_TARGETS = ("nas.cli", "nas.commands")


@dataclass(frozen=True)
class Edge:
    """One import statement: ``source`` (module) imports ``target`` (module) at ``file:line``."""

    source: str
    target: str
    file: str
    line: int

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    found: dict[str, Path] = {}
    for pkg in packages:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module at any depth, except under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return sorted(out, key=lambda n: n.lineno)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module ``from <...> import`` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(root: Path, packages: tuple[str, ...] = LAYERS) -> list[Edge]:
    """Every import between modules of ``packages`` found in their source."""
    modules = module_files(root, packages)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(root))
        is_package = path.name == "__init__.py"
        for node in _import_nodes(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(node, module, is_package)
                # ``from pkg import sub`` imports the module ``pkg.sub`` when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in dict.fromkeys(targets):
                if target.split(".")[0] in packages:
                    edges.append(Edge(module, target, rel, node.lineno))
    return edges


def layer_violations(edges: list[Edge], layers: tuple[str, ...] = LAYERS) -> list[str]:
    """Imports from a lower layer into a higher one."""
    rank = {name: i for i, name in enumerate(layers)}
    out = []
    for e in edges:
        src, dst = e.source.split(".")[0], e.target.split(".")[0]
        if rank[dst] > rank[src]:
            out.append(f"{e.where()}: {e.source} imports {e.target} ({src} is below {dst})")
    return out


def _group(module: str, package: str) -> str | None:
    """The child of ``package`` that ``module`` belongs to (None: outside, or the package itself)."""
    if not module.startswith(package + "."):
        return None
    return package + "." + module[len(package) + 1:].split(".")[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def cycle_violations(edges: list[Edge], modules: set[str]) -> list[str]:
    """Cycles between the children of each package; lists the imports that form each one."""
    packages = {m.rsplit(".", 1)[0] for m in modules if "." in m} | {m.split(".")[0] for m in modules}
    out = []
    for package in sorted(packages):
        graph: dict[str, set[str]] = defaultdict(set)
        where: dict[tuple[str, str], list[Edge]] = defaultdict(list)
        for e in edges:
            a, b = _group(e.source, package), _group(e.target, package)
            if a is None or b is None or a == b:
                continue
            graph[a].add(b)
            where[(a, b)].append(e)
        for comp in _cycles(graph):
            members = set(comp)
            lines = [f"cycle in {package}: {' <-> '.join(comp)}"]
            for (a, b), found in sorted(where.items()):
                if a in members and b in members:
                    lines += [f"    {e.where()}: {e.source} imports {e.target}" for e in found]
            out.append("\n".join(lines))
    return out


def cli_violations(edges: list[Edge]) -> list[str]:
    """Imports of the CLI (``nas.cli``, ``nas.commands``) from outside it."""
    out = []
    for e in edges:
        hits_cli = any(e.target == t or e.target.startswith(t + ".") for t in CLI_TARGETS)
        if hits_cli and not any(fnmatch.fnmatchcase(e.source, p) for p in CLI_MODULES):
            out.append(f"{e.where()}: {e.source} imports the CLI ({e.target})")
    return out


def all_violations(root: Path, packages: tuple[str, ...] = LAYERS) -> dict[str, list[str]]:
    """Every violation of the three rules, by rule."""
    edges = import_edges(root, packages)
    modules = set(module_files(root, packages))
    return {
        "upward imports": layer_violations(edges, packages),
        "cycles": cycle_violations(edges, modules),
        "imports of the CLI": cli_violations(edges),
    }


def _report(violations: dict[str, list[str]]) -> str:
    parts = []
    for rule, found in violations.items():
        if found:
            parts.append(f"{rule} ({len(found)}):\n" + "\n".join(f"  {v}" for v in found))
    return "\n".join(parts)


def test_imports_point_one_way_without_cycles():
    violations = all_violations(REPO)
    if any(violations.values()):
        pytest.fail("\n" + _report(violations), pytrace=False)


# ------------------------------------------------------------ the checker itself can fail


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_catches_a_function_level_upward_import_a_cycle_and_a_cli_import(tmp_path):
    layers = ("low", "high")
    _write(tmp_path, "low/__init__.py", "")
    _write(tmp_path, "low/a.py", "import os\n\ndef f():\n    from high.x import g\n    return g\n")
    _write(tmp_path, "low/b/__init__.py", "from ..c import h\n")  # relative, resolved to low.c
    _write(tmp_path, "low/c.py", "def h():\n    from low.b import sub\n")
    _write(tmp_path, "low/b/sub.py", "")
    _write(tmp_path, "low/typed.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import high\n")
    _write(tmp_path, "high/__init__.py", "")
    _write(tmp_path, "high/x.py", "from low import a\n\ndef g():\n    pass\n")
    violations = all_violations(tmp_path, layers)
    assert violations["upward imports"] == ["low/a.py:4: low.a imports high.x (low is below high)"]
    assert violations["cycles"] == [
        "cycle in low: low.b <-> low.c\n"
        "    low/b/__init__.py:1: low.b imports low.c\n"
        "    low/c.py:2: low.c imports low.b.sub"
    ]
    assert violations["imports of the CLI"] == []


def test_checker_flags_a_library_module_importing_the_cli(tmp_path):
    _write(tmp_path, "nas/__init__.py", "")
    _write(tmp_path, "nas/cli.py", "from nas import commands\n")
    _write(tmp_path, "nas/commands/__init__.py", "")
    _write(tmp_path, "nas/commands/run.py", "import nas.cli\n")
    _write(tmp_path, "nas/pipeline.py", "def go():\n    from nas.commands.run import x\n")
    found = all_violations(tmp_path, ("nas",))["imports of the CLI"]
    assert found == ["nas/pipeline.py:2: nas.pipeline imports the CLI (nas.commands.run)"]
