"""The index query (wire-api 3.10): ``GET /machines/{machine}/indexes/{index}/query``."""

from __future__ import annotations

from aiohttp import web

from ..errors import InvalidParameter
from ..services.machines import INDEX_OPERATORS
from .common import MACHINES, caller, page_response

routes = web.RouteTableDef()

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidParameter(f"limit must be an integer from 1 to {MAX_LIMIT}", parameter="limit")
    return int(text)


@routes.get("/machines/{machine}/indexes/{index}/query")
async def query_index(request: web.Request) -> web.Response:
    """Instances by index value: ``op``+``value`` filter (both or neither), ``dir`` asc|desc,
    ``limit`` 1..1000 (default 100), ``cursor``. Answers ``{instances: [{indexValue, slug}], cursor?}``."""
    org = (await caller(request)).require("indexes.read")
    query = request.query
    op, value = query.get("op"), query.get("value")
    if op is not None and op not in INDEX_OPERATORS:
        raise InvalidParameter(f"op must be one of {', '.join(INDEX_OPERATORS)}", parameter="op")
    if op is None and value is not None:
        raise InvalidParameter("value needs an op", parameter="op")
    if op is not None and value is None:
        raise InvalidParameter(f"op {op} needs a value", parameter="value")
    direction = query.get("dir", "asc")
    if direction not in ("asc", "desc"):
        raise InvalidParameter("dir must be asc or desc", parameter="dir")
    limit = _limit(query.get("limit"))
    page = await request.app[MACHINES].query_index(
        org,
        request.match_info["machine"],
        request.match_info["index"],
        op,
        value,
        direction == "desc",
        limit,
        query.get("cursor"),
    )
    return page_response("instances", [{"indexValue": v, "slug": slug} for v, slug in page.rows], page.cursor)
