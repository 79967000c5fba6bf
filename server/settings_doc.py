"""Renders docs/configuration.md from the settings' own field docstrings (server/config.py,
runtime/limits.py), so the reference cannot drift: tests/test_docs.py compares the two.

    python -m server.settings_doc > docs/configuration.md
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    ("Server (`server.config.Settings`)", ROOT / "server" / "config.py", "Settings"),
    ("Sandbox limits (`runtime.Limits`, the server's `limits` setting)", ROOT / "runtime" / "limits.py", "Limits"),
    (
        "Fetch policy (`runtime.FetchPolicy`, the server's `fetch` setting)",
        ROOT / "runtime" / "limits.py",
        "FetchPolicy",
    ),
]
FLAGS = {
    "database": "`--data-dir`, `$STATEHOST_DATA_DIR` (the file is `<data-dir>/statehost.db`)",
    "database_url": "`--database-url`, `$STATEHOST_DATABASE_URL`",
    "db_pool_size": "`--db-pool-size`, `$STATEHOST_DB_POOL_SIZE`",
    "node_id": "`--node-id`, `$STATEHOST_NODE_ID`",
    "lease_ttl_s": "`--lease-ttl-s`",
    "synchronous": "`--synchronous`",
    "workers": "`--workers`",
    "engine": "`--engine`, `$STATEHOST_ENGINE`",
    "parked_sandboxes": "`--parked-sandboxes`, `$STATEHOST_PARKED_SANDBOXES`",
    "parked_memory_mb": "`--parked-memory-mb`, `$STATEHOST_PARKED_MEMORY_MB`",
    "host": "`--host`, `$STATEHOST_HOST`",
    "port": "`--port`, `$STATEHOST_PORT`",
    "public_url": "`--public-url`, `$STATEHOST_PUBLIC_URL`",
    "bootstrap_file": "`--data-dir`, `$STATEHOST_DATA_DIR` (`<data-dir>/admin.json`)",
    "allow_private": "`--allow-private-fetch`",
    "settle_window_ms": "`--settle-window-ms`",
    "cpu_ms": "`--cpu-ms`",
}


def _fields(path: Path, class_name: str) -> list[tuple[str, str, str]]:
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    rows: list[tuple[str, str, str]] = []
    body = cls.body
    for index, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        default = ast.unparse(node.value) if node.value is not None else ""
        if default.startswith("field(default_factory="):
            default = default.removeprefix("field(default_factory=").removesuffix(")") + "()"
        doc = ""
        following = body[index + 1] if index + 1 < len(body) else None
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            doc = " ".join(str(following.value.value).split())
        rows.append((node.target.id, default, doc))
    return rows


def render() -> str:
    out = [
        "# Configuration",
        "",
        "Generated from the settings' field docstrings by `python -m server.settings_doc`; a test fails",
        "when this file and the code disagree. `statehost serve --help` lists the command-line flags.",
        "",
    ]
    for title, path, class_name in SOURCES:
        out += [f"## {title}", "", "| Setting | Default | Flag, environment | Meaning |", "|---|---|---|---|"]
        for name, default, doc in _fields(path, class_name):
            flag = FLAGS.get(name, "")
            out.append(f"| `{name}` | `{default}` | {flag} | {doc.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
