"""Where the CLI keeps its settings, and the smply files ``statehost login`` writes.

``~/.statehost/config.json`` holds ``apiUrl``, ``token`` and ``orgId``. smply reads a Supabase-shaped
session from ``~/.smply/credentials`` and the default org from ``~/.smply/default-org`` (wire-api
6.4); writing both from one login keeps the two CLIs pointed at the same server and org.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "config_path", "load_config", "save_login", "set_default_org", "write_private"]


class ConfigError(Exception):
    """A settings file that cannot be used (names the file and what is wrong)."""


def config_path(home: Path | None = None) -> Path:
    return (home or Path.home()) / ".statehost" / "config.json"


def write_private(path: Path, content: str) -> None:
    """Write a file only its owner can read (credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(path, 0o600)


def load_config(path: Path) -> dict[str, Any]:
    """The saved settings, or ``{}`` when there are none yet."""
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); run statehost login again") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: not a JSON object; run statehost login again")
    return saved


def _smply_dir(config: Path) -> Path:
    return config.parent.parent / ".smply"


def save_login(config: Path, url: str, token: str, org: str | None, user_id: str = "statehost-admin") -> list[Path]:
    """Store the CLI's settings and smply's credentials next to them; returns the files written."""
    write_private(config, json.dumps({"apiUrl": url, "token": token, "orgId": org}, indent=2) + "\n")
    # The Supabase-session shape smply loads (wire-api 6.4): a far-future expires_at means it never
    # tries to refresh against the hosted service.
    session = {
        "access_token": token,
        "refresh_token": "unused",
        "token_type": "bearer",
        "expires_in": 3_153_600_000,
        "expires_at": 4_102_444_800,
        "user": {"id": user_id, "email": None},
    }
    smply = _smply_dir(config)
    write_private(smply / "credentials", json.dumps(session) + "\n")
    written = [config, smply / "credentials"]
    if org:
        write_private(smply / "default-org", org)
        written.append(smply / "default-org")
    return written


def set_default_org(config: Path, org: str) -> None:
    """The org used when none is given, for this CLI and (when logged in through it) smply."""
    write_private(config, json.dumps({**load_config(config), "orgId": org}, indent=2) + "\n")
    if (_smply_dir(config) / "credentials").exists():
        write_private(_smply_dir(config) / "default-org", org)
