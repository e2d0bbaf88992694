"""The import structure of the `ledgerx` package: no import circles, no function-level imports that
would hide one, and a domain that knows nothing of the web and GraphQL layers (issue #13, item 6).

The graph is read from the source (ast), so it sees every import, also those inside functions,
and a module that imports `a.b.c` depends on the packages `a.b` too (Python runs their
`__init__`). Imports under `if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ledgerx"

# Function-level imports of ledgerx modules, each with the reason it is not at the top. The CLI
# imports each command's dependencies when the command runs (start-up time of `ledgerx --help`).
LAZY_ALLOWED: dict[tuple[str, str], str] = {
    ("ledgerx.metrics", "ledgerx.domain.health"): "domain modules record metrics: the gauges' refresh reads"
    " domain.health, which would import ledgerx.metrics back through the domain (to move above both)",
}
LAZY_ALLOWED_MODULES = {"ledgerx.cli": "each command imports what it needs when it runs"}

# What the domain must never import: the layers that call it.
WEB_LAYERS = (
    "ledgerx.schema",
    "ledgerx.resolvers",
    "ledgerx.http",
    "ledgerx.app",
    "ledgerx.graphql_schema",
    "ledgerx.graphql_view",
    "ledgerx.ws",
    "ledgerx.context",
    "ledgerx.dataloaders",
    "ledgerx.dashboard",
    "ledgerx.webhooks",
    "ledgerx.middleware",
)


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the ledgerx module imported (the longest module name the import names)
    line: int
    top_level: bool


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def _imports() -> list[Import]:
    found: list[Import] = []
    for module, path in MODULES.items():

        def visit(body: list[ast.stmt], top: bool, module: str = module) -> None:
            for node in body:
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found.extend(Import(module, t, node.lineno, top) for t in _targets(module, node))
                inner = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                for field in ("body", "orelse", "finalbody", "handlers"):
                    sub = getattr(node, field, None)
                    if isinstance(sub, list) and sub and isinstance(sub[0], ast.AST):
                        visit(sub, inner)

        visit(ast.parse(path.read_text()).body, True)
    return found


IMPORTS = _imports()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        graph[imp.source].add(imp.target)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are dependencies too
        # (except the packages the importer itself lives in, which are already running).
        parts = imp.target.split(".")
        for i in range(2, len(parts)):
            package = ".".join(parts[:i])
            if package in MODULES and not imp.source.startswith(package + "."):
                graph[imp.source].add(package)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    circles.append(sorted(group))
    return circles


def test_the_graph_sees_the_package() -> None:
    # A guard for the tests below: a parser that found nothing would find no circle either.
    assert len(MODULES) > 100 and "ledgerx.domain.ledger.apply" in MODULES
    assert any(i.source == "ledgerx.graphql_schema" and i.target.startswith("ledgerx.resolvers.") for i in IMPORTS)


def test_the_circle_finder_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    circles = _circles(_graph())
    listed = "\n".join(f"  {len(c)} modules: {', '.join(c)}" for c in circles)
    assert not circles, f"{len(circles)} import circle(s) among ledgerx modules:\n{listed}"


def test_no_function_level_imports_of_ledgerx_modules() -> None:
    lazy = [
        i
        for i in IMPORTS
        if not i.top_level and i.source not in LAZY_ALLOWED_MODULES and (i.source, i.target) not in LAZY_ALLOWED
    ]
    listed = "\n".join(f"  {MODULES[i.source].relative_to(ROOT)}:{i.line} imports {i.target}" for i in lazy)
    assert not lazy, f"function-level imports of ledgerx modules (import at the top, or say why):\n{listed}"


def test_the_allow_list_names_imports_that_exist() -> None:
    lazy = {(i.source, i.target) for i in IMPORTS if not i.top_level}
    assert set(LAZY_ALLOWED) <= lazy, "an allowed function-level import is gone: drop it from LAZY_ALLOWED"


def test_the_domain_never_imports_the_layers_that_call_it() -> None:
    wrong = [
        i
        for i in IMPORTS
        if i.source.startswith("ledgerx.domain")
        and any(i.target == layer or i.target.startswith(layer + ".") for layer in WEB_LAYERS)
    ]
    listed = "\n".join(f"  {MODULES[i.source].relative_to(ROOT)}:{i.line} imports {i.target}" for i in wrong)
    assert not wrong, f"the domain imports a layer above it:\n{listed}"


def test_the_graphql_types_do_not_import_resolvers() -> None:
    # ledgerx.schema is imported by every resolver; the schema is assembled above both.
    wrong = [i for i in IMPORTS if i.source.startswith("ledgerx.schema") and i.target.startswith("ledgerx.resolvers")]
    assert not wrong, [f"{i.source}:{i.line} imports {i.target}" for i in wrong]


def test_the_graphql_layer_gets_records_not_rows() -> None:
    # The domain hands out plain records (issue #13, item 10): no type, resolver or loader holds an
    # ORM row, so none needs the models (or a session that loaded them).
    graphql_layer = ("ledgerx.schema", "ledgerx.resolvers", "ledgerx.dataloaders", "ledgerx.graphql_schema")
    wrong = [
        f"{MODULES[i.source].relative_to(ROOT)}:{i.line} imports {i.target}"
        for i in IMPORTS
        if i.source.startswith(graphql_layer) and i.target.startswith("ledgerx.db")
    ]
    assert not wrong, wrong
