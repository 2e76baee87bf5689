"""Architecture rules, checked on the import statements of ``src/tcpverbs``.

Every ``import``/``from ... import`` in the tree is read with :mod:`ast` -- at module level
and inside functions and methods alike, since a lazy import is still a runtime dependency.
Imports under ``if TYPE_CHECKING:`` are for annotations only and make no runtime edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TOP = "tcpverbs"

#: standard-library modules that do network I/O (``asyncio`` is a whole I/O framework).
SOCKET_MODULES = frozenset({"socket", "select", "selectors"})
IO_MODULES = SOCKET_MODULES | {"asyncio"}

#: the verbs objects: they validate and hold state, an engine does the I/O.
VERBS = ("tcpverbs.context", "tcpverbs.pd", "tcpverbs.mr", "tcpverbs.cq", "tcpverbs.qp")

#: the engines: the pure-Python engine and the interface every engine implements.
ENGINES = ("tcpverbs.engine.py", "tcpverbs.engine.api")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """What relative imports resolve against (``__package__``)."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Edge:
    """One runtime import: *importer* depends on *target* (an absolute module name)."""

    importer: str
    target: str
    path: Path
    lineno: int
    statement: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: `{self.statement}` -> {self.target}"


# -- scanning ----------------------------------------------------------------------------


def find_modules(src: Path, top: str) -> dict[str, Module]:
    """Every module of package *top* under *src*, by dotted name."""
    modules: dict[str, Module] = {}
    for path in sorted((src / top).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package)
    return modules


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """All import statements under *node*, at any depth, except those only type checkers see."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    if isinstance(node, ast.If) and is_type_checking(node.test):
        children: Iterable[ast.AST] = node.orelse  # the ``else:`` branch does run
    else:
        children = ast.iter_child_nodes(node)
    for child in children:
        yield from runtime_imports(child)


def resolve_base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute name of ``from <this> import ...`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    bits = module.package.rsplit(".", node.level - 1)
    assert len(bits) == node.level, f"{module.path}:{node.lineno}: relative import beyond top"
    base = bits[0]
    return f"{base}.{node.module}" if node.module else base


def import_targets(
    module: Module, node: ast.Import | ast.ImportFrom, modules: dict[str, Module]
) -> list[str]:
    """The modules one import statement depends on.

    ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg``.
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = resolve_base(module, node)
    targets: list[str] = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        target = sub if sub in modules else base
        if target not in targets:
            targets.append(target)
    return targets


def collect_edges(src: Path, top: str) -> tuple[dict[str, Module], list[Edge]]:
    """Every module of *top* and every runtime import edge out of it (stdlib ones too)."""
    modules = find_modules(src, top)
    edges: list[Edge] = []
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), filename=str(module.path))
        rel = module.path.relative_to(src.parent)
        for node in runtime_imports(tree):
            statement = ast.unparse(node)
            for target in import_targets(module, node, modules):
                edges.append(Edge(module.name, target, rel, node.lineno, statement))
    return modules, edges


# -- the dependency graph ----------------------------------------------------------------


def is_under(name: str, prefix: str) -> bool:
    """*name* is module *prefix* or one of its submodules."""
    return name == prefix or name.startswith(prefix + ".")


def is_reexport(modules: dict[str, Module], edge: Edge) -> bool:
    """A package ``__init__`` importing one of its own descendants."""
    importer = modules[edge.importer]
    return importer.is_package and edge.target.startswith(importer.name + ".")


def counts_in_graph(modules: dict[str, Module], edge: Edge) -> bool:
    """An import between two modules of the tree, not a self-import nor a re-export."""
    return (
        edge.target in modules and edge.target != edge.importer and not is_reexport(modules, edge)
    )


