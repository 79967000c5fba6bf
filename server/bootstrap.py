"""First start: an org, an admin user, and their credentials written to a file (never logged)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from client.config import write_private

from .auth import issue_admin_token
from .engine import DurableEngine
from .orgs import create_org

__all__ = ["bootstrap"]


async def bootstrap(engine: DurableEngine, admin_secret: str, url: str, path: Path, lifetime_s: int) -> bool:
    """On an empty database, create the first org and admin and write their credentials to ``path``.

    Returns True when it did (the database had no user).
    """
    if await engine.store.orgs.count_users() > 0:
        return False
    now = engine.clock.now_ms()
    if not await engine.store.orgs.claim_once("bootstrap", now):
        return False  # another node sharing the database bootstraps it
    user_id = await engine.store.orgs.create_user("admin", None, now)
    org_id = await create_org(engine.store, "default", user_id, now)
    token = issue_admin_token(admin_secret, user_id, 0, now // 1000, lifetime_s)
    credentials: dict[str, Any] = {"url": url, "orgId": org_id, "userId": user_id, "adminToken": token}
    write_private(path, json.dumps(credentials, indent=2) + "\n")
    return True
