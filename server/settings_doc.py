"""Renders docs/configuration.md from the settings themselves, so the reference cannot drift:
the meaning from each field's docstring (server/config.py, runtime/limits.py), the default from its
source text, the flag and environment variable from the field's ``Flag`` (the same ones
``statehost serve`` is built from). tests/test_docs.py compares the file with ``render()``.

    python -m server.settings_doc --write     # or: make docs
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from .config import serve_flags

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


def _fields(path: Path, class_name: str) -> list[tuple[str, str, str]]:
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    rows: list[tuple[str, str, str]] = []
    body = cls.body
    for index, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        default = _default(node.value)
        doc = ""
        following = body[index + 1] if index + 1 < len(body) else None
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            doc = " ".join(str(following.value.value).split())
        rows.append((node.target.id, default, doc))
    return rows


def _default(value: ast.expr | None) -> str:
    """A field's default as written: ``field(default=X, ...)`` is X, ``default_factory=F`` is F()."""
    if value is None:
        return ""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return ast.unparse(keyword.value)
            if keyword.arg == "default_factory":
                return ast.unparse(keyword.value) + "()"
    return ast.unparse(value)


def _flags() -> dict[tuple[str, str], str]:
    """(class name, field name) → "`--flag`, `$ENV`" for every setting ``statehost serve`` exposes."""
    flags: dict[tuple[str, str], str] = {}
    for flag in serve_flags():
        text = f"`{flag.option}`" + (f", `${flag.env}`" if flag.env else "")
        flags[(flag.owner.__name__, flag.nested or flag.setting)] = text
    return flags


def render() -> str:
    out = [
        "# Configuration",
        "",
        "Generated from the settings in server/config.py and runtime/limits.py by `make docs`",
        "(`python -m server.settings_doc --write`); a test fails when this file and the code disagree.",
        "The flags are `statehost serve`'s, built from the same fields (`statehost serve --help`); a",
        "flag wins over its environment variable.",
        "",
    ]
    flags = _flags()
    for title, path, class_name in SOURCES:
        out += [f"## {title}", "", "| Setting | Default | Flag, environment | Meaning |", "|---|---|---|---|"]
        for name, default, doc in _fields(path, class_name):
            flag = flags.get((class_name, name), "")
            out.append(f"| `{name}` | `{default}` | {flag} | {doc.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


TARGET = ROOT / "docs" / "configuration.md"


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        TARGET.write_text(render())
        print(f"wrote {TARGET}")
    elif not argv:
        print(render(), end="")
    else:
        print("usage: python -m server.settings_doc [--write]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