def dependency_graph(modules: dict[str, Module], edges: Iterable[Edge]) -> dict[str, set[str]]:
    """Module -> the modules that must run first.

    Runtime imports between modules of the tree, plus each module's parent package (a
    package's ``__init__`` runs before any of its submodules); a package re-exporting its
    children is not an edge, since that order is the one the parent edge already implies.
    """
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name in modules:
        parent = name.rpartition(".")[0]
        if parent in modules:
            graph[name].add(parent)
    for edge in edges:
        if counts_in_graph(modules, edge):
            graph[edge.importer].add(edge.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_cycle(component: list[str], modules: dict[str, Module], edges: list[Edge]) -> str:
    """The modules of one cycle and the imports (or parent edges) that bind them."""
    members = set(component)
    lines = [" -> ".join(component)]
    for edge in edges:
        if edge.importer in members and edge.target in members and counts_in_graph(modules, edge):
            lines.append(f"    {edge}")
    for name in component:
        parent = name.rpartition(".")[0]
        if parent in members:
            lines.append(f"    {name} -> {parent} (parent package runs first)")
    return "\n".join(lines)


def listing(bad: Iterable[Edge]) -> str:
    """One offending import per line, with its file and line."""
    return "\n".join(f"  {edge}" for edge in bad)


# -- the rules ---------------------------------------------------------------------------

MODULES, EDGES = collect_edges(SRC, TOP)


def test_the_scanner_sees_the_tree() -> None:
    """The rules below pass vacuously if the scan finds nothing; make sure it does not."""
    assert {"tcpverbs", "tcpverbs.engine.api", "tcpverbs.wire.frames"} <= MODULES.keys()
    assert any(edge.importer == "tcpverbs.qp" for edge in EDGES)


def test_no_import_cycles() -> None:
    """A cycle makes the import order decide which module sees the other half-initialised;
    layers must form a DAG so any module can be imported first."""
    graph = dependency_graph(MODULES, EDGES)
    found = cycles(graph)
    report = "\n".join(describe_cycle(c, MODULES, EDGES) for c in found)
    assert not found, f"import cycles among tcpverbs modules:\n{report}"


def test_engines_do_not_import_the_layers_above() -> None:
    """An engine implements ``engine.api`` and knows nothing of the verbs objects, the
    connection manager, the out-of-band service or the tools built on top, so another
    engine can replace it and the verbs layer can be tested against a fake."""
    forbidden = (
        *VERBS,
        "tcpverbs._base",
        "tcpverbs.cm",
        "tcpverbs.oob",
        "tcpverbs.testing",
        "tcpverbs.perf",
        "tcpverbs.cli",
        "tcpverbs.demo",
    )
    bad = [
        edge
        for edge in EDGES
        if any(is_under(edge.importer, e) for e in ENGINES)
        and any(is_under(edge.target, f) for f in forbidden)
    ]
    assert not bad, "engines import the layers above them:\n" + listing(bad)


def test_verbs_objects_only_see_the_engine_interface() -> None:
    """The verbs objects validate arguments and hold state; they reach an engine only
    through the chooser (``tcpverbs.engine``) and the interface (``tcpverbs.engine.api``),
    and do no I/O themselves, so no engine internals or sockets leak into them."""
    allowed_engine = {"tcpverbs.engine", "tcpverbs.engine.api"}
    bad = [
        edge
        for edge in EDGES
        if edge.importer in VERBS
        and (
            (is_under(edge.target, "tcpverbs.engine") and edge.target not in allowed_engine)
            or edge.target.partition(".")[0] in IO_MODULES
        )
    ]
    assert not bad, "verbs objects reach past the engine interface:\n" + listing(bad)


#: the modules that may touch sockets (import ``socket``, ``select`` or ``selectors``).
SOCKET_USERS = (
    "tcpverbs.engine.py",
    "tcpverbs.engine.native",  # takes the socket's descriptor over to the C engine
    "tcpverbs.engine.zerocopy",  # both engines' policy: reads a socket's two addresses
    "tcpverbs.oob",
    "tcpverbs.cm",
    "tcpverbs.reactor",
    "tcpverbs.testing",
    "tcpverbs.device",  # needs the address-family constants to read interface addresses
    "tcpverbs.perf",
    "tcpverbs.cli",
    "tcpverbs.demo",
    # imports ``socket`` at runtime only to annotate ``QPEngine.attach(sock: socket.socket)``
    "tcpverbs.engine.api",
)


def test_only_the_io_layers_touch_sockets() -> None:
    """design.md §3: verbs objects validate and hold state; engines, the reactor, the
    out-of-band service, the connection manager and the tools do I/O.  Keeping sockets out
    of everything else keeps those modules testable without a network."""
    bad = [
        edge
        for edge in EDGES
        if edge.target.partition(".")[0] in SOCKET_MODULES
        and not any(is_under(edge.importer, m) for m in SOCKET_USERS)
    ]
    assert not bad, "modules outside the I/O layers touch sockets:\n" + listing(bad)


def test_wire_is_sans_io_and_self_contained() -> None:
    """``tcpverbs.wire`` encodes and decodes bytes only (sans-IO), so it is testable with
    plain buffers and reusable by any engine; it may lean on nothing of tcpverbs but the
    error types and the enums."""
    allowed = ("tcpverbs.wire", "tcpverbs.errors", "tcpverbs.enums")
    bad = [
        edge
        for edge in EDGES
        if is_under(edge.importer, "tcpverbs.wire")
        and (
            edge.target.partition(".")[0] in IO_MODULES
            or (is_under(edge.target, TOP) and not any(is_under(edge.target, a) for a in allowed))
        )
    ]
    assert not bad, "tcpverbs.wire does I/O or imports outside itself:\n" + listing(bad)


# -- the checker itself ------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_cycle_checker_can_fail(tmp_path: Path) -> None:
    """A checker that never fails proves nothing: on a synthetic tree it must find a real
    cycle (through a function-level import), and must not count a package re-exporting
    its child nor an import made only for type checking."""
    write(
        tmp_path,
        {
            # re-export of a child: child -> toy (parent) only, no cycle
            "toy/__init__.py": "from .child import Thing\n",
            "toy/child.py": "Thing = 1\n",
            # a real cycle: a -> b at module level, b -> a inside a function
            "toy/a.py": "from . import b\n",
            "toy/b.py": "def f():\n    from .a import g\n    return g\n",
            # c -> d only for annotations: no runtime edge, no cycle
            "toy/c.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from .d import D\n"
                "else:\n"
                "    import socket\n"
            ),
            "toy/d.py": "from toy.c import C\n",
        },
    )
    modules, edges = collect_edges(tmp_path, "toy")
    assert set(modules) == {"toy", "toy.child", "toy.a", "toy.b", "toy.c", "toy.d"}
    pairs = {(edge.importer, edge.target) for edge in edges}
    # relative imports resolve against the package (for __init__, the package itself)
    assert ("toy", "toy.child") in pairs
    assert ("toy.a", "toy.b") in pairs
    assert ("toy.b", "toy.a") in pairs
    assert ("toy.d", "toy.c") in pairs
    # the else-branch of TYPE_CHECKING runs; its body does not
    assert ("toy.c", "socket") in pairs
    assert ("toy.c", "toy.d") not in pairs

    graph = dependency_graph(modules, edges)
    assert "toy.child" not in graph["toy"]
    assert graph["toy.child"] == {"toy"}
    assert cycles(graph) == [["toy.a", "toy.b"]]
    report = describe_cycle(["toy.a", "toy.b"], modules, edges)
    assert "toy/b.py:2" in report
    assert "toy/a.py:1" in report

    # without the re-export exemption the package/child pair would be a cycle too
    graph["toy"].add("toy.child")
    assert cycles(graph) == [["toy", "toy.child"], ["toy.a", "toy.b"]]
