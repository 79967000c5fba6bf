"""The layer rules of docs/architecture.md, one entry each, checked against the tree.

Layers point one way: server -> runtime -> js_shims (as data); client stands alone. Each rule names
the files it governs (path prefixes), what they must never import or do, the exceptions, and a line
that breaks it: ``test_each_rule_fires_on_a_planted_violation`` plants that line in a module of the
layer and requires the rule to report it, so a rule that silently matches nothing cannot pass.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import runtime

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "server", "client")

SQL_MODULES = ("aiosqlite", "asyncpg", "sqlite3")
WEB_STACK = ("aiohttp", "yarl")
ENGINES = ("quickjs", "wasmtime")
SQL_CALLS = ("execute", "executemany", "fetchall", "fetchone", "relaxed")
SQL_TEXT = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b", re.S)
RUNTIME_CONTRACT = tuple(f"runtime.{name}" for name in runtime.__all__)
STORE_FILES = ("server/store", "server/db.py")
"""The storage layer: server/store.py, the directory's repositories (server/store_*.py), server/db.py."""
STORE_MODULES = ("server.store", *(f"server.{p.stem}" for p in sorted((ROOT / "server").glob("store_*.py"))))


@dataclass(frozen=True)
class Rule:
    layer: tuple[str, ...]
    """The files it governs: path prefixes relative to the repository root."""
    never: tuple[str, ...] = ()
    """Modules (dotted, with everything under them) the layer must not import."""
    unless: tuple[str, ...] = ()
    """Imports allowed although ``never`` covers them (dotted, with everything under them)."""
    calls: tuple[str, ...] = ()
    """Methods the layer must not call (``x.execute(...)``)."""
    attributes: tuple[str, ...] = ()
    """Attributes the layer must not reach (``x.store``)."""
    sql_text: bool = False
    """The layer must not carry SQL statements in its string literals."""
    planted: str = ""
    """A line that breaks the rule."""


# One entry per rule; each "never" of docs/architecture.md's layer table is here.
RULES: dict[str, Rule] = {
    "runtime never imports server, client, web stack, SQL or JWT": Rule(
        ("runtime/",), ("server", "client", *WEB_STACK, *SQL_MODULES, "jwt"), planted="from aiohttp import web"
    ),
    "the store never imports the runtime (but for locating files)": Rule(
        STORE_FILES, ("runtime",), ("runtime.resources",), planted="from runtime import Limits"
    ),
    "routes never import SQL drivers or the database layer": Rule(
        ("server/routes/",), (*SQL_MODULES, "server.db"), planted="from ..db import SqliteDatabase"
    ),
    "routes never run SQL": Rule(
        ("server/routes/",), calls=SQL_CALLS, sql_text=True, planted='await tx.execute("DELETE FROM instances")'
    ),
    "routes never touch the engines": Rule(
        ("server/routes/",),
        ("runtime.engines", "runtime.make_engine", "runtime.QuickJSNativeEngine", "runtime.Engine", *ENGINES),
        planted="from runtime import make_engine",
    ),
    "server imports the runtime only through runtime/__init__": Rule(
        ("server/",), ("runtime",), RUNTIME_CONTRACT, planted="from runtime.settle import drive"
    ),
    "server never imports QuickJS or wasmtime": Rule(("server/",), ENGINES, planted="import wasmtime"),
    "server imports the client only for its commands and the token signer": Rule(
        ("server/",), ("client",), ("client.cli", "client.config", "client.tokens"), planted="from client import api"
    ),
    "client never imports server, runtime or SQL": Rule(
        ("client/",), ("server", "runtime", *SQL_MODULES), planted="from runtime import Limits"
    ),
    "routes reach storage only through services": Rule(
        ("server/routes/",),
        STORE_MODULES,
        attributes=("store",),
        planted="rows = await ENGINE.store.list_orgs()",
    ),
    "routes never reach the node's wiring (one AppKey per service instead)": Rule(
        ("server/routes/",), ("server.engine", "server.app"), planted="from ..engine import DurableEngine"
    ),
    "services never import the web stack, the routes or the wiring": Rule(
        ("server/services/",),
        (*WEB_STACK, "server.routes", "server.app", "server.engine", *SQL_MODULES, "server.db"),
        planted="from aiohttp import web",
    ),
    "the store never imports the web stack, services, routes or the instance layer": Rule(
        STORE_FILES,
        (*WEB_STACK, "server.services", "server.routes", "server.app", "server.engine", "server.instances"),
        planted="from .services import OrgService",
    ),
}


