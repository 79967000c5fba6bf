"""The JSONPath subset statehost understands: token-exchange mappings (wire-api 2.8) and index
selectors (wire-api 3.6, 3.10) share it.

A path is ``$`` followed by any number of steps ``.name``, ``[0]``, ``['name']`` or ``["name"]``
(quoted names take the escapes ``\\\\ \\' \\" \\/ \\b \\f \\n \\r \\t``). Wildcards, slices, filters,
unions and recursive descent are refused. Steps follow JavaScript property access: ``[0]`` on an
object reads the key ``"0"``, ``.0`` on an array reads index 0 (a canonical decimal index only:
``.01`` matches nothing). A path that matches nothing selects :data:`MISSING`; a JSON ``null`` is a
match.

    steps = parse("$.user['e-mail']")      # ("user", "e-mail"); ValueError for a bad path
    select({"user": {"e-mail": "a"}}, steps)  # "a"
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["MISSING", "Step", "parse", "select"]

Step = str | int
"""A property name, or an array index written ``[n]``."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""What :func:`select` answers when the path matches nothing (distinct from a JSON ``null``)."""

_DOT_NAME = re.compile(r"[^.\[\]'\"\s*]+")
_INDEX = re.compile(r"\[\s*(\d+)\s*\]")
_QUOTED = re.compile(r"""\[\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*\]""")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@functools.lru_cache(maxsize=1024)
def parse(path: str) -> tuple[Step, ...]:
    """The steps of a JSONPath of the supported subset; ValueError says why a path is not one."""
    if not path.startswith("$"):
        raise ValueError("a JSONPath starts with $")
    steps: list[Step] = []
    i = 1
    while i < len(path):
        if path.startswith("..", i):
            raise ValueError("recursive descent (..) is not supported")
        if path[i] == ".":
            match = _DOT_NAME.match(path, i + 1)
            if match is None:
                raise ValueError(f"expected a property name at offset {i + 1}")
            steps.append(match.group())
            i = match.end()
        elif path[i] == "[":
            index = _INDEX.match(path, i)
            quoted = _QUOTED.match(path, i) if index is None else None
            if index is not None:
                steps.append(int(index.group(1)))
                i = index.end()
            elif quoted is not None:
                raw = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
                steps.append(_unescape(raw))
                i = quoted.end()
            else:
                raise ValueError(f"only [<index>], ['name'] and [\"name\"] are supported (offset {i})")
        else:
            raise ValueError(f"unexpected {path[i]!r} at offset {i}")
    return tuple(steps)


def _unescape(raw: str) -> str:
    out: list[str] = []
    chars = iter(raw)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(chars)  # the regex guarantees a character after each backslash
        if nxt not in _ESCAPES:
            raise ValueError(f"unsupported escape \\{nxt}")
        out.append(_ESCAPES[nxt])
    return "".join(out)


def select(value: Any, steps: Sequence[Step]) -> Any:
    """The value at ``steps`` (from :func:`parse`) inside ``value``, or :data:`MISSING`."""
    for step in steps:
        if isinstance(value, Mapping):
            key = str(step)
            if key not in value:
                return MISSING
            value = value[key]
        elif isinstance(value, list):
            if isinstance(step, str):
                if not (step.isascii() and step.isdigit() and (step == "0" or not step.startswith("0"))):
                    return MISSING
                step = int(step)
            if step >= len(value):
                return MISSING
            value = value[step]
        else:
            return MISSING
    return value