def _module_name(relpath: str) -> str:
    return relpath.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _imports(relpath: str, tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything the module imports; relative imports resolved."""
    package = _module_name(relpath) if relpath.endswith("__init__.py") else _module_name(relpath).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _covers(prefixes: tuple[str, ...], name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(rule: Rule, sources: Mapping[str, str]) -> list[str]:
    """Where the files of ``sources`` (relative path -> text) that the rule governs break it."""
    found = []
    for relpath, text in sorted(sources.items()):
        if not relpath.startswith(rule.layer):
            continue
        tree = ast.parse(text)
        for line, name in _imports(relpath, tree):
            if _covers(rule.never, name) and not _covers(rule.unless, name):
                found.append(f"{relpath}:{line}: imports {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in rule.calls:
                found.append(f"{relpath}:{node.lineno}: calls .{node.func.attr}()")
            elif isinstance(node, ast.Attribute) and node.attr in rule.attributes:
                found.append(f"{relpath}:{node.lineno}: reaches .{node.attr}")
            elif (
                rule.sql_text
                and isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and SQL_TEXT.search(node.value)
            ):
                found.append(f"{relpath}:{node.lineno}: SQL text {node.value[:40]!r}")
    return found


def _tree() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text() for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _a_module_of(layer: tuple[str, ...]) -> str:
    """A path inside the layer for a planted module."""
    prefix = layer[0]
    if prefix.endswith("/"):
        return prefix + "planted_module.py"
    return prefix if prefix.endswith(".py") else prefix + "_planted_module.py"


@pytest.mark.parametrize("name", sorted(RULES))
def test_the_tree_keeps_the_rule(name):
    assert violations(RULES[name], _tree()) == []


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_fires_on_a_planted_violation(name):
    rule = RULES[name]
    path = _a_module_of(rule.layer)
    clean = "from __future__ import annotations\n\nimport json\n"
    planted = f"{clean}\n\nasync def planted(tx, ENGINE):\n    {rule.planted}\n"
    assert violations(rule, {path: clean}) == []
    found = violations(rule, {path: planted})
    assert found and all(f.startswith(f"{path}:") for f in found), found
    # Outside the layer the same line is none of this rule's business.
    assert violations(rule, {"elsewhere/planted_module.py": planted}) == []


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_governs_real_files(name):
    # A layer spelled wrong would govern nothing and pass vacuously.
    layer = RULES[name].layer
    for prefix in layer:
        assert any(p.startswith(prefix) for p in _tree()), prefix


def test_relative_imports_resolve_to_their_module():
    tree = ast.parse("from ..db import Tx\nfrom . import common\nfrom .common import ENGINE\nimport a.b\n")
    assert [n for _, n in _imports("server/routes/orgs.py", tree)] == [
        "server.db.Tx",
        "server.routes.common",
        "server.routes.common.ENGINE",
        "a.b",
    ]
    assert [n for _, n in _imports("server/routes/__init__.py", ast.parse("from .common import X"))] == [
        "server.routes.common.X"
    ]


def test_the_server_rule_allows_exactly_the_runtime_contract():
    rule = RULES["server imports the runtime only through runtime/__init__"]
    fine = {"server/x.py": "from runtime import Limits, resources, run_window\nfrom runtime.resources import root\n"}
    assert violations(rule, fine) == []
    bad = {"server/x.py": "import runtime\nfrom runtime.local import LocalInstance\nfrom runtime import settle\n"}
    assert [v.split(": ", 1)[1] for v in violations(rule, bad)] == [
        "imports runtime",
        "imports runtime.local.LocalInstance",
        "imports runtime.settle",
    ]


@pytest.mark.parametrize(
    "module",
    [
        str(p.relative_to(ROOT).with_suffix("")).replace("/", ".").removesuffix(".__init__")
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p.name != "__main__.py"
    ],
)
def test_every_module_imports_on_its_own(module):
    importlib.import_module(module)
